#include "engine/kv/token_eviction/token_eviction_policy.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "engine/common/named_registry.h"
#include "engine/common/status_macros.h"
#include "engine/kv/token_eviction/heavy_hitter_policy.h"
#include "engine/kv/token_eviction/sliding_window_policy.h"

namespace kvserve::engine {
namespace {

// `none` (the default): never evicts; the sequence's KV grows with its length.
class NoTokenEviction final : public TokenEvictionPolicy {
 public:
  using TokenEvictionPolicy::TokenEvictionPolicy;
  absl::string_view name() const override { return "none"; }
  bool needs_attention_scores() const override { return false; }

 protected:
  bool evicts() const override { return false; }
  absl::Status SelectKept(int32_t, absl::Span<const float>, int32_t,
                          std::vector<int32_t>*) const override {
    return absl::InternalError("none never evicts");
  }
};

template <typename Policy>
TokenEvictionPolicyFactory FactoryOf() {
  return [](const TokenEvictionOptions& o) { return std::make_unique<Policy>(o); };
}

NamedRegistry<TokenEvictionPolicyFactory>& GetRegistry() {
  static auto* registry = [] {
    auto* r = new NamedRegistry<TokenEvictionPolicyFactory>("token eviction policy");
    (void)r->Register("none", FactoryOf<NoTokenEviction>());
    (void)r->Register("sliding_window", FactoryOf<SlidingWindowTokenPolicy>());
    (void)r->Register("h2o", FactoryOf<H2oTokenPolicy>());
    (void)r->Register("attention", FactoryOf<AttentionScoreTokenPolicy>());
    return r;
  }();
  return *registry;
}

}  // namespace

absl::StatusOr<TokenEvictionPlan> TokenEvictionPolicy::Plan(int32_t num_slots,
                                                            absl::Span<const float> scores,
                                                            int32_t budget_tokens) const {
  if (budget_tokens < 1 || num_slots < 0) {
    return absl::InvalidArgumentError(absl::StrCat("token eviction: budget ", budget_tokens,
                                                   " and slot count ", num_slots,
                                                   " must be positive"));
  }
  TokenEvictionPlan plan;
  if (!evicts() || num_slots <= budget_tokens) return plan;
  const int32_t target = budget_tokens - options_.slack_tokens;
  if (target < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("token eviction: slack_tokens (", options_.slack_tokens,
                     ") must be below the budget (", budget_tokens, " tokens)"));
  }
  if (needs_attention_scores()) {
    if (static_cast<int64_t>(scores.size()) != num_slots) {
      return absl::InvalidArgumentError(
          absl::StrCat(name(), ": ", scores.size(), " attention scores for ", num_slots, " slots"));
    }
    for (float s : scores) {
      if (!std::isfinite(s)) {
        return absl::InvalidArgumentError(absl::StrCat(name(), ": non-finite attention score"));
      }
    }
  }
  plan.keep.reserve(target);
  KVSERVE_RETURN_IF_ERROR(SelectKept(num_slots, scores, target, &plan.keep));
  std::sort(plan.keep.begin(), plan.keep.end());
  KVSERVE_CHECK(static_cast<int32_t>(plan.keep.size()) == target &&
                std::adjacent_find(plan.keep.begin(), plan.keep.end()) == plan.keep.end() &&
                plan.keep.front() >= 0 && plan.keep.back() < num_slots)
      << name() << " kept " << plan.keep.size() << " slots, wanted " << target;
  plan.evict = true;
  return plan;
}

absl::StatusOr<TokenEvictionGranularity> ParseTokenEvictionGranularity(absl::string_view name) {
  if (name == "sequence") return TokenEvictionGranularity::kSequence;
  if (name == "layer") return TokenEvictionGranularity::kLayer;
  if (name == "head") return TokenEvictionGranularity::kHead;
  return absl::InvalidArgumentError(absl::StrCat("unknown token eviction granularity '", name,
                                                 "'; known: sequence, layer, head"));
}

absl::StatusOr<TokenScoreNormalization> ParseTokenScoreNormalization(absl::string_view name) {
  if (name == "none") return TokenScoreNormalization::kNone;
  if (name == "age") return TokenScoreNormalization::kAge;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown token score normalization '", name, "'; known: none, age"));
}

absl::StatusOr<std::unique_ptr<TokenEvictionPolicy>> CreateTokenEvictionPolicy(
    absl::string_view name, const TokenEvictionOptions& options) {
  absl::StatusOr<TokenEvictionPolicyFactory> factory = GetRegistry().Find(name);
  if (!factory.ok()) return factory.status();
  if (options.sink_tokens < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("sink_tokens must be >= 0, got ", options.sink_tokens));
  }
  if (options.slack_tokens < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("slack_tokens must be >= 0, got ", options.slack_tokens));
  }
  if (options.recent_window < -1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "recent_window must be >= 0 (or -1: half the budget), got ", options.recent_window));
  }
  return (*factory)(options);
}

std::vector<std::string> TokenEvictionPolicyNames() { return GetRegistry().Names(); }

absl::Status RegisterTokenEvictionPolicy(absl::string_view name,
                                         TokenEvictionPolicyFactory factory) {
  return GetRegistry().Register(name, std::move(factory));
}

}  // namespace kvserve::engine
