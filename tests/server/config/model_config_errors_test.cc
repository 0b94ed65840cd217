// Config errors that only the loaded model reveals (KV formats against its layers, the lowrank
// calibration): `kvserve serve` reports them like every config error, with the file, the line
// and the key, and exits 2. The model is stories260K (5 layers, head_dim 8).
#include <ostream>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/config/server_config.h"
#include "tests/server/grpc/server_process.h"

namespace kvserve::server {
namespace {

using ::testing::HasSubstr;
using testing::KvserveBinary;
using testing::ModelPath;
using ::testing::Not;
using testing::ProcessResult;
using testing::RunProcess;
using testing::ScratchDir;

struct BadModelConfig {
  std::string name;
  std::string kv_cache;  // the kv_cache section's lines, from line 3 of the file
  int line;              // where the error must point
  std::string key;       // the key it must name
  std::string detail;    // and a piece of the reason
};

void PrintTo(const BadModelConfig& c, std::ostream* os) { *os << c.name; }

class ModelConfigErrorTest : public ::testing::TestWithParam<BadModelConfig> {};

// Runs `kvserve serve` (with --check when `check`) on the case's file: the model on lines 1-2,
// the kv_cache section from line 3.
ProcessResult Serve(const ScratchDir& dir, const BadModelConfig& c, bool check, std::string* path) {
  const std::string text = "model:\n  path: " + ModelPath() + "\nkv_cache:\n" + c.kv_cache;
  *path = dir.Write(c.name + ".yaml", text);
  std::vector<std::string> argv = {KvserveBinary(), "serve", "--config", *path};
  for (const char* set : {"server.address=127.0.0.1:0", "metrics.address=", "http.address="}) {
    argv.push_back("--set");
    argv.push_back(set);
  }
  if (check) argv.push_back("--check");
  return RunProcess(argv, absl::Seconds(60));
}

TEST_P(ModelConfigErrorTest, ServeExitsTwoNamingFileLineAndKey) {
  const BadModelConfig& c = GetParam();
  ScratchDir dir;
  for (bool check : {true, false}) {
    std::string path;
    const ProcessResult r = Serve(dir, c, check, &path);
    EXPECT_EQ(r.exit_code, 2) << (check ? "--check" : "serve") << "\n" << r.err;
    EXPECT_THAT(r.err, HasSubstr(path + ":" + std::to_string(c.line) + ": " + c.key + ":"));
    EXPECT_THAT(r.err, HasSubstr(c.detail));
    EXPECT_THAT(r.err, Not(HasSubstr("listening on")));
  }
}

INSTANTIATE_TEST_SUITE_P(
    Cases, ModelConfigErrorTest,
    ::testing::Values(
        // The model has layers 0..4; the key used to be reported as "kv_cache.layers".
        BadModelConfig{"layer_beyond_the_model",
                       "  format: fp16\n"                // 4
                       "  layer_formats: \"7:int8\"\n",  // 5
                       5, "kv_cache.layer_formats",
                       "layer 7 does not exist (the model has layers 0..4)"},
        // The recent window is written token by token, which int4 cannot be.
        BadModelConfig{"quantized_window",
                       "  format: int4\n"          // 4
                       "  recent_window: 32\n"     // 5
                       "  window_format: int4\n",  // 6
                       6, "kv_cache.window_format", "int4 cannot be written token by token"},
        // lowrank without kv_cache.lowrank_rank: the rank is not in the file, so the error
        // points at the line that chose the format.
        BadModelConfig{"lowrank_without_rank",
                       "  block_size: 16\n"    // 4
                       "  format: lowrank\n",  // 5
                       5, "kv_cache.lowrank_rank", "for the lowrank format"}),
    [](const ::testing::TestParamInfo<BadModelConfig>& info) { return info.param.name; });

// The same error set by an override names the override.
TEST(ModelConfigErrorOverrideTest, AnOverrideIsNamed) {
  ScratchDir dir;
  const std::string path = dir.Write("good.yaml", "model:\n  path: " + ModelPath() + "\n");
  const ProcessResult r = RunProcess({KvserveBinary(), "serve", "--config", path, "--check",
                                      "--set", "kv_cache.layer_formats=0:fp16,5:int8"},
                                     absl::Seconds(60));
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_THAT(r.err, HasSubstr("--set kv_cache.layer_formats=0:fp16,5:int8: "
                               "kv_cache.layer_formats: layer 5 does not exist"));
}

// A model that cannot be read is not a config error: exit 1, as before.
TEST(ModelConfigErrorOverrideTest, AnUnreadableModelStillExitsOne) {
  ScratchDir dir;
  const std::string model = dir.Write("broken.gguf", "GGUF but not really");
  const std::string path = dir.Write("c.yaml", "model:\n  path: " + model + "\n");
  const ProcessResult r =
      RunProcess({KvserveBinary(), "serve", "--config", path, "--check"}, absl::Seconds(60));
  EXPECT_EQ(r.exit_code, 1) << r.err;
}

// LocateConfigError on its own: the first key named that was set gives the place.
TEST(LocateConfigErrorTest, PlacesTheFirstNamedKeyThatWasSet) {
  ServerConfig config;
  config.source = "x.yaml";
  config.origins["kv_cache.format"] = "x.yaml:5";
  EXPECT_EQ(
      LocateConfigError(config, absl::InvalidArgumentError(
                                    "kv_cache.lowrank_rank: must be set for kv_cache.format")),
      "x.yaml:5: kv_cache.lowrank_rank: must be set for kv_cache.format");
  config.origins["kv_cache.lowrank_rank"] = "x.yaml:7";
  EXPECT_EQ(
      LocateConfigError(config, absl::InvalidArgumentError(
                                    "kv_cache.lowrank_rank: must be set for kv_cache.format")),
      "x.yaml:7: kv_cache.lowrank_rank: must be set for kv_cache.format");
  // Named but set nowhere: the file.
  EXPECT_EQ(LocateConfigError(config, absl::InvalidArgumentError("kv_cache.sink_tokens: bad")),
            "x.yaml: kv_cache.sink_tokens: bad");
  // Not starting with a key: not a config error.
  EXPECT_EQ(LocateConfigError(config, absl::InvalidArgumentError("m.gguf: truncated")),
            std::nullopt);
  // A key's name inside a longer word does not count.
  EXPECT_EQ(LocateConfigError(config, absl::InvalidArgumentError("kv_cache.formats: x")),
            std::nullopt);
}

}  // namespace
}  // namespace kvserve::server
