// A thread-safe table of factories by name, for components selected by name in the configuration
// (the block and token eviction policies). `kind` names the component in error messages, e.g.
// "block eviction policy".
#ifndef KVSERVE_ENGINE_COMMON_NAMED_REGISTRY_H_
#define KVSERVE_ENGINE_COMMON_NAMED_REGISTRY_H_

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"

namespace kvserve::engine {

template <class Factory>
class NamedRegistry {
 public:
  explicit NamedRegistry(std::string kind) : kind_(std::move(kind)) {}

  // Adds a factory. InvalidArgument for an empty name or factory, AlreadyExists for a name
  // already taken.
  absl::Status Register(absl::string_view name, Factory factory) {
    if (name.empty() || !factory) return absl::InvalidArgumentError("empty name or factory");
    absl::MutexLock lock(&mu_);
    if (!factories_.emplace(std::string(name), std::move(factory)).second) {
      return absl::AlreadyExistsError(absl::StrCat(kind_, " '", name, "' is already registered"));
    }
    return absl::OkStatus();
  }

  // The factory registered under `name`, or InvalidArgument naming the known ones.
  absl::StatusOr<Factory> Find(absl::string_view name) const {
    {
      absl::MutexLock lock(&mu_);
      auto it = factories_.find(std::string(name));
      if (it != factories_.end()) return it->second;
    }
    return absl::InvalidArgumentError(
        absl::StrCat("unknown ", kind_, " '", name, "'; known: ", absl::StrJoin(Names(), ", ")));
  }

  // Registered names, sorted.
  std::vector<std::string> Names() const {
    absl::MutexLock lock(&mu_);
    std::vector<std::string> names;
    names.reserve(factories_.size());
    for (const auto& entry : factories_) names.push_back(entry.first);
    return names;
  }

 private:
  const std::string kind_;
  mutable absl::Mutex mu_;
  std::map<std::string, Factory> factories_ ABSL_GUARDED_BY(mu_);
};

}  // namespace kvserve::engine

#endif  // KVSERVE_ENGINE_COMMON_NAMED_REGISTRY_H_
