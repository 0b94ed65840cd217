// Token sampling from logits: greedy, temperature, top-k, top-p (nucleus), min-p, repetition
// penalty, with a seeded generator so that the same seed and request give the same output.
//
// Order of operations (as llama.cpp applies them): repetition penalty over the tokens seen so far
// (a positive logit is divided by the penalty, a negative one multiplied), then temperature == 0
// -> argmax (lowest id on ties); otherwise logits / temperature, softmax, top-k, top-p, min-p
// (relative to the most probable token), renormalise, draw.
//
// Thread-safety: a Sampler is per request; not thread-safe.
#ifndef KVSERVE_ENGINE_SAMPLING_SAMPLER_H_
#define KVSERVE_ENGINE_SAMPLING_SAMPLER_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"

namespace kvserve::engine {

struct SamplingParams {
  float temperature = 0.0f;         // 0 = greedy
  int32_t top_k = 0;                // 0 = off
  float top_p = 1.0f;               // in (0, 1]; 1 = off
  float min_p = 0.0f;               // in [0, 1); 0 = off
  float repetition_penalty = 1.0f;  // > 0; 1 = off
  uint64_t seed = 0;

  // InvalidArgument naming the field (e.g. "temperature must be >= 0, got -1").
  absl::Status Validate() const;
};

// SplitMix64-seeded xoshiro256** : deterministic on every platform, unlike std distributions.
class Rng {
 public:
  explicit Rng(uint64_t seed);
  uint64_t Next();
  // Uniform in [0, 1) with 53 bits.
  double Uniform();

 private:
  uint64_t s_[4];
};

class Sampler {
 public:
  explicit Sampler(const SamplingParams& params);

  // Picks the next token from logits [vocab]. `history` is every token so far (prompt included),
  // used by the repetition penalty. `logits` is used as scratch and modified.
  int32_t Sample(absl::Span<float> logits, absl::Span<const int32_t> history);

  const SamplingParams& params() const { return params_; }

 private:
  SamplingParams params_;
  Rng rng_;
  std::vector<std::pair<float, int32_t>> candidates_;
  std::vector<uint8_t> seen_;
};

}  // namespace kvserve::engine

#endif  // KVSERVE_ENGINE_SAMPLING_SAMPLER_H_
