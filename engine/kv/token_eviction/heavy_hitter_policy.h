// Token eviction by accumulated attention: `h2o` and `attention`.
//
// `h2o` (Heavy-Hitter Oracle, Zhang et al. 2023): the first `sink_tokens` slots are kept
// (attention sinks), and the rest of the kept budget is split between the most recent slots
// (`recent_window`, default half of it) and the heavy hitters, the slots between sinks and window
// with the largest scores.
// `attention`: keeps the slots with the largest scores only, with no sinks and no recent window.
// Ties in score keep the more recent slot.
//
// A policy sees one score per slot. SequenceTokenEviction calls it once per score unit (the
// sequence, each layer, or each layer and KV head: TokenEvictionOptions::granularity) and may
// divide the accumulated attention by the number of queries that have seen each slot first
// (score_normalization `age`).
//
// Benefits: keeps what the model actually attends to, wherever it is in the sequence; H2O
// matches full-cache quality at a fraction of the memory on many tasks.
// Costs: needs per-slot scores accumulated by the attention kernel (extra work and one float per
// slot and unit); O(budget) per eviction and unit (selection, not sorting). Plain accumulated
// scores favour old slots, which have been attended by more queries (age normalisation removes
// that bias): `attention` alone can starve brand-new slots, whose scores are still near zero,
// which is why `h2o` reserves a recent window. Choices are greedy and final: an evicted slot
// cannot come back when it would have become important later.
#ifndef KVSERVE_ENGINE_KV_TOKEN_EVICTION_HEAVY_HITTER_POLICY_H_
#define KVSERVE_ENGINE_KV_TOKEN_EVICTION_HEAVY_HITTER_POLICY_H_

#include "engine/kv/token_eviction/token_eviction_policy.h"

namespace kvserve::engine {

// Options read: sink_tokens, recent_window, slack_tokens.
class H2oTokenPolicy final : public TokenEvictionPolicy {
 public:
  using TokenEvictionPolicy::TokenEvictionPolicy;
  absl::string_view name() const override { return "h2o"; }
  bool needs_attention_scores() const override { return true; }

 protected:
  absl::Status SelectKept(int32_t num_slots, absl::Span<const float> scores, int32_t target,
                          std::vector<int32_t>* keep) const override;
};

// Options read: slack_tokens.
class AttentionScoreTokenPolicy final : public TokenEvictionPolicy {
 public:
  using TokenEvictionPolicy::TokenEvictionPolicy;
  absl::string_view name() const override { return "attention"; }
  bool needs_attention_scores() const override { return true; }

 protected:
  absl::Status SelectKept(int32_t num_slots, absl::Span<const float> scores, int32_t target,
                          std::vector<int32_t>* keep) const override;
};

}  // namespace kvserve::engine

#endif  // KVSERVE_ENGINE_KV_TOKEN_EVICTION_HEAVY_HITTER_POLICY_H_
