// Whole-region encoding on the GPU: the twin of cpu::QuantizeKvRegion (kv_quantize.h), batched
// over many regions. This is quantize-on-write for the formats that are not token-writable
// (kv_format.h): a block leaving the full-precision window (or filled by a prefill) is re-encoded
// here, reading its rows in their float format and writing the target format.
//
// The encoders follow the CPU ones operation for operation (same parameter rounding, IEEE
// division, round-to-nearest-even), so for the same input the GPU writes the same bytes.
#ifndef KVSERVE_KERNELS_CUDA_KV_QUANTIZE_H_
#define KVSERVE_KERNELS_CUDA_KV_QUANTIZE_H_

#include <cstdint>

#include "kernels/cuda/runtime.h"
#include "kernels/kv_format.h"

namespace kvserve::kernels::cuda {

// Where region r of a batch is: ptrs[r] when ptrs is set (a DEVICE array of device pointers),
// else base + r * stride (bytes).
struct KvRegionRefs {
  const uint8_t* const* ptrs = nullptr;
  const uint8_t* base = nullptr;
  int64_t stride = 0;
};

// Largest block_size * head_dim ConvertKvRegions accepts (one head's rows are staged as floats
// in shared memory: 40 KiB, within the 48 KiB a thread block gets without opting in).
inline constexpr int64_t kQuantizeMaxHeadElems = 10240;

// For r in [0, count): reads rows [0, tokens[r]) of every KV head of source region r (format
// src_format, one of fp32 / fp16 / bf16; an fp32 region is a plain [num_kv_heads][block_size]
// [head_dim] float array) and encodes them into destination region r in dst_format, as
// cpu::QuantizeKvRegion does. ok[r] = 1 on success; 0 when tokens[r] is outside [1, block_size]
// or an input value is not finite or, for the quantized formats, exceeds kKvQuantMaxAbs (the
// destination is then unspecified). Device pointers: tokens [count], ok [count], the regions.
// REQUIRES: KvFormatSupports(dst_format, shape), block_size * head_dim <= kQuantizeMaxHeadElems,
// source and destination regions do not overlap.
void ConvertKvRegions(KvFormat src_format, const KvRegionRefs& src, KvFormat dst_format,
                      KvRole role, const KvRegionShape& shape, const int32_t* tokens,
                      const KvRegionRefs& dst, int64_t count, uint8_t* ok, Stream stream);

}  // namespace kvserve::kernels::cuda

#endif  // KVSERVE_KERNELS_CUDA_KV_QUANTIZE_H_
