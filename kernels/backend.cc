#include "kernels/backend.h"

#include <mutex>
#include <utility>

#include "kernels/cpu/cpu_backend.h"

namespace kvserve::kernels {
namespace {

struct Entry {
  std::string name;
  BackendFactory factory;
};

struct Registry {
  std::mutex mu;
  std::vector<Entry> entries;
};

Registry& GetRegistry() {
  static Registry* registry = [] {
    auto* r = new Registry;
    r->entries.push_back(Entry{"cpu", [](std::string*) -> std::unique_ptr<Backend> {
                                 return std::make_unique<cpu::CpuBackend>();
                               }});
    return r;
  }();
  return *registry;
}

}  // namespace

bool RegisterBackend(std::string name, BackendFactory factory) {
  Registry& r = GetRegistry();
  std::lock_guard<std::mutex> lock(r.mu);
  for (const Entry& e : r.entries) {
    if (e.name == name) return false;
  }
  r.entries.push_back(Entry{std::move(name), std::move(factory)});
  return true;
}

std::vector<std::string> BackendNames() {
  Registry& r = GetRegistry();
  std::lock_guard<std::mutex> lock(r.mu);
  std::vector<std::string> names;
  for (const Entry& e : r.entries) names.push_back(e.name);
  return names;
}

std::unique_ptr<Backend> CreateBackend(std::string_view name, std::string* error) {
  BackendFactory factory;
  {
    Registry& r = GetRegistry();
    std::lock_guard<std::mutex> lock(r.mu);
    for (const Entry& e : r.entries) {
      if (e.name == name) factory = e.factory;
    }
  }
  if (!factory) {
    if (error != nullptr) *error = "unknown backend \"" + std::string(name) + "\"";
    return nullptr;
  }
  std::string why;
  std::unique_ptr<Backend> backend = factory(&why);
  if (backend == nullptr && error != nullptr) {
    *error = "backend \"" + std::string(name) + "\" is unavailable: " + why;
  }
  return backend;
}

Backend* DefaultCpuBackend() {
  static cpu::CpuBackend* backend = new cpu::CpuBackend;
  return backend;
}

}  // namespace kvserve::kernels
