// Dense operators of the Llama forward pass on the GPU: the twins of kernels/cpu/ops.h, same
// arguments plus a stream. All pointers are DEVICE pointers (WeightView::data included); work is
// enqueued on `stream` and is asynchronous. Matrices are row-major; shapes in comments.
#ifndef KVSERVE_KERNELS_CUDA_OPS_H_
#define KVSERVE_KERNELS_CUDA_OPS_H_

#include <cstdint>

#include "kernels/cuda/runtime.h"
#include "kernels/dtype.h"

namespace kvserve::kernels::cuda {

// out[n, dim] = x / sqrt(mean(x^2) + eps) * weight[dim]. out may alias x.
void RmsNorm(const float* x, const float* weight, int64_t n, int64_t dim, float eps, float* out,
             Stream stream);

// Rotary embedding in place on x [n, num_heads, head_dim], rotating pairs (2i, 2i + 1) by angle
// position[t] * freq_base^(-2i / head_dim); angles in double precision, as on the CPU.
void RopeAdjacentPairs(float* x, const int32_t* positions, int64_t n, int num_heads, int head_dim,
                       float freq_base, Stream stream);

// out[i] = silu(gate[i]) * up[i] for i in [0, n). out may alias gate.
void SwiGlu(const float* gate, const float* up, int64_t n, float* out, Stream stream);

// x[i] += y[i].
void AddInPlace(float* x, const float* y, int64_t n, Stream stream);

// x[t, c] += bias[c] for t < n, c < cols.
void AddBias(float* x, const float* bias, int64_t n, int64_t cols, Stream stream);

// out[t, :] = table[ids[t], :] for a [vocab, dim] table of any DType. An id outside [0, vocab)
// (a broken precondition the CPU op aborts on) yields a row of NaN.
void EmbeddingGather(const WeightView& table, const int32_t* ids, int64_t n, float* out,
                     Stream stream);

// ids[t] = the index of the largest of logits[t, 0 .. vocab) (the lowest index among equal
// maxima; NaN never wins): greedy decoding without copying the logits back.
void ArgMaxRows(const float* logits, int64_t n, int64_t vocab, int32_t* ids, Stream stream);

// Copies logits [n, vocab] to host memory (pinned memory makes it asynchronous) for sampling.
void CopyLogitsToHost(const float* logits, int64_t n, int64_t vocab, float* host, Stream stream);

}  // namespace kvserve::kernels::cuda

#endif  // KVSERVE_KERNELS_CUDA_OPS_H_
