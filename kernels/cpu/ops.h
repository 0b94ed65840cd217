// Dense CPU operators of the Llama forward pass. Vectorized (AVX-512 / AVX2 with a portable
// fallback), no allocation on the hot path. All matrices are row-major; shapes in comments.
// `pool` may be null (runs on the calling thread).
#ifndef KVSERVE_KERNELS_CPU_OPS_H_
#define KVSERVE_KERNELS_CPU_OPS_H_

#include <cstdint>

#include "kernels/cpu/thread_pool.h"
#include "kernels/dtype.h"

namespace kvserve::kernels::cpu {

// y[n, w.rows] = x[n, w.cols] * W^T, with W [w.rows, w.cols] in F32, F16 or BF16, or a
// block-quantized type (quant_matmul.h: always batch-invariant, w.panels unused).
//
// With w.panels set (PackWeightPanels), every output y[i, r] is the fused multiply-add chain
// over the columns in ascending order, whatever n, the row of x, the tiling and the split over
// threads: a row's result is bitwise the same in a batch of one and in a batch of 32 (batch
// invariance: a request's greedy output does not depend on what else is running). Without
// panels the faster-to-set-up row-major paths are used, whose rounding depends on n.
void MatMul(const float* x, int64_t n, const WeightView& w, float* y, ThreadPool* pool);

// The panel layout: W's rows in panels of kWeightPanelRows (the last one zero-padded); panel p
// holds W[p * kWeightPanelRows + j][c] at element c * kWeightPanelRows + j, in W's dtype.
inline constexpr int64_t kWeightPanelRows = 32;
// Bytes PackWeightPanels writes for w; 0 for quantized weights, which MatMul uses in place
// (their path sums in one fixed order without panels).
int64_t WeightPanelBytes(const WeightView& w);
// Packs w (row-major, any DType) into `out` (WeightPanelBytes(w) bytes, any alignment).
void PackWeightPanels(const WeightView& w, void* out);

// Index of the largest of x[0, n) (n >= 1), the lowest on ties; values compared with `>` from
// index 0 on, so a NaN is never chosen unless x[0] is NaN (then 0). Greedy sampling.
int64_t ArgMax(const float* x, int64_t n);

// out[n, dim] = x / sqrt(mean(x^2) + eps) * weight[dim]. out may alias x.
void RmsNorm(const float* x, const float* weight, int64_t n, int64_t dim, float eps, float* out);

// Rotary embedding in place on x [n, num_heads, head_dim], rotating adjacent pairs (2i, 2i+1)
// by angle position[t] * freq_base^(-2i / head_dim) (llama2.c / GGUF "norm" RoPE).
void RopeAdjacentPairs(float* x, const int32_t* positions, int64_t n, int num_heads, int head_dim,
                       float freq_base);

// The rotation RopeAdjacentPairs applies, as a table computed once and applied to many tensors
// (the queries and keys of every layer share their tokens' positions):
// cos_sin[t][i] = (cos, sin) of positions[t] * freq_base^(-2i / head_dim), i < head_dim / 2,
// times freq_scale (linear rope scaling) and divided by freq_factors[i] when given (Llama 3.1's
// rope_freqs.weight, [head_dim / 2]), both multiplied by attn_factor.
void RopeTable(const int32_t* positions, int64_t n, int head_dim, float freq_base,
               float* cos_sin,  // cos_sin: [n, head_dim / 2, 2]
               float freq_scale = 1.0f, const float* freq_factors = nullptr,
               float attn_factor = 1.0f);
// x [n, num_heads, head_dim] rotated in place by a RopeTable of the same n and head_dim; gives
// exactly what RopeAdjacentPairs gives.
void RopeAdjacentPairsTable(float* x, const float* cos_sin, int64_t n, int num_heads, int head_dim);
// The same rotation with pair i formed by elements (i, i + head_dim / 2) of each head (GPT-NeoX's
// layout: Qwen2, Qwen3, Phi-3); each pair is computed with the same operations as above.
void RopeNeoxTable(float* x, const float* cos_sin, int64_t n, int num_heads, int head_dim);

// out[i] = silu(gate[i]) * up[i] for i in [0, n). out may alias gate.
void SwiGlu(const float* gate, const float* up, int64_t n, float* out);

// x[i] += y[i].
void AddInPlace(float* x, const float* y, int64_t n);

// out[t, :] = table[ids[t], :] for a [vocab, dim] table of any DType (quantized rows are
// dequantized one gathered row at a time).
void EmbeddingGather(const WeightView& table, const int32_t* ids, int64_t n, float* out);

// Numerically stable softmax in place over x[n].
void SoftmaxInPlace(float* x, int64_t n);

}  // namespace kvserve::kernels::cpu

#endif  // KVSERVE_KERNELS_CPU_OPS_H_
