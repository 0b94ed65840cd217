// MatMul: y[n, rows] = x[n, cols] * W^T with W [rows, cols] row-major in F32, F16 or BF16.
//
// Every output is a dot product of an x row with a W row, both contiguous, so the kernels run
// along cols with several independent accumulators and reduce them horizontally at the end:
//  * n == 1 (GEMV): tiles of 8 W rows; 8 accumulators hide the FMA latency and share each x load.
//  * n > 1: tiles of 4 x rows by 4 W rows (16 accumulators; 2 by 4 without AVX-512's 32
//    registers), so each loaded W vector serves 4 x rows and each x vector 4 W rows; x is visited
//    in blocks that stay in L2.
// The column tail is handled with masked loads (no scalar tail); F16/BF16 weights are widened in
// registers. Output rows are split across the pool only when the product is large enough.
#include <algorithm>
#include <cstdint>

#include "kernels/cpu/check.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/simd.h"

namespace kvserve::kernels::cpu {
namespace {

using simd::Bf16;
using simd::Fp16;

// Multiply-accumulates below which a MatMul stays on the calling thread (a parallel call costs
// about a microsecond of hand-off).
constexpr int64_t kMinParallelMacs = int64_t{1} << 16;
// Rows of W handed to a thread at a time (a multiple of every tile height).
constexpr int64_t kRowUnit = 8;
// Floats of x kept hot while a block of W rows streams past (half of a 1 MiB L2).
constexpr int64_t kXBlockFloats = int64_t{1} << 17;
// x rows per tile: 4 x 4 tiles need 21 vector registers, which AVX-512 targets have (32) and
// AVX2-only targets do not (16).
#if defined(KVSERVE_SIMD_AVX512)
constexpr int kTileM = 4;
#else
constexpr int kTileM = 2;
#endif

// y[i * ldy + r] = dot(x[i * ldx, +cols), w[r * cols, +cols)) for i < kM, r < kN.
template <class V, class T, int kM, int kN>
inline void Tile(const float* x, int64_t ldx, const T* w, int64_t cols, float* y, int64_t ldy) {
  using Reg = typename V::Reg;
  constexpr int kL = V::kLanes;
  Reg acc[kM][kN];
  for (int i = 0; i < kM; ++i) {
    for (int r = 0; r < kN; ++r) acc[i][r] = V::Zero();
  }
  int64_t c = 0;
  for (; c + kL <= cols; c += kL) {
    Reg xv[kM];
    for (int i = 0; i < kM; ++i) xv[i] = V::Load(x + i * ldx + c);
    for (int r = 0; r < kN; ++r) {
      const Reg wv = V::Load(w + r * cols + c);
      for (int i = 0; i < kM; ++i) acc[i][r] = V::Fma(xv[i], wv, acc[i][r]);
    }
  }
  if (c < cols) {
    const int tail = static_cast<int>(cols - c);
    Reg xv[kM];
    for (int i = 0; i < kM; ++i) xv[i] = V::LoadN(x + i * ldx + c, tail);
    for (int r = 0; r < kN; ++r) {
      const Reg wv = V::LoadN(w + r * cols + c, tail);
      for (int i = 0; i < kM; ++i) acc[i][r] = V::Fma(xv[i], wv, acc[i][r]);
    }
  }
  for (int i = 0; i < kM; ++i) {
    if constexpr (kN % 4 == 0) {
      for (int r = 0; r < kN; r += 4) {
        V::Reduce4Store(acc[i][r], acc[i][r + 1], acc[i][r + 2], acc[i][r + 3], y + i * ldy + r);
      }
    } else {
      for (int r = 0; r < kN; ++r) y[i * ldy + r] = V::ReduceAdd(acc[i][r]);
    }
  }
}

// Output rows [r0, r1) of y for all n rows of x.
template <class V, class T>
void MatMulRows(const float* x, int64_t n, const T* w, int64_t cols, float* y, int64_t ldy,
                int64_t r0, int64_t r1) {
  if (n == 1) {
    int64_t r = r0;
    for (; r + 8 <= r1; r += 8) Tile<V, T, 1, 8>(x, cols, w + r * cols, cols, y + r, ldy);
    for (; r + 4 <= r1; r += 4) Tile<V, T, 1, 4>(x, cols, w + r * cols, cols, y + r, ldy);
    for (; r < r1; ++r) Tile<V, T, 1, 1>(x, cols, w + r * cols, cols, y + r, ldy);
    return;
  }
  const int64_t x_block = std::max<int64_t>(kTileM, kXBlockFloats / cols / kTileM * kTileM);
  for (int64_t i0 = 0; i0 < n; i0 += x_block) {
    const int64_t i1 = std::min(n, i0 + x_block);
    int64_t r = r0;
    for (; r + 4 <= r1; r += 4) {
      const T* wr = w + r * cols;
      int64_t i = i0;
      for (; i + kTileM <= i1; i += kTileM) {
        Tile<V, T, kTileM, 4>(x + i * cols, cols, wr, cols, y + i * ldy + r, ldy);
      }
      for (; i < i1; ++i) Tile<V, T, 1, 4>(x + i * cols, cols, wr, cols, y + i * ldy + r, ldy);
    }
    for (; r < r1; ++r) {
      const T* wr = w + r * cols;
      int64_t i = i0;
      for (; i + kTileM <= i1; i += kTileM) {
        Tile<V, T, kTileM, 1>(x + i * cols, cols, wr, cols, y + i * ldy + r, ldy);
      }
      for (; i < i1; ++i) Tile<V, T, 1, 1>(x + i * cols, cols, wr, cols, y + i * ldy + r, ldy);
    }
  }
}

template <class V, class T>
void MatMulTyped(const float* x, int64_t n, const T* w, int64_t rows, int64_t cols, float* y,
                 ThreadPool* pool) {
  const int64_t macs = n * rows * cols;
  if (pool == nullptr || pool->num_threads() == 1 || macs < kMinParallelMacs) {
    MatMulRows<V, T>(x, n, w, cols, y, rows, 0, rows);
    return;
  }
  struct Args {
    const float* x;
    int64_t n;
    const T* w;
    int64_t rows;
    int64_t cols;
    float* y;
  } args{x, n, w, rows, cols, y};
  const int64_t units = (rows + kRowUnit - 1) / kRowUnit;
  const int64_t unit_macs = n * cols * kRowUnit;
  const int64_t min_units = std::max<int64_t>(1, kMinParallelMacs / 2 / unit_macs);
  pool->ParallelFor(units, min_units, [a = &args](int64_t u0, int64_t u1) {
    const int64_t r0 = u0 * kRowUnit;
    const int64_t r1 = std::min(a->rows, u1 * kRowUnit);
    MatMulRows<V, T>(a->x, a->n, a->w, a->cols, a->y, a->rows, r0, r1);
  });
}

template <class V>
void MatMulDispatch(const float* x, int64_t n, const WeightView& w, float* y, ThreadPool* pool) {
  switch (w.dtype) {
    case DType::kF32:
      MatMulTyped<V>(x, n, static_cast<const float*>(w.data), w.rows, w.cols, y, pool);
      return;
    case DType::kF16:
      MatMulTyped<V>(x, n, static_cast<const Fp16*>(w.data), w.rows, w.cols, y, pool);
      return;
    case DType::kBF16:
      MatMulTyped<V>(x, n, static_cast<const Bf16*>(w.data), w.rows, w.cols, y, pool);
      return;
  }
  KVSERVE_KERNEL_CHECK(false, "MatMul: unknown weight dtype");
}

}  // namespace

void MatMul(const float* x, int64_t n, const WeightView& w, float* y, ThreadPool* pool) {
  if (n <= 0 || w.rows <= 0) return;
  if (w.cols <= 0) {
    std::fill(y, y + n * w.rows, 0.0f);
    return;
  }
  // Rows of <= 8 values fill a narrow register exactly; a wide one would be half empty.
  if (w.cols <= simd::VecNarrow::kLanes) {
    MatMulDispatch<simd::VecNarrow>(x, n, w, y, pool);
  } else {
    MatMulDispatch<simd::VecWide>(x, n, w, y, pool);
  }
}

}  // namespace kvserve::kernels::cpu
