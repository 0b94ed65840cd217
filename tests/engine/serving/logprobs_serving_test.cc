// Log-probabilities and the presence / frequency penalties through the scheduler and the model
// runner on the real model (stories260K): log-probabilities equal an independent log_softmax of
// the model's logits for the same tokens, asking for them changes no token, they stay aligned
// with the token ids (stop strings, EOS), and the penalties count generated tokens only.
#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "engine/kv/sequence_kv.h"
#include "engine/runtime/local_model.h"
#include "gtest/gtest.h"

namespace kvserve::engine {
namespace {

std::unique_ptr<LocalModel> OpenStories() {
  LocalModelOptions o;
  o.model_path = std::string(KVSERVE_MODELS_DIR) + "/stories260K.gguf";
  o.kv_budget_bytes = 64 << 20;
  auto lm = LocalModel::Open(o);
  EXPECT_TRUE(lm.ok()) << lm.status();
  return lm.ok() ? std::move(*lm) : nullptr;
}

GenerationResult RunOne(LocalModel& lm, const GenerationRequest& r) {
  auto res = lm.generator().Run({r});
  EXPECT_TRUE(res.ok()) << res.status();
  return res.ok() ? (*res)[0] : GenerationResult{};
}

// log_softmax, in double, of the model's logits at every position of `tokens` (one forward pass
// over the whole sequence, every row's logits kept): [tokens.size()][vocab].
std::vector<std::vector<double>> ReferenceLogprobs(LocalModel& lm,
                                                   const std::vector<int32_t>& tokens) {
  const int vocab = lm.config().vocab_size;
  SequenceKv kv(&lm.kv_pool(), lm.kv_layout());
  EXPECT_TRUE(kv.Reserve(static_cast<int64_t>(tokens.size())).ok());
  ForwardBatch b;
  b.block_tables.push_back(kv.block_table().data());
  for (size_t p = 0; p < tokens.size(); ++p) {
    b.Add(tokens[p], static_cast<int32_t>(p), 0, static_cast<int32_t>(p), true);
  }
  std::vector<float> logits(tokens.size() * vocab);
  EXPECT_TRUE(lm.model().Forward(b, lm.kv_pool(), logits.data()).ok());
  std::vector<std::vector<double>> out(tokens.size());
  for (size_t p = 0; p < tokens.size(); ++p) {
    const float* row = logits.data() + p * vocab;
    double max = row[0];
    for (int i = 1; i < vocab; ++i) max = std::max<double>(max, row[i]);
    double sum = 0.0;
    for (int i = 0; i < vocab; ++i) sum += std::exp(row[i] - max);
    for (int i = 0; i < vocab; ++i) out[p].push_back(row[i] - max - std::log(sum));
  }
  return out;
}

// Checks every entry of `result.logprobs` against the reference for prompt + generated tokens:
// the token's value, and that `top` holds `n` tokens with the highest values, in order.
void ExpectMatchesReference(LocalModel& lm, const std::vector<int32_t>& prompt,
                            const GenerationResult& result, size_t n) {
  constexpr double kTol = 1e-4;
  ASSERT_EQ(result.logprobs.size(), result.tokens.size());
  std::vector<int32_t> all = prompt;
  all.insert(all.end(), result.tokens.begin(), result.tokens.end());
  const auto ref = ReferenceLogprobs(lm, all);
  for (size_t i = 0; i < result.tokens.size(); ++i) {
    const std::vector<double>& want = ref[prompt.size() - 1 + i];  // the row that predicted it
    const TokenLogprob& got = result.logprobs[i];
    EXPECT_EQ(got.token_id, result.tokens[i]) << "token " << i;
    EXPECT_NEAR(got.logprob, want[result.tokens[i]], kTol) << "token " << i;
    ASSERT_EQ(got.top.size(), n) << "token " << i;
    std::vector<double> sorted = want;
    std::sort(sorted.begin(), sorted.end(), std::greater<>());
    for (size_t k = 0; k < n; ++k) {
      EXPECT_NEAR(got.top[k].logprob, want[got.top[k].token_id], kTol) << i << " rank " << k;
      EXPECT_NEAR(got.top[k].logprob, sorted[k], kTol) << "token " << i << " rank " << k;
      if (k > 0) {
        EXPECT_LE(got.top[k].logprob, got.top[k - 1].logprob);
      }
    }
  }
}

TEST(LogprobsServingTest, GreedyLogprobsMatchTheModelsLogSoftmax) {
  auto lm = OpenStories();
  ASSERT_NE(lm, nullptr);
  GenerationRequest r;
  r.prompt = lm->tokenizer().Encode("Once upon a time", true);
  r.max_tokens = 24;
  const GenerationResult plain = RunOne(*lm, r);
  EXPECT_TRUE(plain.logprobs.empty());
  r.logprobs = 5;
  const GenerationResult with = RunOne(*lm, r);
  EXPECT_EQ(with.tokens, plain.tokens);
  EXPECT_EQ(with.text, plain.text);
  ExpectMatchesReference(*lm, r.prompt, with, 5);
  // Greedy: the generated token is the most probable one.
  for (const TokenLogprob& l : with.logprobs) {
    EXPECT_EQ(l.top[0].token_id, l.token_id);
    EXPECT_EQ(l.top[0].logprob, l.logprob);
  }
  r.logprobs = 0;
  const GenerationResult own = RunOne(*lm, r);
  EXPECT_EQ(own.tokens, plain.tokens);
  ExpectMatchesReference(*lm, r.prompt, own, 0);
}

TEST(LogprobsServingTest, SampledWithPenaltiesLogprobsAreOfTheRawModelOutput) {
  auto lm = OpenStories();
  ASSERT_NE(lm, nullptr);
  GenerationRequest r;
  r.prompt = lm->tokenizer().Encode("Lily and Ben went", true);
  r.max_tokens = 32;
  r.sampling.temperature = 1.3f;
  r.sampling.top_p = 0.95f;
  r.sampling.seed = 17;
  r.sampling.repetition_penalty = 1.2f;
  r.sampling.presence_penalty = 0.5f;
  r.sampling.frequency_penalty = 0.3f;
  const GenerationResult plain = RunOne(*lm, r);
  r.logprobs = kMaxTopLogprobs;
  const GenerationResult with = RunOne(*lm, r);
  EXPECT_EQ(with.tokens, plain.tokens);
  EXPECT_EQ(with.text, plain.text);
  // Neither the temperature nor the penalties enter the values.
  ExpectMatchesReference(*lm, r.prompt, with, kMaxTopLogprobs);
  // At temperature 1.3 some sampled token is not the most probable one.
  int not_top = 0;
  for (const TokenLogprob& l : with.logprobs) not_top += l.top[0].token_id != l.token_id;
  EXPECT_GT(not_top, 0);
}

TEST(LogprobsServingTest, StayAlignedWithTheTokensAtAStopStringAndAtTheEnd) {
  auto lm = OpenStories();
  ASSERT_NE(lm, nullptr);
  GenerationRequest r;
  r.prompt = lm->tokenizer().Encode("Once upon a time", true);
  r.max_tokens = 40;
  r.logprobs = 2;
  r.stop = {"Lily"};
  const GenerationResult stopped = RunOne(*lm, r);
  EXPECT_EQ(stopped.finish_reason, FinishReason::kStop);
  ASSERT_EQ(stopped.logprobs.size(), stopped.tokens.size());
  for (size_t i = 0; i < stopped.tokens.size(); ++i) {
    EXPECT_EQ(stopped.logprobs[i].token_id, stopped.tokens[i]);
  }
  // A story ends with BOS: the ending token is not generated, and has no entry either.
  r.stop.clear();
  r.max_tokens = 400;
  const GenerationResult ended = RunOne(*lm, r);
  EXPECT_EQ(ended.finish_reason, FinishReason::kEos);
  ASSERT_EQ(ended.logprobs.size(), ended.tokens.size());
  for (size_t i = 0; i < ended.tokens.size(); ++i) {
    EXPECT_EQ(ended.logprobs[i].token_id, ended.tokens[i]);
    EXPECT_EQ(ended.logprobs[i].top.size(), 2u);
  }
}

TEST(LogprobsServingTest, ZeroPenaltiesLeaveTheOutputIdentical) {
  auto lm = OpenStories();
  ASSERT_NE(lm, nullptr);
  GenerationRequest r;
  r.prompt = lm->tokenizer().Encode("Once upon a time", true);
  r.max_tokens = 30;
  const GenerationResult greedy = RunOne(*lm, r);
  EXPECT_EQ(greedy.text.rfind(", there was a little girl named Lily. She loved to play", 0), 0u)
      << greedy.text;
  r.sampling.temperature = 0.9f;
  r.sampling.seed = 3;
  const GenerationResult sampled = RunOne(*lm, r);
  r.sampling.presence_penalty = 0.0f;
  r.sampling.frequency_penalty = 0.0f;
  EXPECT_EQ(RunOne(*lm, r).tokens, sampled.tokens);
  r.sampling.temperature = 0.0f;
  EXPECT_EQ(RunOne(*lm, r).tokens, greedy.tokens);
  // Not zero: the output changes (the penalties reach the sampler).
  r.sampling.frequency_penalty = 2.0f;
  EXPECT_NE(RunOne(*lm, r).tokens, greedy.tokens);
}

TEST(LogprobsServingTest, PresenceAndFrequencyPenaltiesIgnoreThePrompt) {
  auto lm = OpenStories();
  ASSERT_NE(lm, nullptr);
  GenerationRequest r;
  r.prompt = lm->tokenizer().Encode("Once upon a time", true);
  r.max_tokens = 40;
  r.logprobs = 2;
  const GenerationResult greedy = RunOne(*lm, r);
  ASSERT_EQ(greedy.logprobs.size(), greedy.tokens.size());
  // A step k whose greedy token is already in the prompt or the output, leads the runner-up by
  // less than the penalty of 4 (presence 2 + frequency 2), and whose runner-up is new.
  auto in = [](const std::vector<int32_t>& v, int32_t t) {
    return std::find(v.begin(), v.end(), t) != v.end();
  };
  std::vector<int32_t> seen = r.prompt;
  size_t k = 0;
  for (; k < greedy.tokens.size(); ++k) {
    const TokenLogprob& l = greedy.logprobs[k];
    if (in(seen, greedy.tokens[k]) && !in(seen, l.top[1].token_id) &&
        l.top[0].logprob - l.top[1].logprob < 4.0f) {
      break;
    }
    seen.push_back(greedy.tokens[k]);
  }
  ASSERT_LT(k, greedy.tokens.size()) << "no step to test with";
  // With the tokens seen so far as a prompt, nothing is penalised (penalising the prompt would
  // put the runner-up first): the next token is the greedy one.
  GenerationRequest again;
  again.prompt = seen;
  again.max_tokens = 1;
  again.sampling.presence_penalty = 2.0f;
  again.sampling.frequency_penalty = 2.0f;
  const GenerationResult next = RunOne(*lm, again);
  ASSERT_EQ(next.tokens.size(), 1u);
  EXPECT_EQ(next.tokens[0], greedy.tokens[k]);
  // Generated tokens are penalised, and only they: until greedy decoding first repeats one of
  // its own tokens, every greedy choice is unpenalised and every rival can only lose, so the
  // penalised output is the greedy one up to there.
  size_t first_repeat = 1;
  while (first_repeat < greedy.tokens.size() &&
         std::find(greedy.tokens.begin(), greedy.tokens.begin() + first_repeat,
                   greedy.tokens[first_repeat]) == greedy.tokens.begin() + first_repeat) {
    ++first_repeat;
  }
  GenerationRequest penalised = r;
  penalised.sampling.presence_penalty = 2.0f;
  penalised.sampling.frequency_penalty = 2.0f;
  const GenerationResult out = RunOne(*lm, penalised);
  ASSERT_GE(out.tokens.size(), first_repeat);
  EXPECT_TRUE(
      std::equal(out.tokens.begin(), out.tokens.begin() + first_repeat, greedy.tokens.begin()));
  EXPECT_NE(out.tokens, greedy.tokens);
}

}  // namespace
}  // namespace kvserve::engine
