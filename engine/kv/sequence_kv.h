// The KV cache of one sequence: its block table and how many slots are filled.
//
// Grows block by block from a BlockPool; Release() hands every block back (dropping this
// sequence's references). Not thread-safe; owned by whoever drives the sequence (the engine
// thread).
#ifndef KVSERVE_ENGINE_KV_SEQUENCE_KV_H_
#define KVSERVE_ENGINE_KV_SEQUENCE_KV_H_

#include <cstdint>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "engine/kv/block_pool.h"

namespace kvserve::engine {

class SequenceKv {
 public:
  SequenceKv(BlockPool* pool, LayoutId layout) : pool_(pool), layout_(layout) {}
  ~SequenceKv() { Release(); }
  SequenceKv(const SequenceKv&) = delete;
  SequenceKv& operator=(const SequenceKv&) = delete;

  // Makes sure slots [0, num_slots) have blocks. ResourceExhausted (and nothing allocated by this
  // call kept) when the pool cannot supply them.
  absl::Status Reserve(int64_t num_slots);
  // As Reserve(num_slots), but block `index` of the table, when new, is allocated in
  // layout_for(index) instead of this sequence's default layout.
  absl::Status Reserve(int64_t num_slots, absl::FunctionRef<LayoutId(int64_t index)> layout_for);
  // Blocks needed beyond the current ones to hold num_slots slots.
  int64_t BlocksNeeded(int64_t num_slots) const;
  // Returns every block to the pool.
  void Release();
  // Swaps block `index` for a fresh block of `layout` (the old one is released) and returns the
  // new id; the caller fills its bytes and must have read the old block already.
  // REQUIRES: `layout` takes no more bytes than the old block's layout, or the old block is
  // shared (then ResourceExhausted is possible and leaves the table unchanged).
  absl::StatusOr<BlockId> ReplaceBlock(int64_t index, LayoutId layout);
  // Appends a block the caller already holds a pool reference for (a cached prefix block); the
  // reference becomes this sequence's.
  void AppendShared(BlockId id) { blocks_.push_back(id); }
  // Replaces block `index` by `id` (the caller holds a reference for it) and releases the old.
  void SetBlock(int64_t index, BlockId id) {
    pool_->Release(blocks_[index]);
    blocks_[index] = id;
  }
  // Puts `id` (a reference the caller holds) at `index` WITHOUT releasing the block there: the
  // caller has released it already (token compaction frees a block before allocating its
  // successor, so the budget never needs room for both).
  void AssignReleased(int64_t index, BlockId id) { blocks_[index] = id; }
  // Removes entry `index` from the table WITHOUT releasing it (the caller has), leaving a
  // table that no longer holds a token prefix: only Release() may follow.
  void ForgetReleased(int64_t index) { blocks_.erase(blocks_.begin() + index); }
  // Releases blocks [num_blocks, size) and shortens the table.
  void Truncate(int64_t num_blocks);
  // Blocks [0, demoted_blocks()) are in their final layout (see KvCachePolicy::Demote).
  int64_t demoted_blocks() const { return demoted_blocks_; }
  void set_demoted_blocks(int64_t n) { demoted_blocks_ = n; }

  const std::vector<BlockId>& block_table() const { return blocks_; }
  int64_t capacity_slots() const {
    return static_cast<int64_t>(blocks_.size()) * pool_->geometry().block_size;
  }
  // Bytes of the blocks this sequence holds (shared blocks counted in full).
  int64_t bytes() const;

 private:
  BlockPool* pool_;
  LayoutId layout_;
  std::vector<BlockId> blocks_;
  int64_t demoted_blocks_ = 0;
};

}  // namespace kvserve::engine

#endif  // KVSERVE_ENGINE_KV_SEQUENCE_KV_H_
