// Offline generation of a set of sequences together, with iteration-level batching: every step
// runs one forward pass over the next prompt chunk of sequences still in prefill and the last
// token of sequences in decode, under a per-step token budget (chunked prefill).
//
// This is the engine's plain generation loop, used by `kvserve generate`, the perplexity and
// benchmark tools and the tests. The server's scheduler adds queues, priorities and preemption on
// top of the same pieces (SequenceKv, LlamaModel, Sampler).
//
// Thread-safety: none; one Run at a time.
#ifndef KVSERVE_ENGINE_GENERATION_BATCH_GENERATOR_H_
#define KVSERVE_ENGINE_GENERATION_BATCH_GENERATOR_H_

#include <cstdint>
#include <functional>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/kv/block_pool.h"
#include "engine/model/llama_model.h"
#include "engine/sampling/sampler.h"

namespace kvserve::engine {

enum class FinishReason { kNone, kLength, kEos, kStop, kCancelled };
std::string_view FinishReasonName(FinishReason r);

struct GenerationRequest {
  std::vector<int32_t> prompt;  // token ids, BOS included when wanted; not empty
  SamplingParams sampling;
  int32_t max_tokens = 256;     // generated tokens at most
  bool stop_at_bos = true;      // llama2.c models end a story with BOS
  bool ignore_eos = false;      // generate exactly max_tokens (benchmarks)
};

struct GenerationResult {
  std::vector<int32_t> tokens;  // generated tokens, the stop token excluded
  FinishReason finish_reason = FinishReason::kNone;
  int64_t peak_kv_blocks = 0;
};

class BatchGenerator {
 public:
  struct Options {
    int64_t max_batch_tokens = 512;  // tokens per forward step (prefill chunks + decodes)
  };
  // Called for every generated token (stop tokens excluded) as it is produced.
  using TokenCallback = std::function<void(int sequence, int32_t token)>;

  BatchGenerator(LlamaModel* model, BlockPool* pool, LayoutId layout, Options options);

  // Generates every request to completion. InvalidArgument for a bad request (empty prompt,
  // prompt longer than the model's context, token outside the vocabulary); ResourceExhausted when
  // the KV budget cannot hold the sequences together. All KV blocks are released on return.
  absl::StatusOr<std::vector<GenerationResult>> Run(const std::vector<GenerationRequest>& requests,
                                                    const TokenCallback& on_token = nullptr);

  // Forward steps and tokens processed by the last Run.
  int64_t steps() const { return steps_; }

 private:
  LlamaModel* model_;
  BlockPool* pool_;
  LayoutId layout_;
  Options options_;
  int64_t steps_ = 0;
};

}  // namespace kvserve::engine

#endif  // KVSERVE_ENGINE_GENERATION_BATCH_GENERATOR_H_
