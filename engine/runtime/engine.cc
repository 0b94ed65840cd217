#include "engine/runtime/engine.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "engine/common/status_macros.h"

namespace kvserve::engine {

class Engine::Impl {
 public:
  Impl(EngineOptions options, std::unique_ptr<LocalModel> local,
       std::unique_ptr<TokenEvictionSettings> token_eviction)
      : options_(std::move(options)),
        local_(std::move(local)),
        token_eviction_(std::move(token_eviction)) {
    KvCacheManagerOptions ko;
    ko.prefix_index = local_->prefix_index();  // null when prefix_cache.enabled is false
    ko.model_identity = local_->model_identity();
    ko.token_eviction = token_eviction_.get();
    kv_ = std::make_unique<KvCacheManager>(&local_->kv_pool(), &local_->kv_policy(), ko);
    runner_ = std::make_unique<LlamaModelRunner>(&local_->model(), &local_->kv_pool());
    SchedulerOptions so;
    so.policy = options_.policy;
    so.max_running = options_.max_running_requests;
    so.max_batch_tokens = options_.max_batch_tokens;
    so.max_step_time = absl::Microseconds(std::llround(options_.max_step_ms * 1000.0));
    so.step_time_ratio = options_.step_time_ratio;
    so.min_prefill_tokens = options_.min_prefill_tokens;
    so.end = EndRulesOf(local_->model());
    scheduler_ = std::make_unique<Scheduler>(kv_.get(), runner_.get(), &local_->tokenizer(), so);
    const int32_t context = local_->config().context_length;
    max_prompt_ = options_.max_prompt_tokens > 0 ? std::min(options_.max_prompt_tokens, context - 1)
                                                 : context - 1;
    max_tokens_ = options_.max_tokens_limit > 0 ? options_.max_tokens_limit : context;
    PublishStats();
    thread_ = std::thread([this] { Loop(); });
  }

  ~Impl() {
    {
      absl::MutexLock lock(&mu_);
      stop_ = true;
    }
    thread_.join();
  }

  absl::StatusOr<std::shared_ptr<RequestStream>> Submit(EngineRequest r) {
    KVSERVE_RETURN_IF_ERROR(Validate(r));
    absl::MutexLock lock(&mu_);
    if (!accepting_) return absl::UnavailableError("the server is shutting down");
    if (static_cast<int64_t>(incoming_.size()) + waiting_count_ >= options_.max_waiting_requests) {
      return absl::ResourceExhaustedError(
          absl::StrFormat("the request queue is full (scheduler.max_waiting_requests = %d)",
                          options_.max_waiting_requests));
    }
    if (r.id.empty()) r.id = absl::StrFormat("req-%d", ++next_id_);
    auto stream = std::make_shared<RequestStream>(r.id, options_.stream_buffer_tokens);
    incoming_.push_back(Incoming{std::move(r), stream, absl::Now()});
    return stream;
  }

  absl::Status Validate(const EngineRequest& r) const {
    const ModelConfig& c = local_->config();
    if (r.prompt.empty()) return absl::InvalidArgumentError("prompt: must not be empty");
    if (static_cast<int32_t>(r.prompt.size()) > max_prompt_) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "prompt: %d tokens exceed the limit of %d tokens", r.prompt.size(), max_prompt_));
    }
    for (size_t i = 0; i < r.prompt.size(); ++i) {
      if (r.prompt[i] < 0 || r.prompt[i] >= c.vocab_size) {
        return absl::InvalidArgumentError(
            absl::StrFormat("prompt: token id %d at index %d is outside the vocabulary [0, %d)",
                            r.prompt[i], i, c.vocab_size));
      }
    }
    if (r.max_tokens < 1 || r.max_tokens > max_tokens_) {
      return absl::InvalidArgumentError(
          absl::StrFormat("max_tokens: must be in [1, %d], got %d", max_tokens_, r.max_tokens));
    }
    for (const RetentionHint& h : r.retention) {
      if (h.priority < 0 || h.priority > 100) {
        return absl::InvalidArgumentError(
            absl::StrFormat("retention.priority: must be in [0, 100], got %d", h.priority));
      }
    }
    if (r.logprobs < -1 || r.logprobs > kMaxTopLogprobs) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "logprobs: must be in [-1, %d] (-1 = none), got %d", kMaxTopLogprobs, r.logprobs));
    }
    KVSERVE_ASSIGN_OR_RETURN(
        ResolvedTokenEviction eviction,
        token_eviction_->Resolve(r.token_eviction.policy, r.token_eviction.budget_tokens));
    if (eviction.budget_tokens > 0 && !local_->kv_pool().host_memory()) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "token_eviction: compacting a sequence's KV runs on the host; engine.device \"%s\" "
          "does not evict tokens (leave token_eviction.policy at none)",
          local_->backend()->name()));
    }
    return r.sampling.Validate();
  }

  EngineStats Stats() const {
    absl::MutexLock lock(&stats_mu_);
    return stats_;
  }

  absl::StatusOr<PrefixFlushResult> FlushPrefixCache() {
    absl::MutexLock lock(&mu_);
    if (stop_) return absl::UnavailableError("the engine stopped");
    const int64_t ticket = ++flush_requested_;
    auto done = [this, ticket]()
                    ABSL_SHARED_LOCKS_REQUIRED(mu_) { return flush_done_ >= ticket || stop_; };
    mu_.Await(absl::Condition(&done));
    if (flush_done_ < ticket) return absl::UnavailableError("the engine stopped");
    return flush_released_;
  }

  void BeginShutdown() {
    absl::MutexLock lock(&mu_);
    accepting_ = false;
  }

  bool WaitIdle(absl::Duration timeout) {
    absl::MutexLock lock(&mu_);
    auto idle = [this]()
                    ABSL_SHARED_LOCKS_REQUIRED(mu_) { return incoming_.empty() && engine_idle_; };
    return mu_.AwaitWithTimeout(absl::Condition(&idle), timeout);
  }

  void AbortAll(const absl::Status& status) {
    absl::MutexLock lock(&mu_);
    abort_status_ = status;
    abort_requested_ = true;
    auto done = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return !abort_requested_; };
    mu_.Await(absl::Condition(&done));
  }

  const EngineOptions& options() const { return options_; }
  LocalModel& local() const { return *local_; }
  int32_t max_prompt() const { return max_prompt_; }
  int32_t max_tokens() const { return max_tokens_; }

 private:
  struct Incoming {
    EngineRequest request;
    std::shared_ptr<RequestStream> stream;
    absl::Time arrival;
  };

  void Loop() {
    std::vector<Incoming> batch;
    bool worked = true;
    while (true) {
      {
        absl::MutexLock lock(&mu_);
        // Sleep when the last step did nothing and nothing new arrived; short when sequences are
        // waiting on slow readers, long when idle.
        if (!worked && incoming_.empty() && !stop_ && !abort_requested_ &&
            flush_requested_ == flush_done_) {
          auto wake = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
            return !incoming_.empty() || stop_ || abort_requested_ ||
                   flush_requested_ > flush_done_;
          };
          mu_.AwaitWithTimeout(absl::Condition(&wake),
                               scheduler_->idle() ? options_.idle_poll : absl::Milliseconds(1));
        }
        if (stop_) break;
        if (flush_requested_ > flush_done_) {
          flush_released_ = FlushPrefixCacheOnEngineThread();
          PublishStats();
          flush_done_ = flush_requested_;
        }
        batch.swap(incoming_);
        // They wait in the scheduler from now on: counted at once, and exactly again once the step
        // has admitted what it can (below), so that a request arriving during a step meets the
        // queue bound as it stands (Submit).
        waiting_count_ += static_cast<int64_t>(batch.size());
        if (!batch.empty()) engine_idle_ = false;
        if (abort_requested_) {
          for (Incoming& in : batch) {
            scheduler_->Add(std::move(in.request), std::move(in.stream), in.arrival);
          }
          batch.clear();
          scheduler_->AbortAll(abort_status_, absl::Now());
          PublishStats();
          abort_requested_ = false;
          waiting_count_ = 0;
          engine_idle_ = true;
          continue;
        }
      }
      for (Incoming& in : batch) {
        scheduler_->Add(std::move(in.request), std::move(in.stream), in.arrival);
      }
      batch.clear();
      worked = scheduler_->Step(absl::Now(), [this] {
        absl::MutexLock lock(&mu_);
        waiting_count_ = scheduler_->num_waiting();
      });
      // Part of the step's cost on this thread: counted in its time.
      const absl::Time publish_start = absl::Now();
      PublishStats();
      scheduler_->AddStepTime(absl::Now() - publish_start);
      absl::MutexLock lock(&mu_);
      waiting_count_ = scheduler_->num_waiting();
      engine_idle_ = scheduler_->idle();
    }
    scheduler_->AbortAll(absl::UnavailableError("the engine stopped"), absl::Now());
  }

  // Engine thread, between steps.
  PrefixFlushResult FlushPrefixCacheOnEngineThread() {
    PrefixFlushResult result;
    kv_->FlushPrefixCache(&result.blocks, &result.bytes);
    return result;
  }

  void PublishStats() {
    const SchedulerCounters& c = scheduler_->counters();
    const KvCacheCounters& kc = kv_->counters();
    const KvCacheStats kv = kv_->Stats();
    EngineStats s;
    s.kv = kv.pool;
    s.top_requests = scheduler_->TopRequestsByKv(options_.top_requests);
    s.kv_budget_bytes = kv.pool.budget_bytes;
    s.kv_allocated_bytes = kv.pool.allocated_bytes;
    s.kv_used_bytes = kv.pool.used_bytes;
    s.kv_used_blocks = kv.pool.used_blocks;
    s.kv_cached_blocks = kv.cached_blocks;
    s.kv_cached_bytes = kv.cached_bytes;
    s.prefix_cached_blocks = kv.indexed_blocks;
    if (const PrefixIndex* index = kv_->prefix_index()) {
      const PrefixIndexCounters& pc = index->counters();
      s.prefix_eviction_policy = pc.policy;
      s.prefix_queries = pc.queries;
      s.prefix_query_tokens = pc.query_tokens;
      s.prefix_hit_tokens = pc.hit_tokens;
      s.prefix_capacity_evictions = pc.evicted(PrefixEvictionReason::kCapacity);
      s.prefix_erased_blocks = pc.evicted(PrefixEvictionReason::kErase);
      s.prefix_flushed_blocks = pc.evicted(PrefixEvictionReason::kClear);
    }
    s.scheduler_prefix_evictions = kc.prefix_evictions;
    s.token_eviction_policy = token_eviction_->config().policy;
    s.token_eviction_budget = token_eviction_->config().budget_tokens;
    s.tokens_evicted = kc.tokens_evicted;
    s.token_eviction_events = kc.token_eviction_events;
    s.kv_free_blocks = kv.free_blocks;
    s.kv_block_bytes = kv.block_bytes;
    s.running_requests = scheduler_->num_running();
    s.waiting_requests = scheduler_->num_waiting();
    s.requests_finished = c.finished;
    s.requests_cancelled = c.cancelled;
    s.requests_failed = c.failed;
    s.preemptions = c.preemptions;
    s.prompt_tokens = c.prompt_tokens;
    s.generated_tokens = c.generated_tokens;
    s.steps = c.steps;
    s.forward_time = c.forward_time;
    s.step_time = c.step_time;
    s.histograms = scheduler_->histograms();
    absl::MutexLock lock(&stats_mu_);
    stats_ = s;
  }

  const EngineOptions options_;
  std::unique_ptr<LocalModel> local_;
  std::unique_ptr<TokenEvictionSettings> token_eviction_;
  std::unique_ptr<KvCacheManager> kv_;        // engine thread only
  std::unique_ptr<LlamaModelRunner> runner_;  // engine thread only
  std::unique_ptr<Scheduler> scheduler_;      // engine thread only
  int32_t max_prompt_ = 0;
  int32_t max_tokens_ = 0;

  mutable absl::Mutex mu_;
  std::vector<Incoming> incoming_ ABSL_GUARDED_BY(mu_);
  int64_t waiting_count_ ABSL_GUARDED_BY(mu_) = 0;
  bool engine_idle_ ABSL_GUARDED_BY(mu_) = true;
  bool accepting_ ABSL_GUARDED_BY(mu_) = true;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  bool abort_requested_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status abort_status_ ABSL_GUARDED_BY(mu_);
  int64_t next_id_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t flush_requested_ ABSL_GUARDED_BY(mu_) = 0;       // FlushPrefixCache tickets issued
  int64_t flush_done_ ABSL_GUARDED_BY(mu_) = 0;            // tickets served by the engine thread
  PrefixFlushResult flush_released_ ABSL_GUARDED_BY(mu_);  // what the last flush released

  mutable absl::Mutex stats_mu_;
  EngineStats stats_ ABSL_GUARDED_BY(stats_mu_);

  std::thread thread_;
};

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(const EngineOptions& options) {
  if (options.max_running_requests < 1) {
    return absl::InvalidArgumentError("max_running_requests must be >= 1");
  }
  if (options.max_batch_tokens < 1) {
    return absl::InvalidArgumentError("max_batch_tokens must be >= 1");
  }
  if (options.max_waiting_requests < 1) {
    return absl::InvalidArgumentError("max_waiting_requests must be >= 1");
  }
  if (options.stream_buffer_tokens < 1) {
    return absl::InvalidArgumentError("stream_buffer_tokens must be >= 1");
  }
  KVSERVE_ASSIGN_OR_RETURN(std::unique_ptr<LocalModel> local, LocalModel::Open(options.model));
  KVSERVE_ASSIGN_OR_RETURN(
      std::unique_ptr<TokenEvictionSettings> token_eviction,
      TokenEvictionSettings::Create(options.token_eviction, local->config().context_length));
  if (!local->kv_pool().host_memory() && options.token_eviction.policy != "none" &&
      !options.token_eviction.policy.empty()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "token_eviction.policy: \"%s\" compacts KV on the host; engine.device \"%s\" does not "
        "evict tokens yet (use policy none there)",
        options.token_eviction.policy, local->backend()->name()));
  }
  return std::unique_ptr<Engine>(
      new Engine(std::make_unique<Impl>(options, std::move(local), std::move(token_eviction))));
}

Engine::Engine(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Engine::~Engine() = default;

const ModelConfig& Engine::config() const { return impl_->local().config(); }
const Tokenizer& Engine::tokenizer() const { return impl_->local().tokenizer(); }
const EngineOptions& Engine::options() const { return impl_->options(); }
int32_t Engine::max_prompt_tokens() const { return impl_->max_prompt(); }
int32_t Engine::max_tokens_limit() const { return impl_->max_tokens(); }
absl::StatusOr<std::shared_ptr<RequestStream>> Engine::Submit(EngineRequest request) {
  return impl_->Submit(std::move(request));
}
EngineStats Engine::Stats() const { return impl_->Stats(); }
absl::StatusOr<PrefixFlushResult> Engine::FlushPrefixCache() { return impl_->FlushPrefixCache(); }
void Engine::BeginShutdown() { impl_->BeginShutdown(); }
bool Engine::WaitIdle(absl::Duration timeout) { return impl_->WaitIdle(timeout); }
void Engine::AbortAll(const absl::Status& status) { impl_->AbortAll(status); }

}  // namespace kvserve::engine
