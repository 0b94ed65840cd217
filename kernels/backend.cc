#include "kernels/backend.h"

#include <dlfcn.h>

#include <cstdlib>
#include <filesystem>
#include <mutex>
#include <system_error>
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

bool RegisterBackendModule(std::string name, std::string path, std::string symbol) {
  return RegisterBackend(
      std::move(name),
      [path = std::move(path),
       symbol = std::move(symbol)](std::string* error) -> std::unique_ptr<Backend> {
        // Loaded once and never unloaded: backends it made may live until exit.
        void* module = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
        if (module == nullptr) {
          const char* why = dlerror();
          *error = "cannot load " + path + ": " + (why != nullptr ? why : "unknown error");
          return nullptr;
        }
        using Create = Backend* (*)(std::string*);
        auto create = reinterpret_cast<Create>(dlsym(module, symbol.c_str()));
        if (create == nullptr) {
          *error = path + " has no " + symbol;
          return nullptr;
        }
        return std::unique_ptr<Backend>(create(error));
      });
}

void RegisterCudaModule(const std::string& fallback_path) {
  constexpr char kFile[] = "libkvserve_cuda.so";
  std::string path = fallback_path;
  if (const char* env = std::getenv("KVSERVE_CUDA_MODULE"); env != nullptr && *env != '\0') {
    path = env;
  } else {
    std::error_code ec;
    const std::filesystem::path exe = std::filesystem::read_symlink("/proc/self/exe", ec);
    if (!ec && std::filesystem::exists(exe.parent_path() / kFile, ec)) {
      path = (exe.parent_path() / kFile).string();
    }
  }
  RegisterBackendModule("cuda", path, "kvserve_create_cuda_backend");
}

}  // namespace kvserve::kernels
