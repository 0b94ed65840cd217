// Element-wise and row-wise operators of the forward pass (GEMM: gemm.cu).
#include <cmath>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"

namespace kvserve::kernels::cuda {
namespace {

constexpr int kThreads = 256;

unsigned GridFor(int64_t n, int per_block = kThreads) {
  const int64_t blocks = (n + per_block - 1) / per_block;
  return static_cast<unsigned>(blocks < 65535 * 16 ? blocks : 65535 * 16);
}

__global__ void RmsNormKernel(const float* x, const float* w, int64_t dim, float eps, float* out) {
  const float* xr = x + blockIdx.x * dim;
  float* yr = out + blockIdx.x * dim;
  float ss = 0.0f;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) ss = fmaf(xr[i], xr[i], ss);
  __shared__ float red[kThreads / 32];
  ss = device::WarpSum(ss);
  if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = ss;
  __syncthreads();
  float total = 0.0f;
  for (int i = 0; i < kThreads / 32; ++i) total += red[i];
  const float inv = 1.0f / sqrtf(total / static_cast<float>(dim) + eps);
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) yr[i] = xr[i] * inv * w[i];
}

// One thread per (token, pair); the angle is shared by the token's heads.
__global__ void RopeKernel(float* x, const int32_t* positions, int64_t n, int num_heads,
                           int head_dim, double log_base) {
  const int pairs = head_dim / 2;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n * pairs;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = i / pairs;
    const int p = static_cast<int>(i % pairs);
    const double inv_freq = exp(-log_base * (2.0 * p) / head_dim);
    const double angle = static_cast<double>(positions[t]) * inv_freq;
    const float c = static_cast<float>(cos(angle));
    const float s = static_cast<float>(sin(angle));
    float* xt = x + t * num_heads * head_dim;
    for (int h = 0; h < num_heads; ++h) {
      float* xh = xt + static_cast<int64_t>(h) * head_dim;
      const float a = xh[2 * p], b = xh[2 * p + 1];
      xh[2 * p] = a * c - b * s;
      xh[2 * p + 1] = a * s + b * c;
    }
  }
}

__global__ void SwiGluKernel(const float* gate, const float* up, int64_t n, float* out) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float g = gate[i];
    out[i] = g / (1.0f + expf(-g)) * up[i];
  }
}

__global__ void AddKernel(float* x, const float* y, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    x[i] += y[i];
  }
}

__global__ void AddBiasKernel(float* x, const float* bias, int64_t n, int64_t cols) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n * cols;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    x[i] += bias[i % cols];
  }
}

__global__ void GatherKernel(DType dtype, const void* table, int64_t vocab, int64_t dim,
                             const int32_t* ids, float* out) {
  const int64_t t = blockIdx.x;
  const int32_t id = ids[t];
  float* o = out + t * dim;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
    float v = __int_as_float(0x7fc00000);  // NaN: id out of range
    if (id >= 0 && id < vocab) {
      const int64_t e = static_cast<int64_t>(id) * dim + i;
      if (dtype == DType::kF32) {
        v = static_cast<const float*>(table)[e];
      } else if (dtype == DType::kF16) {
        v = device::Fp16BitsToFloat(static_cast<const uint16_t*>(table)[e]);
      } else {
        v = device::Bf16BitsToFloat(static_cast<const uint16_t*>(table)[e]);
      }
    }
    o[i] = v;
  }
}

// Candidate (v2, i2) replaces (v, i) when larger, or equal with a lower index; i < 0: none yet.
__device__ __forceinline__ void Better(float v2, int64_t i2, float* v, int64_t* i) {
  if (i2 < 0) return;
  if (*i < 0 || v2 > *v || (v2 == *v && i2 < *i)) {
    *v = v2;
    *i = i2;
  }
}

__global__ void ArgMaxKernel(const float* logits, int64_t vocab, int32_t* ids) {
  const float* row = logits + blockIdx.x * vocab;
  float best = -__int_as_float(0x7f800000);
  int64_t idx = -1;
  for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) {
    if (!isnan(row[i])) Better(row[i], i, &best, &idx);
  }
  for (int o = 16; o > 0; o /= 2) {
    const float v2 = __shfl_xor_sync(0xffffffffu, best, o);
    const int64_t i2 = __shfl_xor_sync(0xffffffffu, idx, o);
    Better(v2, i2, &best, &idx);
  }
  __shared__ float s_v[kThreads / 32];
  __shared__ int64_t s_i[kThreads / 32];
  if (threadIdx.x % 32 == 0) {
    s_v[threadIdx.x / 32] = best;
    s_i[threadIdx.x / 32] = idx;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < kThreads / 32; ++w) {
      Better(s_v[w], s_i[w], &best, &idx);
    }
    ids[blockIdx.x] = static_cast<int32_t>(idx < 0 ? 0 : idx);
  }
}

}  // namespace

void RmsNorm(const float* x, const float* weight, int64_t n, int64_t dim, float eps, float* out,
             Stream stream) {
  if (n <= 0) return;
  RmsNormKernel<<<static_cast<unsigned>(n), kThreads, 0, stream>>>(x, weight, dim, eps, out);
  KVSERVE_CUDA_CHECK(cudaGetLastError());
}

void RopeAdjacentPairs(float* x, const int32_t* positions, int64_t n, int num_heads, int head_dim,
                       float freq_base, Stream stream) {
  if (n <= 0 || head_dim < 2) return;
  RopeKernel<<<GridFor(n * (head_dim / 2)), kThreads, 0, stream>>>(
      x, positions, n, num_heads, head_dim, std::log(static_cast<double>(freq_base)));
  KVSERVE_CUDA_CHECK(cudaGetLastError());
}

void SwiGlu(const float* gate, const float* up, int64_t n, float* out, Stream stream) {
  if (n <= 0) return;
  SwiGluKernel<<<GridFor(n), kThreads, 0, stream>>>(gate, up, n, out);
  KVSERVE_CUDA_CHECK(cudaGetLastError());
}

void AddInPlace(float* x, const float* y, int64_t n, Stream stream) {
  if (n <= 0) return;
  AddKernel<<<GridFor(n), kThreads, 0, stream>>>(x, y, n);
  KVSERVE_CUDA_CHECK(cudaGetLastError());
}

void AddBias(float* x, const float* bias, int64_t n, int64_t cols, Stream stream) {
  if (n <= 0 || cols <= 0) return;
  AddBiasKernel<<<GridFor(n * cols), kThreads, 0, stream>>>(x, bias, n, cols);
  KVSERVE_CUDA_CHECK(cudaGetLastError());
}

void EmbeddingGather(const WeightView& table, const int32_t* ids, int64_t n, float* out,
                     Stream stream) {
  if (n <= 0) return;
  GatherKernel<<<static_cast<unsigned>(n), kThreads, 0, stream>>>(table.dtype, table.data,
                                                                  table.rows, table.cols, ids, out);
  KVSERVE_CUDA_CHECK(cudaGetLastError());
}

void ArgMaxRows(const float* logits, int64_t n, int64_t vocab, int32_t* ids, Stream stream) {
  if (n <= 0) return;
  ArgMaxKernel<<<static_cast<unsigned>(n), kThreads, 0, stream>>>(logits, vocab, ids);
  KVSERVE_CUDA_CHECK(cudaGetLastError());
}

void CopyLogitsToHost(const float* logits, int64_t n, int64_t vocab, float* host, Stream stream) {
  if (n <= 0) return;
  KVSERVE_CUDA_CHECK(
      cudaMemcpyAsync(host, logits, n * vocab * sizeof(float), cudaMemcpyDeviceToHost, stream));
}

}  // namespace kvserve::kernels::cuda
