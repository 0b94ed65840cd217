#include "engine/kv/eviction/lru_policy.h"

#include "engine/common/status_macros.h"

namespace kvserve::engine {

void LruEvictionPolicy::OnEvictable(BlockId block, const EvictableBlockInfo& info, absl::Time now) {
  const Key key{info.last_use, next_seq_++, block};
  KVSERVE_CHECK(keys_.emplace(block, key).second) << "block " << block << " already evictable";
  order_.insert(key);
}

void LruEvictionPolicy::OnNotEvictable(BlockId block) {
  auto it = keys_.find(block);
  KVSERVE_CHECK(it != keys_.end()) << "block " << block << " is not evictable";
  order_.erase(it->second);
  keys_.erase(it);
}

std::optional<BlockId> LruEvictionPolicy::PickVictim(absl::Time now) {
  if (order_.empty()) return std::nullopt;
  const BlockId victim = std::get<2>(*order_.begin());
  order_.erase(order_.begin());
  keys_.erase(victim);
  return victim;
}

}  // namespace kvserve::engine
