// The model runner: executes a step the scheduler planned (a ScheduledBatch) on a model, and
// samples the next token of every sequence whose last token the step computes.
//
// The plan is plain data: the scheduler decides which tokens of which sequences run, and where
// their K/V go (block tables, slots); the runner turns it into the model's ForwardBatch, runs the
// forward pass (which writes K/V into the pool's blocks) and samples. Scheduler tests run plans
// through a fake runner, with no model.
//
// Thread-safety: none; the engine thread drives it.
#ifndef KVSERVE_ENGINE_SERVING_MODEL_RUNNER_H_
#define KVSERVE_ENGINE_SERVING_MODEL_RUNNER_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "engine/kv/block_pool.h"
#include "engine/model/forward_batch.h"
#include "engine/model/llama_model.h"
#include "engine/sampling/logprobs.h"
#include "engine/sampling/sampler.h"
#include "engine/serving/output_processor.h"

namespace kvserve::engine {

// One sequence's share of a step: tokens[start, start + count) of the sequence are computed.
struct ScheduledChunk {
  absl::Span<const int32_t> tokens;  // the sequence's tokens so far (prompt + generated)
  int64_t num_prompt_tokens = 0;     // tokens[0, num_prompt_tokens) are the prompt
  int64_t start = 0;
  int64_t count = 0;
  int64_t slot_offset = 0;               // token i's K/V go to slot i - slot_offset
  const BlockId* block_table = nullptr;  // covers every slot written in this step
  // Token eviction by attention: where the kernel adds this step's softmax weights (null:
  // none), with the strides of ForwardBatch::seq_score_layer_stride / seq_score_head_stride.
  float* scores = nullptr;
  int64_t score_layer_stride = 0;
  int64_t score_head_stride = 0;
  // Set when the chunk ends at the sequence's last token: the next token is sampled with it
  // (the sequence's tokens are its history).
  Sampler* sampler = nullptr;
  // With a sampler: the log-probabilities wanted for the sampled token (EngineRequest::logprobs:
  // -1 none, 0 its own, N also the top N).
  int32_t logprobs = -1;
  bool prefill = false;  // a prompt chunk (or a recomputation), not a single decode token
};

struct ScheduledBatch {
  std::vector<ScheduledChunk> chunks;  // decodes first, then prefill chunks
  int64_t num_tokens = 0;
  int64_t num_prefill_tokens = 0;  // tokens of the prefill chunks
  bool empty() const { return num_tokens == 0; }
  void Clear() {
    chunks.clear();
    num_tokens = 0;
    num_prefill_tokens = 0;
  }
};

// What executing a ScheduledBatch gave.
struct StepOutput {
  absl::Status status;  // not OK: the step failed (nothing sampled)
  // One token per chunk with a sampler, in chunk order.
  std::vector<int32_t> sampled;
  // Empty when no chunk of the step asked for log-probabilities; else one entry per sampled
  // token, filled for the chunks that asked (logprobs >= 0) and empty for the others.
  std::vector<TokenLogprob> logprobs;
  absl::Duration forward_time;  // wall time of the forward pass
};

class ModelRunner {
 public:
  virtual ~ModelRunner() = default;
  virtual StepOutput Execute(const ScheduledBatch& batch) = 0;
};

// The EOS / BOS ids and context length of `model`.
inline EndRules EndRulesOf(const LlamaModel& model) {
  EndRules r;
  r.eos_id = model.eos_id();
  r.bos_id = model.bos_id();
  r.context_length = model.config().context_length;
  return r;
}

// Runs plans on a LlamaModel whose KV cache is `pool`'s blocks.
class LlamaModelRunner : public ModelRunner {
 public:
  // `model` and `pool` must outlive the runner.
  LlamaModelRunner(LlamaModel* model, BlockPool* pool) : model_(model), pool_(pool) {}
  StepOutput Execute(const ScheduledBatch& batch) override;

 private:
  LlamaModel* model_;
  BlockPool* pool_;
  ForwardBatch forward_;       // scratch reused across steps
  std::vector<float> logits_;  // [rows][vocab]
  std::vector<float> raw_;     // [vocab]: a row's logits before sampling, for log-probabilities
};

}  // namespace kvserve::engine

#endif  // KVSERVE_ENGINE_SERVING_MODEL_RUNNER_H_
