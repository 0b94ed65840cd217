// The serving engine: one engine thread running iteration-level (continuous) batching over the
// requests submitted from any thread.
//
// Each step the engine thread: takes newly submitted requests into the waiting queue; drops
// cancelled and expired ones (freeing their KV blocks at once); admits waiting requests by policy
// while `max_running_requests` allows and the KV pool can hold their prompt's blocks; builds one
// batch of decode tokens plus prefill chunks under `max_batch_tokens`; runs the forward pass;
// samples; pushes text deltas to each request's RequestStream; finishes requests at EOS, a stop
// string, max_tokens or the context limit. When a running request needs a block and none is left,
// the lowest-priority, most recently admitted request is preempted: its blocks are freed and it
// goes back to the waiting queue to be recomputed later (its output so far is kept, so a client
// sees only delay, and greedy output is unchanged).
//
// Thread-safety: Submit, Stats, BeginShutdown, WaitIdle and the accessors are thread-safe.
#ifndef KVSERVE_ENGINE_RUNTIME_ENGINE_H_
#define KVSERVE_ENGINE_RUNTIME_ENGINE_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "engine/kv/token_eviction/token_eviction_settings.h"
#include "engine/runtime/local_model.h"
#include "engine/serving/request.h"
#include "engine/serving/request_stream.h"
#include "engine/serving/scheduler.h"

namespace kvserve::engine {

struct EngineOptions {
  LocalModelOptions model;  // model, KV format, budget, block size, threads
  SchedulingPolicy policy = SchedulingPolicy::kFcfs;
  int32_t max_running_requests = 64;  // sequences in one batch at most
  int64_t max_batch_tokens = 512;     // tokens per forward step (decodes + prefill chunks)
  // Step-time target (0 = step_time_ratio decides), its automatic form (0 with max_step_ms 0:
  // off) and the prefill share no step goes without: SchedulerOptions.
  double max_step_ms = 0;
  double step_time_ratio = 2.0;
  int64_t min_prefill_tokens = 16;
  int32_t max_waiting_requests = 256;  // queue bound; beyond it Submit is ResourceExhausted
  int32_t max_prompt_tokens = 0;       // 0 = the model's context - 1
  int32_t max_tokens_limit = 0;        // upper bound for a request's max_tokens; 0 = context
  int64_t stream_buffer_tokens = 256;  // undelivered tokens per stream before it is paused
  absl::Duration idle_poll = absl::Milliseconds(50);  // engine thread wake-up when idle
  int32_t top_requests = 10;  // requests listed in EngineStats::top_requests
  // Token eviction (YAML token_eviction.*): default policy and budget, and the limits a
  // request's override must respect.
  TokenEvictionConfig token_eviction;
};

// A consistent snapshot of the engine's state (taken on the engine thread between steps).
struct EngineStats {
  // The pool's exact accounting: bytes by format and role, FP16 equivalent.
  KvPoolStats kv;
  // Live requests holding the most KV bytes (at most EngineOptions::top_requests).
  std::vector<RequestKvEntry> top_requests;
  // KV pool.
  int64_t kv_budget_bytes = 0;
  int64_t kv_allocated_bytes = 0;    // heap bytes held for block storage
  int64_t kv_used_bytes = 0;         // bytes of blocks in use
  int64_t kv_used_blocks = 0;        // active + cached
  int64_t kv_cached_blocks = 0;      // cached for prefix reuse, used by no request (reusable)
  int64_t prefix_cached_blocks = 0;  // every block in the prefix index (in use or not)
  // Exact bytes of the kv_cached_blocks (each counted in the layout it is stored in).
  int64_t kv_cached_bytes = 0;
  int64_t kv_free_blocks = 0;  // blocks of the default layout that can still be allocated
  int64_t kv_block_bytes = 0;  // bytes of one block of the default layout
  // Prefix cache (zero when it is disabled), counted since the engine started.
  std::string prefix_eviction_policy;      // block eviction policy name ("" when disabled)
  int64_t prefix_queries = 0;              // prefix lookups (one per admission)
  int64_t prefix_query_tokens = 0;         // prompt tokens looked up
  int64_t prefix_hit_tokens = 0;           // of which served from cached blocks
  int64_t prefix_capacity_evictions = 0;   // cached blocks dropped by the policy for room
  int64_t prefix_erased_blocks = 0;        // cached blocks erased (invalidated)
  int64_t prefix_flushed_blocks = 0;       // cached blocks dropped by FlushPrefixCache
  int64_t scheduler_prefix_evictions = 0;  // evictions the scheduler asked for (out of blocks)
  // Token eviction, counted since the engine started.
  std::string token_eviction_policy;              // the configured default policy
  int32_t token_eviction_budget = 0;              // the configured default budget (0: none)
  std::map<std::string, int64_t> tokens_evicted;  // tokens dropped, by policy
  int64_t token_eviction_events = 0;              // compactions run
  // Requests.
  int32_t running_requests = 0;
  int32_t waiting_requests = 0;
  int64_t requests_finished = 0;
  int64_t requests_cancelled = 0;
  int64_t requests_failed = 0;
  int64_t preemptions = 0;
  int64_t prompt_tokens = 0;  // prompt tokens computed (recomputation included)
  int64_t generated_tokens = 0;
  int64_t steps = 0;
  absl::Duration forward_time;  // total time inside the forward pass
  absl::Duration step_time;     // total time of steps (scheduling, forward, sampling, stats)
  // Step time, prefill tokens per step, and the gap between consecutive tokens of a request by
  // its priority (SchedulerHistograms).
  SchedulerHistograms histograms;
};

// What Engine::FlushPrefixCache released.
struct PrefixFlushResult {
  int64_t blocks = 0;
  int64_t bytes = 0;
};

class Engine {
 public:
  // Loads the model and starts the engine thread. Errors name the option or file at fault.
  static absl::StatusOr<std::unique_ptr<Engine>> Create(const EngineOptions& options);
  // Stops the engine thread; requests still running end with UNAVAILABLE.
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  const ModelConfig& config() const;
  const Tokenizer& tokenizer() const;
  const EngineOptions& options() const;
  // Largest prompt and max_tokens a request may ask for.
  int32_t max_prompt_tokens() const;
  int32_t max_tokens_limit() const;

  // Validates and queues a request. InvalidArgument naming the field (empty prompt, token id
  // outside the vocabulary, prompt too long, max_tokens out of range, bad sampling parameter,
  // token eviction policy unknown or budget outside the configured limits);
  // ResourceExhausted when the waiting queue is full (the message names the limit);
  // Unavailable after BeginShutdown.
  absl::StatusOr<std::shared_ptr<RequestStream>> Submit(EngineRequest request);

  EngineStats Stats() const;

  // Asks the engine thread to flush the prefix cache: every cached block no request uses is
  // dropped from the index and its bytes go back to the pool (blocks in use stay cached).
  // Blocks until done; returns what was released (nothing when the prefix cache is off).
  // Unavailable when the engine has stopped.
  absl::StatusOr<PrefixFlushResult> FlushPrefixCache();

  // Stops accepting new requests (Submit returns Unavailable); running ones continue.
  void BeginShutdown();
  // Waits until no request is running or waiting, or the timeout passes. True when idle.
  bool WaitIdle(absl::Duration timeout);
  // Ends every remaining request with `status` (e.g. Unavailable after a drain timeout).
  void AbortAll(const absl::Status& status);

 private:
  class Impl;
  explicit Engine(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvserve::engine

#endif  // KVSERVE_ENGINE_RUNTIME_ENGINE_H_
