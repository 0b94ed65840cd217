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
// The same over several plans (the first block any of them changes).
int64_t FirstChangedBlock(absl::Span<const std::vector<int32_t>> keeps, int block_size);

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
// The same with one plan per layer (keeps.size() == num_layers: layer l moves slot keeps[l][i] to
// slot i) or per layer and KV head (num_layers * num_kv_heads plans, index l * num_kv_heads + h),
// or one for all (size 1). Keys are stored after RoPE, so a slot may hold different tokens in
// different layers and heads; every plan keeps the same number of slots.
absl::StatusOr<KvCompactionStats> CompactSequenceKv(BlockPool& pool, SequenceKv& seq,
                                                    int64_t num_slots,
                                                    absl::Span<const std::vector<int32_t>> keeps,
                                                    LayoutId write_layout,
                                                    const BlockAllocator& allocate);

// What SequenceTokenEviction::PlanRoom decides: one plan (TokenEvictionPlan::keep) per score
// unit: one for the whole sequence, or one per layer, or per layer and KV head (see
// TokenEvictionGranularity).
struct SequenceEvictionPlan {
  bool evict = false;
  std::vector<std::vector<int32_t>> keep;  // [units][kept slots], each strictly ascending
};

// One sequence's token eviction: which policy, its budget, the accumulated attention of each
// filled slot (when the policy reads it) and how many tokens it has evicted.
//
// Score units: with granularity `sequence` one score per slot (summed over layers and heads)
// and one decision for all layers; with `layer` one score row and one decision per layer; with
// `head` one per layer and KV head (query heads of a group summed). The rows live in one array,
// [units][budget_tokens] (slots never exceed the budget), which the attention kernel fills
// through ScoresFor() and the strides below. Each unit also keeps its slots' original positions,
// so that `score_normalization: age` can divide a score by the number of queries that have seen
// the slot (tokens fed from its position on).
class SequenceTokenEviction {
 public:
  // policy: null or `none` means never evict. The policy must outlive this object.
  // num_layers, num_kv_heads: the model's, for per-layer or per-head granularity.
  SequenceTokenEviction(const TokenEvictionPolicy* policy, int32_t budget_tokens, int num_layers,
                        int num_kv_heads);

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
  absl::StatusOr<SequenceEvictionPlan> PlanRoom(int64_t num_slots, int64_t incoming);
  absl::StatusOr<int64_t> Apply(const SequenceEvictionPlan& plan, BlockPool& pool, SequenceKv& seq,
                                int64_t num_slots, LayoutId write_layout,
                                const BlockAllocator& allocate);

  // The score array for a step that feeds the tokens filling slots up to `num_slots` (new slots
  // start at 0), or null when the policy reads no scores. Valid until the next call. Layer l
  // adds to row l * score_layer_stride(), KV head g of it to + g * score_head_stride() when that
  // is > 0 (ForwardBatch::seq_score_layer_stride / seq_score_head_stride).
  // REQUIRES: num_slots <= budget_tokens().
  float* ScoresFor(int64_t num_slots);
  int64_t score_layer_stride() const { return layer_stride_; }
  int64_t score_head_stride() const { return head_stride_; }
  int score_units() const { return units_; }
  // The filled part of every unit's row, unit after unit (for tests).
  std::vector<float> scores() const;

  // Forgets the scores (the sequence's KV was dropped and will be recomputed).
  void Reset();

 private:
  const TokenEvictionPolicy* policy_;
  int32_t budget_;
  int units_ = 1;
  int64_t layer_stride_ = 0;
  int64_t head_stride_ = 0;
  std::vector<float> scores_;       // [units][budget_], slots >= filled_ are 0
  std::vector<int32_t> positions_;  // [units][budget_]: original position of each slot
  int64_t filled_ = 0;              // slots filled (as far as the scores know)
  int64_t fed_ = 0;                 // tokens fed since creation (or Reset)
  int64_t evicted_ = 0;
};

}  // namespace kvserve::engine

#endif  // KVSERVE_ENGINE_KV_TOKEN_EVICTION_SEQUENCE_TOKEN_EVICTION_H_
