#include "engine/serving/model_runner.h"

namespace kvserve::engine {

StepOutput LlamaModelRunner::Execute(const ScheduledBatch& batch) {
  StepOutput out;
  forward_.Clear();
  int64_t rows = 0;
  for (const ScheduledChunk& c : batch.chunks) {
    const int32_t seq_index = static_cast<int32_t>(forward_.block_tables.size());
    forward_.block_tables.push_back(c.block_table);
    forward_.seq_scores.push_back(c.scores);
    forward_.seq_score_layer_stride.push_back(c.score_layer_stride);
    forward_.seq_score_head_stride.push_back(c.score_head_stride);
    for (int64_t j = 0; j < c.count; ++j) {
      const int64_t pos = c.start + j;
      const bool last = j + 1 == c.count && c.sampler != nullptr;
      forward_.Add(c.tokens[pos], static_cast<int32_t>(pos), seq_index,
                   static_cast<int32_t>(pos - c.slot_offset), last);
    }
    if (c.sampler != nullptr) ++rows;
  }
  const int32_t vocab = model_->config().vocab_size;
  logits_.resize(static_cast<size_t>(rows) * vocab);
  const absl::Time start = absl::Now();
  out.status = model_->Forward(forward_, *pool_, logits_.data());
  out.forward_time = absl::Now() - start;
  if (!out.status.ok()) return out;
  int64_t r = 0;
  for (const ScheduledChunk& c : batch.chunks) {
    if (c.sampler == nullptr) continue;
    const absl::Span<float> row = absl::MakeSpan(logits_.data() + r * vocab, vocab);
    // Sampling modifies the row (penalties): log-probabilities are taken from a copy of it.
    if (c.logprobs >= 0) raw_.assign(row.begin(), row.end());
    const int32_t token =
        c.sampler->Sample(row, c.tokens, static_cast<size_t>(c.num_prompt_tokens));
    out.sampled.push_back(token);
    if (c.logprobs >= 0) {
      out.logprobs.resize(rows);
      ComputeLogprobs(raw_, token, c.logprobs, &out.logprobs[r]);
    }
    ++r;
  }
  return out;
}

}  // namespace kvserve::engine
