// Log-probabilities of generated tokens, as OpenAI's `logprobs` returns them: the chosen token's
// log-probability and the N most probable tokens of the same step.
//
// The distribution is the model's own: log_softmax of the raw logits, before the repetition,
// presence and frequency penalties, the temperature and the top-k / top-p / min-p filters (as
// vLLM's default "raw_logprobs"). So the numbers do not depend on the sampling parameters, and a
// sampled token that a penalty favoured may show a low log-probability. The normaliser is
// accumulated in float64 after subtracting the largest logit.
//
// Thread-safety: plain functions and values.
#ifndef KVSERVE_ENGINE_SAMPLING_LOGPROBS_H_
#define KVSERVE_ENGINE_SAMPLING_LOGPROBS_H_

#include <cstdint>
#include <vector>

#include "absl/types/span.h"

namespace kvserve::engine {

// The most alternatives a request may ask for (OpenAI's top_logprobs bound).
inline constexpr int32_t kMaxTopLogprobs = 20;

// One alternative token of a step.
struct TopLogprob {
  int32_t token_id = 0;
  float logprob = 0.0f;  // natural log, <= 0
};

// One generated token's log-probability and the step's most probable tokens.
struct TokenLogprob {
  int32_t token_id = 0;  // the generated token
  float logprob = 0.0f;  // its natural log-probability, <= 0
  // The `top_n` most probable tokens of the step, most probable first (lower id first on equal
  // logits); the generated token is among them only when it is one of the most probable.
  std::vector<TopLogprob> top;
};

// Fills *out for `token` under log_softmax(logits) [vocab], with the `top_n` most probable tokens
// (fewer when the vocabulary is smaller). REQUIRES: 0 <= token < logits.size(), top_n >= 0.
void ComputeLogprobs(absl::Span<const float> logits, int32_t token, int32_t top_n,
                     TokenLogprob* out);

}  // namespace kvserve::engine

#endif  // KVSERVE_ENGINE_SAMPLING_LOGPROBS_H_
