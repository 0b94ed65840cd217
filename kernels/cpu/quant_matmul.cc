// Quantized MatMul (see quant_matmul.h). Compiled with -ffp-contract=off (CMakeLists.txt): the
// per-block float combination must round the same way on every path.
#include "kernels/cpu/quant_matmul.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#define KVSERVE_QUANT_X86 1
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
#endif

#include "kernels/cpu/check.h"
#include "kernels/weight_formats.h"

namespace kvserve::kernels::cpu {
namespace {

// One activation block: x ~= d * q, with the sums of q over every 16 values.
template <int QK>
struct ActBlock {
  float d;
  int16_t bsum[QK / 16];
  int8_t q[QK];
};

// A weight block unpacked for the integer dot product: element j is dw * sc[j / 16] * w[j] -
// mw * o[j / 16] (w >= 0 except for Q8_0; |w| <= 128).
struct Unpacked {
  alignas(64) int8_t w[kQK_K];
  alignas(16) int16_t sc[kQK_K / 16];
  int16_t o[kQK_K / 16];
  float dw;
  float mw;
};

// Rounded as llama.cpp rounds its activations (quantize_row_q8_0 / q8_K), so that scores agree
// with it closely: blocks of 32 scale by amax / 127 with the scale stored as FP16 and values
// rounded half away from zero; blocks of 256 scale by -max / 127 (max the value of largest
// magnitude), values rounded to nearest even.
template <int QK>
void QuantizeActs(const float* x, int64_t cols, ActBlock<QK>* out) {
  for (int64_t b = 0; b < cols / QK; ++b) {
    const float* xb = x + b * QK;
    float amax = 0, max = 0;
    for (int j = 0; j < QK; ++j) {
      if (std::fabs(xb[j]) > amax) {
        amax = std::fabs(xb[j]);
        max = xb[j];
      }
    }
    ActBlock<QK>& a = out[b];
    int q[QK];
    if (amax == 0) {
      a.d = 0;
      for (int j = 0; j < QK; ++j) q[j] = 0;
    } else if constexpr (QK == kQK) {
      const float d = amax / 127;
      const float id = 1.0f / d;
      a.d = Fp16ToFloat(FloatToFp16(d));
      for (int j = 0; j < QK; ++j) q[j] = static_cast<int>(std::round(xb[j] * id));
    } else {
      const float iscale = -127.0f / max;
      a.d = 1.0f / iscale;
      for (int j = 0; j < QK; ++j) q[j] = static_cast<int>(std::nearbyint(iscale * xb[j]));
    }
    for (int s = 0; s < QK / 16; ++s) {
      int sum = 0;
      for (int l = 0; l < 16; ++l) {
        const int v = std::min(127, std::max(-127, q[16 * s + l]));
        a.q[16 * s + l] = static_cast<int8_t>(v);
        sum += v;
      }
      a.bsum[s] = static_cast<int16_t>(sum);
    }
  }
}

void SetUniform(Unpacked* u, int subs, int16_t sc, int16_t o) {
  for (int s = 0; s < subs; ++s) {
    u->sc[s] = sc;
    u->o[s] = o;
  }
}

__attribute__((always_inline)) inline void Unpack(DType t, const uint8_t* p, Unpacked* u) {
  switch (t) {
    case DType::kQ8_0: {
      const auto* b = reinterpret_cast<const BlockQ8_0*>(p);
      std::memcpy(u->w, b->qs, kQK);
      SetUniform(u, 2, 1, 0);
      u->dw = Fp16ToFloat(b->d);
      u->mw = 0;
      return;
    }
    case DType::kQ4_0:
    case DType::kQ4_1: {
      const uint8_t* qs = t == DType::kQ4_0 ? reinterpret_cast<const BlockQ4_0*>(p)->qs
                                            : reinterpret_cast<const BlockQ4_1*>(p)->qs;
      for (int j = 0; j < kQK / 2; ++j) {
        u->w[j] = static_cast<int8_t>(qs[j] & 0xF);
        u->w[j + kQK / 2] = static_cast<int8_t>(qs[j] >> 4);
      }
      if (t == DType::kQ4_0) {
        const auto* b = reinterpret_cast<const BlockQ4_0*>(p);
        SetUniform(u, 2, 1, 8);
        u->dw = u->mw = Fp16ToFloat(b->d);
      } else {
        const auto* b = reinterpret_cast<const BlockQ4_1*>(p);
        SetUniform(u, 2, 1, 1);
        u->dw = Fp16ToFloat(b->d);
        u->mw = -Fp16ToFloat(b->m);
      }
      return;
    }
    case DType::kQ5_0:
    case DType::kQ5_1: {
      const bool q50 = t == DType::kQ5_0;
      const uint8_t* qs = q50 ? reinterpret_cast<const BlockQ5_0*>(p)->qs
                              : reinterpret_cast<const BlockQ5_1*>(p)->qs;
      const uint8_t* qhp = q50 ? reinterpret_cast<const BlockQ5_0*>(p)->qh
                               : reinterpret_cast<const BlockQ5_1*>(p)->qh;
      uint32_t qh;
      std::memcpy(&qh, qhp, 4);
      for (int j = 0; j < kQK / 2; ++j) {
        u->w[j] = static_cast<int8_t>((qs[j] & 0xF) | (((qh >> j) << 4) & 0x10));
        u->w[j + kQK / 2] = static_cast<int8_t>((qs[j] >> 4) | ((qh >> (j + 12)) & 0x10));
      }
      if (q50) {
        SetUniform(u, 2, 1, 16);
        u->dw = u->mw = Fp16ToFloat(reinterpret_cast<const BlockQ5_0*>(p)->d);
      } else {
        const auto* b = reinterpret_cast<const BlockQ5_1*>(p);
        SetUniform(u, 2, 1, 1);
        u->dw = Fp16ToFloat(b->d);
        u->mw = -Fp16ToFloat(b->m);
      }
      return;
    }
    case DType::kQ2_K: {
      const auto* b = reinterpret_cast<const BlockQ2_K*>(p);
      for (int h = 0; h < 2; ++h) {
        for (int j = 0; j < 4; ++j) {
          for (int l = 0; l < 32; ++l) {
            u->w[128 * h + 32 * j + l] = static_cast<int8_t>((b->qs[32 * h + l] >> (2 * j)) & 3);
          }
        }
      }
      for (int s = 0; s < 16; ++s) {
        u->sc[s] = b->scales[s] & 0xF;
        u->o[s] = b->scales[s] >> 4;
      }
      u->dw = Fp16ToFloat(b->d);
      u->mw = Fp16ToFloat(b->dmin);
      return;
    }
    case DType::kQ3_K: {
      const auto* b = reinterpret_cast<const BlockQ3_K*>(p);
      for (int h = 0; h < 2; ++h) {
        for (int j = 0; j < 4; ++j) {
          const int bit = 4 * h + j;
          for (int l = 0; l < 32; ++l) {
            const int lo = (b->qs[32 * h + l] >> (2 * j)) & 3;
            const int hi = (b->hmask[l] >> bit) & 1;
            u->w[128 * h + 32 * j + l] = static_cast<int8_t>(lo | (hi << 2));
          }
        }
      }
      int8_t scales[16];
      Q3KScales(b->scales, scales);
      for (int s = 0; s < 16; ++s) {
        u->sc[s] = scales[s];
        u->o[s] = static_cast<int16_t>(4 * scales[s]);
      }
      u->dw = u->mw = Fp16ToFloat(b->d);
      return;
    }
    case DType::kQ4_K:
    case DType::kQ5_K: {
      const bool q5 = t == DType::kQ5_K;
      const uint8_t* scales = q5 ? reinterpret_cast<const BlockQ5_K*>(p)->scales
                                 : reinterpret_cast<const BlockQ4_K*>(p)->scales;
      const uint8_t* qs = q5 ? reinterpret_cast<const BlockQ5_K*>(p)->qs
                             : reinterpret_cast<const BlockQ4_K*>(p)->qs;
      for (int j = 0; j < 4; ++j) {
        for (int l = 0; l < 32; ++l) {
          u->w[64 * j + l] = static_cast<int8_t>(qs[32 * j + l] & 0xF);
          u->w[64 * j + 32 + l] = static_cast<int8_t>(qs[32 * j + l] >> 4);
        }
      }
      if (q5) {
        const uint8_t* qh = reinterpret_cast<const BlockQ5_K*>(p)->qh;
        for (int j = 0; j < 4; ++j) {
          for (int l = 0; l < 32; ++l) {
            u->w[64 * j + l] |= static_cast<int8_t>(((qh[l] >> (2 * j)) & 1) << 4);
            u->w[64 * j + 32 + l] |= static_cast<int8_t>(((qh[l] >> (2 * j + 1)) & 1) << 4);
          }
        }
      }
      for (int j = 0; j < 8; ++j) {
        uint8_t sc, m;
        ScaleMinK4(j, scales, &sc, &m);
        u->sc[2 * j] = u->sc[2 * j + 1] = sc;
        u->o[2 * j] = u->o[2 * j + 1] = m;
      }
      const uint16_t* dd = reinterpret_cast<const uint16_t*>(p);  // d, dmin lead both layouts
      u->dw = Fp16ToFloat(dd[0]);
      u->mw = Fp16ToFloat(dd[1]);
      return;
    }
    case DType::kQ6_K: {
      const auto* b = reinterpret_cast<const BlockQ6_K*>(p);
      for (int h = 0; h < 2; ++h) {
        const uint8_t* ql = b->ql + 64 * h;
        const uint8_t* qh = b->qh + 32 * h;
        int8_t* w = u->w + 128 * h;
        for (int l = 0; l < 32; ++l) {
          w[l] = static_cast<int8_t>((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4));
          w[l + 32] = static_cast<int8_t>((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4));
          w[l + 64] = static_cast<int8_t>((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4));
          w[l + 96] = static_cast<int8_t>((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4));
        }
      }
      for (int s = 0; s < 16; ++s) {
        u->sc[s] = b->scales[s];
        u->o[s] = static_cast<int16_t>(32 * b->scales[s]);
      }
      u->dw = u->mw = Fp16ToFloat(b->d);
      return;
    }
    case DType::kF32:
    case DType::kF16:
    case DType::kBF16:
      break;
  }
  KVSERVE_KERNEL_CHECK(false, "QuantMatMul: not a quantized weight type");
}

// The block's float contribution from its exact integer sums (the same expression on every path).
template <int QK>
inline float Combine(const Unpacked& u, const ActBlock<QK>& a, int32_t isum) {
  int32_t ioff = 0;
  for (int s = 0; s < QK / 16; ++s) ioff += u.o[s] * a.bsum[s];
  const float v = u.dw * static_cast<float>(isum) - u.mw * static_cast<float>(ioff);
  return a.d * v;
}

template <int QK>
inline int32_t DotScalar(const Unpacked& u, const int8_t* x) {
  int32_t isum = 0;
  for (int s = 0; s < QK / 16; ++s) {
    int32_t d = 0;
    for (int l = 0; l < 16; ++l) d += u.w[16 * s + l] * x[16 * s + l];
    isum += u.sc[s] * d;
  }
  return isum;
}

#if defined(KVSERVE_QUANT_X86)
#define KVSERVE_TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
#define KVSERVE_TARGET_VNNI \
  __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")))

template <int QK>
KVSERVE_TARGET_AVX2 inline int32_t DotAvx2(const Unpacked& u, const int8_t* x) {
  __m256i acc = _mm256_setzero_si256();
  for (int c = 0; c < QK / 32; ++c) {
    const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(u.w + 32 * c));
    const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + 32 * c));
    const __m256i p = _mm256_maddubs_epi16(_mm256_abs_epi8(w), _mm256_sign_epi8(xv, w));
    const __m256i sc =
        _mm256_set_m128i(_mm_set1_epi16(u.sc[2 * c + 1]), _mm_set1_epi16(u.sc[2 * c]));
    acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p, sc));
  }
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
  return _mm_cvtsi128_si32(s);
}

template <int QK>
KVSERVE_TARGET_VNNI inline int32_t DotVnni(const Unpacked& u, const int8_t* x) {
  if constexpr (QK == 32) {
    const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(u.w));
    const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x));
    const __m256i p = _mm256_maddubs_epi16(_mm256_abs_epi8(w), _mm256_sign_epi8(xv, w));
    const __m256i sc = _mm256_set_m128i(_mm_set1_epi16(u.sc[1]), _mm_set1_epi16(u.sc[0]));
    const __m256i acc = _mm256_dpwssd_epi32(_mm256_setzero_si256(), p, sc);
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
  } else {
    // int16 lane 8k..8k+7 of a 64-byte chunk covers elements 16k..16k+15: scale k of the chunk.
    const __m512i idx = _mm512_set_epi16(3, 3, 3, 3, 3, 3, 3, 3, 2, 2, 2, 2, 2, 2, 2, 2, 1, 1, 1, 1,
                                         1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    const __m512i zero = _mm512_setzero_si512();
    __m512i acc = _mm512_setzero_si512();
    for (int c = 0; c < QK / 64; ++c) {
      const __m512i w = _mm512_loadu_si512(u.w + 64 * c);
      const __m512i xv = _mm512_loadu_si512(x + 64 * c);
      const __m512i sx = _mm512_mask_sub_epi8(xv, _mm512_movepi8_mask(w), zero, xv);
      const __m512i p = _mm512_maddubs_epi16(_mm512_abs_epi8(w), sx);
      const __m128i s4 = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(u.sc + 4 * c));
      const __m512i sc = _mm512_permutexvar_epi16(idx, _mm512_castsi128_si512(s4));
      acc = _mm512_dpwssd_epi32(acc, p, sc);
    }
    return _mm512_reduce_add_epi32(acc);
  }
}
#endif

// Output rows [r0, r1) of y for all n activation rows; every output summed in block order. T is
// a compile-time constant, so Unpack's type switch folds away. NAME, ATTR and DOT are a function
// name, an attribute and a template name: none can be parenthesized.
// NOLINTBEGIN(bugprone-macro-parentheses)
#define KVSERVE_QUANT_ROWS(NAME, ATTR, DOT)                                                        \
  template <int QK, DType T>                                                                       \
  ATTR void NAME(const uint8_t* w, int64_t row_bytes, int64_t block_bytes, int64_t nb, int64_t r0, \
                 int64_t r1, const ActBlock<QK>* xq, int64_t n, float* y, int64_t ldy) {           \
    Unpacked u;                                                                                    \
    for (int64_t r = r0; r < r1; ++r) {                                                            \
      for (int64_t i = 0; i < n; ++i) y[i * ldy + r] = 0.0f;                                       \
      for (int64_t b = 0; b < nb; ++b) {                                                           \
        Unpack(T, w + r * row_bytes + b * block_bytes, &u);                                        \
        for (int64_t i = 0; i < n; ++i) {                                                          \
          const ActBlock<QK>& a = xq[i * nb + b];                                                  \
          y[i * ldy + r] += Combine<QK>(u, a, DOT<QK>(u, a.q));                                    \
        }                                                                                          \
      }                                                                                            \
    }                                                                                              \
  }
// NOLINTEND(bugprone-macro-parentheses)

KVSERVE_QUANT_ROWS(RowsScalar, , DotScalar)
#if defined(KVSERVE_QUANT_X86)
KVSERVE_QUANT_ROWS(RowsAvx2, KVSERVE_TARGET_AVX2, DotAvx2)
KVSERVE_QUANT_ROWS(RowsVnni, KVSERVE_TARGET_VNNI, DotVnni)
#endif

// The generic row kernel for type t, chosen once per row range.
template <int QK>
using RowsFn = void (*)(const uint8_t*, int64_t, int64_t, int64_t, int64_t, int64_t,
                        const ActBlock<QK>*, int64_t, float*, int64_t);

// FN is a template name: it cannot be parenthesized.
// NOLINTBEGIN(bugprone-macro-parentheses)
#define KVSERVE_QUANT_PICK(FN, QK, t)                                               \
  [&]() -> RowsFn<QK> {                                                             \
    if constexpr ((QK) == kQK) {                                                    \
      switch (t) {                                                                  \
        case DType::kQ8_0:                                                          \
          return FN<QK, DType::kQ8_0>;                                              \
        case DType::kQ4_0:                                                          \
          return FN<QK, DType::kQ4_0>;                                              \
        case DType::kQ4_1:                                                          \
          return FN<QK, DType::kQ4_1>;                                              \
        case DType::kQ5_0:                                                          \
          return FN<QK, DType::kQ5_0>;                                              \
        case DType::kQ5_1:                                                          \
          return FN<QK, DType::kQ5_1>;                                              \
        default:                                                                    \
          break;                                                                    \
      }                                                                             \
    } else {                                                                        \
      switch (t) {                                                                  \
        case DType::kQ2_K:                                                          \
          return FN<QK, DType::kQ2_K>;                                              \
        case DType::kQ3_K:                                                          \
          return FN<QK, DType::kQ3_K>;                                              \
        case DType::kQ4_K:                                                          \
          return FN<QK, DType::kQ4_K>;                                              \
        case DType::kQ5_K:                                                          \
          return FN<QK, DType::kQ5_K>;                                              \
        case DType::kQ6_K:                                                          \
          return FN<QK, DType::kQ6_K>;                                              \
        default:                                                                    \
          break;                                                                    \
      }                                                                             \
    }                                                                               \
    KVSERVE_KERNEL_CHECK(false, "QuantMatMul: block size does not match the type"); \
    return nullptr;                                                                 \
  }()
// NOLINTEND(bugprone-macro-parentheses)

#if defined(KVSERVE_QUANT_X86)
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#endif
#define KVSERVE_QNS x86_avx2
#define KVSERVE_QVNNI 0
#include "kernels/cpu/quant_matmul_x86.inc"
#undef KVSERVE_QNS
#undef KVSERVE_QVNNI
#if defined(__clang__)
#pragma clang attribute pop
#pragma clang attribute push(                                                      \
    __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni"))), \
    apply_to = function)
#else
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")
#endif
#define KVSERVE_QNS x86_vnni
#define KVSERVE_QVNNI 1
#include "kernels/cpu/quant_matmul_x86.inc"
#undef KVSERVE_QNS
#undef KVSERVE_QVNNI
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif

// Multiply-accumulates below which a MatMul stays on the calling thread.
constexpr int64_t kMinParallelMacs = int64_t{1} << 16;

template <int QK>
void Run(QuantKernel k, const float* x, int64_t n, const WeightView& w, float* y,
         ThreadPool* pool) {
  const int64_t nb = w.cols / QK;
  thread_local std::vector<ActBlock<QK>> acts;
  if (static_cast<int64_t>(acts.size()) < n * nb) acts.resize(static_cast<size_t>(n * nb));
  for (int64_t i = 0; i < n; ++i) {
    ActBlock<QK>* xi = acts.data() + i * nb;
#if defined(KVSERVE_QUANT_X86)
    if (k == QuantKernel::kAvx512Vnni || k == QuantKernel::kAvx2) {
      const bool vnni = k == QuantKernel::kAvx512Vnni;
      if constexpr (QK == kQK_K) {
        (vnni ? x86_vnni::QuantizeActsK : x86_avx2::QuantizeActsK)(x + i * w.cols, nb, xi);
      } else {
        (vnni ? x86_vnni::QuantizeActs32 : x86_avx2::QuantizeActs32)(x + i * w.cols, nb, xi);
      }
      continue;
    }
#endif
    QuantizeActs<QK>(x + i * w.cols, w.cols, xi);
  }
  const ActBlock<QK>* xq = acts.data();
  const auto* base = static_cast<const uint8_t*>(w.data);
  const int64_t block_bytes = DTypeBlockBytes(w.dtype);
  const int64_t row_bytes = nb * block_bytes;
  // One dispatch per row range: a per-type SIMD kernel where there is one (it may leave a few
  // tail rows), the generic per-type kernel for the rest. Both give the same bits per output.
  auto rows = [&](int64_t r0, int64_t r1) {
    switch (k) {
#if defined(KVSERVE_QUANT_X86)
      case QuantKernel::kAvx512Vnni: {
        int64_t done = r0;
        if constexpr (QK == kQK) {
          x86_vnni::Rows32(w.dtype, base, row_bytes, nb, r0, r1, xq, n, y, w.rows, &done);
        } else {
          x86_vnni::Rows256(w.dtype, base, row_bytes, nb, r0, r1, xq, n, y, w.rows, &done);
        }
        if (done < r1) {
          KVSERVE_QUANT_PICK(RowsVnni, QK, w.dtype)
          (base, row_bytes, block_bytes, nb, done, r1, xq, n, y, w.rows);
        }
        return;
      }
      case QuantKernel::kAvx2: {
        int64_t done = r0;
        if constexpr (QK == kQK) {
          x86_avx2::Rows32(w.dtype, base, row_bytes, nb, r0, r1, xq, n, y, w.rows, &done);
        } else {
          x86_avx2::Rows256(w.dtype, base, row_bytes, nb, r0, r1, xq, n, y, w.rows, &done);
        }
        if (done < r1) {
          KVSERVE_QUANT_PICK(RowsAvx2, QK, w.dtype)
          (base, row_bytes, block_bytes, nb, done, r1, xq, n, y, w.rows);
        }
        return;
      }
#endif
      default:
        KVSERVE_QUANT_PICK(RowsScalar, QK, w.dtype)
        (base, row_bytes, block_bytes, nb, r0, r1, xq, n, y, w.rows);
    }
  };
  if (pool == nullptr || pool->num_threads() == 1 || n * w.rows * w.cols < kMinParallelMacs) {
    rows(0, w.rows);
    return;
  }
  pool->ParallelFor(w.rows, 8, rows);
}

}  // namespace

bool QuantKernelSupported(QuantKernel k) {
  switch (k) {
    case QuantKernel::kScalar:
      return true;
#if defined(KVSERVE_QUANT_X86)
    case QuantKernel::kAvx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case QuantKernel::kAvx512Vnni:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
#else
    default:
      return false;
#endif
  }
  return false;
}

QuantKernel BestQuantKernel() {
  static const QuantKernel best = [] {
    if (QuantKernelSupported(QuantKernel::kAvx512Vnni)) return QuantKernel::kAvx512Vnni;
    if (QuantKernelSupported(QuantKernel::kAvx2)) return QuantKernel::kAvx2;
    return QuantKernel::kScalar;
  }();
  return best;
}

const char* QuantKernelName(QuantKernel k) {
  switch (k) {
    case QuantKernel::kScalar:
      return "scalar";
    case QuantKernel::kAvx2:
      return "avx2";
    case QuantKernel::kAvx512Vnni:
      return "avx512vnni";
  }
  return "?";
}

void QuantMatMulWith(QuantKernel k, const float* x, int64_t n, const WeightView& w, float* y,
                     ThreadPool* pool) {
  KVSERVE_KERNEL_CHECK(IsQuantized(w.dtype), "QuantMatMul: dense weights");
  KVSERVE_KERNEL_CHECK(QuantKernelSupported(k), "QuantMatMul: path not supported on this CPU");
  const int64_t qk = DTypeBlockSize(w.dtype);
  KVSERVE_KERNEL_CHECK(w.cols % qk == 0, "QuantMatMul: cols not a multiple of the block size");
  if (n <= 0 || w.rows <= 0) return;
  if (qk == kQK) {
    Run<kQK>(k, x, n, w, y, pool);
  } else {
    Run<kQK_K>(k, x, n, w, y, pool);
  }
}

void QuantMatMul(const float* x, int64_t n, const WeightView& w, float* y, ThreadPool* pool) {
  QuantMatMulWith(BestQuantKernel(), x, n, w, y, pool);
}

}  // namespace kvserve::kernels::cpu
