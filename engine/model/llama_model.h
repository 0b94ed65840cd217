// The Llama-family forward pass on the CPU over the paged KV cache.
//
// Forward() runs one step for a ForwardBatch: embeds the tokens, and for every layer computes
// RMSNorm -> Q/K/V projections -> RoPE -> K/V written into their paged slots (in each block's
// format) -> paged attention (GQA, causal by kv slot) -> output projection + residual ->
// RMSNorm -> SwiGLU feed-forward + residual; then the final norm and the classifier for the rows
// in logits_rows only.
//
// Thread-safety: one Forward at a time per LlamaModel (it owns scratch buffers). The LoadedModel
// must outlive it. The pool is only read through layer views; the caller allocated the blocks.
#ifndef KVSERVE_ENGINE_MODEL_LLAMA_MODEL_H_
#define KVSERVE_ENGINE_MODEL_LLAMA_MODEL_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "engine/kv/block_pool.h"
#include "engine/model/forward_batch.h"
#include "engine/model/model.h"
#include "kernels/cpu/thread_pool.h"

namespace kvserve::engine {

class LlamaModel {
 public:
  // `pool` may be null (single-threaded).
  LlamaModel(const LoadedModel& model, kernels::ThreadPool* pool);

  const ModelConfig& config() const { return model_.config(); }
  const LoadedModel& loaded() const { return model_; }
  int32_t bos_id() const { return model_.vocab().bos_id; }
  int32_t eos_id() const { return model_.vocab().eos_id; }

  // Geometry of the KV cache this model needs, for a given block size.
  KvGeometry KvGeometryFor(int block_size) const;

  // logits: [batch.logits_rows.size(), vocab_size], written row by row.
  // InvalidArgument for an out-of-range token id or an inconsistent batch.
  absl::Status Forward(const ForwardBatch& batch, const BlockPool& kv, float* logits);

 private:
  void EnsureScratch(int64_t n);

  const LoadedModel& model_;
  kernels::ThreadPool* pool_;
  int64_t capacity_ = 0;
  // Scratch, [capacity_, width] each.
  std::vector<float> x_, xb_, q_, k_, v_, att_, gate_, up_;
  std::vector<int32_t> slot_block_, slot_offset_, kv_len_;
  std::vector<float*> layer_scores_;  // per sequence: where this layer adds its scores
};

}  // namespace kvserve::engine

#endif  // KVSERVE_ENGINE_MODEL_LLAMA_MODEL_H_
