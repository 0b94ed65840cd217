// Token eviction applied to a live sequence's paged KV: the per-sequence state (policy, budget,
// accumulated attention per slot) and the compaction that carries out a TokenEvictionPlan on the
// sequence's blocks. Design and costs: docs/token-eviction.md.
//
// Compaction, not validity masks: kept slots move to the front (slot keep[i] -> slot i), blocks
// past the new length are freed at once, and the attention kernel needs nothing but the usual
// kv length. Each dest block from the first changed slot on is rebuilt whole: its rows are read
// from the source blocks (decoded once per eviction, block by block) and re-encoded in the
// block's own format with QuantizeKvRegion, so every KV format works, including those whose
// parameters span the block (per-channel keys). Float formats round-trip exactly; quantized ones
// re-quantize the moved rows with the new block's scales (a small extra error per eviction).
// Shared blocks (prefix cache, other sequences) are never written: a fresh block replaces ours
// (copy-on-write). A partial last block whose layout cannot take single-token writes (a demoted
// block of a per-channel format) is rebuilt in the write layout.
//
// Positions: keys are cached after RoPE, so kept keys keep the rotation of their original
// position; new tokens keep their true position (the H2O convention). StreamingLLM instead
// renumbers positions inside the cache, which needs pre-RoPE keys; we do not. The model's
// context length still bounds the true position.
//
// Thread-safety: none; the engine thread drives it.
#ifndef KVSERVE_ENGINE_KV_TOKEN_EVICTION_SEQUENCE_TOKEN_EVICTION_H_
#define KVSERVE_ENGINE_KV_TOKEN_EVICTION_SEQUENCE_TOKEN_EVICTION_H_

#include <cstdint>
#include <functional>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/kv/block_pool.h"
#include "engine/kv/sequence_kv.h"
#include "engine/kv/token_eviction/token_eviction_policy.h"

namespace kvserve::engine {

// Supplies a block of a layout (the scheduler evicts cached prefix blocks to find one).
using BlockAllocator = std::function<absl::StatusOr<BlockId>(LayoutId)>;

struct KvCompactionStats {
  int64_t blocks_rewritten = 0;  // dest blocks re-encoded
  int64_t blocks_replaced = 0;   // of which written into a fresh block (shared or relaid out)
  int64_t blocks_freed = 0;      // blocks past the new length dropped
};

// Index of the first block whose contents `keep` changes (slots before it stay in place).
int64_t FirstChangedBlock(absl::Span<const int32_t> keep, int block_size);

// Moves slot keep[i] to slot i of `seq` (every layer, K and V), frees the blocks past
// keep.size() slots, and rewrites blocks as described above. num_slots: slots filled now.
// REQUIRES: keep strictly ascending, keep.back() < num_slots <= seq capacity.
// Errors: ResourceExhausted when `allocate` finds no block for a copy-on-write or relaid-out
// block, Internal for non-finite K/V; after an error the sequence's KV is inconsistent and must
// be released (recomputed).
absl::StatusOr<KvCompactionStats> CompactSequenceKv(BlockPool& pool, SequenceKv& seq,
                                                    int64_t num_slots,
                                                    absl::Span<const int32_t> keep,
                                                    LayoutId write_layout,
                                                    const BlockAllocator& allocate);

// One sequence's token eviction: which policy, its budget, the accumulated attention of each
// filled slot (when the policy reads it) and how many tokens it has evicted.
class SequenceTokenEviction {
 public:
  // policy: null or `none` means never evict. The policy must outlive this object.
  SequenceTokenEviction(const TokenEvictionPolicy* policy, int32_t budget_tokens)
      : policy_(policy), budget_(budget_tokens) {}

  bool enabled() const { return policy_ != nullptr && policy_->name() != "none"; }
  const TokenEvictionPolicy* policy() const { return policy_; }
  int32_t budget_tokens() const { return budget_; }
  bool wants_scores() const { return enabled() && policy_->needs_attention_scores(); }
  // Tokens evicted since creation (or Reset).
  int64_t evicted_tokens() const { return evicted_; }
  // Tokens a step may append at most: what is left of the budget once the policy's fixed part
  // (slack and sinks) is set aside. >= 1 when the budget passed validation.
  int32_t MaxAppend() const;

  // Before appending `incoming` tokens to a sequence with `num_slots` filled slots: evicts (plan
  // + compaction) when num_slots + incoming would exceed the budget. Returns the tokens evicted
  // (0 when none). Errors as CompactSequenceKv, plus InvalidArgument from the policy.
  absl::StatusOr<int64_t> MakeRoom(BlockPool& pool, SequenceKv& seq, int64_t num_slots,
                                   int64_t incoming, LayoutId write_layout,
                                   const BlockAllocator& allocate);
  // MakeRoom in two halves, for callers that must act between them (the scheduler stops
  // sharing the blocks a compaction will change): the plan (plan.evict false: nothing to do),
  // then its application, which returns the tokens evicted.
  absl::StatusOr<TokenEvictionPlan> PlanRoom(int64_t num_slots, int64_t incoming);
  absl::StatusOr<int64_t> Apply(const TokenEvictionPlan& plan, BlockPool& pool, SequenceKv& seq,
                                int64_t num_slots, LayoutId write_layout,
                                const BlockAllocator& allocate);

  // The score array for a step that fills slots up to `num_slots` (new slots start at 0), or
  // null when the policy reads no scores. Valid until the next call.
  float* ScoresFor(int64_t num_slots);
  const std::vector<float>& scores() const { return scores_; }

  // Forgets the scores (the sequence's KV was dropped and will be recomputed).
  void Reset() { scores_.clear(); }

 private:
  const TokenEvictionPolicy* policy_;
  int32_t budget_;
  std::vector<float> scores_;  // [filled slots]
  int64_t evicted_ = 0;
};

}  // namespace kvserve::engine

#endif  // KVSERVE_ENGINE_KV_TOKEN_EVICTION_SEQUENCE_TOKEN_EVICTION_H_
