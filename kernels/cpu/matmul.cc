// MatMul: y[n, rows] = x[n, cols] * W^T with W [rows, cols] row-major in F32, F16 or BF16.
//
// Weights packed once by PackWeightPanels (WeightView::panels, what the model uses) take the
// panel path: every output one FMA chain along the columns, the same for any n (see ops.h).
// Row-major weights take one of two formulations:
//  * n < kPackMinN, dot products: every output is a dot product of an x row with a W row, both
//    contiguous, run along cols with independent accumulators and reduced horizontally at the
//    end. n == 1 (GEMV) uses tiles of 8 W rows (8 accumulators hide the FMA latency and share
//    each x load); small n tiles of 4 x rows by 4 W rows, so each W vector serves 4 x rows.
//    Column tails use masked loads (no scalar tail).
//  * n >= kPackMinN, outer products: a block of 2 * kLanes W rows is packed transposed (and
//    widened to F32) into a kKC-column stack tile with in-register transposes; then tiles of
//    kOuterMR x rows by 2 * kLanes outputs accumulate x[i, c] * Wt[c, :] with no horizontal
//    sums. Packing costs about one operation per weight and is shared by all n rows of x.
// F16/BF16 weights are widened in registers (vcvtph2ps / shifts). The only F32 copy of weights
// is that cache-sized tile of the packed path, reused by at least kPackMinN rows of x.
// Output rows are split across the pool only when the product is large enough to pay for it.
#include <algorithm>
#include <atomic>
#include <cstdint>

#include "kernels/cpu/check.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/quant_matmul.h"
#include "kernels/cpu/simd.h"

namespace kvserve::kernels::cpu {
namespace {

using simd::Bf16;
using simd::Fp16;

// Multiply-accumulates below which a MatMul stays on the calling thread (a parallel call costs
// about a microsecond of hand-off).
constexpr int64_t kMinParallelMacs = int64_t{1} << 16;
// Rows of W handed to a thread at a time by the dot-product path (a multiple of its tiles).
constexpr int64_t kRowUnit = 8;
// Floats of x kept hot while a block of W rows streams past (half of a 1 MiB L2).
constexpr int64_t kXBlockFloats = int64_t{1} << 17;
// x rows per tile: 4 x 4 tiles need 21 vector registers, which AVX-512 targets have (32) and
// AVX2-only targets do not (16).
#if defined(KVSERVE_SIMD_AVX512)
constexpr int kTileM = 4;
constexpr int kOuterMR = 8;  // x rows of an outer-product tile (8 x 2 accumulators)
#else
constexpr int kTileM = 2;
constexpr int kOuterMR = 4;
#endif
// Rows of x from which the packed outer-product kernel pays off.
constexpr int64_t kPackMinN = 8;
// Columns of W packed at a time: kKC x kNR floats stay in L1 while x streams past.
constexpr int kKC = 256;

// y[i * ldy + r] = dot(x[i * ldx, +cols), w[r * cols, +cols)) for i < kM, r < kN.
template <class V, class T, int kM, int kN>
KVSERVE_ALWAYS_INLINE void Tile(const float* x, int64_t ldx, const T* w, int64_t cols, float* y,
                                int64_t ldy) {
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

// ---- outer-product path -----------------------------------------------------------------------

// wt[c][0, kNR) = W[r0 + j][c0 + c] for j < kNR (zero for rows >= rows), c < kc; kNR = 2 lanes.
template <class V, class T>
void PackTransposed(const T* w, int64_t rows, int64_t cols, int64_t r0, int64_t c0, int kc,
                    float* wt) {
  using Reg = typename V::Reg;
  constexpr int kL = V::kLanes;
  constexpr int kNR = 2 * kL;
  for (int rr = 0; rr < kNR; rr += kL) {
    for (int cc = 0; cc < kc; cc += kL) {
      const int nc = std::min(kL, kc - cc);
      Reg t[kL];
      for (int i = 0; i < kL; ++i) {
        const int64_t r = r0 + rr + i;
        const T* src = w + r * cols + c0 + cc;
        t[i] = r >= rows ? V::Zero() : (nc == kL ? V::Load(src) : V::LoadN(src, nc));
      }
      V::Transpose(t);
      for (int j = 0; j < nc; ++j) V::Store(wt + (cc + j) * kNR + rr, t[j]);
    }
  }
}

// y[i, 0, nr) (+)= sum_c x[i, c] * wt[c, :] for i < kM; accumulates onto y unless `first`.
template <class V, int kM>
KVSERVE_ALWAYS_INLINE void OuterTile(const float* x, int64_t ldx, const float* wt, int kc, float* y,
                                     int64_t ldy, int nr, bool first) {
  using Reg = typename V::Reg;
  constexpr int kL = V::kLanes;
  constexpr int kNR = 2 * kL;
  const int n0 = std::min(nr, kL);
  const int n1 = std::max(0, nr - kL);
  Reg acc[kM][2];
  for (int i = 0; i < kM; ++i) {
    if (first) {
      acc[i][0] = V::Zero();
      acc[i][1] = V::Zero();
    } else {
      acc[i][0] = V::LoadN(y + i * ldy, n0);
      acc[i][1] = V::LoadN(y + i * ldy + kL, n1);
    }
  }
  for (int c = 0; c < kc; ++c) {
    const Reg w0 = V::Load(wt + c * kNR);
    const Reg w1 = V::Load(wt + c * kNR + kL);
    for (int i = 0; i < kM; ++i) {
      const Reg xb = V::Set1(x[i * ldx + c]);
      acc[i][0] = V::Fma(xb, w0, acc[i][0]);
      acc[i][1] = V::Fma(xb, w1, acc[i][1]);
    }
  }
  for (int i = 0; i < kM; ++i) {
    if (nr == kNR) {
      V::Store(y + i * ldy, acc[i][0]);
      V::Store(y + i * ldy + kL, acc[i][1]);
    } else {
      V::StoreN(y + i * ldy, acc[i][0], n0);
      V::StoreN(y + i * ldy + kL, acc[i][1], n1);
    }
  }
}

// Output rows [r0, r1) (r0 a multiple of kNR) for all n rows of x.
template <class V, class T>
void MatMulPacked(const float* x, int64_t n, const T* w, int64_t rows, int64_t cols, float* y,
                  int64_t r0, int64_t r1) {
  constexpr int kNR = 2 * V::kLanes;
  alignas(64) float wt[kKC * kNR];
  for (int64_t rb = r0; rb < r1; rb += kNR) {
    const int nr = static_cast<int>(std::min<int64_t>(kNR, r1 - rb));
    for (int64_t c0 = 0; c0 < cols; c0 += kKC) {
      const int kc = static_cast<int>(std::min<int64_t>(kKC, cols - c0));
      PackTransposed<V>(w, rows, cols, rb, c0, kc, wt);
      int64_t i = 0;
      for (; i + kOuterMR <= n; i += kOuterMR) {
        OuterTile<V, kOuterMR>(x + i * cols + c0, cols, wt, kc, y + i * rows + rb, rows, nr,
                               c0 == 0);
      }
      for (; i < n; ++i) {
        OuterTile<V, 1>(x + i * cols + c0, cols, wt, kc, y + i * rows + rb, rows, nr, c0 == 0);
      }
    }
  }
}

// ---- pre-packed panel path (batch-invariant) ----------------------------------------------------

// y[i, 0, nr) = sum over c ascending of x[i, c] * W[row j of kP panels][c], for i < kM: each
// output is one FMA chain along the columns, so its value does not depend on kM, kP or n.
// wp points at the first of kP consecutive panels (panel stride cols * kWeightPanelRows).
template <class V, class T, int kM, int kP>
KVSERVE_ALWAYS_INLINE void PanelTile(const float* x, int64_t ldx, const T* wp, int64_t cols,
                                     float* y, int64_t ldy, int64_t nr) {
  using Reg = typename V::Reg;
  constexpr int kL = V::kLanes;
  constexpr int kR = static_cast<int>(kWeightPanelRows) / kL;  // registers per panel row slice
  constexpr int kQ = kP * kR;
  static_assert(kR * kL == kWeightPanelRows);
  const int64_t stride = cols * kWeightPanelRows;
  Reg acc[kM][kQ];
  for (int i = 0; i < kM; ++i) {
    for (int q = 0; q < kQ; ++q) acc[i][q] = V::Zero();
  }
  for (int64_t c = 0; c < cols; ++c) {
    Reg wv[kQ];
    for (int p = 0; p < kP; ++p) {
      for (int j = 0; j < kR; ++j)
        wv[p * kR + j] = V::Load(wp + p * stride + c * kWeightPanelRows + j * kL);
    }
    for (int i = 0; i < kM; ++i) {
      const Reg xb = V::Set1(x[i * ldx + c]);
      for (int q = 0; q < kQ; ++q) acc[i][q] = V::Fma(xb, wv[q], acc[i][q]);
    }
  }
  for (int i = 0; i < kM; ++i) {
    for (int q = 0; q < kQ; ++q) {
      const int64_t left = nr - static_cast<int64_t>(q) * kL;
      if (left >= kL) {
        V::Store(y + i * ldy + q * kL, acc[i][q]);
      } else if (left > 0) {
        V::StoreN(y + i * ldy + q * kL, acc[i][q], static_cast<int>(left));
      }
    }
  }
}

// x rows per tile with two panels (AVX-512 has 32 registers, AVX2 16).
#if defined(KVSERVE_SIMD_AVX512)
constexpr int kPanelTileM = 6;  // 24 accumulators, 4 weight registers and a broadcast
#else
constexpr int kPanelTileM = 2;
#endif

// Panels [p0, p1) of the output for all n rows of x.
template <class V, class T>
void MatMulPanels(const float* x, int64_t n, const T* panels, int64_t rows, int64_t cols, float* y,
                  int64_t p0, int64_t p1) {
  const int64_t stride = cols * kWeightPanelRows;
  int64_t p = p0;
  auto nr_of = [rows](int64_t panel, int count) {
    return std::min<int64_t>(rows - panel * kWeightPanelRows, count * kWeightPanelRows);
  };
  if (n == 1) {  // four panels at a time: eight independent chains hide the FMA latency
    for (; p + 4 <= p1; p += 4) {
      PanelTile<V, T, 1, 4>(x, cols, panels + p * stride, cols, y + p * kWeightPanelRows, rows,
                            nr_of(p, 4));
    }
  }
  for (; p + 2 <= p1; p += 2) {
    const T* wp = panels + p * stride;
    float* yp = y + p * kWeightPanelRows;
    const int64_t nr = nr_of(p, 2);
    int64_t i = 0;
    for (; i + kPanelTileM <= n; i += kPanelTileM) {
      PanelTile<V, T, kPanelTileM, 2>(x + i * cols, cols, wp, cols, yp + i * rows, rows, nr);
    }
#if defined(KVSERVE_SIMD_AVX512)
    for (; i + 4 <= n; i += 4) {
      PanelTile<V, T, 4, 2>(x + i * cols, cols, wp, cols, yp + i * rows, rows, nr);
    }
#endif
    for (; i + 2 <= n; i += 2) {
      PanelTile<V, T, 2, 2>(x + i * cols, cols, wp, cols, yp + i * rows, rows, nr);
    }
    for (; i < n; ++i) PanelTile<V, T, 1, 2>(x + i * cols, cols, wp, cols, yp + i * rows, rows, nr);
  }
  for (; p < p1; ++p) {
    const T* wp = panels + p * stride;
    float* yp = y + p * kWeightPanelRows;
    const int64_t nr = nr_of(p, 1);
    int64_t i = 0;
    for (; i + 2 * kPanelTileM <= n; i += 2 * kPanelTileM) {
      PanelTile<V, T, 2 * kPanelTileM, 1>(x + i * cols, cols, wp, cols, yp + i * rows, rows, nr);
    }
    for (; i + 4 <= n; i += 4) {
      PanelTile<V, T, 4, 1>(x + i * cols, cols, wp, cols, yp + i * rows, rows, nr);
    }
    for (; i < n; ++i) PanelTile<V, T, 1, 1>(x + i * cols, cols, wp, cols, yp + i * rows, rows, nr);
  }
}

template <class T>
void PackPanelsTyped(const T* w, int64_t rows, int64_t cols, T* out) {
  const int64_t panels = (rows + kWeightPanelRows - 1) / kWeightPanelRows;
  for (int64_t p = 0; p < panels; ++p) {
    T* dst = out + p * cols * kWeightPanelRows;
    for (int64_t c = 0; c < cols; ++c) {
      for (int64_t j = 0; j < kWeightPanelRows; ++j) {
        const int64_t r = p * kWeightPanelRows + j;
        dst[c * kWeightPanelRows + j] = r < rows ? w[r * cols + c] : T{};
      }
    }
  }
}

// ---- dispatch ----------------------------------------------------------------------------------

// Runs run(r0, r1) over output rows [0, rows) in units of `unit` rows, on the pool when the
// product is large enough to pay for the hand-off.
template <class Run>
void RunSplit(const Run& run, int64_t n, int64_t rows, int64_t cols, int64_t unit,
              ThreadPool* pool) {
  const int64_t macs = n * rows * cols;
  const int64_t units = (rows + unit - 1) / unit;
  if (pool == nullptr || pool->num_threads() == 1 || macs < kMinParallelMacs || units == 1) {
    run(0, rows);
    return;
  }
  // Threads take grains of row units from a shared counter: a thread that is descheduled (the
  // cores are shared) delays only the grain it holds, the others take the rest.
  const int threads = pool->num_threads();
  const int64_t min_grain = std::max<int64_t>(1, kMinParallelMacs / 2 / (n * cols * unit));
  const int64_t grain = std::max(min_grain, units / (4 * threads));
  // One pointer of capture: std::function stores it without allocating.
  struct Job {
    const Run* fn;
    int64_t unit;
    int64_t rows;
    int64_t units;
    int64_t grain;
    std::atomic<int64_t> next{0};
  } job{&run, unit, rows, units, grain};
  pool->ParallelFor(std::min<int64_t>(threads, (units + grain - 1) / grain), 1,
                    [j = &job](int64_t, int64_t) {
                      for (;;) {
                        const int64_t u0 = j->next.fetch_add(j->grain, std::memory_order_relaxed);
                        if (u0 >= j->units) return;
                        const int64_t u1 = std::min(j->units, u0 + j->grain);
                        (*j->fn)(u0 * j->unit, std::min(j->rows, u1 * j->unit));
                      }
                    });
}

template <class V, class T>
void MatMulTyped(const float* x, int64_t n, const T* w, int64_t rows, int64_t cols, float* y,
                 ThreadPool* pool, const T* panels) {
  if (panels != nullptr) {
    // Threads take whole panels; the result does not depend on who computes which.
    constexpr int64_t unit = kWeightPanelRows;
    auto run = [x, n, panels, rows, cols, y](int64_t r0, int64_t r1) {
      MatMulPanels<simd::VecWide, T>(x, n, panels, rows, cols, y, r0 / unit,
                                     (r1 + unit - 1) / unit);
    };
    RunSplit(run, n, rows, cols, unit, pool);
    return;
  }
  const bool packed = n >= kPackMinN;
  // Rows of W handed to a thread at a time: a multiple of every tile height.
  const int64_t unit = packed ? 2 * V::kLanes : kRowUnit;
  auto run = [x, n, w, rows, cols, y, packed](int64_t r0, int64_t r1) {
    if (packed) {
      MatMulPacked<V, T>(x, n, w, rows, cols, y, r0, r1);
    } else {
      MatMulRows<V, T>(x, n, w, cols, y, rows, r0, r1);
    }
  };
  RunSplit(run, n, rows, cols, unit, pool);
}

template <class V>
void MatMulDispatch(const float* x, int64_t n, const WeightView& w, float* y, ThreadPool* pool) {
  switch (w.dtype) {
    case DType::kF32:
      MatMulTyped<V>(x, n, static_cast<const float*>(w.data), w.rows, w.cols, y, pool,
                     static_cast<const float*>(w.panels));
      return;
    case DType::kF16:
      MatMulTyped<V>(x, n, static_cast<const Fp16*>(w.data), w.rows, w.cols, y, pool,
                     static_cast<const Fp16*>(w.panels));
      return;
    case DType::kBF16:
      MatMulTyped<V>(x, n, static_cast<const Bf16*>(w.data), w.rows, w.cols, y, pool,
                     static_cast<const Bf16*>(w.panels));
      return;
    default:
      break;
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
  if (IsQuantized(w.dtype)) {  // on the blocks directly; batch-invariant without panels
    QuantMatMul(x, n, w, y, pool);
    return;
  }
  // Rows of <= 8 values fill a narrow register exactly; a wide one would be half empty. The
  // panel path vectorizes along the rows instead and always runs on the wide backend.
  if (w.cols <= simd::VecNarrow::kLanes && w.panels == nullptr) {
    MatMulDispatch<simd::VecNarrow>(x, n, w, y, pool);
  } else {
    MatMulDispatch<simd::VecWide>(x, n, w, y, pool);
  }
}

}  // namespace kvserve::kernels::cpu

namespace kvserve::kernels::cpu {

int64_t WeightPanelBytes(const WeightView& w) {
  if (IsQuantized(w.dtype)) return 0;
  const int64_t panels = (w.rows + kWeightPanelRows - 1) / kWeightPanelRows;
  return panels * kWeightPanelRows * w.cols * DTypeBytes(w.dtype);
}

void PackWeightPanels(const WeightView& w, void* out) {
  switch (w.dtype) {
    case DType::kF32:
      PackPanelsTyped(static_cast<const float*>(w.data), w.rows, w.cols, static_cast<float*>(out));
      return;
    case DType::kF16:
      PackPanelsTyped(static_cast<const Fp16*>(w.data), w.rows, w.cols, static_cast<Fp16*>(out));
      return;
    case DType::kBF16:
      PackPanelsTyped(static_cast<const Bf16*>(w.data), w.rows, w.cols, static_cast<Bf16*>(out));
      return;
    default:
      break;
  }
  KVSERVE_KERNEL_CHECK(false, "PackWeightPanels: unknown weight dtype");
}

}  // namespace kvserve::kernels::cpu
