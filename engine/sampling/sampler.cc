#include "engine/sampling/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/str_format.h"
#include "kernels/cpu/ops.h"

namespace kvserve::engine {

absl::Status SamplingParams::Validate() const {
  if (!(temperature >= 0.0f) || !std::isfinite(temperature)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("temperature must be a finite number >= 0, got %g", temperature));
  }
  if (top_k < 0) {
    return absl::InvalidArgumentError(absl::StrFormat("top_k must be >= 0, got %d", top_k));
  }
  if (!(top_p > 0.0f && top_p <= 1.0f)) {
    return absl::InvalidArgumentError(absl::StrFormat("top_p must be in (0, 1], got %g", top_p));
  }
  if (!(min_p >= 0.0f && min_p < 1.0f)) {
    return absl::InvalidArgumentError(absl::StrFormat("min_p must be in [0, 1), got %g", min_p));
  }
  if (!(repetition_penalty > 0.0f) || !std::isfinite(repetition_penalty)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "repetition_penalty must be a finite number > 0, got %g", repetition_penalty));
  }
  if (!(presence_penalty >= -2.0f && presence_penalty <= 2.0f)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("presence_penalty must be in [-2, 2], got %g", presence_penalty));
  }
  if (!(frequency_penalty >= -2.0f && frequency_penalty <= 2.0f)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("frequency_penalty must be in [-2, 2], got %g", frequency_penalty));
  }
  return absl::OkStatus();
}

namespace {
uint64_t SplitMix64(uint64_t& x) {
  uint64_t z = (x += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
uint64_t Rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
}  // namespace

Rng::Rng(uint64_t seed) {
  for (auto& s : s_) s = SplitMix64(seed);
}

uint64_t Rng::Next() {
  const uint64_t result = Rotl(s_[1] * 5, 7) * 9;
  const uint64_t t = s_[1] << 17;
  s_[2] ^= s_[0];
  s_[3] ^= s_[1];
  s_[1] ^= s_[2];
  s_[0] ^= s_[3];
  s_[2] ^= t;
  s_[3] = Rotl(s_[3], 45);
  return result;
}

double Rng::Uniform() { return static_cast<double>(Next() >> 11) * 0x1.0p-53; }

Sampler::Sampler(const SamplingParams& params) : params_(params), rng_(params.seed) {}

void Sampler::ApplyPenalties(absl::Span<float> logits, absl::Span<const int32_t> history,
                             size_t num_prompt_tokens) {
  const int32_t vocab = static_cast<int32_t>(logits.size());
  if (params_.repetition_penalty != 1.0f && !history.empty()) {
    seen_.assign(vocab, 0);
    for (int32_t t : history) {
      if (t >= 0 && t < vocab) seen_[t] = 1;
    }
    const float p = params_.repetition_penalty;
    for (int32_t i = 0; i < vocab; ++i) {
      if (seen_[i]) logits[i] = logits[i] > 0 ? logits[i] / p : logits[i] * p;
    }
  }
  if (params_.presence_penalty == 0.0f && params_.frequency_penalty == 0.0f) return;
  const absl::Span<const int32_t> generated =
      history.subspan(std::min(num_prompt_tokens, history.size()));
  if (generated.empty()) return;
  // Count, then penalise each distinct token once and zero its count again: the work is the
  // number of generated tokens, not the vocabulary.
  counts_.resize(vocab, 0);
  for (int32_t t : generated) {
    if (t >= 0 && t < vocab) ++counts_[t];
  }
  for (int32_t t : generated) {
    if (t < 0 || t >= vocab || counts_[t] == 0) continue;
    logits[t] -=
        params_.frequency_penalty * static_cast<float>(counts_[t]) + params_.presence_penalty;
    counts_[t] = 0;
  }
}

int32_t Sampler::Sample(absl::Span<float> logits, absl::Span<const int32_t> history,
                        size_t num_prompt_tokens) {
  const int32_t vocab = static_cast<int32_t>(logits.size());
  ApplyPenalties(logits, history, num_prompt_tokens);
  if (params_.temperature == 0.0f) {
    return vocab > 0 ? static_cast<int32_t>(kernels::cpu::ArgMax(logits.data(), vocab)) : 0;
  }
  // Softmax with temperature over all tokens, then filters on the sorted candidates.
  const float inv_t = 1.0f / params_.temperature;
  float max_logit = -std::numeric_limits<float>::infinity();
  for (float l : logits) max_logit = std::max(max_logit, l);
  candidates_.resize(vocab);
  for (int32_t i = 0; i < vocab; ++i) {
    candidates_[i] = {std::exp((logits[i] - max_logit) * inv_t), i};
  }
  // Sort by probability, highest first; ties by lower id for determinism.
  auto by_prob = [](const std::pair<float, int32_t>& a, const std::pair<float, int32_t>& b) {
    return a.first != b.first ? a.first > b.first : a.second < b.second;
  };
  size_t keep = candidates_.size();
  if (params_.top_k > 0 && static_cast<size_t>(params_.top_k) < keep) {
    keep = params_.top_k;
    std::partial_sort(candidates_.begin(), candidates_.begin() + keep, candidates_.end(), by_prob);
  } else {
    std::sort(candidates_.begin(), candidates_.end(), by_prob);
  }
  if (params_.top_p < 1.0f) {
    double kept_sum = 0.0;
    for (size_t i = 0; i < keep; ++i) kept_sum += candidates_[i].first;
    double cum = 0.0;
    for (size_t i = 0; i < keep; ++i) {
      cum += candidates_[i].first;
      if (cum >= params_.top_p * kept_sum) {
        keep = i + 1;
        break;
      }
    }
  }
  if (params_.min_p > 0.0f) {
    const float threshold = candidates_[0].first * params_.min_p;
    size_t i = 1;
    while (i < keep && candidates_[i].first >= threshold) ++i;
    keep = i;
  }
  double total = 0.0;
  for (size_t i = 0; i < keep; ++i) total += candidates_[i].first;
  const double r = rng_.Uniform() * total;
  double cum = 0.0;
  for (size_t i = 0; i < keep; ++i) {
    cum += candidates_[i].first;
    if (r < cum) return candidates_[i].second;
  }
  return candidates_[keep - 1].second;
}

}  // namespace kvserve::engine
