#include "engine/serving/scheduler.h"

#include <algorithm>
#include <string>
#include <utility>

#include "absl/strings/str_format.h"
#include "engine/sampling/sampler.h"
#include "spdlog/spdlog.h"

namespace kvserve::engine {

struct Scheduler::Sequence {
  Sequence(EngineRequest r, std::shared_ptr<RequestStream> st, const Tokenizer& tok,
           std::unique_ptr<KvSequence> k)
      : req(std::move(r)),
        stream(std::move(st)),
        kv(std::move(k)),
        sampler(req.sampling),
        out(tok) {}

  EngineRequest req;
  std::shared_ptr<RequestStream> stream;
  std::unique_ptr<KvSequence> kv;
  Sampler sampler;
  OutputState out;
  std::vector<int32_t> tokens;  // prompt + generated
  int64_t processed = 0;        // tokens whose K/V were computed (evicted ones included)
  int32_t generated = 0;
  int64_t order = 0;  // admission order (larger = admitted later)
  int32_t preemptions = 0;
  absl::Time arrival;
  absl::Time first_scheduled = absl::InfiniteFuture();
  absl::Time first_token = absl::InfiniteFuture();
  absl::Time last_token = absl::InfiniteFuture();
  int32_t cached_prompt_tokens = 0;  // served from the prefix cache at first admission
  bool admitted_once = false;
  bool done = false;
  bool preempted = false;  // set during a step; moved back to waiting at its end

  int64_t pending() const { return static_cast<int64_t>(tokens.size()) - processed; }
  // Filled KV slots (token eviction drops some computed tokens).
  int64_t slots() const { return processed - kv->evicted(); }
};

namespace {

std::vector<double> SecondsBuckets() {
  return {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.5, 1, 2.5, 5};
}

}  // namespace

SchedulerHistograms::SchedulerHistograms()
    : step_seconds(SecondsBuckets()),
      prefill_tokens({0, 1, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192}) {}

Scheduler::Scheduler(KvCacheManager* kv, ModelRunner* runner, const Tokenizer* tokenizer,
                     SchedulerOptions options)
    : kv_(kv), runner_(runner), output_(tokenizer, options.end), options_(options) {
  if (options_.cost_model == nullptr) own_cost_model_ = std::make_unique<LinearStepCostModel>();
  cost_model_ = options_.cost_model != nullptr ? options_.cost_model : own_cost_model_.get();
}

Scheduler::~Scheduler() = default;

void Scheduler::Add(EngineRequest request, std::shared_ptr<RequestStream> stream,
                    absl::Time arrival) {
  absl::StatusOr<ResolvedTokenEviction> eviction = kv_->ResolveTokenEviction(
      request.token_eviction.policy, request.token_eviction.budget_tokens);
  KvSequenceSpec spec;
  spec.cache_salt = request.cache_salt;
  spec.retention = request.retention;
  spec.horizon = static_cast<int64_t>(request.prompt.size());
  if (eviction.ok()) spec.token_eviction = *eviction;
  auto s = std::make_unique<Sequence>(std::move(request), std::move(stream), output_.tokenizer(),
                                      kv_->NewSequence(std::move(spec)));
  s->arrival = arrival;
  if (!eviction.ok()) {
    Finish(s.get(), FinishReason::kNone, eviction.status(), arrival);
    NotifyStreams();
    return;
  }
  s->tokens = s->req.prompt;
  output_.StartSequence(&s->out, s->tokens);
  waiting_.push_back(std::move(s));
}

void Scheduler::PushEvent(Sequence* s, StreamEvent e) {
  if (s->stream->Push(std::move(e))) to_notify_.push_back(s->stream);
}

void Scheduler::NotifyStreams() {
  for (const std::shared_ptr<RequestStream>& stream : to_notify_) stream->Notify();
  to_notify_.clear();
}

void Scheduler::Finish(Sequence* s, FinishReason reason, absl::Status status, absl::Time now) {
  if (s->done) return;
  StreamEvent e;
  e.final = true;
  e.finish_reason = reason;
  output_.TakeFinal(&s->out, reason, status.ok(), &e);
  e.status = std::move(status);
  e.usage.prompt_tokens = static_cast<int32_t>(s->req.prompt.size());
  e.usage.completion_tokens = s->generated;
  e.usage.cached_prompt_tokens = s->cached_prompt_tokens;
  e.timings.queued =
      (s->first_scheduled == absl::InfiniteFuture() ? now : s->first_scheduled) - s->arrival;
  e.timings.time_to_first_token =
      s->first_token == absl::InfiniteFuture() ? absl::ZeroDuration() : s->first_token - s->arrival;
  e.timings.total = now - s->arrival;
  e.kv.peak_blocks = s->kv->peak_blocks();
  e.kv.peak_bytes = s->kv->peak_bytes();
  e.kv.evicted_tokens = s->kv->tokens_evicted_total();
  e.preemptions = s->preemptions;
  if (e.status.ok()) {
    ++counters_.finished;
  } else if (e.status.code() == absl::StatusCode::kCancelled) {
    ++counters_.cancelled;
  } else {
    ++counters_.failed;
  }
  // A request that ends in the step that computed its last blocks (max_tokens = 1, an early
  // EOS) still leaves them to the prefix cache.
  if (e.status.ok()) kv_->CacheFullBlocks(s->kv.get(), s->tokens, s->processed);
  kv_->Free(s->kv.get());
  s->done = true;
  PushEvent(s, std::move(e));
}

void Scheduler::EmitToken(Sequence* s, int32_t token, const TokenLogprob* logprob, absl::Time now) {
  const EngineRequest& r = s->req;
  if (output_.EndsGeneration(r, token)) {
    Finish(s, FinishReason::kEos, absl::OkStatus(), now);
    return;
  }
  s->tokens.push_back(token);
  ++s->generated;
  ++counters_.generated_tokens;
  if (s->first_token == absl::InfiniteFuture()) {
    s->first_token = now;
  } else {
    auto& gaps = histograms_.token_gap_seconds;
    int32_t key = s->req.priority;
    if (gaps.find(key) == gaps.end() &&
        static_cast<int>(gaps.size()) >= SchedulerHistograms::kMaxPriorityLabels) {
      key = SchedulerHistograms::kOtherPriority;
    }
    auto it = gaps.find(key);
    if (it == gaps.end()) it = gaps.emplace(key, FixedHistogram(SecondsBuckets())).first;
    it->second.Observe(absl::ToDoubleSeconds(now - s->last_token));
  }
  s->last_token = now;
  if (output_.Append(&s->out, r, token, logprob)) {
    Finish(s, FinishReason::kStop, absl::OkStatus(), now);
    return;
  }
  if (s->generated >= r.max_tokens ||
      static_cast<int64_t>(s->tokens.size()) >= options_.end.context_length) {
    Finish(s, FinishReason::kLength, absl::OkStatus(), now);
    return;
  }
  StreamEvent e;
  output_.TakeDelta(&s->out, &e);
  PushEvent(s, std::move(e));
}

void Scheduler::Admit(absl::Time now) {
  if (waiting_.empty()) return;
  if (options_.policy == SchedulingPolicy::kPriority) {
    std::stable_sort(waiting_.begin(), waiting_.end(), [](const auto& a, const auto& b) {
      if (a->req.priority != b->req.priority) return a->req.priority > b->req.priority;
      return a->arrival < b->arrival;
    });
  } else {
    std::stable_sort(waiting_.begin(), waiting_.end(),
                     [](const auto& a, const auto& b) { return a->arrival < b->arrival; });
  }
  size_t i = 0;
  while (i < waiting_.size() && static_cast<int32_t>(running_.size()) < options_.max_running) {
    Sequence* s = waiting_[i].get();
    if (WaitsForPrefix(s)) {
      ++i;  // its prefix is being computed by a running request: admit it once that is cached
      continue;
    }
    const AdmissionCheck check = kv_->CheckAdmission(*s->kv, s->tokens);
    if (check.verdict == AdmissionCheck::Verdict::kNever) {
      Finish(s, FinishReason::kNone, check.error, now);
      waiting_.erase(waiting_.begin() + i);
      continue;
    }
    if (check.verdict == AdmissionCheck::Verdict::kNotNow) break;
    const absl::StatusOr<int64_t> cached = kv_->Admit(s->kv.get(), s->tokens);
    if (!cached.ok()) break;
    s->processed = *cached;
    if (!s->admitted_once) {
      s->admitted_once = true;
      s->cached_prompt_tokens = static_cast<int32_t>(s->processed);
    }
    counters_.cached_prompt_tokens += s->processed;
    s->order = next_order_++;
    if (s->first_scheduled == absl::InfiniteFuture()) s->first_scheduled = now;
    running_.push_back(std::move(waiting_[i]));
    order_stale_ = true;
    waiting_.erase(waiting_.begin() + i);
  }
}

bool Scheduler::WaitsForPrefix(const Sequence* s) const {
  if (kv_->prefix_index() == nullptr || s->kv->num_blocks() > 0 || s->tokens.size() < 2) {
    return false;
  }
  const int64_t bs = kv_->block_size();
  // Full blocks this sequence could take from the cache.
  const int64_t usable = kv_->MatchableTokens(*s->kv, s->tokens.size());
  if (usable < bs) return false;
  int64_t cached = -1;  // looked up lazily: most waiting requests share nothing with a prefill
  for (const auto& p : running_) {
    const Sequence* r = p.get();
    // Only a prefill that will cache its blocks is worth waiting for.
    if (r->done || r->preempted || r->pending() <= 1 || !r->kv->caches_blocks() ||
        r->req.cache_salt != s->req.cache_salt) {
      continue;
    }
    const int64_t limit = std::min<int64_t>(usable, r->tokens.size());
    if (limit < bs || !std::equal(s->tokens.begin(), s->tokens.begin() + bs, r->tokens.begin())) {
      continue;
    }
    const int64_t common =
        std::mismatch(s->tokens.begin(), s->tokens.begin() + limit, r->tokens.begin()).first -
        s->tokens.begin();
    const int64_t shared_end = common / bs * bs;  // end of the last shared full block
    if (r->processed >= shared_end) continue;     // computed already: cached or never will be
    if (cached < 0) cached = kv_->CachedPrefixTokens(*s->kv, s->tokens);
    if (shared_end > cached) return true;
  }
  return false;
}

void Scheduler::Recompute(Sequence* s) {
  kv_->Free(s->kv.get());
  s->processed = 0;
  s->preempted = true;
  ++s->preemptions;
  ++counters_.preemptions;
}

bool Scheduler::Preempt(Sequence* requester) {
  // Victim: lowest priority, then most recently admitted.
  Sequence* victim = nullptr;
  for (auto& p : running_) {
    Sequence* s = p.get();
    if (s->done || s->preempted) continue;
    if (victim == nullptr || s->req.priority < victim->req.priority ||
        (s->req.priority == victim->req.priority && s->order > victim->order)) {
      victim = s;
    }
  }
  if (victim == nullptr) return false;
  Recompute(victim);
  return victim != requester;
}

std::vector<RequestKvEntry> Scheduler::TopRequestsByKv(int n) const {
  std::vector<RequestKvEntry> all;
  for (const auto& p : running_) {
    all.push_back({p->stream->id(), p->kv->bytes(), p->kv->num_blocks(), p->slots(), true});
  }
  for (const auto& p : waiting_) {
    if (p->kv->num_blocks() > 0) {
      all.push_back({p->stream->id(), p->kv->bytes(), p->kv->num_blocks(), p->slots(), false});
    }
  }
  std::sort(all.begin(), all.end(),
            [](const RequestKvEntry& a, const RequestKvEntry& b) { return a.bytes > b.bytes; });
  if (static_cast<int>(all.size()) > n) all.resize(n);
  return all;
}

std::vector<const KvSequence*> Scheduler::LiveKv() const {
  std::vector<const KvSequence*> live;
  for (const auto& p : running_) live.push_back(p->kv.get());
  for (const auto& p : waiting_) live.push_back(p->kv.get());
  return live;
}

void Scheduler::RemoveFinished() {
  bool any = false;
  for (const auto& p : running_) any |= p->done || p->preempted;
  for (const auto& p : waiting_) any |= p->done;
  if (!any) return;
  std::vector<std::unique_ptr<Sequence>> keep;
  keep.reserve(running_.size());
  for (auto& p : running_) {
    if (p->done) continue;
    if (p->preempted) {
      p->preempted = false;
      waiting_.push_back(std::move(p));
    } else {
      keep.push_back(std::move(p));
    }
  }
  running_.swap(keep);
  order_stale_ = true;
  waiting_.erase(
      std::remove_if(waiting_.begin(), waiting_.end(), [](const auto& p) { return p->done; }),
      waiting_.end());
}

void Scheduler::AbortAll(const absl::Status& status, absl::Time now) {
  for (auto& p : running_) Finish(p.get(), FinishReason::kNone, status, now);
  for (auto& p : waiting_) Finish(p.get(), FinishReason::kNone, status, now);
  RemoveFinished();
  NotifyStreams();
}

void Scheduler::EndCancelledAndExpired(absl::Time now) {
  auto check = [&](Sequence* s) {
    if (s->stream->cancelled()) {
      Finish(s, FinishReason::kCancelled, absl::CancelledError("cancelled by the client"), now);
    } else if (now >= s->req.deadline) {
      Finish(s, FinishReason::kNone,
             absl::DeadlineExceededError(
                 absl::StrFormat("deadline exceeded after %d generated tokens", s->generated)),
             now);
    }
  };
  for (auto& p : running_) check(p.get());
  for (auto& p : waiting_) check(p.get());
  RemoveFinished();
}

void Scheduler::SortRunning() {
  // Sorted again only when the running set changed: in a steady decode it does not.
  if (!order_stale_) return;
  order_.clear();
  for (auto& p : running_) order_.push_back(p.get());
  // `order` is unique per admission: a total order, so std::sort (which, unlike stable_sort,
  // needs no temporary buffer) gives the same sequence.
  std::sort(order_.begin(), order_.end(), [](Sequence* a, Sequence* b) {
    if (a->req.priority != b->req.priority) return a->req.priority > b->req.priority;
    return a->order < b->order;
  });
  order_stale_ = false;
}

void Scheduler::ReserveStepSlots(absl::Time now) {
  // Highest priority and oldest first, so that victims come from the other end.
  SortRunning();
  for (Sequence* s : order_) {
    if (s->done || s->preempted || s->pending() == 0) continue;
    // Prefill of a sequence without token eviction was reserved in full at admission.
    if (s->pending() > 1 && !s->kv->token_eviction()) continue;
    ReserveSlots(s, now);
  }
  RemoveFinished();
}

void Scheduler::ReserveSlots(Sequence* s, absl::Time now) {
  const bool decoding = s->pending() == 1;
  const int64_t incoming = decoding ? 1 : std::min<int64_t>(s->pending(), s->kv->MaxAppend());
  if (s->kv->token_eviction()) {
    const absl::Status st = kv_->MakeRoom(s->kv.get(), s->processed, incoming);
    if (st.code() == absl::StatusCode::kResourceExhausted) {
      Recompute(s);  // no block for a copy-on-write: recompute the sequence later
      return;
    }
    if (!st.ok()) {
      Finish(s, FinishReason::kNone, absl::InternalError(st.message()), now);
      return;
    }
  }
  const int64_t want = s->slots() + incoming;
  while (!kv_->AllocateSlots(s->kv.get(), want).ok()) {
    if (!kv_->CanEverHold(*s->kv, want)) {
      Finish(s, FinishReason::kNone,
             absl::ResourceExhaustedError(
                 absl::StrFormat("the KV budget of %d bytes cannot hold %d tokens of one sequence",
                                 kv_->budget_bytes(), want)),
             now);
      return;
    }
    if (!Preempt(s)) return;  // the requester itself was preempted
  }
}

std::optional<absl::Duration> Scheduler::StepTarget() const {
  if (step_shape_.decode_tokens == 0) return std::nullopt;  // no stream waits on this step
  if (options_.max_step_time > absl::ZeroDuration()) return options_.max_step_time;
  if (options_.step_time_ratio <= 0) return std::nullopt;
  const int64_t batch = std::min<int64_t>(options_.max_running, num_running() + num_waiting());
  StepShape full;
  full.decode_tokens = std::max(batch, step_shape_.decode_tokens);
  full.decode_context = step_shape_.decode_context * full.decode_tokens / step_shape_.decode_tokens;
  const std::optional<absl::Duration> decode = cost_model_->Estimate(full);
  if (!decode) return std::nullopt;
  return *decode * options_.step_time_ratio;
}

int64_t Scheduler::PrefillWithinBudget(const Sequence* s, int64_t take, bool first_prefill,
                                       int32_t top_decode_priority) const {
  if (!step_target_ || !cost_model_->Estimate(step_shape_).has_value()) return take;
  auto fits = [&](int64_t k) {
    StepShape shape = step_shape_;
    shape.AddPrefill(s->processed, k);
    return *cost_model_->Estimate(shape) <= *step_target_;
  };
  // The largest k in [0, take] that fits (the estimate grows with k).
  int64_t lo = 0;
  int64_t hi = take;
  if (!fits(0)) {
    hi = 0;
  } else {
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo + 1) / 2;
      if (fits(mid)) {
        lo = mid;
      } else {
        hi = mid - 1;
      }
    }
  }
  const bool guarded = first_prefill && s->req.priority >= top_decode_priority;
  return guarded ? std::max(lo, std::min(take, options_.min_prefill_tokens)) : lo;
}

void Scheduler::PlanBatch() {
  batch_.Clear();
  chunk_seq_.clear();
  step_shape_ = StepShape{};
  SortRunning();
  int64_t budget = options_.max_batch_tokens;
  bool prefill_added = false;
  int32_t top_decode_priority = INT32_MIN;
  auto add = [&](Sequence* s, int64_t take, bool decoding) {
    ScheduledChunk c;
    c.tokens = s->tokens;
    c.num_prompt_tokens = static_cast<int64_t>(s->req.prompt.size());
    c.start = s->processed;
    c.count = take;
    c.slot_offset = s->kv->evicted();
    c.block_table = s->kv->block_table().data();
    c.scores = s->kv->ScoresFor(s->slots() + take);
    c.score_layer_stride = s->kv->score_layer_stride();
    c.score_head_stride = s->kv->score_head_stride();
    c.prefill = !decoding;
    if (s->processed + take == static_cast<int64_t>(s->tokens.size())) {
      c.sampler = &s->sampler;
      c.logprobs = s->req.logprobs;
    }
    batch_.chunks.push_back(c);
    chunk_seq_.push_back(s);
    batch_.num_tokens += take;
    // Prefill tokens (a recomputation included); a prompt token counts also when a chunk
    // boundary left it alone for this step, where it looks like a decode.
    if (!decoding) {
      batch_.num_prefill_tokens += take;
      counters_.prompt_tokens += take;
      step_shape_.AddPrefill(s->processed, take);
      prefill_added = true;
    } else {
      if (s->processed < static_cast<int64_t>(s->req.prompt.size())) ++counters_.prompt_tokens;
      step_shape_.AddDecode(s->processed);
      top_decode_priority = std::max(top_decode_priority, s->req.priority);
    }
    s->processed += take;
    budget -= take;  // below zero after a first chunk stretched to a block's end
  };
  // Decodes first, in admission order.
  for (auto& p : running_) {
    Sequence* s = p.get();
    if (budget <= 0) break;
    if (s->pending() != 1 || !s->stream->HasRoom()) continue;  // slow reader: wait for it
    add(s, 1, /*decoding=*/true);
  }
  // Then prefill chunks, highest priority first, under the token budget and the time target.
  step_target_ = StepTarget();
  for (Sequence* s : order_) {
    if (budget <= 0) break;
    if (s->pending() <= 1) continue;
    int64_t take = std::min(s->pending(), budget);
    if (s->kv->token_eviction()) take = std::min<int64_t>(take, s->kv->MaxAppend());
    take = PrefillWithinBudget(s, take, !prefill_added, top_decode_priority);
    if (take == 0) continue;
    take = kv_->ChunkLimit(*s->kv, s->processed, s->tokens.size(), take, !prefill_added);
    if (take == 0) continue;  // waits for a step with room for a whole block
    add(s, take, /*decoding=*/false);
  }
}

const ScheduledBatch& Scheduler::Schedule(absl::Time now) {
  step_start_ = absl::Now();
  EndCancelledAndExpired(now);
  Admit(now);
  ReserveStepSlots(now);
  PlanBatch();
  if (batch_.empty()) {
    NotifyStreams();  // requests that ended before the batch (cancelled, expired, refused)
    counters_.step_time += absl::Now() - step_start_;
  }
  return batch_;
}

void Scheduler::AfterStep(absl::Time now) {
  for (auto& p : running_) {
    Sequence* s = p.get();
    if (s->done) continue;
    // Blocks that left the recent window move to their long-term format.
    const absl::Status demoted = kv_->Demote(s->kv.get(), s->processed);
    if (!demoted.ok() && demoted.code() != absl::StatusCode::kResourceExhausted) {
      Finish(s, FinishReason::kNone, demoted, now);
      continue;
    }
    kv_->CacheFullBlocks(s->kv.get(), s->tokens, s->processed);
  }
}

void Scheduler::Update(const ScheduledBatch& batch, const StepOutput& output, absl::Time now) {
  counters_.forward_time += output.forward_time;
  ++counters_.steps;
  histograms_.prefill_tokens.Observe(static_cast<double>(batch.num_prefill_tokens));
  if (!output.status.ok()) {
    for (auto& p : running_) {
      Finish(p.get(), FinishReason::kNone, absl::InternalError(output.status.message()), now);
    }
  } else {
    size_t r = 0;
    for (size_t i = 0; i < batch.chunks.size(); ++i) {
      const ScheduledChunk& c = batch.chunks[i];
      if (c.sampler == nullptr) continue;
      const TokenLogprob* logprob =
          c.logprobs >= 0 && r < output.logprobs.size() ? &output.logprobs[r] : nullptr;
      EmitToken(chunk_seq_[i], output.sampled[r], logprob, now);
      ++r;
    }
    AfterStep(now);
  }
  RemoveFinished();
  // The consumers learn of the step's events together, after all of them are pushed.
  NotifyStreams();
  const absl::Duration step = absl::Now() - step_start_;
  counters_.step_time += step;
  histograms_.step_seconds.Observe(absl::ToDoubleSeconds(step));
  if (spdlog::should_log(spdlog::level::trace)) {
    const std::optional<absl::Duration> estimate = cost_model_->Estimate(step_shape_);
    spdlog::trace(
        "step {}: {} decode and {} prefill tokens ({} and {} slots attended), {} ms, "
        "estimated {} ms",
        counters_.steps, step_shape_.decode_tokens, step_shape_.prefill_tokens,
        step_shape_.decode_context, step_shape_.prefill_context, absl::ToDoubleMilliseconds(step),
        estimate ? absl::ToDoubleMilliseconds(*estimate) : -1.0);
  }
  if (output.status.ok()) cost_model_->Observe(step_shape_, step);
}

bool Scheduler::Step(absl::Time now, const std::function<void()>& after_schedule) {
  const ScheduledBatch& batch = Schedule(now);
  if (after_schedule) after_schedule();
  if (batch.empty()) return false;
  const StepOutput output = runner_->Execute(batch);
  Update(batch, output, absl::Now());
  return true;
}

}  // namespace kvserve::engine
