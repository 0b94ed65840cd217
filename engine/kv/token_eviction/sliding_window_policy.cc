#include "engine/kv/token_eviction/sliding_window_policy.h"

#include "absl/strings/str_cat.h"

namespace kvserve::engine {

absl::Status SlidingWindowTokenPolicy::SelectKept(int32_t num_slots, absl::Span<const float> scores,
                                                  int32_t target,
                                                  std::vector<int32_t>* keep) const {
  const int32_t sinks = options().sink_tokens;
  if (target <= sinks) {
    return absl::InvalidArgumentError(absl::StrCat("sliding_window: the budget after slack (",
                                                   target, " tokens) must exceed sink_tokens (",
                                                   sinks, ")"));
  }
  for (int32_t s = 0; s < sinks; ++s) keep->push_back(s);
  for (int32_t s = num_slots - (target - sinks); s < num_slots; ++s) keep->push_back(s);
  return absl::OkStatus();
}

}  // namespace kvserve::engine
