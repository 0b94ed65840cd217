#include "engine/kv/eviction/slru_policy.h"

#include <algorithm>
#include <cmath>

#include "engine/common/status_macros.h"

namespace kvserve::engine {

int64_t SlruEvictionPolicy::ProtectedCapacity() const {
  const auto cap = static_cast<int64_t>(std::floor(protected_fraction_ * size()));
  return std::max<int64_t>(1, cap);
}

void SlruEvictionPolicy::OnEvictable(BlockId block, const EvictableBlockInfo& info,
                                     absl::Time now) {
  Node node{Key{info.last_use, next_seq_++, block}, info.hit_count > 0};
  KVSERVE_CHECK(nodes_.emplace(block, node).second) << "block " << block << " already evictable";
  (node.is_protected ? protected_ : probation_).insert(node.key);
  Rebalance(now);
}

void SlruEvictionPolicy::OnNotEvictable(BlockId block) {
  auto it = nodes_.find(block);
  KVSERVE_CHECK(it != nodes_.end()) << "block " << block << " is not evictable";
  (it->second.is_protected ? protected_ : probation_).erase(it->second.key);
  nodes_.erase(it);
}

void SlruEvictionPolicy::Rebalance(absl::Time now) {
  const int64_t cap = ProtectedCapacity();
  while (static_cast<int64_t>(protected_.size()) > cap) {
    const BlockId block = std::get<2>(*protected_.begin());
    protected_.erase(protected_.begin());
    Node& node = nodes_.at(block);
    // Demoted blocks enter the probationary segment at its most recent end.
    node.key = Key{std::max(now, std::get<0>(node.key)), next_seq_++, block};
    node.is_protected = false;
    probation_.insert(node.key);
  }
}

std::optional<BlockId> SlruEvictionPolicy::PickVictim(absl::Time now) {
  Rebalance(now);
  const std::set<Key>& from = probation_.empty() ? protected_ : probation_;
  if (from.empty()) return std::nullopt;
  const BlockId victim = std::get<2>(*from.begin());
  OnNotEvictable(victim);
  return victim;
}

bool SlruEvictionPolicy::IsProtected(BlockId block) const {
  auto it = nodes_.find(block);
  return it != nodes_.end() && it->second.is_protected;
}

}  // namespace kvserve::engine
