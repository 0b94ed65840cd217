// Iteration-level (continuous) batching over the paged KV cache, without threads: the engine
// thread (serving) or a plain loop (offline generation) calls Step() repeatedly.
//
// Step():
//  1. ends sequences whose stream was cancelled or whose deadline passed (their blocks are freed
//     at once);
//  2. admits waiting sequences by policy (fcfs: arrival order; priority: highest priority first,
//     then arrival) while fewer than max_running run and the pool can hold the blocks of every
//     token the sequence must (re)compute, each block counted (and allocated) in the layout it
//     will have when the prefill ends: when the KV policy demotes blocks to a smaller long-term
//     format, prompt blocks outside the recent window are allocated and written in that format
//     directly (prefill chunks then end at block boundaries, so that every such block is written
//     whole in one step), and a prefill never holds its prompt at the window format's size; admission stops at the first sequence that does not
//     fit, so a large request is not starved by smaller ones behind it; a sequence whose prompt
//     shares full blocks with a running prefill that will cache them waits for that (and the
//     ones behind it are considered), so simultaneous requests with one system prompt compute
//     it once;
//  3. builds one batch: one token for every decoding sequence whose stream has room, then prefill
//     chunks under the token budget; when a decoding sequence needs a new block and none is free,
//     the lowest-priority, most recently admitted running sequence is preempted (blocks freed,
//     back to the waiting queue, recomputed later from its prompt plus what it generated);
//     with a demoting KV policy the recomputation feeds the prompt as a prefill and the generated
//     tokens in chunks that never step over a demotion point (KvCachePolicy::NextDemotionPoint),
//     so that every block is written, and every token attends to the blocks, exactly as the
//     first time, and the output does not change;
//  4. runs the forward pass, samples, and pushes tokens and text (stop strings applied) to each
//     sequence's RequestStream; finished sequences release their blocks.
//
// Thread-safety: none; one thread drives a Scheduler.
#ifndef KVSERVE_ENGINE_SERVING_SCHEDULER_H_
#define KVSERVE_ENGINE_SERVING_SCHEDULER_H_

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "engine/kv/block_pool.h"
#include "engine/kv/kv_cache_policy.h"
#include "engine/kv/prefix_index.h"
#include "engine/kv/token_eviction/token_eviction_settings.h"
#include "engine/model/llama_model.h"
#include "engine/serving/request.h"
#include "engine/serving/request_stream.h"
#include "engine/tokenizer/tokenizer.h"

namespace kvserve::engine {

enum class SchedulingPolicy { kFcfs, kPriority };

struct SchedulerOptions {
  SchedulingPolicy policy = SchedulingPolicy::kFcfs;
  int32_t max_running = 64;        // sequences in one batch at most
  int64_t max_batch_tokens = 512;  // tokens per forward step
  // Prefix reuse (null = off). The index holds its own pool reference on each cached block and
  // must outlive the scheduler; blocks are cached once full and in their final layout.
  PrefixIndex* prefix_index = nullptr;
  std::string model_identity;      // part of every cached block's key
  // Token eviction (null = off for every request): the policies and limits requests resolve
  // against; must outlive the scheduler. A sequence over its budget is compacted before the
  // step that would overflow it (see sequence_token_eviction.h); its prefill runs in chunks the
  // budget can hold, and its blocks stop being shared with the prefix cache once it evicts.
  const TokenEvictionSettings* token_eviction = nullptr;
};

// Counters since the scheduler was created.
struct SchedulerCounters {
  int64_t steps = 0;
  int64_t preemptions = 0;
  int64_t prompt_tokens = 0;     // tokens computed in prefill (recomputation included)
  int64_t cached_prompt_tokens = 0;  // prompt tokens served from the prefix cache
  int64_t prefix_evictions = 0;  // cached blocks dropped to make room
  // Tokens dropped by token eviction, by policy name.
  std::map<std::string, int64_t> tokens_evicted;
  int64_t token_eviction_events = 0;  // compactions run
  int64_t generated_tokens = 0;
  int64_t finished = 0;          // ended normally (length, eos, stop)
  int64_t cancelled = 0;
  int64_t failed = 0;            // deadline, error, abort
  // Wall time inside the forward pass, and of whole steps (with the engine's publication of its
  // statistics after each step). step_time - forward_time is the scheduler's own cost
  // (admission, batch building, sampling, detokenizing, stop strings, streaming, statistics).
  // Wall clocks only: a thread CPU-time read is a system call (about 0.6 µs here), and four per
  // step cost a single-sequence decode about 9% of its time.
  absl::Duration forward_time;
  absl::Duration step_time;
  // Wall time converting blocks that left the recent window to their long-term format
  // (KvCachePolicy::Demote: the quantize-on-write of the quantized formats). Part of step_time.
  absl::Duration demotion_time;
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
  // kv_policy: the layouts blocks are written in and demoted to; must outlive the scheduler.
  Scheduler(LlamaModel* model, BlockPool* pool, const KvCachePolicy* kv_policy,
            const Tokenizer* tokenizer, SchedulerOptions options);
  ~Scheduler();

  // Queues a validated request; its output goes to `stream`. `arrival` is when it was submitted.
  void Add(EngineRequest request, std::shared_ptr<RequestStream> stream, absl::Time arrival);

  // One iteration (see above). Returns false when there was nothing to do (no sequence could
  // run: idle, or every running stream is full).
  bool Step(absl::Time now);

  // Ends every sequence with `status` (final event) and frees its blocks.
  void AbortAll(const absl::Status& status, absl::Time now);

  int32_t num_running() const { return static_cast<int32_t>(running_.size()); }
  int32_t num_waiting() const { return static_cast<int32_t>(waiting_.size()); }
  bool idle() const { return running_.empty() && waiting_.empty(); }
  const SchedulerCounters& counters() const { return counters_; }
  // Adds work the caller did for the step that just ran (publishing its statistics) to
  // counters().step_time.
  void AddStepTime(absl::Duration d) { counters_.step_time += d; }
  // The `n` live requests holding the most KV bytes, largest first.
  std::vector<RequestKvEntry> TopRequestsByKv(int n) const;

 private:
  struct Sequence;

  void Admit(absl::Time now);
  // Pushes an event to the sequence's stream; NotifyStreams tells its consumer. Every public
  // method that can push ends with NotifyStreams.
  void PushEvent(Sequence* s, StreamEvent e);
  void NotifyStreams();
  // True when a running request is prefilling blocks this waiting one could share (same tokens,
  // same salt) that are not cached yet: admitting it now would compute them twice, so it waits
  // until they reach the prefix cache (a step or a few).
  bool WaitsForPrefix(const Sequence* s) const;
  bool Preempt(Sequence* requester);
  // Frees the sequence's blocks (telling the prefix index first).
  void ReleaseKv(Sequence* s);
  // Reserve with prefix-cache eviction when the pool is full. With `final_layouts` (a prefill
  // reserved at admission), each new block is allocated in the layout it has once `slots` tokens
  // are cached (KvCachePolicy::FinalLayout) rather than in the write layout.
  absl::Status ReserveEvicting(Sequence* s, int64_t slots, bool final_layouts = false);
  // True when this sequence's prefill blocks are allocated in their final layouts at admission
  // (written cold directly, see KvCachePolicy).
  bool DirectCold(const Sequence* s) const;
  // Bytes of the blocks `s` still needs to hold `slots` tokens, each in the layout it is
  // allocated in (final layouts when `final_layouts`), from table index `from` on.
  int64_t BytesNeeded(const Sequence* s, int64_t slots, bool final_layouts, int64_t from) const;
  // How many leading tokens of the sequence prefix reuse may cover.
  int64_t MatchableTokens(const Sequence* s) const;
  // True when block `b` of the sequence may go to the prefix cache: its bytes are what any
  // request with the same tokens would compute for it.
  bool Shareable(const Sequence* s, int64_t b) const;
  // The prefill chunk of a DirectCold sequence that `take` tokens (within the budget) become:
  // cut so that every cold-allocated block is written whole in one step and recomputed
  // generated tokens are fed as decoding fed them; 0 when it must wait for a later step.
  int64_t ChunkForDirectCold(const Sequence* s, int64_t take, bool prefill_added) const;
  // Attaches the longest cached prefix of the sequence's tokens.
  void AttachCachedPrefix(Sequence* s);
  // Caches the sequence's newly final full blocks.
  void CacheFullBlocks(Sequence* s);
  // Token eviction before `incoming` tokens are appended: compacts the sequence when it would
  // exceed its budget. ResourceExhausted or Internal: the sequence's KV is unusable.
  absl::Status EvictTokens(Sequence* s, int64_t incoming);
  PrefixKeys KeysFor(const Sequence* s, LayoutId layout) const;
  void Finish(Sequence* s, FinishReason reason, absl::Status status, absl::Time now);
  void EmitToken(Sequence* s, int32_t token, absl::Time now);
  void RemoveFinished();

  LlamaModel* model_;
  BlockPool* pool_;
  const KvCachePolicy* kv_policy_;
  LayoutId layout_;  // kv_policy_->write_layout()
  // Prefills write blocks that leave the window within their step directly in the cold layout:
  // the policy demotes, and a chunk can always end at a block boundary (max_batch_tokens >=
  // block_size).
  bool direct_cold_ = false;
  const Tokenizer* tokenizer_;
  SchedulerOptions options_;
  int64_t next_order_ = 0;
  std::deque<std::unique_ptr<Sequence>> waiting_;
  std::vector<std::unique_ptr<Sequence>> running_;
  SchedulerCounters counters_;
  // Scratch reused across steps.
  ForwardBatch batch_;
  std::vector<Sequence*> row_seq_;
  std::vector<Sequence*> order_;  // running_ by priority, then admission
  bool order_stale_ = true;        // running_ changed since order_ was built
  std::vector<std::shared_ptr<RequestStream>> to_notify_;  // streams owed a Notify
  std::vector<float> logits_;
};

}  // namespace kvserve::engine

#endif  // KVSERVE_ENGINE_SERVING_SCHEDULER_H_
