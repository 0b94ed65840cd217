#include "engine/serving/scheduler.h"

#include <algorithm>
#include <string>
#include <utility>

#include "absl/strings/str_format.h"
#include "engine/kv/sequence_kv.h"
#include "engine/kv/token_eviction/sequence_token_eviction.h"
#include "engine/sampling/sampler.h"

namespace kvserve::engine {

struct Scheduler::Sequence {
  Sequence(EngineRequest r, std::shared_ptr<RequestStream> st, const Tokenizer& tok,
           BlockPool* pool, LayoutId layout, ResolvedTokenEviction eviction)
      : req(std::move(r)),
        stream(std::move(st)),
        kv(pool, layout),
        te(eviction.policy, eviction.budget_tokens, pool->geometry().num_layers,
           pool->geometry().num_kv_heads),
        sampler(req.sampling),
        detok(tok) {}

  EngineRequest req;
  std::shared_ptr<RequestStream> stream;
  SequenceKv kv;
  SequenceTokenEviction te;
  Sampler sampler;
  StreamingDetokenizer detok;
  std::vector<int32_t> tokens;     // prompt + generated
  int64_t processed = 0;           // tokens whose K/V were computed (evicted ones included)
  // The prompt's length: tokens before it are computed as a prefill computes them, the rest
  // (generated) as decoding did, also when a preempted sequence recomputes them.
  int64_t horizon = 0;
  int64_t evicted = 0;             // of which dropped by token eviction: token i is in slot
                                   // i - evicted, and slots() slots are filled
  std::string unsent_text;         // decoded, held back while it may start a stop string
  std::vector<int32_t> unsent_ids;
  int32_t generated = 0;
  int64_t order = 0;               // admission order (larger = admitted later)
  int32_t preemptions = 0;
  absl::Time arrival;
  absl::Time first_scheduled = absl::InfiniteFuture();
  absl::Time first_token = absl::InfiniteFuture();
  int64_t peak_blocks = 0;
  int64_t peak_bytes = 0;
  int64_t indexed_blocks = 0;       // leading blocks known to the prefix index
  bool index_disabled = false;      // a block could not be cached: keep the rest private
  int32_t cached_prompt_tokens = 0;  // served from the prefix cache at first admission
  bool admitted_once = false;
  bool done = false;
  bool preempted = false;  // set during a step; moved back to waiting at its end

  int64_t pending() const { return static_cast<int64_t>(tokens.size()) - processed; }
  int64_t slots() const { return processed - evicted; }
  void TrackPeak() {
    peak_blocks = std::max<int64_t>(peak_blocks, kv.block_table().size());
    peak_bytes = std::max(peak_bytes, kv.bytes());
  }
};

Scheduler::Scheduler(LlamaModel* model, BlockPool* pool, const KvCachePolicy* kv_policy,
                     const Tokenizer* tokenizer, SchedulerOptions options)
    : model_(model),
      pool_(pool),
      kv_policy_(kv_policy),
      layout_(kv_policy->write_layout()),
      direct_cold_(kv_policy->demotes()),
      tokenizer_(tokenizer),
      options_(options) {}

bool Scheduler::DirectCold(const Sequence* s) const { return direct_cold_ && !s->te.enabled(); }

int64_t Scheduler::BytesNeeded(const Sequence* s, int64_t slots, bool final_layouts,
                               int64_t from) const {
  const int64_t bs = pool_->geometry().block_size;
  const int64_t blocks = (slots + bs - 1) / bs;
  int64_t bytes = 0;
  for (int64_t b = from; b < blocks; ++b) {
    bytes += pool_->layout(final_layouts ? kv_policy_->FinalLayout(b, s->horizon) : layout_)
                 .block_bytes;
  }
  return bytes;
}

Scheduler::~Scheduler() = default;

void Scheduler::Add(EngineRequest request, std::shared_ptr<RequestStream> stream,
                    absl::Time arrival) {
  ResolvedTokenEviction eviction;
  absl::Status bad_eviction;
  if (options_.token_eviction != nullptr) {
    absl::StatusOr<ResolvedTokenEviction> r = options_.token_eviction->Resolve(
        request.token_eviction.policy, request.token_eviction.budget_tokens);
    if (r.ok()) {
      eviction = *r;
    } else {
      bad_eviction = r.status();
    }
  } else if (!request.token_eviction.policy.empty() && request.token_eviction.policy != "none") {
    bad_eviction = absl::InvalidArgumentError("token eviction is not configured on this engine");
  }
  auto s = std::make_unique<Sequence>(std::move(request), std::move(stream), *tokenizer_, pool_,
                                      layout_, eviction);
  if (!bad_eviction.ok()) {
    s->arrival = arrival;
    Finish(s.get(), FinishReason::kNone, bad_eviction, arrival);
    NotifyStreams();
    return;
  }
  s->tokens = s->req.prompt;
  s->horizon = static_cast<int64_t>(s->tokens.size());
  s->arrival = arrival;
  // The prompt gives the detokenizer its context (the leading-space rule after BOS).
  for (int32_t t : s->tokens) s->detok.Feed(t);
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
  e.token_ids.assign(s->unsent_ids.begin(), s->unsent_ids.end());
  s->unsent_ids.clear();
  if (status.ok()) {
    e.text = std::move(s->unsent_text);
    if (reason != FinishReason::kStop) e.text += s->detok.Flush();
  }
  e.status = std::move(status);
  e.usage.prompt_tokens = static_cast<int32_t>(s->req.prompt.size());
  e.usage.completion_tokens = s->generated;
  e.usage.cached_prompt_tokens = s->cached_prompt_tokens;
  e.timings.queued =
      (s->first_scheduled == absl::InfiniteFuture() ? now : s->first_scheduled) - s->arrival;
  e.timings.time_to_first_token =
      s->first_token == absl::InfiniteFuture() ? absl::ZeroDuration() : s->first_token - s->arrival;
  e.timings.total = now - s->arrival;
  e.kv.peak_blocks = s->peak_blocks;
  e.kv.peak_bytes = s->peak_bytes;
  e.kv.evicted_tokens = s->te.evicted_tokens();
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
  if (e.status.ok()) CacheFullBlocks(s);
  ReleaseKv(s);
  s->done = true;
  PushEvent(s, std::move(e));
}

void Scheduler::EmitToken(Sequence* s, int32_t token, absl::Time now) {
  const EngineRequest& r = s->req;
  // EOS and every end-of-turn token of the vocabulary (<|eot_id|>, <|im_end|>, ...) end it.
  if (!r.ignore_eos && (token == model_->eos_id() || tokenizer_->IsEndOfGeneration(token) ||
                        (r.stop_at_bos && token == model_->bos_id()))) {
    Finish(s, FinishReason::kEos, absl::OkStatus(), now);
    return;
  }
  s->tokens.push_back(token);
  ++s->generated;
  ++counters_.generated_tokens;
  if (s->first_token == absl::InfiniteFuture()) s->first_token = now;
  s->unsent_ids.push_back(token);
  s->unsent_text += s->detok.Feed(token);

  size_t hold = 0;
  if (!r.stop.empty()) {
    // A stop string anywhere in the unsent text ends the request there.
    size_t cut = std::string::npos;
    for (const std::string& stop : r.stop) {
      if (stop.empty()) continue;
      const size_t at = s->unsent_text.find(stop);
      if (at != std::string::npos) cut = std::min(cut, at);
    }
    if (cut != std::string::npos) {
      s->unsent_text.resize(cut);
      Finish(s, FinishReason::kStop, absl::OkStatus(), now);
      return;
    }
    // Hold back the longest tail that could still grow into a stop string.
    for (const std::string& stop : r.stop) {
      for (size_t n = std::min(stop.size() - 1, s->unsent_text.size()); n > hold; --n) {
        if (s->unsent_text.compare(s->unsent_text.size() - n, n, stop, 0, n) == 0) {
          hold = n;
          break;
        }
      }
    }
  }
  if (s->generated >= r.max_tokens ||
      static_cast<int64_t>(s->tokens.size()) >= model_->config().context_length) {
    Finish(s, FinishReason::kLength, absl::OkStatus(), now);
    return;
  }
  StreamEvent e;
  e.token_ids.assign(s->unsent_ids.begin(), s->unsent_ids.end());
  s->unsent_ids.clear();
  e.text = s->unsent_text.substr(0, s->unsent_text.size() - hold);
  s->unsent_text.erase(0, s->unsent_text.size() - hold);
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
  const int64_t block_bytes = pool_->layout(layout_).block_bytes;
  const int64_t pool_blocks = pool_->budget_bytes() / block_bytes;
  size_t i = 0;
  while (i < waiting_.size() && static_cast<int32_t>(running_.size()) < options_.max_running) {
    Sequence* s = waiting_[i].get();
    if (WaitsForPrefix(s)) {
      ++i;  // its prefix is being computed by a running request: admit it once that is cached
      continue;
    }
    // A sequence under token eviction never holds more than its budget; its prefill runs in
    // chunks with evictions between them.
    const int64_t slots = s->te.enabled()
                              ? std::min<int64_t>(s->tokens.size(), s->te.budget_tokens())
                              : static_cast<int64_t>(s->tokens.size());
    const int64_t need = s->kv.BlocksNeeded(slots);
    const bool final_layouts = DirectCold(s);
    const int64_t have = static_cast<int64_t>(s->kv.block_table().size());
    if (final_layouts ? BytesNeeded(s, slots, true, have) > pool_->budget_bytes()
                      : need > pool_blocks) {
      Finish(s, FinishReason::kNone,
             absl::ResourceExhaustedError(absl::StrFormat(
                 "the sequence needs %d KV blocks (%d tokens) but the KV budget of %d bytes "
                 "holds %d",
                 need, slots, pool_->budget_bytes(), pool_blocks)),
             now);
      waiting_.erase(waiting_.begin() + i);
      continue;
    }
    int64_t matched_blocks = 0;
    int64_t evictable = 0;
    if (options_.prefix_index != nullptr && s->tokens.size() >= 2) {
      matched_blocks = static_cast<int64_t>(
          options_.prefix_index
              ->Match(absl::MakeConstSpan(s->tokens.data(), MatchableTokens(s)),
                      KeysFor(s, kv_policy_->cold_layout()))
              .blocks.size());
      // Every idle cached block can be reclaimed (evicting a leaf makes its idle parent
      // evictable), except the matched ones this sequence is about to use.
      evictable = std::max<int64_t>(0, options_.prefix_index->idle_blocks() - matched_blocks);
    }
    if (final_layouts) {
      // In bytes: the blocks differ in size. Free blocks of any layout are reclaimable, and
      // cached idle blocks are in their final (cold) layout.
      const int64_t evictable_bytes =
          evictable * pool_->layout(kv_policy_->cold_layout()).block_bytes;
      if (BytesNeeded(s, slots, true, have + matched_blocks) >
          pool_->budget_bytes() - pool_->used_bytes() + evictable_bytes) {
        break;
      }
    } else if (need - matched_blocks > pool_->AvailableBlocks(layout_) + evictable) {
      break;
    }
    AttachCachedPrefix(s);
    if (!ReserveEvicting(s, std::max(slots, s->processed), final_layouts).ok()) {
      ReleaseKv(s);
      s->processed = 0;
      break;
    }
    if (!s->admitted_once) {
      s->admitted_once = true;
      s->cached_prompt_tokens = static_cast<int32_t>(s->processed);
    }
    counters_.cached_prompt_tokens += s->processed;
    s->TrackPeak();
    s->order = next_order_++;
    if (s->first_scheduled == absl::InfiniteFuture()) s->first_scheduled = now;
    running_.push_back(std::move(waiting_[i]));
    order_stale_ = true;
    waiting_.erase(waiting_.begin() + i);
  }
}

bool Scheduler::WaitsForPrefix(const Sequence* s) const {
  PrefixIndex* index = options_.prefix_index;
  if (index == nullptr || !s->kv.block_table().empty() || s->tokens.size() < 2) return false;
  const int64_t bs = pool_->geometry().block_size;
  // Full blocks this sequence could take from the cache.
  const int64_t usable = MatchableTokens(s);
  if (usable < bs) return false;
  int64_t cached = -1;  // looked up lazily: most waiting requests share nothing with a prefill
  for (const auto& p : running_) {
    const Sequence* r = p.get();
    // Only a prefill that will cache its blocks is worth waiting for.
    if (r->done || r->preempted || r->pending() <= 1 || r->index_disabled || r->evicted > 0 ||
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
    if (cached < 0) {
      cached = index
                   ->Match(absl::MakeConstSpan(s->tokens.data(), usable),
                           KeysFor(s, kv_policy_->cold_layout()))
                   .matched_tokens;
    }
    if (shared_end > cached) return true;
  }
  return false;
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
  ReleaseKv(victim);
  victim->processed = 0;
  victim->preempted = true;
  ++victim->preemptions;
  ++counters_.preemptions;
  return victim != requester;
}

PrefixKeys Scheduler::KeysFor(const Sequence* s, LayoutId layout) const {
  PrefixKeys k;
  k.cache_salt = s->req.cache_salt;
  k.layout = layout;
  k.model = options_.model_identity;
  return k;
}

void Scheduler::ReleaseKv(Sequence* s) {
  if (options_.prefix_index != nullptr) {
    const auto& table = s->kv.block_table();
    for (int64_t b = 0; b < s->indexed_blocks && b < static_cast<int64_t>(table.size()); ++b) {
      options_.prefix_index->Release(table[b]);
    }
  }
  s->indexed_blocks = 0;
  s->index_disabled = false;
  s->kv.Release();
  s->te.Reset();
  s->evicted = 0;
}

absl::Status Scheduler::ReserveEvicting(Sequence* s, int64_t slots, bool final_layouts) {
  while (true) {
    absl::Status st =
        final_layouts
            ? s->kv.Reserve(slots,
                            [&](int64_t b) { return kv_policy_->FinalLayout(b, s->horizon); })
            : s->kv.Reserve(slots);
    if (st.ok() || st.code() != absl::StatusCode::kResourceExhausted ||
        options_.prefix_index == nullptr) {
      return st;
    }
    std::optional<BlockId> victim = options_.prefix_index->EvictOne();
    if (!victim) return st;
    pool_->Release(*victim);
    ++counters_.prefix_evictions;
  }
}

int64_t Scheduler::MatchableTokens(const Sequence* s) const {
  // The last token is always computed: its logits give the next token.
  int64_t n = static_cast<int64_t>(s->tokens.size()) - 1;
  // With a demoting policy only blocks a prefill writes cold are cached, and this sequence's
  // prefill would write a block cold only if it is outside the window at the horizon.
  if (kv_policy_->demotes()) n = std::min(n, s->horizon - kv_policy_->config().recent_window);
  return std::max<int64_t>(n, 0);
}

bool Scheduler::Shareable(const Sequence* s, int64_t b) const {
  if (!kv_policy_->demotes()) return true;
  const int64_t bs = pool_->geometry().block_size;
  // Sink blocks stay hot for good: every token of theirs sees the same blocks whichever way they
  // were computed.
  if (b * bs < kv_policy_->config().sink_tokens) return true;
  // A demoted block's bytes (and what its tokens saw) depend on when its tokens were computed
  // relative to the prompt's end; only blocks a prefill wrote cold are the same in every request.
  return DirectCold(s) && kv_policy_->ColdEligible(b, s->horizon) &&
         pool_->layout_of(s->kv.block_table()[b]) == kv_policy_->cold_layout();
}

void Scheduler::AttachCachedPrefix(Sequence* s) {
  PrefixIndex* index = options_.prefix_index;
  if (index == nullptr || !s->kv.block_table().empty() || s->tokens.size() < 2) return;
  const PrefixMatch m = index->Lookup(absl::MakeConstSpan(s->tokens.data(), MatchableTokens(s)),
                                      KeysFor(s, kv_policy_->cold_layout()));
  for (BlockId id : m.blocks) {
    pool_->AddRef(id);
    s->kv.AppendShared(id);
  }
  s->indexed_blocks = static_cast<int64_t>(m.blocks.size());
  s->processed = m.matched_tokens;
}

void Scheduler::CacheFullBlocks(Sequence* s) {
  PrefixIndex* index = options_.prefix_index;
  // After a token eviction the blocks no longer hold a plain token prefix.
  if (index == nullptr || s->index_disabled || s->evicted > 0) return;
  const int64_t bs = pool_->geometry().block_size;
  while (s->indexed_blocks < static_cast<int64_t>(s->kv.block_table().size())) {
    const int64_t b = s->indexed_blocks;
    if ((b + 1) * bs > s->processed) break;  // not every token of the block is computed
    const BlockId id = s->kv.block_table()[b];
    if (!Shareable(s, b)) break;
    const BlockId parent = b > 0 ? s->kv.block_table()[b - 1] : kNoBlock;
    absl::StatusOr<PrefixIndex::InsertResult> r = index->Insert(
        id, parent, absl::MakeConstSpan(s->tokens.data() + b * bs, bs),
        KeysFor(s, kv_policy_->cold_layout()),
        RetentionForBlock(s->req.retention, b, static_cast<int32_t>(bs)));
    if (!r.ok()) {
      s->index_disabled = true;
      break;
    }
    if (r->inserted) {
      pool_->AddRef(id);  // the index's own reference
    } else {
      pool_->AddRef(r->block);  // share the identical cached block, free our copy
      s->kv.SetBlock(b, r->block);
    }
    ++s->indexed_blocks;
  }
}

absl::Status Scheduler::EvictTokens(Sequence* s, int64_t incoming) {
  absl::StatusOr<SequenceEvictionPlan> plan = s->te.PlanRoom(s->slots(), incoming);
  if (!plan.ok()) return plan.status();
  if (!plan->evict) return absl::OkStatus();
  // Blocks from the first one the compaction changes are no longer this sequence's prefix
  // blocks: stop sharing them (compaction copies shared ones before writing).
  const int64_t first = FirstChangedBlock(plan->keep, pool_->geometry().block_size);
  if (options_.prefix_index != nullptr) {
    const auto& table = s->kv.block_table();
    for (int64_t b = first; b < s->indexed_blocks; ++b) {
      options_.prefix_index->Release(table[b]);
    }
    s->indexed_blocks = std::min(s->indexed_blocks, first);
  }
  s->index_disabled = true;
  const BlockAllocator allocate = [this](LayoutId layout) -> absl::StatusOr<BlockId> {
    while (true) {
      absl::StatusOr<BlockId> id = pool_->Allocate(layout);
      if (id.ok() || options_.prefix_index == nullptr) return id;
      std::optional<BlockId> victim = options_.prefix_index->EvictOne();
      if (!victim) return id;
      pool_->Release(*victim);
      ++counters_.prefix_evictions;
    }
  };
  absl::StatusOr<int64_t> evicted =
      s->te.Apply(*plan, *pool_, s->kv, s->slots(), layout_, allocate);
  if (!evicted.ok()) return evicted.status();
  s->evicted += *evicted;
  counters_.tokens_evicted[std::string(s->te.policy()->name())] += *evicted;
  ++counters_.token_eviction_events;
  return absl::OkStatus();
}

std::vector<RequestKvEntry> Scheduler::TopRequestsByKv(int n) const {
  std::vector<RequestKvEntry> all;
  for (const auto& p : running_) {
    all.push_back({p->stream->id(), p->kv.bytes(), static_cast<int64_t>(p->kv.block_table().size()),
                   p->slots(), true});
  }
  for (const auto& p : waiting_) {
    if (!p->kv.block_table().empty()) {
      all.push_back({p->stream->id(), p->kv.bytes(),
                     static_cast<int64_t>(p->kv.block_table().size()), p->slots(), false});
    }
  }
  std::sort(all.begin(), all.end(),
            [](const RequestKvEntry& a, const RequestKvEntry& b) { return a.bytes > b.bytes; });
  if (static_cast<int>(all.size()) > n) all.resize(n);
  return all;
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
  waiting_.erase(std::remove_if(waiting_.begin(), waiting_.end(),
                                [](const auto& p) { return p->done; }),
                 waiting_.end());
}

void Scheduler::AbortAll(const absl::Status& status, absl::Time now) {
  for (auto& p : running_) Finish(p.get(), FinishReason::kNone, status, now);
  for (auto& p : waiting_) Finish(p.get(), FinishReason::kNone, status, now);
  RemoveFinished();
  NotifyStreams();
}

int64_t Scheduler::ChunkForDirectCold(const Sequence* s, int64_t take, bool prefill_added) const {
  const int64_t bs = pool_->geometry().block_size;
  const int64_t end = s->processed + take;
  const int64_t b = end / bs;
  // A block allocated to be written whole (cold) must be, in one step: end the chunk at its
  // start. When the budget left cannot cover it, the prefill waits for a later step, unless it
  // is the step's first: then the chunk runs to the block's end, past the budget, so that
  // prefills progress whatever max_batch_tokens and the decodes leave.
  if (end < static_cast<int64_t>(s->tokens.size()) && end % bs != 0 &&
      b < static_cast<int64_t>(s->kv.block_table().size()) &&
      kv_policy_->WrittenWhole(pool_->layout_of(s->kv.block_table()[b]))) {
    if (end - end % bs > s->processed) return end - end % bs - s->processed;
    if (prefill_added) return 0;
    return (b + 1) * bs - s->processed;
  }
  // Past the horizon (a recomputation of generated tokens), tokens are fed as decoding fed them:
  // a chunk never steps over a count at which a block is demoted, so every token sees the blocks
  // it saw when it was generated, and each demoted block is encoded from the same values.
  if (end > s->horizon) {
    const int64_t next = kv_policy_->NextDemotionPoint(std::max(s->processed, s->horizon));
    if (end > next) return next - s->processed;
  }
  return take;
}

bool Scheduler::Step(absl::Time now) {
  const absl::Time step_start = absl::Now();
  // 1. Cancellations and deadlines.
  auto check = [&](Sequence* s) {
    if (s->stream->cancelled()) {
      Finish(s, FinishReason::kCancelled, absl::CancelledError("cancelled by the client"), now);
    } else if (now >= s->req.deadline) {
      Finish(s, FinishReason::kNone,
             absl::DeadlineExceededError(absl::StrFormat(
                 "deadline exceeded after %d generated tokens", s->generated)),
             now);
    }
  };
  for (auto& p : running_) check(p.get());
  for (auto& p : waiting_) check(p.get());
  RemoveFinished();

  // 2. Admission.
  Admit(now);

  // 3a. Decode slots, preempting when blocks run out. Highest priority and oldest first, so
  // that victims come from the other end.
  // Sorted again only when the running set changed: in a steady decode it does not.
  std::vector<Sequence*>& order = order_;
  if (order_stale_) {
    order.clear();
    for (auto& p : running_) order.push_back(p.get());
    // `order` is unique per admission: a total order, so std::sort (which, unlike stable_sort,
    // needs no temporary buffer) gives the same sequence.
    std::sort(order.begin(), order.end(), [](Sequence* a, Sequence* b) {
      if (a->req.priority != b->req.priority) return a->req.priority > b->req.priority;
      return a->order < b->order;
    });
    order_stale_ = false;
  }
  const int64_t block_bytes = pool_->layout(layout_).block_bytes;
  for (Sequence* s : order) {
    if (s->done || s->preempted || s->pending() == 0) continue;
    const bool decoding = s->pending() == 1;
    // Prefill of a sequence without token eviction was reserved in full at admission.
    if (!decoding && !s->te.enabled()) continue;
    const int64_t incoming = decoding ? 1 : std::min<int64_t>(s->pending(), s->te.MaxAppend());
    if (s->te.enabled()) {
      const absl::Status st = EvictTokens(s, incoming);
      if (st.code() == absl::StatusCode::kResourceExhausted) {
        // No block for a copy-on-write: recompute the sequence later.
        ReleaseKv(s);
        s->processed = 0;
        s->preempted = true;
        ++s->preemptions;
        ++counters_.preemptions;
        continue;
      }
      if (!st.ok()) {
        Finish(s, FinishReason::kNone, absl::InternalError(st.message()), now);
        continue;
      }
    }
    const int64_t want = s->slots() + incoming;
    const size_t blocks_before = s->kv.block_table().size();
    while (!ReserveEvicting(s, want).ok()) {
      if (s->kv.bytes() + s->kv.BlocksNeeded(want) * block_bytes > pool_->budget_bytes()) {
        Finish(s, FinishReason::kNone,
               absl::ResourceExhaustedError(absl::StrFormat(
                   "the KV budget of %d bytes cannot hold %d tokens of one sequence",
                   pool_->budget_bytes(), want)),
               now);
        break;
      }
      if (!Preempt(s)) break;  // the requester itself was preempted
    }
    // The peak moves only when blocks were added (or, under token eviction, copied).
    if (!s->done && !s->preempted &&
        (s->kv.block_table().size() != blocks_before || s->te.enabled())) {
      s->TrackPeak();
    }
  }
  RemoveFinished();

  // 3b. The batch: decodes first, then prefill chunks.
  batch_.Clear();
  row_seq_.clear();
  int64_t budget = options_.max_batch_tokens;
  bool prefill_added = false;
  for (int pass = 0; pass < 2 && budget > 0; ++pass) {
    for (auto& p : running_) {
      Sequence* s = p.get();
      const bool decoding = s->pending() == 1;
      if ((pass == 0) != decoding || budget <= 0) continue;
      if (decoding && !s->stream->HasRoom()) continue;  // slow reader: wait for it
      int64_t take = std::min(s->pending(), budget);
      if (s->te.enabled()) take = std::min<int64_t>(take, s->te.MaxAppend());
      if (!decoding && DirectCold(s)) {
        take = ChunkForDirectCold(s, take, prefill_added);
        if (take == 0) continue;  // waits for a step with room for a whole block
      }
      const int32_t seq_index = static_cast<int32_t>(batch_.block_tables.size());
      batch_.block_tables.push_back(s->kv.block_table().data());
      batch_.seq_scores.push_back(s->te.ScoresFor(s->slots() + take));
      batch_.seq_score_layer_stride.push_back(s->te.score_layer_stride());
      batch_.seq_score_head_stride.push_back(s->te.score_head_stride());
      const int64_t prompt_len = static_cast<int64_t>(s->req.prompt.size());
      for (int64_t j = 0; j < take; ++j) {
        const int64_t pos = s->processed + j;
        const bool last = pos + 1 == static_cast<int64_t>(s->tokens.size());
        batch_.Add(s->tokens[pos], static_cast<int32_t>(pos), seq_index,
                   static_cast<int32_t>(pos - s->evicted), last);
        if (last) row_seq_.push_back(s);
        // Prefill tokens (a recomputation included); a prompt token counts also when a chunk
        // boundary left it alone for this step, where it looks like a decode.
        if (!decoding || pos < prompt_len) ++counters_.prompt_tokens;
      }
      if (!decoding) prefill_added = true;
      s->processed += take;
      budget -= take;  // below zero after a first chunk stretched to a block's end
    }
  }
  if (batch_.num_tokens() == 0) {
    NotifyStreams();  // requests that ended before the batch (cancelled, expired, refused)
    counters_.step_time += absl::Now() - step_start;
    return false;
  }

  // 4. Forward, sample, emit.
  const int32_t vocab = model_->config().vocab_size;
  logits_.resize(row_seq_.size() * static_cast<size_t>(vocab));
  const absl::Time fwd_start = absl::Now();
  const absl::Status st = model_->Forward(batch_, *pool_, logits_.data());
  const absl::Time emit_time = absl::Now();
  counters_.forward_time += emit_time - fwd_start;
  ++counters_.steps;
  if (!st.ok()) {
    for (auto& p : running_) {
      Finish(p.get(), FinishReason::kNone, absl::InternalError(st.message()), emit_time);
    }
  } else {
    for (size_t r = 0; r < row_seq_.size(); ++r) {
      Sequence* s = row_seq_[r];
      const int32_t next =
          s->sampler.Sample(absl::MakeSpan(logits_.data() + r * vocab, vocab), s->tokens);
      EmitToken(s, next, emit_time);
    }
    for (auto& p : running_) {
      Sequence* s = p.get();
      if (s->done) continue;
      // Blocks that left the recent window move to their long-term format.
      if (kv_policy_->demotes()) {
        const absl::Time demote_start = absl::Now();
        const absl::Status demoted = kv_policy_->Demote(s->kv, s->slots());
        counters_.demotion_time += absl::Now() - demote_start;
        if (!demoted.ok() && demoted.code() != absl::StatusCode::kResourceExhausted) {
          Finish(s, FinishReason::kNone, demoted, emit_time);
          continue;
        }
      }
      CacheFullBlocks(s);
    }
  }
  RemoveFinished();
  // The consumers learn of the step's events together, after all of them are pushed.
  NotifyStreams();
  counters_.step_time += absl::Now() - step_start;
  return true;
}

}  // namespace kvserve::engine
