// Matrix products on the GPU through cuBLAS: the twin of cpu::MatMul (kernels/cpu/ops.h).
// FP16 / BF16 weights run on the tensor cores with FP32 accumulation (the activations are
// rounded to the weights' type first); FP32 weights use the FP32 GEMM.
//
// Thread-safety: one Gemm per thread (it owns a cuBLAS handle and a scratch buffer).
#ifndef KVSERVE_KERNELS_CUDA_GEMM_H_
#define KVSERVE_KERNELS_CUDA_GEMM_H_

#include <cstdint>
#include <string>

#include "kernels/cuda/runtime.h"
#include "kernels/dtype.h"

namespace kvserve::kernels::cuda {

class Gemm {
 public:
  // Creates the cuBLAS handle on the current device; false with `error` set on failure.
  static bool Create(Gemm* gemm, std::string* error);

  Gemm() = default;
  Gemm(Gemm&& other) noexcept;
  Gemm& operator=(Gemm&& other) noexcept;
  Gemm(const Gemm&) = delete;
  Gemm& operator=(const Gemm&) = delete;
  ~Gemm();

  // y[n, w.rows] = x[n, w.cols] * W^T (device pointers). The scratch buffer for the rounded
  // activations grows on first use of a larger n * cols (one cudaMalloc, then reused).
  void MatMul(const float* x, int64_t n, const WeightView& w, float* y, Stream stream);

 private:
  void Release();

  void* handle_ = nullptr;  // cublasHandle_t
  void* scratch_ = nullptr;
  int64_t scratch_bytes_ = 0;
};

}  // namespace kvserve::kernels::cuda

#endif  // KVSERVE_KERNELS_CUDA_GEMM_H_
