// Fuzzes the YAML config loader: arbitrary bytes as a config file. The file lies two directories
// below a folder that holds shared/models (a link to the fixtures), so the shipped configs'
// relative model path resolves and valid inputs load.
//
// Properties: loading never throws or crashes; a config that loads, written back with
// FormatServerConfig, loads again to the same effective configuration.
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>

#include "server/config/server_config.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

std::filesystem::path ConfigDir() {
  static const std::filesystem::path dir = [] {
    namespace fs = std::filesystem;
    const fs::path root = kvserve::fuzz::ScratchDir();
    fs::create_directories(root / "shared");
    fs::create_directory_symlink(fs::absolute(kvserve::fuzz::ModelsDir()), root / "shared/models");
    fs::create_directories(root / "configs/presets");
    return root / "configs/presets";
  }();
  return dir;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvserve;
  const std::filesystem::path path = ConfigDir() / "fuzz.yaml";
  fuzz::WriteFile(path, std::string_view(reinterpret_cast<const char*>(data), size));
  auto config = server::LoadServerConfig(path.string());
  if (!config.ok()) {
    FUZZ_CHECK(!config.status().message().empty());
    return 0;
  }
  const std::string formatted = server::FormatServerConfig(*config);
  const std::filesystem::path again = ConfigDir() / "again.yaml";
  fuzz::WriteFile(again, formatted);
  auto reloaded = server::LoadServerConfig(again.string());
  FUZZ_CHECK(reloaded.ok(), "the formatted config does not load: %s\n%s",
             std::string(reloaded.status().message()).c_str(), formatted.c_str());
  FUZZ_CHECK(server::FormatServerConfig(*reloaded) == formatted);
  return 0;
}
