#include "engine/common/mapped_file.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
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

}  // namespace
}  // namespace kvserve::engine
