// `priority`: per-block retention priorities with durations, after TensorRT-LLM's KV cache
// retention API. Requests attach hints to token ranges of their prompt (RetentionForBlock maps
// them to blocks); the lowest priority is evicted first, least recently used first within one
// priority. A hint lasts `duration` from the moment its block stops being used; when it ends the
// block decays to the default priority (35) and competes by last use with the other defaults.
//
// Benefits: lets clients pin what they know will be reused (system prompts, few-shot examples,
// a conversation awaiting its next turn) and mark one-off context as cheap (priority < 35).
// Costs: O(log n) per event plus O(log n) per decayed block; about 150 bytes per evictable block.
// Clients can hog the cache with priority 100 and infinite duration: the server should cap what
// an untrusted client may ask for. Leaf-only eviction still applies: a high-priority leaf keeps
// its lower-priority ancestors cached, since they are not evictable while it is.
#ifndef KVSERVE_ENGINE_KV_EVICTION_PRIORITY_POLICY_H_
#define KVSERVE_ENGINE_KV_EVICTION_PRIORITY_POLICY_H_

#include <cstdint>
#include <optional>
#include <set>
#include <tuple>
#include <unordered_map>

#include "engine/kv/eviction/block_eviction_policy.h"

namespace kvserve::engine {

class PriorityEvictionPolicy final : public BlockEvictionPolicy {
 public:
  absl::string_view name() const override { return "priority"; }
  void OnEvictable(BlockId block, const EvictableBlockInfo& info, absl::Time now) override;
  void OnNotEvictable(BlockId block) override;
  // Applies every decay due at `now` first.
  std::optional<BlockId> PickVictim(absl::Time now) override;
  int64_t size() const override { return static_cast<int64_t>(nodes_.size()); }
  bool Contains(BlockId block) const override { return nodes_.count(block) > 0; }

  // The priority the block is ranked at now (after decays applied by the last PickVictim or
  // event); nullopt when not evictable. For tests and introspection.
  std::optional<int32_t> RankedPriority(BlockId block) const;

 private:
  // (priority, last use, event order, block): begin() is the victim.
  using OrderKey = std::tuple<int32_t, absl::Time, uint64_t, BlockId>;
  // (expiry, event order, block): blocks whose priority will decay.
  using ExpiryKey = std::tuple<absl::Time, uint64_t, BlockId>;
  struct Node {
    OrderKey order;
    std::optional<ExpiryKey> expiry;
  };

  void Decay(absl::Time now);

  std::set<OrderKey> order_;
  std::set<ExpiryKey> expiring_;
  std::unordered_map<BlockId, Node> nodes_;
  uint64_t next_seq_ = 0;
};

}  // namespace kvserve::engine

#endif  // KVSERVE_ENGINE_KV_EVICTION_PRIORITY_POLICY_H_
