// Whole-region conversion between floats and a KV block format: the block-scoped operations
// behind demotion (a block leaving the full-precision recent window is re-encoded in its
// long-term format) and behind tests of each format's round-trip error. Formats that are not
// KvFormatTokenWritable are only ever written here.
//
// These work on ONE region (one layer's K or V of one block), never on a sequence: attention
// never goes through them, it reads blocks in their own format (paged_attention.h).
#ifndef KVSERVE_KERNELS_CPU_KV_QUANTIZE_H_
#define KVSERVE_KERNELS_CPU_KV_QUANTIZE_H_

#include <cstdint>

#include "kernels/kv_format.h"

namespace kvserve::kernels::cpu {

// Reads rows [0, tokens) of every KV head of `region` (the `role` region of a block in `format`)
// into out [num_kv_heads][block_size][head_dim]; rows >= tokens of `out` are left as they are.
// key_basis: lowrank keys only (required there), the layer's basis
// [num_kv_heads][head_dim][shape.key_rank]; keys are reconstructed as B c.
void DequantizeKvRegion(KvFormat format, KvRole role, const uint8_t* region,
                        const KvRegionShape& shape, int tokens, float* out,
                        const float* key_basis = nullptr);

// Encodes rows [0, tokens) of every KV head of in [num_kv_heads][block_size][head_dim] into
// `region` in `format` (1 <= tokens <= block_size). Parameters that span tokens (per-channel key
// scales, the nvfp4 region scale) are computed from those rows; the codes of rows >= tokens are
// then unspecified (token-writable formats leave those rows as they are).
// Returns false, leaving `region` unspecified, when an input value is not finite (NaN or
// infinity are refused, never stored) or, for the quantized formats, when |value| exceeds
// kKvQuantMaxAbs (lowrank keys: when a coefficient exceeds the FP16 range).
// key_basis: lowrank keys only (required there), as for DequantizeKvRegion; keys are stored as
// c = B^T k.
bool QuantizeKvRegion(KvFormat format, KvRole role, const float* in, const KvRegionShape& shape,
                      int tokens, uint8_t* region, const float* key_basis = nullptr);

}  // namespace kvserve::kernels::cpu

#endif  // KVSERVE_KERNELS_CPU_KV_QUANTIZE_H_
