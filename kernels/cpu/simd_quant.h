// Quantized-code loads and stores for the SIMD backends of simd.h: what the KV codecs need on top
// of float / FP16 / BF16 (kernels/kv_format.h defines the codes).
//
// QuantIo<V> is a struct of static functions over V::Reg:
//   decoders  I8, U4, U2, E2m1, E4m3x256 read n codes (0 < n <= V::kLanes) starting at a byte
//             boundary and return them as floats, lanes >= n zero. They read exactly the bytes
//             that hold the n codes. U4 / E2m1 / U2 codes are packed low bits first (see
//             kv_format.h); E4m3x256 returns the E4M3 value times 2^-8 (the scale of the region
//             folds the 2^8 back in). LogScale returns KvLogScale(code) of n u8 codes,
//             LogScaleZero the same and the zero of n {u8 code, i8 zero} pairs.
//   encoders  Round (nearest, ties to even), Min, Abs, and stores of n integral float lanes as
//             I8 / U4 / U2 codes, and of float lanes as E4M3 (|y| <= 448) or E2M1 (|y| <= 6)
//             codes, rounding to nearest even. Stores write exactly the bytes of the n codes (a
//             partial last byte gets zero bits above the last code).
// The generic template works for any backend through a float buffer; the AVX-512 and AVX2
// specialisations replace the functions the attention and quantization loops use.
#ifndef KVSERVE_KERNELS_CPU_SIMD_QUANT_H_
#define KVSERVE_KERNELS_CPU_SIMD_QUANT_H_

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "kernels/cpu/simd.h"
#include "kernels/kv_format.h"

namespace kvserve::kernels::cpu::simd {

// KvLogScale of every u8 code, and the value of every E4M3 code.
inline constexpr std::array<float, 256> kLogScaleTable = [] {
  std::array<float, 256> t{};
  for (int i = 0; i < 256; ++i) t[i] = KvLogScale(i);
  return t;
}();
inline constexpr std::array<float, 256> kE4m3Table = [] {
  std::array<float, 256> t{};
  for (int i = 0; i < 256; ++i) t[i] = KvE4m3ToFloat(static_cast<uint8_t>(i));
  return t;
}();

// Scalar encoders shared by every backend (and by the tests' expectations).
inline uint8_t EncodeE4m3(float y) {  // |y| <= 448 after clamping; nearest, ties to even
  y = std::clamp(y, -kKvE4m3Max, kKvE4m3Max);
  uint32_t bits;
  std::memcpy(&bits, &y, 4);
  const uint32_t sign = (bits >> 24) & 0x80u;
  const uint32_t a = bits & 0x7fffffffu;
  uint32_t code;
  if (a < 0x3c800000u) {  // below 2^-6: subnormal steps of 2^-9
    float m;
    std::memcpy(&m, &a, 4);
    code = static_cast<uint32_t>(std::nearbyint(m * 512.0f));
  } else {
    code = ((a + 0x7ffffu + ((a >> 20) & 1u)) >> 20) - (120u << 3);
  }
  return static_cast<uint8_t>(sign | code);
}

inline uint8_t EncodeE2m1(float y) {  // |y| <= 6 after clamping; nearest, ties to even
  const float a = std::fabs(y);
  const uint8_t code = static_cast<uint8_t>((a > 0.25f) + (a >= 0.75f) + (a > 1.25f) +
                                            (a >= 1.75f) + (a > 2.5f) + (a >= 3.5f) + (a > 5.0f));
  return static_cast<uint8_t>(code | (std::signbit(y) && code != 0 ? 8 : 0));
}

template <class V>
struct QuantIoGeneric {
  using Reg = typename V::Reg;
  static constexpr int kL = V::kLanes;

  template <class F>
  static Reg FromCodes(int n, F code_value) {
    alignas(64) float buf[kL] = {};
    for (int i = 0; i < n; ++i) buf[i] = code_value(i);
    return V::Load(buf);
  }
  static Reg I8(const int8_t* p, int n) {
    return FromCodes(n, [p](int i) { return static_cast<float>(p[i]); });
  }
  static Reg U4(const uint8_t* p, int n) {
    return FromCodes(n,
                     [p](int i) { return static_cast<float>((p[i / 2] >> (4 * (i % 2))) & 15); });
  }
  static Reg U2(const uint8_t* p, int n) {
    return FromCodes(n, [p](int i) { return static_cast<float>((p[i / 4] >> (2 * (i % 4))) & 3); });
  }
  static Reg E2m1(const uint8_t* p, int n) {
    return FromCodes(n, [p](int i) {
      return KvE2m1ToFloat(static_cast<uint8_t>((p[i / 2] >> (4 * (i % 2))) & 15));
    });
  }
  static Reg E4m3x256(const uint8_t* p, int n) {
    return FromCodes(n, [p](int i) { return kE4m3Table[p[i]] * 0x1p-8f; });
  }
  static Reg LogScale(const uint8_t* p, int n) {
    return FromCodes(n, [p](int i) { return kLogScaleTable[p[i]]; });
  }
  // n pairs {u8 scale code, i8 zero} at p: KvLogScale(code) and zero as floats.
  static void LogScaleZero(const uint8_t* p, int n, Reg* log_scale, Reg* zero) {
    *log_scale = FromCodes(n, [p](int i) { return kLogScaleTable[p[2 * i]]; });
    *zero =
        FromCodes(n, [p](int i) { return static_cast<float>(static_cast<int8_t>(p[2 * i + 1])); });
  }

  template <class F>
  static Reg Map(Reg v, F f) {
    alignas(64) float buf[kL];
    V::Store(buf, v);
    for (float& x : buf) x = f(x);
    return V::Load(buf);
  }
  static Reg Round(Reg v) {
    return Map(v, [](float x) { return std::nearbyint(x); });
  }
  static Reg Abs(Reg v) {
    return Map(v, [](float x) { return std::fabs(x); });
  }
  static Reg Min(Reg a, Reg b) {
    return V::Sub(V::Zero(), V::Max(V::Sub(V::Zero(), a), V::Sub(V::Zero(), b)));
  }

  template <class F>
  static void StoreCodes(uint8_t* p, Reg v, int n, int bits, F code_of) {
    alignas(64) float buf[kL];
    V::Store(buf, v);
    const int per_byte = 8 / bits;
    for (int b = 0; b < (n + per_byte - 1) / per_byte; ++b) {
      uint32_t byte = 0;
      for (int j = 0; j < per_byte && b * per_byte + j < n; ++j) {
        byte |= (static_cast<uint32_t>(code_of(buf[b * per_byte + j])) & ((1u << bits) - 1))
                << (bits * j);
      }
      p[b] = static_cast<uint8_t>(byte);
    }
  }
  static void StoreI8(int8_t* p, Reg q, int n) {
    StoreCodes(reinterpret_cast<uint8_t*>(p), q, n, 8, [](float x) { return static_cast<int>(x); });
  }
  static void StoreU4(uint8_t* p, Reg q, int n) {
    StoreCodes(p, q, n, 4, [](float x) { return static_cast<int>(x); });
  }
  static void StoreU2(uint8_t* p, Reg q, int n) {
    StoreCodes(p, q, n, 2, [](float x) { return static_cast<int>(x); });
  }
  static void StoreE4m3(uint8_t* p, Reg y, int n) { StoreCodes(p, y, n, 8, EncodeE4m3); }
  static void StoreE2m1(uint8_t* p, Reg y, int n) { StoreCodes(p, y, n, 4, EncodeE2m1); }
};

template <class V>
struct QuantIo : QuantIoGeneric<V> {};

#if defined(KVSERVE_SIMD_AVX512)

template <>
struct QuantIo<VecAvx512> : QuantIoGeneric<VecAvx512> {
  using Reg = __m512;
  static __mmask16 M(int n) { return static_cast<__mmask16>((1u << n) - 1u); }
  static uint64_t LoadBytes(const uint8_t* p, int bytes) {
    uint64_t w = 0;
    std::memcpy(&w, p, static_cast<size_t>(bytes));
    return w;
  }
  // The low 4 bits of lane i = (w >> (4 * i)) & 15, w holding 16 codes of 4 bits; the other
  // bits are not cleared (a table lookup ignores them).
  static __m512i Nibbles(uint64_t w) {
#if defined(__AVX512VBMI__)
    // Byte 0 of dword i <- bits [4 i, 4 i + 8) of w: one byte shuffle.
    const __m512i ctrl = _mm512_setr_epi64(
        0x0000000400000000ll, 0x0000000c00000008ll, 0x0000001400000010ll, 0x0000001c00000018ll,
        0x0000002400000020ll, 0x0000002c00000028ll, 0x0000003400000030ll, 0x0000003c00000038ll);
    return _mm512_multishift_epi64_epi8(ctrl, _mm512_set1_epi64(static_cast<int64_t>(w)));
#else
    const __m512i idx = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    const __m512i shift =
        _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 0, 4, 8, 12, 16, 20, 24, 28);
    return _mm512_srlv_epi32(
        _mm512_permutexvar_epi32(idx, _mm512_set1_epi64(static_cast<int64_t>(w))), shift);
#endif
  }
  static __m512i Unpack4(uint64_t w) { return _mm512_and_si512(Nibbles(w), _mm512_set1_epi32(15)); }
  static __m512i Unpack2(uint32_t w) {
    const __m512i shift =
        _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    return _mm512_and_si512(_mm512_srlv_epi32(_mm512_set1_epi32(static_cast<int>(w)), shift),
                            _mm512_set1_epi32(3));
  }

  static Reg I8(const int8_t* p, int n) {
    const __m128i b = n == 16 ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(p))
                              : _mm_maskz_loadu_epi8(M(n), p);
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b));
  }
  static Reg U4(const uint8_t* p, int n) {
    uint64_t w;
    if (n == 16) {
      std::memcpy(&w, p, 8);
    } else {
      w = LoadBytes(p, (n + 1) / 2) & (n == 0 ? 0 : ~uint64_t{0} >> (64 - 4 * n));
    }
    return _mm512_cvtepi32_ps(Unpack4(w));
  }
  static Reg U2(const uint8_t* p, int n) {
    uint32_t w;
    if (n == 16) {
      std::memcpy(&w, p, 4);
    } else {
      w = static_cast<uint32_t>(LoadBytes(p, (n + 3) / 4)) &
          (n == 0 ? 0u : ~uint32_t{0} >> (32 - 2 * n));
    }
    return _mm512_cvtepi32_ps(Unpack2(w));
  }
  static Reg E2m1(const uint8_t* p, int n) {
    uint64_t w;
    if (n == 16) {
      std::memcpy(&w, p, 8);
    } else {
      w = LoadBytes(p, (n + 1) / 2);
    }
    const __m512 table = _mm512_setr_ps(0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f, -0.0f,
                                        -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f);
    const __m512 v = _mm512_permutexvar_ps(Nibbles(w), table);
    return n == 16 ? v : _mm512_maskz_mov_ps(M(n), v);
  }
  static Reg E4m3x256(const uint8_t* p, int n) {
    const __m128i b = n == 16 ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(p))
                              : _mm_maskz_loadu_epi8(M(n), p);
    const __m256i h = _mm256_and_si256(_mm256_slli_epi16(_mm256_cvtepi8_epi16(b), 7),
                                       _mm256_set1_epi16(static_cast<int16_t>(0xbf80)));
    return _mm512_cvtph_ps(h);
  }
  static Reg LogScaleOf(__m512i code) {  // code: int32 lanes in [0, 255]
    const __m512 frac = _mm512_permutexvar_ps(code, _mm512_loadu_ps(kLogScaleTable.data()));
    return _mm512_scalef_ps(frac, _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_setzero_si512(),
                                                                      _mm512_srli_epi32(code, 4))));
  }
  static Reg LogScale(const uint8_t* p, int n) {
    const __m128i b = n == 16 ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(p))
                              : _mm_maskz_loadu_epi8(M(n), p);
    const __m512 v = LogScaleOf(_mm512_cvtepu8_epi32(b));
    return n == 16 ? v : _mm512_maskz_mov_ps(M(n), v);
  }
  static void LogScaleZero(const uint8_t* p, int n, Reg* log_scale, Reg* zero) {
    const __m512i w = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(M(n), p));
    *log_scale = _mm512_maskz_mov_ps(M(n), LogScaleOf(_mm512_and_si512(w, _mm512_set1_epi32(255))));
    *zero = _mm512_cvtepi32_ps(_mm512_srai_epi32(_mm512_slli_epi32(w, 16), 24));
  }

  static Reg Round(Reg v) {
    return _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  }
  static Reg Abs(Reg v) { return _mm512_abs_ps(v); }
  static Reg Min(Reg a, Reg b) { return _mm512_min_ps(a, b); }

  static void StoreBytes(uint8_t* p, __m128i b, int bytes) {
    if (bytes == 16) {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(p), b);
    } else {
      _mm_mask_storeu_epi8(p, M(bytes), b);
    }
  }
  static void StoreI8(int8_t* p, Reg q, int n) {
    StoreBytes(reinterpret_cast<uint8_t*>(p), _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(q)), n);
  }
  // Codes (int32 lanes < 16, lanes >= n zeroed) -> 8 bytes of nibbles.
  static void StoreNibbles(uint8_t* p, __m512i c, int n) {
    c = _mm512_maskz_mov_epi32(M(n), c);
    const __m512i pairs = _mm512_or_si512(c, _mm512_srli_epi64(c, 28));
    StoreBytes(p, _mm512_cvtepi64_epi8(pairs), (n + 1) / 2);
  }
  static void StoreU4(uint8_t* p, Reg q, int n) { StoreNibbles(p, _mm512_cvtps_epi32(q), n); }
  static void StoreU2(uint8_t* p, Reg q, int n) {
    const __m512i c = _mm512_maskz_mov_epi32(M(n), _mm512_cvtps_epi32(q));
    // 64-bit lane j: c[2j] | c[2j + 1] << 2; then 16-bit pairs into bytes.
    const __m128i quads = _mm512_cvtepi64_epi16(_mm512_or_si512(c, _mm512_srli_epi64(c, 30)));
    const __m128i bytes = _mm_cvtepi32_epi8(_mm_or_si128(quads, _mm_srli_epi32(quads, 12)));
    StoreBytes(p, bytes, (n + 3) / 4);
  }
  static void StoreE4m3(uint8_t* p, Reg y, int n) {
    const __m512 lim = _mm512_set1_ps(kKvE4m3Max);
    y = _mm512_max_ps(_mm512_min_ps(y, lim), _mm512_sub_ps(_mm512_setzero_ps(), lim));
    const __m512i bits = _mm512_castps_si512(y);
    const __m512i a = _mm512_and_si512(bits, _mm512_set1_epi32(0x7fffffff));
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(a, 20), _mm512_set1_epi32(1));
    const __m512i normal = _mm512_sub_epi32(
        _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(a, _mm512_set1_epi32(0x7ffff)), lsb),
                          20),
        _mm512_set1_epi32(120 << 3));
    const __m512i sub =
        _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_castsi512_ps(a), _mm512_set1_ps(512.0f)));
    const __mmask16 small = _mm512_cmplt_epi32_mask(a, _mm512_set1_epi32(0x3c800000));
    __m512i code = _mm512_mask_blend_epi32(small, normal, sub);
    code = _mm512_or_si512(code,
                           _mm512_and_si512(_mm512_srli_epi32(bits, 24), _mm512_set1_epi32(0x80)));
    StoreBytes(p, _mm512_cvtepi32_epi8(code), n);
  }
  static void StoreE2m1(uint8_t* p, Reg y, int n) {
    const __m512 a = _mm512_abs_ps(y);
    __m512i c = _mm512_setzero_si512();
    const __m512i one = _mm512_set1_epi32(1);
    const float gt[4] = {0.25f, 1.25f, 2.5f, 5.0f};
    const float ge[3] = {0.75f, 1.75f, 3.5f};
    for (float t : gt) {
      c = _mm512_mask_add_epi32(c, _mm512_cmp_ps_mask(a, _mm512_set1_ps(t), _CMP_GT_OQ), c, one);
    }
    for (float t : ge) {
      c = _mm512_mask_add_epi32(c, _mm512_cmp_ps_mask(a, _mm512_set1_ps(t), _CMP_GE_OQ), c, one);
    }
    const __mmask16 neg = _mm512_movepi32_mask(_mm512_castps_si512(y)) &
                          _mm512_cmpneq_epi32_mask(c, _mm512_setzero_si512());
    c = _mm512_mask_or_epi32(c, neg, c, _mm512_set1_epi32(8));
    StoreNibbles(p, c, n);
  }
};

#endif  // KVSERVE_SIMD_AVX512

#if defined(KVSERVE_SIMD_AVX2)

template <>
struct QuantIo<VecAvx2> : QuantIoGeneric<VecAvx2> {
  using Reg = __m256;
  static uint64_t LoadBytes(const uint8_t* p, int bytes) {
    uint64_t w = 0;
    std::memcpy(&w, p, static_cast<size_t>(bytes));
    return w;
  }
  static __m256i Unpack(uint32_t w, int bits) {
    const __m256i shift =
        _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(bits));
    return _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(w)), shift),
                            _mm256_set1_epi32((1 << bits) - 1));
  }
  static uint32_t Codes(const uint8_t* p, int n, int bits) {
    if (n == 8) {
      uint32_t w = 0;
      std::memcpy(&w, p, static_cast<size_t>(bits));
      return w;
    }
    const int used = bits * n;
    return static_cast<uint32_t>(LoadBytes(p, (used + 7) / 8)) &
           (n == 0 ? 0u : ~uint32_t{0} >> (32 - used));
  }

  static Reg I8(const int8_t* p, int n) {
    const __m128i b = _mm_cvtsi64_si128(
        static_cast<int64_t>(n == 8 ? LoadBytes(reinterpret_cast<const uint8_t*>(p), 8)
                                    : LoadBytes(reinterpret_cast<const uint8_t*>(p), n)));
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
  }
  static Reg U4(const uint8_t* p, int n) { return _mm256_cvtepi32_ps(Unpack(Codes(p, n, 4), 4)); }
  static Reg U2(const uint8_t* p, int n) { return _mm256_cvtepi32_ps(Unpack(Codes(p, n, 2), 2)); }
  static Reg E2m1(const uint8_t* p, int n) {
    const __m256i c = Unpack(Codes(p, n, 4), 4);
    const __m256 mag =
        _mm256_permutevar8x32_ps(_mm256_setr_ps(0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f), c);
    const __m256i sign = _mm256_slli_epi32(_mm256_and_si256(c, _mm256_set1_epi32(8)), 28);
    return _mm256_xor_ps(mag, _mm256_castsi256_ps(sign));
  }
  static Reg E4m3x256(const uint8_t* p, int n) {
    const __m128i b = _mm_cvtsi64_si128(static_cast<int64_t>(LoadBytes(p, n)));
    const __m128i h = _mm_and_si128(_mm_slli_epi16(_mm_cvtepi8_epi16(b), 7),
                                    _mm_set1_epi16(static_cast<int16_t>(0xbf80)));
    return _mm256_cvtph_ps(h);
  }

  static Reg Round(Reg v) {
    return _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  }
  static Reg Abs(Reg v) {
    return _mm256_and_ps(v, _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff)));
  }
  static Reg Min(Reg a, Reg b) { return _mm256_min_ps(a, b); }

  // Low byte of each int32 lane -> n bytes at p.
  static void StoreLowBytes(uint8_t* p, __m256i c, int n) {
    const __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(c), _mm256_extracti128_si256(c, 1));
    const uint64_t bytes = static_cast<uint64_t>(_mm_cvtsi128_si64(
        _mm_packus_epi16(_mm_and_si128(w, _mm_set1_epi16(0xff)), _mm_setzero_si128())));
    std::memcpy(p, &bytes, static_cast<size_t>(n));
  }
  static void StoreI8(int8_t* p, Reg q, int n) {
    StoreLowBytes(reinterpret_cast<uint8_t*>(p), _mm256_cvtps_epi32(q), n);
  }
  static void StoreE4m3(uint8_t* p, Reg y, int n) {
    const __m256 lim = _mm256_set1_ps(kKvE4m3Max);
    y = _mm256_max_ps(_mm256_min_ps(y, lim), _mm256_sub_ps(_mm256_setzero_ps(), lim));
    const __m256i bits = _mm256_castps_si256(y);
    const __m256i a = _mm256_and_si256(bits, _mm256_set1_epi32(0x7fffffff));
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(a, 20), _mm256_set1_epi32(1));
    const __m256i normal = _mm256_sub_epi32(
        _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(a, _mm256_set1_epi32(0x7ffff)), lsb),
                          20),
        _mm256_set1_epi32(120 << 3));
    const __m256i sub =
        _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_castsi256_ps(a), _mm256_set1_ps(512.0f)));
    const __m256i small = _mm256_cmpgt_epi32(_mm256_set1_epi32(0x3c800000), a);
    __m256i code = _mm256_blendv_epi8(normal, sub, small);
    code = _mm256_or_si256(code,
                           _mm256_and_si256(_mm256_srli_epi32(bits, 24), _mm256_set1_epi32(0x80)));
    StoreLowBytes(p, code, n);
  }
};

#endif  // KVSERVE_SIMD_AVX2

}  // namespace kvserve::kernels::cpu::simd

#endif  // KVSERVE_KERNELS_CPU_SIMD_QUANT_H_
