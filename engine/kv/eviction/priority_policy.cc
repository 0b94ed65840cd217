#include "engine/kv/eviction/priority_policy.h"

#include <algorithm>

#include "engine/common/status_macros.h"

namespace kvserve::engine {

void PriorityEvictionPolicy::OnEvictable(BlockId block, const EvictableBlockInfo& info,
                                         absl::Time now) {
  const uint64_t seq = next_seq_++;
  const bool decayed = info.priority_expiry <= now;
  const int32_t priority =
      decayed ? kDefaultRetentionPriority
              : std::clamp(info.priority, kMinRetentionPriority, kMaxRetentionPriority);
  Node node{OrderKey{priority, info.last_use, seq, block}, std::nullopt};
  if (priority != kDefaultRetentionPriority && info.priority_expiry != absl::InfiniteFuture()) {
    node.expiry = ExpiryKey{info.priority_expiry, seq, block};
    expiring_.insert(*node.expiry);
  }
  order_.insert(node.order);
  KVSERVE_CHECK(nodes_.emplace(block, node).second) << "block " << block << " already evictable";
}

void PriorityEvictionPolicy::OnNotEvictable(BlockId block) {
  auto it = nodes_.find(block);
  KVSERVE_CHECK(it != nodes_.end()) << "block " << block << " is not evictable";
  order_.erase(it->second.order);
  if (it->second.expiry) expiring_.erase(*it->second.expiry);
  nodes_.erase(it);
}

void PriorityEvictionPolicy::Decay(absl::Time now) {
  while (!expiring_.empty() && std::get<0>(*expiring_.begin()) <= now) {
    const BlockId block = std::get<2>(*expiring_.begin());
    expiring_.erase(expiring_.begin());
    Node& node = nodes_.at(block);
    order_.erase(node.order);
    std::get<0>(node.order) = kDefaultRetentionPriority;
    order_.insert(node.order);
    node.expiry.reset();
  }
}

std::optional<BlockId> PriorityEvictionPolicy::PickVictim(absl::Time now) {
  Decay(now);
  if (order_.empty()) return std::nullopt;
  const BlockId victim = std::get<3>(*order_.begin());
  OnNotEvictable(victim);
  return victim;
}

std::optional<int32_t> PriorityEvictionPolicy::RankedPriority(BlockId block) const {
  auto it = nodes_.find(block);
  if (it == nodes_.end()) return std::nullopt;
  return std::get<0>(it->second.order);
}

}  // namespace kvserve::engine
