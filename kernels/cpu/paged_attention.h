// Paged attention over the block pool, reading each block in its own format (no gather into a
// contiguous temporary). Grouped-query attention: query head h reads KV head h / (num_heads /
// num_kv_heads); KV heads are never copied.
#ifndef KVSERVE_KERNELS_CPU_PAGED_ATTENTION_H_
#define KVSERVE_KERNELS_CPU_PAGED_ATTENTION_H_

#include <cstdint>

#include "kernels/cpu/thread_pool.h"
#include "kernels/kv_format.h"

namespace kvserve::kernels::cpu {

// A batch of query tokens from several sequences (mixed prefill and decode).
// Token t belongs to sequence token_seq[t] and attends to KV slots [0, token_kv_len[t]) of that
// sequence, where slot s lives in block seq_block_tables[seq][s / block_size] at offset
// s % block_size. Causality is expressed by token_kv_len alone (the engine sets it to the slot of
// the token itself + 1), which also lets token eviction drop slots without changing the kernel.
struct AttentionBatch {
  int64_t num_tokens = 0;
  int num_heads = 0;     // query heads
  const float* q = nullptr;               // [num_tokens, num_heads, head_dim]
  float* out = nullptr;                   // [num_tokens, num_heads, head_dim]
  const int32_t* token_seq = nullptr;     // [num_tokens]
  const int32_t* token_kv_len = nullptr;  // [num_tokens], >= 1
  const int32_t* const* seq_block_tables = nullptr;  // [num_seqs][blocks of that sequence]
  float scale = 1.0f;                     // usually 1 / sqrt(head_dim)
  // Optional accumulated attention (token eviction by heavy hitters). When non-null, for every
  // token t whose sequence s = token_seq[t] has seq_scores[s] != nullptr, the kernel adds the
  // softmax weight of slot j, summed over all query heads, to seq_scores[s][j] for each
  // j < token_kv_len[t]. Weights come from the same pass that computes `out` (the numerators
  // exp(s - m) it already has, rescaled once per span by the final max and sum): no second
  // pass over K. Adds are atomic, so tokens of one sequence may run on several threads.
  float* const* seq_scores = nullptr;  // [num_seqs][slots of that sequence], or null
  // Optional, with seq_scores: per sequence, 0 (the sum over all query heads goes to row 0, as
  // above) or a row stride in floats: then the weights of KV head g, summed over the query heads
  // of its group, go to seq_scores[s][g * stride + j] instead (per-head token eviction).
  const int64_t* seq_score_head_stride = nullptr;  // [num_seqs], or null (all 0)
};

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

// out = softmax(q K^T * scale) V for every token and head of the batch.
void PagedAttention(const AttentionBatch& batch, const PagedKvLayerView& cache, ThreadPool* pool);

}  // namespace kvserve::kernels::cpu

#endif  // KVSERVE_KERNELS_CPU_PAGED_ATTENTION_H_
