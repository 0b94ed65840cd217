// Device-side helpers shared by the CUDA kernels' translation units: error checks, scalar
// conversions bit-identical to kernels/dtype.h and the CPU encoders, warp reductions.
// Included only from .cu files.
#ifndef KVSERVE_KERNELS_CUDA_COMMON_CUH_
#define KVSERVE_KERNELS_CUDA_COMMON_CUH_

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>

#include "kernels/kv_format.h"

// A CUDA runtime call that must succeed (a failure is a broken invariant: prints and aborts).
#define KVSERVE_CUDA_CHECK(expr)                                                             \
  do {                                                                                       \
    const cudaError_t kvserve_err_ = (expr);                                                 \
    if (kvserve_err_ != cudaSuccess) {                                                       \
      std::fprintf(stderr, "%s:%d: CUDA error %s: %s (%s)\n", __FILE__, __LINE__,            \
                   cudaGetErrorName(kvserve_err_), cudaGetErrorString(kvserve_err_), #expr); \
      std::fflush(stderr);                                                                   \
      std::abort();                                                                          \
    }                                                                                        \
  } while (0)

// A broken host-side precondition of a CUDA kernel wrapper.
#define KVSERVE_CUDA_REQUIRE(cond, msg)                                                      \
  do {                                                                                       \
    if (!(cond)) {                                                                           \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s: %s\n", __FILE__, __LINE__, #cond, msg); \
      std::fflush(stderr);                                                                   \
      std::abort();                                                                          \
    }                                                                                        \
  } while (0)

namespace kvserve::kernels::cuda::device {

inline constexpr float kNegInf = -__builtin_huge_valf();

__device__ __forceinline__ float Bf16BitsToFloat(uint32_t h) { return __uint_as_float(h << 16); }
__device__ __forceinline__ float Fp16BitsToFloat(uint32_t h) {
  return __half2float(__ushort_as_half(static_cast<unsigned short>(h)));
}
// Round to nearest even, as FloatToBf16 in kernels/dtype.h (inputs are finite here).
__device__ __forceinline__ uint16_t FloatToBf16Bits(float f) {
  const uint32_t x = __float_as_uint(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x40u);
  const uint32_t rounding = 0x7fffu + ((x >> 16) & 1u);
  return static_cast<uint16_t>((x + rounding) >> 16);
}
__device__ __forceinline__ uint16_t FloatToFp16Bits(float f) {
  return __half_as_ushort(__float2half_rn(f));
}

// 2^(-i / 16) for i in [0, 16): the mantissas of KvLogScale (kv_format.h), as the CPU table.
static __device__ const float kLogScaleFrac[16] = {
    0x1.000000p+0f, 0x1.ea4afap-1f, 0x1.d5818ep-1f, 0x1.c199bep-1f, 0x1.ae89fap-1f, 0x1.9c4918p-1f,
    0x1.8ace54p-1f, 0x1.7a1148p-1f, 0x1.6a09e6p-1f, 0x1.5ab07ep-1f, 0x1.4bfdaep-1f, 0x1.3dea64p-1f,
    0x1.306fe0p-1f, 0x1.2387a6p-1f, 0x1.172b84p-1f, 0x1.0b5586p-1f};

// KvLogScale(code) = 2^(-code / 16), bit-identical to the CPU table (a power-of-two scaling of
// a normal float is exact).
__device__ __forceinline__ float LogScale(uint32_t code) {
  return ldexpf(__ldg(&kLogScaleFrac[code & 15u]), -static_cast<int>((code >> 4) & 15u));
}

// Value of an E4M3 code (kv_format.h KvE4m3ToFloat); 0x7f / 0xff read as 480.
__device__ __forceinline__ float E4m3ToFloat(uint32_t code) {
  const int e = (code >> 3) & 15;
  const int m = code & 7;
  const float v =
      e == 0 ? static_cast<float>(m) * 0x1p-9f : ldexpf(static_cast<float>(8 + m) * 0.125f, e - 7);
  return (code & 0x80u) ? -v : v;
}
__device__ __forceinline__ float E2m1ToFloat(uint32_t code) {
  // Magnitudes 0, 0.5, 1, 1.5, 2, 3, 4, 6 of codes 0..7.
  const uint32_t c = code & 7u;
  const float mag = c < 2 ? 0.5f * static_cast<float>(c)
                          : ldexpf((c & 1u) ? 1.5f : 1.0f, static_cast<int>(c >> 1) - 1);
  return (code & 8u) ? -mag : mag;
}

__device__ __forceinline__ float WarpSum(float v, int width = 32) {
#pragma unroll
  for (int o = width / 2; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o, width);
  return v;
}
__device__ __forceinline__ float WarpMax(float v, int width = 32) {
#pragma unroll
  for (int o = width / 2; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o, width));
  return v;
}

}  // namespace kvserve::kernels::cuda::device

#endif  // KVSERVE_KERNELS_CUDA_COMMON_CUH_
