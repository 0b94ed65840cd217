// Offline generation of a set of requests together: a plain loop over the serving Scheduler
// (continuous batching, chunked prefill, preemption when the KV budget runs out), without the
// engine thread. Used by `kvserve generate`, the benchmarks and the tests.
//
// Thread-safety: none; one Run at a time.
#ifndef KVSERVE_ENGINE_RUNTIME_BATCH_GENERATOR_H_
#define KVSERVE_ENGINE_RUNTIME_BATCH_GENERATOR_H_

#include <cstdint>
#include <functional>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "engine/kv/block_pool.h"
#include "engine/kv/kv_cache_policy.h"
#include "engine/kv/prefix_index.h"
#include "engine/model/llama_model.h"
#include "engine/serving/request.h"
#include "engine/tokenizer/tokenizer.h"

namespace kvserve::engine {

// Offline requests are engine requests (prompt, sampling, max_tokens, stop strings, ...).
using GenerationRequest = EngineRequest;

struct GenerationResult {
  std::vector<int32_t> tokens;  // generated tokens, the stop token excluded
  std::string text;             // their text (stop strings removed)
  // With the request's logprobs >= 0: one entry per token of `tokens`, in the same order.
  std::vector<TokenLogprob> logprobs;
  FinishReason finish_reason = FinishReason::kNone;
  int64_t peak_kv_blocks = 0;
  int32_t preemptions = 0;
};

class BatchGenerator {
 public:
  struct Options {
    int64_t max_batch_tokens = 512;  // tokens per forward step (prefill chunks + decodes)
  };
  // Called for every generated token as it is produced.
  using TokenCallback = std::function<void(int sequence, int32_t token)>;

  // prefix_index (may be null) persists across Runs: later requests reuse earlier prompts.
  BatchGenerator(LlamaModel* model, BlockPool* pool, const KvCachePolicy* kv_policy,
                 const Tokenizer* tokenizer, Options options, PrefixIndex* prefix_index = nullptr,
                 std::string model_identity = "");

  // Generates every request to completion, all admitted together. InvalidArgument for a bad
  // request (empty prompt, prompt not shorter than the model's context, token outside the
  // vocabulary, max_tokens < 1, logprobs outside [-1, kMaxTopLogprobs], bad sampling
  // parameter); ResourceExhausted when one sequence alone does not fit the KV budget. All KV
  // blocks are released on return.
  absl::StatusOr<std::vector<GenerationResult>> Run(const std::vector<GenerationRequest>& requests,
                                                    const TokenCallback& on_token = nullptr);

  // Forward steps and preemptions of the last Run.
  int64_t steps() const { return steps_; }
  int64_t preemptions() const { return preemptions_; }
  // Prompt tokens served from the prefix cache in the last Run.
  int64_t cached_prompt_tokens() const { return cached_prompt_tokens_; }
  // Wall time of the last Run's steps, and the part of it spent demoting blocks to their
  // long-term format (quantize-on-write).
  absl::Duration step_time() const { return step_time_; }
  absl::Duration demotion_time() const { return demotion_time_; }

 private:
  LlamaModel* model_;
  BlockPool* pool_;
  const KvCachePolicy* kv_policy_;
  const Tokenizer* tokenizer_;
  Options options_;
  PrefixIndex* prefix_index_;
  std::string model_identity_;
  int64_t steps_ = 0;
  int64_t preemptions_ = 0;
  int64_t cached_prompt_tokens_ = 0;
  absl::Duration step_time_;
  absl::Duration demotion_time_;
};

}  // namespace kvserve::engine

#endif  // KVSERVE_ENGINE_RUNTIME_BATCH_GENERATOR_H_
