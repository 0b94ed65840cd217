// `kvserve client generate` uses the API's defaults: every sampling flag's default is the one
// generation.proto documents for its field (a flag not given leaves the field unset), and
// --max-tokens defers to the server's limits.default_max_tokens.
#include <fstream>
#include <map>
#include <sstream>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "gtest/gtest.h"
#include "tests/server/grpc/server_process.h"

namespace kvserve::server::testing {
namespace {

// "field -> default" from the SamplingParams comments ("... Default 1.").
std::map<std::string, double> ProtoDefaults() {
  std::ifstream in(SourceDir() + "/proto/kvserve/v1/generation.proto");
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string text = ss.str();
  const size_t begin = text.find("message SamplingParams {");
  const size_t end = text.find("\n}", begin);
  std::map<std::string, double> out;
  std::string comment;
  for (absl::string_view line :
       absl::StrSplit(absl::string_view(text).substr(begin, end - begin), '\n')) {
    line = absl::StripAsciiWhitespace(line);
    if (absl::ConsumePrefix(&line, "//")) {
      comment += " " + std::string(line);
      continue;
    }
    if (absl::ConsumePrefix(&line, "optional ")) {
      std::vector<std::string> w = absl::StrSplit(line, ' ', absl::SkipEmpty());
      const size_t d = comment.find("Default ");
      double value = 0;
      if (d != std::string::npos &&
          absl::SimpleAtod(
              absl::StripSuffix(comment.substr(d + 8, comment.find('.', d + 9) - d - 8), "."),
              &value)) {
        out[w[1]] = value;
      }
    }
    comment.clear();
  }
  return out;
}

// "--flag -> default" from `kvserve client generate --help`.
std::map<std::string, std::string> HelpDefaults() {
  const ProcessResult r = RunProcess({KvserveBinary(), "client", "generate", "--help"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  std::map<std::string, std::string> out;
  for (absl::string_view line : absl::StrSplit(r.out, '\n')) {
    line = absl::StripAsciiWhitespace(line);
    if (!absl::StartsWith(line, "--")) continue;
    const std::string flag(line.substr(0, line.find(' ')));
    const size_t d = line.rfind("(default ");
    if (d == absl::string_view::npos) continue;
    out[flag] = std::string(line.substr(d + 9, line.find(')', d) - d - 9));
  }
  return out;
}

TEST(ClientDefaultsTest, GenerateFlagsDefaultToTheApiDefaults) {
  const std::map<std::string, double> proto = ProtoDefaults();
  ASSERT_EQ(proto.size(), 7u) << "temperature, top_k, top_p, min_p, repetition_penalty, "
                                 "presence_penalty, frequency_penalty";
  const std::map<std::string, std::string> help = HelpDefaults();
  for (const auto& [field, value] : proto) {
    std::string flag = "--" + field;
    for (char& ch : flag) {
      if (ch == '_') ch = '-';
    }
    ASSERT_TRUE(help.contains(flag)) << flag << " not in the help";
    double shown = 0;
    ASSERT_TRUE(absl::SimpleAtod(help.at(flag), &shown)) << flag << ": " << help.at(flag);
    EXPECT_EQ(shown, value) << flag << ": the client's default " << help.at(flag) << ", the API's "
                            << value;
  }
  EXPECT_EQ(help.at("--max-tokens"), "0");
}

// With no sampling flags the client sends no sampling field: the server's defaults apply, and
// --max-tokens unset gives the server's limits.default_max_tokens.
TEST(ClientDefaultsTest, UnsetFlagsLeaveTheServerDefaults) {
  ServerProcess server;
  ASSERT_TRUE(server.Start({"limits.default_max_tokens=5", "logging.level=debug"}));
  const ProcessResult r =
      RunProcess({KvserveBinary(), "client", "generate", "--addr", server.address(), "--prompt",
                  "Once upon a time", "--seed", "7"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  // The server's own sampling with the API defaults and the same seed gives the same text.
  auto stub = server.Stub();
  grpc::ClientContext context;
  v1::GenerateRequest request;
  request.set_text("Once upon a time");
  request.mutable_sampling()->set_seed(7);
  v1::CompleteResponse response;
  ASSERT_TRUE(stub->Complete(&context, request, &response).ok());
  EXPECT_EQ(r.out, "Once upon a time" + response.text() + "\n");
  EXPECT_LE(response.token_ids_size(), 5);
  EXPECT_GE(response.token_ids_size(), 1);
}

}  // namespace
}  // namespace kvserve::server::testing
