// The contract of paged attention and of KV writes, shared by every backend: the CPU kernels
// (kernels/cpu/paged_attention.h), the CUDA kernels (kernels/cuda/paged_attention.h) and the
// Backend interface (kernels/backend.h) take these structs, so a batch built once runs on any of
// them. Plain views only: pointers, shapes, strides and block tables; no engine type.
//
// Where the pointers live is the backend's business: host memory for the CPU, device memory for
// CUDA (arrays of pointers, such as seq_block_tables and seq_scores, live there too).
#ifndef KVSERVE_KERNELS_ATTENTION_BATCH_H_
#define KVSERVE_KERNELS_ATTENTION_BATCH_H_

#include <cstdint>

namespace kvserve::kernels {

// A batch of query tokens from several sequences (mixed prefill and decode).
// Token t belongs to sequence token_seq[t] and attends to KV slots [0, token_kv_len[t]) of that
// sequence, where slot s lives in block seq_block_tables[seq][s / block_size] at offset
// s % block_size. Causality is expressed by token_kv_len alone (the engine sets it to the slot of
// the token itself + 1), which also lets token eviction drop slots without changing the kernel.
struct AttentionBatch {
  int64_t num_tokens = 0;
  int num_heads = 0;                                 // query heads
  const float* q = nullptr;                          // [num_tokens, num_heads, head_dim]
  float* out = nullptr;                              // [num_tokens, num_heads, head_dim]
  const int32_t* token_seq = nullptr;                // [num_tokens]
  const int32_t* token_kv_len = nullptr;             // [num_tokens], >= 1
  const int32_t* const* seq_block_tables = nullptr;  // [num_seqs][blocks of that sequence]
  float scale = 1.0f;                                // usually 1 / sqrt(head_dim)
  // Optional accumulated attention (token eviction by heavy hitters). When non-null, for every
  // token t whose sequence s = token_seq[t] has seq_scores[s] != nullptr, the kernel adds the
  // softmax weight of slot j, summed over all query heads, to seq_scores[s][j] for each
  // j < token_kv_len[t]. Adds accumulate (the caller zeroes or decays) and are atomic, so tokens
  // of one sequence may run on several threads.
  float* const* seq_scores = nullptr;  // [num_seqs][slots of that sequence], or null
  // Optional, with seq_scores: per sequence, 0 (the sum over all query heads goes to row 0, as
  // above) or a row stride in floats: then the weights of KV head g, summed over the query heads
  // of its group, go to seq_scores[s][g * stride + j] instead (per-head token eviction).
  const int64_t* seq_score_head_stride = nullptr;  // [num_seqs], or null (all 0)

  // Launch parameters of device backends (the CPU ignores them).
  int max_kv_len = 0;         // a HOST value: >= every token_kv_len[t]
  void* workspace = nullptr;  // scratch memory the device kernels need (their header says how much)
  int64_t workspace_bytes = 0;  // size of `workspace`
};

// K and V of num_tokens tokens to write into their slots: token t goes to physical block
// slot_block[t] at in-block offset slot_offset[t], converted to the block's format on the way
// (quantize-on-write). Which formats a backend writes one token at a time, and what it does with
// whole-block formats, is said by its WriteKv (kernels/cpu/paged_attention.h, the CUDA twin).
struct KvWrite {
  const float* k = nullptr;  // [num_tokens, num_kv_heads, head_dim]
  const float* v = nullptr;  // [num_tokens, num_kv_heads, head_dim]
  int64_t num_tokens = 0;
  const int32_t* slot_block = nullptr;   // [num_tokens]
  const int32_t* slot_offset = nullptr;  // [num_tokens]
};

}  // namespace kvserve::kernels

#endif  // KVSERVE_KERNELS_ATTENTION_BATCH_H_
