// How the CPU kernels read and write the values of each KvFormat, and the one switch that turns a
// runtime KvFormat into a compile-time codec. Adding a format means adding a KvCodec
// specialisation (its readers, WriteRow and Prefetch) and a case in DispatchKvFormat; the
// attention and write kernels are templates over the codec and need no other change.
//
// A codec provides:
//   class KeyRows, ValueRows     read the [block_size][head_dim] rows of one KV head in the K
//                                (resp. V) region; keys and values may be encoded differently.
//                                Constructed as Rows(region, shape, head); a reader decodes the
//                                block's scales and zero points (if any) once, at construction.
//                                Load<V>(token, d0) returns dims [d0, d0 + V::kLanes) of
//                                row `token` as floats; LoadN<V>(token, d0, n) the first n of them
//                                (other lanes zero). Dequantization happens here, in registers.
//                                LoadPacked<V>(token, n): the first n values of the V::kLanes
//                                that start at row `token` when rows are read back to back
//                                (head_dim < kLanes packs several rows in one register).
//   static void WriteRow(...)    converts one row of head_dim floats into its slot (formats that
//                                are KvFormatTokenWritable only; the others encode whole blocks
//                                through QuantizeKvRegion, kv_quantize.h).
//   static void Prefetch(region, role, shape, head, tokens)
//                                asks for the cache lines the readers of one KV head will read.
// Region layout: kernels/kv_format.h. The quantized codecs: kernels/cpu/kv_codec_quant.h.
#ifndef KVSERVE_KERNELS_CPU_KV_CODEC_H_
#define KVSERVE_KERNELS_CPU_KV_CODEC_H_

#include <cstdint>
#include <type_traits>

#include "kernels/cpu/check.h"
#include "kernels/cpu/kv_codec_quant.h"
#include "kernels/cpu/simd.h"
#include "kernels/kv_format.h"

namespace kvserve::kernels::cpu {

// Codec of the unscaled floating-point formats: values stored as Elem, row-major per head.
template <class Elem>
struct KvFloatCodec {
  class Rows {
   public:
    // region: base of the K or V region of one layer in one block.
    Rows(const uint8_t* region, const KvRegionShape& shape, int head)
        : base_(reinterpret_cast<const Elem*>(region) +
                static_cast<int64_t>(head) * shape.block_size * shape.head_dim),
          head_dim_(shape.head_dim) {}

    template <class V>
    typename V::Reg Load(int token, int d0) const {
      return V::Load(base_ + static_cast<int64_t>(token) * head_dim_ + d0);
    }
    template <class V>
    typename V::Reg LoadN(int token, int d0, int n) const {
      return V::LoadN(base_ + static_cast<int64_t>(token) * head_dim_ + d0, n);
    }

    template <class V>
    typename V::Reg LoadPacked(int token, int n) const {
      const Elem* p = base_ + static_cast<int64_t>(token) * head_dim_;
      return n == V::kLanes ? V::Load(p) : V::LoadN(p, n);
    }

   private:
    const Elem* base_;  // [block_size][head_dim] of this head
    int head_dim_;
  };
  using KeyRows = Rows;
  using ValueRows = Rows;

  // src: [head_dim] floats; writes slot `token` of KV head `head` in `region`.
  static void WriteRow(uint8_t* region, const KvRegionShape& shape, int head, int token,
                       const float* src) {
    Elem* dst = reinterpret_cast<Elem*>(region) +
                (static_cast<int64_t>(head) * shape.block_size + token) * shape.head_dim;
    if (shape.head_dim <= simd::VecNarrow::kLanes) {
      simd::ConvertRow<simd::VecNarrow>(src, shape.head_dim, dst);
    } else {
      simd::ConvertRow<simd::VecWide>(src, shape.head_dim, dst);
    }
  }

  // The first `tokens` rows of KV head `head` in `region`.
  static void Prefetch(const uint8_t* region, KvRole, const KvRegionShape& shape, int head,
                       int tokens) {
    const int64_t row_bytes = static_cast<int64_t>(shape.head_dim) * sizeof(Elem);
    simd::PrefetchBytes(region + static_cast<int64_t>(head) * shape.block_size * row_bytes,
                        tokens * row_bytes);
  }
};

template <>
struct KvCodec<KvFormat::kFp32> : KvFloatCodec<float> {};
template <>
struct KvCodec<KvFormat::kFp16> : KvFloatCodec<simd::Fp16> {};
template <>
struct KvCodec<KvFormat::kBf16> : KvFloatCodec<simd::Bf16> {};

// lowrank: KeyRows reads a row's shape.key_rank FP16 coefficients (dims [0, key_rank), not
// head_dim: attention scores them against the query projected on the layer's basis, see
// kIsLowrankCodec); ValueRows read int8 values.
template <>
struct KvCodec<KvFormat::kLowrank> {
  class KeyRows : public KvFloatCodec<simd::Fp16>::Rows {
   public:
    KeyRows(const uint8_t* region, const KvRegionShape& shape, int head)
        : KvFloatCodec<simd::Fp16>::Rows(
              region, KvRegionShape{shape.block_size, shape.num_kv_heads, shape.key_rank}, head) {}
  };
  using ValueRows = quant::KvQuantCodec<KvFormat::kLowrank, quant::RowRows<quant::DecI8, false>,
                                        quant::RowRows<quant::DecI8, false>>::ValueRows;

  static void WriteRow(uint8_t*, const KvRegionShape&, int, int, const float*) {
    KVSERVE_KERNEL_CHECK(false, "this KV format is not token-writable (see KvFormatTokenWritable)");
  }
  static void Prefetch(const uint8_t* region, KvRole role, const KvRegionShape& shape, int head,
                       int tokens) {
    quant::PrefetchRegion(KvFormat::kLowrank, role, region, shape, head, tokens);
  }
};

// True for the codec whose keys are coefficients on a basis rather than head_dim values.
template <class Codec>
inline constexpr bool kIsLowrankCodec = std::is_same_v<Codec, KvCodec<KvFormat::kLowrank>>;

// Calls fn(KvCodec<f>{}) for the runtime format f. Call it once per block, never per element.
template <class Fn>
inline void DispatchKvFormat(KvFormat f, Fn&& fn) {
  switch (f) {
    case KvFormat::kFp32:
      fn(KvCodec<KvFormat::kFp32>{});
      return;
    case KvFormat::kFp16:
      fn(KvCodec<KvFormat::kFp16>{});
      return;
    case KvFormat::kBf16:
      fn(KvCodec<KvFormat::kBf16>{});
      return;
    case KvFormat::kFp8:
      fn(KvCodec<KvFormat::kFp8>{});
      return;
    case KvFormat::kInt8:
      fn(KvCodec<KvFormat::kInt8>{});
      return;
    case KvFormat::kInt4:
      fn(KvCodec<KvFormat::kInt4>{});
      return;
    case KvFormat::kNvfp4:
      fn(KvCodec<KvFormat::kNvfp4>{});
      return;
    case KvFormat::kInt2:
      fn(KvCodec<KvFormat::kInt2>{});
      return;
    case KvFormat::kLowrank:
      fn(KvCodec<KvFormat::kLowrank>{});
      return;
  }
  KVSERVE_KERNEL_CHECK(false, "unknown KvFormat");
}

}  // namespace kvserve::kernels::cpu

#endif  // KVSERVE_KERNELS_CPU_KV_CODEC_H_
