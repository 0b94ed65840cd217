// Token sampling from logits: greedy, temperature, top-k, top-p (nucleus), min-p, repetition,
// presence and frequency penalties, with a seeded generator so that the same seed and request
// give the same output.
//
// Order of operations (as vLLM applies them): the repetition penalty over the tokens seen so far,
// prompt included (a positive logit is divided by the penalty, a negative one multiplied); then
// the presence and frequency penalties over the generated tokens only (OpenAI's definition: a
// token generated n > 0 times loses frequency_penalty * n + presence_penalty from its logit);
// then temperature == 0 -> argmax (lowest id on ties); otherwise logits / temperature, softmax,
// top-k, top-p, min-p (relative to the most probable token), renormalise, draw. A penalty at its
// neutral value (1 for repetition, 0 for the others) is skipped, leaving the logits untouched.
//
// Thread-safety: a Sampler is per request; not thread-safe.
#ifndef KVSERVE_ENGINE_SAMPLING_SAMPLER_H_
#define KVSERVE_ENGINE_SAMPLING_SAMPLER_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
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
  // Subtracted once from the logit of every token already generated; in [-2, 2]; 0 = off.
  float presence_penalty = 0.0f;
  // Subtracted from a generated token's logit once per time it was generated; in [-2, 2];
  // 0 = off.
  float frequency_penalty = 0.0f;
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

  // Picks the next token from logits [vocab]. `history` is every token so far: its first
  // `num_prompt_tokens` are the prompt, the rest were generated. The repetition penalty counts
  // them all, the presence and frequency penalties only the generated ones. `logits` is used as
  // scratch and modified. REQUIRES: num_prompt_tokens <= history.size().
  int32_t Sample(absl::Span<float> logits, absl::Span<const int32_t> history,
                 size_t num_prompt_tokens);

  const SamplingParams& params() const { return params_; }

 private:
  // The repetition, presence and frequency penalties, each only when it is not neutral.
  void ApplyPenalties(absl::Span<float> logits, absl::Span<const int32_t> history,
                      size_t num_prompt_tokens);

  SamplingParams params_;
  Rng rng_;
  std::vector<std::pair<float, int32_t>> candidates_;
  std::vector<uint8_t> seen_;
  // Per-token counts of the generated tokens; all zero between calls.
  std::vector<int32_t> counts_;
};

}  // namespace kvserve::engine

#endif  // KVSERVE_ENGINE_SAMPLING_SAMPLER_H_
