// `kvserve calibrate` as a user runs it: the fragment it writes loads as a server config, and
// bad flags are usage errors naming the flag.
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "engine/kv/kv_cache_policy.h"
#include "gtest/gtest.h"
#include "server/config/server_config.h"
#include "tests/server/grpc/server_process.h"

namespace kvserve::tools {
namespace {

using ::kvserve::server::LoadServerConfig;
using ::kvserve::server::ServerConfig;
using ::kvserve::server::testing::KvserveBinary;
using ::kvserve::server::testing::ModelPath;
using ::kvserve::server::testing::ProcessResult;
using ::kvserve::server::testing::RunProcess;
using ::kvserve::server::testing::ScratchDir;

std::string EvalText() { return std::string(KVSERVE_EVAL_DIR) + "/tinystories_valid_a.txt"; }

ProcessResult Calibrate(const std::vector<std::string>& args) {
  std::vector<std::string> argv = {KvserveBinary(), "calibrate"};
  argv.insert(argv.end(), args.begin(), args.end());
  return RunProcess(argv, absl::Seconds(300));
}

TEST(CalibrateCliTest, WritesAFragmentTheServerConfigLoads) {
  ScratchDir dir;
  const std::string out = dir.path() + "/calibrated.yaml";
  ProcessResult r = Calibrate({"--model", ModelPath(), "--text", EvalText(), "--budget-bits", "6",
                               "--formats", "fp16,int4,int2", "--max-documents", "6", "--context",
                               "256", "--threads", "1", "--out", out});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("budget 6 bits/element: chosen average"), std::string::npos) << r.out;
  EXPECT_NE(r.err.find("calibrate: layer 4 in int2: perplexity"), std::string::npos) << r.err;
  std::ifstream in(out);
  std::stringstream yaml;
  yaml << in.rdbuf();
  EXPECT_NE(yaml.str().find("# Budget 6 bits/element"), std::string::npos) << yaml.str();

  absl::StatusOr<ServerConfig> config = LoadServerConfig(out, {"model.path=" + ModelPath()});
  ASSERT_TRUE(config.ok()) << config.status();
  const engine::LocalModelOptions& m = config->engine.model;
  // Average bits at head_dim 8 (fp16 16, int4 7, int2 5 bits per element) within the budget.
  double bits = 0;
  for (int layer = 0; layer < 5; ++layer) {
    const auto it = m.kv_layer_formats.find(layer);
    const kernels::KvFormat f = it == m.kv_layer_formats.end() ? m.kv_format : it->second;
    bits += f == kernels::KvFormat::kFp16 ? 16 : f == kernels::KvFormat::kInt4 ? 7 : 5;
    EXPECT_TRUE(f == kernels::KvFormat::kFp16 || f == kernels::KvFormat::kInt4 ||
                f == kernels::KvFormat::kInt2);
  }
  EXPECT_LE(bits / 5, 6.0);
  EXPECT_GT(bits / 5, 5.0);  // 6 bits leaves room above all-int2 and the choice uses it
}

TEST(CalibrateCliTest, BadFlagsAreUsageErrorsNamingTheFlag) {
  ScratchDir dir;
  const std::vector<std::string> base = {"--model",  ModelPath(),       "--text",
                                         EvalText(), "--max-documents", "2"};
  auto run = [&](std::vector<std::string> extra) {
    std::vector<std::string> args = base;
    args.insert(args.end(), extra.begin(), extra.end());
    return Calibrate(args);
  };
  struct Case {
    std::vector<std::string> extra;
    std::string message;
  };
  const std::vector<Case> cases = {
      {{}, "--budget-bits"},
      {{"--budget-bits", "0"}, "--budget-bits: must be in (0, 64]"},
      {{"--budget-bits", "-2"}, "--budget-bits: must be in (0, 64]"},
      {{"--budget-bits", "many"}, "--budget-bits"},
      {{"--budget-bits", "6", "--formats", "fp16,int5"}, "--formats: unknown format 'int5'"},
      {{"--budget-bits", "6", "--formats", "int4,int4"}, "'int4' is listed twice"},
      {{"--budget-bits", "3"}, "budget 3 bits/element is below the smallest candidate, int2"},
      {{"--budget-bits", "6", "--kv-format", "int4"}, "--kv-format is what calibrate chooses"},
      {{"--budget-bits", "6", "--max-documents", "-1"}, "--max-documents: must be >= 0"},
      {{"--budget-bits", "6", "--out", dir.path() + "/no/such/dir/x.yaml"}, "--out: cannot write"},
  };
  for (const Case& c : cases) {
    ProcessResult r = run(c.extra);
    EXPECT_EQ(r.exit_code, 2) << c.message << "\n" << r.err;
    EXPECT_NE(r.err.find(c.message), std::string::npos) << r.err;
    EXPECT_EQ(r.out, "");
  }
  ProcessResult missing_text =
      Calibrate({"--model", ModelPath(), "--text", dir.path() + "/none.txt", "--budget-bits", "6"});
  EXPECT_EQ(missing_text.exit_code, 2);
  EXPECT_NE(missing_text.err.find("--text: cannot read"), std::string::npos) << missing_text.err;
}

}  // namespace
}  // namespace kvserve::tools
