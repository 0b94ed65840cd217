// The paged KV block pool: a byte budget carved into blocks of `block_size` token slots.
//
// A block holds K and V of `block_size` tokens for every layer and KV head. Its *layout* says
// which KvFormat each layer is stored in (today one format for all layers; per-layer overrides and
// demotion use further layouts), hence its size in bytes. The pool is bounded by bytes, not
// blocks, because formats differ in size.
//
// Metadata (ref count, layout) lives apart from the bytes; the bytes of block `id` are found
// through the id, never through a pointer kept in metadata. Block ids are dense small integers so
// that kernels can index plain arrays with them (see kernels::PagedKvLayerView).
//
// Memory: block bytes are allocated from the heap the first time they are needed and kept for
// reuse when freed (role "free"); bytes of free blocks of one layout are returned to the heap when
// another layout needs the budget. allocated_bytes() is therefore exactly the sum of live heap
// allocations made for block bytes, and never exceeds budget_bytes().
//
// Device memory: a pool built with a backend whose memory is not the host's (Backend::host_memory()
// false, e.g. "cuda") takes every block's bytes from that backend (Alloc/Free), sized per layout
// as on the host, so a mixed-format pool keeps the quantized formats' savings. Its block_data()
// pointers and LayerView's block_data entries are then device addresses that host code must not
// dereference; the arrays of LayerView (block pointers, layouts, regions) stay host arrays, which
// a device model runner uploads when view_version() changes.
//
// Thread-safety: not thread-safe; owned and driven by the engine thread. Views handed to kernels
// stay valid until the next Allocate/Release call.
#ifndef KVSERVE_ENGINE_KV_BLOCK_POOL_H_
#define KVSERVE_ENGINE_KV_BLOCK_POOL_H_

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/kv_format.h"

namespace kvserve::kernels {
class Backend;
}  // namespace kvserve::kernels

namespace kvserve::engine {

using BlockId = int32_t;
using LayoutId = uint16_t;

// Shape of the KV cache a pool serves.
struct KvGeometry {
  int num_layers = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  int block_size = 16;  // tokens per block
  int key_rank = 0;     // coefficients per key of lowrank layers; 0 when no layer is lowrank
  // The shape of one layer's K or V region of a block.
  kernels::KvRegionShape RegionShape() const {
    return kernels::KvRegionShape{block_size, num_kv_heads, head_dim, key_rank};
  }
};

// Per-layer formats of one block layout, with the byte offsets that result.
struct BlockLayout {
  std::vector<kernels::KvFormat> layer_formats;  // [num_layers]
  std::vector<kernels::KvLayerRegion> regions;   // [num_layers]
  int64_t block_bytes = 0;                       // total bytes of one block, padding included
  int64_t value_bytes = 0;                       // of which element payload
  int64_t scale_bytes = 0;                       // of which scales / zero points
};

// Exact byte accounting of the pool, by format and by role. Every figure is derived from the
// blocks the pool holds, so the parts always add up to what was allocated:
//   allocated_bytes = used_bytes + free_bytes
//   used_bytes      = sum over formats of (value + scale + padding) bytes of used blocks
struct KvFormatUsage {
  int64_t value_bytes = 0;    // element payload
  int64_t scale_bytes = 0;    // scales and zero points
  int64_t padding_bytes = 0;  // region alignment
  int64_t regions = 0;        // K or V regions of one layer of one block in this format
  int64_t total() const { return value_bytes + scale_bytes + padding_bytes; }
};

struct KvPoolStats {
  int64_t budget_bytes = 0;
  int64_t allocated_bytes = 0;  // heap bytes held for blocks
  int64_t used_bytes = 0;       // bytes of blocks with a reference
  int64_t free_bytes = 0;       // allocated bytes of free blocks, kept for reuse
  int64_t used_blocks = 0;
  int64_t free_blocks = 0;                    // free blocks that still hold bytes
  std::vector<KvFormatUsage> used_by_format;  // [kernels::kNumKvFormats], used blocks only
  int64_t fp16_equivalent_bytes = 0;          // what the used blocks would take in FP16
  // fp16_equivalent_bytes / used_bytes (0 when nothing is used).
  double compression_ratio() const {
    return used_bytes > 0 ? static_cast<double>(fp16_equivalent_bytes) / used_bytes : 0.0;
  }
};

class BlockPool {
 public:
  // REQUIRES: geometry fields positive; budget_bytes > 0. `memory`: where block bytes live; null
  // or a host-memory backend = the host heap, else that backend's memory (it must outlive the
  // pool).
  BlockPool(const KvGeometry& geometry, int64_t budget_bytes, kernels::Backend* memory = nullptr);
  ~BlockPool();
  BlockPool(const BlockPool&) = delete;
  BlockPool& operator=(const BlockPool&) = delete;

  // Registers (or finds) the layout storing layer l in formats[l]. InvalidArgument when the
  // vector's length is not num_layers, or when one block of it alone exceeds the budget.
  absl::StatusOr<LayoutId> RegisterLayout(const std::vector<kernels::KvFormat>& formats);
  // Convenience: every layer in `format`.
  absl::StatusOr<LayoutId> RegisterUniformLayout(kernels::KvFormat format);

  // Allocates a block of the given layout with ref count 1. ResourceExhausted when the budget
  // cannot hold another block of that layout.
  absl::StatusOr<BlockId> Allocate(LayoutId layout);
  // Adds a reference (a second sequence sharing the block).
  void AddRef(BlockId id);
  // Drops a reference; at zero the block becomes free.
  void Release(BlockId id);

  int ref_count(BlockId id) const { return meta_[id].ref_count; }
  // Ids handed out so far are [0, num_block_ids()).
  int64_t num_block_ids() const { return static_cast<int64_t>(meta_.size()); }
  LayoutId layout_of(BlockId id) const { return meta_[id].layout; }
  const BlockLayout& layout(LayoutId id) const { return layouts_[id]; }
  int num_layouts() const { return static_cast<int>(layouts_.size()); }

  // Blocks of `layout` that can still be allocated right now (free ones plus what the unused
  // budget holds).
  int64_t AvailableBlocks(LayoutId layout) const;

  // The view of one layer that kernels read and write (it writes block bytes: non-const).
  kernels::PagedKvLayerView LayerView(int layer);
  // Bases of the lowrank layers, [num_layers][num_kv_heads][head_dim][key_rank] (see
  // engine/kv/lowrank_basis.h). Set once, before blocks of a lowrank layout are written.
  // InvalidArgument when the size does not match the geometry (key_rank 0 included).
  absl::Status SetKeyBasis(std::vector<float> basis);
  // Layer `layer`'s basis [num_kv_heads][head_dim][key_rank], or null when none was set.
  const float* key_basis(int layer) const;
  // True when block bytes are host memory (no device backend).
  bool host_memory() const { return device_ == nullptr; }
  // The device backend whose memory holds the blocks, or null (host memory).
  kernels::Backend* device() const { return device_; }
  // Changes whenever a LayerView array entry changes (block bytes allocated or returned, a block's
  // layout); a device runner re-uploads the arrays when it differs from the one it uploaded.
  uint64_t view_version() const { return view_version_; }
  // Raw bytes of a block (for demotion, compaction and tests), read-only and writable. Device
  // addresses in a device pool (see host_memory()).
  const uint8_t* block_data(BlockId id) const { return data_[id]; }
  uint8_t* mutable_block_data(BlockId id) { return data_[id]; }

  const KvGeometry& geometry() const { return geometry_; }
  int64_t budget_bytes() const { return budget_bytes_; }
  int64_t allocated_bytes() const { return allocated_bytes_; }
  int64_t used_blocks() const { return used_blocks_; }
  int64_t used_bytes() const { return used_bytes_; }
  // Bytes one block would take with every layer in FP16 (the baseline of compression ratios).
  int64_t Fp16BlockBytes() const;
  // The accounting snapshot (O(layouts * layers)).
  KvPoolStats Stats() const;

 private:
  struct BlockMeta {
    int32_t ref_count = 0;
    LayoutId layout = 0;
    bool has_bytes = false;
  };

  BlockId NewId();
  bool ReclaimBytes(int64_t needed, LayoutId keep);
  uint8_t* AllocBytes(int64_t bytes);
  void FreeBytes(uint8_t* p);

  KvGeometry geometry_;
  int64_t budget_bytes_;
  std::vector<float> key_basis_;  // empty, or [num_layers][num_kv_heads][head_dim][key_rank]
  std::vector<BlockLayout> layouts_;
  // Per layer: the region of that layer in each layout (what LayerView exposes).
  std::vector<std::vector<kernels::KvLayerRegion>> layer_regions_;

  std::vector<BlockMeta> meta_;                       // [id]
  std::vector<uint8_t*> data_;                        // [id] block bytes, or null
  std::vector<uint16_t> data_layout_;                 // [id] mirror of meta_.layout for kernels
  std::vector<BlockId> spare_ids_;                    // ids with no bytes, reusable
  std::vector<std::vector<BlockId>> free_by_layout_;  // free ids that still hold bytes
  std::vector<int64_t> used_by_layout_;               // blocks with a reference, per layout

  kernels::Backend* device_ = nullptr;  // null: host heap
  uint64_t view_version_ = 0;
  int64_t allocated_bytes_ = 0;
  int64_t used_blocks_ = 0;
  int64_t used_bytes_ = 0;
};

}  // namespace kvserve::engine

#endif  // KVSERVE_ENGINE_KV_BLOCK_POOL_H_
