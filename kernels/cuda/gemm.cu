// cuBLAS GEMM wrapper. Row-major y[n, rows] = x[n, cols] W^T is, in cuBLAS's column-major terms,
// Y (rows x n) = op_T(W: cols x rows, ld cols) * X (cols x n, ld cols), ldc = rows.
#include <cublas_v2.h>

#include <utility>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/gemm.h"

namespace kvserve::kernels::cuda {
namespace {

__global__ void RoundActivations(const float* x, int64_t n, bool bf16, uint16_t* out) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] = bf16 ? device::FloatToBf16Bits(x[i]) : device::FloatToFp16Bits(x[i]);
  }
}

#define KVSERVE_CUBLAS_CHECK(expr)                                              \
  do {                                                                          \
    const cublasStatus_t kvserve_st_ = (expr);                                  \
    if (kvserve_st_ != CUBLAS_STATUS_SUCCESS) {                                 \
      std::fprintf(stderr, "%s:%d: cuBLAS error %d (%s)\n", __FILE__, __LINE__, \
                   static_cast<int>(kvserve_st_), #expr);                       \
      std::fflush(stderr);                                                      \
      std::abort();                                                             \
    }                                                                           \
  } while (0)

}  // namespace

bool Gemm::Create(Gemm* gemm, std::string* error) {
  cublasHandle_t h = nullptr;
  const cublasStatus_t st = cublasCreate(&h);
  if (st != CUBLAS_STATUS_SUCCESS) {
    *error = "cublasCreate failed with status " + std::to_string(static_cast<int>(st));
    return false;
  }
  Gemm g;
  g.handle_ = h;
  *gemm = std::move(g);
  return true;
}

Gemm::Gemm(Gemm&& other) noexcept { *this = std::move(other); }

Gemm& Gemm::operator=(Gemm&& other) noexcept {
  if (this != &other) {
    Release();
    handle_ = std::exchange(other.handle_, nullptr);
    scratch_ = std::exchange(other.scratch_, nullptr);
    scratch_bytes_ = std::exchange(other.scratch_bytes_, 0);
  }
  return *this;
}

Gemm::~Gemm() { Release(); }

void Gemm::Release() {
  if (handle_ != nullptr) cublasDestroy(static_cast<cublasHandle_t>(handle_));
  if (scratch_ != nullptr) cudaFree(scratch_);
  handle_ = nullptr;
  scratch_ = nullptr;
  scratch_bytes_ = 0;
}

void Gemm::MatMul(const float* x, int64_t n, const WeightView& w, float* y, Stream stream) {
  if (n <= 0) return;
  KVSERVE_CUDA_REQUIRE(handle_ != nullptr, "cuda::Gemm::MatMul: not created");
  KVSERVE_CUDA_REQUIRE(
      w.rows < (int64_t{1} << 31) && w.cols < (int64_t{1} << 31) && n < (int64_t{1} << 31),
      "cuda::Gemm::MatMul: dimensions exceed int32");
  auto h = static_cast<cublasHandle_t>(handle_);
  KVSERVE_CUBLAS_CHECK(cublasSetStream(h, stream));
  const float alpha = 1.0f, beta = 0.0f;
  const int m = static_cast<int>(w.rows), k = static_cast<int>(w.cols), nn = static_cast<int>(n);
  if (w.dtype == DType::kF32) {
    KVSERVE_CUBLAS_CHECK(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, m, nn, k, &alpha, w.data,
                                      CUDA_R_32F, k, x, CUDA_R_32F, k, &beta, y, CUDA_R_32F, m,
                                      CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    return;
  }
  const bool bf16 = w.dtype == DType::kBF16;
  const int64_t need = n * w.cols * 2;
  if (need > scratch_bytes_) {
    if (scratch_ != nullptr) {
      KVSERVE_CUDA_CHECK(cudaStreamSynchronize(stream));
      KVSERVE_CUDA_CHECK(cudaFree(scratch_));
    }
    KVSERVE_CUDA_CHECK(cudaMalloc(&scratch_, static_cast<size_t>(need)));
    scratch_bytes_ = need;
  }
  const int64_t elems = n * w.cols;
  RoundActivations<<<static_cast<unsigned>(std::min<int64_t>((elems + 255) / 256, 65535)), 256, 0,
                     stream>>>(x, elems, bf16, static_cast<uint16_t*>(scratch_));
  KVSERVE_CUDA_CHECK(cudaGetLastError());
  const cudaDataType t = bf16 ? CUDA_R_16BF : CUDA_R_16F;
  KVSERVE_CUBLAS_CHECK(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, m, nn, k, &alpha, w.data, t, k,
                                    scratch_, t, k, &beta, y, CUDA_R_32F, m, CUBLAS_COMPUTE_32F,
                                    CUBLAS_GEMM_DEFAULT));
}

}  // namespace kvserve::kernels::cuda
