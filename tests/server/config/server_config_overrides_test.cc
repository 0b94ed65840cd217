// `--set key.path=value` overrides: they apply over the file, go through the same checks, and a
// bad one is named in the error.
#include <filesystem>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/kv_format.h"
#include "server/config/server_config.h"
#include "tests/server/config/config_test_util.h"

namespace kvserve::server {
namespace {

namespace fs = std::filesystem;
using config_test::ScratchDir;
using ::testing::HasSubstr;

class ServerConfigOverrideTest : public ::testing::Test {
 protected:
  void SetUp() override {
    model_ = dir_.Write("models/m.gguf", "x");
    file_ = dir_.Write("base.yaml",
                       "model:\n  path: models/m.gguf\n"
                       "kv_cache:\n  format: fp16\n  block_size: 16\n"
                       "logging:\n  level: info\n");
  }

  absl::StatusOr<ServerConfig> Load(const std::vector<std::string>& overrides) {
    return LoadServerConfig(file_, overrides);
  }
  std::string Error(const std::vector<std::string>& overrides) {
    absl::StatusOr<ServerConfig> config = Load(overrides);
    EXPECT_FALSE(config.ok());
    if (config.ok()) return "";
    EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument) << config.status();
    return std::string(config.status().message());
  }

  ScratchDir dir_;
  std::string model_;
  std::string file_;
};

TEST_F(ServerConfigOverrideTest, OverridesApplyOverTheFile) {
  absl::StatusOr<ServerConfig> config = Load({
      "kv_cache.format=bf16",
      "kv_cache.block_size=32",
      "kv_cache.budget_mb=0.25",
      "scheduler.policy=priority",
      "scheduler.max_batch_tokens=1024",
      "server.address=[::1]:7000",  // not a YAML scalar: taken as written
      "server.drain_timeout_seconds=0",
      "server.auth_on_loopback=false",
      "metrics.address=",  // empty = metrics off
      "logging.level=off",
      "limits.max_tokens=300",
      "engine.threads=2",
  });
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->engine.model.kv_format, kernels::KvFormat::kBf16);
  EXPECT_EQ(config->engine.model.block_size, 32);
  EXPECT_EQ(config->engine.model.kv_budget_bytes, 262144);
  EXPECT_EQ(config->engine.policy, engine::SchedulingPolicy::kPriority);
  EXPECT_EQ(config->engine.max_batch_tokens, 1024);
  EXPECT_EQ(config->engine.model.max_batch_tokens, 1024);
  EXPECT_EQ(config->address, "[::1]:7000");
  EXPECT_EQ(config->drain_timeout_seconds, 0);
  EXPECT_EQ(config->metrics_address, "");
  EXPECT_EQ(config->log_level, "off");
  EXPECT_EQ(config->engine.max_tokens_limit, 300);
  EXPECT_EQ(config->engine.model.num_threads, 2);
  // Keys not overridden keep the file's values.
  EXPECT_TRUE(fs::equivalent(config->model_path, model_));
}

TEST_F(ServerConfigOverrideTest, LastOverrideWinsAndQuotesAreYaml) {
  absl::StatusOr<ServerConfig> config =
      Load({"kv_cache.block_size=8", "kv_cache.block_size=64", "server.address='host:99'",
            " kv_cache.format =fp32", "server.allow_unauthenticated=true"});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->engine.model.block_size, 64);
  EXPECT_EQ(config->address, "host:99");
  EXPECT_EQ(config->engine.model.kv_format, kernels::KvFormat::kFp32);
}

TEST_F(ServerConfigOverrideTest, BadOverridesAreNamed) {
  EXPECT_EQ(Error({"kv_cache.block_size=0"}),
            "--set kv_cache.block_size=0: must be in [1, 1024], got 0");
  EXPECT_THAT(Error({"kv_cache.fromat=fp16"}),
              HasSubstr("--set kv_cache.fromat=fp16: unknown key 'kv_cache.fromat' (did you mean "
                        "'kv_cache.format'?)"));
  EXPECT_THAT(Error({"scheduler.max_running_requests=many"}),
              HasSubstr("--set scheduler.max_running_requests=many: expected an integer, got "
                        "'many'"));
  EXPECT_THAT(Error({"kv_cache.block_size=\"16\""}),
              HasSubstr("--set kv_cache.block_size=\"16\": expected an integer, got the string"));
  EXPECT_THAT(Error({"kv_cache.block_size=[1, 2]"}),
              HasSubstr("--set kv_cache.block_size=[1, 2]: expected a single value"));
  EXPECT_THAT(Error({"kv_cache.block_size=,"}),
              HasSubstr("--set kv_cache.block_size=,: expected a single YAML value, got ','"));
  EXPECT_THAT(Error({"kv_cache.block_size=[1"}),
              HasSubstr("--set kv_cache.block_size=[1: malformed value"));
  EXPECT_THAT(Error({"scheduler.policy=lifo"}),
              HasSubstr("--set scheduler.policy=lifo: must be one of fcfs, priority; got 'lifo'"));
  EXPECT_THAT(Error({"server.auth_on_loopback=maybe"}),
              HasSubstr("--set server.auth_on_loopback=maybe: expected true or false"));
  EXPECT_THAT(Error({"server.address=localhost:99999"}),
              HasSubstr("--set server.address=localhost:99999: port must be in [0, 65535]"));
  EXPECT_THAT(Error({"kv_cache=fp16"}), HasSubstr("--set kv_cache=fp16: 'kv_cache' is a section"));
  EXPECT_THAT(Error({"kv_cache.format"}),
              HasSubstr("--set kv_cache.format: expected key.path=value"));
  EXPECT_THAT(Error({"=fp16"}), HasSubstr("--set =fp16: expected key.path=value"));
  // The first bad override is the one reported.
  EXPECT_THAT(Error({"engine.threads=4", "engine.threads=-4", "kv_cache.block_size=0"}),
              HasSubstr("--set engine.threads=-4: must be in [0, 1024], got -4"));
}

TEST_F(ServerConfigOverrideTest, OverriddenFilesAreChecked) {
  EXPECT_EQ(Error({"model.path=/no/such/model.gguf"}),
            "--set model.path=/no/such/model.gguf: no such file: /no/such/model.gguf");
  EXPECT_EQ(Error({"model.path="}), "--set model.path=: must not be empty");
  const std::string cert = dir_.Write("cert.pem", "c");
  EXPECT_THAT(
      Error({"server.tls.cert_file=" + cert}),
      HasSubstr("--set server.tls.cert_file=" + cert + ": is set but server.tls.key_file is not"));
  EXPECT_THAT(Error({"limits.max_tokens=10", "limits.default_max_tokens=20"}),
              HasSubstr("--set limits.default_max_tokens=20: limits.default_max_tokens (20) must "
                        "not exceed limits.max_tokens (10)"));
}

TEST_F(ServerConfigOverrideTest, OverridePathsStayRelativeToTheWorkingDirectory) {
  const std::string other = dir_.Write("other/model.gguf", "y");
  const std::string relative = fs::relative(other, fs::current_path()).string();
  ASSERT_TRUE(fs::path(relative).is_relative());
  absl::StatusOr<ServerConfig> config = Load({"model.path=" + relative});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->model_path, relative);
  EXPECT_EQ(config->engine.model.model_path, relative);
}

TEST_F(ServerConfigOverrideTest, EmptyFileNeedsModelPathFromAnOverride) {
  const std::string empty = dir_.Write("empty.yaml", "");
  absl::StatusOr<ServerConfig> config = LoadServerConfig(empty, {"model.path=" + model_});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->model_path, model_);
  EXPECT_EQ(config->source, empty);
  EXPECT_EQ(config->engine.model.kv_format, ServerConfig{}.engine.model.kv_format);

  config = LoadServerConfig(empty, {"kv_cache.format=fp16"});
  ASSERT_FALSE(config.ok());
  EXPECT_THAT(config.status().message(), HasSubstr(empty + ": model.path is required"));
}

TEST_F(ServerConfigOverrideTest, NoFileMeansDefaultsPlusOverrides) {
  absl::StatusOr<ServerConfig> config =
      LoadServerConfig("", {"model.path=" + model_, "kv_cache.budget_mb=64"});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->source, "");
  EXPECT_EQ(config->model_path, model_);
  EXPECT_EQ(config->engine.model.kv_budget_bytes, 64ll << 20);
  EXPECT_EQ(config->address, ServerConfig{}.address);

  config = LoadServerConfig("", {});
  ASSERT_FALSE(config.ok());
  EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(config.status().message(), HasSubstr("model.path is required"));
  EXPECT_THAT(config.status().message(), HasSubstr("--set model.path="));
}

}  // namespace
}  // namespace kvserve::server
