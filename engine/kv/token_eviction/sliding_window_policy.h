// `sliding_window` (StreamingLLM, Xiao et al. 2023): keeps the first `sink_tokens` slots
// (attention sinks: softmax dumps excess attention on the first tokens, and dropping them wrecks
// the model) plus the most recent slots, up to the budget.
//
// Benefits: no attention scores needed (works with any attention kernel), O(budget) per
// eviction, stable perplexity on unbounded streams.
// Costs: everything between the sinks and the window is forgotten, however important (a fact
// from the middle of a long prompt is lost once it leaves the window).
// Options read: sink_tokens, slack_tokens. The budget after slack must exceed sink_tokens.
#ifndef KVSERVE_ENGINE_KV_TOKEN_EVICTION_SLIDING_WINDOW_POLICY_H_
#define KVSERVE_ENGINE_KV_TOKEN_EVICTION_SLIDING_WINDOW_POLICY_H_

#include "engine/kv/token_eviction/token_eviction_policy.h"

namespace kvserve::engine {

class SlidingWindowTokenPolicy final : public TokenEvictionPolicy {
 public:
  using TokenEvictionPolicy::TokenEvictionPolicy;
  absl::string_view name() const override { return "sliding_window"; }
  bool needs_attention_scores() const override { return false; }

 protected:
  absl::Status SelectKept(int32_t num_slots, absl::Span<const float> scores, int32_t target,
                          std::vector<int32_t>* keep) const override;
};

}  // namespace kvserve::engine

#endif  // KVSERVE_ENGINE_KV_TOKEN_EVICTION_SLIDING_WINDOW_POLICY_H_
