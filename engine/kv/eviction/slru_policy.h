// `slru`: segmented LRU, the frequency-aware policy. Evictable blocks live in two LRU segments:
//   probationary  blocks never reused since they were cached (hit_count == 0);
//   protected     blocks reused at least once (a prefix hit or a deduplicated insert).
// Victims come from the probationary segment (least recently used first); the protected segment
// is touched only when the probationary one is empty. The protected segment holds at most
// `slru_protected_fraction` of the evictable blocks (at least one); when it outgrows that, its
// least recently used block is demoted to the most recent end of the probationary segment, so a
// block that was hot once and then went cold eventually leaves.
//
// Benefits: scan resistant. A burst of one-off prompts (batch jobs, a crawler) fills and churns
// only the probationary segment; a shared system prompt that is reused stays cached through it.
// Costs: O(log n) per event, about 100 bytes per evictable block; one-off prefixes are evicted
// sooner than under LRU even when memory would have let them wait for a second use.
//
// Why SLRU rather than ARC or LFU with aging: the prefix index already tells us the one signal
// that matters (was this block reused?), so two segments capture frequency without per-access
// counters; ARC's adaptivity needs ghost lists of evicted block hashes kept outside the index,
// and LFU needs an aging rate that is one more knob to tune per workload. SLRU has one
// parameter with a safe default and is deterministic.
#ifndef KVSERVE_ENGINE_KV_EVICTION_SLRU_POLICY_H_
#define KVSERVE_ENGINE_KV_EVICTION_SLRU_POLICY_H_

#include <cstdint>
#include <optional>
#include <set>
#include <tuple>
#include <unordered_map>

#include "engine/kv/eviction/block_eviction_policy.h"

namespace kvserve::engine {

class SlruEvictionPolicy final : public BlockEvictionPolicy {
 public:
  // REQUIRES: 0 < protected_fraction < 1 (the registry validates it).
  explicit SlruEvictionPolicy(double protected_fraction)
      : protected_fraction_(protected_fraction) {}

  absl::string_view name() const override { return "slru"; }
  void OnEvictable(BlockId block, const EvictableBlockInfo& info, absl::Time now) override;
  void OnNotEvictable(BlockId block) override;
  std::optional<BlockId> PickVictim(absl::Time now) override;
  int64_t size() const override { return static_cast<int64_t>(nodes_.size()); }
  bool Contains(BlockId block) const override { return nodes_.count(block) > 0; }

  // Whether an evictable block sits in the protected segment. For tests and introspection.
  bool IsProtected(BlockId block) const;
  int64_t protected_size() const { return static_cast<int64_t>(protected_.size()); }

 private:
  using Key = std::tuple<absl::Time, uint64_t, BlockId>;  // (recency, event order, block)
  struct Node {
    Key key;
    bool is_protected = false;
  };

  void Rebalance(absl::Time now);
  int64_t ProtectedCapacity() const;

  double protected_fraction_;
  std::set<Key> probation_;
  std::set<Key> protected_;
  std::unordered_map<BlockId, Node> nodes_;
  uint64_t next_seq_ = 0;
};

}  // namespace kvserve::engine

#endif  // KVSERVE_ENGINE_KV_EVICTION_SLRU_POLICY_H_
