// Paged attention over the block pool, reading each block in its own format (no gather into a
// contiguous temporary). Grouped-query attention: query head h reads KV head h / (num_heads /
// num_kv_heads); KV heads are never copied.
#ifndef KVSERVE_KERNELS_CPU_PAGED_ATTENTION_H_
#define KVSERVE_KERNELS_CPU_PAGED_ATTENTION_H_

#include <cstdint>

#include "kernels/attention_batch.h"
#include "kernels/cpu/thread_pool.h"
#include "kernels/kv_format.h"

namespace kvserve::kernels::cpu {

// The batch and write contract shared with the CUDA kernels (kernels/attention_batch.h); the
// launch fields of AttentionBatch (max_kv_len, workspace) are ignored here.
using kernels::AttentionBatch;
using kernels::KvWrite;

// Writes K and V of num_tokens tokens into their slots: token t goes to physical block
// slot_block[t] at in-block offset slot_offset[t]. Converts to the block's format on the way
// (quantize-on-write).
// Blocks in a format that is not KvFormatTokenWritable are encoded whole: their block_size tokens
// must come as one run of consecutive batch tokens with offsets 0, 1, ..., block_size - 1 (a
// broken precondition otherwise). Returns false when such a block refused a value (not finite,
// or beyond the format's range; see QuantizeKvRegion): its bytes are then unspecified. Token-
// writable blocks never fail.
bool WriteKv(const float* k, const float* v,  // [num_tokens, num_kv_heads, head_dim] each
             int64_t num_tokens, const int32_t* slot_block, const int32_t* slot_offset,
             const PagedKvLayerView& cache);
inline bool WriteKv(const KvWrite& w, const PagedKvLayerView& cache) {
  return WriteKv(w.k, w.v, w.num_tokens, w.slot_block, w.slot_offset, cache);
}

// out = softmax(q K^T * scale) V for every token and head of the batch.
void PagedAttention(const AttentionBatch& batch, const PagedKvLayerView& cache, ThreadPool* pool);

}  // namespace kvserve::kernels::cpu

#endif  // KVSERVE_KERNELS_CPU_PAGED_ATTENTION_H_
