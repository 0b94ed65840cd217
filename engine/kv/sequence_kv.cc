#include "engine/kv/sequence_kv.h"

#include <algorithm>

#include "engine/common/status_macros.h"

namespace kvserve::engine {

int64_t SequenceKv::BlocksNeeded(int64_t num_slots) const {
  const int64_t bs = pool_->geometry().block_size;
  const int64_t want = (num_slots + bs - 1) / bs;
  return want > static_cast<int64_t>(blocks_.size()) ? want - static_cast<int64_t>(blocks_.size())
                                                     : 0;
}

absl::Status SequenceKv::Reserve(int64_t num_slots) {
  return Reserve(num_slots, [this](int64_t) { return layout_; });
}

absl::Status SequenceKv::Reserve(int64_t num_slots,
                                 absl::FunctionRef<LayoutId(int64_t index)> layout_for) {
  const int64_t need = BlocksNeeded(num_slots);
  const size_t before = blocks_.size();
  for (int64_t i = 0; i < need; ++i) {
    absl::StatusOr<BlockId> id = pool_->Allocate(layout_for(static_cast<int64_t>(blocks_.size())));
    if (!id.ok()) {
      while (blocks_.size() > before) {
        pool_->Release(blocks_.back());
        blocks_.pop_back();
      }
      return id.status();
    }
    blocks_.push_back(*id);
  }
  return absl::OkStatus();
}

void SequenceKv::Release() {
  for (BlockId id : blocks_) pool_->Release(id);
  blocks_.clear();
  demoted_blocks_ = 0;
}

absl::StatusOr<BlockId> SequenceKv::ReplaceBlock(int64_t index, LayoutId layout) {
  absl::StatusOr<BlockId> fresh = pool_->Allocate(layout);
  if (!fresh.ok() && pool_->ref_count(blocks_[index]) == 1) {
    // Free the old block first: its bytes can then be reused for the new one. The caller has
    // already read what it needs from it.
    pool_->Release(blocks_[index]);
    fresh = pool_->Allocate(layout);
    // The freed bytes are reclaimable, so a layout no larger than the old one always fits.
    KVSERVE_CHECK(fresh.ok()) << "no room for a replacement block: " << fresh.status();
    blocks_[index] = *fresh;
    return fresh;
  }
  if (!fresh.ok()) return fresh.status();
  pool_->Release(blocks_[index]);
  blocks_[index] = *fresh;
  return fresh;
}

void SequenceKv::Truncate(int64_t num_blocks) {
  while (static_cast<int64_t>(blocks_.size()) > num_blocks) {
    pool_->Release(blocks_.back());
    blocks_.pop_back();
  }
  demoted_blocks_ = std::min<int64_t>(demoted_blocks_, num_blocks);
}

int64_t SequenceKv::bytes() const {
  int64_t total = 0;
  for (BlockId id : blocks_) total += pool_->layout(pool_->layout_of(id)).block_bytes;
  return total;
}

}  // namespace kvserve::engine
