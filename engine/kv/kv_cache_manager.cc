#include "engine/kv/kv_cache_manager.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_format.h"

namespace kvserve::engine {

KvSequence::KvSequence(BlockPool* pool, LayoutId layout, KvSequenceSpec spec)
    : spec_(std::move(spec)),
      kv_(pool, layout),
      te_(spec_.token_eviction.policy, spec_.token_eviction.budget_tokens,
          pool->geometry().num_layers, pool->geometry().num_kv_heads) {}

void KvSequence::TrackPeak() {
  peak_blocks_ = std::max(peak_blocks_, num_blocks());
  peak_bytes_ = std::max(peak_bytes_, kv_.bytes());
}

KvCacheManager::KvCacheManager(BlockPool* pool, const KvCachePolicy* policy,
                               KvCacheManagerOptions options)
    : pool_(pool),
      policy_(policy),
      index_(options.prefix_index),
      options_(std::move(options)),
      layout_(policy->write_layout()),
      direct_cold_(policy->demotes()) {}

KvCacheManager::~KvCacheManager() = default;

absl::StatusOr<ResolvedTokenEviction> KvCacheManager::ResolveTokenEviction(
    const std::string& policy, int32_t budget_tokens) const {
  if (options_.token_eviction != nullptr) {
    return options_.token_eviction->Resolve(policy, budget_tokens);
  }
  if (!policy.empty() && policy != "none") {
    return absl::InvalidArgumentError("token eviction is not configured on this engine");
  }
  return ResolvedTokenEviction{};
}

std::unique_ptr<KvSequence> KvCacheManager::NewSequence(KvSequenceSpec spec) const {
  return std::unique_ptr<KvSequence>(new KvSequence(pool_, layout_, std::move(spec)));
}

int64_t KvCacheManager::SlotsFor(const KvSequence& seq, int64_t num_tokens) const {
  // A sequence under token eviction never holds more than its budget; its prefill runs in chunks
  // with evictions between them.
  return seq.token_eviction() ? std::min<int64_t>(num_tokens, seq.token_budget()) : num_tokens;
}

bool KvCacheManager::DirectCold(const KvSequence& seq) const {
  return direct_cold_ && !seq.token_eviction();
}

PrefixKeys KvCacheManager::KeysFor(const KvSequence& seq) const {
  PrefixKeys k;
  k.cache_salt = seq.spec_.cache_salt;
  k.layout = policy_->cold_layout();  // cached blocks are in their final (cold) layout
  k.model = options_.model_identity;
  return k;
}

int64_t KvCacheManager::BytesNeeded(const KvSequence& seq, int64_t slots, bool final_layouts,
                                    int64_t from) const {
  const int64_t bs = block_size();
  const int64_t blocks = (slots + bs - 1) / bs;
  int64_t bytes = 0;
  for (int64_t b = from; b < blocks; ++b) {
    bytes +=
        pool_->layout(final_layouts ? policy_->FinalLayout(b, seq.horizon()) : layout_).block_bytes;
  }
  return bytes;
}

int64_t KvCacheManager::MatchableTokens(const KvSequence& seq, int64_t num_tokens) const {
  // The last token is always computed: its logits give the next token.
  int64_t n = num_tokens - 1;
  // With a demoting policy only blocks a prefill writes cold are cached, and this sequence's
  // prefill would write a block cold only if it is outside the window at the horizon.
  if (policy_->demotes()) n = std::min(n, seq.horizon() - policy_->config().recent_window);
  return std::max<int64_t>(n, 0);
}

int64_t KvCacheManager::CachedPrefixTokens(const KvSequence& seq,
                                           absl::Span<const int32_t> tokens) const {
  if (index_ == nullptr || tokens.size() < 2) return 0;
  return index_->Match(tokens.subspan(0, MatchableTokens(seq, tokens.size())), KeysFor(seq))
      .matched_tokens;
}

bool KvCacheManager::Shareable(const KvSequence& seq, int64_t b) const {
  if (!policy_->demotes()) return true;
  // Sink blocks stay hot for good: every token of theirs sees the same blocks whichever way they
  // were computed.
  if (b * block_size() < policy_->config().sink_tokens) return true;
  // A demoted block's bytes (and what its tokens saw) depend on when its tokens were computed
  // relative to the prompt's end; only blocks a prefill wrote cold are the same in every request.
  return DirectCold(seq) && policy_->ColdEligible(b, seq.horizon()) &&
         pool_->layout_of(seq.block_table()[b]) == policy_->cold_layout();
}

AdmissionCheck KvCacheManager::CheckAdmission(const KvSequence& seq,
                                              absl::Span<const int32_t> tokens) const {
  AdmissionCheck check;
  const int64_t block_bytes = pool_->layout(layout_).block_bytes;
  const int64_t pool_blocks = pool_->budget_bytes() / block_bytes;
  const int64_t slots = SlotsFor(seq, tokens.size());
  const int64_t need = seq.kv_.BlocksNeeded(slots);
  const bool final_layouts = DirectCold(seq);
  const int64_t have = seq.num_blocks();
  if (final_layouts ? BytesNeeded(seq, slots, true, have) > pool_->budget_bytes()
                    : need > pool_blocks) {
    check.verdict = AdmissionCheck::Verdict::kNever;
    check.error = absl::ResourceExhaustedError(absl::StrFormat(
        "the sequence needs %d KV blocks (%d tokens) but the KV budget of %d bytes holds %d", need,
        slots, pool_->budget_bytes(), pool_blocks));
    return check;
  }
  int64_t matched_blocks = 0;
  int64_t evictable = 0;
  if (index_ != nullptr && tokens.size() >= 2) {
    matched_blocks = static_cast<int64_t>(
        index_->Match(tokens.subspan(0, MatchableTokens(seq, tokens.size())), KeysFor(seq))
            .blocks.size());
    // Every idle cached block can be reclaimed (evicting a leaf makes its idle parent
    // evictable), except the matched ones this sequence is about to use.
    evictable = std::max<int64_t>(0, index_->idle_blocks() - matched_blocks);
  }
  bool fits;
  if (final_layouts) {
    // In bytes: the blocks differ in size. Free blocks of any layout are reclaimable, and
    // cached idle blocks are in their final (cold) layout.
    const int64_t evictable_bytes = evictable * pool_->layout(policy_->cold_layout()).block_bytes;
    fits = BytesNeeded(seq, slots, true, have + matched_blocks) <=
           pool_->budget_bytes() - pool_->used_bytes() + evictable_bytes;
  } else {
    fits = need - matched_blocks <= pool_->AvailableBlocks(layout_) + evictable;
  }
  if (!fits) check.verdict = AdmissionCheck::Verdict::kNotNow;
  return check;
}

absl::StatusOr<int64_t> KvCacheManager::Admit(KvSequence* seq, absl::Span<const int32_t> tokens) {
  int64_t cached = 0;
  if (index_ != nullptr && seq->kv_.block_table().empty() && tokens.size() >= 2) {
    const PrefixMatch m =
        index_->Lookup(tokens.subspan(0, MatchableTokens(*seq, tokens.size())), KeysFor(*seq));
    for (BlockId id : m.blocks) {
      pool_->AddRef(id);
      seq->kv_.AppendShared(id);
    }
    seq->indexed_blocks_ = static_cast<int64_t>(m.blocks.size());
    cached = m.matched_tokens;
  }
  const int64_t slots = std::max(SlotsFor(*seq, tokens.size()), cached);
  const absl::Status st = Reserve(seq, slots, DirectCold(*seq));
  if (!st.ok()) {
    Free(seq);
    return st;
  }
  seq->TrackPeak();
  return cached;
}

absl::Status KvCacheManager::AllocateSlots(KvSequence* seq, int64_t num_slots) {
  const int64_t blocks_before = seq->num_blocks();
  absl::Status st = Reserve(seq, num_slots, /*final_layouts=*/false);
  // The peak moves only when blocks were added (or, under token eviction, copied).
  if (st.ok() && (seq->num_blocks() != blocks_before || seq->token_eviction())) seq->TrackPeak();
  return st;
}

absl::Status KvCacheManager::Reserve(KvSequence* seq, int64_t slots, bool final_layouts) {
  while (true) {
    absl::Status st =
        final_layouts
            ? seq->kv_.Reserve(slots,
                               [&](int64_t b) { return policy_->FinalLayout(b, seq->horizon()); })
            : seq->kv_.Reserve(slots);
    if (st.ok() || st.code() != absl::StatusCode::kResourceExhausted) return st;
    if (!EvictOne()) return st;
  }
}

bool KvCacheManager::EvictOne() {
  if (index_ == nullptr) return false;
  std::optional<BlockId> victim = index_->EvictOne();
  if (!victim) return false;
  pool_->Release(*victim);  // the index's reference: the block is free now
  ++counters_.prefix_evictions;
  return true;
}

bool KvCacheManager::CanEverHold(const KvSequence& seq, int64_t num_slots) const {
  const int64_t block_bytes = pool_->layout(layout_).block_bytes;
  return seq.bytes() + seq.kv_.BlocksNeeded(num_slots) * block_bytes <= pool_->budget_bytes();
}

void KvCacheManager::Free(KvSequence* seq) {
  if (index_ != nullptr) {
    const auto& table = seq->kv_.block_table();
    for (int64_t b = 0; b < seq->indexed_blocks_ && b < static_cast<int64_t>(table.size()); ++b) {
      index_->Release(table[b]);
    }
  }
  seq->indexed_blocks_ = 0;
  seq->index_disabled_ = false;
  seq->kv_.Release();
  seq->te_.Reset();
  seq->evicted_ = 0;
}

void KvCacheManager::CacheFullBlocks(KvSequence* seq, absl::Span<const int32_t> tokens,
                                     int64_t computed) {
  // After a token eviction the blocks no longer hold a plain token prefix.
  if (index_ == nullptr || !seq->caches_blocks()) return;
  const int64_t bs = block_size();
  const PrefixKeys keys = KeysFor(*seq);
  while (seq->indexed_blocks_ < seq->num_blocks()) {
    const int64_t b = seq->indexed_blocks_;
    if ((b + 1) * bs > computed) break;  // not every token of the block is computed
    const BlockId id = seq->kv_.block_table()[b];
    if (!Shareable(*seq, b)) break;
    const BlockId parent = b > 0 ? seq->kv_.block_table()[b - 1] : kNoBlock;
    absl::StatusOr<PrefixIndex::InsertResult> r =
        index_->Insert(id, parent, tokens.subspan(b * bs, bs), keys,
                       RetentionForBlock(seq->spec_.retention, b, static_cast<int32_t>(bs)),
                       pool_->layout(pool_->layout_of(id)).block_bytes);
    if (!r.ok()) {
      seq->index_disabled_ = true;
      break;
    }
    if (r->inserted) {
      pool_->AddRef(id);  // the index's own reference
    } else {
      pool_->AddRef(r->block);  // share the identical cached block, free our copy
      seq->kv_.SetBlock(b, r->block);
    }
    ++seq->indexed_blocks_;
  }
}

absl::Status KvCacheManager::MakeRoom(KvSequence* seq, int64_t computed, int64_t incoming) {
  const int64_t slots = computed - seq->evicted_;
  absl::StatusOr<SequenceEvictionPlan> plan = seq->te_.PlanRoom(slots, incoming);
  if (!plan.ok()) return plan.status();
  if (!plan->evict) return absl::OkStatus();
  // Blocks from the first one the compaction changes are no longer this sequence's prefix
  // blocks: stop sharing them (compaction copies shared ones before writing).
  const int64_t first = FirstChangedBlock(plan->keep, block_size());
  if (index_ != nullptr) {
    const auto& table = seq->kv_.block_table();
    for (int64_t b = first; b < seq->indexed_blocks_; ++b) index_->Release(table[b]);
    seq->indexed_blocks_ = std::min(seq->indexed_blocks_, first);
  }
  seq->index_disabled_ = true;
  const BlockAllocator allocate = [this](LayoutId layout) -> absl::StatusOr<BlockId> {
    while (true) {
      absl::StatusOr<BlockId> id = pool_->Allocate(layout);
      if (id.ok() || !EvictOne()) return id;
    }
  };
  absl::StatusOr<int64_t> evicted =
      seq->te_.Apply(*plan, *pool_, seq->kv_, slots, layout_, allocate);
  if (!evicted.ok()) return evicted.status();
  seq->evicted_ += *evicted;
  counters_.tokens_evicted[std::string(seq->te_.policy()->name())] += *evicted;
  ++counters_.token_eviction_events;
  return absl::OkStatus();
}

absl::Status KvCacheManager::Demote(KvSequence* seq, int64_t computed) {
  if (!policy_->demotes()) return absl::OkStatus();
  const absl::Time start = absl::Now();
  absl::Status st = policy_->Demote(seq->kv_, computed - seq->evicted_);
  counters_.demotion_time += absl::Now() - start;
  return st;
}

int64_t KvCacheManager::ChunkLimit(const KvSequence& seq, int64_t computed, int64_t num_tokens,
                                   int64_t take, bool first_prefill) const {
  if (!DirectCold(seq)) return take;
  const int64_t bs = block_size();
  const int64_t end = computed + take;
  const int64_t b = end / bs;
  // A block allocated to be written whole (cold) must be, in one step: end the chunk at its
  // start. When the budget left cannot cover it, the prefill waits for a later step, unless it
  // is the step's first: then the chunk runs to the block's end, past the budget, so that
  // prefills progress whatever max_batch_tokens and the decodes leave.
  if (end < num_tokens && end % bs != 0 && b < seq.num_blocks() &&
      policy_->WrittenWhole(pool_->layout_of(seq.block_table()[b]))) {
    if (end - end % bs > computed) return end - end % bs - computed;
    if (!first_prefill) return 0;
    return (b + 1) * bs - computed;
  }
  // Past the horizon (a recomputation of generated tokens), tokens are fed as decoding fed them:
  // a chunk never steps over a count at which a block is demoted, so every token sees the blocks
  // it saw when it was generated, and each demoted block is encoded from the same values.
  if (end > seq.horizon()) {
    const int64_t next = policy_->NextDemotionPoint(std::max(computed, seq.horizon()));
    if (end > next) return next - computed;
  }
  return take;
}

void KvCacheManager::FlushPrefixCache(int64_t* blocks, int64_t* bytes) {
  *blocks = 0;
  *bytes = 0;
  if (index_ == nullptr) return;
  for (BlockId b : index_->Clear()) {
    ++*blocks;
    *bytes += pool_->layout(pool_->layout_of(b)).block_bytes;
    pool_->Release(b);
  }
}

KvCacheStats KvCacheManager::Stats() const {
  KvCacheStats s;
  s.pool = pool_->Stats();
  if (index_ != nullptr) {
    s.cached_blocks = index_->idle_blocks();
    s.cached_bytes = index_->idle_bytes();
    s.indexed_blocks = index_->cached_blocks();
  }
  s.free_blocks = pool_->AvailableBlocks(layout_);
  s.block_bytes = pool_->layout(layout_).block_bytes;
  return s;
}

absl::Status KvCacheManager::VerifyCounts(absl::Span<const KvSequence* const> live) const {
  std::vector<int32_t> held(pool_->num_block_ids(), 0);
  for (const KvSequence* s : live) {
    for (BlockId b : s->block_table()) ++held[b];
  }
  for (BlockId b = 0; b < static_cast<BlockId>(held.size()); ++b) {
    const bool cached = index_ != nullptr && index_->Contains(b);
    const int32_t users = cached ? index_->Find(b)->users : 0;
    const int32_t expected = held[b] + (cached ? 1 : 0);
    if (pool_->ref_count(b) != expected) {
      return absl::InternalError(
          absl::StrFormat("block %d: pool ref count %d, but %d sequence references%s", b,
                          pool_->ref_count(b), held[b], cached ? " and the index's" : ""));
    }
    if (cached && users > held[b]) {
      return absl::InternalError(absl::StrFormat(
          "cached block %d: the index counts %d users, %d sequences hold it", b, users, held[b]));
    }
  }
  return absl::OkStatus();
}

}  // namespace kvserve::engine
