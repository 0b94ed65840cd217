// Log-probabilities of a token and the top N against a plain double-precision log_softmax.
#include "engine/sampling/logprobs.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace kvserve::engine {
namespace {

std::vector<double> RefLogSoftmax(const std::vector<float>& logits) {
  double sum = 0.0;
  for (float l : logits) sum += std::exp(static_cast<double>(l));
  std::vector<double> out;
  for (float l : logits) out.push_back(static_cast<double>(l) - std::log(sum));
  return out;
}

// Ids by log-probability, highest first, lower id first on ties.
std::vector<int32_t> RefOrder(const std::vector<double>& logprobs) {
  std::vector<int32_t> ids(logprobs.size());
  std::iota(ids.begin(), ids.end(), 0);
  std::stable_sort(ids.begin(), ids.end(),
                   [&](int32_t a, int32_t b) { return logprobs[a] > logprobs[b]; });
  return ids;
}

TEST(LogprobsTest, MatchesAPlainLogSoftmax) {
  const std::vector<float> logits = {1.0f, -2.0f, 3.5f, 0.25f, 3.0f, -7.0f};
  const std::vector<double> ref = RefLogSoftmax(logits);
  const std::vector<int32_t> order = RefOrder(ref);
  for (int32_t token = 0; token < 6; ++token) {
    for (int32_t n : {0, 1, 3, 6}) {
      TokenLogprob out;
      ComputeLogprobs(logits, token, n, &out);
      EXPECT_EQ(out.token_id, token);
      EXPECT_NEAR(out.logprob, ref[token], 1e-6);
      ASSERT_EQ(out.top.size(), static_cast<size_t>(n));
      for (int32_t i = 0; i < n; ++i) {
        EXPECT_EQ(out.top[i].token_id, order[i]) << "rank " << i;
        EXPECT_NEAR(out.top[i].logprob, ref[order[i]], 1e-6);
      }
    }
  }
}

TEST(LogprobsTest, TopNIsCappedAtTheVocabularyAndTiesGoToTheLowerId) {
  const std::vector<float> logits = {0.5f, 2.0f, 0.5f, 2.0f};
  TokenLogprob out;
  ComputeLogprobs(logits, 2, kMaxTopLogprobs, &out);
  ASSERT_EQ(out.top.size(), 4u);
  EXPECT_EQ(out.top[0].token_id, 1);
  EXPECT_EQ(out.top[1].token_id, 3);
  EXPECT_EQ(out.top[2].token_id, 0);
  EXPECT_EQ(out.top[3].token_id, 2);
  EXPECT_FLOAT_EQ(out.top[0].logprob, out.top[1].logprob);
  EXPECT_FLOAT_EQ(out.logprob, out.top[3].logprob);
}

TEST(LogprobsTest, LargeLogitsDoNotOverflowAndEntriesAreReused) {
  // exp(1000) overflows a double: the largest logit must be subtracted first.
  const std::vector<float> logits = {1000.0f, 999.0f, -1000.0f};
  TokenLogprob out;
  out.top.assign(7, TopLogprob{9, 9.0f});  // stale content is replaced
  ComputeLogprobs(logits, 1, 2, &out);
  const double lse = 1000.0 + std::log(1.0 + std::exp(-1.0) + std::exp(-2000.0));
  EXPECT_NEAR(out.logprob, 999.0 - lse, 1e-5);
  ASSERT_EQ(out.top.size(), 2u);
  EXPECT_EQ(out.top[0].token_id, 0);
  EXPECT_NEAR(out.top[0].logprob, 1000.0 - lse, 1e-5);
  EXPECT_TRUE(std::isfinite(out.logprob));
}

TEST(LogprobsTest, RandomVocabulariesAgainstTheReference) {
  std::mt19937 rng(3);
  std::normal_distribution<float> normal(0.0f, 4.0f);
  for (int vocab : {1, 2, 19, 20, 21, 512, 32000}) {
    std::vector<float> logits(vocab);
    for (float& l : logits) l = normal(rng);
    const std::vector<double> ref = RefLogSoftmax(logits);
    const std::vector<int32_t> order = RefOrder(ref);
    const int32_t token = static_cast<int32_t>(rng() % vocab);
    TokenLogprob out;
    ComputeLogprobs(logits, token, kMaxTopLogprobs, &out);
    EXPECT_NEAR(out.logprob, ref[token], 1e-5) << "vocab " << vocab;
    ASSERT_EQ(out.top.size(), std::min<size_t>(vocab, kMaxTopLogprobs));
    for (size_t i = 0; i < out.top.size(); ++i) {
      EXPECT_EQ(out.top[i].token_id, order[i]) << "vocab " << vocab << " rank " << i;
      EXPECT_NEAR(out.top[i].logprob, ref[order[i]], 1e-5);
    }
  }
}

}  // namespace
}  // namespace kvserve::engine
