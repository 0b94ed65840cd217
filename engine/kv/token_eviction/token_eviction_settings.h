// The server-wide token eviction settings (YAML `token_eviction.*`) and the per-request
// override checked against them.
//
// A request may name a policy and a budget; an empty policy means the configured default, a
// budget of 0 the configured default budget. A budget must lie in [min_budget_tokens,
// max_budget_tokens] and leave room for the policy's fixed part (sinks + slack + 1 token), so a
// client cannot ask for a cache too small to be useful or larger than the operator allows.
//
// Thread-safety: immutable after Create; Resolve may be called from any thread.
#ifndef KVSERVE_ENGINE_KV_TOKEN_EVICTION_TOKEN_EVICTION_SETTINGS_H_
#define KVSERVE_ENGINE_KV_TOKEN_EVICTION_TOKEN_EVICTION_SETTINGS_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "engine/kv/token_eviction/token_eviction_policy.h"

namespace kvserve::engine {

struct TokenEvictionConfig {
  std::string policy = "none";     // default policy (none, sliding_window, h2o, attention)
  int32_t budget_tokens = 0;       // default budget; required (> 0) when policy is not none
  int32_t min_budget_tokens = 16;  // smallest budget a request may ask for
  int32_t max_budget_tokens = 0;   // largest; 0 = the model's context length
  TokenEvictionOptions options;    // sink_tokens, recent_window, slack_tokens
};

// What a request's sequence runs with.
struct ResolvedTokenEviction {
  const TokenEvictionPolicy* policy = nullptr;  // never null
  int32_t budget_tokens = 0;                    // 0 for `none`
};

class TokenEvictionSettings {
 public:
  // Builds every registered policy with config.options. InvalidArgument naming the key
  // (`token_eviction.<key>`) for an unknown policy, negative option, a default budget missing
  // or outside the limits, min > max.
  static absl::StatusOr<std::unique_ptr<TokenEvictionSettings>> Create(
      const TokenEvictionConfig& config, int32_t context_length);

  // A request's override (policy "" and budget 0 = the defaults). InvalidArgument naming the
  // request field (`token_eviction.policy`, `token_eviction.budget_tokens`) and the limit.
  absl::StatusOr<ResolvedTokenEviction> Resolve(absl::string_view policy,
                                                int32_t budget_tokens) const;

  const TokenEvictionConfig& config() const { return config_; }
  int32_t max_budget_tokens() const { return max_budget_; }

 private:
  TokenEvictionSettings() = default;
  // OK when `budget` is usable by `policy`; the message names `field`.
  absl::Status CheckBudget(const TokenEvictionPolicy& policy, int32_t budget,
                           absl::string_view field) const;

  TokenEvictionConfig config_;
  int32_t max_budget_ = 0;
  std::map<std::string, std::unique_ptr<TokenEvictionPolicy>, std::less<>> policies_;
};

}  // namespace kvserve::engine

#endif  // KVSERVE_ENGINE_KV_TOKEN_EVICTION_TOKEN_EVICTION_SETTINGS_H_
