// Codecs of the quantized KV formats (layouts: kernels/kv_format.h; the codec contract:
// kernels/cpu/kv_codec.h). Each Rows reader dequantizes in registers: the parameters of its
// block and KV head (per channel, per token) are decoded once, when the reader is constructed,
// into local arrays, and each load is a code decode and one multiply(-add) against them.
// Nothing here branches on the format.
//
// Readers (Dec: the code decoder, one of the structs below):
//   ChannelRows<Dec, kOffset>  x = q s[d] (+ o[d]): int8 / int4 / int2 keys.
//   RowRows<Dec, kCenter>      x = q s[t] (+ c[d]): int8 / fp8 values, fp8 keys.
//   GroupRows<Dec, kMin>       x = q s[t][g] (+ m[t][g]): int4 / int2 values, nvfp4.
// The quantized formats are not token-writable (kv_format.h): blocks are encoded whole, by
// QuantizeKvRegion (kv_quantize.h), and their WriteRow is a broken precondition.
#ifndef KVSERVE_KERNELS_CPU_KV_CODEC_QUANT_H_
#define KVSERVE_KERNELS_CPU_KV_CODEC_QUANT_H_

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "kernels/cpu/check.h"
#include "kernels/cpu/simd.h"
#include "kernels/cpu/simd_quant.h"
#include "kernels/dtype.h"
#include "kernels/kv_format.h"

namespace kvserve::kernels::cpu {
namespace quant {

inline constexpr int kMaxLanes = 16;

// Code decoders: Load<V>(p, n) = the first n codes at p as floats (value, before parameters).
struct DecI8 {
  static constexpr int kBits = 8;
  template <class V>
  static typename V::Reg Load(const uint8_t* p, int n) {
    return simd::QuantIo<V>::I8(reinterpret_cast<const int8_t*>(p), n);
  }
};
struct DecE4m3 {  // E4M3 value * 2^-8: parameters carry the 2^8
  static constexpr int kBits = 8;
  static constexpr float kParamScale = 256.0f;
  template <class V>
  static typename V::Reg Load(const uint8_t* p, int n) {
    return simd::QuantIo<V>::E4m3x256(p, n);
  }
};
struct DecU4 {
  static constexpr int kBits = 4;
  template <class V>
  static typename V::Reg Load(const uint8_t* p, int n) {
    return simd::QuantIo<V>::U4(p, n);
  }
};
struct DecU2 {
  static constexpr int kBits = 2;
  template <class V>
  static typename V::Reg Load(const uint8_t* p, int n) {
    return simd::QuantIo<V>::U2(p, n);
  }
};
struct DecE2m1 {
  static constexpr int kBits = 4;
  template <class V>
  static typename V::Reg Load(const uint8_t* p, int n) {
    return simd::QuantIo<V>::E2m1(p, n);
  }
};

template <class Dec>
constexpr float ParamScale() {
  if constexpr (requires { Dec::kParamScale; }) {
    return Dec::kParamScale;
  } else {
    return 1.0f;
  }
}

inline float LoadF32(const uint8_t* p) {
  float v;
  std::memcpy(&v, p, 4);
  return v;
}

// Lanes [0, kLanes / 2) = a, the others b.
template <class V>
KVSERVE_ALWAYS_INLINE typename V::Reg Halves(float a, float b) {
#if defined(KVSERVE_SIMD_AVX512)
  if constexpr (std::is_same_v<V, simd::VecAvx512>) {
    return _mm512_insertf32x8(_mm512_set1_ps(a), _mm256_set1_ps(b), 1);
  }
#endif
  alignas(64) float buf[V::kLanes];
  for (int i = 0; i < V::kLanes; ++i) buf[i] = i < V::kLanes / 2 ? a : b;
  return V::Load(buf);
}

// Common part of the readers: where the values of one KV head are.
template <class Dec>
class RowsBase {
 protected:
  RowsBase(const uint8_t* region, const KvRegionLayout& l, const KvRegionShape& shape, int head)
      : values_(region + static_cast<int64_t>(head) * shape.block_size * l.row_bytes),
        row_bytes_(static_cast<int>(l.row_bytes)),
        head_dim_(shape.head_dim),
        packed_((shape.head_dim * Dec::kBits) % 8 == 0) {}

  const uint8_t* Codes(int token, int d0) const {
    return values_ + static_cast<int64_t>(token) * row_bytes_ + d0 * Dec::kBits / 8;
  }
  // Codes of n <= 16 values read back to back from row `token` (head_dim < 16), as floats.
  template <class V>
  typename V::Reg PackedCodes(int token, int n) const {
    if (packed_) return Dec::template Load<V>(Codes(token, 0), n);
    // Rows end inside a byte: decode row by row (head_dim < 16: at most two chunks of 8).
    alignas(64) float buf[kMaxLanes] = {};
    for (int i = 0; i < n; i += head_dim_) {
      const int row = token + i / head_dim_, m = std::min(n - i, head_dim_);
      for (int c = 0; c * 8 < m; ++c) {
        const simd::VecScalar::Reg v =
            Dec::template Load<simd::VecScalar>(Codes(row, c * 8), std::min(8, head_dim_ - c * 8));
        for (int j = c * 8; j < std::min(m, c * 8 + 8); ++j) buf[i + j] = v.v[j - c * 8];
      }
    }
    return V::Load(buf);
  }

  const uint8_t* values_;  // [block_size][row_bytes] of this head
  int row_bytes_;
  int head_dim_;
  bool packed_;  // rows follow each other without padding bits
};

// Per-channel parameters of one block, decoded at construction: x = q s[d] (+ o[d]).
template <class Dec, bool kOffset>
class ChannelRows : RowsBase<Dec> {
  using Base = RowsBase<Dec>;

 public:
  ChannelRows(const uint8_t* region, const KvRegionShape& shape, int head, KvFormat f)
      : ChannelRows(region, KvRegionLayoutOf(f, KvRole::kKey, shape), shape, head) {}

  template <class V>
  typename V::Reg Load(int token, int d0) const {
    const auto q = Dec::template Load<V>(this->Codes(token, d0), V::kLanes);
    if constexpr (kOffset) return V::Fma(q, V::Load(scale_ + d0), V::Load(offset_ + d0));
    return V::Mul(q, V::Load(scale_ + d0));
  }
  template <class V>
  typename V::Reg LoadN(int token, int d0, int n) const {
    const auto q = Dec::template Load<V>(this->Codes(token, d0), n);
    if constexpr (kOffset) {
      return V::ZeroFrom(V::Fma(q, V::Load(scale_ + d0), V::Load(offset_ + d0)), n);
    }
    return V::Mul(q, V::Load(scale_ + d0));
  }
  template <class V>
  typename V::Reg LoadPacked(int token, int n) const {
    if (n <= 0) return V::Zero();
    if (this->head_dim_ >= V::kLanes) return LoadN<V>(token, 0, n);
    const auto q = this->template PackedCodes<V>(token, n);
    if constexpr (kOffset) {
      return V::ZeroFrom(V::Fma(q, V::Load(pattern_scale_), V::Load(pattern_offset_)), n);
    }
    return V::Mul(q, V::Load(pattern_scale_));
  }

 private:
  ChannelRows(const uint8_t* region, const KvRegionLayout& l, const KvRegionShape& shape, int head)
      : Base(region, l, shape, head) {
    using W = simd::VecWide;
    using Io = simd::QuantIo<W>;
    constexpr int kL = W::kLanes;
    const int hd = shape.head_dim;
    const int cpb = kOffset ? 2 : 1;  // {u8 scale code, i8 zero} or {u8 scale code}
    const float ref = LoadF32(region + l.head_param_offset + 4 * head);
    const uint8_t* params = region + l.channel_param_offset + static_cast<int64_t>(head) * hd * cpb;
    const auto r = W::Set1(ref);
    for (int d = 0; d < hd; d += kL) {
      const int n = std::min(kL, hd - d);
      if constexpr (kOffset) {
        typename W::Reg log_scale, zero;
        Io::LogScaleZero(params + 2 * d, n, &log_scale, &zero);
        const auto s = W::Mul(log_scale, r);
        W::Store(scale_ + d, s);
        W::Store(offset_ + d, W::Mul(W::Mul(zero, W::Set1(1.0f / kKvZeroSubsteps)), s));
      } else {
        W::Store(scale_ + d, W::Mul(Io::LogScale(params + d, n), r));
      }
    }
    // Pad to whole registers so that Load / LoadN may read a full register at any d0 < hd.
    for (int d = (hd + kL - 1) / kL * kL; d < (hd + kMaxLanes - 1) / kMaxLanes * kMaxLanes; ++d) {
      scale_[d] = 0.0f;
      if constexpr (kOffset) offset_[d] = 0.0f;
    }
    if (hd < kMaxLanes) {
      for (int i = 0; i < kMaxLanes; ++i) {
        pattern_scale_[i] = scale_[i % hd];
        if constexpr (kOffset) pattern_offset_[i] = offset_[i % hd];
      }
    }
  }

  alignas(64) float scale_[kKvMaxChannelHeadDim];
  alignas(64) float offset_[kOffset ? kKvMaxChannelHeadDim : 1];
  // Lane i of rows read back to back: channel i % head_dim (head_dim < kMaxLanes only).
  alignas(64) float pattern_scale_[kMaxLanes];
  alignas(64) float pattern_offset_[kOffset ? kMaxLanes : 1];
};

// One BF16 scale per token (and head): x = q s[t] (+ c[d] u for fp8 keys).
template <class Dec, bool kCenter>
class RowRows : RowsBase<Dec> {
  using Base = RowsBase<Dec>;

 public:
  RowRows(const uint8_t* region, const KvRegionShape& shape, int head, KvFormat f, KvRole role)
      : RowRows(region, KvRegionLayoutOf(f, role, shape), shape, head) {}

  template <class V>
  typename V::Reg Load(int token, int d0) const {
    return Apply<V>(Dec::template Load<V>(this->Codes(token, d0), V::kLanes),
                    V::Set1(scale_[token]), d0);
  }
  template <class V>
  typename V::Reg LoadN(int token, int d0, int n) const {
    const auto x =
        Apply<V>(Dec::template Load<V>(this->Codes(token, d0), n), V::Set1(Scale(token)), d0);
    return kCenter ? V::ZeroFrom(x, n) : x;
  }
  template <class V>
  typename V::Reg LoadPacked(int token, int n) const {
    if (n <= 0) return V::Zero();
    const int hd = this->head_dim_;
    if (hd >= V::kLanes) return LoadN<V>(token, 0, n);
    const auto q = this->template PackedCodes<V>(token, n);
    typename V::Reg s;
    if (2 * hd == V::kLanes) {
      s = Halves<V>(Scale(token), n > hd ? Scale(token + 1) : 0.0f);
    } else {
      alignas(64) float buf[kMaxLanes] = {};
      for (int i = 0; i < n; ++i) buf[i] = Scale(token + i / hd);
      s = V::Load(buf);
    }
    if constexpr (kCenter) return V::ZeroFrom(V::Fma(q, s, V::Load(pattern_center_)), n);
    return V::Mul(q, s);
  }

 private:
  RowRows(const uint8_t* region, const KvRegionLayout& l, const KvRegionShape& shape, int head)
      : Base(region, l, shape, head) {
    using W = simd::VecWide;
    const auto* bf16 = reinterpret_cast<const simd::Bf16*>(
        region + l.token_param_offset + static_cast<int64_t>(head) * shape.block_size * 2);
    for (int t = 0; t < shape.block_size; t += W::kLanes) {
      const int n = std::min(W::kLanes, shape.block_size - t);
      W::StoreN(scale_ + t, W::Mul(W::LoadN(bf16 + t, n), W::Set1(ParamScale<Dec>())), n);
    }
    if constexpr (kCenter) {
      const int hd = shape.head_dim;
      const float unit = LoadF32(region + l.head_param_offset + 4 * head);
      const uint8_t* c = region + l.channel_param_offset + static_cast<int64_t>(head) * hd * 2;
      using W = simd::VecWide;
      int d = 0;
      for (; d < hd; d += W::kLanes) {
        const int n = std::min(W::kLanes, hd - d);
        W::Store(center_ + d,
                 W::Mul(W::LoadN(reinterpret_cast<const simd::Fp16*>(c) + d, n), W::Set1(unit)));
      }
      for (; d % kMaxLanes != 0; ++d) center_[d] = 0.0f;  // whole registers past head_dim
      if (hd < kMaxLanes) {
        for (int i = 0; i < kMaxLanes; ++i) pattern_center_[i] = center_[i % hd];
      }
    }
  }

  float Scale(int token) const { return scale_[token]; }

  template <class V>
  typename V::Reg Apply(typename V::Reg q, typename V::Reg s, int d0) const {
    if constexpr (kCenter) return V::Fma(q, s, V::Load(center_ + d0));
    return V::Mul(q, s);
  }

  alignas(64) float scale_[kKvMaxTokenParams];  // [block_size], times ParamScale<Dec>()
  alignas(64) float center_[kCenter ? kKvMaxChannelHeadDim : 1];
  alignas(64) float pattern_center_[kCenter ? kMaxLanes : 1];
};

// Parameters per token and group of kGroup dims: x = q s (+ m), where (s, m) are two BF16 numbers
// (kMin) or s is an E4M3 code times the region scale (nvfp4).
template <class Dec, bool kMin, int kGroup>
class GroupRows : RowsBase<Dec> {
  using Base = RowsBase<Dec>;
  static constexpr int kParamBytes = kMin ? 4 : 1;  // {BF16 scale, BF16 min} or an E4M3 code

 public:
  GroupRows(const uint8_t* region, const KvRegionShape& shape, int head, KvFormat f, KvRole role)
      : GroupRows(region, KvRegionLayoutOf(f, role, shape), shape, head) {}

  template <class V>
  typename V::Reg Load(int token, int d0) const {
    static_assert(kGroup % V::kLanes == 0);
    return Apply<V>(Dec::template Load<V>(this->Codes(token, d0), V::kLanes), token, d0 / kGroup);
  }
  template <class V>
  typename V::Reg LoadN(int token, int d0, int n) const {
    return V::ZeroFrom(
        Apply<V>(Dec::template Load<V>(this->Codes(token, d0), n), token, d0 / kGroup), n);
  }
  template <class V>
  typename V::Reg LoadPacked(int token, int n) const {
    if (n <= 0) return V::Zero();
    const int hd = this->head_dim_;
    if (hd >= V::kLanes) return LoadN<V>(token, 0, n);
    // head_dim < kLanes <= kGroup: one group per row.
    const auto q = this->template PackedCodes<V>(token, n);
    typename V::Reg s, m;
    if (2 * hd == V::kLanes) {
      const bool two = n > hd;
      s = Halves<V>(Scale(token, 0), two ? Scale(token + 1, 0) : 0.0f);
      if constexpr (kMin) m = Halves<V>(Min(token, 0), two ? Min(token + 1, 0) : 0.0f);
    } else {
      alignas(64) float sb[kMaxLanes] = {}, mb[kMaxLanes] = {};
      for (int i = 0; i < n; ++i) {
        sb[i] = Scale(token + i / hd, 0);
        if constexpr (kMin) mb[i] = Min(token + i / hd, 0);
      }
      s = V::Load(sb);
      if constexpr (kMin) m = V::Load(mb);
    }
    if constexpr (kMin) return V::ZeroFrom(V::Fma(q, s, m), n);
    return V::Mul(q, s);
  }

 private:
  GroupRows(const uint8_t* region, const KvRegionLayout& l, const KvRegionShape& shape, int head)
      : Base(region, l, shape, head), groups_(static_cast<int>(l.groups)) {
    using W = simd::VecWide;
    const int count = shape.block_size * groups_;  // parameters of this head
    const uint8_t* p =
        region + l.token_param_offset + static_cast<int64_t>(head) * count * kParamBytes;
    if constexpr (kMin) {  // BF16 pairs, decoded in place: param_[2 i] scale, [2 i + 1] min
      const auto* bf16 = reinterpret_cast<const simd::Bf16*>(p);
      for (int i = 0; i < 2 * count; i += W::kLanes) {
        const int n = std::min(W::kLanes, 2 * count - i);
        W::StoreN(param_ + i, W::LoadN(bf16 + i, n), n);
      }
    } else {  // E4M3 codes times the region scale
      const auto g = W::Set1(LoadF32(region + l.region_scale_offset) * 256.0f);
      for (int i = 0; i < count; i += W::kLanes) {
        const int n = std::min(W::kLanes, count - i);
        W::StoreN(param_ + i, W::Mul(simd::QuantIo<W>::E4m3x256(p + i, n), g), n);
      }
    }
  }

  float Scale(int token, int g) const { return param_[(token * groups_ + g) * (kMin ? 2 : 1)]; }
  float Min(int token, int g) const { return param_[(token * groups_ + g) * 2 + 1]; }

  template <class V>
  typename V::Reg Apply(typename V::Reg q, int token, int g) const {
    const float* p = param_ + (token * groups_ + g) * (kMin ? 2 : 1);
    if constexpr (kMin) return V::Fma(q, V::Set1(p[0]), V::Set1(p[1]));
    return V::Mul(q, V::Set1(p[0]));
  }

  int groups_;
  alignas(64) float param_[kMin ? 2 * kKvMaxTokenParams : kKvMaxTokenParams];
};

// Requests the values and parameters of KV head `head` (rows [0, tokens)) of a region.
inline void PrefetchRegion(KvFormat f, KvRole role, const uint8_t* region,
                           const KvRegionShape& shape, int head, int tokens) {
  const KvRegionLayout l = KvRegionLayoutOf(f, role, shape);
  const KvScheme k = KvSchemeOf(f, role);
  const int64_t head_values = static_cast<int64_t>(shape.block_size) * l.row_bytes;
  simd::PrefetchBytes(region + head * head_values, tokens * l.row_bytes);
  if (k.channel_param_bytes > 0) {
    const int64_t bytes = static_cast<int64_t>(shape.head_dim) * k.channel_param_bytes;
    simd::PrefetchBytes(region + l.channel_param_offset + head * bytes, bytes);
  }
  if (k.token_param_bytes > 0) {
    const int64_t row = l.groups * k.token_param_bytes;
    simd::PrefetchBytes(region + l.token_param_offset + head * shape.block_size * row,
                        tokens * row);
  }
}

// A codec of the quantized formats: KeyRows and ValueRows readers for format F.
template <KvFormat F, class KeyReader, class ValueReader>
struct KvQuantCodec {
  class KeyRows : public KeyReader {
   public:
    KeyRows(const uint8_t* region, const KvRegionShape& shape, int head)
        : KeyReader(region, shape, head, F, KvRole::kKey) {}
  };
  class ValueRows : public ValueReader {
   public:
    ValueRows(const uint8_t* region, const KvRegionShape& shape, int head)
        : ValueReader(region, shape, head, F, KvRole::kValue) {}
  };

  static void WriteRow(uint8_t*, const KvRegionShape&, int, int, const float*) {
    KVSERVE_KERNEL_CHECK(false, "this KV format is not token-writable (see KvFormatTokenWritable)");
  }
  static void Prefetch(const uint8_t* region, KvRole role, const KvRegionShape& shape, int head,
                       int tokens) {
    PrefetchRegion(F, role, region, shape, head, tokens);
  }
};

// ChannelRows takes (region, shape, head, format); adapts it to the (…, format, role) signature.
template <class Dec, bool kOffset>
class KeyChannelRows : public ChannelRows<Dec, kOffset> {
 public:
  KeyChannelRows(const uint8_t* region, const KvRegionShape& shape, int head, KvFormat f, KvRole)
      : ChannelRows<Dec, kOffset>(region, shape, head, f) {}
};

}  // namespace quant

template <KvFormat F>
struct KvCodec;
template <>
struct KvCodec<KvFormat::kFp8>
    : quant::KvQuantCodec<KvFormat::kFp8, quant::RowRows<quant::DecE4m3, true>,
                          quant::RowRows<quant::DecE4m3, false>> {};
template <>
struct KvCodec<KvFormat::kInt8>
    : quant::KvQuantCodec<KvFormat::kInt8, quant::KeyChannelRows<quant::DecI8, false>,
                          quant::RowRows<quant::DecI8, false>> {};
template <>
struct KvCodec<KvFormat::kInt4>
    : quant::KvQuantCodec<KvFormat::kInt4, quant::KeyChannelRows<quant::DecU4, true>,
                          quant::GroupRows<quant::DecU4, true, kKvIntValueGroup>> {};
template <>
struct KvCodec<KvFormat::kInt2>
    : quant::KvQuantCodec<KvFormat::kInt2, quant::KeyChannelRows<quant::DecU2, true>,
                          quant::GroupRows<quant::DecU2, true, kKvIntValueGroup>> {};
template <>
struct KvCodec<KvFormat::kNvfp4>
    : quant::KvQuantCodec<KvFormat::kNvfp4, quant::GroupRows<quant::DecE2m1, false, kKvNvfp4Group>,
                          quant::GroupRows<quant::DecE2m1, false, kKvNvfp4Group>> {};

}  // namespace kvserve::kernels::cpu

#endif  // KVSERVE_KERNELS_CPU_KV_CODEC_QUANT_H_
