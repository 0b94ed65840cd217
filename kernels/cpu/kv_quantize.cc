// Block-level encoders of every KV format (the formulas: kernels/kv_format.h) and the decoder,
// which goes through the codecs' readers so that it sees exactly what attention sees.
//
// Each encoder first finds the parameters, rounded so that they cover the data (scales rounded
// up, minimums down), then encodes the values against the *stored* parameters: the round-trip
// error is then at most half a step of the integer formats (or the format's own rounding for
// E4M3 / E2M1), whatever rounding the parameters took.
#include "kernels/cpu/kv_quantize.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>

#include "kernels/cpu/kv_codec.h"
#include "kernels/cpu/simd.h"
#include "kernels/cpu/simd_quant.h"
#include "kernels/dtype.h"

namespace kvserve::kernels::cpu {
namespace {

using W = simd::VecWide;
using Io = simd::QuantIo<W>;
using Reg = W::Reg;
constexpr int kL = W::kLanes;
constexpr float kInf = std::numeric_limits<float>::infinity();

// ---- Parameter rounding ----

// Smallest BF16 >= x (x >= 0, finite).
uint16_t Bf16Up(float x) {
  uint16_t b = FloatToBf16(x);
  if (Bf16ToFloat(b) < x) ++b;
  return b;
}
// Largest BF16 <= x (finite).
uint16_t Bf16Down(float x) {
  uint16_t b = FloatToBf16(x);
  if (Bf16ToFloat(b) > x) {
    if (b & 0x8000u) {
      ++b;  // more negative
    } else {
      b = b == 0 ? 0x8001u : static_cast<uint16_t>(b - 1);
    }
  }
  return b;
}
// Smallest E4M3 code >= x (0 <= x <= 448).
uint8_t E4m3Up(float x) {
  uint8_t c = simd::EncodeE4m3(x);
  if (simd::kE4m3Table[c] < x) ++c;
  return c;
}
// Code k with ref * KvLogScale(k) the smallest stored scale >= need (0 <= need <= ref).
uint8_t LogScaleCode(float need, float ref) {
  int k = 255;
  if (need > 0.0f) {
    // -16 log2(need / ref), from the exponent and a linear mantissa (within 1.5 codes).
    int e;
    const float m = std::frexp(need / ref, &e);  // m in [0.5, 1)
    k = std::clamp(static_cast<int>(-16.0f * (static_cast<float>(e) + 2.0f * m - 2.0f)), 0, 255);
  }
  while (k > 0 && ref * simd::kLogScaleTable[k] < need) --k;
  while (k < 255 && ref * simd::kLogScaleTable[k + 1] >= need) ++k;
  return static_cast<uint8_t>(k);
}
void PutF32(uint8_t* p, float v) { std::memcpy(p, &v, 4); }
void PutU16(uint8_t* p, uint16_t v) { std::memcpy(p, &v, 2); }

// ---- Reductions ----

Reg Neg(Reg v) { return W::Sub(W::Zero(), v); }

float RowAbsMax(const float* row, int n) {
  Reg m = W::Zero();
  for (int d = 0; d < n; d += kL) m = W::Max(m, Io::Abs(W::LoadN(row + d, std::min(kL, n - d))));
  return W::ReduceMax(m);
}
// min and max of row[0, n).
void RowRange(const float* row, int n, float* lo, float* hi) {
  Reg mn = W::Set1(kInf), mx = W::Set1(-kInf);
  for (int d = 0; d < n; d += kL) {
    const int m = std::min(kL, n - d);
    const Reg v = W::LoadN(row + d, m);
    mn = Io::Min(mn, W::FillFrom(v, m, kInf));
    mx = W::Max(mx, W::FillFrom(v, m, -kInf));
  }
  *lo = -W::ReduceMax(Neg(mn));
  *hi = W::ReduceMax(mx);
}
// Per channel d: lo[d], hi[d] over rows [0, tokens) of x [.][hd].
void ChannelRange(const float* x, int hd, int tokens, float* lo, float* hi) {
  for (int d = 0; d < hd; d += kL) {
    const int n = std::min(kL, hd - d);
    Reg mn = W::Set1(kInf), mx = W::Set1(-kInf);
    for (int t = 0; t < tokens; ++t) {
      const Reg v = W::LoadN(x + static_cast<int64_t>(t) * hd + d, n);
      mn = Io::Min(mn, v);
      mx = W::Max(mx, v);
    }
    W::StoreN(lo + d, mn, n);
    W::StoreN(hi + d, mx, n);
  }
}

// q (integral, in range) -> codes of kBits bits.
template <int kBits>
void StoreInts(uint8_t* p, Reg q, int n) {
  if constexpr (kBits == 8) {
    Io::StoreI8(reinterpret_cast<int8_t*>(p), q, n);
  } else if constexpr (kBits == 4) {
    Io::StoreU4(p, q, n);
  } else {
    Io::StoreU2(p, q, n);
  }
}
Reg Clamp(Reg v, float lo, float hi) { return Io::Min(W::Max(v, W::Set1(lo)), W::Set1(hi)); }

// ---- Encoders of one KV head: x [block_size][head_dim], rows [0, tokens) ----

struct Head {
  const float* x;  // [block_size][head_dim]
  int hd;
  int tokens;
  uint8_t* values;  // [block_size][row_bytes]
  int64_t row_bytes;
};

// Keys per channel across the block (int8: symmetric; int4 / int2: with a zero point).
// params [head_dim][kAsym ? 2 : 1] = {u8 scale code, i8 zero}; returns the head's reference.
template <int kBits, bool kAsym>
float EncodeKeyChannels(const Head& h, uint8_t* params) {
  constexpr float kQMax = kAsym ? (1 << kBits) - 1 : 127.0f;  // largest code
  alignas(64) float lo[kKvMaxChannelHeadDim], hi[kKvMaxChannelHeadDim];
  alignas(64) float need[kKvMaxChannelHeadDim];
  alignas(64) float scale[kKvMaxChannelHeadDim], shift[kKvMaxChannelHeadDim];
  ChannelRange(h.x, h.hd, h.tokens, lo, hi);
  float ref = 0.0f;
  for (int d = 0; d < h.hd; ++d) {
    // Asymmetric: the range, and a zero point round(4 lo / s) that fits in int8.
    need[d] = kAsym ? std::max((hi[d] - lo[d]) / kQMax, std::fabs(lo[d]) * kKvZeroSubsteps / 127.0f)
                    : std::max(std::fabs(lo[d]), std::fabs(hi[d])) / kQMax;
    ref = std::max(ref, need[d]);
  }
  for (int d = 0; d < h.hd; ++d) {
    const uint8_t code = LogScaleCode(need[d], ref);
    const float s = simd::kLogScaleTable[code] * ref;
    int z = 0;
    if (kAsym && s > 0.0f) {
      z = std::clamp(static_cast<int>(std::nearbyint(lo[d] * kKvZeroSubsteps / s)), -128, 127);
    }
    params[d * (kAsym ? 2 : 1)] = code;
    if constexpr (kAsym) params[2 * d + 1] = static_cast<uint8_t>(static_cast<int8_t>(z));
    scale[d] = s > 0.0f ? s : 1.0f;  // s == 0: every value of the channel is 0
    shift[d] = static_cast<float>(z) * (1.0f / kKvZeroSubsteps);
  }
  const float q_lo = kAsym ? 0.0f : -kQMax;
  for (int t = 0; t < h.tokens; ++t) {
    const float* row = h.x + static_cast<int64_t>(t) * h.hd;
    uint8_t* out = h.values + t * h.row_bytes;
    for (int d = 0; d < h.hd; d += kL) {
      const int n = std::min(kL, h.hd - d);
      const Reg y = W::Sub(W::Div(W::LoadN(row + d, n), W::FillFrom(W::LoadN(scale + d, n), n, 1)),
                           W::LoadN(shift + d, n));
      StoreInts<kBits>(out + d * kBits / 8, Clamp(Io::Round(y), q_lo, kQMax), n);
    }
  }
  return ref;
}

// One scale per row, values int8 (kE4m3 false) or E4M3; with `center` (fp8 keys) the per-channel
// centers c[d] (already rounded) are subtracted first.
template <bool kE4m3>
void EncodeRows(const Head& h, const float* center, uint8_t* row_scales) {
  constexpr float kMax = kE4m3 ? kKvE4m3Max : 127.0f;
  alignas(64) float r[kKvMaxChannelHeadDim + 16];
  const int hd = h.hd;
  for (int t = 0; t < h.tokens; ++t) {
    const float* row = h.x + static_cast<int64_t>(t) * hd;
    const float* src = row;
    if (center != nullptr) {
      for (int d = 0; d < hd; d += kL) {
        const int n = std::min(kL, hd - d);
        W::StoreN(r + d, W::Sub(W::LoadN(row + d, n), W::LoadN(center + d, n)), n);
      }
      src = r;
    }
    const uint16_t sb = Bf16Up(RowAbsMax(src, hd) / kMax);
    PutU16(row_scales + 2 * t, sb);
    const float s = Bf16ToFloat(sb);
    const Reg div = W::Set1(s > 0.0f ? s : 1.0f);  // s == 0: the row is 0
    uint8_t* out = h.values + t * h.row_bytes;
    for (int d = 0; d < hd; d += kL) {
      const int n = std::min(kL, hd - d);
      const Reg y = W::Div(W::LoadN(src + d, n), div);
      if constexpr (kE4m3) {
        Io::StoreE4m3(out + d, y, n);
      } else {
        Io::StoreI8(reinterpret_cast<int8_t*>(out + d), Clamp(Io::Round(y), -127.0f, 127.0f), n);
      }
    }
  }
}

// fp8 keys: per-channel centers (FP16 times a power of two per head), then EncodeRows.
void EncodeFp8Keys(const Head& h, uint8_t* unit_out, uint8_t* centers, uint8_t* row_scales) {
  alignas(64) float lo[kKvMaxChannelHeadDim], hi[kKvMaxChannelHeadDim];
  alignas(64) float c[kKvMaxChannelHeadDim + 16];
  ChannelRange(h.x, h.hd, h.tokens, lo, hi);
  float big = 0.0f;
  for (int d = 0; d < h.hd; ++d) {
    lo[d] = 0.5f * lo[d] + 0.5f * hi[d];  // the channel's mid-range
    big = std::max(big, std::fabs(lo[d]));
  }
  // A power of two that brings the largest center to [2^14, 2^15]: well inside FP16.
  const float unit = big > 0.0f ? std::ldexp(1.0f, std::ilogb(big) - 14) : 1.0f;
  PutF32(unit_out, unit);
  for (int d = 0; d < h.hd; ++d) {
    const uint16_t bits = FloatToFp16(lo[d] / unit);
    PutU16(centers + 2 * d, bits);
    c[d] = Fp16ToFloat(bits) * unit;
  }
  EncodeRows<true>(h, c, row_scales);
}

// int4 / int2 values: per token and group of kKvIntValueGroup dims, BF16 {scale, min}.
template <int kBits>
void EncodeValueGroups(const Head& h, int groups, uint8_t* params) {
  constexpr float kMaxCode = (1 << kBits) - 1;
  for (int t = 0; t < h.tokens; ++t) {
    const float* row = h.x + static_cast<int64_t>(t) * h.hd;
    uint8_t* out = h.values + t * h.row_bytes;
    for (int g = 0; g < groups; ++g) {
      const int d0 = g * kKvIntValueGroup;
      const int len = std::min(kKvIntValueGroup, h.hd - d0);
      float lo, hi;
      RowRange(row + d0, len, &lo, &hi);
      const uint16_t mb = Bf16Down(lo);
      const float m = Bf16ToFloat(mb);
      const uint16_t sb = Bf16Up((hi - m) / kMaxCode);
      const float s = Bf16ToFloat(sb);
      uint8_t* p = params + (static_cast<int64_t>(t) * groups + g) * 4;
      PutU16(p, sb);
      PutU16(p + 2, mb);
      const Reg div = W::Set1(s > 0.0f ? s : 1.0f);  // s == 0: every value is m
      for (int d = d0; d < d0 + len; d += kL) {
        const int n = std::min(kL, d0 + len - d);
        const Reg y = W::Div(W::Sub(W::LoadN(row + d, n), W::Set1(m)), div);
        StoreInts<kBits>(out + d * kBits / 8, Clamp(Io::Round(y), 0.0f, kMaxCode), n);
      }
    }
  }
}

// nvfp4 rows of one head: E4M3 scale per group of 16 dims (times the region scale g).
void EncodeNvfp4Head(const Head& h, int groups, float g, uint8_t* params) {
  for (int t = 0; t < h.tokens; ++t) {
    const float* row = h.x + static_cast<int64_t>(t) * h.hd;
    uint8_t* out = h.values + t * h.row_bytes;
    for (int k = 0; k < groups; ++k) {
      const int d0 = k * kKvNvfp4Group;
      const int len = std::min(kKvNvfp4Group, h.hd - d0);
      const float amax = RowAbsMax(row + d0, len);
      const uint8_t code = g > 0.0f ? E4m3Up(std::min(amax / kKvE2m1Max / g, kKvE4m3Max)) : 0;
      params[static_cast<int64_t>(t) * groups + k] = code;
      const float s = simd::kE4m3Table[code] * g;
      const Reg div = W::Set1(s > 0.0f ? s : 1.0f);  // s == 0: the group is 0
      for (int d = d0; d < d0 + len; d += kL) {
        const int n = std::min(kL, d0 + len - d);
        Io::StoreE2m1(out + d / 2, W::Div(W::LoadN(row + d, n), div), n);
      }
    }
  }
}

// Every value finite and |value| <= limit.
bool InputAcceptable(const float* in, const KvRegionShape& shape, int tokens, float limit) {
  Reg nan = W::Zero();  // sum of x * 0: NaN once any x is NaN or infinite
  Reg amax = W::Zero();
  for (int h = 0; h < shape.num_kv_heads; ++h) {
    const float* base = in + static_cast<int64_t>(h) * shape.block_size * shape.head_dim;
    const int64_t n = static_cast<int64_t>(tokens) * shape.head_dim;
    for (int64_t i = 0; i < n; i += kL) {
      const Reg x = W::LoadN(base + i, static_cast<int>(std::min<int64_t>(kL, n - i)));
      nan = W::Add(nan, W::Mul(x, W::Zero()));
      amax = W::Max(amax, Io::Abs(x));
    }
  }
  return !std::isnan(W::ReduceAdd(nan)) && W::ReduceMax(amax) <= limit;
}

void EncodeQuantized(KvFormat f, KvRole role, const float* in, const KvRegionShape& shape,
                     int tokens, uint8_t* region) {
  const KvRegionLayout l = KvRegionLayoutOf(f, role, shape);
  const KvScheme scheme = KvSchemeOf(f, role);
  const int hd = shape.head_dim, bs = shape.block_size;
  const bool key = role == KvRole::kKey;
  float g = 0.0f;  // nvfp4 region scale
  if (f == KvFormat::kNvfp4) {
    float amax = 0.0f;
    for (int h = 0; h < shape.num_kv_heads; ++h) {
      for (int t = 0; t < tokens; ++t) {
        amax = std::max(amax, RowAbsMax(in + (static_cast<int64_t>(h) * bs + t) * hd, hd));
      }
    }
    // NVIDIA's per-tensor scale, kept >= 2^-100 so that scales below it stay normal floats.
    g = amax > 0.0f ? std::max(amax / (kKvE2m1Max * kKvE4m3Max), 0x1p-100f) : 0.0f;
    PutF32(region + l.region_scale_offset, g);
  }
  for (int h = 0; h < shape.num_kv_heads; ++h) {
    const Head head{in + static_cast<int64_t>(h) * bs * hd, hd, tokens,
                    region + static_cast<int64_t>(h) * bs * l.row_bytes, l.row_bytes};
    uint8_t* head_param = region + l.head_param_offset + 4 * h;
    uint8_t* channel =
        region + l.channel_param_offset + static_cast<int64_t>(h) * hd * scheme.channel_param_bytes;
    uint8_t* token = region + l.token_param_offset +
                     static_cast<int64_t>(h) * bs * l.groups * scheme.token_param_bytes;
    switch (f) {
      case KvFormat::kFp8:
        if (key) {
          EncodeFp8Keys(head, head_param, channel, token);
        } else {
          EncodeRows<true>(head, nullptr, token);
        }
        break;
      case KvFormat::kInt8:
        if (key) {
          PutF32(head_param, EncodeKeyChannels<8, false>(head, channel));
        } else {
          EncodeRows<false>(head, nullptr, token);
        }
        break;
      case KvFormat::kInt4:
        if (key) {
          PutF32(head_param, EncodeKeyChannels<4, true>(head, channel));
        } else {
          EncodeValueGroups<4>(head, static_cast<int>(l.groups), token);
        }
        break;
      case KvFormat::kInt2:
        if (key) {
          PutF32(head_param, EncodeKeyChannels<2, true>(head, channel));
        } else {
          EncodeValueGroups<2>(head, static_cast<int>(l.groups), token);
        }
        break;
      case KvFormat::kNvfp4:
        EncodeNvfp4Head(head, static_cast<int>(l.groups), g, token);
        break;
      case KvFormat::kLowrank:  // values as int8 values; keys go through EncodeLowrankKeys
        KVSERVE_KERNEL_CHECK(!key, "EncodeQuantized: lowrank keys need their basis");
        EncodeRows<false>(head, nullptr, token);
        break;
      default:
        KVSERVE_KERNEL_CHECK(false, "EncodeQuantized: not a quantized format");
    }
  }
}

// c = B^T k per token and head, stored as FP16. False when a coefficient leaves the FP16 range.
bool EncodeLowrankKeys(const float* in, const KvRegionShape& shape, int tokens, const float* basis,
                       uint8_t* region) {
  const int hd = shape.head_dim, r = shape.key_rank, bs = shape.block_size;
  uint16_t* dst = reinterpret_cast<uint16_t*>(region);
  float c[kKvMaxChannelHeadDim];
  for (int h = 0; h < shape.num_kv_heads; ++h) {
    const float* b = basis + static_cast<int64_t>(h) * hd * r;
    for (int t = 0; t < tokens; ++t) {
      const float* k = in + (static_cast<int64_t>(h) * bs + t) * hd;
      std::fill(c, c + r, 0.0f);
      for (int d = 0; d < hd; ++d) {
        for (int i = 0; i < r; ++i) c[i] += b[d * r + i] * k[d];
      }
      for (int i = 0; i < r; ++i) {
        if (!(std::fabs(c[i]) <= 65504.0f)) return false;
        dst[(static_cast<int64_t>(h) * bs + t) * r + i] = FloatToFp16(c[i]);
      }
    }
  }
  return true;
}

}  // namespace

void DequantizeKvRegion(KvFormat format, KvRole role, const uint8_t* region,
                        const KvRegionShape& shape, int tokens, float* out,
                        const float* key_basis) {
  if (format == KvFormat::kLowrank && role == KvRole::kKey) {
    KVSERVE_KERNEL_CHECK(key_basis != nullptr, "DequantizeKvRegion: lowrank keys need a basis");
    const int hd = shape.head_dim, r = shape.key_rank, bs = shape.block_size;
    const uint16_t* src = reinterpret_cast<const uint16_t*>(region);
    for (int h = 0; h < shape.num_kv_heads; ++h) {
      const float* b = key_basis + static_cast<int64_t>(h) * hd * r;
      for (int t = 0; t < tokens; ++t) {
        const uint16_t* c = src + (static_cast<int64_t>(h) * bs + t) * r;
        float* dst = out + (static_cast<int64_t>(h) * bs + t) * hd;
        for (int d = 0; d < hd; ++d) {
          float x = 0.0f;
          for (int i = 0; i < r; ++i) x += b[d * r + i] * Fp16ToFloat(c[i]);
          dst[d] = x;
        }
      }
    }
    return;
  }
  auto read = [&](auto rows_tag, int h) {
    using Rows = typename decltype(rows_tag)::type;
    const Rows rows(region, shape, h);
    for (int t = 0; t < tokens; ++t) {
      float* dst = out + (static_cast<int64_t>(h) * shape.block_size + t) * shape.head_dim;
      int d0 = 0;
      for (; d0 + kL <= shape.head_dim; d0 += kL) W::Store(dst + d0, rows.template Load<W>(t, d0));
      if (d0 < shape.head_dim) {
        const int n = shape.head_dim - d0;
        W::StoreN(dst + d0, rows.template LoadN<W>(t, d0, n), n);
      }
    }
  };
  DispatchKvFormat(format, [&](auto codec) {
    using Codec = decltype(codec);
    for (int h = 0; h < shape.num_kv_heads; ++h) {
      if (role == KvRole::kKey) {
        read(std::type_identity<typename Codec::KeyRows>{}, h);
      } else {
        read(std::type_identity<typename Codec::ValueRows>{}, h);
      }
    }
  });
}

bool QuantizeKvRegion(KvFormat format, KvRole role, const float* in, const KvRegionShape& shape,
                      int tokens, uint8_t* region, const float* key_basis) {
  KVSERVE_KERNEL_CHECK(tokens >= 1 && tokens <= shape.block_size,
                       "QuantizeKvRegion: tokens must be in [1, block_size]");
  const bool quantized = !KvFormatTokenWritable(format);
  if (!InputAcceptable(in, shape, tokens,
                       quantized ? kKvQuantMaxAbs : std::numeric_limits<float>::max())) {
    return false;
  }
  if (format == KvFormat::kLowrank && role == KvRole::kKey) {
    KVSERVE_KERNEL_CHECK(key_basis != nullptr, "QuantizeKvRegion: lowrank keys need a basis");
    KVSERVE_KERNEL_CHECK(KvFormatSupports(format, shape), "QuantizeKvRegion: unsupported shape");
    return EncodeLowrankKeys(in, shape, tokens, key_basis, region);
  }
  if (quantized) {
    KVSERVE_KERNEL_CHECK(KvFormatSupports(format, shape), "QuantizeKvRegion: unsupported shape");
    EncodeQuantized(format, role, in, shape, tokens, region);
    return true;
  }
  DispatchKvFormat(format, [&](auto codec) {
    using Codec = decltype(codec);
    for (int h = 0; h < shape.num_kv_heads; ++h) {
      for (int t = 0; t < tokens; ++t) {
        Codec::WriteRow(region, shape, h, t,
                        in + (static_cast<int64_t>(h) * shape.block_size + t) * shape.head_dim);
      }
    }
  });
  return true;
}

}  // namespace kvserve::kernels::cpu
