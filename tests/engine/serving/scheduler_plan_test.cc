// Scheduling policy without a model: Schedule/Update driven through a fake runner whose "model"
// picks the next token from the history alone (a plain function the tests also apply to work out
// the expected outputs). Block counts are worked out by hand: blocks of 4 tokens, and a pool
// whose budget is a whole number of FP32 blocks.
#include <cstdint>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/kv/eviction/block_eviction_policy.h"
#include "engine/kv/kv_cache_manager.h"
#include "engine/serving/scheduler.h"
#include "gtest/gtest.h"

namespace kvserve::engine {
namespace {

constexpr int kBlock = 4;

// The fake model: the next token from the history alone, never EOS or BOS.
int32_t NextToken(absl::Span<const int32_t> history) {
  const int64_t sum = std::accumulate(history.begin(), history.end(), int64_t{0});
  return static_cast<int32_t>(3 + sum % 26);
}

// What `max_tokens` tokens of plain greedy decoding with NextToken give.
std::vector<int32_t> Reference(std::vector<int32_t> prompt, int max_tokens) {
  std::vector<int32_t> out;
  for (int i = 0; i < max_tokens; ++i) {
    out.push_back(NextToken(prompt));
    prompt.push_back(out.back());
  }
  return out;
}

// One chunk of an executed step, by request (the request's second prompt token names it).
struct ChunkRecord {
  int32_t request = 0;
  int64_t start = 0;
  int64_t count = 0;
  bool prefill = false;
  bool sampled = false;
};

class FakeRunner : public ModelRunner {
 public:
  StepOutput Execute(const ScheduledBatch& batch) override {
    StepOutput out;
    std::vector<ChunkRecord> step;
    for (const ScheduledChunk& c : batch.chunks) {
      step.push_back({c.tokens[1], c.start, c.count, c.prefill, c.sampler != nullptr});
      if (c.sampler != nullptr) out.sampled.push_back(NextToken(c.tokens));
    }
    steps.push_back(step);
    return out;
  }
  std::vector<std::vector<ChunkRecord>> steps;
};

Vocabulary TinyVocabulary() {
  Vocabulary v;
  v.pieces = {"<unk>", "<s>", "</s>"};
  v.types = {TokenType::kUnknown, TokenType::kControl, TokenType::kControl};
  for (char c = 'a'; c <= 'z'; ++c) {
    v.pieces.push_back(std::string(1, c));
    v.types.push_back(TokenType::kNormal);
  }
  v.scores.assign(v.pieces.size(), 0.0f);
  return v;
}

struct Options {
  int64_t budget_blocks = 64;
  SchedulerOptions sched;
  bool prefix_cache = false;
  KvCachePolicyConfig policy;
  int num_kv_heads = 1;
  int head_dim = 8;
};

class Harness {
 public:
  explicit Harness(Options o) {
    KvGeometry g;
    g.num_layers = 1;
    g.num_kv_heads = o.num_kv_heads;
    g.head_dim = o.head_dim;
    g.block_size = kBlock;
    // The FP32 block size, from a probe pool.
    BlockPool probe(g, 1 << 20);
    const int64_t fp32_block =
        probe.layout(*probe.RegisterUniformLayout(kernels::KvFormat::kFp32)).block_bytes;
    pool_ = std::make_unique<BlockPool>(g, o.budget_blocks * fp32_block);
    policy_ = std::make_unique<KvCachePolicy>(*KvCachePolicy::Create(pool_.get(), o.policy));
    KvCacheManagerOptions ko;
    if (o.prefix_cache) {
      PrefixIndexOptions io;
      io.block_size = kBlock;
      index_ = *PrefixIndex::Create(io, *CreateBlockEvictionPolicy("lru"));
      ko.prefix_index = index_.get();
      ko.model_identity = "fake";
    }
    kv_ = std::make_unique<KvCacheManager>(pool_.get(), policy_.get(), ko);
    tokenizer_ = std::make_unique<Tokenizer>(*Tokenizer::Create(TinyVocabulary()));
    sched_ = std::make_unique<Scheduler>(kv_.get(), &runner_, tokenizer_.get(), o.sched);
  }

  // A request named `name` (its second prompt token) with a `len`-token prompt.
  std::shared_ptr<RequestStream> Add(int32_t name, int len, int max_tokens, int priority = 0,
                                     absl::Time arrival = absl::UnixEpoch(),
                                     int64_t stream_tokens = 1 << 20) {
    EngineRequest r;
    r.id = absl::StrCat(name);
    r.prompt = Prompt(name, len);
    r.max_tokens = max_tokens;
    r.priority = priority;
    r.sampling.temperature = 0;
    auto stream = std::make_shared<RequestStream>(r.id, stream_tokens);
    sched_->Add(std::move(r), stream, arrival);
    return stream;
  }
  static std::vector<int32_t> Prompt(int32_t name, int len) {
    std::vector<int32_t> p = {1, name};
    for (int i = 2; i < len; ++i) p.push_back(3 + (i * 7) % 26);
    return p;
  }

  // One Schedule / Execute / Update; false when the plan was empty.
  bool Step(absl::Time now = absl::UnixEpoch()) {
    const bool worked = sched_->Step(now);
    const absl::Status counts = kv_->VerifyCounts(sched_->LiveKv());
    EXPECT_TRUE(counts.ok()) << counts;
    return worked;
  }
  int RunToIdle() {
    int steps = 0;
    while (!sched_->idle() && steps < 1000) {
      Step();
      ++steps;
    }
    return steps;
  }

  Scheduler& sched() { return *sched_; }
  KvCacheManager& kv() { return *kv_; }
  BlockPool& pool() { return *pool_; }
  const KvCachePolicy& policy() { return *policy_; }
  FakeRunner& runner() { return runner_; }

 private:
  std::unique_ptr<BlockPool> pool_;
  std::unique_ptr<KvCachePolicy> policy_;
  std::unique_ptr<PrefixIndex> index_;
  std::unique_ptr<KvCacheManager> kv_;
  std::unique_ptr<Tokenizer> tokenizer_;
  FakeRunner runner_;
  std::unique_ptr<Scheduler> sched_;
};

struct Outcome {
  std::vector<int32_t> tokens;
  StreamEvent final;
};

Outcome Drain(RequestStream& stream) {
  Outcome o;
  std::vector<StreamEvent> events;
  stream.Take(&events);
  for (StreamEvent& e : events) {
    o.tokens.insert(o.tokens.end(), e.token_ids.begin(), e.token_ids.end());
    if (e.final) o.final = e;
  }
  return o;
}

// Three 7-token prompts need 2 blocks each: a 6-block pool admits all three. Their 9th token
// needs a third block each; none is left, so the most recently admitted request is preempted and
// the other two get its blocks. Every output equals plain decoding: recomputation changes
// nothing.
TEST(SchedulerPlanTest, AdmitsByBlocksAndPreemptsTheNewestWithoutChangingOutputs) {
  Options o;
  o.budget_blocks = 6;
  Harness h(o);
  auto a = h.Add(10, 7, 8);
  auto b = h.Add(11, 7, 8);
  auto c = h.Add(12, 7, 8);
  ASSERT_TRUE(h.Step());  // all three prefill
  EXPECT_EQ(h.sched().num_running(), 3);
  ASSERT_EQ(h.runner().steps[0].size(), 3u);
  for (const ChunkRecord& r : h.runner().steps[0]) {
    EXPECT_TRUE(r.prefill);
    EXPECT_EQ(r.count, 7);
  }
  ASSERT_TRUE(h.Step());  // the 8th token fits the second blocks
  EXPECT_EQ(h.sched().counters().preemptions, 0);
  ASSERT_TRUE(h.Step());  // the 9th needs third blocks: request 12 gives its two up
  EXPECT_EQ(h.sched().counters().preemptions, 1);
  EXPECT_EQ(h.sched().num_running(), 2);
  ASSERT_EQ(h.runner().steps[2].size(), 2u);
  EXPECT_EQ(h.runner().steps[2][0].request, 10);
  EXPECT_EQ(h.runner().steps[2][1].request, 11);
  h.RunToIdle();
  for (auto [stream, name] : {std::pair{a, 10}, std::pair{b, 11}, std::pair{c, 12}}) {
    const Outcome out = Drain(*stream);
    EXPECT_TRUE(out.final.status.ok()) << out.final.status;
    EXPECT_EQ(out.tokens, Reference(Harness::Prompt(name, 7), 8)) << "request " << name;
  }
  EXPECT_GE(h.sched().counters().preemptions, 2);  // 11 too, when 10 needs its 4th block
  EXPECT_EQ(h.pool().used_blocks(), 0);
}

// A 20-token prompt under an 8-token step budget runs in chunks of 8, 8 and 4; the last chunk
// samples. A request arriving while it decodes gets what its decode leaves: 7, then 3.
TEST(SchedulerPlanTest, ChunkedPrefillRunsUnderTheTokenBudgetAfterTheDecodes) {
  Options o;
  o.sched.max_batch_tokens = 8;
  Harness h(o);
  h.Add(10, 20, 5);
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(h.Step());
  const auto& s = h.runner().steps;
  EXPECT_EQ(s[0][0].count, 8);
  EXPECT_FALSE(s[0][0].sampled);
  EXPECT_EQ(s[1][0].start, 8);
  EXPECT_EQ(s[1][0].count, 8);
  EXPECT_EQ(s[2][0].start, 16);
  EXPECT_EQ(s[2][0].count, 4);
  EXPECT_TRUE(s[2][0].sampled);
  h.Add(11, 10, 2);
  ASSERT_TRUE(h.Step());
  ASSERT_EQ(s[3].size(), 2u);
  EXPECT_EQ(s[3][0].request, 10);  // the decode first
  EXPECT_EQ(s[3][0].count, 1);
  EXPECT_FALSE(s[3][0].prefill);
  EXPECT_EQ(s[3][1].request, 11);
  EXPECT_EQ(s[3][1].count, 7);
  ASSERT_TRUE(h.Step());
  ASSERT_EQ(s[4].size(), 2u);
  EXPECT_EQ(s[4][1].start, 7);
  EXPECT_EQ(s[4][1].count, 3);
  EXPECT_TRUE(s[4][1].sampled);
  EXPECT_EQ(h.sched().counters().prompt_tokens, 30);
}

// Order of completion with one running slot: by priority under `priority`, by arrival under
// `fcfs`.
TEST(SchedulerPlanTest, PriorityPolicyAdmitsTheHighestFirstAndFcfsTheOldest) {
  for (SchedulingPolicy policy : {SchedulingPolicy::kPriority, SchedulingPolicy::kFcfs}) {
    Options o;
    o.sched.policy = policy;
    o.sched.max_running = 1;
    Harness h(o);
    h.Add(10, 5, 2, /*priority=*/0, absl::UnixEpoch());
    h.Add(11, 5, 2, /*priority=*/5, absl::UnixEpoch() + absl::Seconds(1));
    h.Add(12, 5, 2, /*priority=*/2, absl::UnixEpoch() + absl::Seconds(2));
    h.RunToIdle();
    std::vector<int32_t> order;
    for (const auto& step : h.runner().steps) {
      if (step[0].prefill) order.push_back(step[0].request);
    }
    const std::vector<int32_t> expected = policy == SchedulingPolicy::kPriority
                                              ? std::vector<int32_t>{11, 12, 10}
                                              : std::vector<int32_t>{10, 11, 12};
    EXPECT_EQ(order, expected);
  }
}

// The victim is the lowest priority even when it was admitted first.
TEST(SchedulerPlanTest, PreemptionTakesTheLowestPriorityBeforeTheNewest) {
  Options o;
  o.budget_blocks = 4;
  Harness h(o);
  auto low = h.Add(10, 7, 4, /*priority=*/0);
  auto high = h.Add(11, 7, 4, /*priority=*/9);
  ASSERT_TRUE(h.Step());
  ASSERT_TRUE(h.Step());
  ASSERT_TRUE(h.Step());  // both need a third block: the low-priority one yields
  EXPECT_EQ(h.sched().counters().preemptions, 1);
  ASSERT_EQ(h.runner().steps[2].size(), 1u);
  EXPECT_EQ(h.runner().steps[2][0].request, 11);
  h.RunToIdle();
  EXPECT_EQ(Drain(*low).final.preemptions, 1);
  EXPECT_EQ(Drain(*high).final.preemptions, 0);
}

TEST(SchedulerPlanTest, CancellationEndsTheRequestAndFreesItsBlocksAtOnce) {
  Harness h(Options{});
  auto a = h.Add(10, 9, 50);
  ASSERT_TRUE(h.Step());
  EXPECT_EQ(h.pool().used_blocks(), 3);  // 10 tokens: blocks for slots 0-8, then the 10th
  a->Cancel();
  EXPECT_FALSE(h.Step());
  EXPECT_EQ(h.pool().used_blocks(), 0);
  const Outcome out = Drain(*a);
  EXPECT_EQ(out.final.status.code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(out.final.finish_reason, FinishReason::kCancelled);
  EXPECT_EQ(h.sched().counters().cancelled, 1);
}

TEST(SchedulerPlanTest, DeadlinePassedEndsTheRequestWithDeadlineExceeded) {
  Options o;
  Harness h(o);
  EngineRequest r;
  r.prompt = Harness::Prompt(10, 5);
  r.max_tokens = 50;
  r.deadline = absl::UnixEpoch() + absl::Seconds(1);
  auto stream = std::make_shared<RequestStream>("r", 1 << 20);
  h.sched().Add(r, stream, absl::UnixEpoch());
  ASSERT_TRUE(h.Step(absl::UnixEpoch()));
  ASSERT_TRUE(h.Step(absl::UnixEpoch() + absl::Milliseconds(500)));
  EXPECT_FALSE(h.Step(absl::UnixEpoch() + absl::Seconds(2)));
  const Outcome out = Drain(*stream);
  EXPECT_EQ(out.final.status.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_NE(out.final.status.message().find("after 2 generated tokens"), std::string::npos)
      << out.final.status;
  EXPECT_EQ(h.pool().used_blocks(), 0);
}

// A 9-token prompt needs 3 blocks; a 2-block pool can never hold it: refused at once, and the
// request behind it runs.
TEST(SchedulerPlanTest, APromptLargerThanTheWholeBudgetIsRefusedAndOthersRun) {
  Options o;
  o.budget_blocks = 2;
  Harness h(o);
  auto big = h.Add(10, 9, 1);
  auto small = h.Add(11, 3, 2);
  h.RunToIdle();
  const Outcome refused = Drain(*big);
  EXPECT_EQ(refused.final.status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(refused.final.status.message().find("needs 3 KV blocks (9 tokens)"), std::string::npos)
      << refused.final.status;
  EXPECT_EQ(Drain(*small).tokens, Reference(Harness::Prompt(11, 3), 2));
}

// A 7-token prompt fits 2 blocks; its 9th token would need a third the 2-block budget never
// has: it ends with RESOURCE_EXHAUSTED after 2 generated tokens, which it received.
TEST(SchedulerPlanTest, ASequenceOutgrowingTheBudgetAloneEndsWithResourceExhausted) {
  Options o;
  o.budget_blocks = 2;
  Harness h(o);
  auto a = h.Add(10, 7, 5);
  h.RunToIdle();
  const Outcome out = Drain(*a);
  EXPECT_EQ(out.final.status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(out.final.status.message().find("cannot hold 9 tokens"), std::string::npos)
      << out.final.status;
  EXPECT_EQ(out.tokens, Reference(Harness::Prompt(10, 7), 2));
}

// A stream whose reader fell behind (2 undelivered tokens) is skipped until it reads.
TEST(SchedulerPlanTest, ASlowReaderIsSkippedUntilItReads) {
  Harness h(Options{});
  auto a = h.Add(10, 5, 10, 0, absl::UnixEpoch(), /*stream_tokens=*/2);
  ASSERT_TRUE(h.Step());
  ASSERT_TRUE(h.Step());
  EXPECT_FALSE(h.Step());  // two tokens wait in the stream
  const Outcome first = Drain(*a);
  EXPECT_EQ(first.tokens.size(), 2u);
  EXPECT_TRUE(h.Step());
}

// Two requests with one 13-token prompt: the second waits for the first's prefill to cache its
// 3 full blocks, then computes only the last token.
TEST(SchedulerPlanTest, ASharedPromptIsComputedOnce) {
  Options o;
  o.prefix_cache = true;
  Harness h(o);
  auto a = h.Add(10, 13, 2);
  auto b = h.Add(10, 13, 2);
  ASSERT_TRUE(h.Step());
  ASSERT_EQ(h.runner().steps[0].size(), 1u);  // b waits
  EXPECT_EQ(h.sched().num_waiting(), 1);
  ASSERT_TRUE(h.Step());
  ASSERT_EQ(h.runner().steps[1].size(), 2u);
  const ChunkRecord& second = h.runner().steps[1][1];
  EXPECT_EQ(second.request, 10);
  EXPECT_EQ(second.start, 12);  // one prompt token left: it runs as a decode would
  EXPECT_EQ(second.count, 1);
  h.RunToIdle();
  EXPECT_EQ(Drain(*b).final.usage.cached_prompt_tokens, 12);
  EXPECT_EQ(Drain(*a).final.usage.cached_prompt_tokens, 0);
}

// Idle cached blocks are reclaimed inside allocation: a request that needs the whole pool is
// admitted with the cache full of another prompt's blocks.
TEST(SchedulerPlanTest, IdleCachedBlocksAreEvictedForAnAllocation) {
  Options o;
  o.prefix_cache = true;
  o.budget_blocks = 4;
  Harness h(o);
  Drain(*h.Add(10, 13, 1));
  h.RunToIdle();
  EXPECT_EQ(h.kv().Stats().cached_blocks, 3);
  auto b = h.Add(11, 15, 1);  // 4 blocks
  h.RunToIdle();
  EXPECT_TRUE(Drain(*b).final.status.ok());
  EXPECT_EQ(h.kv().counters().prefix_evictions, 3);
}

// Cached bytes are exact with blocks of two layouts: a sink block kept in FP16 and the prompt's
// other full blocks written in INT4.
TEST(SchedulerPlanTest, CachedBytesAreExactAcrossLayouts) {
  Options o;
  o.prefix_cache = true;
  o.policy.format = kernels::KvFormat::kInt4;
  o.policy.sink_tokens = 4;
  o.policy.window_format = kernels::KvFormat::kFp16;
  o.num_kv_heads = 4;
  o.head_dim = 32;
  Harness h(o);
  auto a = h.Add(10, 13, 1);
  h.RunToIdle();
  ASSERT_TRUE(Drain(*a).final.status.ok());
  const KvCacheStats s = h.kv().Stats();
  const int64_t hot = h.pool().layout(h.policy().write_layout()).block_bytes;
  const int64_t cold = h.pool().layout(h.policy().cold_layout()).block_bytes;
  ASSERT_NE(hot, cold);
  EXPECT_EQ(s.cached_blocks, 3);
  EXPECT_EQ(s.cached_bytes, hot + 2 * cold);
  EXPECT_EQ(s.cached_bytes, h.pool().used_bytes());
  int64_t blocks = 0;
  int64_t bytes = 0;
  h.kv().FlushPrefixCache(&blocks, &bytes);
  EXPECT_EQ(blocks, 3);
  EXPECT_EQ(bytes, hot + 2 * cold);
  EXPECT_EQ(h.kv().Stats().cached_bytes, 0);
  EXPECT_EQ(h.pool().used_bytes(), 0);
}

}  // namespace
}  // namespace kvserve::engine

namespace kvserve::engine {
namespace {

// A step costs decode_ms per decode token and prefill_ms per prefill token (context ignored).
class FakeCostModel : public StepCostModel {
 public:
  FakeCostModel(double decode_ms, double prefill_ms)
      : decode_ms_(decode_ms), prefill_ms_(prefill_ms) {}
  std::optional<absl::Duration> Estimate(const StepShape& s) const override {
    return absl::Microseconds(
        std::llround(1000 * (decode_ms_ * s.decode_tokens + prefill_ms_ * s.prefill_tokens)));
  }
  void Observe(const StepShape&, absl::Duration) override { ++observed; }
  int observed = 0;

 private:
  double decode_ms_;
  double prefill_ms_;
};

// Ten streams decode (10 ms by the fake model); a 100-token prompt arrives. Under a 20 ms target
// each step takes 20 prefill tokens of it ((20 - 10) / 0.5), never more, until the prompt is in.
TEST(SchedulerStepBudgetTest, PrefillFillsAStepOnlyUpToTheTimeTarget) {
  FakeCostModel cost(1.0, 0.5);
  Options o;
  o.sched.max_step_time = absl::Milliseconds(20);
  o.sched.min_prefill_tokens = 4;
  o.sched.cost_model = &cost;
  Harness h(o);
  for (int i = 0; i < 10; ++i) h.Add(20 + i, 4, 50);
  ASSERT_TRUE(h.Step());  // prefills only: no stream waits, so no bound
  EXPECT_EQ(h.runner().steps[0].size(), 10u);
  h.Add(10, 100, 2);
  for (int step = 1; step <= 5; ++step) {
    ASSERT_TRUE(h.Step());
    const std::vector<ChunkRecord>& s = h.runner().steps[step];
    ASSERT_EQ(s.size(), 11u);
    const ChunkRecord& p = s.back();
    EXPECT_EQ(p.request, 10);
    EXPECT_EQ(p.start, 20 * (step - 1));
    EXPECT_EQ(p.count, 20) << "step " << step;
    EXPECT_EQ(p.sampled, step == 5);
  }
  EXPECT_EQ(cost.observed, 6);  // every step teaches the model
  const FixedHistogram& prefill = h.sched().histograms().prefill_tokens;
  EXPECT_EQ(prefill.count, 6);
  EXPECT_EQ(prefill.sum, 40 + 5 * 20);
}

// Decodes alone exceed the target (30 ms against 20): the prompt still gets min_prefill_tokens
// every step and gets its first token after ceil(100 / 8) = 13 steps.
TEST(SchedulerStepBudgetTest, NoPrefillWaitsForever) {
  FakeCostModel cost(3.0, 0.5);
  Options o;
  o.sched.max_step_time = absl::Milliseconds(20);
  o.sched.min_prefill_tokens = 8;
  o.sched.cost_model = &cost;
  o.budget_blocks = 256;
  Harness h(o);
  for (int i = 0; i < 10; ++i) h.Add(20 + i, 4, 200);
  ASSERT_TRUE(h.Step());
  auto p = h.Add(10, 100, 1);
  for (int step = 1; step <= 13; ++step) {
    ASSERT_TRUE(h.Step());
    EXPECT_EQ(h.runner().steps[step].back().count, step < 13 ? 8 : 4) << "step " << step;
  }
  const Outcome out = Drain(*p);
  EXPECT_TRUE(out.final.status.ok()) << out.final.status;
  EXPECT_EQ(out.tokens, Reference(Harness::Prompt(10, 100), 1));
}

// With high-priority streams decoding past the target, a low-priority prompt gets nothing until
// they end; a prompt of their priority gets its minimum share.
TEST(SchedulerStepBudgetTest, ALowPriorityPrefillNeverDelaysAHigherPriorityDecode) {
  FakeCostModel cost(3.0, 0.5);
  Options o;
  o.sched.policy = SchedulingPolicy::kPriority;
  o.sched.max_step_time = absl::Milliseconds(20);
  o.sched.min_prefill_tokens = 8;
  o.sched.cost_model = &cost;
  Harness h(o);
  for (int i = 0; i < 10; ++i) h.Add(20 + i, 4, 5, /*priority=*/5);
  ASSERT_TRUE(h.Step());
  h.Add(10, 40, 1, /*priority=*/0);
  ASSERT_TRUE(h.Step());
  EXPECT_EQ(h.runner().steps[1].size(), 10u);  // decodes only
  h.Add(11, 40, 1, /*priority=*/5);
  ASSERT_TRUE(h.Step());
  ASSERT_EQ(h.runner().steps[2].size(), 11u);
  EXPECT_EQ(h.runner().steps[2].back().request, 11);
  EXPECT_EQ(h.runner().steps[2].back().count, 8);
  // Once the high-priority streams end (5 tokens each), the low-priority prompt runs.
  h.RunToIdle();
  int64_t first_low = -1;
  int64_t last_high_decode = -1;
  for (size_t i = 0; i < h.runner().steps.size(); ++i) {
    for (const ChunkRecord& c : h.runner().steps[i]) {
      if (c.request == 10 && first_low < 0) first_low = static_cast<int64_t>(i);
      if (c.request >= 20 && !c.prefill) last_high_decode = static_cast<int64_t>(i);
    }
  }
  EXPECT_GT(first_low, last_high_decode);
}

// The automatic target: step_time_ratio times a decode-only step of the full batch. Four decodes
// (4 ms) and one prompt running, nothing waiting: the full batch is 5 decodes, 5 ms, so the
// target is 10 ms and the prompt gets (10 - 4) / 0.5 = 12 tokens a step.
TEST(SchedulerStepBudgetTest, TheAutomaticTargetIsARatioOfAFullBatchDecodeStep) {
  FakeCostModel cost(1.0, 0.5);
  Options o;
  o.sched.step_time_ratio = 2.0;
  o.sched.min_prefill_tokens = 4;
  o.sched.cost_model = &cost;
  Harness h(o);
  for (int i = 0; i < 4; ++i) h.Add(20 + i, 4, 50);
  ASSERT_TRUE(h.Step());
  h.Add(10, 60, 1);
  ASSERT_TRUE(h.Step());
  EXPECT_EQ(h.runner().steps[1].back().request, 10);
  EXPECT_EQ(h.runner().steps[1].back().count, 12);
}

// Without a target (the default options) the prompt takes what max_batch_tokens leaves.
TEST(SchedulerStepBudgetTest, WithoutATargetOnlyTheTokenBudgetBounds) {
  FakeCostModel cost(1.0, 0.5);
  Options o;
  o.sched.cost_model = &cost;
  o.sched.max_batch_tokens = 64;
  Harness h(o);
  for (int i = 0; i < 10; ++i) h.Add(20 + i, 4, 50);
  ASSERT_TRUE(h.Step());
  h.Add(10, 100, 1);
  ASSERT_TRUE(h.Step());
  EXPECT_EQ(h.runner().steps[1].back().count, 54);
}

// Every gap between two tokens of a request is counted once, under its priority.
TEST(SchedulerStepBudgetTest, TokenGapsAreCountedByPriority) {
  Options o;
  Harness h(o);
  h.Add(10, 4, 5, /*priority=*/3);
  h.Add(11, 4, 3, /*priority=*/0);
  h.RunToIdle();
  const auto& gaps = h.sched().histograms().token_gap_seconds;
  ASSERT_EQ(gaps.size(), 2u);
  EXPECT_EQ(gaps.at(3).count, 4);
  EXPECT_EQ(gaps.at(0).count, 2);
}

}  // namespace
}  // namespace kvserve::engine
