// KV-cache block formats and their byte layout: the one definition shared by the CPU and CUDA
// kernels and by the engine's block pool and memory accounting.
//
// A block holds `block_size` token slots of K and V for the layers it covers. Inside a block each
// layer owns one *region* for K and one for V; this header defines the byte layout of a region for
// every format:
//
//   FP32 / FP16 / BF16:  values [num_kv_heads][block_size][head_dim], row-major, no scales.
//
// All sizes are in bytes. Regions start at 64-byte aligned offsets inside a block.
#ifndef KVSERVE_KERNELS_KV_FORMAT_H_
#define KVSERVE_KERNELS_KV_FORMAT_H_

#include <cstdint>
#include <optional>
#include <string_view>

namespace kvserve::kernels {

enum class KvFormat : uint8_t {
  kFp32 = 0,  // reference precision
  kFp16 = 1,
  kBf16 = 2,
};
inline constexpr int kNumKvFormats = 3;

std::string_view KvFormatName(KvFormat f);  // "fp32", "fp16", "bf16"
std::optional<KvFormat> ParseKvFormat(std::string_view name);

// Bytes of one stored element value (before scales).
constexpr int KvValueBytes(KvFormat f) { return f == KvFormat::kFp32 ? 4 : 2; }

// Region alignment inside a block.
inline constexpr int64_t kKvRegionAlign = 64;
constexpr int64_t AlignUp(int64_t n, int64_t a) { return (n + a - 1) / a * a; }

// Geometry of one layer's K (or V) region of one block.
struct KvRegionShape {
  int block_size = 16;   // tokens per block
  int num_kv_heads = 1;
  int head_dim = 1;
};

// Bytes of value payload in one region (what the elements themselves take).
constexpr int64_t KvRegionValueBytes(KvFormat f, const KvRegionShape& s) {
  return static_cast<int64_t>(s.num_kv_heads) * s.block_size * s.head_dim * KvValueBytes(f);
}
// Bytes of scale / zero-point metadata in one region (none for float formats).
constexpr int64_t KvRegionScaleBytes(KvFormat f, const KvRegionShape& s) { return 0; }
// Bytes one region occupies, padding to kKvRegionAlign included.
constexpr int64_t KvRegionBytes(KvFormat f, const KvRegionShape& s) {
  return AlignUp(KvRegionValueBytes(f, s) + KvRegionScaleBytes(f, s), kKvRegionAlign);
}

static_assert(KvRegionValueBytes(KvFormat::kFp16, KvRegionShape{16, 8, 128}) == 16 * 8 * 128 * 2);
static_assert(KvRegionBytes(KvFormat::kFp32, KvRegionShape{16, 4, 8}) == 16 * 4 * 8 * 4);

// True when blocks in `f` can be written one token at a time (quantize-on-write). False for
// formats whose encoding needs every token of the block (e.g. keys scaled per channel across the
// block); those are written in a token-writable format first and converted when the block is full.
constexpr bool KvFormatTokenWritable(KvFormat f) { return true; }

// True when `f` can store regions of this shape (some formats need, e.g., an even head_dim).
constexpr bool KvFormatSupports(KvFormat f, const KvRegionShape& s) {
  return s.block_size > 0 && s.num_kv_heads > 0 && s.head_dim > 0;
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
  uint8_t* const* block_data = nullptr;  // [pool capacity in blocks]
  const uint16_t* block_layout = nullptr;  // [pool capacity in blocks]
  const KvLayerRegion* regions = nullptr;  // [number of layouts]
  KvRegionShape shape;
};

}  // namespace kvserve::kernels

#endif  // KVSERVE_KERNELS_KV_FORMAT_H_
