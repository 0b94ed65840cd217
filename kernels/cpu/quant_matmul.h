// MatMul over block-quantized weights (kernels/weight_formats.h), computed on the blocks directly.
//
// Each row of x is quantized per weight block (32 elements, or 256 for K-types) to 8-bit values
// with one float scale and the sums of every 16 values. A weight block is unpacked to 8-bit codes
// with integer scales and offsets per 16 elements; its dot product with an activation block is an
// exact integer (sum_s sc_s * dot_s and sum_s o_s * bsum_s), turned into float once per block:
//   contribution = dx * (dw * isum - mw * ioff)
// and the contributions are added into the output in ascending block order, starting from 0.
// So every output is the same float sequence whatever the batch size, the row range a thread
// takes or the kernel path: the scalar, AVX2 and AVX-512 VNNI paths differ only in how they
// compute the integers, and give bitwise equal results (batch invariance, README).
//
// The path is chosen at run time from the CPU's features (cpuid), not from compile flags.
#ifndef KVSERVE_KERNELS_CPU_QUANT_MATMUL_H_
#define KVSERVE_KERNELS_CPU_QUANT_MATMUL_H_

#include <cstdint>

#include "kernels/cpu/thread_pool.h"
#include "kernels/dtype.h"

namespace kvserve::kernels::cpu {

enum class QuantKernel { kScalar, kAvx2, kAvx512Vnni };

// The best path this CPU supports.
QuantKernel BestQuantKernel();
// Whether this CPU can run `k`.
bool QuantKernelSupported(QuantKernel k);
const char* QuantKernelName(QuantKernel k);

// y[n, w.rows] = x[n, w.cols] * W^T for a quantized W (IsQuantized(w.dtype), w.cols a multiple of
// the block size) on the best path. Allocates only when n * cols grows past what this thread
// has seen (thread-local activation buffer).
void QuantMatMul(const float* x, int64_t n, const WeightView& w, float* y, ThreadPool* pool);
// The same on a chosen path (REQUIRES: QuantKernelSupported(k)); for tests and benchmarks.
void QuantMatMulWith(QuantKernel k, const float* x, int64_t n, const WeightView& w, float* y,
                     ThreadPool* pool);

}  // namespace kvserve::kernels::cpu

#endif  // KVSERVE_KERNELS_CPU_QUANT_MATMUL_H_
