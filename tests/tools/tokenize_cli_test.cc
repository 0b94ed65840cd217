// `kvserve tokenize` as a user runs it: every ../shared/vocab fixture's vectors through the binary
// (vocab-only files of several architectures), flags and errors.
#include <unistd.h>

#include <cctype>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_join.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/engine/tokenizer/vocab_vectors.h"
#include "tests/server/grpc/server_process.h"

namespace kvserve::tools {
namespace {

using ::kvserve::engine::testing::ReadVocabVectors;
using ::kvserve::engine::testing::VocabDir;
using ::kvserve::engine::testing::VocabFiles;
using ::kvserve::server::testing::KvserveBinary;
using ::kvserve::server::testing::ProcessResult;
using ::kvserve::server::testing::RunProcess;
using ::testing::HasSubstr;

ProcessResult Tokenize(const std::vector<std::string>& args) {
  std::vector<std::string> argv = {KvserveBinary(), "tokenize"};
  argv.insert(argv.end(), args.begin(), args.end());
  return RunProcess(argv, absl::Seconds(60));
}

class TokenizeCliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("kvserve_tokenize_cli_" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::string WriteText(const std::string& text) {
    const std::string path = (dir_ / ("text" + std::to_string(count_++))).string();
    std::ofstream(path, std::ios::binary) << text;
    return path;
  }

  std::filesystem::path dir_;
  int count_ = 0;
};

class TokenizeCliVectorsTest : public TokenizeCliTest,
                               public ::testing::WithParamInterface<std::string> {};

TEST_P(TokenizeCliVectorsTest, FixturePassesItsVectors) {
  const std::string& file = GetParam();
  const std::vector<engine::testing::VocabVector> vectors = ReadVocabVectors(file);
  ASSERT_EQ(vectors.size(), 46u) << file;
  for (const engine::testing::VocabVector& v : vectors) {
    ProcessResult r =
        Tokenize({"--model", VocabDir() + "/" + file, "--text-file", WriteText(v.text)});
    ASSERT_EQ(r.exit_code, 0) << file << ": " << r.err;
    EXPECT_EQ(r.out, absl::StrJoin(v.ids, " ") + "\n") << file << ": '" << v.text << "'";
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, TokenizeCliVectorsTest, ::testing::ValuesIn(VocabFiles()),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           std::string name;
                           for (const char c : info.param.substr(11)) {  // after "ggml-vocab-"
                             if (c == '.') break;
                             name += std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
                           }
                           return name;
                         });

TEST_F(TokenizeCliTest, TextFlagAddSpecialAndParseSpecial) {
  const std::string llama3 = VocabDir() + "/ggml-vocab-llama-bpe.derived.gguf";
  ProcessResult plain = Tokenize({"--model", llama3, "--text", "Hello"});
  EXPECT_EQ(plain.exit_code, 0) << plain.err;
  EXPECT_EQ(plain.out, "9906\n");
  ProcessResult bos = Tokenize({"--model", llama3, "--text", "Hello", "--add-special"});
  EXPECT_EQ(bos.out, "128000 9906\n");
  const std::string header = "<|start_header_id|>user<|end_header_id|>";
  ProcessResult special = Tokenize({"--model", llama3, "--text", header, "--parse-special"});
  EXPECT_EQ(special.out, "128006 882 128007\n");
  ProcessResult literal = Tokenize({"--model", llama3, "--text", header});
  EXPECT_EQ(literal.exit_code, 0);
  EXPECT_THAT(literal.out, ::testing::Not(HasSubstr("128006")));
  // An empty text is an empty line.
  ProcessResult empty = Tokenize({"--model", llama3, "--text", ""});
  EXPECT_EQ(empty.exit_code, 0) << empty.err;
  EXPECT_EQ(empty.out, "\n");
}

TEST_F(TokenizeCliTest, Errors) {
  const std::string gpt2 = VocabDir() + "/ggml-vocab-gpt-2.gguf";
  ProcessResult neither = Tokenize({"--model", gpt2});
  EXPECT_EQ(neither.exit_code, 2);
  EXPECT_THAT(neither.err, HasSubstr("--text"));
  ProcessResult missing = Tokenize({"--model", (dir_ / "nope.gguf").string(), "--text", "x"});
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_THAT(missing.err, HasSubstr("nope.gguf"));
  EXPECT_EQ(missing.out, "");
}

}  // namespace
}  // namespace kvserve::tools
