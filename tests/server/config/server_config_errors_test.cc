// Bad configs: each fails with InvalidArgument naming the key, the file and the line at fault.
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/config/server_config.h"
#include "tests/server/config/config_test_util.h"

namespace kvserve::server {
namespace {

using config_test::ScratchDir;
using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::Not;

class ServerConfigErrorTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_.Write("m.gguf", "model bytes"); }

  // Loads `text` as bad.yaml (next to an existing m.gguf) and returns the error message; fails
  // the test unless the load fails with InvalidArgument.
  std::string Error(const std::string& text) {
    absl::StatusOr<ServerConfig> config = LoadServerConfig(dir_.Write("bad.yaml", text));
    EXPECT_FALSE(config.ok()) << "loaded:\n" << text;
    if (config.ok()) return "";
    EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument) << config.status();
    return std::string(config.status().message());
  }
  // "<dir>/bad.yaml:<line>:"
  std::string At(int line) const {
    return dir_.Path("bad.yaml") + ":" + std::to_string(line) + ":";
  }

  ScratchDir dir_;
};

TEST_F(ServerConfigErrorTest, UnknownTopLevelKey) {
  const std::string message = Error(
      "model:\n"            // 1
      "  path: m.gguf\n"    // 2
      "schedular:\n"        // 3
      "  policy: fcfs\n");  // 4
  EXPECT_THAT(message, HasSubstr(At(3) + " unknown key 'schedular'"));
  EXPECT_THAT(message, HasSubstr("did you mean 'scheduler'?"));
}

TEST_F(ServerConfigErrorTest, UnknownNestedKey) {
  const std::string message = Error(
      "# comment\n"         // 1
      "model:\n"            // 2
      "  path: m.gguf\n"    // 3
      "\n"                  // 4
      "kv_cache:\n"         // 5
      "  block_size: 16\n"  // 6
      "  fromat: fp16\n");  // 7
  EXPECT_THAT(message, HasSubstr(At(7) + " unknown key 'kv_cache.fromat'"));
  EXPECT_THAT(message, HasSubstr("did you mean 'kv_cache.format'?"));
}

TEST_F(ServerConfigErrorTest, UnknownKeyThreeLevelsDown) {
  const std::string message = Error(
      "model: {path: m.gguf}\n"  // 1
      "server:\n"                // 2
      "  tls:\n"                 // 3
      "    cert_file: \"\"\n"    // 4
      "    ca_file: ca.pem\n");  // 5
  EXPECT_THAT(message, HasSubstr(At(5) + " unknown key 'server.tls.ca_file'"));
}

TEST_F(ServerConfigErrorTest, UnknownKeyFarFromAnyNameHasNoSuggestion) {
  const std::string message = Error("model: {path: m.gguf}\nwidgets: 3\n");
  EXPECT_THAT(message, HasSubstr(At(2) + " unknown key 'widgets'"));
  EXPECT_THAT(message, Not(HasSubstr("did you mean")));
}

TEST_F(ServerConfigErrorTest, WrongTypes) {
  EXPECT_THAT(Error("model: {path: m.gguf}\nkv_cache:\n  block_size: abc\n"),
              HasSubstr(At(3) + " kv_cache.block_size: expected an integer, got 'abc'"));
  EXPECT_THAT(Error("model: {path: m.gguf}\nscheduler:\n  max_running_requests: 1.5\n"),
              HasSubstr(At(3) + " scheduler.max_running_requests: expected an integer, got '1.5'"));
  EXPECT_THAT(
      Error("model: {path: m.gguf}\nkv_cache:\n  block_size: \"16\"\n"),
      HasSubstr(At(3) + " kv_cache.block_size: expected an integer, got the string \"16\""));
  EXPECT_THAT(Error("model: {path: m.gguf}\nkv_cache:\n  budget_mb: lots\n"),
              HasSubstr(At(3) + " kv_cache.budget_mb: expected a number, got 'lots'"));
  EXPECT_THAT(Error("model: {path: m.gguf}\nserver:\n  auth_on_loopback: yes\n"),
              HasSubstr(At(3) + " server.auth_on_loopback: expected true or false, got 'yes'"));
  // A key given no value reports the key's line.
  EXPECT_THAT(Error("model: {path: m.gguf}\nkv_cache:\n  block_size:\n\n\n"),
              HasSubstr(At(3) + " kv_cache.block_size: expected an integer, got nothing"));
}

TEST_F(ServerConfigErrorTest, MapOrListWhereOneValueBelongs) {
  EXPECT_THAT(Error("model: {path: m.gguf}\nkv_cache:\n  block_size:\n    value: 16\n"),
              AllOf(HasSubstr(At(4) + " kv_cache.block_size: expected a single value"),
                    HasSubstr("got a map")));
  EXPECT_THAT(
      Error("model: {path: m.gguf}\nlogging:\n  level: [info, debug]\n"),
      AllOf(HasSubstr(At(3) + " logging.level: expected a single value"), HasSubstr("got a list")));
}

TEST_F(ServerConfigErrorTest, ValueWhereASectionBelongs) {
  EXPECT_THAT(Error("model: {path: m.gguf}\nkv_cache: 5\n"),
              HasSubstr(At(2) + " kv_cache: expected a map of keys, got '5'"));
  EXPECT_THAT(Error("model: {path: m.gguf}\nserver:\n  tls: on\n"),
              HasSubstr(At(3) + " server.tls: expected a map of keys, got 'on'"));
  EXPECT_THAT(Error("model: {path: m.gguf}\nscheduler:\n  - fcfs\n"),
              HasSubstr(At(3) + " scheduler: expected a map of keys, got a list"));
  EXPECT_THAT(Error("- model\n- server\n"),
              HasSubstr(At(1) + " expected a map of sections at the top level, got a list"));
  EXPECT_THAT(Error("just text\n"), HasSubstr(At(1) + " expected a map of sections"));
}

TEST_F(ServerConfigErrorTest, OutOfRange) {
  EXPECT_THAT(Error("model: {path: m.gguf}\nkv_cache:\n  block_size: 0\n"),
              HasSubstr(At(3) + " kv_cache.block_size: must be in [1, 1024], got 0"));
  EXPECT_THAT(Error("model: {path: m.gguf}\nkv_cache:\n  block_size: 2048\n"),
              HasSubstr(At(3) + " kv_cache.block_size: must be in [1, 1024], got 2048"));
  EXPECT_THAT(Error("model: {path: m.gguf}\nkv_cache:\n  budget_mb: -1\n"),
              HasSubstr(At(3) + " kv_cache.budget_mb: must be in [0, 4194304], got -1"));
  EXPECT_THAT(Error("model: {path: m.gguf}\nengine:\n  device_memory_fraction: 0\n"),
              HasSubstr(At(3) + " engine.device_memory_fraction: must be in [0.01, 1], got 0"));
  EXPECT_THAT(Error("model: {path: m.gguf}\nengine:\n  threads: -1\n"),
              HasSubstr(At(3) + " engine.threads: must be in [0, 1024], got -1"));
  EXPECT_THAT(Error("model: {path: m.gguf}\nserver:\n  drain_timeout_seconds: -0.5\n"),
              HasSubstr(At(3) + " server.drain_timeout_seconds: must be in [0, 86400], got -0.5"));
  EXPECT_THAT(Error("model: {path: m.gguf}\nscheduler:\n  max_waiting_requests: 0\n"),
              HasSubstr(At(3) + " scheduler.max_waiting_requests: must be in [1, 1048576]"));
  EXPECT_THAT(Error("model: {path: m.gguf}\nkv_cache:\n  block_size: 99999999999999999999\n"),
              HasSubstr(At(3) + " kv_cache.block_size: expected an integer"));
}

TEST_F(ServerConfigErrorTest, BadEnumNamesTheAcceptedValues) {
  EXPECT_THAT(Error("model: {path: m.gguf}\nscheduler:\n  policy: lifo\n"),
              HasSubstr(At(3) + " scheduler.policy: must be one of fcfs, priority; got 'lifo'"));
  EXPECT_THAT(Error("model: {path: m.gguf}\nlogging:\n  level: verbose\n"),
              HasSubstr(At(3) + " logging.level: must be one of trace, debug, info, warn, error, "
                                "off; got 'verbose'"));
  const std::string message = Error("model: {path: m.gguf}\nkv_cache:\n  format: FP16\n");
  EXPECT_THAT(message, HasSubstr(At(3) + " kv_cache.format: must be one of "));
  EXPECT_THAT(message, AllOf(HasSubstr("fp32"), HasSubstr("fp16"), HasSubstr("bf16"),
                             HasSubstr("got 'FP16'")));
}

TEST_F(ServerConfigErrorTest, BadLayerFormats) {
  EXPECT_THAT(Error("model: {path: m.gguf}\nkv_cache:\n  layer_formats: \"0:int9\"\n"),
              HasSubstr(At(3) + " kv_cache.layer_formats: '0:int9' is not LAYER:FORMAT"));
  EXPECT_THAT(Error("model: {path: m.gguf}\nkv_cache:\n  layer_formats: \"1:fp16,1:bf16\"\n"),
              HasSubstr(At(3) + " kv_cache.layer_formats: layer 1 is listed twice"));
}

TEST_F(ServerConfigErrorTest, BadAddresses) {
  EXPECT_THAT(Error("model: {path: m.gguf}\nserver:\n  address: 127.0.0.1:70000\n"),
              HasSubstr(At(3) + " server.address: port must be in [0, 65535] (0 = any free port), "
                                "got 70000"));
  EXPECT_THAT(Error("model: {path: m.gguf}\nserver:\n  address: 127.0.0.1:-1\n"),
              HasSubstr(At(3) + " server.address: port must be"));
  EXPECT_THAT(Error("model: {path: m.gguf}\nserver:\n  address: localhost\n"),
              HasSubstr(At(3) + " server.address: expected host:port"));
  EXPECT_THAT(Error("model: {path: m.gguf}\nserver:\n  address: \":50051\"\n"),
              HasSubstr(At(3) + " server.address: expected host:port"));
  EXPECT_THAT(Error("model: {path: m.gguf}\nserver:\n  address: host:http\n"),
              HasSubstr(At(3) + " server.address: port must be a number"));
  EXPECT_THAT(Error("model: {path: m.gguf}\nserver:\n  address: ::1:50051\n"),
              HasSubstr(At(3) + " server.address: expected host:port (or [ipv6]:port)"));
  EXPECT_THAT(Error("model: {path: m.gguf}\nmetrics:\n  address: 0.0.0.0:123456\n"),
              HasSubstr(At(3) + " metrics.address: port must be a number in [0, 65535]"));
  EXPECT_THAT(Error("model: {path: m.gguf}\nserver:\n  address: 127.0.0.1:7000\n"
                    "metrics:\n  address: 127.0.0.1:7000\n"),
              HasSubstr(At(5) + " metrics.address: must differ from server.address"));
}

TEST_F(ServerConfigErrorTest, MissingModelPath) {
  EXPECT_THAT(Error("kv_cache:\n  format: fp16\n"),
              HasSubstr(dir_.Path("bad.yaml") + ": model.path is required"));
  EXPECT_THAT(Error("kv_cache:\n  format: fp16\nmodel:\n  tokenizer: \"\"\n"),
              HasSubstr(At(3) + " model.path is required"));
  EXPECT_THAT(Error("model:\n  path: \"\"\n"), HasSubstr(At(2) + " model.path: must not be empty"));
  // An empty file (or comments only) is no exception without an override.
  EXPECT_THAT(Error(""), HasSubstr(dir_.Path("bad.yaml") + ": model.path is required"));
  EXPECT_THAT(Error("# nothing here\n"), HasSubstr("model.path is required"));
}

TEST_F(ServerConfigErrorTest, MissingFiles) {
  EXPECT_THAT(Error("logging: {level: info}\nmodel:\n  path: nothere.gguf\n"),
              HasSubstr(At(3) + " model.path: no such file: " + dir_.Path("nothere.gguf")));
  EXPECT_THAT(Error("model:\n  path: .\n"), HasSubstr(At(2) + " model.path: is a directory"));
  EXPECT_THAT(Error("model:\n  path: m.gguf\n  tokenizer: tok.bin\n"),
              HasSubstr(At(3) + " model.tokenizer: no such file: " + dir_.Path("tok.bin")));
  EXPECT_THAT(Error("model: {path: m.gguf}\nserver:\n  api_keys_file: /no/such/keys\n"),
              HasSubstr(At(3) + " server.api_keys_file: no such file: /no/such/keys"));
  dir_.Write("cert.pem", "c");
  EXPECT_THAT(Error("model: {path: m.gguf}\nserver:\n  tls:\n    cert_file: cert.pem\n"
                    "    key_file: key.pem\n"),
              HasSubstr(At(5) + " server.tls.key_file: no such file: " + dir_.Path("key.pem")));
}

TEST_F(ServerConfigErrorTest, TlsNeedsBothFiles) {
  dir_.Write("cert.pem", "c");
  dir_.Write("key.pem", "k");
  EXPECT_THAT(Error("model: {path: m.gguf}\nserver:\n  address: 127.0.0.1:1234\n  tls:\n"
                    "    cert_file: cert.pem\n"),
              HasSubstr(At(5) + " server.tls.cert_file: is set but server.tls.key_file is not"));
  EXPECT_THAT(
      Error("model: {path: m.gguf}\nserver:\n  tls: {key_file: key.pem, cert_file: \"\"}\n"),
      HasSubstr(At(3) + " server.tls.key_file: is set but server.tls.cert_file is not"));
}

TEST_F(ServerConfigErrorTest, InconsistentLimitsAndAuth) {
  EXPECT_THAT(
      Error("model: {path: m.gguf}\nlimits:\n  max_tokens: 100\n  default_max_tokens: 200\n"),
      HasSubstr(At(4) + " limits.default_max_tokens: limits.default_max_tokens (200) must "
                        "not exceed limits.max_tokens (100)"));
  // The default of default_max_tokens (256) exceeds the limit: the limit is blamed.
  EXPECT_THAT(Error("model: {path: m.gguf}\nlimits:\n  max_tokens: 100\n"),
              HasSubstr(At(3) + " limits.max_tokens: limits.default_max_tokens (256)"));
  EXPECT_THAT(Error("model: {path: m.gguf}\nserver:\n  auth_on_loopback: true\n"),
              HasSubstr(At(3) + " server.auth_on_loopback: is true but server.api_keys_file"));
}

TEST_F(ServerConfigErrorTest, WhatADeviceDoesNotRunYetIsRefusedNamingTheKey) {
  // Quantized formats, windows and sinks are fine on a device (encoded there whole).
  const absl::StatusOr<ServerConfig> quantized = LoadServerConfig(
      dir_.Write("good.yaml",
                 "model: {path: m.gguf}\nengine:\n  device: cuda\nkv_cache:\n  format: int4\n"
                 "  recent_window: 64\n  sink_tokens: 4\n"));
  EXPECT_TRUE(quantized.ok()) << quantized.status();
  EXPECT_THAT(Error("model: {path: m.gguf}\nkv_cache:\n  budget_mb: 0\n"),
              HasSubstr(At(3) + " kv_cache.budget_mb: 0 (a share of free device memory) needs "
                                "engine.device: cuda"));
  EXPECT_THAT(Error("model: {path: m.gguf}\nengine:\n  device: tpu\n"),
              HasSubstr(At(3) + " engine.device: must be one of cpu, cuda; got 'tpu'"));
  const std::string cuda = "model: {path: m.gguf}\nengine:\n  device: cuda\n";
  EXPECT_THAT(
      Error(cuda + "kv_cache:\n  format: lowrank\n"),
      HasSubstr(At(5) + " kv_cache.format: engine.device cuda does not store lowrank keys"));
  EXPECT_THAT(Error(cuda + "kv_cache:\n  format: int4\n  layer_formats: \"0:lowrank\"\n"),
              HasSubstr(At(6) + " kv_cache.layer_formats: layer 0: engine.device cuda does not "
                                "store lowrank keys"));
  EXPECT_THAT(Error(cuda + "kv_cache:\n  format: fp16\ntoken_eviction:\n  policy: h2o\n"
                           "  budget_tokens: 256\n"),
              HasSubstr(At(7) + " token_eviction.policy: h2o: token eviction compacts KV on the "
                                "host"));
}

TEST_F(ServerConfigErrorTest, MalformedYaml) {
  EXPECT_THAT(Error("model: {path: m.gguf}\nkv_cache:\n  format: [fp16\n  block_size: 16\n"),
              AllOf(HasSubstr(dir_.Path("bad.yaml") + ":"), HasSubstr("malformed YAML")));
  EXPECT_THAT(Error("model:\n  path: m.gguf\n kv_cache: x\n"),
              AllOf(HasSubstr(At(3)), HasSubstr("malformed YAML")));
  EXPECT_THAT(Error("model: {path: m.gguf}\nkv_cache: {format: fp16\n"),
              AllOf(HasSubstr(dir_.Path("bad.yaml") + ":"), HasSubstr("malformed YAML")));
  EXPECT_THAT(Error("model:\n  path: *anchor\n"),
              AllOf(HasSubstr(At(2)), HasSubstr("malformed YAML")));
  EXPECT_THAT(Error("model: {path: m.gguf}\n---\nkv_cache: {format: fp16}\n"),
              HasSubstr(At(3) + " expected one YAML document, found more than one"));
  // A flow entry outside any flow collection (yaml-cpp 0.7's LoadAll never returns on these).
  EXPECT_THAT(Error(","),
              HasSubstr(dir_.Path("bad.yaml") + ":1:1: malformed YAML: unexpected ','"));
  EXPECT_THAT(Error("\"x\","), HasSubstr("malformed YAML"));
  EXPECT_THAT(Error("model: {path: m.gguf}\n,\n"), HasSubstr("malformed YAML"));
  EXPECT_THAT(Error("model: {path: m.gguf}\n[a, b]: 1\n"),
              HasSubstr(At(2) + " keys must be plain names"));
}

TEST_F(ServerConfigErrorTest, DuplicateKeys) {
  EXPECT_THAT(Error("model: {path: m.gguf}\nkv_cache:\n  format: fp16\n  format: bf16\n"),
              HasSubstr(At(4) + " duplicate key 'kv_cache.format' (first at line 3)"));
  EXPECT_THAT(Error("model: {path: m.gguf}\nkv_cache:\n  format: fp16\nkv_cache:\n"
                    "  block_size: 8\n"),
              HasSubstr(At(4) + " duplicate key 'kv_cache' (first at line 2)"));
  EXPECT_THAT(Error("model: {path: m.gguf}\nkv_cache:\n  format: fp16\nkv_cache.format: bf16\n"),
              HasSubstr(At(4) + " duplicate key 'kv_cache.format' (first at line 3)"));
}

TEST(ServerConfigFileErrorTest, MissingConfigFileIsNotFound) {
  ScratchDir dir;
  const std::string file = dir.Path("absent.yaml");
  absl::StatusOr<ServerConfig> config = LoadServerConfig(file);
  ASSERT_FALSE(config.ok());
  EXPECT_EQ(config.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(config.status().message(), HasSubstr(file));

  config = LoadServerConfig(dir.path().string());
  ASSERT_FALSE(config.ok());
  EXPECT_THAT(config.status().message(), HasSubstr("is a directory"));
}

}  // namespace
}  // namespace kvserve::server
