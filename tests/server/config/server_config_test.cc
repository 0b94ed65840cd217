// Loading valid configs: the shipped default and presets, every key's value landing in its
// field, defaults for missing keys, relative path resolution and the printed effective config.
#include "server/config/server_config.h"

#include <yaml-cpp/yaml.h>

#include <filesystem>
#include <functional>
#include <set>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/kv_format.h"
#include "server/config/config_schema.h"
#include "tests/server/config/config_test_util.h"

namespace kvserve::server {
namespace {

namespace fs = std::filesystem;
using config_test::ScratchDir;
using ::testing::HasSubstr;

const std::string kSourceDir = KVSERVE_SOURCE_DIR;

// The model the shipped configs point at: ../shared/models beside the repository.
fs::path ShippedModel() {
  return fs::path(kSourceDir) / ".." / "shared" / "models" / "stories260K.gguf";
}

// Leaf key paths of a YAML file, collected independently of the loader.
std::set<std::string> LeafPaths(const std::string& file) {
  std::set<std::string> out;
  std::function<void(const YAML::Node&, const std::string&)> walk = [&](const YAML::Node& node,
                                                                        const std::string& prefix) {
    for (auto it = node.begin(); it != node.end(); ++it) {
      const std::string path =
          prefix.empty() ? it->first.Scalar() : prefix + "." + it->first.Scalar();
      if (it->second.IsMap()) {
        walk(it->second, path);
      } else {
        out.insert(path);
      }
    }
  };
  walk(YAML::LoadFile(file), "");
  return out;
}

std::set<std::string> TableKeys() {
  std::set<std::string> out;
  for (const ConfigKey& key : ServerConfigKeys()) out.insert(key.path);
  return out;
}

std::vector<std::string> ShippedConfigs() {
  std::vector<std::string> files = {kSourceDir + "/configs/server.yaml"};
  for (const char* preset : {"fp16", "fp32-reference", "bf16", "low-memory", "high-throughput",
                             "priority", "int8", "int4", "nvfp4", "long-context"}) {
    files.push_back(kSourceDir + "/configs/presets/" + preset + ".yaml");
  }
  return files;
}

TEST(ServerConfigFilesTest, DefaultConfigLoads) {
  if (!fs::exists(ShippedModel())) GTEST_SKIP() << "no model at " << ShippedModel();
  const std::string file = kSourceDir + "/configs/server.yaml";
  absl::StatusOr<ServerConfig> config = LoadServerConfig(file);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->source, file);
  EXPECT_TRUE(fs::equivalent(config->model_path, ShippedModel())) << config->model_path;
  EXPECT_EQ(config->engine.model.model_path, config->model_path);
  EXPECT_EQ(config->tokenizer_path, "");
  EXPECT_EQ(config->address, "127.0.0.1:50051");
  EXPECT_EQ(config->engine.model.kv_format, kernels::KvFormat::kFp16);
  EXPECT_EQ(config->engine.model.kv_budget_bytes, 256ll << 20);
  EXPECT_EQ(config->engine.model.block_size, 16);
  EXPECT_EQ(config->engine.policy, engine::SchedulingPolicy::kFcfs);
  EXPECT_EQ(config->metrics_address, "127.0.0.1:9464");
  EXPECT_EQ(config->log_level, "info");
  EXPECT_FALSE(config->tls.enabled());
}

TEST(ServerConfigFilesTest, EveryPresetLoads) {
  if (!fs::exists(ShippedModel())) GTEST_SKIP() << "no model at " << ShippedModel();
  for (const std::string& file : ShippedConfigs()) {
    SCOPED_TRACE(file);
    absl::StatusOr<ServerConfig> config = LoadServerConfig(file);
    ASSERT_TRUE(config.ok()) << config.status();
    EXPECT_TRUE(fs::equivalent(config->model_path, ShippedModel())) << config->model_path;
  }
}

TEST(ServerConfigFilesTest, PresetsDifferWhereTheirNamesSay) {
  if (!fs::exists(ShippedModel())) GTEST_SKIP() << "no model at " << ShippedModel();
  auto load = [](const std::string& name) {
    absl::StatusOr<ServerConfig> config =
        LoadServerConfig(kSourceDir + "/configs/presets/" + name + ".yaml");
    EXPECT_TRUE(config.ok()) << name << ": " << config.status();
    return config.ok() ? *config : ServerConfig{};
  };
  const ServerConfig long_context = load("long-context");
  EXPECT_EQ(long_context.engine.token_eviction.policy, "sliding_window");
  EXPECT_EQ(long_context.engine.token_eviction.budget_tokens, 256);
  const ServerConfig fp16 = load("fp16");
  EXPECT_EQ(fp16.engine.model.kv_format, kernels::KvFormat::kFp16);
  EXPECT_EQ(load("fp32-reference").engine.model.kv_format, kernels::KvFormat::kFp32);
  EXPECT_EQ(load("bf16").engine.model.kv_format, kernels::KvFormat::kBf16);
  const ServerConfig low = load("low-memory");
  EXPECT_LT(low.engine.model.kv_budget_bytes, fp16.engine.model.kv_budget_bytes);
  EXPECT_LT(low.engine.max_batch_tokens, fp16.engine.max_batch_tokens);
  const ServerConfig high = load("high-throughput");
  EXPECT_GT(high.engine.max_running_requests, fp16.engine.max_running_requests);
  EXPECT_GT(high.engine.max_batch_tokens, fp16.engine.max_batch_tokens);
  EXPECT_EQ(high.engine.model.max_batch_tokens, high.engine.max_batch_tokens);
  EXPECT_EQ(load("priority").engine.policy, engine::SchedulingPolicy::kPriority);
  EXPECT_EQ(fp16.engine.policy, engine::SchedulingPolicy::kFcfs);
  const ServerConfig int8 = load("int8");
  EXPECT_EQ(int8.engine.model.kv_format, kernels::KvFormat::kInt8);
  EXPECT_EQ(int8.engine.model.kv_recent_window, 0);
  const ServerConfig int4 = load("int4");
  EXPECT_EQ(int4.engine.model.kv_format, kernels::KvFormat::kInt4);
  EXPECT_EQ(int4.engine.model.kv_recent_window, 32);
  EXPECT_EQ(int4.engine.model.kv_sink_tokens, 4);
  EXPECT_EQ(int4.engine.model.kv_window_format, kernels::KvFormat::kFp16);
  const ServerConfig nvfp4 = load("nvfp4");
  EXPECT_EQ(nvfp4.engine.model.kv_format, kernels::KvFormat::kNvfp4);
  EXPECT_EQ(nvfp4.engine.model.kv_recent_window, 32);
  EXPECT_EQ(nvfp4.engine.model.kv_sink_tokens, 4);
}

TEST(ServerConfigFilesTest, ShippedConfigsSetEveryKey) {
  const std::set<std::string> keys = TableKeys();
  for (const std::string& file : ShippedConfigs()) {
    SCOPED_TRACE(file);
    EXPECT_EQ(LeafPaths(file), keys);
  }
}

TEST(ServerConfigKeysTest, TableHasUniqueKeysGroupedBySection) {
  std::set<std::string> seen;
  std::set<std::string> closed_sections;
  std::string current;
  for (const ConfigKey& key : ServerConfigKeys()) {
    EXPECT_TRUE(seen.insert(key.path).second) << "duplicate row " << key.path;
    EXPECT_FALSE(key.help.empty()) << key.path;
    const std::string section = key.path.substr(0, key.path.find('.'));
    if (section != current) {
      EXPECT_EQ(closed_sections.count(section), 0u) << key.path << " is apart from its section";
      closed_sections.insert(current);
      current = section;
    }
  }
  EXPECT_TRUE(IsConfigSection("kv_cache"));
  EXPECT_TRUE(IsConfigSection("server.tls"));
  EXPECT_FALSE(IsConfigSection("kv_cache.format"));
  EXPECT_FALSE(IsConfigSection("kv_cach"));
  EXPECT_NE(FindConfigKey("scheduler.policy"), nullptr);
  EXPECT_EQ(FindConfigKey("scheduler"), nullptr);
}

// Every key set to a value other than its default.
constexpr char kWorkedConfig[] = R"(model:
  path: model.gguf
  tokenizer: tok/tok512.bin
  chat_template: chat/template.jinja
server:
  address: 0.0.0.0:6000
  max_message_bytes: 1048576
  max_request_bytes: 65536
  max_streams_per_connection: 7
  drain_timeout_seconds: 2.5
  liveness_stall_seconds: 7.5
  api_keys_poll_seconds: 0.5
  api_keys_file: keys.txt
  auth_on_loopback: true
  allow_unauthenticated: true
  handshake_timeout_seconds: 2.5
  max_connection_idle_seconds: 60
  keepalive_seconds: 30
  keepalive_timeout_seconds: 5
  tls:
    cert_file: tls/cert.pem
    key_file: KEY_FILE
kv_cache:
  format: bf16
  layer_formats: "0:fp32,3:fp16"
  recent_window: 24
  sink_tokens: 4
  window_format: fp32
  budget_mb: 0.5
  block_size: 8
  lowrank_rank: 6
  lowrank_text: calib.txt
prefix_cache:
  enabled: false
  hash: sha256
  eviction_policy: slru
scheduler:
  policy: priority
  max_running_requests: 7
  max_batch_tokens: 300
  max_step_ms: 150.5
  step_time_ratio: 1.5
  min_prefill_tokens: 24
  max_waiting_requests: 9
  stream_buffer_tokens: 33
limits:
  max_prompt_tokens: 100
  max_tokens: 200
  default_max_tokens: 50
  max_prompt_bytes: 4096
engine:
  threads: 3
  device: cpu
  device_memory_fraction: 0.5
metrics:
  address: "127.0.0.2:9100"
  min_watch_interval_ms: 250
http:
  address: "127.0.0.3:8181"
  threads: 5
  max_body_bytes: 123456
  read_timeout_seconds: 4.5
  idle_timeout_seconds: 9.5
  max_connections: 77
logging:
  level: debug
token_eviction:
  policy: h2o
  budget_tokens: 96
  min_budget_tokens: 32
  max_budget_tokens: 256
  sink_tokens: 2
  recent_window: 24
  slack_tokens: 8
  granularity: layer
  score_normalization: none
)";

TEST(ServerConfigValuesTest, EveryKeyLandsInItsField) {
  ScratchDir dir;
  dir.Write("model.gguf", "x");
  dir.Write("tok/tok512.bin", "x");
  dir.Write("chat/template.jinja", "{{ messages }}");
  dir.Write("keys.txt", "k1\n");
  dir.Write("calib.txt", "Once upon a time.\n");
  dir.Write("tls/cert.pem", "c");
  const std::string key_file = dir.Write("elsewhere/key.pem", "k");  // absolute in the file
  std::string text = kWorkedConfig;
  text.replace(text.find("KEY_FILE"), 8, key_file);
  const std::string file = dir.Write("worked.yaml", text);
  const std::string file_dir = fs::path(file).parent_path().string();

  EXPECT_EQ(LeafPaths(file), TableKeys()) << "the worked config must cover every key";
  absl::StatusOr<ServerConfig> config = LoadServerConfig(file);
  ASSERT_TRUE(config.ok()) << config.status();
  const ServerConfig& c = *config;
  EXPECT_TRUE(fs::equivalent(c.model_path, dir.Path("model.gguf")));
  EXPECT_EQ(c.model_path, (fs::path(file_dir) / "model.gguf").string());
  EXPECT_EQ(c.engine.model.model_path, c.model_path);
  EXPECT_TRUE(fs::equivalent(c.tokenizer_path, dir.Path("tok/tok512.bin")));
  EXPECT_EQ(c.engine.model.tokenizer_path, c.tokenizer_path);
  EXPECT_TRUE(fs::equivalent(c.chat_template_path, dir.Path("chat/template.jinja")));
  EXPECT_EQ(c.address, "0.0.0.0:6000");
  EXPECT_EQ(c.max_message_bytes, 1048576);
  EXPECT_EQ(c.http.address, "127.0.0.3:8181");
  EXPECT_EQ(c.http.threads, 5);
  EXPECT_EQ(c.http.max_body_bytes, 123456);
  EXPECT_EQ(c.http.read_timeout_seconds, 4.5);
  EXPECT_EQ(c.http.idle_timeout_seconds, 9.5);
  EXPECT_EQ(c.http.max_connections, 77);
  EXPECT_EQ(c.max_request_bytes, 65536);
  EXPECT_EQ(c.max_streams_per_connection, 7);
  EXPECT_DOUBLE_EQ(c.drain_timeout_seconds, 2.5);
  EXPECT_DOUBLE_EQ(c.liveness_stall_seconds, 7.5);
  EXPECT_DOUBLE_EQ(c.api_keys_poll_seconds, 0.5);
  EXPECT_TRUE(fs::equivalent(c.api_keys_file, dir.Path("keys.txt")));
  EXPECT_TRUE(c.auth_on_loopback);
  EXPECT_TRUE(c.allow_unauthenticated);
  EXPECT_DOUBLE_EQ(c.handshake_timeout_seconds, 2.5);
  EXPECT_DOUBLE_EQ(c.max_connection_idle_seconds, 60);
  EXPECT_DOUBLE_EQ(c.keepalive_seconds, 30);
  EXPECT_DOUBLE_EQ(c.keepalive_timeout_seconds, 5);
  EXPECT_EQ(c.max_prompt_bytes, 4096);
  EXPECT_TRUE(fs::equivalent(c.tls.cert_file, dir.Path("tls/cert.pem")));
  EXPECT_EQ(c.tls.key_file, key_file);  // absolute paths are kept as written
  EXPECT_TRUE(c.tls.enabled());
  EXPECT_EQ(c.engine.model.kv_format, kernels::KvFormat::kBf16);
  EXPECT_EQ(c.engine.model.kv_layer_formats,
            (std::map<int, kernels::KvFormat>{{0, kernels::KvFormat::kFp32},
                                              {3, kernels::KvFormat::kFp16}}));
  EXPECT_EQ(c.engine.model.kv_recent_window, 24);
  EXPECT_EQ(c.engine.model.kv_sink_tokens, 4);
  EXPECT_EQ(c.engine.model.kv_lowrank_rank, 6);
  EXPECT_TRUE(fs::equivalent(c.engine.model.kv_lowrank_text, dir.Path("calib.txt")));
  EXPECT_EQ(c.engine.model.kv_window_format, kernels::KvFormat::kFp32);
  EXPECT_EQ(c.engine.model.kv_budget_bytes, 524288);  // 0.5 MiB
  EXPECT_FALSE(c.engine.model.prefix_cache);
  EXPECT_EQ(c.engine.model.prefix_hash, "sha256");
  EXPECT_EQ(c.engine.model.block_eviction, "slru");
  EXPECT_EQ(c.engine.model.block_size, 8);
  EXPECT_EQ(c.engine.policy, engine::SchedulingPolicy::kPriority);
  EXPECT_EQ(c.engine.max_running_requests, 7);
  EXPECT_EQ(c.engine.max_batch_tokens, 300);
  EXPECT_EQ(c.engine.model.max_batch_tokens, 300);
  EXPECT_EQ(c.engine.max_step_ms, 150.5);
  EXPECT_EQ(c.engine.step_time_ratio, 1.5);
  EXPECT_EQ(c.engine.min_prefill_tokens, 24);
  EXPECT_EQ(c.engine.max_waiting_requests, 9);
  EXPECT_EQ(c.engine.stream_buffer_tokens, 33);
  EXPECT_EQ(c.engine.max_prompt_tokens, 100);
  EXPECT_EQ(c.engine.max_tokens_limit, 200);
  EXPECT_EQ(c.default_max_tokens, 50);
  EXPECT_EQ(c.engine.model.num_threads, 3);
  EXPECT_EQ(c.engine.model.device, "cpu");
  EXPECT_EQ(c.engine.model.device_memory_fraction, 0.5);
  EXPECT_EQ(c.metrics_address, "127.0.0.2:9100");
  EXPECT_EQ(c.min_watch_interval_ms, 250);
  EXPECT_EQ(c.log_level, "debug");
  EXPECT_EQ(c.engine.token_eviction.policy, "h2o");
  EXPECT_EQ(c.engine.token_eviction.budget_tokens, 96);
  EXPECT_EQ(c.engine.token_eviction.min_budget_tokens, 32);
  EXPECT_EQ(c.engine.token_eviction.max_budget_tokens, 256);
  EXPECT_EQ(c.engine.token_eviction.options.sink_tokens, 2);
  EXPECT_EQ(c.engine.token_eviction.options.recent_window, 24);
  EXPECT_EQ(c.engine.token_eviction.options.slack_tokens, 8);
  EXPECT_EQ(c.engine.token_eviction.options.granularity, engine::TokenEvictionGranularity::kLayer);
  EXPECT_EQ(c.engine.token_eviction.options.score_normalization,
            engine::TokenScoreNormalization::kNone);
}

TEST(ServerConfigValuesTest, MissingKeysTakeTheHeaderDefaults) {
  ScratchDir dir;
  dir.Write("m.gguf", "x");
  const std::string file = dir.Write("min.yaml", "model:\n  path: m.gguf\n");
  absl::StatusOr<ServerConfig> config = LoadServerConfig(file);
  ASSERT_TRUE(config.ok()) << config.status();
  const ServerConfig defaults;
  const ServerConfig& c = *config;
  EXPECT_EQ(c.tokenizer_path, "");
  EXPECT_EQ(c.address, defaults.address);
  EXPECT_EQ(c.max_message_bytes, defaults.max_message_bytes);
  EXPECT_EQ(c.max_streams_per_connection, 100);
  EXPECT_EQ(c.drain_timeout_seconds, defaults.drain_timeout_seconds);
  EXPECT_EQ(c.api_keys_file, "");
  EXPECT_EQ(c.auth_on_loopback, defaults.auth_on_loopback);
  EXPECT_EQ(c.default_max_tokens, defaults.default_max_tokens);
  EXPECT_EQ(c.metrics_address, defaults.metrics_address);
  EXPECT_EQ(c.log_level, defaults.log_level);
  EXPECT_EQ(c.engine.model.kv_format, defaults.engine.model.kv_format);
  EXPECT_EQ(c.engine.model.kv_budget_bytes, defaults.engine.model.kv_budget_bytes);
  EXPECT_EQ(c.engine.model.block_size, defaults.engine.model.block_size);
  EXPECT_EQ(c.engine.model.num_threads, defaults.engine.model.num_threads);
  EXPECT_EQ(c.engine.policy, defaults.engine.policy);
  EXPECT_EQ(c.engine.max_running_requests, defaults.engine.max_running_requests);
  EXPECT_EQ(c.engine.max_batch_tokens, defaults.engine.max_batch_tokens);
  EXPECT_EQ(c.engine.max_step_ms, defaults.engine.max_step_ms);
  EXPECT_EQ(c.engine.step_time_ratio, defaults.engine.step_time_ratio);
  EXPECT_EQ(c.engine.min_prefill_tokens, defaults.engine.min_prefill_tokens);
  EXPECT_EQ(c.engine.max_waiting_requests, defaults.engine.max_waiting_requests);
  EXPECT_EQ(c.engine.max_prompt_tokens, defaults.engine.max_prompt_tokens);
  EXPECT_EQ(c.engine.max_tokens_limit, defaults.engine.max_tokens_limit);
  EXPECT_EQ(c.engine.stream_buffer_tokens, defaults.engine.stream_buffer_tokens);
}

TEST(ServerConfigValuesTest, AcceptsEveryKvFormatNameAndSpellings) {
  ScratchDir dir;
  dir.Write("m.gguf", "x");
  const std::pair<const char*, kernels::KvFormat> formats[] = {{"fp32", kernels::KvFormat::kFp32},
                                                               {"fp16", kernels::KvFormat::kFp16},
                                                               {"bf16", kernels::KvFormat::kBf16}};
  for (const auto& [name, format] : formats) {
    const std::string file = dir.Write(
        "f.yaml", std::string("model: {path: m.gguf}\nkv_cache:\n  format: ") + name + "\n");
    absl::StatusOr<ServerConfig> config = LoadServerConfig(file);
    ASSERT_TRUE(config.ok()) << name << ": " << config.status();
    EXPECT_EQ(config->engine.model.kv_format, format) << name;
  }
  // Flow maps, dotted keys, explicit nulls for optional strings, YAML 1.1 words kept as text,
  // capitalised booleans and a comments-only section.
  const std::string file = dir.Write("g.yaml",
                                     "model: {path: m.gguf, tokenizer: ~}\n"
                                     "kv_cache.block_size: 32\n"
                                     "server: {auth_on_loopback: False}\n"
                                     "logging:\n  level: off\n"
                                     "metrics:\n  address: \"\"\n"
                                     "engine:\n  # threads: 4\n");
  absl::StatusOr<ServerConfig> config = LoadServerConfig(file);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->tokenizer_path, "");
  EXPECT_EQ(config->engine.model.block_size, 32);
  EXPECT_FALSE(config->auth_on_loopback);
  EXPECT_EQ(config->log_level, "off");
  EXPECT_EQ(config->metrics_address, "");
  EXPECT_EQ(config->engine.model.num_threads, 0);
}

TEST(ServerConfigValuesTest, RelativePathsResolveAgainstTheConfigDirectory) {
  ScratchDir dir;
  dir.Write("models/m.gguf", "x");
  dir.Write("configs/tok.bin", "x");
  const std::string file = dir.Write(
      "configs/deep/c.yaml", "model:\n  path: ../../models/m.gguf\n  tokenizer: ../tok.bin\n");
  absl::StatusOr<ServerConfig> config = LoadServerConfig(file);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(fs::path(config->model_path),
            dir.path() / "configs" / "deep" / ".." / ".." / "models" / "m.gguf");
  EXPECT_TRUE(fs::equivalent(config->model_path, dir.Path("models/m.gguf")));
  EXPECT_TRUE(fs::equivalent(config->tokenizer_path, dir.Path("configs/tok.bin")));

  // The same file read through a relative path resolves relative to the working directory.
  const fs::path relative_file = fs::relative(file, fs::current_path());
  config = LoadServerConfig(relative_file.string());
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_TRUE(fs::path(config->model_path).is_relative()) << config->model_path;
  EXPECT_TRUE(fs::equivalent(config->model_path, dir.Path("models/m.gguf")));
}

TEST(ServerConfigValuesTest, FormattedConfigLoadsBackUnchanged) {
  ScratchDir dir;
  dir.Write("model.gguf", "x");
  dir.Write("tok/tok512.bin", "x");
  dir.Write("chat/template.jinja", "{{ messages }}");
  dir.Write("keys.txt", "k1\n");
  dir.Write("tls/cert.pem", "c");
  const std::string key_file = dir.Write("elsewhere/key.pem", "k");
  std::string text = kWorkedConfig;
  text.replace(text.find("KEY_FILE"), 8, key_file);
  absl::StatusOr<ServerConfig> first = LoadServerConfig(dir.Write("worked.yaml", text));
  ASSERT_TRUE(first.ok()) << first.status();

  const std::string formatted = FormatServerConfig(*first);
  EXPECT_THAT(formatted,
              HasSubstr("kv_cache:\n  format: bf16\n  layer_formats: \"0:fp32,3:fp16\"\n"));
  EXPECT_THAT(formatted, HasSubstr("  window_format: fp32\n  budget_mb: 0.5\n"));
  EXPECT_THAT(formatted, HasSubstr("  tls:\n    cert_file: \""));
  // Paths are absolute after the first load, so the copy may live anywhere.
  const std::string copy = dir.Write("b/c/formatted.yaml", formatted);
  absl::StatusOr<ServerConfig> second = LoadServerConfig(copy);
  ASSERT_TRUE(second.ok()) << second.status() << "\n" << formatted;
  EXPECT_EQ(FormatServerConfig(*second), formatted);
  EXPECT_EQ(LeafPaths(copy), TableKeys());
  EXPECT_EQ(second->engine.model.kv_budget_bytes, first->engine.model.kv_budget_bytes);
  EXPECT_EQ(second->metrics_address, "127.0.0.2:9100");
}

}  // namespace
}  // namespace kvserve::server
