// Paged attention and KV writes on the GPU: the twins of kernels/cpu/paged_attention.h, reading
// every block in its own format (dequantization in registers, never a gathered copy).
//
// Every pointer here, including those inside PagedKvLayerView and the block tables, is a DEVICE
// pointer (arrays of pointers live in device memory too). Work is enqueued on `stream` and is
// asynchronous; errors of the launch abort (a broken precondition), like the CPU kernels' CHECKs.
//
// Long contexts are split across thread blocks (flash-decoding): each token's KV slots are cut
// into partitions of kAttentionPartitionBlocks blocks, each partition reduces to a partial
// (max, sum, output) in the workspace and a second kernel combines the partitions. Prefill is the
// same computation (token_kv_len expresses causality, as on the CPU).
//
// Formats: fp32, fp16, bf16, fp8, int8, int4, nvfp4 and int2. The experimental lowrank key
// format (which needs the pool's per-head basis) is CPU-only; a device pool must not hold it.
#ifndef KVSERVE_KERNELS_CUDA_PAGED_ATTENTION_H_
#define KVSERVE_KERNELS_CUDA_PAGED_ATTENTION_H_

#include <cstdint>

#include "kernels/cuda/runtime.h"
#include "kernels/kv_format.h"

namespace kvserve::kernels::cuda {

// KV blocks per partition of the split-K decode.
inline constexpr int kAttentionPartitionBlocks = 64;
// Largest head_dim the attention kernels support.
inline constexpr int kAttentionMaxHeadDim = 256;

// The CUDA form of cpu::AttentionBatch (same fields and meaning; device pointers), plus what the
// launch needs from the host: the largest token_kv_len of the batch and the workspace.
struct AttentionBatch {
  int64_t num_tokens = 0;
  int num_heads = 0;                      // query heads
  const float* q = nullptr;               // [num_tokens, num_heads, head_dim]
  float* out = nullptr;                   // [num_tokens, num_heads, head_dim]
  const int32_t* token_seq = nullptr;     // [num_tokens]
  const int32_t* token_kv_len = nullptr;  // [num_tokens], >= 1
  const int32_t* const* seq_block_tables = nullptr;  // [num_seqs] -> [blocks of that sequence]
  float scale = 1.0f;
  int max_kv_len = 0;           // host value: >= every token_kv_len[t]
  void* workspace = nullptr;    // PagedAttentionWorkspaceBytes(...) bytes of device memory
  int64_t workspace_bytes = 0;  // size of `workspace`
  // Attention scores for token eviction (h2o): when set, every token t adds, for each slot s it
  // attends to, the softmax probability of s summed over its query heads to
  // slot_scores[token_seq[t] * score_stride + s]. Accumulates (the caller zeroes or decays).
  float* slot_scores = nullptr;  // [num_seqs][score_stride]
  int64_t score_stride = 0;      // >= the slots of every sequence
};

// Device bytes of workspace PagedAttention needs for this batch shape (0 when no token is split
// and no scores are asked for).
int64_t PagedAttentionWorkspaceBytes(int64_t num_tokens, int num_heads, int head_dim,
                                     int block_size, int max_kv_len, bool with_scores = false);

// out = softmax(q K^T * scale) V for every token and head of the batch.
// REQUIRES: head_dim in [1, kAttentionMaxHeadDim], num_heads a multiple of num_kv_heads,
// workspace_bytes >= PagedAttentionWorkspaceBytes(...).
void PagedAttention(const AttentionBatch& batch, const PagedKvLayerView& cache, Stream stream);

// Writes K and V of num_tokens tokens into their slots (token t: physical block slot_block[t],
// in-block offset slot_offset[t]), converting to the block's format. Blocks must be in a
// KvFormatTokenWritable format (fp32, fp16, bf16): quantized blocks are encoded whole by
// QuantizeKvRegions (kv_quantize.h); rows of other formats are left untouched.
void WriteKv(const float* k, const float* v,  // [num_tokens, num_kv_heads, head_dim] each
             int64_t num_tokens, const int32_t* slot_block, const int32_t* slot_offset,
             const PagedKvLayerView& cache, Stream stream);

}  // namespace kvserve::kernels::cuda

#endif  // KVSERVE_KERNELS_CUDA_PAGED_ATTENTION_H_
