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
// format (which needs the pool's per-head basis) is CPU-only: a key basis is refused, and a block
// of any format not listed here traps the kernel (a loud launch failure, never a skipped block).
#ifndef KVSERVE_KERNELS_CUDA_PAGED_ATTENTION_H_
#define KVSERVE_KERNELS_CUDA_PAGED_ATTENTION_H_

#include <cstdint>

#include "kernels/attention_batch.h"
#include "kernels/cuda/runtime.h"
#include "kernels/kv_format.h"

namespace kvserve::kernels::cuda {

// KV blocks per partition of the split-K decode.
inline constexpr int kAttentionPartitionBlocks = 64;
// Largest head_dim the attention kernels support.
inline constexpr int kAttentionMaxHeadDim = 256;

// The batch and write contract shared with the CPU kernels (kernels/attention_batch.h), with
// device pointers. The launch fields are required here: max_kv_len (a host value >= every
// token_kv_len[t]) and the workspace (PagedAttentionWorkspaceBytes bytes of device memory).
// Scores (seq_scores, seq_score_head_stride) mean what they mean on the CPU; seq_scores and
// seq_score_head_stride are device arrays, and every seq_scores[s] a device pointer or null.
using kernels::AttentionBatch;
using kernels::KvWrite;

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
inline void WriteKv(const KvWrite& w, const PagedKvLayerView& cache, Stream stream) {
  WriteKv(w.k, w.v, w.num_tokens, w.slot_block, w.slot_offset, cache, stream);
}

}  // namespace kvserve::kernels::cuda

#endif  // KVSERVE_KERNELS_CUDA_PAGED_ATTENTION_H_
