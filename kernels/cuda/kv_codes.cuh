// Device readers of KV block rows in every KvFormat (layouts: kernels/kv_format.h): the CUDA twin
// of the CPU codecs (kernels/cpu/kv_codec*.h). A lane reads kC consecutive dims of one row in two
// steps so that loads can be issued ahead of the arithmetic:
//   LoadCodes   the raw bytes holding the codes of dims [d0, d0 + kC) (vector loads when aligned);
//   Dequant     their values x = f(code, parameters): dequantization in registers, with the
//               parameters (per head, channel, token, group) read from the block (L1-resident).
// Dims past head_dim read as 0. Arithmetic matches the CPU readers operation for operation
// (same products, same fused multiply-adds), so a dequantized value equals the CPU one.
#ifndef KVSERVE_KERNELS_CUDA_KV_CODES_CUH_
#define KVSERVE_KERNELS_CUDA_KV_CODES_CUH_

#include <cstdint>

#include "kernels/cuda/common.cuh"
#include "kernels/kv_format.h"

namespace kvserve::kernels::cuda::device {

template <KvFormat F, KvRole R>
inline constexpr int kValueBits = KvSchemeOf(F, R).value_bits;

// Raw code bytes of kC dims; `shift` is the bit offset of the first code in w[0].
template <KvFormat F, KvRole R, int kC>
struct RowCodes {
  static constexpr int kBits = kValueBits<F, R>;
  static constexpr int kBytes = (kC * kBits + 7) / 8 > 0 ? (kC* kBits + 7) / 8 : 1;
  static constexpr int kWords = (kBytes + 3) / 4;
  uint32_t w[kWords];
  int shift;
};

// Geometry of one region as the readers need it (32-bit: a region is far below 2 GiB).
struct RegionGeo {
  struct {
    int row_bytes, groups, region_scale_offset, head_param_offset, channel_param_offset,
        token_param_offset;
  } l;
  int block_size;
  int head_dim;
};

template <KvFormat F, KvRole R>
__device__ __forceinline__ RegionGeo GeoOf(const KvRegionShape& s) {
  const KvRegionLayout l = KvRegionLayoutOf(F, R, s);
  RegionGeo g;
  g.l.row_bytes = static_cast<int>(l.row_bytes);
  g.l.groups = static_cast<int>(l.groups);
  g.l.region_scale_offset = static_cast<int>(l.region_scale_offset);
  g.l.head_param_offset = static_cast<int>(l.head_param_offset);
  g.l.channel_param_offset = static_cast<int>(l.channel_param_offset);
  g.l.token_param_offset = static_cast<int>(l.token_param_offset);
  g.block_size = s.block_size;
  g.head_dim = s.head_dim;
  return g;
}

template <KvFormat F, KvRole R, int kC>
__device__ __forceinline__ RowCodes<F, R, kC> LoadCodes(const uint8_t* region, const RegionGeo& g,
                                                        int head, int t, int d0) {
  using C = RowCodes<F, R, kC>;
  C c;
#pragma unroll
  for (int i = 0; i < C::kWords; ++i) c.w[i] = 0;
  c.shift = 0;
  const int n = min(kC, g.head_dim - d0);
  if (n <= 0) return c;
  const int bit0 = d0 * C::kBits;
  const uint8_t* p = region + (head * g.block_size + t) * g.l.row_bytes + bit0 / 8;
  c.shift = static_cast<int>(bit0 % 8);
  const int bytes = (c.shift + n * C::kBits + 7) / 8;
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  if (bytes == C::kBytes && C::kBytes % 16 == 0 && a % 16 == 0) {
#pragma unroll
    for (int i = 0; i < C::kWords / 4; ++i) {
      const uint4 v = __ldg(reinterpret_cast<const uint4*>(p) + i);
      c.w[4 * i] = v.x;
      c.w[4 * i + 1] = v.y;
      c.w[4 * i + 2] = v.z;
      c.w[4 * i + 3] = v.w;
    }
  } else if (bytes == C::kBytes && C::kBytes % 8 == 0 && a % 8 == 0) {
#pragma unroll
    for (int i = 0; i < C::kWords / 2; ++i) {
      const uint2 v = __ldg(reinterpret_cast<const uint2*>(p) + i);
      c.w[2 * i] = v.x;
      c.w[2 * i + 1] = v.y;
    }
  } else if (bytes == C::kBytes && C::kBytes % 4 == 0 && a % 4 == 0) {
#pragma unroll
    for (int i = 0; i < C::kWords; ++i) c.w[i] = __ldg(reinterpret_cast<const uint32_t*>(p) + i);
  } else {
#pragma unroll
    for (int i = 0; i < C::kBytes; ++i) {
      if (i < bytes) c.w[i / 4] |= static_cast<uint32_t>(__ldg(p + i)) << (8 * (i % 4));
    }
  }
  return c;
}

// Code of dim d0 + i (i < kC).
template <KvFormat F, KvRole R, int kC>
__device__ __forceinline__ uint32_t CodeAt(const RowCodes<F, R, kC>& c, int i) {
  constexpr int kBits = RowCodes<F, R, kC>::kBits;
  if constexpr (kBits == 32) {
    return c.w[i];
  } else {
    const int pos = c.shift + i * kBits;
    return (c.w[pos / 32] >> (pos % 32)) & ((1u << kBits) - 1u);
  }
}

__device__ __forceinline__ float LoadF32(const uint8_t* p) {
  return __ldg(reinterpret_cast<const float*>(p));
}
__device__ __forceinline__ uint32_t LoadU16(const uint8_t* p) {
  return __ldg(reinterpret_cast<const unsigned short*>(p));
}

// x[i] = value of dim d0 + i of row t of KV head `head` (0 past head_dim).
template <KvFormat F, KvRole R, int kC>
__device__ __forceinline__ void Dequant(const RowCodes<F, R, kC>& c, const uint8_t* region,
                                        const RegionGeo& g, int head, int t, int d0,
                                        float (&x)[kC]) {
  const int n = min(kC, g.head_dim - d0);
  const auto& l = g.l;
  const int row_index = head * g.block_size + t;
  [[maybe_unused]] float row_scale = 0.0f;
  [[maybe_unused]] float head_param = 0.0f;
  if constexpr (F == KvFormat::kFp8 || (F == KvFormat::kInt8 && R == KvRole::kValue)) {
    if (n > 0) row_scale = Bf16BitsToFloat(LoadU16(region + l.token_param_offset + 2 * row_index));
  }
  if constexpr (KvSchemeOf(F, R).head_param) {
    if (n > 0) head_param = LoadF32(region + l.head_param_offset + 4 * head);
  }
  [[maybe_unused]] float region_scale = 0.0f;
  if constexpr (F == KvFormat::kNvfp4) {
    if (n > 0) region_scale = LoadF32(region + l.region_scale_offset);
  }
#pragma unroll
  for (int i = 0; i < kC; ++i) {
    if (i >= n) {
      x[i] = 0.0f;
      continue;
    }
    const uint32_t code = CodeAt<F, R, kC>(c, i);
    const int d = d0 + i;
    if constexpr (F == KvFormat::kFp32) {
      x[i] = __uint_as_float(code);
    } else if constexpr (F == KvFormat::kFp16) {
      x[i] = Fp16BitsToFloat(code);
    } else if constexpr (F == KvFormat::kBf16) {
      x[i] = Bf16BitsToFloat(code);
    } else if constexpr (F == KvFormat::kFp8) {
      const float q = E4m3ToFloat(code);
      if constexpr (R == KvRole::kKey) {
        const int ch = head * g.head_dim + d;
        const float center =
            Fp16BitsToFloat(LoadU16(region + l.channel_param_offset + 2 * ch)) * head_param;
        x[i] = fmaf(q, row_scale, center);
      } else {
        x[i] = q * row_scale;
      }
    } else if constexpr (F == KvFormat::kInt8) {
      const float q = static_cast<float>(static_cast<int8_t>(code));
      if constexpr (R == KvRole::kKey) {
        const int ch = head * g.head_dim + d;
        x[i] = q * (LogScale(__ldg(region + l.channel_param_offset + ch)) * head_param);
      } else {
        x[i] = q * row_scale;
      }
    } else if constexpr (F == KvFormat::kInt4 || F == KvFormat::kInt2) {
      const float q = static_cast<float>(code);
      if constexpr (R == KvRole::kKey) {
        const int ch = head * g.head_dim + d;
        const uint32_t pz = LoadU16(region + l.channel_param_offset + 2 * ch);
        const float s = LogScale(pz & 255u) * head_param;
        const float z = static_cast<float>(static_cast<int8_t>(pz >> 8));
        x[i] = fmaf(q, s, (z * (1.0f / kKvZeroSubsteps)) * s);
      } else {
        const uint8_t* p =
            region + l.token_param_offset + (row_index * l.groups + d / kKvIntValueGroup) * 4;
        x[i] = fmaf(q, Bf16BitsToFloat(LoadU16(p)), Bf16BitsToFloat(LoadU16(p + 2)));
      }
    } else if constexpr (F == KvFormat::kNvfp4) {
      const uint32_t e =
          __ldg(region + l.token_param_offset + row_index * l.groups + d / kKvNvfp4Group);
      x[i] = E2m1ToFloat(code) * (E4m3ToFloat(e) * region_scale);
    }
  }
}

// Calls fn(std::integral_constant<KvFormat, f>{}) for the runtime format f (uniform per block).
// A block of any other format (lowrank, which is CPU-only, or a byte that is no format) is a
// broken precondition: the kernel traps, so the launch fails loudly (the host's next CUDA check
// aborts) instead of leaving that block out of the attention.
template <class Fn>
__device__ __forceinline__ void DispatchFormat(KvFormat f, Fn&& fn) {
  switch (f) {
    case KvFormat::kFp32:
      fn(std::integral_constant<KvFormat, KvFormat::kFp32>{});
      break;
    case KvFormat::kFp16:
      fn(std::integral_constant<KvFormat, KvFormat::kFp16>{});
      break;
    case KvFormat::kBf16:
      fn(std::integral_constant<KvFormat, KvFormat::kBf16>{});
      break;
    case KvFormat::kFp8:
      fn(std::integral_constant<KvFormat, KvFormat::kFp8>{});
      break;
    case KvFormat::kInt8:
      fn(std::integral_constant<KvFormat, KvFormat::kInt8>{});
      break;
    case KvFormat::kInt4:
      fn(std::integral_constant<KvFormat, KvFormat::kInt4>{});
      break;
    case KvFormat::kNvfp4:
      fn(std::integral_constant<KvFormat, KvFormat::kNvfp4>{});
      break;
    case KvFormat::kInt2:
      fn(std::integral_constant<KvFormat, KvFormat::kInt2>{});
      break;
    default:
      __trap();
  }
}

}  // namespace kvserve::kernels::cuda::device

#endif  // KVSERVE_KERNELS_CUDA_KV_CODES_CUH_
