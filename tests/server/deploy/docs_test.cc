// Operator-facing docs agree with what ships: configs/README.md lists every preset in one table
// and names only keys that exist; README.md shows commands that run on Debian 12 first (the
// built-in client, the Python example with /usr/bin/python3) and says how to get grpcurl, which
// Debian 12 does not package.
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"
#include "server/config/config_schema.h"
#include "tests/server/grpc/server_process.h"

namespace kvserve::server::testing {
namespace {

namespace fs = std::filesystem;

std::string Read(const std::string& relative) {
  std::ifstream in(SourceDir() + "/" + relative);
  EXPECT_TRUE(in.good()) << relative;
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

TEST(ConfigDocsTest, PresetsTableIsOneTableListingEveryPreset) {
  const std::string text = Read("configs/README.md");
  const std::vector<std::string> lines = absl::StrSplit(text, '\n');
  std::set<std::string> listed;
  // A preset row after a line that is not part of a table starts a second table.
  int splits = 0;
  bool in_table = false;
  for (const std::string& line : lines) {
    const bool row = absl::StartsWith(line, "| `presets/");
    if (row && !in_table) ++splits;
    in_table = absl::StartsWith(line, "|");
    if (row) listed.insert(line.substr(3, line.find('`', 3) - 3));
  }
  EXPECT_EQ(splits, 0) << "the presets table is split";
  std::set<std::string> presets;
  for (const auto& e : fs::directory_iterator(SourceDir() + "/configs/presets")) {
    if (e.path().extension() == ".yaml") presets.insert("presets/" + e.path().filename().string());
  }
  EXPECT_EQ(listed, presets);
}

// Every `section.key` or `section.*` named in configs/README.md exists in the key table.
TEST(ConfigDocsTest, NamesOnlyKeysThatExist) {
  const std::string text = Read("configs/README.md");
  const std::regex key("`([a-z_]+)\\.([a-z_.*]+)`");
  int checked = 0;
  for (auto it = std::sregex_iterator(text.begin(), text.end(), key); it != std::sregex_iterator();
       ++it) {
    const std::string section = (*it)[1];
    const std::string rest = (*it)[2];
    if (absl::EndsWith(rest, "yaml") || absl::EndsWith(rest, "md") || absl::EndsWith(rest, "cc") ||
        absl::EndsWith(rest, "h") || section == "presets") {
      continue;  // a file name
    }
    ++checked;
    const std::string path = section + "." + rest;
    if (absl::EndsWith(path, ".*")) {
      const std::string prefix = path.substr(0, path.size() - 2);
      EXPECT_TRUE(IsConfigSection(prefix)) << "`" << path << "`: no such section";
    } else {
      EXPECT_TRUE(FindConfigKey(path) != nullptr || IsConfigSection(path))
          << "`" << path << "`: no such key";
    }
  }
  EXPECT_GT(checked, 10);
}

TEST(ServingDocsTest, DebianCommandsFirstAndGrpcurlExplained) {
  const std::string text = Read("README.md");
  const size_t client = text.find("build/kvserve client generate");
  const size_t python = text.find("/usr/bin/python3 examples/python/generate_stream.py");
  const size_t grpcurl = text.find("grpcurl -plaintext");
  ASSERT_NE(client, std::string::npos);
  ASSERT_NE(python, std::string::npos) << "the Python example with /usr/bin/python3";
  ASSERT_NE(grpcurl, std::string::npos);
  EXPECT_LT(client, grpcurl);
  EXPECT_LT(python, grpcurl);
  const std::string before = text.substr(0, grpcurl);
  EXPECT_TRUE(absl::StrContains(before, "not packaged in Debian 12"));
  EXPECT_TRUE(absl::StrContains(before, "go install github.com/fullstorydev/grpcurl"));
  EXPECT_TRUE(absl::StrContains(Read("examples/python/README.md"), "/usr/bin/python3"));
  EXPECT_FALSE(absl::StrContains(Read("proto/kvserve/v1/common.proto"), "later)"));
}

}  // namespace
}  // namespace kvserve::server::testing
