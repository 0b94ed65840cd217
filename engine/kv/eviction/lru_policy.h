// `lru` (the default): evicts the evictable block whose last use is oldest.
//
// Benefits: simple, predictable, no tuning; good when recent prompts predict the next ones
// (chat sessions, shared system prompts in steady use).
// Costs: O(log n) per event (an ordered set keyed by last use, so a block that becomes evictable
// late, e.g. a parent whose child was just evicted, still ranks by when it was really used);
// about 80 bytes of state per evictable block. Not scan resistant: a burst of one-off prompts
// pushes out a hot prefix that was idle a little longer (see `slru`).
//
// Ties (equal last use) go to the block that became evictable first.
#ifndef KVSERVE_ENGINE_KV_EVICTION_LRU_POLICY_H_
#define KVSERVE_ENGINE_KV_EVICTION_LRU_POLICY_H_

#include <cstdint>
#include <optional>
#include <set>
#include <tuple>
#include <unordered_map>

#include "engine/kv/eviction/block_eviction_policy.h"

namespace kvserve::engine {

class LruEvictionPolicy final : public BlockEvictionPolicy {
 public:
  absl::string_view name() const override { return "lru"; }
  void OnEvictable(BlockId block, const EvictableBlockInfo& info, absl::Time now) override;
  void OnNotEvictable(BlockId block) override;
  std::optional<BlockId> PickVictim(absl::Time now) override;
  int64_t size() const override { return static_cast<int64_t>(keys_.size()); }
  bool Contains(BlockId block) const override { return keys_.count(block) > 0; }

 private:
  using Key = std::tuple<absl::Time, uint64_t, BlockId>;  // (last use, event order, block)
  std::set<Key> order_;
  std::unordered_map<BlockId, Key> keys_;
  uint64_t next_seq_ = 0;
};

}  // namespace kvserve::engine

#endif  // KVSERVE_ENGINE_KV_EVICTION_LRU_POLICY_H_
