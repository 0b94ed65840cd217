// The server's configuration, read from YAML (configs/server.yaml is the default, commented key
// by key) with `--set key.path=value` overrides from the command line.
//
// Validation is strict: an unknown key, a value of the wrong type or out of range is one error
// that names the key, the file and the line ("configs/x.yaml:12: kv_cache.block_size: must be in
// [1, 1024], got 0"). Defaults below are the ones a missing key takes.
#ifndef KVSERVE_SERVER_CONFIG_SERVER_CONFIG_H_
#define KVSERVE_SERVER_CONFIG_SERVER_CONFIG_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/runtime/engine.h"

namespace kvserve::server {

struct TlsConfig {
  std::string cert_file;  // PEM; TLS is on when both files are set
  std::string key_file;
  bool enabled() const { return !cert_file.empty() && !key_file.empty(); }
};

// limits.max_tokens when the file does not set it: bounded, so that server.drain_timeout_seconds
// can cover the longest request (deploy/README.md, "Drain and the longest request").
inline constexpr int32_t kDefaultMaxTokensLimit = 2048;

// The engine options a config starts from: the engine's defaults, with limits.max_tokens bounded.
inline engine::EngineOptions DefaultEngineOptions() {
  engine::EngineOptions options;
  options.max_tokens_limit = kDefaultMaxTokensLimit;
  return options;
}

// http: the OpenAI-compatible HTTP API (server/http/http_server.h).
struct HttpConfig {
  std::string address = "127.0.0.1:8080";  // http.address ("" = off)
  int32_t threads = 2;                     // http.threads: I/O threads
  // http.max_body_bytes: largest request body read, bytes; 0 = derived from the prompt limits
  // (twice the largest gRPC request message: JSON spends more bytes per token id).
  int64_t max_body_bytes = 0;
  double read_timeout_seconds = 30;  // http.read_timeout_seconds: a request's headers and body
  double idle_timeout_seconds = 60;  // http.idle_timeout_seconds: keep-alive with no request
  int32_t max_connections = 4096;    // http.max_connections: open connections at most
};

struct ServerConfig {
  std::string source;  // the file it was read from ("" for defaults only)
  // Where each key that was set got its value: "FILE:LINE" or "--set key=value". Keys left at
  // their defaults are absent. Used to place errors found after loading (LocateConfigError).
  std::map<std::string, std::string> origins;

  // model:
  std::string model_path;          // model.path (relative paths resolve against the config file)
  std::string tokenizer_path;      // model.tokenizer
  std::string chat_template_path;  // model.chat_template ("" = the model's own template)

  // server:
  std::string address = "127.0.0.1:50051";  // server.address
  int64_t max_message_bytes = 4 << 20;      // server.max_message_bytes (responses)
  // server.max_request_bytes: largest request message gRPC accepts, bytes; 0 = derived from the
  // prompt limits (see DefaultMaxRequestBytes in server/grpc/request_validation.h).
  int64_t max_request_bytes = 0;
  int32_t max_streams_per_connection = 100;  // server.max_streams_per_connection
  double drain_timeout_seconds = 120;        // server.drain_timeout_seconds (deploy/README.md)
  double liveness_stall_seconds = 60;        // server.liveness_stall_seconds
  double api_keys_poll_seconds = 2;          // server.api_keys_poll_seconds (0 = SIGHUP only)
  std::string api_keys_file;                 // server.api_keys_file: one key per line
  bool auth_on_loopback = false;             // server.auth_on_loopback
  // server.allow_unauthenticated: serve a non-loopback address without API keys (otherwise a
  // configuration error).
  bool allow_unauthenticated = false;
  double handshake_timeout_seconds = 10;     // server.handshake_timeout_seconds
  double max_connection_idle_seconds = 300;  // server.max_connection_idle_seconds (0 = off)
  double keepalive_seconds = 60;             // server.keepalive_seconds (0 = off)
  double keepalive_timeout_seconds = 20;     // server.keepalive_timeout_seconds
  TlsConfig tls;                             // server.tls.{cert_file,key_file}

  HttpConfig http;
  // limits:
  int32_t default_max_tokens = 256;  // limits.default_max_tokens
  // limits.max_prompt_bytes: longest text prompt (Generate, Complete, Tokenize) accepted before
  // tokenizing, bytes; 0 = derived from the model (max_prompt_tokens x the longest piece).
  int64_t max_prompt_bytes = 0;

  // metrics:
  std::string metrics_address = "127.0.0.1:9464";  // metrics.address ("" = off)
  int64_t min_watch_interval_ms = 100;  // metrics.min_watch_interval_ms (Memory.WatchStats)

  // logging:
  std::string log_level = "info";  // logging.level: trace|debug|info|warn|error|off

  // kv_cache:, scheduler:, limits:, engine: map onto the engine options.
  engine::EngineOptions engine = DefaultEngineOptions();
};

// Reads and validates a config file, then applies overrides ("kv_cache.format=int8").
//
// `path` "" starts from the defaults alone. Relative paths in the file resolve against the file's
// directory; relative paths in overrides stay relative to the working directory. An override's
// value is read as a YAML scalar with the same checks as in the file (for string and path keys a
// value that is not a YAML scalar, such as "[::1]:50051", is taken as written). Files named by
// the config (model, tokenizer, API keys, TLS) must exist. Every error is InvalidArgument naming
// the key and the place ("x.yaml:7: unknown key 'kv_cache.fromat'", "--set kv_cache.block_size=0:
// must be in [1, 1024], got 0"), except a config file that cannot be read (NotFound).
// Never throws.
absl::StatusOr<ServerConfig> LoadServerConfig(const std::string& path,
                                              const std::vector<std::string>& overrides = {});

// An error found once the model is loaded (engine::Engine::Create: KV formats against the model's
// layers, the lowrank calibration, ...) placed like a config error when its message starts with a
// config key ("kv_cache.layer_formats: layer 7 does not exist ..."): prefixed with the place of
// the first key the message names that the file or a --set override set ("x.yaml:9: "), else
// with the file. nullopt when the message does not start with a key (a model file that cannot be
// read, for example), which is not a config error.
std::optional<std::string> LocateConfigError(const ServerConfig& config, const absl::Status& error);

// The effective configuration as YAML, every key with its value (loadable by LoadServerConfig).
std::string FormatServerConfig(const ServerConfig& config);

}  // namespace kvserve::server

#endif  // KVSERVE_SERVER_CONFIG_SERVER_CONFIG_H_
