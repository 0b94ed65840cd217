// The rows of the configuration table. Keep them in the order of configs/server.yaml; a new key is
// a new row here, a commented line in configs/server.yaml and a worked value in the tests.
#include <cmath>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/kv/kv_cache_policy.h"
#include "engine/kv/token_eviction/token_eviction_policy.h"
#include "kernels/kv_format.h"
#include "server/config/config_schema.h"

namespace kvserve::server {
namespace {

using engine::SchedulingPolicy;

constexpr int64_t kMaxTokens = int64_t{1} << 24;  // bound for every token count
constexpr double kBytesPerMiB = 1024.0 * 1024.0;

absl::Status CheckAddress(const std::string& address) { return CheckHostPort(address); }

// metrics.address: the /metrics server (prometheus-cpp on civetweb, as Debian 12 packages it) is
// built without IPv6 and fails at start on an IPv6 address, so one is refused here.
absl::Status CheckMetricsAddress(const std::string& address) {
  if (address.empty()) return absl::OkStatus();
  if (absl::Status s = CheckHostPort(address); !s.ok()) return s;
  if (address.front() == '[') {
    return absl::InvalidArgumentError(absl::StrCat(
        "IPv6 addresses are not supported for /metrics (its HTTP server, civetweb, is built "
        "without IPv6), got '",
        address, "'; use an IPv4 address such as 127.0.0.1:9464"));
  }
  return absl::OkStatus();
}

std::vector<ConfigKey> BuildKeys() {
  std::vector<ConfigKey> keys;
  // model:
  keys.push_back(PathKey(
      "model.path", [](ServerConfig& c, std::string v) { c.model_path = std::move(v); },
      [](const ServerConfig& c) { return c.model_path; },
      "model file (GGUF or llama2.c checkpoint); required"));
  keys.push_back(PathKey(
      "model.tokenizer", [](ServerConfig& c, std::string v) { c.tokenizer_path = std::move(v); },
      [](const ServerConfig& c) { return c.tokenizer_path; },
      "tokenizer file for llama2.c checkpoints; empty = look beside the model"));
  keys.push_back(PathKey(
      "model.chat_template",
      [](ServerConfig& c, std::string v) { c.chat_template_path = std::move(v); },
      [](const ServerConfig& c) { return c.chat_template_path; },
      "Jinja chat template file for Chat; empty = the model's tokenizer.chat_template"));

  // server:
  keys.push_back(StringKey(
      "server.address", CheckAddress,
      [](ServerConfig& c, std::string v) { c.address = std::move(v); },
      [](const ServerConfig& c) { return c.address; }, "gRPC listen address, host:port"));
  keys.push_back(IntKey(
      "server.max_message_bytes", 1024, 2147483647,
      [](ServerConfig& c, int64_t v) { c.max_message_bytes = v; },
      [](const ServerConfig& c) { return c.max_message_bytes; },
      "largest gRPC response message sent, bytes"));
  keys.push_back(IntKey(
      "server.max_request_bytes", 0, 2147483647,
      [](ServerConfig& c, int64_t v) { c.max_request_bytes = v; },
      [](const ServerConfig& c) { return c.max_request_bytes; },
      "largest gRPC request message accepted, bytes; 0 = derived from the prompt limits"));
  keys.push_back(IntKey(
      "server.max_streams_per_connection", 1, 65536,
      [](ServerConfig& c, int64_t v) { c.max_streams_per_connection = static_cast<int32_t>(v); },
      [](const ServerConfig& c) { return c.max_streams_per_connection; },
      "concurrent calls one client connection may have open; more wait in the client"));
  keys.push_back(FloatKey(
      "server.drain_timeout_seconds", 0, 86400,
      [](ServerConfig& c, double v) { c.drain_timeout_seconds = v; },
      [](const ServerConfig& c) { return c.drain_timeout_seconds; },
      "on shutdown, seconds running requests may take to finish"));
  keys.push_back(FloatKey(
      "server.liveness_stall_seconds", 1, 86400,
      [](ServerConfig& c, double v) { c.liveness_stall_seconds = v; },
      [](const ServerConfig& c) { return c.liveness_stall_seconds; },
      "seconds without engine progress, with requests queued, before kvserve.liveness fails"));
  keys.push_back(FloatKey(
      "server.api_keys_poll_seconds", 0, 86400,
      [](ServerConfig& c, double v) { c.api_keys_poll_seconds = v; },
      [](const ServerConfig& c) { return c.api_keys_poll_seconds; },
      "seconds between checks of api_keys_file for new keys; 0 = only on SIGHUP"));
  keys.push_back(PathKey(
      "server.api_keys_file",
      [](ServerConfig& c, std::string v) { c.api_keys_file = std::move(v); },
      [](const ServerConfig& c) { return c.api_keys_file; },
      "file of API keys, one per line; empty = no authentication"));
  keys.push_back(BoolKey(
      "server.auth_on_loopback", [](ServerConfig& c, bool v) { c.auth_on_loopback = v; },
      [](const ServerConfig& c) { return c.auth_on_loopback; },
      "require an API key from loopback clients too"));
  keys.push_back(BoolKey(
      "server.allow_unauthenticated", [](ServerConfig& c, bool v) { c.allow_unauthenticated = v; },
      [](const ServerConfig& c) { return c.allow_unauthenticated; },
      "serve a non-loopback address without API keys (otherwise a configuration error)"));
  keys.push_back(FloatKey(
      "server.handshake_timeout_seconds", 0.001, 3600,
      [](ServerConfig& c, double v) { c.handshake_timeout_seconds = v; },
      [](const ServerConfig& c) { return c.handshake_timeout_seconds; },
      "a connection that has not completed its TLS and HTTP/2 handshake by then is closed"));
  keys.push_back(FloatKey(
      "server.max_connection_idle_seconds", 0, 86400 * 365,
      [](ServerConfig& c, double v) { c.max_connection_idle_seconds = v; },
      [](const ServerConfig& c) { return c.max_connection_idle_seconds; },
      "a connection with no call for this long is closed (GOAWAY); 0 = never"));
  keys.push_back(FloatKey(
      "server.keepalive_seconds", 0, 86400,
      [](ServerConfig& c, double v) { c.keepalive_seconds = v; },
      [](const ServerConfig& c) { return c.keepalive_seconds; },
      "interval of the HTTP/2 pings the server sends on each connection, seconds; 0 = never"));
  keys.push_back(FloatKey(
      "server.keepalive_timeout_seconds", 0.001, 3600,
      [](ServerConfig& c, double v) { c.keepalive_timeout_seconds = v; },
      [](const ServerConfig& c) { return c.keepalive_timeout_seconds; },
      "a connection whose client does not answer a ping within this is closed, its calls "
      "cancelled"));
  keys.push_back(PathKey(
      "server.tls.cert_file",
      [](ServerConfig& c, std::string v) { c.tls.cert_file = std::move(v); },
      [](const ServerConfig& c) { return c.tls.cert_file; },
      "PEM certificate chain; TLS is on when both files are set"));
  keys.push_back(PathKey(
      "server.tls.key_file", [](ServerConfig& c, std::string v) { c.tls.key_file = std::move(v); },
      [](const ServerConfig& c) { return c.tls.key_file; }, "PEM private key"));

  // kv_cache:
  keys.push_back(EnumKey(
      "kv_cache.format", KvFormatNames(),
      [](ServerConfig& c, const std::string& v) {
        c.engine.model.kv_format = *kernels::ParseKvFormat(v);
      },
      [](const ServerConfig& c) {
        return std::string(kernels::KvFormatName(c.engine.model.kv_format));
      },
      "storage format of KV blocks"));
  keys.push_back(StringKey(
      "kv_cache.layer_formats",
      [](const std::string& v) { return engine::ParseLayerFormats(v).status(); },
      [](ServerConfig& c, const std::string& v) {
        c.engine.model.kv_layer_formats = *engine::ParseLayerFormats(v);
      },
      [](const ServerConfig& c) {
        return engine::FormatLayerFormats(c.engine.model.kv_layer_formats);
      },
      "per-layer format overrides, LAYER:FORMAT[,LAYER:FORMAT...]; empty = none"));
  keys.push_back(IntKey(
      "kv_cache.recent_window", 0, kMaxTokens,
      [](ServerConfig& c, int64_t v) { c.engine.model.kv_recent_window = static_cast<int32_t>(v); },
      [](const ServerConfig& c) { return c.engine.model.kv_recent_window; },
      "newest tokens of a sequence kept in window_format before their block is demoted"));
  keys.push_back(IntKey(
      "kv_cache.sink_tokens", 0, kMaxTokens,
      [](ServerConfig& c, int64_t v) { c.engine.model.kv_sink_tokens = static_cast<int32_t>(v); },
      [](const ServerConfig& c) { return c.engine.model.kv_sink_tokens; },
      "first tokens of a sequence (attention sinks) kept in window_format"));
  keys.push_back(EnumKey(
      "kv_cache.window_format", KvFormatNames(),
      [](ServerConfig& c, const std::string& v) {
        c.engine.model.kv_window_format = *kernels::ParseKvFormat(v);
      },
      [](const ServerConfig& c) {
        return std::string(kernels::KvFormatName(c.engine.model.kv_window_format));
      },
      "format of the recent window and sink tokens"));
  keys.push_back(FloatKey(
      "kv_cache.budget_mb", 0, 4194304,
      [](ServerConfig& c, double v) {
        c.engine.model.kv_budget_bytes = static_cast<int64_t>(std::llround(v * kBytesPerMiB));
      },
      [](const ServerConfig& c) {
        return static_cast<double>(c.engine.model.kv_budget_bytes) / kBytesPerMiB;
      },
      "byte budget of the KV block pool, MiB (fractions allowed); 0 on a device = "
      "engine.device_memory_fraction of its free memory"));
  keys.push_back(IntKey(
      "kv_cache.block_size", 1, 1024,
      [](ServerConfig& c, int64_t v) { c.engine.model.block_size = static_cast<int>(v); },
      [](const ServerConfig& c) { return c.engine.model.block_size; }, "tokens per KV block"));
  keys.push_back(IntKey(
      "kv_cache.lowrank_rank", 0, 256,
      [](ServerConfig& c, int64_t v) { c.engine.model.kv_lowrank_rank = static_cast<int32_t>(v); },
      [](const ServerConfig& c) { return c.engine.model.kv_lowrank_rank; },
      "lowrank format: coefficients per key, in [1, head_dim]; 0 = lowrank not used"));
  keys.push_back(PathKey(
      "kv_cache.lowrank_text",
      [](ServerConfig& c, std::string v) { c.engine.model.kv_lowrank_text = std::move(v); },
      [](const ServerConfig& c) { return c.engine.model.kv_lowrank_text; },
      "lowrank format: calibration text whose keys give each layer's basis (at start-up)"));

  // prefix_cache:
  keys.push_back(BoolKey(
      "prefix_cache.enabled", [](ServerConfig& c, bool v) { c.engine.model.prefix_cache = v; },
      [](const ServerConfig& c) { return c.engine.model.prefix_cache; },
      "reuse the KV blocks of shared prompt prefixes across requests"));
  keys.push_back(EnumKey(
      "prefix_cache.hash", {"xxh3_128", "xxh64", "sha256"},
      [](ServerConfig& c, const std::string& v) { c.engine.model.prefix_hash = v; },
      [](const ServerConfig& c) { return c.engine.model.prefix_hash; },
      "hash of the block chain (hits are verified against the stored tokens)"));
  keys.push_back(EnumKey(
      "prefix_cache.eviction_policy", {"lru", "priority", "slru"},
      [](ServerConfig& c, const std::string& v) { c.engine.model.block_eviction = v; },
      [](const ServerConfig& c) { return c.engine.model.block_eviction; },
      "which reusable cached block is dropped when memory is needed"));

  // scheduler:
  keys.push_back(EnumKey(
      "scheduler.policy", {"fcfs", "priority"},
      [](ServerConfig& c, const std::string& v) {
        c.engine.policy = v == "priority" ? SchedulingPolicy::kPriority : SchedulingPolicy::kFcfs;
      },
      [](const ServerConfig& c) -> std::string {
        return c.engine.policy == SchedulingPolicy::kPriority ? "priority" : "fcfs";
      },
      "admission order of waiting requests"));
  keys.push_back(IntKey(
      "scheduler.max_running_requests", 1, 65536,
      [](ServerConfig& c, int64_t v) { c.engine.max_running_requests = static_cast<int32_t>(v); },
      [](const ServerConfig& c) { return c.engine.max_running_requests; },
      "sequences in one batch at most"));
  keys.push_back(IntKey(
      "scheduler.max_batch_tokens", 1, kMaxTokens,
      [](ServerConfig& c, int64_t v) {
        c.engine.max_batch_tokens = v;
        c.engine.model.max_batch_tokens = v;
      },
      [](const ServerConfig& c) { return c.engine.max_batch_tokens; },
      "tokens per forward step (decodes plus prefill chunks)"));
  keys.push_back(FloatKey(
      "scheduler.max_step_ms", 0, 600000,
      [](ServerConfig& c, double v) { c.engine.max_step_ms = v; },
      [](const ServerConfig& c) { return c.engine.max_step_ms; },
      "step-time target, ms: prefill chunks fill a step with decodes only up to it; 0 = "
      "step_time_ratio decides"));
  keys.push_back(FloatKey(
      "scheduler.step_time_ratio", 0, 1000,
      [](ServerConfig& c, double v) { c.engine.step_time_ratio = v; },
      [](const ServerConfig& c) { return c.engine.step_time_ratio; },
      "automatic step-time target: this many times a decode-only step of the full batch; 0 "
      "(with max_step_ms 0) = no time bound"));
  keys.push_back(IntKey(
      "scheduler.min_prefill_tokens", 1, kMaxTokens,
      [](ServerConfig& c, int64_t v) { c.engine.min_prefill_tokens = v; },
      [](const ServerConfig& c) { return c.engine.min_prefill_tokens; },
      "prefill tokens every step with decodes gets even past max_step_ms"));
  keys.push_back(IntKey(
      "scheduler.max_waiting_requests", 1, 1 << 20,
      [](ServerConfig& c, int64_t v) { c.engine.max_waiting_requests = static_cast<int32_t>(v); },
      [](const ServerConfig& c) { return c.engine.max_waiting_requests; },
      "waiting-queue bound; beyond it requests are refused (RESOURCE_EXHAUSTED)"));
  keys.push_back(IntKey(
      "scheduler.stream_buffer_tokens", 1, kMaxTokens,
      [](ServerConfig& c, int64_t v) { c.engine.stream_buffer_tokens = v; },
      [](const ServerConfig& c) { return c.engine.stream_buffer_tokens; },
      "undelivered tokens per stream before its request is paused"));

  // limits:
  keys.push_back(IntKey(
      "limits.max_prompt_tokens", 0, kMaxTokens,
      [](ServerConfig& c, int64_t v) { c.engine.max_prompt_tokens = static_cast<int32_t>(v); },
      [](const ServerConfig& c) { return c.engine.max_prompt_tokens; },
      "longest prompt accepted, tokens; 0 = the model's context - 1"));
  keys.push_back(IntKey(
      "limits.max_tokens", 0, kMaxTokens,
      [](ServerConfig& c, int64_t v) { c.engine.max_tokens_limit = static_cast<int32_t>(v); },
      [](const ServerConfig& c) { return c.engine.max_tokens_limit; },
      "largest max_tokens a request may ask for; 0 = the model's context"));
  keys.push_back(IntKey(
      "limits.default_max_tokens", 1, kMaxTokens,
      [](ServerConfig& c, int64_t v) { c.default_max_tokens = static_cast<int32_t>(v); },
      [](const ServerConfig& c) { return c.default_max_tokens; },
      "max_tokens of a request that does not set it"));
  keys.push_back(IntKey(
      "limits.max_prompt_bytes", 0, int64_t{1} << 31,
      [](ServerConfig& c, int64_t v) { c.max_prompt_bytes = v; },
      [](const ServerConfig& c) { return c.max_prompt_bytes; },
      "longest text prompt accepted before tokenizing, bytes; 0 = max_prompt_tokens x the "
      "longest token piece"));

  // engine:
  keys.push_back(IntKey(
      "engine.threads", 0, 1024,
      [](ServerConfig& c, int64_t v) { c.engine.model.num_threads = static_cast<int>(v); },
      [](const ServerConfig& c) { return c.engine.model.num_threads; },
      "compute threads of the forward pass; 0 = all online CPUs"));
  keys.push_back(EnumKey(
      "engine.device", {"cpu", "cuda"},
      [](ServerConfig& c, const std::string& v) { c.engine.model.device = v; },
      [](const ServerConfig& c) { return c.engine.model.device; },
      "where the forward pass and the KV pool run: cpu, or cuda (the first GPU; builds with "
      "CUDA)"));
  keys.push_back(FloatKey(
      "engine.device_memory_fraction", 0.01, 1,
      [](ServerConfig& c, double v) { c.engine.model.device_memory_fraction = v; },
      [](const ServerConfig& c) { return c.engine.model.device_memory_fraction; },
      "on a device with kv_cache.budget_mb 0: share of its free memory (after the weights) "
      "given to the KV pool"));

  // metrics:
  keys.push_back(StringKey(
      "metrics.address", CheckMetricsAddress,
      [](ServerConfig& c, std::string v) { c.metrics_address = std::move(v); },
      [](const ServerConfig& c) { return c.metrics_address; },
      "Prometheus /metrics listen address, IPv4 host:port; empty = off"));
  keys.push_back(IntKey(
      "metrics.min_watch_interval_ms", 10, 3600000,
      [](ServerConfig& c, int64_t v) { c.min_watch_interval_ms = v; },
      [](const ServerConfig& c) { return c.min_watch_interval_ms; },
      "smallest interval a Memory.WatchStats call may ask for, milliseconds"));

  // http:
  keys.push_back(StringKey(
      "http.address",
      [](const std::string& v) { return v.empty() ? absl::OkStatus() : CheckHostPort(v); },
      [](ServerConfig& c, std::string v) { c.http.address = std::move(v); },
      [](const ServerConfig& c) { return c.http.address; },
      "OpenAI-compatible HTTP API listen address, host:port; empty = off"));
  keys.push_back(IntKey(
      "http.threads", 1, 256,
      [](ServerConfig& c, int64_t v) { c.http.threads = static_cast<int32_t>(v); },
      [](const ServerConfig& c) { return c.http.threads; }, "HTTP I/O threads"));
  keys.push_back(IntKey(
      "http.max_body_bytes", 0, int64_t{1} << 31,
      [](ServerConfig& c, int64_t v) { c.http.max_body_bytes = v; },
      [](const ServerConfig& c) { return c.http.max_body_bytes; },
      "largest HTTP request body, bytes (413 beyond); 0 = derived from the prompt limits"));
  keys.push_back(FloatKey(
      "http.read_timeout_seconds", 0.1, 3600,
      [](ServerConfig& c, double v) { c.http.read_timeout_seconds = v; },
      [](const ServerConfig& c) { return c.http.read_timeout_seconds; },
      "seconds a request's headers and body may take to arrive"));
  keys.push_back(FloatKey(
      "http.idle_timeout_seconds", 0.1, 86400,
      [](ServerConfig& c, double v) { c.http.idle_timeout_seconds = v; },
      [](const ServerConfig& c) { return c.http.idle_timeout_seconds; },
      "seconds a keep-alive connection may wait for its next request"));
  keys.push_back(IntKey(
      "http.max_connections", 1, 1000000,
      [](ServerConfig& c, int64_t v) { c.http.max_connections = static_cast<int32_t>(v); },
      [](const ServerConfig& c) { return c.http.max_connections; },
      "open HTTP connections at most; further ones are closed at once"));

  // logging:
  keys.push_back(EnumKey(
      "logging.level", {"trace", "debug", "info", "warn", "error", "off"},
      [](ServerConfig& c, const std::string& v) { c.log_level = v; },
      [](const ServerConfig& c) { return c.log_level; }, "least severe level logged"));

  // token_eviction:
  keys.push_back(EnumKey(
      "token_eviction.policy", {"none", "sliding_window", "h2o", "attention"},
      [](ServerConfig& c, const std::string& v) { c.engine.token_eviction.policy = v; },
      [](const ServerConfig& c) { return c.engine.token_eviction.policy; },
      "default token eviction policy bounding each sequence's KV (lossy); none = off"));
  keys.push_back(IntKey(
      "token_eviction.budget_tokens", 0, kMaxTokens,
      [](ServerConfig& c, int64_t v) {
        c.engine.token_eviction.budget_tokens = static_cast<int32_t>(v);
      },
      [](const ServerConfig& c) { return c.engine.token_eviction.budget_tokens; },
      "default KV slots per sequence under token eviction; required unless the policy is none"));
  keys.push_back(IntKey(
      "token_eviction.min_budget_tokens", 1, kMaxTokens,
      [](ServerConfig& c, int64_t v) {
        c.engine.token_eviction.min_budget_tokens = static_cast<int32_t>(v);
      },
      [](const ServerConfig& c) { return c.engine.token_eviction.min_budget_tokens; },
      "smallest budget a request may ask for"));
  keys.push_back(IntKey(
      "token_eviction.max_budget_tokens", 0, kMaxTokens,
      [](ServerConfig& c, int64_t v) {
        c.engine.token_eviction.max_budget_tokens = static_cast<int32_t>(v);
      },
      [](const ServerConfig& c) { return c.engine.token_eviction.max_budget_tokens; },
      "largest budget a request may ask for; 0 = the model's context length"));
  keys.push_back(IntKey(
      "token_eviction.sink_tokens", 0, kMaxTokens,
      [](ServerConfig& c, int64_t v) {
        c.engine.token_eviction.options.sink_tokens = static_cast<int32_t>(v);
      },
      [](const ServerConfig& c) { return c.engine.token_eviction.options.sink_tokens; },
      "sliding_window, h2o: first tokens always kept (attention sinks)"));
  keys.push_back(IntKey(
      "token_eviction.recent_window", -1, kMaxTokens,
      [](ServerConfig& c, int64_t v) {
        c.engine.token_eviction.options.recent_window = static_cast<int32_t>(v);
      },
      [](const ServerConfig& c) { return c.engine.token_eviction.options.recent_window; },
      "h2o: newest tokens always kept; -1 = half the budget left after the sinks"));
  keys.push_back(IntKey(
      "token_eviction.slack_tokens", 0, kMaxTokens,
      [](ServerConfig& c, int64_t v) {
        c.engine.token_eviction.options.slack_tokens = static_cast<int32_t>(v);
      },
      [](const ServerConfig& c) { return c.engine.token_eviction.options.slack_tokens; },
      "evict down to budget - slack: one compaction every `slack` tokens instead of every token"));
  keys.push_back(EnumKey(
      "token_eviction.granularity", {"sequence", "layer", "head"},
      [](ServerConfig& c, const std::string& v) {
        c.engine.token_eviction.options.granularity = *engine::ParseTokenEvictionGranularity(v);
      },
      [](const ServerConfig& c) -> std::string {
        switch (c.engine.token_eviction.options.granularity) {
          case engine::TokenEvictionGranularity::kSequence:
            return "sequence";
          case engine::TokenEvictionGranularity::kLayer:
            return "layer";
          case engine::TokenEvictionGranularity::kHead:
            break;
        }
        return "head";
      },
      "h2o, attention: one choice of kept tokens per sequence, per layer, or per layer and KV "
      "head"));
  keys.push_back(EnumKey(
      "token_eviction.score_normalization", {"none", "age"},
      [](ServerConfig& c, const std::string& v) {
        c.engine.token_eviction.options.score_normalization =
            *engine::ParseTokenScoreNormalization(v);
      },
      [](const ServerConfig& c) -> std::string {
        return c.engine.token_eviction.options.score_normalization ==
                       engine::TokenScoreNormalization::kAge
                   ? "age"
                   : "none";
      },
      "h2o, attention: none (accumulated attention) or age (divided by the number of queries "
      "that have seen the token)"));
  return keys;
}

}  // namespace

const std::vector<ConfigKey>& ServerConfigKeys() {
  static const std::vector<ConfigKey>* const keys = new std::vector<ConfigKey>(BuildKeys());
  return *keys;
}

}  // namespace kvserve::server
