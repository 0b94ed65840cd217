#include "engine/kv/token_eviction/token_eviction_settings.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace kvserve::engine {

absl::StatusOr<std::unique_ptr<TokenEvictionSettings>> TokenEvictionSettings::Create(
    const TokenEvictionConfig& config, int32_t context_length) {
  std::unique_ptr<TokenEvictionSettings> s(new TokenEvictionSettings);
  s->config_ = config;
  for (const std::string& name : TokenEvictionPolicyNames()) {
    absl::StatusOr<std::unique_ptr<TokenEvictionPolicy>> p =
        CreateTokenEvictionPolicy(name, config.options);
    if (!p.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("token_eviction: ", p.status().message()));
    }
    s->policies_.emplace(name, *std::move(p));
  }
  if (s->policies_.find(config.policy) == s->policies_.end()) {
    return absl::InvalidArgumentError(
        absl::StrCat("token_eviction.policy: unknown policy '", config.policy,
                     "'; known: ", absl::StrJoin(TokenEvictionPolicyNames(), ", ")));
  }
  if (config.min_budget_tokens < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "token_eviction.min_budget_tokens must be >= 1, got ", config.min_budget_tokens));
  }
  if (config.max_budget_tokens < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "token_eviction.max_budget_tokens must be >= 0 (0: the model's context length), got ",
        config.max_budget_tokens));
  }
  s->max_budget_ = config.max_budget_tokens > 0 ? config.max_budget_tokens : context_length;
  if (config.min_budget_tokens > s->max_budget_) {
    return absl::InvalidArgumentError(
        absl::StrCat("token_eviction.min_budget_tokens (", config.min_budget_tokens,
                     ") exceeds token_eviction.max_budget_tokens (", s->max_budget_, ")"));
  }
  if (config.budget_tokens < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("token_eviction.budget_tokens must be >= 0, got ", config.budget_tokens));
  }
  const TokenEvictionPolicy& def = *s->policies_.at(config.policy);
  if (config.policy != "none" || config.budget_tokens > 0) {
    if (absl::Status st = s->CheckBudget(def, config.budget_tokens, "token_eviction.budget_tokens");
        !st.ok()) {
      return st;
    }
  }
  return s;
}

absl::Status TokenEvictionSettings::CheckBudget(const TokenEvictionPolicy& policy, int32_t budget,
                                                absl::string_view field) const {
  if (budget < config_.min_budget_tokens || budget > max_budget_) {
    return absl::InvalidArgumentError(absl::StrCat(field, " ", budget, " is outside [",
                                                   config_.min_budget_tokens, ", ", max_budget_,
                                                   "] (token_eviction.min_budget_tokens, "
                                                   "token_eviction.max_budget_tokens)"));
  }
  const TokenEvictionOptions& o = policy.options();
  const int32_t fixed = o.slack_tokens + o.sink_tokens + 1;
  if (policy.name() != "none" && budget <= fixed) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, " ", budget, " leaves no room for new tokens with policy ",
                     policy.name(), ": it must exceed sink_tokens + slack_tokens + 1 = ", fixed));
  }
  return absl::OkStatus();
}

absl::StatusOr<ResolvedTokenEviction> TokenEvictionSettings::Resolve(absl::string_view policy,
                                                                     int32_t budget_tokens) const {
  const std::string name = policy.empty() ? config_.policy : std::string(policy);
  auto it = policies_.find(name);
  if (it == policies_.end()) {
    return absl::InvalidArgumentError(
        absl::StrCat("token_eviction.policy: unknown policy '", name,
                     "'; known: ", absl::StrJoin(TokenEvictionPolicyNames(), ", ")));
  }
  if (budget_tokens < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("token_eviction.budget_tokens must be >= 0, got ", budget_tokens));
  }
  ResolvedTokenEviction r;
  r.policy = it->second.get();
  if (name == "none") {
    if (budget_tokens > 0) {
      return absl::InvalidArgumentError(
          "token_eviction.budget_tokens is set but the policy is none");
    }
    return r;
  }
  r.budget_tokens = budget_tokens > 0 ? budget_tokens : config_.budget_tokens;
  if (r.budget_tokens == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("token_eviction.budget_tokens is required with policy ", name,
                     " (the server has no default budget: token_eviction.budget_tokens is 0)"));
  }
  if (absl::Status st = CheckBudget(*r.policy, r.budget_tokens, "token_eviction.budget_tokens");
      !st.ok()) {
    return st;
  }
  return r;
}

}  // namespace kvserve::engine
