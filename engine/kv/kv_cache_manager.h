// The KV cache manager: the one owner of KV memory decisions. It drives the block pool, the prefix
// index, the KV format policy and token eviction, and holds every sequence's block table (a
// KvSequence). The scheduler asks it for slots, prefix matches and room, in tokens; it never sees
// a block pool or a block reference count.
//
// The API follows vLLM's KVCacheManager (find computed prefix blocks, allocate slots for N new
// tokens, free, cache full blocks) with what a byte-budgeted, mixed-format pool adds:
//   - Allocation evicts: when the pool cannot supply a block, idle cached prefix blocks are
//     dropped one at a time (the block eviction policy picks them, as vLLM's free block queue and
//     TensorRT-LLM's getFreeBlock do) until it can, and only then reports ResourceExhausted (the
//     scheduler's cue to preempt).
//   - Final layouts: a prefill whose blocks leave the recent window before it ends has them
//     allocated in the long-term (cold) layout directly (KvCachePolicy::FinalLayout), so that the
//     pool never holds its prompt at window size; ChunkLimit cuts prefill chunks so that each such
//     block is written whole in one step.
//   - Token eviction: a sequence with a token budget is compacted before the step that would
//     overflow it (MakeRoom).
//
// Reference counts. A block has a pool reference for each sequence that holds it and one for the
// prefix index while it is cached; the index counts, for each cached block, the sequences using
// it. Only this class changes either count, always both together (Attach, Free, CacheFullBlocks,
// MakeRoom, eviction), so for every cached block pool ref_count == index users + 1; a ref count
// of 1 on a cached block means "cached, reusable". VerifyCounts() checks this.
//
// Units: tokens, blocks, bytes as named. Thread-safety: not thread-safe; owned and driven by the
// engine thread (or one offline generation loop).
#ifndef KVSERVE_ENGINE_KV_KV_CACHE_MANAGER_H_
#define KVSERVE_ENGINE_KV_KV_CACHE_MANAGER_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "engine/kv/block_pool.h"
#include "engine/kv/eviction/block_eviction_policy.h"
#include "engine/kv/kv_cache_policy.h"
#include "engine/kv/prefix_index.h"
#include "engine/kv/sequence_kv.h"
#include "engine/kv/token_eviction/sequence_token_eviction.h"
#include "engine/kv/token_eviction/token_eviction_settings.h"

namespace kvserve::engine {

struct KvCacheManagerOptions {
  // Prefix reuse (null = off). Must outlive the manager; the manager holds the index's pool
  // references of its cached blocks.
  PrefixIndex* prefix_index = nullptr;
  std::string model_identity;  // part of every cached block's key
  // Token eviction (null = off for every sequence): the policies and limits requests resolve
  // against; must outlive the manager.
  const TokenEvictionSettings* token_eviction = nullptr;
};

// What a sequence asks of the KV cache, fixed when it is created.
struct KvSequenceSpec {
  std::string cache_salt;                // sequences with different salts never share blocks
  std::vector<RetentionHint> retention;  // retention of its cached prompt blocks
  // The prompt's length: tokens before it are computed as a prefill computes them, the rest
  // (generated) as decoding did, also when a preempted sequence recomputes them.
  int64_t horizon = 0;
  ResolvedTokenEviction token_eviction;  // policy null = none
};

// One sequence's KV: its block table, the slots token eviction freed, what it shares with the
// prefix cache. Created by KvCacheManager::NewSequence, changed only through the manager.
class KvSequence {
 public:
  KvSequence(const KvSequence&) = delete;
  KvSequence& operator=(const KvSequence&) = delete;

  // Block ids in slot order (for the forward pass: kernels index the pool's views with them).
  const std::vector<BlockId>& block_table() const { return kv_.block_table(); }
  int64_t num_blocks() const { return static_cast<int64_t>(kv_.block_table().size()); }
  // Bytes of the blocks this sequence holds (shared blocks counted in full).
  int64_t bytes() const { return kv_.bytes(); }
  // Tokens dropped by token eviction since the KV was last (re)built: token i is in slot
  // i - evicted().
  int64_t evicted() const { return evicted_; }
  // Largest block count and bytes the sequence has held (recomputations included).
  int64_t peak_blocks() const { return peak_blocks_; }
  int64_t peak_bytes() const { return peak_bytes_; }
  // Token eviction.
  bool token_eviction() const { return te_.enabled(); }
  int32_t token_budget() const { return te_.budget_tokens(); }
  // Tokens one step may append at most (token eviction; see SequenceTokenEviction::MaxAppend).
  int32_t MaxAppend() const { return te_.MaxAppend(); }
  int64_t tokens_evicted_total() const { return te_.evicted_tokens(); }
  // The attention-score array of a step that fills slots up to `num_slots` (null unless the
  // policy needs scores), and its strides (ForwardBatch::seq_scores and strides).
  float* ScoresFor(int64_t num_slots) { return te_.ScoresFor(num_slots); }
  int64_t score_layer_stride() const { return te_.score_layer_stride(); }
  int64_t score_head_stride() const { return te_.score_head_stride(); }
  // False once a block could not be cached or tokens were evicted: the rest stays private.
  bool caches_blocks() const { return !index_disabled_ && evicted_ == 0; }
  const std::string& cache_salt() const { return spec_.cache_salt; }
  int64_t horizon() const { return spec_.horizon; }

 private:
  friend class KvCacheManager;
  KvSequence(BlockPool* pool, LayoutId layout, KvSequenceSpec spec);
  void TrackPeak();

  KvSequenceSpec spec_;
  SequenceKv kv_;
  SequenceTokenEviction te_;
  int64_t evicted_ = 0;
  int64_t indexed_blocks_ = 0;   // leading blocks known to the prefix index
  bool index_disabled_ = false;  // a block could not be cached: keep the rest private
  int64_t peak_blocks_ = 0;
  int64_t peak_bytes_ = 0;
};

// Counters since the manager was created.
struct KvCacheCounters {
  int64_t prefix_evictions = 0;  // cached blocks dropped to make room for an allocation
  std::map<std::string, int64_t> tokens_evicted;  // by token eviction policy name
  int64_t token_eviction_events = 0;              // compactions run
  // Wall time converting blocks that left the recent window to their long-term format.
  absl::Duration demotion_time;
};

// The pool's accounting with the prefix cache's share of it.
struct KvCacheStats {
  KvPoolStats pool;            // exact bytes by format and role
  int64_t cached_blocks = 0;   // cached and used by no sequence (reusable)
  int64_t cached_bytes = 0;    // their exact bytes
  int64_t indexed_blocks = 0;  // every block in the prefix index (in use or not)
  int64_t free_blocks = 0;     // blocks of the write layout that can still be allocated
  int64_t block_bytes = 0;     // bytes of one block of the write layout
};

// Whether a waiting sequence can be admitted now.
struct AdmissionCheck {
  enum class Verdict { kAdmit, kNotNow, kNever };
  Verdict verdict = Verdict::kAdmit;
  absl::Status error;  // kNever: why (ResourceExhausted naming the sizes)
};

class KvCacheManager {
 public:
  // `pool` and `policy` must outlive the manager; `policy`'s layouts are registered in `pool`.
  KvCacheManager(BlockPool* pool, const KvCachePolicy* policy, KvCacheManagerOptions options);
  ~KvCacheManager();
  KvCacheManager(const KvCacheManager&) = delete;
  KvCacheManager& operator=(const KvCacheManager&) = delete;

  // A request's token eviction against the configured settings: InvalidArgument naming the
  // field, or when a policy is asked for and token eviction is not configured.
  absl::StatusOr<ResolvedTokenEviction> ResolveTokenEviction(const std::string& policy,
                                                             int32_t budget_tokens) const;
  // A sequence with no blocks.
  std::unique_ptr<KvSequence> NewSequence(KvSequenceSpec spec) const;

  // Slots a sequence of `num_tokens` tokens holds at most (its token budget under eviction).
  int64_t SlotsFor(const KvSequence& seq, int64_t num_tokens) const;
  // True when the sequence's prefill blocks are allocated in their final layouts at admission
  // (written cold directly, see KvCachePolicy).
  bool DirectCold(const KvSequence& seq) const;

  // Prefix cache. `tokens` are the sequence's tokens so far.
  // How many leading tokens of the sequence prefix reuse may cover.
  int64_t MatchableTokens(const KvSequence& seq, int64_t num_tokens) const;
  // Tokens of the longest cached prefix (no side effects).
  int64_t CachedPrefixTokens(const KvSequence& seq, absl::Span<const int32_t> tokens) const;

  // Admission of a sequence that must (re)compute `tokens`: kNever when its KV alone exceeds the
  // budget, kNotNow when free blocks plus idle cached ones cannot hold it now.
  AdmissionCheck CheckAdmission(const KvSequence& seq, absl::Span<const int32_t> tokens) const;
  // Attaches the longest cached prefix of `tokens` to a sequence with no blocks (the blocks
  // become its own, claimed in the index) and returns the tokens it covers (0 without reuse),
  // then allocates the blocks of every slot the sequence needs to hold `tokens` (in final
  // layouts when DirectCold). ResourceExhausted: nothing is kept.
  absl::StatusOr<int64_t> Admit(KvSequence* seq, absl::Span<const int32_t> tokens);
  // Makes sure slots [0, num_slots) have blocks, evicting idle cached blocks for room.
  // ResourceExhausted when even that does not suffice (nothing allocated by the call is kept).
  absl::Status AllocateSlots(KvSequence* seq, int64_t num_slots);
  // True when the sequence's KV could grow to `num_slots` slots were every other block free.
  bool CanEverHold(const KvSequence& seq, int64_t num_slots) const;
  // Frees every block of the sequence (telling the prefix index) and forgets its token
  // eviction state: the sequence recomputes from scratch.
  void Free(KvSequence* seq);
  // Caches the sequence's full blocks whose `computed` tokens are all computed and final.
  void CacheFullBlocks(KvSequence* seq, absl::Span<const int32_t> tokens, int64_t computed);

  // Token eviction before `incoming` tokens are appended to a sequence with `computed` tokens
  // computed: compacts it when it would exceed its budget. ResourceExhausted (no block for a
  // copy-on-write) or Internal: the sequence's KV is unusable.
  absl::Status MakeRoom(KvSequence* seq, int64_t computed, int64_t incoming);
  // Moves blocks that left the recent window to their long-term format (no-op unless the policy
  // demotes). ResourceExhausted leaves the rest for later; other errors: the KV is unusable.
  absl::Status Demote(KvSequence* seq, int64_t computed);
  // The prefill chunk `take` tokens (within the step's budget) become for a sequence with
  // `computed` of `num_tokens` tokens computed: cut so that every cold-allocated block is written
  // whole in one step and recomputed generated tokens are fed as decoding fed them; 0 when it
  // must wait for a later step. `first_prefill`: no other prefill is in the step yet (then a
  // chunk may run past the budget to a block's end, so that prefills always progress).
  int64_t ChunkLimit(const KvSequence& seq, int64_t computed, int64_t num_tokens, int64_t take,
                     bool first_prefill) const;

  // Drops every cached block no sequence uses; returns the blocks and bytes released.
  void FlushPrefixCache(int64_t* blocks, int64_t* bytes);

  KvCacheStats Stats() const;
  const KvCacheCounters& counters() const { return counters_; }
  const PrefixIndex* prefix_index() const { return index_; }
  const KvCachePolicy& policy() const { return *policy_; }
  int block_size() const { return pool_->geometry().block_size; }
  int64_t budget_bytes() const { return pool_->budget_bytes(); }
  // The pool, for the model runner's forward pass (it reads and writes block bytes).
  BlockPool& pool_for_forward() { return *pool_; }
  // OK when every cached block's pool ref count equals its index users + 1 and every sequence
  // block holds a reference (for tests; O(cached blocks)).
  absl::Status VerifyCounts(absl::Span<const KvSequence* const> live) const;

 private:
  PrefixKeys KeysFor(const KvSequence& seq) const;
  // Bytes of the blocks `seq` still needs to hold `slots` tokens, each in the layout it is
  // allocated in (final layouts when `final_layouts`), from table index `from` on.
  int64_t BytesNeeded(const KvSequence& seq, int64_t slots, bool final_layouts, int64_t from) const;
  // True when block `b` of the sequence may go to the prefix cache: its bytes are what any
  // request with the same tokens would compute for it.
  bool Shareable(const KvSequence& seq, int64_t b) const;
  absl::Status Reserve(KvSequence* seq, int64_t slots, bool final_layouts);
  // Evicts one idle cached block; false when none is left.
  bool EvictOne();

  BlockPool* pool_;
  const KvCachePolicy* policy_;
  PrefixIndex* index_;
  KvCacheManagerOptions options_;
  LayoutId layout_;  // policy_->write_layout()
  // Prefills write blocks that leave the window within their step directly in the cold layout.
  bool direct_cold_ = false;
  KvCacheCounters counters_;
};

}  // namespace kvserve::engine

#endif  // KVSERVE_ENGINE_KV_KV_CACHE_MANAGER_H_
