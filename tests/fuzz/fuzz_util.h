// Helpers shared by the libFuzzer targets in this folder.
//
// Each target is a LLVMFuzzerTestOneInput over one reader or validator of untrusted input. A
// target fails (aborts, which libFuzzer reports as a crash and saves the input) when the code
// under test crashes, trips a sanitizer, or breaks a property the target checks (FUZZ_CHECK).
#ifndef KVSERVE_TESTS_FUZZ_FUZZ_UTIL_H_
#define KVSERVE_TESTS_FUZZ_FUZZ_UTIL_H_

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>

namespace kvserve::fuzz {

// The model fixtures: $KVSERVE_MODELS_DIR when set, else the directory configured at build time.
inline std::string ModelsDir() {
  if (const char* env = std::getenv("KVSERVE_MODELS_DIR"); env != nullptr && *env != '\0') {
    return env;
  }
  return KVSERVE_MODELS_DIR;
}

// A private directory for the files one fuzzing process writes, removed at exit.
inline const std::filesystem::path& ScratchDir() {
  static const std::filesystem::path* dir = [] {
    std::string tmpl = (std::filesystem::temp_directory_path() / "kvserve-fuzz-XXXXXX").string();
    if (mkdtemp(tmpl.data()) == nullptr) {
      std::perror("mkdtemp");
      std::abort();
    }
    auto* path = new std::filesystem::path(tmpl);
    std::atexit([] {
      std::error_code ignored;
      std::filesystem::remove_all(ScratchDir(), ignored);
    });
    return path;
  }();
  return *dir;
}

inline void WriteFile(const std::filesystem::path& path, std::string_view bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out) {
    std::fprintf(stderr, "cannot write %s\n", path.c_str());
    std::abort();
  }
}

}  // namespace kvserve::fuzz

// Aborts with a message when a property the target checks does not hold.
#define FUZZ_CHECK(cond, ...)                                                          \
  do {                                                                                 \
    if (!(cond)) {                                                                     \
      std::fprintf(stderr, "%s:%d: property failed: %s\n", __FILE__, __LINE__, #cond); \
      std::fprintf(stderr, "  " __VA_ARGS__);                                          \
      std::fprintf(stderr, "\n");                                                      \
      std::abort();                                                                    \
    }                                                                                  \
  } while (0)

#endif  // KVSERVE_TESTS_FUZZ_FUZZ_UTIL_H_
