#include "engine/kv/token_eviction/heavy_hitter_policy.h"

#include <algorithm>

namespace kvserve::engine {
namespace {

// Appends the `count` slots of [0, end) with the highest scores; equal scores prefer the later
// slot. A strict total order, so the result does not depend on the selection algorithm.
void AppendTopByScore(absl::Span<const float> scores, int32_t end, int32_t count,
                      std::vector<int32_t>* keep) {
  if (count <= 0) return;
  std::vector<int32_t> candidates(end);
  for (int32_t s = 0; s < end; ++s) candidates[s] = s;
  auto better = [scores](int32_t a, int32_t b) {
    return scores[a] != scores[b] ? scores[a] > scores[b] : a > b;
  };
  if (count < end) {
    std::nth_element(candidates.begin(), candidates.begin() + (count - 1), candidates.end(),
                     better);
  }
  keep->insert(keep->end(), candidates.begin(), candidates.begin() + std::min(count, end));
}

}  // namespace

absl::Status H2oTokenPolicy::SelectKept(int32_t num_slots, absl::Span<const float> scores,
                                        int32_t target, std::vector<int32_t>* keep) const {
  const int32_t sinks = std::min(options().sink_tokens, target);
  const int32_t rest = target - sinks;
  const int32_t window = options().recent_window;
  const int32_t recent = window < 0 ? rest / 2 : std::min(window, rest);
  const int32_t older = num_slots - recent;
  for (int32_t s = 0; s < sinks; ++s) keep->push_back(s);
  // Heavy hitters among the slots between the sinks and the recent window.
  std::vector<int32_t> middle;
  AppendTopByScore(scores.subspan(sinks), older - sinks, rest - recent, &middle);
  for (int32_t s : middle) keep->push_back(sinks + s);
  for (int32_t s = older; s < num_slots; ++s) keep->push_back(s);
  return absl::OkStatus();
}

absl::Status AttentionScoreTokenPolicy::SelectKept(int32_t num_slots,
                                                   absl::Span<const float> scores, int32_t target,
                                                   std::vector<int32_t>* keep) const {
  AppendTopByScore(scores, num_slots, target, keep);
  return absl::OkStatus();
}

}  // namespace kvserve::engine
