// A float64 reader of every KV region format written from the layout described in
// kernels/kv_format.h, independent of the CPU codecs: the reference the round-trip and attention
// tests compare the kernels against.
#ifndef KVSERVE_TESTS_KERNELS_KV_QUANT_REFERENCE_H_
#define KVSERVE_TESTS_KERNELS_KV_QUANT_REFERENCE_H_

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "kernels/dtype.h"
#include "kernels/kv_format.h"

namespace kvserve::kernels::testing {

inline double RefE4m3(uint8_t code) {
  const int e = (code >> 3) & 15, m = code & 7;
  const double v = e == 0 ? std::ldexp(m / 8.0, -6) : std::ldexp(1.0 + m / 8.0, e - 7);
  return (code & 0x80) ? -v : v;
}
inline double RefE2m1(uint8_t code) {
  const int e = (code >> 1) & 3, m = code & 1;
  const double v = e == 0 ? m * 0.5 : std::ldexp(1.0 + m / 2.0, e - 1);
  return (code & 8) ? -v : v;
}

// Reads one region of `format` / `role` as stored, element by element.
class RefRegion {
 public:
  RefRegion(KvFormat f, KvRole role, const uint8_t* region, const KvRegionShape& s)
      : f_(f),
        role_(role),
        p_(region),
        s_(s),
        l_(KvRegionLayoutOf(f, role, s)),
        k_(KvSchemeOf(f, role)) {}

  // The stored code of value (h, t, d), as an unsigned integer of value_bits bits.
  uint32_t Code(int h, int t, int d) const {
    const uint8_t* row = p_ + (static_cast<int64_t>(h) * s_.block_size + t) * l_.row_bytes;
    const int bits = k_.value_bits;
    if (bits >= 8) return row[d * bits / 8];
    const int per = 8 / bits;
    return (row[d / per] >> (bits * (d % per))) & ((1u << bits) - 1);
  }
  double F32(int64_t off) const {
    float v;
    std::memcpy(&v, p_ + off, 4);
    return v;
  }
  double Bf16(int64_t off) const {
    uint16_t b;
    std::memcpy(&b, p_ + off, 2);
    return Bf16ToFloat(b);
  }
  double Fp16(int64_t off) const {
    uint16_t b;
    std::memcpy(&b, p_ + off, 2);
    return Fp16ToFloat(b);
  }
  int64_t Channel(int h, int d) const {
    return l_.channel_param_offset +
           (static_cast<int64_t>(h) * s_.head_dim + d) * k_.channel_param_bytes;
  }
  int64_t Token(int h, int t, int g) const {
    return l_.token_param_offset +
           ((static_cast<int64_t>(h) * s_.block_size + t) * l_.groups + g) * k_.token_param_bytes;
  }
  int Group(int d) const { return k_.group == 0 ? 0 : d / k_.group; }

  // The step of the integer formats (half of it bounds the rounding error), the scale of the
  // floating-point ones, at (h, t, d).
  double Step(int h, int t, int d) const {
    const bool key = role_ == KvRole::kKey;
    switch (f_) {
      case KvFormat::kFp8:
      case KvFormat::kInt8:
        if (!key || f_ == KvFormat::kFp8) return Bf16(Token(h, t, 0));
        return KvLogScale(p_[Channel(h, d)]) * F32(l_.head_param_offset + 4 * h);
      case KvFormat::kInt4:
      case KvFormat::kInt2:
        if (!key) return Bf16(Token(h, t, Group(d)));
        return static_cast<double>(KvLogScale(p_[Channel(h, d)]) *
                                   static_cast<float>(F32(l_.head_param_offset + 4 * h)));
      case KvFormat::kNvfp4:
        return RefE4m3(p_[Token(h, t, Group(d))]) * F32(l_.region_scale_offset);
      default:
        return 0.0;
    }
  }
  // fp8 keys: the center of channel d.
  double Center(int h, int d) const {
    if (f_ != KvFormat::kFp8 || role_ != KvRole::kKey) return 0.0;
    return Fp16(Channel(h, d)) * F32(l_.head_param_offset + 4 * h);
  }

  double Value(int h, int t, int d) const {
    const uint32_t q = Code(h, t, d);
    switch (f_) {
      case KvFormat::kFp32: {
        float v;
        std::memcpy(&v, p_ + ((static_cast<int64_t>(h) * s_.block_size + t) * s_.head_dim + d) * 4,
                    4);
        return v;
      }
      case KvFormat::kFp16:
      case KvFormat::kBf16: {
        const int64_t off = ((static_cast<int64_t>(h) * s_.block_size + t) * s_.head_dim + d) * 2;
        return f_ == KvFormat::kFp16 ? Fp16(off) : Bf16(off);
      }
      case KvFormat::kFp8:
        return Center(h, d) + RefE4m3(static_cast<uint8_t>(q)) * Step(h, t, d);
      case KvFormat::kInt8:
        return static_cast<int8_t>(q) * Step(h, t, d);
      case KvFormat::kInt4:
      case KvFormat::kInt2:
        if (role_ == KvRole::kKey) {
          const int z = static_cast<int8_t>(p_[Channel(h, d) + 1]);
          return (q + z / static_cast<double>(kKvZeroSubsteps)) * Step(h, t, d);
        }
        return Bf16(Token(h, t, Group(d)) + 2) + q * Step(h, t, d);
      case KvFormat::kNvfp4:
        return RefE2m1(static_cast<uint8_t>(q)) * Step(h, t, d);
      case KvFormat::kLowrank:  // keys need the basis (kv_lowrank_test.cc); values are int8's
        break;
    }
    return 0.0;
  }

 private:
  KvFormat f_;
  KvRole role_;
  const uint8_t* p_;
  KvRegionShape s_;
  KvRegionLayout l_;
  KvScheme k_;
};

inline constexpr KvFormat kQuantizedFormats[] = {KvFormat::kFp8, KvFormat::kInt8, KvFormat::kInt4,
                                                 KvFormat::kNvfp4, KvFormat::kInt2};

}  // namespace kvserve::kernels::testing

#endif  // KVSERVE_TESTS_KERNELS_KV_QUANT_REFERENCE_H_
