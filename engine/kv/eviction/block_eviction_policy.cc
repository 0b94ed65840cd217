#include "engine/kv/eviction/block_eviction_policy.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "engine/common/named_registry.h"
#include "engine/kv/eviction/lru_policy.h"
#include "engine/kv/eviction/priority_policy.h"
#include "engine/kv/eviction/slru_policy.h"

namespace kvserve::engine {
namespace {

NamedRegistry<BlockEvictionPolicyFactory>& GetRegistry() {
  static auto* registry = [] {
    auto* r = new NamedRegistry<BlockEvictionPolicyFactory>("block eviction policy");
    (void)r->Register(
        "lru",
        [](const BlockEvictionOptions&) -> absl::StatusOr<std::unique_ptr<BlockEvictionPolicy>> {
          return std::make_unique<LruEvictionPolicy>();
        });
    (void)r->Register(
        "priority",
        [](const BlockEvictionOptions&) -> absl::StatusOr<std::unique_ptr<BlockEvictionPolicy>> {
          return std::make_unique<PriorityEvictionPolicy>();
        });
    (void)r->Register(
        "slru",
        [](const BlockEvictionOptions& o) -> absl::StatusOr<std::unique_ptr<BlockEvictionPolicy>> {
          if (!(o.slru_protected_fraction > 0.0 && o.slru_protected_fraction < 1.0)) {
            return absl::InvalidArgumentError(absl::StrCat(
                "slru_protected_fraction must be in (0, 1), got ", o.slru_protected_fraction));
          }
          return std::make_unique<SlruEvictionPolicy>(o.slru_protected_fraction);
        });
    return r;
  }();
  return *registry;
}

}  // namespace

absl::StatusOr<std::unique_ptr<BlockEvictionPolicy>> CreateBlockEvictionPolicy(
    absl::string_view name, const BlockEvictionOptions& options) {
  absl::StatusOr<BlockEvictionPolicyFactory> factory = GetRegistry().Find(name);
  if (!factory.ok()) return factory.status();
  return (*factory)(options);
}

std::vector<std::string> BlockEvictionPolicyNames() { return GetRegistry().Names(); }

absl::Status RegisterBlockEvictionPolicy(absl::string_view name,
                                         BlockEvictionPolicyFactory factory) {
  return GetRegistry().Register(name, std::move(factory));
}

}  // namespace kvserve::engine
