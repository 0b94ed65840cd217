// Iteration-level (continuous) batching over the paged KV cache, without threads: the engine
// thread (serving) or a plain loop (offline generation) calls Step() repeatedly. A step is
// planned, executed and applied in three parts:
//
//   Schedule(now) -> ScheduledBatch   decides only (this class)
//   ModelRunner::Execute(batch)       forward pass and sampling (model_runner.h)
//   Update(batch, output, now)        applies the sampled tokens (this class, with the output
//                                     processor for text, stop strings and stream events)
//
// Schedule():
//  1. ends sequences whose stream was cancelled or whose deadline passed (their blocks are freed
//     at once);
//  2. admits waiting sequences by policy (fcfs: arrival order; priority: highest priority first,
//     then arrival) while fewer than max_running run and the KV cache manager can hold every token
//     the sequence must (re)compute (KvCacheManager::CheckAdmission: blocks counted in the layout
//     they will have when the prefill ends, cached prefix blocks matched, idle cached blocks
//     counted as reclaimable); admission stops at the first sequence that does not fit, so a
//     large request is not starved by smaller ones behind it; a sequence whose prompt shares full
//     blocks with a running prefill that will cache them waits for that (and the ones behind it
//     are considered), so simultaneous requests with one system prompt compute it once;
//  3. gives every decoding sequence whose stream has room a slot for its next token; when none
//     is left, the lowest-priority, most recently admitted running sequence is preempted (blocks
//     freed, back to the waiting queue, recomputed later from its prompt plus what it generated;
//     the recomputation is chunked so that the output does not change, see
//     KvCacheManager::ChunkLimit);
//  4. plans one batch: one token for every decoding sequence, then prefill chunks under the
//     token budget (max_batch_tokens).
// Update(): emits each sampled token (EOS, stop strings, max_tokens, the context length end a
// request), demotes blocks that left the recent window, caches full blocks for prefix reuse, and
// frees finished sequences' blocks.
//
// Thread-safety: none; one thread drives a Scheduler.
#ifndef KVSERVE_ENGINE_SERVING_SCHEDULER_H_
#define KVSERVE_ENGINE_SERVING_SCHEDULER_H_

#include <climits>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "engine/common/histogram.h"
#include "engine/kv/kv_cache_manager.h"
#include "engine/serving/model_runner.h"
#include "engine/serving/output_processor.h"
#include "engine/serving/request.h"
#include "engine/serving/request_stream.h"
#include "engine/serving/step_cost_model.h"
#include "engine/tokenizer/tokenizer.h"

namespace kvserve::engine {

enum class SchedulingPolicy { kFcfs, kPriority };

struct SchedulerOptions {
  SchedulingPolicy policy = SchedulingPolicy::kFcfs;
  int32_t max_running = 64;        // sequences in one batch at most
  int64_t max_batch_tokens = 512;  // tokens per forward step
  EndRules end;                    // EOS / BOS ids and the context length
  // Time-aware step budget. A step holds every decode that can run, then prefill chunks, highest
  // priority first, only while the cost model's estimate of the whole step stays within a target:
  // a new request's TTFT is traded against the running streams' inter-token latency here. A step
  // with no decode is not bounded (no stream waits on it). The target is `max_step_time` when set,
  // else `step_time_ratio` times the estimated time of a decode-only step of the full batch (every
  // running and waiting request, up to max_running, at the decodes' mean context), which follows
  // the model and the machine; both zero: off (steps bounded by max_batch_tokens alone).
  absl::Duration max_step_time = absl::ZeroDuration();
  double step_time_ratio = 0;
  // No prefill starves: the highest-priority prefill gets at least this many tokens in every
  // step that runs decodes, even past the target, unless a decode in the step has a higher
  // priority than it (a high-priority decode is never delayed by a lower-priority prefill).
  int64_t min_prefill_tokens = 16;
  // The step cost model (null: a LinearStepCostModel of the scheduler's own). Must outlive it.
  StepCostModel* cost_model = nullptr;
};

// Distributions since the scheduler was created (exported as Prometheus histograms).
struct SchedulerHistograms {
  SchedulerHistograms();
  FixedHistogram step_seconds;    // wall time of a step (Schedule to the end of Update)
  FixedHistogram prefill_tokens;  // prefill tokens per step
  // Time between consecutive tokens of a request, by its priority (at most kMaxPriorityLabels
  // priorities; the rest are counted under kOtherPriority).
  std::map<int32_t, FixedHistogram> token_gap_seconds;
  static constexpr int kMaxPriorityLabels = 16;
  static constexpr int32_t kOtherPriority = INT32_MIN;
};

// Counters since the scheduler was created.
struct SchedulerCounters {
  int64_t steps = 0;
  int64_t preemptions = 0;
  int64_t prompt_tokens = 0;         // tokens computed in prefill (recomputation included)
  int64_t cached_prompt_tokens = 0;  // prompt tokens served from the prefix cache
  int64_t generated_tokens = 0;
  int64_t finished = 0;  // ended normally (length, eos, stop)
  int64_t cancelled = 0;
  int64_t failed = 0;  // deadline, error, abort
  // Wall time inside the forward pass, and of whole steps (with the engine's publication of its
  // statistics after each step). step_time - forward_time is the scheduler's own cost
  // (admission, batch building, sampling, detokenizing, stop strings, streaming, statistics).
  // Wall clocks only: a thread CPU-time read is a system call (about 0.6 µs here), and four per
  // step cost a single-sequence decode about 9% of its time.
  absl::Duration forward_time;
  absl::Duration step_time;
};

// KV held by one live request.
struct RequestKvEntry {
  std::string id;
  int64_t bytes = 0;
  int64_t blocks = 0;
  int64_t tokens = 0;  // tokens whose K/V are cached
  bool running = false;
};

class Scheduler {
 public:
  // `kv`, `runner` and `tokenizer` must outlive the scheduler. `runner` may be null for a caller
  // that drives Schedule/Update itself (Step then must not be called).
  Scheduler(KvCacheManager* kv, ModelRunner* runner, const Tokenizer* tokenizer,
            SchedulerOptions options);
  ~Scheduler();

  // Queues a validated request; its output goes to `stream`. `arrival` is when it was submitted.
  void Add(EngineRequest request, std::shared_ptr<RequestStream> stream, absl::Time arrival);

  // One iteration: Schedule, the runner's Execute, Update. Returns false when there was nothing
  // to do (no sequence could run: idle, or every running stream is full). `after_schedule`, when
  // set, runs once the step is planned and before it executes: admission and preemption have
  // settled the waiting queue (num_waiting) for the rest of the step.
  bool Step(absl::Time now, const std::function<void()>& after_schedule = nullptr);

  // Plans the next step (see above). The batch stays valid, and its sequences' KV reserved,
  // until Update. An empty batch: nothing can run now (ended requests were notified).
  const ScheduledBatch& Schedule(absl::Time now);
  // Applies the executed step. `output.sampled` has one token per chunk of `batch` with a
  // sampler (and `output.logprobs` one entry per sampled token when a chunk asked for
  // log-probabilities); a failed step ends every running request with INTERNAL.
  // REQUIRES: `batch` is the one the last Schedule returned, not empty.
  void Update(const ScheduledBatch& batch, const StepOutput& output, absl::Time now);

  // Ends every sequence with `status` (final event) and frees its blocks.
  void AbortAll(const absl::Status& status, absl::Time now);

  int32_t num_running() const { return static_cast<int32_t>(running_.size()); }
  int32_t num_waiting() const { return static_cast<int32_t>(waiting_.size()); }
  bool idle() const { return running_.empty() && waiting_.empty(); }
  const SchedulerCounters& counters() const { return counters_; }
  const SchedulerHistograms& histograms() const { return histograms_; }
  // Adds work the caller did for the step that just ran (publishing its statistics) to
  // counters().step_time.
  void AddStepTime(absl::Duration d) { counters_.step_time += d; }
  // The `n` live requests holding the most KV bytes, largest first.
  std::vector<RequestKvEntry> TopRequestsByKv(int n) const;
  // The KV of every live sequence (for KvCacheManager::VerifyCounts in tests).
  std::vector<const KvSequence*> LiveKv() const;

 private:
  struct Sequence;

  // Schedule's parts.
  void EndCancelledAndExpired(absl::Time now);
  void Admit(absl::Time now);
  // Gives every decoding sequence (and every prefilling one under token eviction) the slots of
  // this step's tokens, preempting when the cache is full.
  void ReserveStepSlots(absl::Time now);
  void ReserveSlots(Sequence* s, absl::Time now);
  void PlanBatch();
  // The prefill tokens (at most `take`) a chunk of `s` may have in a step of shape `shape` under
  // the time budget, given the highest priority of the step's decodes.
  int64_t PrefillWithinBudget(const Sequence* s, int64_t take, bool first_prefill,
                              int32_t top_decode_priority) const;
  // The step-time target for the planned decodes (step_shape_); nullopt: no bound.
  std::optional<absl::Duration> StepTarget() const;
  // Update's parts.
  // `logprob`: the token's log-probabilities, when the request asks for them (else null).
  void EmitToken(Sequence* s, int32_t token, const TokenLogprob* logprob, absl::Time now);
  void AfterStep(absl::Time now);

  // Pushes an event to the sequence's stream; NotifyStreams tells its consumer. Every public
  // method that can push ends with NotifyStreams.
  void PushEvent(Sequence* s, StreamEvent e);
  void NotifyStreams();
  // True when a running request is prefilling blocks this waiting one could share (same tokens,
  // same salt) that are not cached yet: admitting it now would compute them twice, so it waits
  // until they reach the prefix cache (a step or a few).
  bool WaitsForPrefix(const Sequence* s) const;
  // Preempts the lowest-priority, most recently admitted running sequence. False when none was,
  // or when it was `requester` itself.
  bool Preempt(Sequence* requester);
  void Recompute(Sequence* s);  // drops the KV; the sequence goes back to waiting
  void Finish(Sequence* s, FinishReason reason, absl::Status status, absl::Time now);
  void RemoveFinished();
  void SortRunning();

  KvCacheManager* kv_;
  ModelRunner* runner_;
  OutputProcessor output_;
  SchedulerOptions options_;
  int64_t next_order_ = 0;
  std::deque<std::unique_ptr<Sequence>> waiting_;
  std::vector<std::unique_ptr<Sequence>> running_;
  SchedulerCounters counters_;
  SchedulerHistograms histograms_;
  std::unique_ptr<StepCostModel> own_cost_model_;
  StepCostModel* cost_model_;                  // options_.cost_model or own_cost_model_
  StepShape step_shape_;                       // of the planned step
  std::optional<absl::Duration> step_target_;  // of the planned step
  // The plan of the current step, and the sequence of each chunk.
  ScheduledBatch batch_;
  std::vector<Sequence*> chunk_seq_;
  std::vector<Sequence*> order_;  // running_ by priority, then admission
  bool order_stale_ = true;       // running_ changed since order_ was built
  std::vector<std::shared_ptr<RequestStream>> to_notify_;  // streams owed a Notify
  absl::Time step_start_;  // wall clock at the start of the current step
};

}  // namespace kvserve::engine

#endif  // KVSERVE_ENGINE_SERVING_SCHEDULER_H_
