// Continuous batching through the Scheduler (driven by BatchGenerator): batched, chunked and
// preempted generation gives exactly the sequential greedy output.
#include <memory>
#include <string>
#include <vector>

#include "engine/runtime/local_model.h"
#include "gtest/gtest.h"

namespace kvserve::engine {
namespace {

std::unique_ptr<LocalModel> OpenStories(int64_t budget_bytes, int64_t max_batch_tokens = 512) {
  LocalModelOptions o;
  o.model_path = std::string(KVSERVE_MODELS_DIR) + "/stories260K.gguf";
  o.kv_budget_bytes = budget_bytes;
  o.max_batch_tokens = max_batch_tokens;
  auto lm = LocalModel::Open(o);
  EXPECT_TRUE(lm.ok()) << lm.status();
  return lm.ok() ? std::move(*lm) : nullptr;
}

const char* kPrompts[] = {"Once upon a time",    "The little dog",      "Lily and Ben went",
                          "One day, a big bird", "Tom had a red ball",  "The sun was hot and",
                          "Sara liked to sing",  "A cat sat on the mat"};

std::vector<GenerationRequest> MakeRequests(const Tokenizer& tok, int n) {
  std::vector<GenerationRequest> reqs(n);
  for (int i = 0; i < n; ++i) {
    reqs[i].prompt = tok.Encode(kPrompts[i % 8], true);
    // Different prompt lengths: repeat some prompts.
    for (int k = 0; k < i % 3; ++k) {
      auto more = tok.Encode(kPrompts[(i + k + 1) % 8], false);
      reqs[i].prompt.insert(reqs[i].prompt.end(), more.begin(), more.end());
    }
    reqs[i].max_tokens = 20 + 7 * (i % 5);
    reqs[i].sampling.temperature = 0;
  }
  return reqs;
}

std::vector<std::vector<int32_t>> Sequential(LocalModel& lm,
                                             const std::vector<GenerationRequest>& reqs) {
  std::vector<std::vector<int32_t>> out;
  for (const auto& r : reqs) {
    auto res = lm.generator().Run({r});
    EXPECT_TRUE(res.ok()) << res.status();
    out.push_back(res.ok() ? (*res)[0].tokens : std::vector<int32_t>{});
  }
  return out;
}

TEST(SchedulerTest, ThirtyTwoSequencesTogetherEqualEachAlone) {
  auto lm = OpenStories(64 << 20, /*max_batch_tokens=*/48);  // small budget: chunked prefill
  ASSERT_NE(lm, nullptr);
  const auto reqs = MakeRequests(lm->tokenizer(), 32);
  const auto expected = Sequential(*lm, reqs);
  auto res = lm->generator().Run(reqs);
  ASSERT_TRUE(res.ok()) << res.status();
  for (size_t i = 0; i < reqs.size(); ++i) {
    EXPECT_EQ((*res)[i].tokens, expected[i]) << "sequence " << i;
  }
  EXPECT_EQ(lm->generator().preemptions(), 0);
  EXPECT_EQ(lm->ActiveKvBlocks(), 0);
}

TEST(SchedulerTest, PreemptionUnderATinyBudgetKeepsTheOutput) {
  // stories260K FP32 block: 20480 bytes. 12 blocks hold 192 tokens: far less than 16 sequences
  // of up to ~70 tokens need together, but enough for any one of them.
  auto lm = OpenStories(12 * 20480);
  ASSERT_NE(lm, nullptr);
  const auto reqs = MakeRequests(lm->tokenizer(), 16);
  const auto expected = Sequential(*lm, reqs);
  auto res = lm->generator().Run(reqs);
  ASSERT_TRUE(res.ok()) << res.status();
  EXPECT_GT(lm->generator().preemptions(), 0) << "the budget should force preemption";
  int preempted = 0;
  for (size_t i = 0; i < reqs.size(); ++i) {
    EXPECT_EQ((*res)[i].tokens, expected[i]) << "sequence " << i;
    preempted += (*res)[i].preemptions > 0;
  }
  EXPECT_GT(preempted, 0);
  EXPECT_EQ(lm->ActiveKvBlocks(), 0);
}

TEST(SchedulerTest, SequenceLargerThanTheWholeBudgetFailsClearly) {
  auto lm = OpenStories(2 * 20480);  // 32 tokens
  ASSERT_NE(lm, nullptr);
  GenerationRequest r;
  r.prompt = lm->tokenizer().Encode("Once upon a time", true);
  r.max_tokens = 100;
  r.ignore_eos = true;
  auto res = lm->generator().Run({r});
  ASSERT_FALSE(res.ok());
  EXPECT_EQ(res.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(res.status().message().find("KV budget"), std::string::npos) << res.status();
  EXPECT_EQ(lm->ActiveKvBlocks(), 0);
}

TEST(SchedulerTest, StopStringEndsTheTextBeforeIt) {
  auto lm = OpenStories(64 << 20);
  GenerationRequest r;
  r.prompt = lm->tokenizer().Encode("Once upon a time", true);
  r.max_tokens = 60;
  auto full = lm->generator().Run({r});
  ASSERT_TRUE(full.ok());
  // Published continuation: ", there was a little girl named Lily. She loved ..."
  ASSERT_EQ((*full)[0].text.rfind(", there was a little girl named Lily.", 0), 0u)
      << (*full)[0].text;
  r.stop = {"Lily"};
  auto stopped = lm->generator().Run({r});
  ASSERT_TRUE(stopped.ok());
  EXPECT_EQ((*stopped)[0].text, ", there was a little girl named ");
  EXPECT_EQ((*stopped)[0].finish_reason, FinishReason::kStop);
  // A stop string that never appears changes nothing.
  r.stop = {"zebra!"};
  auto same = lm->generator().Run({r});
  ASSERT_TRUE(same.ok());
  EXPECT_EQ((*same)[0].text, (*full)[0].text);
  EXPECT_EQ((*same)[0].finish_reason, (*full)[0].finish_reason);
}

TEST(SchedulerTest, FinishReasons) {
  auto lm = OpenStories(64 << 20);
  GenerationRequest r;
  r.prompt = lm->tokenizer().Encode("Once upon a time", true);
  r.max_tokens = 5;
  auto res = lm->generator().Run({r});
  ASSERT_TRUE(res.ok());
  EXPECT_EQ((*res)[0].tokens.size(), 5u);
  EXPECT_EQ((*res)[0].finish_reason, FinishReason::kLength);
  r.max_tokens = 400;  // stories end with BOS well before that
  res = lm->generator().Run({r});
  ASSERT_TRUE(res.ok());
  EXPECT_EQ((*res)[0].finish_reason, FinishReason::kEos);
  EXPECT_LT((*res)[0].tokens.size(), 400u);
}

}  // namespace
}  // namespace kvserve::engine

namespace kvserve::engine {
namespace {

std::unique_ptr<LocalModel> OpenWithPrefixCache(bool enabled) {
  LocalModelOptions o;
  o.model_path = std::string(KVSERVE_MODELS_DIR) + "/stories260K.gguf";
  o.prefix_cache = enabled;
  auto lm = LocalModel::Open(o);
  EXPECT_TRUE(lm.ok()) << lm.status();
  return lm.ok() ? std::move(*lm) : nullptr;
}

GenerationRequest SystemPromptRequest(const Tokenizer& tok, const std::string& question,
                                      const std::string& salt = "") {
  GenerationRequest r;
  r.prompt = tok.Encode(
      "Once upon a time, there was a little girl named Lily. She loved to play outside in the "
      "park with her friends. One day, " +
          question,
      true);
  r.max_tokens = 30;
  r.cache_salt = salt;
  return r;
}

TEST(PrefixReuseTest, SecondRequestReusesTheSharedPrefixWithIdenticalOutput) {
  auto cached = OpenWithPrefixCache(true);
  auto plain = OpenWithPrefixCache(false);
  const auto first = SystemPromptRequest(cached->tokenizer(), "she saw a cat.");
  const auto second = SystemPromptRequest(cached->tokenizer(), "she found a ball.");
  ASSERT_TRUE(cached->generator().Run({first}).ok());
  EXPECT_EQ(cached->generator().cached_prompt_tokens(), 0);
  auto with_cache = cached->generator().Run({second});
  ASSERT_TRUE(with_cache.ok());
  // The prompts share at least two full 16-token blocks.
  EXPECT_GE(cached->generator().cached_prompt_tokens(), 32);
  EXPECT_EQ(cached->generator().cached_prompt_tokens() % 16, 0);
  auto without = plain->generator().Run({second});
  ASSERT_TRUE(without.ok());
  EXPECT_EQ((*with_cache)[0].tokens, (*without)[0].tokens);
  EXPECT_EQ(cached->ActiveKvBlocks(), 0);
  EXPECT_GT(cached->prefix_index()->cached_blocks(), 0);
}

TEST(PrefixReuseTest, ARequestEndingAfterItsFirstTokenStillCachesItsPrompt) {
  auto lm = OpenWithPrefixCache(true);
  GenerationRequest first = SystemPromptRequest(lm->tokenizer(), "she saw a cat.");
  first.max_tokens = 1;  // prefill and the only sampled token happen in the same step
  const int64_t full_blocks = static_cast<int64_t>(first.prompt.size()) / 16;
  ASSERT_GE(full_blocks, 2);
  ASSERT_TRUE(lm->generator().Run({first}).ok());
  EXPECT_EQ(lm->prefix_index()->cached_blocks(), full_blocks);
  ASSERT_TRUE(
      lm->generator().Run({SystemPromptRequest(lm->tokenizer(), "she found a ball.")}).ok());
  EXPECT_GE(lm->generator().cached_prompt_tokens(), 32);
  EXPECT_EQ(lm->ActiveKvBlocks(), 0);
}

TEST(PrefixReuseTest, DifferentSaltsNeverShareBlocks) {
  auto lm = OpenWithPrefixCache(true);
  ASSERT_TRUE(lm->generator().Run({SystemPromptRequest(lm->tokenizer(), "a", "tenant-a")}).ok());
  ASSERT_TRUE(lm->generator().Run({SystemPromptRequest(lm->tokenizer(), "b", "tenant-b")}).ok());
  EXPECT_EQ(lm->generator().cached_prompt_tokens(), 0);
  ASSERT_TRUE(lm->generator().Run({SystemPromptRequest(lm->tokenizer(), "c", "tenant-a")}).ok());
  EXPECT_GE(lm->generator().cached_prompt_tokens(), 32);
}

TEST(PrefixReuseTest, CachedBlocksAreEvictedWhenMemoryIsNeeded) {
  LocalModelOptions o;
  o.model_path = std::string(KVSERVE_MODELS_DIR) + "/stories260K.gguf";
  o.kv_budget_bytes = 8 * 20480;  // 8 FP32 blocks: 128 tokens
  auto lm = LocalModel::Open(o);
  ASSERT_TRUE(lm.ok());
  for (const char* q : {"she saw a cat.", "he ran home.", "they ate cake."}) {
    auto r = (*lm)->generator().Run({SystemPromptRequest((*lm)->tokenizer(), q)});
    ASSERT_TRUE(r.ok()) << r.status();
  }
  GenerationRequest big;
  big.prompt = (*lm)->tokenizer().Encode("The little dog", true);
  big.max_tokens = 100;
  big.ignore_eos = true;
  auto r = (*lm)->generator().Run({big});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ((*r)[0].tokens.size(), 100u);
  EXPECT_EQ((*lm)->ActiveKvBlocks(), 0);
}

}  // namespace
}  // namespace kvserve::engine
