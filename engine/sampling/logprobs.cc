#include "engine/sampling/logprobs.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

#include "engine/common/status_macros.h"

namespace kvserve::engine {

void ComputeLogprobs(absl::Span<const float> logits, int32_t token, int32_t top_n,
                     TokenLogprob* out) {
  const size_t vocab = logits.size();
  KVSERVE_CHECK(token >= 0 && static_cast<size_t>(token) < vocab);
  KVSERVE_CHECK(top_n >= 0);
  float max_logit = -std::numeric_limits<float>::infinity();
  for (float l : logits) max_logit = std::max(max_logit, l);
  double sum = 0.0;
  for (float l : logits) sum += std::exp(static_cast<double>(l) - max_logit);
  const double log_norm = static_cast<double>(max_logit) + std::log(sum);
  auto logprob = [&](size_t i) { return static_cast<float>(logits[i] - log_norm); };

  out->token_id = token;
  out->logprob = logprob(static_cast<size_t>(token));
  out->top.clear();
  const size_t n = std::min<size_t>(static_cast<size_t>(top_n), vocab);
  if (n == 0) return;
  // The n largest logits, largest first; ids ascend, so an equal logit stays behind the lower id.
  std::vector<std::pair<float, int32_t>> best;
  best.reserve(n + 1);
  for (size_t i = 0; i < vocab; ++i) {
    const float l = logits[i];
    if (best.size() == n && !(l > best.back().first)) continue;
    auto at =
        std::upper_bound(best.begin(), best.end(), l,
                         [](float v, const std::pair<float, int32_t>& e) { return v > e.first; });
    best.insert(at, {l, static_cast<int32_t>(i)});
    if (best.size() > n) best.pop_back();
  }
  out->top.reserve(best.size());
  for (const auto& [l, id] : best) out->top.push_back({id, logprob(static_cast<size_t>(id))});
}

}  // namespace kvserve::engine
