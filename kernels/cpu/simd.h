// SIMD backends for the CPU kernels: each kernel is written once as a template over a backend and
// instantiated for the backends the build targets.
//
// A backend is a struct of static functions over its register type `Reg` of kLanes float lanes:
//   VecAvx512  16 lanes: AVX-512F/BW/VL/DQ with F16C and FMA.
//   VecAvx2     8 lanes: AVX2 with FMA and F16C (uses AVX-512VL masked loads where available).
//   VecScalar   8 lanes emulated in plain C++, for any other CPU.
// Beyond loads, stores and arithmetic a backend offers horizontal reductions (ReduceAdd,
// Reduce4Store, TransposeReduce), an in-register kLanes x kLanes Transpose and Exp.
// VecWide is the widest backend available; VecNarrow has 8 lanes and is used for rows of <= 8
// values, where a 16-lane register would be half empty.
//
// Memory element types are float, Fp16 and Bf16 (IEEE half and bfloat16 bit patterns); Load*
// widens them to float in registers, Store* narrows with round-to-nearest-even. LoadN/StoreN touch
// only the first n elements (0 <= n <= kLanes) and never read or write past them; LoadN fills the
// other lanes with zero.
//
// Defining KVSERVE_KERNELS_SCALAR forces the scalar backend (to test it on x86).
#ifndef KVSERVE_KERNELS_CPU_SIMD_H_
#define KVSERVE_KERNELS_CPU_SIMD_H_

#include <cmath>
#include <cstdint>
#include <cstring>
#include <utility>

#include "kernels/dtype.h"

#if !defined(KVSERVE_KERNELS_SCALAR) && defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define KVSERVE_SIMD_AVX2 1
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512DQ__)
#define KVSERVE_SIMD_AVX512 1
#endif
#endif

#if defined(KVSERVE_SIMD_AVX2)
// GCC 12's AVX-512 intrinsics trip -Wuninitialized on their own _mm512_undefined_* (GCC PR105593);
// the diagnostics point into the header, so silencing them around the include is enough.
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

// For micro-kernels whose register tiles only work out once inlined into their loops.
#if defined(__GNUC__)
#define KVSERVE_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define KVSERVE_ALWAYS_INLINE inline
#endif

namespace kvserve::kernels::cpu::simd {

// Bit patterns of 16-bit floating-point elements in memory.
struct Fp16 {
  uint16_t bits;
};
struct Bf16 {
  uint16_t bits;
};
static_assert(sizeof(Fp16) == 2 && sizeof(Bf16) == 2);

// Constants of the exp approximation (Cephes expf): |relative error| < 2e-7 on the clamped range.
inline constexpr float kExpLo = -87.33654f;  // exp(kExpLo) ~ FLT_MIN
inline constexpr float kExpHi = 88.37626f;   // keeps 2^n finite
inline constexpr float kLog2e = 1.44269504088896341f;
inline constexpr float kLn2Hi = 0.693359375f;
inline constexpr float kLn2Lo = -2.12194440e-4f;
inline constexpr float kExpP0 = 1.9875691500e-4f;
inline constexpr float kExpP1 = 1.3981999507e-3f;
inline constexpr float kExpP2 = 8.3334519073e-3f;
inline constexpr float kExpP3 = 4.1665795894e-2f;
inline constexpr float kExpP4 = 1.6666665459e-1f;
inline constexpr float kExpP5 = 5.0000001201e-1f;

#if defined(KVSERVE_SIMD_AVX512)

struct VecAvx512 {
  using Reg = __m512;
  static constexpr int kLanes = 16;
  static constexpr const char* kName = "avx512";

  static __mmask16 Mask(int n) { return static_cast<__mmask16>((1u << n) - 1u); }
  static Reg Zero() { return _mm512_setzero_ps(); }
  static Reg Set1(float x) { return _mm512_set1_ps(x); }

  static Reg WidenBf16(__m256i h) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
  static Reg Load(const float* p) { return _mm512_loadu_ps(p); }
  static Reg Load(const Fp16* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static Reg Load(const Bf16* p) {
    return WidenBf16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static Reg LoadN(const float* p, int n) { return _mm512_maskz_loadu_ps(Mask(n), p); }
  static Reg LoadN(const Fp16* p, int n) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(Mask(n), p));
  }
  static Reg LoadN(const Bf16* p, int n) { return WidenBf16(_mm256_maskz_loadu_epi16(Mask(n), p)); }

  static __m256i NarrowFp16(Reg v) {
    return _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  }
  static __m256i NarrowBf16(Reg v) {
    const __m512i x = _mm512_castps_si512(v);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(x, 16), _mm512_set1_epi32(1));
    const __m512i bias = _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff));
    __m512i r = _mm512_srli_epi32(_mm512_add_epi32(x, bias), 16);
    const __mmask16 nan = _mm512_cmpgt_epu32_mask(
        _mm512_and_si512(x, _mm512_set1_epi32(0x7fffffff)), _mm512_set1_epi32(0x7f800000));
    r = _mm512_mask_or_epi32(r, nan, _mm512_srli_epi32(x, 16), _mm512_set1_epi32(0x40));
    return _mm512_cvtepi32_epi16(r);
  }
  static void Store(float* p, Reg v) { _mm512_storeu_ps(p, v); }
  static void Store(Fp16* p, Reg v) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), NarrowFp16(v));
  }
  static void Store(Bf16* p, Reg v) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), NarrowBf16(v));
  }
  static void StoreN(float* p, Reg v, int n) { _mm512_mask_storeu_ps(p, Mask(n), v); }
  static void StoreN(Fp16* p, Reg v, int n) { _mm256_mask_storeu_epi16(p, Mask(n), NarrowFp16(v)); }
  static void StoreN(Bf16* p, Reg v, int n) { _mm256_mask_storeu_epi16(p, Mask(n), NarrowBf16(v)); }

  static Reg Add(Reg a, Reg b) { return _mm512_add_ps(a, b); }
  static Reg Sub(Reg a, Reg b) { return _mm512_sub_ps(a, b); }
  static Reg Mul(Reg a, Reg b) { return _mm512_mul_ps(a, b); }
  static Reg Div(Reg a, Reg b) { return _mm512_div_ps(a, b); }
  static Reg Max(Reg a, Reg b) { return _mm512_max_ps(a, b); }
  static Reg Fma(Reg a, Reg b, Reg c) { return _mm512_fmadd_ps(a, b, c); }  // a * b + c
  // Lanes >= n become zero / x.
  static Reg ZeroFrom(Reg v, int n) { return _mm512_maskz_mov_ps(Mask(n), v); }
  static Reg FillFrom(Reg v, int n, float x) {
    return _mm512_mask_blend_ps(Mask(n), _mm512_set1_ps(x), v);
  }

  static float ReduceAdd(Reg v) { return _mm512_reduce_add_ps(v); }
  static float ReduceMax(Reg v) { return _mm512_reduce_max_ps(v); }

  // out[0..3] = horizontal sums of a, b, c, d.
  static void Reduce4Store(Reg a, Reg b, Reg c, Reg d, float* out) {
    const Reg t0 = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
    const Reg t1 = _mm512_add_ps(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
    const Reg u = _mm512_add_ps(_mm512_shuffle_ps(t0, t1, 0x44), _mm512_shuffle_ps(t0, t1, 0xee));
    const __m256 s = _mm256_add_ps(_mm512_castps512_ps256(u), _mm512_extractf32x8_ps(u, 1));
    _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1)));
  }

  // Lane i of the result = horizontal sum of in[i], for in[0..kLanes).
  static Reg TransposeReduce(const Reg* in) {
    Reg t[8];
    for (int k = 0; k < 8; ++k) {
      t[k] = _mm512_add_ps(_mm512_unpacklo_ps(in[2 * k], in[2 * k + 1]),
                           _mm512_unpackhi_ps(in[2 * k], in[2 * k + 1]));
    }
    Reg u[4];
    for (int k = 0; k < 4; ++k) {
      u[k] = _mm512_add_ps(_mm512_shuffle_ps(t[2 * k], t[2 * k + 1], 0x44),
                           _mm512_shuffle_ps(t[2 * k], t[2 * k + 1], 0xee));
    }
    const Reg w0 = _mm512_add_ps(_mm512_shuffle_f32x4(u[0], u[1], 0x44),
                                 _mm512_shuffle_f32x4(u[0], u[1], 0xee));
    const Reg w1 = _mm512_add_ps(_mm512_shuffle_f32x4(u[2], u[3], 0x44),
                                 _mm512_shuffle_f32x4(u[2], u[3], 0xee));
    return _mm512_add_ps(_mm512_shuffle_f32x4(w0, w1, 0x88), _mm512_shuffle_f32x4(w0, w1, 0xdd));
  }

  // In place: r[i] lane j <- r[j] lane i, for r[0..kLanes).
  static void Transpose(Reg* r) {
    Reg t[16];
    for (int k = 0; k < 8; ++k) {
      t[2 * k] = _mm512_unpacklo_ps(r[2 * k], r[2 * k + 1]);
      t[2 * k + 1] = _mm512_unpackhi_ps(r[2 * k], r[2 * k + 1]);
    }
    for (int k = 0; k < 4; ++k) {
      const __m512d a = _mm512_castps_pd(t[4 * k]), b = _mm512_castps_pd(t[4 * k + 1]);
      const __m512d c = _mm512_castps_pd(t[4 * k + 2]), d = _mm512_castps_pd(t[4 * k + 3]);
      r[4 * k] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
      r[4 * k + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
      r[4 * k + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
      r[4 * k + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
    }
    for (int h = 0; h < 2; ++h) {
      for (int k = 0; k < 4; ++k) {
        t[8 * h + k] = _mm512_shuffle_f32x4(r[8 * h + k], r[8 * h + 4 + k], 0x88);
        t[8 * h + 4 + k] = _mm512_shuffle_f32x4(r[8 * h + k], r[8 * h + 4 + k], 0xdd);
      }
    }
    for (int k = 0; k < 8; ++k) {
      r[k] = _mm512_shuffle_f32x4(t[k], t[8 + k], 0x88);
      r[8 + k] = _mm512_shuffle_f32x4(t[k], t[8 + k], 0xdd);
    }
  }

  static Reg Exp(Reg x) {
    x = _mm512_min_ps(_mm512_max_ps(x, Set1(kExpLo)), Set1(kExpHi));
    const Reg n = _mm512_roundscale_ps(_mm512_mul_ps(x, Set1(kLog2e)),
                                       _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    Reg r = _mm512_fnmadd_ps(n, Set1(kLn2Hi), x);
    r = _mm512_fnmadd_ps(n, Set1(kLn2Lo), r);
    Reg p = Set1(kExpP0);
    p = Fma(p, r, Set1(kExpP1));
    p = Fma(p, r, Set1(kExpP2));
    p = Fma(p, r, Set1(kExpP3));
    p = Fma(p, r, Set1(kExpP4));
    p = Fma(p, r, Set1(kExpP5));
    const Reg y = _mm512_add_ps(Fma(p, _mm512_mul_ps(r, r), r), Set1(1.0f));
    return _mm512_scalef_ps(y, n);
  }
};

#endif  // KVSERVE_SIMD_AVX512

#if defined(KVSERVE_SIMD_AVX2)

struct VecAvx2 {
  using Reg = __m256;
  static constexpr int kLanes = 8;
  static constexpr const char* kName = "avx2";

  static __m256i MaskI(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static Reg Zero() { return _mm256_setzero_ps(); }
  static Reg Set1(float x) { return _mm256_set1_ps(x); }

  static Reg WidenBf16(__m128i h) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
  static __m128i Load8x16(const void* p) {
    return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  }
  static __m128i Load8x16N(const void* p, int n) {
#if defined(KVSERVE_SIMD_AVX512)
    return _mm_maskz_loadu_epi16(static_cast<__mmask8>((1u << n) - 1u), p);
#else
    alignas(16) uint16_t buf[8] = {};
    std::memcpy(buf, p, static_cast<size_t>(n) * 2);
    return _mm_load_si128(reinterpret_cast<const __m128i*>(buf));
#endif
  }
  static void Store8x16N(void* p, __m128i h, int n) {
#if defined(KVSERVE_SIMD_AVX512)
    _mm_mask_storeu_epi16(p, static_cast<__mmask8>((1u << n) - 1u), h);
#else
    alignas(16) uint16_t buf[8];
    _mm_store_si128(reinterpret_cast<__m128i*>(buf), h);
    std::memcpy(p, buf, static_cast<size_t>(n) * 2);
#endif
  }

  static Reg Load(const float* p) { return _mm256_loadu_ps(p); }
  static Reg Load(const Fp16* p) { return _mm256_cvtph_ps(Load8x16(p)); }
  static Reg Load(const Bf16* p) { return WidenBf16(Load8x16(p)); }
  static Reg LoadN(const float* p, int n) {
#if defined(KVSERVE_SIMD_AVX512)
    return _mm256_maskz_loadu_ps(static_cast<__mmask8>((1u << n) - 1u), p);
#else
    return _mm256_maskload_ps(p, MaskI(n));
#endif
  }
  static Reg LoadN(const Fp16* p, int n) { return _mm256_cvtph_ps(Load8x16N(p, n)); }
  static Reg LoadN(const Bf16* p, int n) { return WidenBf16(Load8x16N(p, n)); }

  static __m128i NarrowFp16(Reg v) {
    return _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  }
  static __m128i NarrowBf16(Reg v) {
    const __m256i x = _mm256_castps_si256(v);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(x, 16), _mm256_set1_epi32(1));
    const __m256i bias = _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff));
    const __m256i r = _mm256_srli_epi32(_mm256_add_epi32(x, bias), 16);
    const __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(x, _mm256_set1_epi32(0x7fffffff)),
                                           _mm256_set1_epi32(0x7f800000));
    const __m256i q = _mm256_or_si256(_mm256_srli_epi32(x, 16), _mm256_set1_epi32(0x40));
    const __m256i sel = _mm256_blendv_epi8(r, q, nan);
    const __m256i packed = _mm256_packus_epi32(sel, sel);
    return _mm256_castsi256_si128(_mm256_permute4x64_epi64(packed, 0xd8));
  }
  static void Store(float* p, Reg v) { _mm256_storeu_ps(p, v); }
  static void Store(Fp16* p, Reg v) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), NarrowFp16(v));
  }
  static void Store(Bf16* p, Reg v) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), NarrowBf16(v));
  }
  static void StoreN(float* p, Reg v, int n) {
#if defined(KVSERVE_SIMD_AVX512)
    _mm256_mask_storeu_ps(p, static_cast<__mmask8>((1u << n) - 1u), v);
#else
    _mm256_maskstore_ps(p, MaskI(n), v);
#endif
  }
  static void StoreN(Fp16* p, Reg v, int n) { Store8x16N(p, NarrowFp16(v), n); }
  static void StoreN(Bf16* p, Reg v, int n) { Store8x16N(p, NarrowBf16(v), n); }

  static Reg Add(Reg a, Reg b) { return _mm256_add_ps(a, b); }
  static Reg Sub(Reg a, Reg b) { return _mm256_sub_ps(a, b); }
  static Reg Mul(Reg a, Reg b) { return _mm256_mul_ps(a, b); }
  static Reg Div(Reg a, Reg b) { return _mm256_div_ps(a, b); }
  static Reg Max(Reg a, Reg b) { return _mm256_max_ps(a, b); }
  static Reg Fma(Reg a, Reg b, Reg c) { return _mm256_fmadd_ps(a, b, c); }
  static Reg ZeroFrom(Reg v, int n) { return _mm256_and_ps(v, _mm256_castsi256_ps(MaskI(n))); }
  static Reg FillFrom(Reg v, int n, float x) {
    return _mm256_blendv_ps(_mm256_set1_ps(x), v, _mm256_castsi256_ps(MaskI(n)));
  }

  static float ReduceAdd(Reg v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static float ReduceMax(Reg v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static void Reduce4Store(Reg a, Reg b, Reg c, Reg d, float* out) {
    const Reg t0 = _mm256_add_ps(_mm256_unpacklo_ps(a, b), _mm256_unpackhi_ps(a, b));
    const Reg t1 = _mm256_add_ps(_mm256_unpacklo_ps(c, d), _mm256_unpackhi_ps(c, d));
    const Reg u = _mm256_add_ps(_mm256_shuffle_ps(t0, t1, 0x44), _mm256_shuffle_ps(t0, t1, 0xee));
    _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(u), _mm256_extractf128_ps(u, 1)));
  }
  static Reg TransposeReduce(const Reg* in) {
    Reg t[4];
    for (int k = 0; k < 4; ++k) {
      t[k] = _mm256_add_ps(_mm256_unpacklo_ps(in[2 * k], in[2 * k + 1]),
                           _mm256_unpackhi_ps(in[2 * k], in[2 * k + 1]));
    }
    const Reg u0 =
        _mm256_add_ps(_mm256_shuffle_ps(t[0], t[1], 0x44), _mm256_shuffle_ps(t[0], t[1], 0xee));
    const Reg u1 =
        _mm256_add_ps(_mm256_shuffle_ps(t[2], t[3], 0x44), _mm256_shuffle_ps(t[2], t[3], 0xee));
    return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20),
                         _mm256_permute2f128_ps(u0, u1, 0x31));
  }

  static void Transpose(Reg* r) {
    Reg t[8];
    for (int k = 0; k < 4; ++k) {
      t[2 * k] = _mm256_unpacklo_ps(r[2 * k], r[2 * k + 1]);
      t[2 * k + 1] = _mm256_unpackhi_ps(r[2 * k], r[2 * k + 1]);
    }
    Reg u[8];
    for (int h = 0; h < 2; ++h) {
      u[4 * h] = _mm256_shuffle_ps(t[4 * h], t[4 * h + 2], 0x44);
      u[4 * h + 1] = _mm256_shuffle_ps(t[4 * h], t[4 * h + 2], 0xee);
      u[4 * h + 2] = _mm256_shuffle_ps(t[4 * h + 1], t[4 * h + 3], 0x44);
      u[4 * h + 3] = _mm256_shuffle_ps(t[4 * h + 1], t[4 * h + 3], 0xee);
    }
    for (int k = 0; k < 4; ++k) {
      r[k] = _mm256_permute2f128_ps(u[k], u[4 + k], 0x20);
      r[4 + k] = _mm256_permute2f128_ps(u[k], u[4 + k], 0x31);
    }
  }

  static Reg Exp(Reg x) {
    x = _mm256_min_ps(_mm256_max_ps(x, Set1(kExpLo)), Set1(kExpHi));
    const Reg n = _mm256_round_ps(_mm256_mul_ps(x, Set1(kLog2e)),
                                  _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    Reg r = _mm256_fnmadd_ps(n, Set1(kLn2Hi), x);
    r = _mm256_fnmadd_ps(n, Set1(kLn2Lo), r);
    Reg p = Set1(kExpP0);
    p = Fma(p, r, Set1(kExpP1));
    p = Fma(p, r, Set1(kExpP2));
    p = Fma(p, r, Set1(kExpP3));
    p = Fma(p, r, Set1(kExpP4));
    p = Fma(p, r, Set1(kExpP5));
    const Reg y = _mm256_add_ps(Fma(p, _mm256_mul_ps(r, r), r), Set1(1.0f));
    const __m256i e =
        _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
  }
};

#endif  // KVSERVE_SIMD_AVX2

// Portable backend: 8 lanes in plain arrays (compilers vectorize the loops where they can).
struct VecScalar {
  struct Reg {
    float v[8];
  };
  static constexpr int kLanes = 8;
  static constexpr const char* kName = "scalar";

  static Reg Zero() { return Reg{}; }
  static Reg Set1(float x) {
    Reg r;
    for (float& e : r.v) e = x;
    return r;
  }
  static float ToFloat(float x) { return x; }
  static float ToFloat(Fp16 x) { return Fp16ToFloat(x.bits); }
  static float ToFloat(Bf16 x) { return Bf16ToFloat(x.bits); }
  static void FromFloat(float x, float* p) { *p = x; }
  static void FromFloat(float x, Fp16* p) { p->bits = FloatToFp16(x); }
  static void FromFloat(float x, Bf16* p) { p->bits = FloatToBf16(x); }

  template <class T>
  static Reg Load(const T* p) {
    Reg r;
    for (int i = 0; i < kLanes; ++i) r.v[i] = ToFloat(p[i]);
    return r;
  }
  template <class T>
  static Reg LoadN(const T* p, int n) {
    Reg r{};
    for (int i = 0; i < n; ++i) r.v[i] = ToFloat(p[i]);
    return r;
  }
  template <class T>
  static void Store(T* p, Reg v) {
    for (int i = 0; i < kLanes; ++i) FromFloat(v.v[i], p + i);
  }
  template <class T>
  static void StoreN(T* p, Reg v, int n) {
    for (int i = 0; i < n; ++i) FromFloat(v.v[i], p + i);
  }

  template <class F>
  static Reg Map2(Reg a, Reg b, F f) {
    Reg r;
    for (int i = 0; i < kLanes; ++i) r.v[i] = f(a.v[i], b.v[i]);
    return r;
  }
  static Reg Add(Reg a, Reg b) {
    return Map2(a, b, [](float x, float y) { return x + y; });
  }
  static Reg Sub(Reg a, Reg b) {
    return Map2(a, b, [](float x, float y) { return x - y; });
  }
  static Reg Mul(Reg a, Reg b) {
    return Map2(a, b, [](float x, float y) { return x * y; });
  }
  static Reg Div(Reg a, Reg b) {
    return Map2(a, b, [](float x, float y) { return x / y; });
  }
  static Reg Max(Reg a, Reg b) {
    return Map2(a, b, [](float x, float y) { return x > y ? x : y; });
  }
  static Reg Fma(Reg a, Reg b, Reg c) {
    Reg r;
    for (int i = 0; i < kLanes; ++i)
      r.v[i] = std::fma(a.v[i], b.v[i], c.v[i]);  // fused, as the SIMD backends
    return r;
  }
  static Reg ZeroFrom(Reg v, int n) { return FillFrom(v, n, 0.0f); }
  static Reg FillFrom(Reg v, int n, float x) {
    for (int i = n; i < kLanes; ++i) v.v[i] = x;
    return v;
  }
  static float ReduceAdd(Reg v) {
    float s = 0.0f;
    for (float e : v.v) s += e;
    return s;
  }
  static float ReduceMax(Reg v) {
    float m = v.v[0];
    for (float e : v.v) m = e > m ? e : m;
    return m;
  }
  static void Reduce4Store(Reg a, Reg b, Reg c, Reg d, float* out) {
    out[0] = ReduceAdd(a);
    out[1] = ReduceAdd(b);
    out[2] = ReduceAdd(c);
    out[3] = ReduceAdd(d);
  }
  static Reg TransposeReduce(const Reg* in) {
    Reg r;
    for (int i = 0; i < kLanes; ++i) r.v[i] = ReduceAdd(in[i]);
    return r;
  }
  static void Transpose(Reg* r) {
    for (int i = 0; i < kLanes; ++i) {
      for (int j = i + 1; j < kLanes; ++j) std::swap(r[i].v[j], r[j].v[i]);
    }
  }
  static Reg Exp(Reg x) {
    Reg r;
    for (int i = 0; i < kLanes; ++i) {
      const float c = x.v[i] < kExpLo ? kExpLo : (x.v[i] > kExpHi ? kExpHi : x.v[i]);
      r.v[i] = std::exp(c);
    }
    return r;
  }
};

#if defined(KVSERVE_SIMD_AVX512)
using VecWide = VecAvx512;
using VecNarrow = VecAvx2;
#elif defined(KVSERVE_SIMD_AVX2)
using VecWide = VecAvx2;
using VecNarrow = VecAvx2;
#else
using VecWide = VecScalar;
using VecNarrow = VecScalar;
#endif

// Asks for the cache lines of [p, p + bytes) to be brought into L2 (a hint; never faults). L2
// rather than L1: it has the miss buffers to keep a whole block's lines in flight. On x86 the
// instruction is issued through asm volatile: GCC deletes loops of __builtin_prefetch once they
// are inlined into some callers.
inline void PrefetchBytes(const void* p, int64_t bytes) {
  const char* c = static_cast<const char*>(p);
  const char* end = c + bytes;
  // Down to the start of c's 64-byte line, by pointer arithmetic (no integer-to-pointer cast).
  for (c -= reinterpret_cast<uintptr_t>(c) & uintptr_t{63}; c < end; c += 64) {
#if defined(__x86_64__) && defined(__GNUC__)
    asm volatile("prefetcht1 %0" : : "m"(*c));
#else
    __builtin_prefetch(c, 0, 2);
#endif
  }
}

// out[0, n) = in[0, n) converted element by element (float <-> Fp16 / Bf16, or a copy).
template <class V, class Src, class Dst>
inline void ConvertRow(const Src* in, int64_t n, Dst* out) {
  int64_t i = 0;
  for (; i + V::kLanes <= n; i += V::kLanes) V::Store(out + i, V::Load(in + i));
  if (i < n) V::StoreN(out + i, V::LoadN(in + i, static_cast<int>(n - i)), static_cast<int>(n - i));
}

}  // namespace kvserve::kernels::cpu::simd

#endif  // KVSERVE_KERNELS_CPU_SIMD_H_
