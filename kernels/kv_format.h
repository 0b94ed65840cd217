// KV-cache block formats and their byte layout: the one definition shared by the CPU and CUDA
// kernels and by the engine's block pool and memory accounting.
//
// A block holds `block_size` token slots of K and V for the layers it covers. Inside a block each
// layer owns one *region* for K and one for V. A region is a sequence of arrays, each starting at
// a 4-byte aligned offset, in this order (absent parts take no bytes):
//
//   values          [num_kv_heads][block_size][row_bytes]; a row holds one token's head_dim
//                   values, packed low bits first (value d of a 4-bit row is nibble d % 2 of byte
//                   d / 2; of a 2-bit row bits 2 (d % 4) of byte d / 4), so
//                   row_bytes = ceil(head_dim * value_bits / 8).
//   region scale    f32 [1]
//   head params     f32 [num_kv_heads]
//   channel params  [num_kv_heads][head_dim][channel_param_bytes]: per channel, across the block
//   token params    [num_kv_heads][block_size][ceil(head_dim / group)][token_param_bytes]: per
//                   token and group of `group` dims (the last group of a row may be partial)
//
// What each format stores (x: the original value, q: the stored code):
//
//   fp32/fp16/bf16  values only; x = the value.
//   fp8   values E4M3 (bias 7, max 448, no infinities; 0x7f/0xff (NaN) never stored).
//         K: head param = a power of two u; channel param = FP16 c; token param (one per row) =
//            BF16 s: x = c u + s q.          (keys have per-channel offsets: c removes them)
//         V: token param (one per row) = BF16 s: x = s q.
//   int8  values int8 in [-127, 127].
//         K: head param = f32 r; channel param = u8 k: x = KvLogScale(k) r q.
//         V: token param (one per row) = BF16 s: x = s q.
//   int4  values u4 in [0, 15]; int2: values u2 in [0, 3] (experimental). L = 15 or 3.
//         K (KIVI: per channel across the block): head param = f32 r; channel param = {u8 k,
//            i8 z}: s = KvLogScale(k) r, x = (q + z / 4) s.
//         V (per token and group of 64 dims): token param = {BF16 s, BF16 m}: x = m + s q.
//   nvfp4 values E2M1 (NVIDIA NVFP4): region scale = f32 g; token param per group of 16 dims =
//         E4M3 e: x = g E4M3(e) E2M1(q). The same for K and V.
//   lowrank (experimental) K: a row holds shape.key_rank FP16 coefficients c = B^T k instead of
//         head_dim values, B being the [head_dim][key_rank] orthonormal basis of the layer and
//         KV head (kept outside the blocks: PagedKvLayerView::key_basis); k ~ B c, and attention
//         scores q . k as (B^T q) . c. V: as int8 V.
//
// Formats whose K (or region) parameters span the block's tokens cannot be written one token at
// a time: see KvFormatTokenWritable. All sizes are in bytes. Regions start at 64-byte aligned
// offsets inside a block.
#ifndef KVSERVE_KERNELS_KV_FORMAT_H_
#define KVSERVE_KERNELS_KV_FORMAT_H_

#include <cstdint>
#include <optional>
#include <string_view>

// Functions below marked KVSERVE_HOST_DEVICE are callable from CUDA device code as well.
#if defined(__CUDACC__)
#define KVSERVE_HOST_DEVICE __host__ __device__
#else
#define KVSERVE_HOST_DEVICE
#endif

namespace kvserve::kernels {

enum class KvFormat : uint8_t {
  kFp32 = 0,  // reference precision
  kFp16 = 1,
  kBf16 = 2,
  kFp8 = 3,  // E4M3
  kInt8 = 4,
  kInt4 = 5,
  kNvfp4 = 6,    // E2M1 with E4M3 group scales
  kInt2 = 7,     // experimental
  kLowrank = 8,  // experimental: keys as rank-r coefficients on a per-head basis, values int8
};
inline constexpr int kNumKvFormats = 9;

// Which of the two regions of a layer: keys and values may be encoded differently.
enum class KvRole : uint8_t { kKey = 0, kValue = 1 };

// "fp32", "fp16", "bf16", "fp8", "int8", "int4", "nvfp4", "int2", "lowrank".
std::string_view KvFormatName(KvFormat f);
std::optional<KvFormat> ParseKvFormat(std::string_view name);

// Region alignment inside a block.
inline constexpr int64_t kKvRegionAlign = 64;
KVSERVE_HOST_DEVICE constexpr int64_t AlignUp(int64_t n, int64_t a) { return (n + a - 1) / a * a; }

// Geometry of one layer's K (or V) region of one block.
struct KvRegionShape {
  int block_size = 16;  // tokens per block
  int num_kv_heads = 1;
  int head_dim = 1;
  int key_rank = 0;  // lowrank keys: coefficients per token and head; 0 = no lowrank basis
};

// ---- Encodings of stored codes ----------------------------------------------------------------

// Dims per token parameter group of int4 / int2 values, and of nvfp4.
inline constexpr int kKvIntValueGroup = 64;
inline constexpr int kKvNvfp4Group = 16;
// int4 / int2 key zero points z count quarter steps.
inline constexpr int kKvZeroSubsteps = 4;
// Largest head_dim of the formats with per-channel parameters (the CPU readers keep a block's
// channel parameters in locals).
inline constexpr int kKvMaxChannelHeadDim = 256;
// Largest block_size * (token parameter groups of a row) of the quantized formats (the CPU
// readers decode a block's token parameters of one head into locals).
inline constexpr int kKvMaxTokenParams = 1024;
// Largest |x| the quantized formats accept (larger values are refused, never clipped).
inline constexpr float kKvQuantMaxAbs = 0x1p100f;

// 2^(-code / 16): the scale multiplier of an 8-bit channel scale code (a 4.4% step over a range
// of 2^16).
KVSERVE_HOST_DEVICE constexpr float KvLogScale(int code) {
  constexpr float kFrac[16] = {0x1.000000p+0f, 0x1.ea4afap-1f, 0x1.d5818ep-1f, 0x1.c199bep-1f,
                               0x1.ae89fap-1f, 0x1.9c4918p-1f, 0x1.8ace54p-1f, 0x1.7a1148p-1f,
                               0x1.6a09e6p-1f, 0x1.5ab07ep-1f, 0x1.4bfdaep-1f, 0x1.3dea64p-1f,
                               0x1.306fe0p-1f, 0x1.2387a6p-1f, 0x1.172b84p-1f, 0x1.0b5586p-1f};
  float v = kFrac[code & 15];
  for (int i = 0; i < (code >> 4); ++i) v *= 0.5f;
  return v;
}

// Value of an E4M3 code (sign, 4 exponent bits with bias 7, 3 mantissa bits; no infinities).
// Codes 0x7f and 0xff are NaN and never stored; they read as 480 here.
KVSERVE_HOST_DEVICE constexpr float KvE4m3ToFloat(uint8_t code) {
  const int e = (code >> 3) & 15;
  const int m = code & 7;
  float v = e == 0 ? m * 0x1p-9f : (8 + m) * 0x1p-3f;  // times 2^(e - 7) when e > 0
  for (int i = 7; i < e; ++i) v *= 2.0f;
  for (int i = e; i < 7 && e > 0; ++i) v *= 0.5f;
  return (code & 0x80) ? -v : v;
}
inline constexpr float kKvE4m3Max = 448.0f;

// Value of an E2M1 code (low 4 bits: sign, 2 exponent bits, 1 mantissa bit).
KVSERVE_HOST_DEVICE constexpr float KvE2m1ToFloat(uint8_t code) {
  constexpr float kMag[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
  return (code & 8) ? -kMag[code & 7] : kMag[code & 7];
}
inline constexpr float kKvE2m1Max = 6.0f;

static_assert(KvLogScale(0) == 1.0f && KvLogScale(16) == 0.5f && KvLogScale(255) > 0x1p-16f);
static_assert(KvE4m3ToFloat(0x7e) == 448.0f && KvE4m3ToFloat(0x08) == 0x1p-6f &&
              KvE4m3ToFloat(0x01) == 0x1p-9f && KvE4m3ToFloat(0xb8) == -1.0f);
static_assert(KvE2m1ToFloat(7) == 6.0f && KvE2m1ToFloat(0xb) == -1.5f);

// ---- Layout -----------------------------------------------------------------------------------

// The parts one format uses for one role (see the top of this file).
struct KvScheme {
  int value_bits = 32;
  bool region_scale = false;    // f32 [1]
  bool head_param = false;      // f32 [num_kv_heads]
  int channel_param_bytes = 0;  // per (head, channel)
  int token_param_bytes = 0;    // per (head, token, group)
  int group = 0;                // dims per token group; 0: the whole row
};

KVSERVE_HOST_DEVICE constexpr KvScheme KvSchemeOf(KvFormat f, KvRole role) {
  const bool key = role == KvRole::kKey;
  switch (f) {
    case KvFormat::kFp32:
      return KvScheme{32};
    case KvFormat::kFp16:
    case KvFormat::kBf16:
      return KvScheme{16};
    case KvFormat::kFp8:
      return key ? KvScheme{8, false, true, 2, 2, 0} : KvScheme{8, false, false, 0, 2, 0};
    case KvFormat::kInt8:
      return key ? KvScheme{8, false, true, 1, 0, 0} : KvScheme{8, false, false, 0, 2, 0};
    case KvFormat::kInt4:
      return key ? KvScheme{4, false, true, 2, 0, 0}
                 : KvScheme{4, false, false, 0, 4, kKvIntValueGroup};
    case KvFormat::kInt2:
      return key ? KvScheme{2, false, true, 2, 0, 0}
                 : KvScheme{2, false, false, 0, 4, kKvIntValueGroup};
    case KvFormat::kNvfp4:
      return KvScheme{4, true, false, 0, 1, kKvNvfp4Group};
    case KvFormat::kLowrank:
      return key ? KvScheme{16} : KvScheme{8, false, false, 0, 2, 0};
  }
  return KvScheme{};
}

// Byte offsets of the parts of one region (relative to the region's base) and its sizes.
struct KvRegionLayout {
  int64_t row_bytes = 0;    // one token's values of one head
  int64_t value_bytes = 0;  // all values: num_kv_heads * block_size * row_bytes
  int64_t groups = 0;       // token parameter groups per row
  int64_t region_scale_offset = 0;
  int64_t head_param_offset = 0;
  int64_t channel_param_offset = 0;
  int64_t token_param_offset = 0;
  int64_t scale_bytes = 0;  // all parameters (padding between parts excluded)
  int64_t bytes = 0;        // the region, padded to kKvRegionAlign
};

KVSERVE_HOST_DEVICE constexpr KvRegionLayout KvRegionLayoutOf(KvFormat f, KvRole role,
                                                              const KvRegionShape& s) {
  const KvScheme k = KvSchemeOf(f, role);
  const int64_t heads = s.num_kv_heads, bs = s.block_size, hd = s.head_dim;
  // Dims stored per row: lowrank keys keep key_rank coefficients.
  const int64_t row_dims = f == KvFormat::kLowrank && role == KvRole::kKey ? s.key_rank : hd;
  KvRegionLayout l;
  l.row_bytes = (row_dims * k.value_bits + 7) / 8;
  l.value_bytes = heads * bs * l.row_bytes;
  l.groups = k.token_param_bytes == 0 ? 0 : (k.group == 0 ? 1 : (hd + k.group - 1) / k.group);
  const int64_t region_scale = k.region_scale ? 4 : 0;
  const int64_t head = k.head_param ? 4 * heads : 0;
  const int64_t channel = heads * hd * k.channel_param_bytes;
  const int64_t token = heads * bs * l.groups * k.token_param_bytes;
  l.region_scale_offset = AlignUp(l.value_bytes, 4);
  l.head_param_offset = AlignUp(l.region_scale_offset + region_scale, 4);
  l.channel_param_offset = AlignUp(l.head_param_offset + head, 4);
  l.token_param_offset = AlignUp(l.channel_param_offset + channel, 4);
  l.scale_bytes = region_scale + head + channel + token;
  l.bytes = AlignUp(l.token_param_offset + token, kKvRegionAlign);
  return l;
}

// Bytes of value payload in one region (what the elements themselves take).
constexpr int64_t KvRegionValueBytes(KvFormat f, KvRole role, const KvRegionShape& s) {
  return KvRegionLayoutOf(f, role, s).value_bytes;
}
// Bytes of scale / zero-point metadata in one region (none for the float formats).
constexpr int64_t KvRegionScaleBytes(KvFormat f, KvRole role, const KvRegionShape& s) {
  return KvRegionLayoutOf(f, role, s).scale_bytes;
}
// Bytes one region occupies, padding to kKvRegionAlign included.
constexpr int64_t KvRegionBytes(KvFormat f, KvRole role, const KvRegionShape& s) {
  return KvRegionLayoutOf(f, role, s).bytes;
}
// Bytes of one layer's K and V regions of one block.
constexpr int64_t KvLayerBytes(KvFormat f, const KvRegionShape& s) {
  return KvRegionBytes(f, KvRole::kKey, s) + KvRegionBytes(f, KvRole::kValue, s);
}

namespace kv_format_internal {
inline constexpr KvRegionShape kHd128{16, 8, 128};  // block 16, 8 KV heads, head_dim 128
inline constexpr KvRegionShape kHd8{16, 4, 8};      // stories260K
constexpr int64_t Fp16Layer(const KvRegionShape& s) { return KvLayerBytes(KvFormat::kFp16, s); }
}  // namespace kv_format_internal

// Sizes at head_dim 128, 8 KV heads, block 16 (16 * 8 * 128 = 16384 elements per region).
static_assert(KvRegionBytes(KvFormat::kFp16, KvRole::kKey, kv_format_internal::kHd128) == 32768);
static_assert(KvRegionBytes(KvFormat::kFp32, KvRole::kValue, KvRegionShape{16, 4, 8}) == 2048);
// fp8 K: 16384 values + 8 head units * 4 + 8 * 128 centers * 2 + 8 * 16 row scales * 2.
static_assert(KvRegionBytes(KvFormat::kFp8, KvRole::kKey, kv_format_internal::kHd128) ==
              16384 + 32 + 2048 + 256 + 32);  // + padding to 64
static_assert(KvRegionBytes(KvFormat::kFp8, KvRole::kValue, kv_format_internal::kHd128) ==
              16384 + 256);
// int8 K: 16384 values + 8 * 4 + 8 * 128 scale codes; V: + 8 * 16 row scales * 2.
static_assert(KvRegionBytes(KvFormat::kInt8, KvRole::kKey, kv_format_internal::kHd128) ==
              16384 + 32 + 1024 + 32);
static_assert(KvRegionBytes(KvFormat::kInt8, KvRole::kValue, kv_format_internal::kHd128) ==
              16384 + 256);
// int4 K: 8192 values + 8 * 4 + 8 * 128 * 2; V: 8192 + 8 * 16 * 2 groups * 4.
static_assert(KvRegionBytes(KvFormat::kInt4, KvRole::kKey, kv_format_internal::kHd128) ==
              8192 + 32 + 2048 + 32);
static_assert(KvRegionBytes(KvFormat::kInt4, KvRole::kValue, kv_format_internal::kHd128) ==
              8192 + 1024);
// int2 K: 4096 + 32 + 2048; V: 4096 + 1024.
static_assert(KvRegionBytes(KvFormat::kInt2, KvRole::kKey, kv_format_internal::kHd128) ==
              4096 + 32 + 2048 + 32);
static_assert(KvRegionBytes(KvFormat::kInt2, KvRole::kValue, kv_format_internal::kHd128) ==
              4096 + 1024);
// nvfp4: 8192 values + 4 region scale + 8 * 16 * 8 group scales, padded.
static_assert(KvRegionBytes(KvFormat::kNvfp4, KvRole::kKey, kv_format_internal::kHd128) ==
              8192 + 4 + 1024 + 60);
// Memory targets at head_dim 128 and block 16, relative to FP16 (1.0).
static_assert(KvLayerBytes(KvFormat::kInt8, kv_format_internal::kHd128) * 100 <=
              53 * kv_format_internal::Fp16Layer(kv_format_internal::kHd128));
static_assert(KvLayerBytes(KvFormat::kInt4, kv_format_internal::kHd128) * 100 <=
              30 * kv_format_internal::Fp16Layer(kv_format_internal::kHd128));
static_assert(KvLayerBytes(KvFormat::kNvfp4, kv_format_internal::kHd128) * 100 <=
              29 * kv_format_internal::Fp16Layer(kv_format_internal::kHd128));
static_assert(KvLayerBytes(KvFormat::kInt2, kv_format_internal::kHd128) * 100 <=
              19 * kv_format_internal::Fp16Layer(kv_format_internal::kHd128));
// head_dim 8 (stories260K): int4 K 256 values + 16 + 64 channel params, padded to 384;
// V 256 values + 4 * 16 * 4 group params.
static_assert(KvRegionBytes(KvFormat::kInt4, KvRole::kKey, kv_format_internal::kHd8) == 384);
static_assert(KvRegionBytes(KvFormat::kInt4, KvRole::kValue, kv_format_internal::kHd8) == 512);

// lowrank, rank 32 at head_dim 128: K 16 * 8 * 32 FP16 coefficients; V as int8 V.
static_assert(KvRegionBytes(KvFormat::kLowrank, KvRole::kKey, KvRegionShape{16, 8, 128, 32}) ==
              8192);
static_assert(KvRegionBytes(KvFormat::kLowrank, KvRole::kValue, KvRegionShape{16, 8, 128, 32}) ==
              16384 + 256);

// True when blocks in `f` can be written one token at a time (quantize-on-write). False for
// formats whose encoding needs every token of the block (keys scaled per channel across the
// block, a region-wide scale); those are written in a token-writable format first and converted
// when the block is full.
KVSERVE_HOST_DEVICE constexpr bool KvFormatTokenWritable(KvFormat f) {
  return f == KvFormat::kFp32 || f == KvFormat::kFp16 || f == KvFormat::kBf16;
}

// True when `f` can store regions of this shape: positive sizes; formats with per-channel
// parameters need head_dim <= kKvMaxChannelHeadDim, formats with token parameters
// block_size * groups <= kKvMaxTokenParams; lowrank needs 1 <= key_rank <= head_dim.
constexpr bool KvFormatSupports(KvFormat f, const KvRegionShape& s) {
  if (s.block_size <= 0 || s.num_kv_heads <= 0 || s.head_dim <= 0) return false;
  if (f == KvFormat::kLowrank && (s.key_rank < 1 || s.key_rank > s.head_dim)) return false;
  for (KvRole role : {KvRole::kKey, KvRole::kValue}) {
    const KvScheme k = KvSchemeOf(f, role);
    if (k.channel_param_bytes > 0 && s.head_dim > kKvMaxChannelHeadDim) return false;
    if (k.token_param_bytes > 0 &&
        int64_t{s.block_size} * KvRegionLayoutOf(f, role, s).groups > kKvMaxTokenParams) {
      return false;
    }
  }
  return true;
}

// Where one layer's K and V regions sit inside a block of some layout.
struct KvLayerRegion {
  KvFormat format = KvFormat::kFp32;
  uint32_t k_offset = 0;  // bytes from the block's base
  uint32_t v_offset = 0;  // bytes from the block's base
};

// What the kernels see of the paged KV cache for ONE layer. Plain pointers only.
// Physical block `b` has its bytes at block_data[b]; its layout id is block_layout[b]; the region
// of this layer in a block of layout L is regions[L].
struct PagedKvLayerView {
  uint8_t* const* block_data = nullptr;    // [pool capacity in blocks]
  const uint16_t* block_layout = nullptr;  // [pool capacity in blocks]
  const KvLayerRegion* regions = nullptr;  // [number of layouts]
  KvRegionShape shape;
  // Orthonormal key basis of this layer, [num_kv_heads][head_dim][shape.key_rank] (column i of a
  // head's matrix is its i-th direction); required when any block is lowrank, else null.
  const float* key_basis = nullptr;
};

}  // namespace kvserve::kernels

#endif  // KVSERVE_KERNELS_KV_FORMAT_H_
