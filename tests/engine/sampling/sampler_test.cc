#include "engine/sampling/sampler.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <utility>
#include <vector>

#include "gtest/gtest.h"

namespace kvserve::engine {
namespace {

std::vector<float> LogProbs(const std::vector<double>& p) {
  std::vector<float> l;
  for (double x : p) l.push_back(static_cast<float>(std::log(x)));
  return l;
}

std::map<int32_t, int> Draw(const SamplingParams& params, const std::vector<float>& logits, int n) {
  Sampler s(params);
  std::map<int32_t, int> counts;
  for (int i = 0; i < n; ++i) {
    std::vector<float> l = logits;
    ++counts[s.Sample(absl::MakeSpan(l), {}, 0)];
  }
  return counts;
}

TEST(SamplerTest, GreedyTakesArgmaxAndLowestIdOnTies) {
  SamplingParams p;
  Sampler s(p);
  std::vector<float> l = {0.1f, 3.0f, -1.0f, 3.0f};
  EXPECT_EQ(s.Sample(absl::MakeSpan(l), {}, 0), 1);
}

TEST(SamplerTest, TemperatureOneFollowsTheDistribution) {
  SamplingParams p;
  p.temperature = 1.0f;
  p.seed = 42;
  const std::vector<double> probs = {0.5, 0.25, 0.125, 0.125};
  const int n = 40000;
  auto counts = Draw(p, LogProbs(probs), n);
  for (int i = 0; i < 4; ++i) {
    const double expected = probs[i] * n;
    // 5 standard deviations of a binomial count.
    EXPECT_NEAR(counts[i], expected, 5 * std::sqrt(expected * (1 - probs[i]))) << "token " << i;
  }
}

TEST(SamplerTest, TopKOneIsGreedy) {
  SamplingParams p;
  p.temperature = 2.0f;
  p.top_k = 1;
  auto counts = Draw(p, LogProbs({0.2, 0.5, 0.3}), 500);
  EXPECT_EQ(counts.size(), 1u);
  EXPECT_EQ(counts[1], 500);
}

TEST(SamplerTest, TopPKeepsTheSmallestNucleus) {
  SamplingParams p;
  p.temperature = 1.0f;
  p.top_p = 0.75f;
  // Sorted: 0.5 < 0.75, then 0.5 + 0.3 >= 0.75; 0.15 and 0.05 are cut.
  auto counts = Draw(p, LogProbs({0.15, 0.5, 0.05, 0.3}), 5000);
  EXPECT_EQ(counts.count(0), 0u);
  EXPECT_EQ(counts.count(2), 0u);
  // Renormalised: 0.625 / 0.375.
  EXPECT_NEAR(counts[1] / 5000.0, 0.625, 0.03);
}

TEST(SamplerTest, MinPDropsUnlikelyTokens) {
  SamplingParams p;
  p.temperature = 1.0f;
  p.min_p = 0.5f;  // threshold 0.25 relative to the top probability 0.5
  auto counts = Draw(p, LogProbs({0.5, 0.3, 0.2}), 3000);
  EXPECT_EQ(counts.count(2), 0u);
  EXPECT_GT(counts[1], 0);
}

TEST(SamplerTest, RepetitionPenaltyDividesPositiveAndMultipliesNegative) {
  SamplingParams p;
  p.repetition_penalty = 1.2f;
  Sampler s(p);
  std::vector<float> l = {2.0f, 1.9f, -1.0f};
  std::vector<int32_t> history = {0, 2};
  EXPECT_EQ(s.Sample(absl::MakeSpan(l), history, 0), 1);
  EXPECT_FLOAT_EQ(l[0], 2.0f / 1.2f);
  EXPECT_FLOAT_EQ(l[2], -1.2f);
}

// logit[t] -= frequency_penalty * count(t) + presence_penalty * (count(t) > 0), over the
// generated tokens only, computed by hand.
std::vector<float> PenalisedByHand(std::vector<float> logits, const std::vector<int32_t>& history,
                                   size_t num_prompt, float presence, float frequency) {
  std::map<int32_t, int> count;
  for (size_t i = num_prompt; i < history.size(); ++i) ++count[history[i]];
  for (const auto& [t, n] : count) {
    logits[t] -= frequency * static_cast<float>(n) + presence;
  }
  return logits;
}

TEST(SamplerTest, PresenceAndFrequencyPenaltiesCountGeneratedTokensOnly) {
  const std::vector<float> logits = {2.0f, 1.5f, -0.5f, 0.25f, 1.0f, -3.0f};
  // Prompt: 0 0 1; generated: 2 2 2 3 0 (token 1 appears in the prompt only, 4 and 5 never).
  const std::vector<int32_t> history = {0, 0, 1, 2, 2, 2, 3, 0};
  const size_t num_prompt = 3;
  for (const auto& [presence, frequency] : std::vector<std::pair<float, float>>{
           {0.5f, 0.0f}, {0.0f, 0.3f}, {0.7f, 0.2f}, {-1.0f, -0.5f}, {2.0f, 2.0f}}) {
    SamplingParams p;
    p.presence_penalty = presence;
    p.frequency_penalty = frequency;
    Sampler s(p);
    std::vector<float> l = logits;
    const int32_t token = s.Sample(absl::MakeSpan(l), history, num_prompt);
    const std::vector<float> want =
        PenalisedByHand(logits, history, num_prompt, presence, frequency);
    for (size_t i = 0; i < l.size(); ++i) {
      EXPECT_FLOAT_EQ(l[i], want[i])
          << "token " << i << " presence " << presence << " frequency " << frequency;
    }
    EXPECT_EQ(l[1], logits[1]) << "a prompt token is not penalised";
    EXPECT_EQ(l[4], logits[4]);
    EXPECT_EQ(token, std::max_element(want.begin(), want.end()) - want.begin());
  }
}

TEST(SamplerTest, PenaltiesSteerGreedyDecoding) {
  SamplingParams p;
  p.frequency_penalty = 0.4f;
  Sampler s(p);
  // Token 0 leads by 1.0; generated three times it loses 1.2 and token 1 wins.
  std::vector<float> l = {3.0f, 2.0f, 0.0f};
  const std::vector<int32_t> history = {1, 0, 0, 0};
  EXPECT_EQ(s.Sample(absl::MakeSpan(l), history, 1), 1);
  // Twice it loses 0.8 only: token 0 stays ahead.
  l = {3.0f, 2.0f, 0.0f};
  EXPECT_EQ(s.Sample(absl::MakeSpan(l), {1, 0, 0}, 1), 0);
  // The same tokens as prompt: no penalty.
  l = {3.0f, 2.0f, 0.0f};
  EXPECT_EQ(s.Sample(absl::MakeSpan(l), history, history.size()), 0);
  EXPECT_EQ(l, (std::vector<float>{3.0f, 2.0f, 0.0f}));
}

TEST(SamplerTest, RepetitionPenaltyComesBeforePresenceAndFrequency) {
  SamplingParams p;
  p.repetition_penalty = 2.0f;
  p.presence_penalty = 0.5f;
  p.frequency_penalty = 0.25f;
  Sampler s(p);
  std::vector<float> l = {4.0f, -1.0f, 1.0f, 3.0f};
  // Prompt 1; generated 0 0 2. The repetition penalty counts the prompt too.
  s.Sample(absl::MakeSpan(l), {1, 0, 0, 2}, 1);
  EXPECT_FLOAT_EQ(l[0], 4.0f / 2.0f - (0.25f * 2 + 0.5f));
  EXPECT_FLOAT_EQ(l[1], -1.0f * 2.0f);
  EXPECT_FLOAT_EQ(l[2], 1.0f / 2.0f - (0.25f + 0.5f));
  EXPECT_FLOAT_EQ(l[3], 3.0f);
}

TEST(SamplerTest, ZeroPenaltiesLeaveSamplingUnchanged) {
  // The same seed gives bitwise the same logits and draws whatever the history.
  SamplingParams p;
  p.temperature = 0.8f;
  p.top_p = 0.9f;
  p.seed = 11;
  Sampler a(p);
  p.presence_penalty = 0.0f;
  p.frequency_penalty = -0.0f;
  Sampler b(p);
  std::vector<int32_t> history = {1, 2, 3};
  for (int i = 0; i < 200; ++i) {
    std::vector<float> la(32);
    for (size_t j = 0; j < la.size(); ++j) la[j] = std::sin(static_cast<float>(i * 31 + j));
    std::vector<float> lb = la;
    const int32_t ta = a.Sample(absl::MakeSpan(la), {}, 0);
    const int32_t tb = b.Sample(absl::MakeSpan(lb), history, 1);
    ASSERT_EQ(ta, tb) << "draw " << i;
    ASSERT_EQ(la, lb);
    history.push_back(tb);
  }
}

TEST(SamplerTest, SameSeedSameDrawsDifferentSeedDifferentDraws) {
  SamplingParams p;
  p.temperature = 1.0f;
  const std::vector<float> logits(50, 0.0f);
  auto run = [&](uint64_t seed) {
    p.seed = seed;
    Sampler s(p);
    std::vector<int32_t> out;
    for (int i = 0; i < 64; ++i) {
      std::vector<float> l = logits;
      out.push_back(s.Sample(absl::MakeSpan(l), {}, 0));
    }
    return out;
  };
  EXPECT_EQ(run(7), run(7));
  EXPECT_NE(run(7), run(8));
}

TEST(SamplerTest, ValidateNamesTheField) {
  SamplingParams p;
  p.temperature = -1;
  EXPECT_NE(p.Validate().message().find("temperature"), std::string::npos);
  p = {};
  p.top_p = 0;
  EXPECT_NE(p.Validate().message().find("top_p"), std::string::npos);
  p = {};
  p.top_p = 1.5f;
  EXPECT_NE(p.Validate().message().find("top_p"), std::string::npos);
  p = {};
  p.min_p = 1.0f;
  EXPECT_NE(p.Validate().message().find("min_p"), std::string::npos);
  p = {};
  p.top_k = -2;
  EXPECT_NE(p.Validate().message().find("top_k"), std::string::npos);
  p = {};
  p.repetition_penalty = 0;
  EXPECT_NE(p.Validate().message().find("repetition_penalty"), std::string::npos);
  for (float bad : {2.5f, -2.01f, std::nanf("")}) {
    p = {};
    p.presence_penalty = bad;
    EXPECT_NE(p.Validate().message().find("presence_penalty"), std::string::npos) << bad;
    p = {};
    p.frequency_penalty = bad;
    EXPECT_NE(p.Validate().message().find("frequency_penalty"), std::string::npos) << bad;
  }
  p = {};
  p.presence_penalty = -2.0f;
  p.frequency_penalty = 2.0f;
  EXPECT_TRUE(p.Validate().ok());
  EXPECT_TRUE(SamplingParams{}.Validate().ok());
}

}  // namespace
}  // namespace kvserve::engine
