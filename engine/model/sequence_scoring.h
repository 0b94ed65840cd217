// Teacher-forced scoring and greedy continuation of one token sequence, straight on a model
// (no tokenizer, scheduler or prefix cache): what `kvserve score` and the model tests use to
// compare the forward pass with other engines' per-position scores.
#ifndef KVSERVE_ENGINE_MODEL_SEQUENCE_SCORING_H_
#define KVSERVE_ENGINE_MODEL_SEQUENCE_SCORING_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/model/model.h"
#include "kernels/cpu/thread_pool.h"

namespace kvserve::engine {

struct SequenceScores {
  // For i < ids.size() - 1: -log p(ids[i + 1] | ids[0..i]) (natural log), the argmax of the
  // logits after ids[i] (lowest id on ties) and its margin over the second-best logit.
  std::vector<double> nll;
  std::vector<int32_t> top1;
  std::vector<float> top1_margin;
  double mean_nll = 0.0;  // 0 when there is nothing to predict
};

// Scores `ids` (>= 1 token, within the model's context) in prefill chunks of `chunk_tokens`
// with an FP32 KV cache. `pool` may be null. InvalidArgument for an id outside the vocabulary
// or a sequence longer than the context.
absl::StatusOr<SequenceScores> ScoreSequence(const LoadedModel& model,
                                             absl::Span<const int32_t> ids,
                                             kernels::ThreadPool* pool, int chunk_tokens = 64);

struct GreedyResult {
  std::vector<int32_t> tokens;         // generated ids
  std::vector<float> top1_minus_top2;  // logit gap at each step
};

// Greedy (argmax, lowest id on ties) continuation of `prompt` by `steps` tokens.
absl::StatusOr<GreedyResult> GreedyContinue(const LoadedModel& model,
                                            absl::Span<const int32_t> prompt, int steps,
                                            kernels::ThreadPool* pool);

}  // namespace kvserve::engine

#endif  // KVSERVE_ENGINE_MODEL_SEQUENCE_SCORING_H_
