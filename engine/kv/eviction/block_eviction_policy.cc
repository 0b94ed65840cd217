#include "engine/kv/eviction/block_eviction_policy.h"

#include <map>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "engine/kv/eviction/lru_policy.h"
#include "engine/kv/eviction/priority_policy.h"
#include "engine/kv/eviction/slru_policy.h"

namespace kvserve::engine {
namespace {

struct Registry {
  absl::Mutex mu;
  std::map<std::string, BlockEvictionPolicyFactory> factories ABSL_GUARDED_BY(mu);
};

Registry& GetRegistry() {
  static Registry* registry = [] {
    auto* r = new Registry;
    absl::MutexLock lock(&r->mu);
    r->factories["lru"] =
        [](const BlockEvictionOptions&) -> absl::StatusOr<std::unique_ptr<BlockEvictionPolicy>> {
      return std::make_unique<LruEvictionPolicy>();
    };
    r->factories["priority"] =
        [](const BlockEvictionOptions&) -> absl::StatusOr<std::unique_ptr<BlockEvictionPolicy>> {
      return std::make_unique<PriorityEvictionPolicy>();
    };
    r->factories["slru"] =
        [](const BlockEvictionOptions& o) -> absl::StatusOr<std::unique_ptr<BlockEvictionPolicy>> {
      if (!(o.slru_protected_fraction > 0.0 && o.slru_protected_fraction < 1.0)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "slru_protected_fraction must be in (0, 1), got ", o.slru_protected_fraction));
      }
      return std::make_unique<SlruEvictionPolicy>(o.slru_protected_fraction);
    };
    return r;
  }();
  return *registry;
}

}  // namespace

absl::StatusOr<std::unique_ptr<BlockEvictionPolicy>> CreateBlockEvictionPolicy(
    absl::string_view name, const BlockEvictionOptions& options) {
  BlockEvictionPolicyFactory factory;
  {
    Registry& r = GetRegistry();
    absl::MutexLock lock(&r.mu);
    auto it = r.factories.find(std::string(name));
    if (it != r.factories.end()) factory = it->second;
  }
  if (!factory) {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown block eviction policy '", name,
                     "'; known: ", absl::StrJoin(BlockEvictionPolicyNames(), ", ")));
  }
  return factory(options);
}

std::vector<std::string> BlockEvictionPolicyNames() {
  Registry& r = GetRegistry();
  absl::MutexLock lock(&r.mu);
  std::vector<std::string> names;
  for (const auto& [name, factory] : r.factories) names.push_back(name);
  return names;
}

absl::Status RegisterBlockEvictionPolicy(absl::string_view name,
                                         BlockEvictionPolicyFactory factory) {
  Registry& r = GetRegistry();
  absl::MutexLock lock(&r.mu);
  if (name.empty() || !factory) return absl::InvalidArgumentError("empty name or factory");
  if (!r.factories.emplace(std::string(name), std::move(factory)).second) {
    return absl::AlreadyExistsError(
        absl::StrCat("block eviction policy '", name, "' is already registered"));
  }
  return absl::OkStatus();
}

}  // namespace kvserve::engine
