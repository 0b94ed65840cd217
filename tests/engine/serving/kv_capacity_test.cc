// KV bytes of a chunked prefill under a demoting policy (INT4 long-term, FP16 window): prompt
// blocks that are outside the recent window when the prefill ends are allocated and written in
// INT4 directly, so the pool never holds the prompt at FP16 size. Byte counts are worked out by
// hand from the formats' layouts (kernels/kv_format.h).
#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "engine/runtime/local_model.h"
#include "engine/serving/scheduler.h"
#include "gtest/gtest.h"

namespace kvserve::engine {
namespace {

// stories260K: 5 layers, 4 KV heads, head_dim 8, blocks of 16 tokens.
// FP16: 2 (K, V) * 5 layers * 4 heads * 16 tokens * 8 dims * 2 bytes.
constexpr int64_t kFp16Block = 2 * 5 * 4 * 16 * 8 * 2;  // 10,240
// INT4, per layer: K 4 * 16 * 8 / 2 = 256 bytes of codes + an FP32 scale per head (16) + an 8-bit
// scale and an 8-bit zero per channel (4 * 8 * 2 = 64): 336, padded to 384 (regions are 64-byte
// aligned); V 256 bytes of codes + a BF16 scale and minimum per token (4 * 16 * 4 = 256): 512.
constexpr int64_t kInt4Block = 5 * (384 + 512);  // 4,480

std::unique_ptr<LocalModel> OpenInt4(int32_t recent_window, int64_t budget_bytes) {
  LocalModelOptions o;
  o.model_path = std::string(KVSERVE_MODELS_DIR) + "/stories260K.gguf";
  o.kv_format = kernels::KvFormat::kInt4;
  o.kv_recent_window = recent_window;
  o.kv_budget_bytes = budget_bytes;
  o.prefix_cache = false;
  o.num_threads = 1;
  auto lm = LocalModel::Open(o);
  EXPECT_TRUE(lm.ok()) << lm.status();
  return lm.ok() ? std::move(*lm) : nullptr;
}

// A prompt of `n` tokens: BOS, then ids cycling over the vocabulary (BOS and EOS left out).
std::vector<int32_t> Prompt(int n, int32_t vocab) {
  std::vector<int32_t> p = {1};
  for (int i = 1; i < n; ++i) p.push_back(3 + (i * 37) % (vocab - 3));
  return p;
}

struct PrefillRun {
  int64_t peak_used_bytes = 0;     // pool bytes in use, sampled after admission and every step
  int64_t request_peak_bytes = 0;  // the request's own peak (final event)
  std::vector<int32_t> tokens;
  int32_t preemptions = 0;
};

PrefillRun Prefill(LocalModel& lm, int prompt_len, int64_t max_batch_tokens, int max_tokens) {
  KvCacheManager kv(&lm.kv_pool(), &lm.kv_policy(), KvCacheManagerOptions{});
  LlamaModelRunner runner(&lm.model(), &lm.kv_pool());
  SchedulerOptions so;
  so.max_batch_tokens = max_batch_tokens;
  so.end = EndRulesOf(lm.model());
  Scheduler sched(&kv, &runner, &lm.tokenizer(), so);
  EngineRequest r;
  r.id = "r";
  r.prompt = Prompt(prompt_len, lm.config().vocab_size);
  r.max_tokens = max_tokens;
  r.ignore_eos = true;
  r.stop_at_bos = false;
  r.sampling.temperature = 0;
  auto stream = std::make_shared<RequestStream>("r", 1 << 20);
  sched.Add(r, stream, absl::Now());
  PrefillRun run;
  int steps = 0;
  while (!sched.idle() && steps < 1000) {
    sched.Step(absl::Now());
    ++steps;
    run.peak_used_bytes = std::max(run.peak_used_bytes, lm.kv_pool().used_bytes());
  }
  std::vector<StreamEvent> events;
  stream->WaitAndTake(&events, absl::Seconds(1));
  for (const StreamEvent& e : events) {
    run.tokens.insert(run.tokens.end(), e.token_ids.begin(), e.token_ids.end());
    if (e.final) {
      EXPECT_TRUE(e.status.ok()) << e.status;
      run.request_peak_bytes = e.kv.peak_bytes;
      run.preemptions = e.preemptions;
    }
  }
  return run;
}

TEST(KvCapacityTest, BlockSizesMatchTheFormatTable) {
  auto lm = OpenInt4(0, 8 << 20);
  ASSERT_NE(lm, nullptr);
  EXPECT_EQ(lm->kv_pool().layout(lm->kv_policy().cold_layout()).block_bytes, kInt4Block);
  EXPECT_EQ(lm->kv_pool().layout(lm->kv_policy().write_layout()).block_bytes, kFp16Block);
}

// 200 prompt tokens in chunks of at most 40: 12 full blocks in INT4 and the partial 13th (8
// tokens) in FP16, from admission on. Writing the prompt in FP16 first would need 13 FP16 blocks
// (133,120 bytes) at admission.
TEST(KvCapacityTest, ChunkedPrefillNeverHoldsMoreThanItsFinalQuantizedSize) {
  auto lm = OpenInt4(0, 8 << 20);
  ASSERT_NE(lm, nullptr);
  const PrefillRun run = Prefill(*lm, 200, 40, 1);
  const int64_t expected = 12 * kInt4Block + 1 * kFp16Block;  // 64,000
  EXPECT_EQ(run.request_peak_bytes, expected);
  EXPECT_EQ(run.peak_used_bytes, expected);
  EXPECT_EQ(lm->kv_pool().used_bytes(), 0);  // the request ended with its prefill
}

// With a recent window of 32 tokens the blocks ending after token 200 - 32 = 168 stay FP16: 10
// INT4 blocks (tokens 0-159) and 3 FP16 ones (160-207): the final quantized size plus the window.
TEST(KvCapacityTest, WithAWindowThePeakIsTheQuantizedPromptPlusTheWindow) {
  auto lm = OpenInt4(32, 8 << 20);
  ASSERT_NE(lm, nullptr);
  const PrefillRun run = Prefill(*lm, 200, 40, 1);
  const int64_t expected = 10 * kInt4Block + 3 * kFp16Block;  // 75,520
  EXPECT_EQ(run.request_peak_bytes, expected);
  EXPECT_EQ(run.peak_used_bytes, expected);
}

// A budget that holds the prompt only in its final formats: 12 INT4 blocks + 2 FP16 blocks
// (74,240 bytes). The prompt at FP16 (13 blocks, 133,120 bytes) would not fit at all; the 4
// generated tokens stay in the prompt's last, FP16 block.
TEST(KvCapacityTest, AdmissionCountsBlocksInTheirFinalFormat) {
  auto lm = OpenInt4(0, 12 * kInt4Block + 2 * kFp16Block);
  ASSERT_NE(lm, nullptr);
  const PrefillRun run = Prefill(*lm, 200, 64, 4);
  EXPECT_EQ(run.preemptions, 0);
  EXPECT_EQ(run.tokens.size(), 4u);
}

// Every full prompt block is INT4 whatever the chunking, so the output does not depend on it:
// one chunk of 512, chunks of 40 (cut to 32 at block boundaries) and chunks of 16.
TEST(KvCapacityTest, OutputDoesNotDependOnTheChunkSize) {
  std::vector<int32_t> reference;
  for (int64_t chunk : {512, 40, 16}) {
    auto lm = OpenInt4(0, 8 << 20);
    ASSERT_NE(lm, nullptr);
    const PrefillRun run = Prefill(*lm, 200, chunk, 8);
    ASSERT_EQ(run.tokens.size(), 8u) << "chunk " << chunk;
    if (reference.empty()) {
      reference = run.tokens;
    } else {
      EXPECT_EQ(run.tokens, reference) << "chunk " << chunk;
    }
  }
}

}  // namespace
}  // namespace kvserve::engine
