// Region encoders on the GPU (formulas: kernels/kv_format.h; CPU twin: kernels/cpu/kv_quantize.cc).
//
// One thread block of 256 threads per region. It first checks the region's rows (finite, within
// kKvQuantMaxAbs) and finds the nvfp4 region maximum, then, head by head, stages the head's rows
// as floats in shared memory and encodes them: per-channel passes with one thread per channel,
// per-row and per-group passes with one warp per row or group. This file is compiled with
// --fmad=false: every product and sum rounds on its own, as in the CPU encoder, and the only
// fused multiply-adds are the explicit ones.
#include <cfloat>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/kv_quantize.h"

namespace kvserve::kernels::cuda {
namespace {

using device::Bf16BitsToFloat;
using device::E4m3ToFloat;
using device::FloatToBf16Bits;
using device::LogScale;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

// ---- Parameter rounding (as kernels/cpu/kv_quantize.cc) ----

__device__ uint16_t Bf16Up(float x) {
  uint16_t b = FloatToBf16Bits(x);
  if (Bf16BitsToFloat(b) < x) ++b;
  return b;
}
__device__ uint16_t Bf16Down(float x) {
  uint16_t b = FloatToBf16Bits(x);
  if (Bf16BitsToFloat(b) > x) {
    if (b & 0x8000u) {
      ++b;
    } else {
      b = b == 0 ? 0x8001u : static_cast<uint16_t>(b - 1);
    }
  }
  return b;
}
// simd::EncodeE4m3: nearest, ties to even, clamped to +-448.
__device__ uint32_t EncodeE4m3(float y) {
  y = fminf(fmaxf(y, -kKvE4m3Max), kKvE4m3Max);
  const uint32_t bits = __float_as_uint(y);
  const uint32_t sign = (bits >> 24) & 0x80u;
  const uint32_t a = bits & 0x7fffffffu;
  uint32_t code;
  if (a < 0x3c800000u) {
    code = static_cast<uint32_t>(rintf(__uint_as_float(a) * 512.0f));
  } else {
    code = ((a + 0x7ffffu + ((a >> 20) & 1u)) >> 20) - (120u << 3);
  }
  return sign | code;
}
__device__ uint32_t EncodeE2m1(float y) {
  const float a = fabsf(y);
  const uint32_t code = (a > 0.25f) + (a >= 0.75f) + (a > 1.25f) + (a >= 1.75f) + (a > 2.5f) +
                        (a >= 3.5f) + (a > 5.0f);
  return code | (signbit(y) && code != 0 ? 8u : 0u);
}
__device__ uint32_t E4m3Up(float x) {
  uint32_t c = EncodeE4m3(x);
  if (E4m3ToFloat(c) < x) ++c;
  return c;
}
__device__ uint32_t LogScaleCode(float need, float ref) {
  int k = 255;
  if (need > 0.0f) {
    int e;
    const float m = frexpf(need / ref, &e);
    k = min(max(static_cast<int>(-16.0f * (static_cast<float>(e) + 2.0f * m - 2.0f)), 0), 255);
  }
  while (k > 0 && ref * LogScale(k) < need) --k;
  while (k < 255 && ref * LogScale(k + 1) >= need) ++k;
  return static_cast<uint32_t>(k);
}

// min and max of channel d over rows [0, n), with the x86 minps / maxps rule for equal operands
// (the second one wins), so that the sign of a zero extreme matches the CPU encoder.
__device__ void ChannelRange(const float* x, int hd, int n, int d, float* lo, float* hi) {
  float mn = __int_as_float(0x7f800000), mx = -__int_as_float(0x7f800000);
  for (int t = 0; t < n; ++t) {
    const float v = x[t * hd + d];
    mn = mn < v ? mn : v;
    mx = mx > v ? mx : v;
  }
  *lo = mn;
  *hi = mx;
}

__device__ float Clamp(float v, float lo, float hi) { return fminf(fmaxf(v, lo), hi); }

// Max over the thread block (every thread gets it). `scratch`: kWarps floats.
__device__ float BlockMax(float v, float* scratch) {
  v = device::WarpMax(v);
  __syncthreads();
  if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = v;
  __syncthreads();
  float r = scratch[0];
  for (int w = 1; w < kWarps; ++w) r = fmaxf(r, scratch[w]);
  return r;
}

__device__ float ReadSource(KvFormat f, const uint8_t* region, int64_t i) {
  switch (f) {
    case KvFormat::kFp16:
      return device::Fp16BitsToFloat(reinterpret_cast<const uint16_t*>(region)[i]);
    case KvFormat::kBf16:
      return Bf16BitsToFloat(reinterpret_cast<const uint16_t*>(region)[i]);
    default:
      return reinterpret_cast<const float*>(region)[i];
  }
}

struct Job {
  KvFormat src_format;
  KvRegionRefs src;
  KvFormat dst_format;
  KvRole role;
  KvRegionShape shape;
  const int32_t* tokens;
  KvRegionRefs dst;
  uint8_t* ok;
};

__device__ const uint8_t* At(const KvRegionRefs& r, int64_t i) {
  return r.ptrs != nullptr ? r.ptrs[i] : r.base + i * r.stride;
}

// Shared state of one thread block.
struct Smem {
  float lo[kKvMaxChannelHeadDim];
  float hi[kKvMaxChannelHeadDim];
  float scale[kKvMaxChannelHeadDim];
  float shift[kKvMaxChannelHeadDim];  // int keys: zero / 4; fp8 keys: the stored centers
  float red[kWarps];
};

// Per-channel keys (int8: symmetric; int4 / int2: with a zero point): EncodeKeyChannels.
template <int kBits, bool kAsym>
__device__ void EncodeKeyChannels(const float* x, int hd, int n, uint8_t* values, int64_t row_bytes,
                                  uint8_t* head_param, uint8_t* params, Smem& sm) {
  constexpr float kQMax = kAsym ? static_cast<float>((1 << kBits) - 1) : 127.0f;
  float local = 0.0f;
  for (int d = threadIdx.x; d < hd; d += kThreads) {
    float lo, hi;
    ChannelRange(x, hd, n, d, &lo, &hi);
    const float need = kAsym ? fmaxf((hi - lo) / kQMax, fabsf(lo) * kKvZeroSubsteps / 127.0f)
                             : fmaxf(fabsf(lo), fabsf(hi)) / kQMax;
    sm.lo[d] = lo;
    sm.hi[d] = need;
    local = fmaxf(local, need);
  }
  const float ref = BlockMax(local, sm.red);
  if (threadIdx.x == 0) *reinterpret_cast<float*>(head_param) = ref;
  for (int d = threadIdx.x; d < hd; d += kThreads) {
    const uint32_t code = LogScaleCode(sm.hi[d], ref);
    const float s = LogScale(code) * ref;
    int z = 0;
    if (kAsym && s > 0.0f) {
      z = min(max(static_cast<int>(rintf(sm.lo[d] * kKvZeroSubsteps / s)), -128), 127);
    }
    if constexpr (kAsym) {
      params[2 * d] = static_cast<uint8_t>(code);
      params[2 * d + 1] = static_cast<uint8_t>(static_cast<int8_t>(z));
    } else {
      params[d] = static_cast<uint8_t>(code);
    }
    sm.scale[d] = s > 0.0f ? s : 1.0f;
    sm.shift[d] = static_cast<float>(z) * (1.0f / kKvZeroSubsteps);
  }
  __syncthreads();
  constexpr int kPer = 8 / kBits;
  const float q_lo = kAsym ? 0.0f : -kQMax;
  const int64_t total = n * row_bytes;
  for (int64_t i = threadIdx.x; i < total; i += kThreads) {
    const int t = static_cast<int>(i / row_bytes), j = static_cast<int>(i % row_bytes);
    uint32_t byte = 0;
#pragma unroll
    for (int k = 0; k < kPer; ++k) {
      const int d = j * kPer + k;
      if (d < hd) {
        const float y = x[t * hd + d] / sm.scale[d] - sm.shift[d];
        const int q = static_cast<int>(Clamp(rintf(y), q_lo, kQMax));
        byte |= (static_cast<uint32_t>(q) & ((1u << kBits) - 1u)) << (kBits * k);
      }
    }
    values[t * row_bytes + j] = static_cast<uint8_t>(byte);
  }
}

// One BF16 scale per row; int8 or E4M3 values; fp8 keys subtract the centers in sm.shift first.
template <bool kE4m3, bool kCenter>
__device__ void EncodeRows(const float* x, int hd, int n, uint8_t* values, int64_t row_bytes,
                           uint8_t* row_scales, const Smem& sm) {
  constexpr float kMax = kE4m3 ? kKvE4m3Max : 127.0f;
  const int lane = threadIdx.x % 32;
  for (int t = threadIdx.x / 32; t < n; t += kWarps) {
    const float* row = x + t * hd;
    float amax = 0.0f;
    for (int d = lane; d < hd; d += 32) {
      amax = fmaxf(amax, fabsf(kCenter ? row[d] - sm.shift[d] : row[d]));
    }
    amax = device::WarpMax(amax);
    const uint16_t sb = Bf16Up(amax / kMax);
    if (lane == 0) reinterpret_cast<uint16_t*>(row_scales)[t] = sb;
    const float s = Bf16BitsToFloat(sb);
    const float div = s > 0.0f ? s : 1.0f;
    for (int d = lane; d < hd; d += 32) {
      const float y = (kCenter ? row[d] - sm.shift[d] : row[d]) / div;
      uint32_t code;
      if constexpr (kE4m3) {
        code = EncodeE4m3(y);
      } else {
        code = static_cast<uint32_t>(static_cast<int>(Clamp(rintf(y), -127.0f, 127.0f))) & 255u;
      }
      values[t * row_bytes + d] = static_cast<uint8_t>(code);
    }
  }
}

// fp8 keys: centers per channel (FP16 times a power of two per head), then EncodeRows.
__device__ void EncodeFp8Keys(const float* x, int hd, int n, uint8_t* values, int64_t row_bytes,
                              uint8_t* unit_out, uint8_t* centers, uint8_t* row_scales, Smem& sm) {
  float big = 0.0f;
  for (int d = threadIdx.x; d < hd; d += kThreads) {
    float lo, hi;
    ChannelRange(x, hd, n, d, &lo, &hi);
    const float mid = 0.5f * lo + 0.5f * hi;
    sm.lo[d] = mid;
    big = fmaxf(big, fabsf(mid));
  }
  big = BlockMax(big, sm.red);
  const float unit = big > 0.0f ? ldexpf(1.0f, ilogbf(big) - 14) : 1.0f;
  if (threadIdx.x == 0) *reinterpret_cast<float*>(unit_out) = unit;
  for (int d = threadIdx.x; d < hd; d += kThreads) {
    const uint16_t bits = device::FloatToFp16Bits(sm.lo[d] / unit);
    reinterpret_cast<uint16_t*>(centers)[d] = bits;
    sm.shift[d] = device::Fp16BitsToFloat(bits) * unit;
  }
  __syncthreads();
  EncodeRows<true, true>(x, hd, n, values, row_bytes, row_scales, sm);
}

// int4 / int2 values: BF16 {scale, min} per token and group of kKvIntValueGroup dims.
template <int kBits>
__device__ void EncodeValueGroups(const float* x, int hd, int n, uint8_t* values, int64_t row_bytes,
                                  int groups, uint8_t* params) {
  constexpr float kMaxCode = static_cast<float>((1 << kBits) - 1);
  constexpr int kPer = 8 / kBits;
  const int lane = threadIdx.x % 32;
  for (int i = threadIdx.x / 32; i < n * groups; i += kWarps) {
    const int t = i / groups, g = i % groups;
    const int d0 = g * kKvIntValueGroup;
    const int len = min(kKvIntValueGroup, hd - d0);
    const float* row = x + t * hd;
    float lo = FLT_MAX, hi = -FLT_MAX;
    for (int d = lane; d < len; d += 32) {
      lo = fminf(lo, row[d0 + d]);
      hi = fmaxf(hi, row[d0 + d]);
    }
    // As the CPU's RowRange: the minimum is -max(0 - x), so a zero minimum reads as -0.
    lo = -device::WarpMax(0.0f - lo);
    hi = device::WarpMax(hi);
    const uint16_t mb = Bf16Down(lo);
    const float m = Bf16BitsToFloat(mb);
    const uint16_t sb = Bf16Up((hi - m) / kMaxCode);
    const float s = Bf16BitsToFloat(sb);
    if (lane == 0) {
      uint16_t* p =
          reinterpret_cast<uint16_t*>(params + (static_cast<int64_t>(t) * groups + g) * 4);
      p[0] = sb;
      p[1] = mb;
    }
    const float div = s > 0.0f ? s : 1.0f;
    const int bytes = (len * kBits + 7) / 8;
    for (int j = lane; j < bytes; j += 32) {
      uint32_t byte = 0;
#pragma unroll
      for (int k = 0; k < kPer; ++k) {
        const int d = j * kPer + k;
        if (d < len) {
          const int q = static_cast<int>(Clamp(rintf((row[d0 + d] - m) / div), 0.0f, kMaxCode));
          byte |= static_cast<uint32_t>(q) << (kBits * k);
        }
      }
      values[t * row_bytes + d0 * kBits / 8 + j] = static_cast<uint8_t>(byte);
    }
  }
}

// nvfp4: E4M3 scale per token and group of 16 dims, times the region scale g.
__device__ void EncodeNvfp4(const float* x, int hd, int n, uint8_t* values, int64_t row_bytes,
                            int groups, float g, uint8_t* params) {
  const int lane = threadIdx.x % 32;
  for (int i = threadIdx.x / 32; i < n * groups; i += kWarps) {
    const int t = i / groups, k = i % groups;
    const int d0 = k * kKvNvfp4Group;
    const int len = min(kKvNvfp4Group, hd - d0);
    const float* row = x + t * hd + d0;
    float amax = lane < len ? fabsf(row[lane]) : 0.0f;
    amax = device::WarpMax(amax);
    const uint32_t code = g > 0.0f ? E4m3Up(fminf(amax / kKvE2m1Max / g, kKvE4m3Max)) : 0u;
    if (lane == 0) params[static_cast<int64_t>(t) * groups + k] = static_cast<uint8_t>(code);
    const float s = E4m3ToFloat(code) * g;
    const float div = s > 0.0f ? s : 1.0f;
    const int bytes = (len + 1) / 2;
    if (lane < bytes) {
      uint32_t byte = EncodeE2m1(row[2 * lane] / div);
      if (2 * lane + 1 < len) byte |= EncodeE2m1(row[2 * lane + 1] / div) << 4;
      values[t * row_bytes + d0 / 2 + lane] = static_cast<uint8_t>(byte);
    }
  }
}

__global__ void __launch_bounds__(kThreads) ConvertKernel(const Job job) {
  extern __shared__ float staged[];  // [block_size][head_dim] of one head
  __shared__ Smem sm;
  const int64_t r = blockIdx.x;
  const KvRegionShape s = job.shape;
  const int hd = s.head_dim, bs = s.block_size;
  const int n = job.tokens[r];
  if (n < 1 || n > bs) {
    if (threadIdx.x == 0) job.ok[r] = 0;
    return;
  }
  const uint8_t* src = At(job.src, r);
  uint8_t* dst = const_cast<uint8_t*>(At(job.dst, r));
  const KvFormat f = job.dst_format;
  const bool quantized = !KvFormatTokenWritable(f);
  const float limit = quantized ? kKvQuantMaxAbs : FLT_MAX;

  // Validation and the region's largest magnitude.
  bool bad = false;
  float amax = 0.0f;
  const int64_t row_elems = static_cast<int64_t>(n) * hd;
  for (int h = 0; h < s.num_kv_heads; ++h) {
    for (int64_t i = threadIdx.x; i < row_elems; i += kThreads) {
      const float v = ReadSource(job.src_format, src, static_cast<int64_t>(h) * bs * hd + i);
      const float a = fabsf(v);
      if (!(a <= limit)) bad = true;  // NaN fails the comparison
      amax = fmaxf(amax, a);
    }
  }
  if (__syncthreads_or(bad)) {
    if (threadIdx.x == 0) job.ok[r] = 0;
    return;
  }
  if (threadIdx.x == 0) job.ok[r] = 1;

  const KvRegionLayout l = KvRegionLayoutOf(f, job.role, s);
  const KvScheme scheme = KvSchemeOf(f, job.role);
  if (!quantized) {  // fp32 / fp16 / bf16: row conversion
    for (int h = 0; h < s.num_kv_heads; ++h) {
      for (int64_t i = threadIdx.x; i < row_elems; i += kThreads) {
        const int64_t e = static_cast<int64_t>(h) * bs * hd + i;
        const float v = ReadSource(job.src_format, src, e);
        if (f == KvFormat::kFp32) {
          reinterpret_cast<float*>(dst)[e] = v;
        } else if (f == KvFormat::kFp16) {
          reinterpret_cast<uint16_t*>(dst)[e] = device::FloatToFp16Bits(v);
        } else {
          reinterpret_cast<uint16_t*>(dst)[e] = FloatToBf16Bits(v);
        }
      }
    }
    return;
  }
  float g = 0.0f;  // nvfp4 region scale
  if (f == KvFormat::kNvfp4) {
    amax = BlockMax(amax, sm.red);
    g = amax > 0.0f ? fmaxf(amax / (kKvE2m1Max * kKvE4m3Max), 0x1p-100f) : 0.0f;
    if (threadIdx.x == 0) *reinterpret_cast<float*>(dst + l.region_scale_offset) = g;
  }
  const bool key = job.role == KvRole::kKey;
  for (int h = 0; h < s.num_kv_heads; ++h) {
    __syncthreads();  // the previous head is done with `staged` and `sm`
    for (int64_t i = threadIdx.x; i < row_elems; i += kThreads) {
      staged[i] = ReadSource(job.src_format, src, static_cast<int64_t>(h) * bs * hd + i);
    }
    __syncthreads();
    uint8_t* values = dst + static_cast<int64_t>(h) * bs * l.row_bytes;
    uint8_t* head_param = dst + l.head_param_offset + 4 * h;
    uint8_t* channel =
        dst + l.channel_param_offset + static_cast<int64_t>(h) * hd * scheme.channel_param_bytes;
    uint8_t* token = dst + l.token_param_offset +
                     static_cast<int64_t>(h) * bs * l.groups * scheme.token_param_bytes;
    const int groups = static_cast<int>(l.groups);
    switch (f) {
      case KvFormat::kFp8:
        if (key) {
          EncodeFp8Keys(staged, hd, n, values, l.row_bytes, head_param, channel, token, sm);
        } else {
          EncodeRows<true, false>(staged, hd, n, values, l.row_bytes, token, sm);
        }
        break;
      case KvFormat::kInt8:
        if (key) {
          EncodeKeyChannels<8, false>(staged, hd, n, values, l.row_bytes, head_param, channel, sm);
        } else {
          EncodeRows<false, false>(staged, hd, n, values, l.row_bytes, token, sm);
        }
        break;
      case KvFormat::kInt4:
        if (key) {
          EncodeKeyChannels<4, true>(staged, hd, n, values, l.row_bytes, head_param, channel, sm);
        } else {
          EncodeValueGroups<4>(staged, hd, n, values, l.row_bytes, groups, token);
        }
        break;
      case KvFormat::kInt2:
        if (key) {
          EncodeKeyChannels<2, true>(staged, hd, n, values, l.row_bytes, head_param, channel, sm);
        } else {
          EncodeValueGroups<2>(staged, hd, n, values, l.row_bytes, groups, token);
        }
        break;
      case KvFormat::kNvfp4:
        EncodeNvfp4(staged, hd, n, values, l.row_bytes, groups, g, token);
        break;
      default:
        break;
    }
  }
}

}  // namespace

void ConvertKvRegions(KvFormat src_format, const KvRegionRefs& src, KvFormat dst_format,
                      KvRole role, const KvRegionShape& shape, const int32_t* tokens,
                      const KvRegionRefs& dst, int64_t count, uint8_t* ok, Stream stream) {
  if (count <= 0) return;
  KVSERVE_CUDA_REQUIRE(KvFormatTokenWritable(src_format),
                       "cuda::ConvertKvRegions: the source format must be fp32, fp16 or bf16");
  KVSERVE_CUDA_REQUIRE(dst_format != KvFormat::kLowrank,
                       "cuda::ConvertKvRegions: lowrank keys are encoded on the CPU only (they "
                       "need the per-head basis)");
  KVSERVE_CUDA_REQUIRE(KvFormatSupports(dst_format, shape),
                       "cuda::ConvertKvRegions: unsupported shape for the destination format");
  const int64_t elems = static_cast<int64_t>(shape.block_size) * shape.head_dim;
  KVSERVE_CUDA_REQUIRE(elems <= kQuantizeMaxHeadElems,
                       "cuda::ConvertKvRegions: block_size * head_dim too large");
  KVSERVE_CUDA_REQUIRE(count < (int64_t{1} << 31), "cuda::ConvertKvRegions: too many regions");
  const Job job{src_format, src, dst_format, role, shape, tokens, dst, ok};
  ConvertKernel<<<static_cast<unsigned>(count), kThreads, elems * sizeof(float), stream>>>(job);
  KVSERVE_CUDA_CHECK(cudaGetLastError());
}

}  // namespace kvserve::kernels::cuda
