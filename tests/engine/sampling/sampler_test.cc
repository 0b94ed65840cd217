#include "engine/sampling/sampler.h"

#include <cmath>
#include <map>
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
    ++counts[s.Sample(absl::MakeSpan(l), {})];
  }
  return counts;
}

TEST(SamplerTest, GreedyTakesArgmaxAndLowestIdOnTies) {
  SamplingParams p;
  Sampler s(p);
  std::vector<float> l = {0.1f, 3.0f, -1.0f, 3.0f};
  EXPECT_EQ(s.Sample(absl::MakeSpan(l), {}), 1);
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
  EXPECT_EQ(s.Sample(absl::MakeSpan(l), history), 1);
  EXPECT_FLOAT_EQ(l[0], 2.0f / 1.2f);
  EXPECT_FLOAT_EQ(l[2], -1.2f);
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
      out.push_back(s.Sample(absl::MakeSpan(l), {}));
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
  EXPECT_TRUE(SamplingParams{}.Validate().ok());
}

}  // namespace
}  // namespace kvserve::engine
