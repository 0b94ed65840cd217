#include "engine/kv/block_pool.h"

#include <algorithm>
#include <cstdlib>
#include <new>

#include "absl/strings/str_format.h"
#include "engine/common/status_macros.h"
#include "kernels/backend.h"

namespace kvserve::engine {
namespace {

constexpr size_t kBlockAlign = 64;

}  // namespace

BlockPool::BlockPool(const KvGeometry& geometry, int64_t budget_bytes, kernels::Backend* memory)
    : geometry_(geometry),
      budget_bytes_(budget_bytes),
      device_(memory != nullptr && !memory->host_memory() ? memory : nullptr) {
  KVSERVE_CHECK(geometry.num_layers > 0 && geometry.num_kv_heads > 0 && geometry.head_dim > 0 &&
                geometry.block_size > 0)
      << "bad KV geometry";
  KVSERVE_CHECK(budget_bytes > 0) << "KV budget must be positive";
  layer_regions_.resize(geometry.num_layers);
}

BlockPool::~BlockPool() {
  for (uint8_t* p : data_) FreeBytes(p);
}

uint8_t* BlockPool::AllocBytes(int64_t bytes) {
  if (device_ != nullptr) return static_cast<uint8_t*>(device_->Alloc(bytes));
  try {
    return static_cast<uint8_t*>(::operator new[](bytes, std::align_val_t(kBlockAlign)));
  } catch (const std::bad_alloc&) {
    return nullptr;
  }
}

void BlockPool::FreeBytes(uint8_t* p) {
  if (p == nullptr) return;
  if (device_ != nullptr) {
    device_->Free(p);
  } else {
    ::operator delete[](p, std::align_val_t(kBlockAlign));
  }
}

absl::StatusOr<LayoutId> BlockPool::RegisterLayout(const std::vector<kernels::KvFormat>& formats) {
  if (static_cast<int>(formats.size()) != geometry_.num_layers) {
    return absl::InvalidArgumentError(
        absl::StrFormat("KV layout lists %d layer formats; the model has %d layers", formats.size(),
                        geometry_.num_layers));
  }
  for (size_t i = 0; i < layouts_.size(); ++i) {
    if (layouts_[i].layer_formats == formats) return static_cast<LayoutId>(i);
  }
  BlockLayout layout;
  layout.layer_formats = formats;
  const kernels::KvRegionShape shape = geometry_.RegionShape();
  int64_t offset = 0;
  for (kernels::KvFormat f : formats) {
    const int64_t k_region = kernels::KvRegionBytes(f, kernels::KvRole::kKey, shape);
    kernels::KvLayerRegion r;
    r.format = f;
    r.k_offset = static_cast<uint32_t>(offset);
    r.v_offset = static_cast<uint32_t>(offset + k_region);
    offset += kernels::KvLayerBytes(f, shape);
    for (kernels::KvRole role : {kernels::KvRole::kKey, kernels::KvRole::kValue}) {
      layout.value_bytes += kernels::KvRegionValueBytes(f, role, shape);
      layout.scale_bytes += kernels::KvRegionScaleBytes(f, role, shape);
    }
    layout.regions.push_back(r);
  }
  layout.block_bytes = offset;
  if (offset > UINT32_MAX) {
    return absl::InvalidArgumentError("one KV block exceeds 4 GiB; lower kv_cache.block_size");
  }
  if (layout.block_bytes > budget_bytes_) {
    return absl::InvalidArgumentError(
        absl::StrFormat("one KV block takes %d bytes but the KV budget is %d bytes",
                        layout.block_bytes, budget_bytes_));
  }
  const LayoutId id = static_cast<LayoutId>(layouts_.size());
  for (int l = 0; l < geometry_.num_layers; ++l) layer_regions_[l].push_back(layout.regions[l]);
  layouts_.push_back(std::move(layout));
  free_by_layout_.emplace_back();
  used_by_layout_.push_back(0);
  return id;
}

absl::StatusOr<LayoutId> BlockPool::RegisterUniformLayout(kernels::KvFormat format) {
  return RegisterLayout(std::vector<kernels::KvFormat>(geometry_.num_layers, format));
}

BlockId BlockPool::NewId() {
  if (!spare_ids_.empty()) {
    const BlockId id = spare_ids_.back();
    spare_ids_.pop_back();
    return id;
  }
  const BlockId id = static_cast<BlockId>(meta_.size());
  meta_.emplace_back();
  data_.push_back(nullptr);
  data_layout_.push_back(0);
  return id;
}

bool BlockPool::ReclaimBytes(int64_t needed, LayoutId keep) {
  // Returns the bytes of free blocks of other layouts to the heap until `needed` more bytes fit.
  for (size_t l = 0; l < free_by_layout_.size() && allocated_bytes_ + needed > budget_bytes_; ++l) {
    if (l == keep) continue;
    auto& list = free_by_layout_[l];
    while (!list.empty() && allocated_bytes_ + needed > budget_bytes_) {
      const BlockId id = list.back();
      list.pop_back();
      FreeBytes(data_[id]);
      data_[id] = nullptr;
      ++view_version_;
      meta_[id].has_bytes = false;
      allocated_bytes_ -= layouts_[l].block_bytes;
      spare_ids_.push_back(id);
    }
  }
  return allocated_bytes_ + needed <= budget_bytes_;
}

absl::StatusOr<BlockId> BlockPool::Allocate(LayoutId layout) {
  KVSERVE_CHECK(layout < layouts_.size()) << "unknown layout " << layout;
  auto& free_list = free_by_layout_[layout];
  BlockId id;
  if (!free_list.empty()) {
    id = free_list.back();
    free_list.pop_back();
  } else {
    const int64_t bytes = layouts_[layout].block_bytes;
    if (!ReclaimBytes(bytes, layout)) {
      return absl::ResourceExhaustedError(
          absl::StrFormat("KV block pool exhausted: %d of %d bytes in use by %d blocks",
                          used_bytes_, budget_bytes_, used_blocks_));
    }
    uint8_t* p = AllocBytes(bytes);
    if (p == nullptr) {
      return absl::ResourceExhaustedError(
          absl::StrFormat("out of %s memory allocating a %d-byte KV block",
                          device_ != nullptr ? std::string(device_->name()) : "host", bytes));
    }
    id = NewId();
    data_[id] = p;
    ++view_version_;
    meta_[id].has_bytes = true;
    allocated_bytes_ += bytes;
  }
  meta_[id].ref_count = 1;
  meta_[id].layout = layout;
  if (data_layout_[id] != layout) ++view_version_;
  data_layout_[id] = layout;
  ++used_blocks_;
  ++used_by_layout_[layout];
  used_bytes_ += layouts_[layout].block_bytes;
  return id;
}

void BlockPool::AddRef(BlockId id) {
  KVSERVE_CHECK(id >= 0 && id < static_cast<BlockId>(meta_.size()) && meta_[id].ref_count > 0)
      << "AddRef on a block that is not allocated: " << id;
  ++meta_[id].ref_count;
}

void BlockPool::Release(BlockId id) {
  KVSERVE_CHECK(id >= 0 && id < static_cast<BlockId>(meta_.size()) && meta_[id].ref_count > 0)
      << "Release of a block that is not allocated: " << id;
  if (--meta_[id].ref_count > 0) return;
  const LayoutId layout = meta_[id].layout;
  --used_blocks_;
  --used_by_layout_[layout];
  used_bytes_ -= layouts_[layout].block_bytes;
  free_by_layout_[layout].push_back(id);
}

int64_t BlockPool::AvailableBlocks(LayoutId layout) const {
  const int64_t bytes = layouts_[layout].block_bytes;
  int64_t reclaimable = budget_bytes_ - allocated_bytes_;
  for (size_t l = 0; l < free_by_layout_.size(); ++l) {
    if (l != layout) {
      reclaimable += static_cast<int64_t>(free_by_layout_[l].size()) * layouts_[l].block_bytes;
    }
  }
  return static_cast<int64_t>(free_by_layout_[layout].size()) + reclaimable / bytes;
}

int64_t BlockPool::Fp16BlockBytes() const {
  const kernels::KvRegionShape shape = geometry_.RegionShape();
  return 2 * geometry_.num_layers *
         kernels::KvRegionValueBytes(kernels::KvFormat::kFp16, kernels::KvRole::kKey, shape);
}

KvPoolStats BlockPool::Stats() const {
  KvPoolStats s;
  s.budget_bytes = budget_bytes_;
  s.allocated_bytes = allocated_bytes_;
  s.used_bytes = used_bytes_;
  s.free_bytes = allocated_bytes_ - used_bytes_;
  s.used_blocks = used_blocks_;
  for (const auto& list : free_by_layout_) s.free_blocks += static_cast<int64_t>(list.size());
  s.used_by_format.assign(kernels::kNumKvFormats, KvFormatUsage{});
  const kernels::KvRegionShape shape = geometry_.RegionShape();
  for (size_t l = 0; l < layouts_.size(); ++l) {
    const int64_t n = used_by_layout_[l];
    if (n == 0) continue;
    for (kernels::KvFormat f : layouts_[l].layer_formats) {
      KvFormatUsage& u = s.used_by_format[static_cast<int>(f)];
      for (kernels::KvRole role : {kernels::KvRole::kKey, kernels::KvRole::kValue}) {
        const int64_t value = kernels::KvRegionValueBytes(f, role, shape);
        const int64_t scale = kernels::KvRegionScaleBytes(f, role, shape);
        const int64_t total = kernels::KvRegionBytes(f, role, shape);
        u.value_bytes += n * value;
        u.scale_bytes += n * scale;
        u.padding_bytes += n * (total - value - scale);
        u.regions += n;
      }
    }
  }
  s.fp16_equivalent_bytes = used_blocks_ * Fp16BlockBytes();
  return s;
}

kernels::PagedKvLayerView BlockPool::LayerView(int layer) {
  kernels::PagedKvLayerView view;
  view.block_data = data_.data();
  view.block_layout = data_layout_.data();
  view.regions = layer_regions_[layer].data();
  view.shape = geometry_.RegionShape();
  view.key_basis = key_basis(layer);
  return view;
}

absl::Status BlockPool::SetKeyBasis(std::vector<float> basis) {
  const int64_t expected = static_cast<int64_t>(geometry_.num_layers) * geometry_.num_kv_heads *
                           geometry_.head_dim * geometry_.key_rank;
  if (expected == 0 || static_cast<int64_t>(basis.size()) != expected) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "key basis holds %d floats; the geometry (%d layers, %d KV heads, head_dim %d, rank %d) "
        "needs %d",
        basis.size(), geometry_.num_layers, geometry_.num_kv_heads, geometry_.head_dim,
        geometry_.key_rank, expected));
  }
  key_basis_ = std::move(basis);
  return absl::OkStatus();
}

const float* BlockPool::key_basis(int layer) const {
  if (key_basis_.empty()) return nullptr;
  return key_basis_.data() + static_cast<int64_t>(layer) * geometry_.num_kv_heads *
                                 geometry_.head_dim * geometry_.key_rank;
}

}  // namespace kvserve::engine
