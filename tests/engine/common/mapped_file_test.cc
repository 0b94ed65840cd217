#include "engine/common/mapped_file.h"

#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <utility>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kvserve::engine {
namespace {

using ::testing::HasSubstr;

class MappedFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::path(::testing::TempDir()) /
           ("kvserve_mapped_file_" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::string Write(const std::string& name, const std::string& contents) {
    const std::string path = (dir_ / name).string();
    std::ofstream(path, std::ios::binary) << contents;
    return path;
  }

  std::filesystem::path dir_;
};

TEST_F(MappedFileTest, MapsTheWholeFile) {
  const std::string path = Write("a.bin", std::string("hello\0world", 11));
  auto file = MappedFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(file->size(), 11);
  EXPECT_EQ(file->path(), path);
  EXPECT_EQ(std::memcmp(file->data(), "hello\0world", 11), 0);
  EXPECT_EQ(file->bytes().size(), 11u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(file->data()) % 4096, 0u);  // page-aligned
}

TEST_F(MappedFileTest, MovingKeepsTheMapping) {
  auto file = MappedFile::Open(Write("b.bin", "abcdef"));
  ASSERT_TRUE(file.ok());
  const uint8_t* data = file->data();
  MappedFile moved = std::move(*file);
  EXPECT_EQ(moved.data(), data);
  EXPECT_EQ(moved.size(), 6);
  EXPECT_EQ(file->data(), nullptr);  // NOLINT(bugprone-use-after-move): documented state
  EXPECT_EQ(file->size(), 0);
  MappedFile assigned;
  assigned = std::move(moved);
  EXPECT_EQ(assigned.data(), data);
  EXPECT_EQ(assigned.data()[5], 'f');
}

TEST_F(MappedFileTest, EmptyFile) {
  auto file = MappedFile::Open(Write("empty.bin", ""));
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(file->size(), 0);
  EXPECT_EQ(file->data(), nullptr);
}

TEST_F(MappedFileTest, ErrorsNameThePath) {
  const std::string missing = (dir_ / "missing.bin").string();
  auto not_found = MappedFile::Open(missing);
  EXPECT_EQ(not_found.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(not_found.status().message(), HasSubstr(missing));

  auto directory = MappedFile::Open(dir_.string());
  EXPECT_EQ(directory.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(directory.status().message(), HasSubstr(dir_.string()));
}

TEST_F(MappedFileTest, PermissionDenied) {
  if (::geteuid() == 0) GTEST_SKIP() << "root reads files regardless of their mode";
  const std::string path = Write("secret.bin", "x");
  ASSERT_EQ(::chmod(path.c_str(), 0), 0);
  auto file = MappedFile::Open(path);
  EXPECT_EQ(file.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(file.status().message(), HasSubstr(path));
}

// A file truncated, rewritten or removed after Open() must not fault the reader (a mapping of the
// file would raise SIGBUS on the pages past the new end) nor change the bytes it reads.
TEST_F(MappedFileTest, TruncatingOrRewritingTheFileLaterChangesNothing) {
  std::string contents(3 * 4096 + 123, '\0');
  for (size_t i = 0; i < contents.size(); ++i) contents[i] = static_cast<char>(i * 7 + 1);
  const std::string path = Write("model.bin", contents);
  auto file = MappedFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();

  ASSERT_EQ(::truncate(path.c_str(), 0), 0);
  ASSERT_EQ(std::string(reinterpret_cast<const char*>(file->data()), file->size()), contents);

  std::ofstream(path, std::ios::binary | std::ios::trunc) << std::string(contents.size(), 'z');
  ASSERT_EQ(std::string(reinterpret_cast<const char*>(file->data()), file->size()), contents);

  std::filesystem::remove(path);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(file->data()), file->size()), contents);
}

// The smaps fields of the mapping that starts at `p`, in KiB ({"Rss", 1234}, ...).
std::map<std::string, int64_t> SmapsOf(const void* p) {
  std::ifstream in("/proc/self/smaps");
  std::map<std::string, int64_t> fields;
  std::string line;
  bool inside = false;
  while (std::getline(in, line)) {
    const size_t dash = line.find('-');
    if (dash != std::string::npos && line.find(' ') > dash && std::isxdigit(line[0]) != 0) {
      if (inside) break;  // the next mapping
      inside = std::stoull(line.substr(0, dash), nullptr, 16) == reinterpret_cast<uintptr_t>(p);
      continue;
    }
    const size_t colon = line.find(':');
    if (inside && colon != std::string::npos && line.find("kB") != std::string::npos) {
      fields[line.substr(0, colon)] = std::stoll(line.substr(colon + 1));
    }
  }
  return fields;
}

bool KernelCollapsesHugePages() {
  std::ifstream in("/sys/kernel/mm/transparent_hugepage/enabled");
  std::string modes;
  std::getline(in, modes);
  if (modes.find("[never]") != std::string::npos || modes.empty()) return false;
  // MADV_COLLAPSE (Linux 6.1): EINVAL on kernels without it.
  void* probe =
      ::mmap(nullptr, 4 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  auto* aligned = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(probe) + (2 << 20) - 1) /
                                             (2 << 20) * (2 << 20));
  aligned[0] = 1;
  const bool ok = ::madvise(aligned, 2 << 20, 25 /* MADV_COLLAPSE */) == 0;
  ::munmap(probe, 4 << 20);
  return ok;
}

// The file's bytes go into huge pages in the background once asked, except the 2 MiB pages a
// released range touches: those keep their small pages, and the released memory stays released
// (collapsing that page would fill it again).
TEST_F(MappedFileTest, HugePagesLeaveReleasedRangesReleased) {
  if (!KernelCollapsesHugePages()) GTEST_SKIP() << "no transparent huge pages or MADV_COLLAPSE";
  constexpr int64_t kMiB = 1 << 20;
  std::string contents(10 * kMiB, '\0');
  for (size_t i = 0; i < contents.size(); ++i) contents[i] = static_cast<char>(i * 7 + 1);
  auto file = MappedFile::Open(Write("big.bin", contents));
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(reinterpret_cast<uintptr_t>(file->data()) % (2 * kMiB), 0u);
  EXPECT_EQ(SmapsOf(file->data())["AnonHugePages"], 0) << "huge pages before they were asked for";
  // 64 KiB inside the third 2 MiB page.
  EXPECT_EQ(file->Release(file->data() + 4 * kMiB + 65536, 65536), 65536);
  file->StartHugePages();
  file->WaitForHugePages();
  // Pages 0, 1, 3 and 4 collapsed; page 2 keeps its small pages; the mapping may have been
  // split around the released range, so the fields are summed over every part of it.
  int64_t huge_kib = 0, rss_kib = 0;
  for (int64_t off = 0; off < 10 * kMiB;) {
    // The parts start at the file start, at the released range, and right after it.
    const std::map<std::string, int64_t> f = SmapsOf(file->data() + off);
    huge_kib += f.count("AnonHugePages") != 0 ? f.at("AnonHugePages") : 0;
    rss_kib += f.count("Rss") != 0 ? f.at("Rss") : 0;
    off = off == 0 ? 4 * kMiB + 65536 : off == 4 * kMiB + 65536 ? 4 * kMiB + 131072 : 10 * kMiB;
  }
  EXPECT_EQ(huge_kib, 4 * 2048);
  EXPECT_EQ(rss_kib, 10 * 1024 - 64);
  // The bytes are unchanged, the released ones read as zeros.
  for (int64_t i = 0; i < 10 * kMiB; i += 4093) {
    const bool released = i >= 4 * kMiB + 65536 && i < 4 * kMiB + 131072;
    ASSERT_EQ(file->data()[i], released ? 0 : static_cast<uint8_t>(i * 7 + 1)) << i;
  }
}

}  // namespace
}  // namespace kvserve::engine
