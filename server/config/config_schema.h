// The table of configuration keys: one row per leaf key of the YAML file ("kv_cache.block_size"),
// each with its type, accepted range or names, a getter and a setter. The YAML walk and the
// `--set key.path=value` overrides both go through this table, so a new key is one new row in
// config_keys.cc (IntKey, FloatKey, BoolKey, StringKey, EnumKey, PathKey below build the rows).
//
// Sections ("kv_cache", "server.tls") are not rows: they are the dotted prefixes of the rows.
//
// Thread-safety: the table is built once, on first use, and immutable afterwards.
#ifndef KVSERVE_SERVER_CONFIG_CONFIG_SCHEMA_H_
#define KVSERVE_SERVER_CONFIG_CONFIG_SCHEMA_H_

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "server/config/server_config.h"

namespace kvserve::server {

enum class ConfigValueType { kInt, kFloat, kBool, kString, kEnum, kPath };

// One scalar as written in the file or after `--set key=`.
struct ConfigScalar {
  std::string text;
  bool is_null = false;  // `key:` with nothing, `~` or `null`
  bool quoted = false;   // "..." or '...' (or !!str): a string, never a number or a boolean
};

// What a setter needs besides the value.
struct ConfigContext {
  // Directory that relative paths resolve against; "" keeps them as written (relative to the
  // working directory). For a config file this is the file's directory; for overrides, "".
  std::string base_dir;
};

struct ConfigKey {
  std::string path;  // "kv_cache.block_size"
  ConfigValueType type;
  std::string accepted;  // what is accepted, for messages and docs: "[1, 1024]", "fcfs|priority"
  std::string help;      // one line: what it does and its unit
  // Checks `value` and stores it in `config`. Errors are InvalidArgument with a message that names
  // neither the key nor the place ("must be in [1, 1024], got 0"); the caller adds both.
  std::function<absl::Status(const ConfigScalar& value, const ConfigContext& context,
                             ServerConfig& config)>
      set;
  // The current value as a YAML scalar (strings quoted), for printing the effective config.
  std::function<std::string(const ServerConfig& config)> get;
};

// Row builders. Numeric ranges are inclusive.
ConfigKey IntKey(std::string path, int64_t min, int64_t max,
                 std::function<void(ServerConfig&, int64_t)> set,
                 std::function<int64_t(const ServerConfig&)> get, std::string help);
ConfigKey FloatKey(std::string path, double min, double max,
                   std::function<void(ServerConfig&, double)> set,
                   std::function<double(const ServerConfig&)> get, std::string help);
ConfigKey BoolKey(std::string path, std::function<void(ServerConfig&, bool)> set,
                  std::function<bool(const ServerConfig&)> get, std::string help);
// `check` (optional) validates the text: an error message without key or place, or OK.
// A null value stores "".
ConfigKey StringKey(std::string path, std::function<absl::Status(const std::string&)> check,
                    std::function<void(ServerConfig&, std::string)> set,
                    std::function<std::string(const ServerConfig&)> get, std::string help);
// The value must be one of `names` (exact match); the setter receives it.
ConfigKey EnumKey(std::string path, std::vector<std::string> names,
                  std::function<void(ServerConfig&, const std::string&)> set,
                  std::function<std::string(const ServerConfig&)> get, std::string help);
// A file path. A relative one is resolved against ConfigContext::base_dir; a null value or ""
// stores "" (unset). Whether the file exists is checked after all keys are read.
ConfigKey PathKey(std::string path, std::function<void(ServerConfig&, std::string)> set,
                  std::function<std::string(const ServerConfig&)> get, std::string help);

// Every key, in file order. Defined in config_keys.cc.
const std::vector<ConfigKey>& ServerConfigKeys();

// The row for a full key path, or nullptr.
const ConfigKey* FindConfigKey(std::string_view path);
// True when `path` is a section: a proper dotted prefix of some key ("kv_cache", "server.tls").
bool IsConfigSection(std::string_view path);
// The known key or section closest to an unknown `path` (a likely typo), or "" when none is
// close.
std::string SuggestConfigKey(std::string_view path);

// Checks "host:port" or "[ipv6]:port": a non-empty host and a port in [1, 65535].
absl::Status CheckHostPort(const std::string& address);
// The accepted KV format names, as kernels::ParseKvFormat accepts them.
std::vector<std::string> KvFormatNames();

// Scalar formatting shared by the getters and messages.
std::string FormatDouble(double value);                 // shortest text that reads back exactly
std::string QuoteYamlString(const std::string& value);  // a double-quoted YAML scalar

}  // namespace kvserve::server

#endif  // KVSERVE_SERVER_CONFIG_CONFIG_SCHEMA_H_
