#include "server/config/server_config.h"

#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "server/config/config_schema.h"
#include "server/grpc/auth.h"

namespace kvserve::server {
namespace {

// Where a key got its value: a line of the config file or a `--set` override.
struct Origin {
  std::string file;  // the config file ("" when there is none)
  int line = 0;      // 1-based; 0 = the file as a whole
  std::string flag;  // "--set key=value" when the value came from the command line
};

std::string Where(const Origin& origin) {
  if (!origin.flag.empty()) return origin.flag;
  if (origin.file.empty()) return "config";
  if (origin.line <= 0) return origin.file;
  return absl::StrCat(origin.file, ":", origin.line);
}

int LineOf(const YAML::Mark& mark) { return mark.is_null() ? 0 : mark.line + 1; }

std::string Join(const std::string& prefix, const std::string& key) {
  return prefix.empty() ? key : absl::StrCat(prefix, ".", key);
}

std::string DescribeNode(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Map:
      return "a map";
    case YAML::NodeType::Sequence:
      return "a list";
    case YAML::NodeType::Null:
      return "nothing";
    case YAML::NodeType::Scalar:
      return absl::StrCat("'", node.Scalar(), "'");
    case YAML::NodeType::Undefined:
      break;
  }
  return "an undefined value";
}

ConfigScalar ScalarOf(const YAML::Node& node) {
  ConfigScalar scalar;
  scalar.is_null = node.IsNull();
  if (node.IsScalar()) {
    scalar.text = node.Scalar();
    scalar.quoted = node.Tag() == "!" || node.Tag() == "tag:yaml.org,2002:str";
  }
  return scalar;
}

std::string UnknownKeyMessage(const std::string& path) {
  std::string message = absl::StrCat("unknown key '", path, "'");
  const std::string suggestion = SuggestConfigKey(path);
  if (!suggestion.empty()) absl::StrAppend(&message, " (did you mean '", suggestion, "'?)");
  return message;
}

// Where each YAML document of a text starts, read with the event parser and at most two
// documents deep. YAML::LoadAll is not used: yaml-cpp 0.7 never returns from it on a stray flow
// entry such as a file holding only "," (its parser then yields the same empty document forever
// without consuming the token). A document that starts where the previous one did is that case.
struct YamlDocumentScan {
  int documents = 0;   // 0, 1, or 2 meaning "more than one"
  YAML::Mark second;   // where the second document starts (or where the parser got stuck)
  bool stuck = false;  // the parser made no progress: malformed input at `second`
};

class DocumentStartRecorder : public YAML::EventHandler {
 public:
  void OnDocumentStart(const YAML::Mark& mark) override {
    start = mark;
    seen_node_ = false;
  }
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark& mark, YAML::anchor_t) override { Node(mark); }
  void OnAlias(const YAML::Mark& mark, YAML::anchor_t) override { Node(mark); }
  void OnScalar(const YAML::Mark& mark, const std::string&, YAML::anchor_t,
                const std::string&) override {
    Node(mark);
  }
  void OnSequenceStart(const YAML::Mark& mark, const std::string&, YAML::anchor_t,
                       YAML::EmitterStyle::value) override {
    Node(mark);
  }
  void OnSequenceEnd() override {}
  void OnMapStart(const YAML::Mark& mark, const std::string&, YAML::anchor_t,
                  YAML::EmitterStyle::value) override {
    Node(mark);
  }
  void OnMapEnd() override {}
  YAML::Mark start;  // the document's first node (its start marker when it has none)

 private:
  void Node(const YAML::Mark& mark) {
    if (!seen_node_) start = mark;
    seen_node_ = true;
  }
  bool seen_node_ = false;
};

// Throws YAML::Exception on malformed input, as YAML::Load does.
YamlDocumentScan ScanYamlDocuments(const std::string& text) {
  std::istringstream in(text);
  YAML::Parser parser(in);
  DocumentStartRecorder recorder;
  YamlDocumentScan scan;
  YAML::Mark previous;
  // Three documents at most: enough to tell "more than one" and to see a parser that repeats
  // itself after a first document that did parse (as in `"x",`).
  for (int n = 0; n < 3 && parser.HandleNextDocument(recorder); ++n) {
    if (n > 0 && recorder.start.pos == previous.pos) {
      scan.stuck = true;
      scan.second = recorder.start;
      return scan;
    }
    if (n == 1) scan.second = recorder.start;
    scan.documents = std::min(n + 1, 2);
    previous = recorder.start;
  }
  return scan;
}

std::string MalformedAt(const std::string& where, const std::string& text, const YAML::Mark& m) {
  std::string found = "end of input";
  if (m.pos >= 0 && static_cast<size_t>(m.pos) < text.size()) {
    found = absl::StrCat("'", text.substr(static_cast<size_t>(m.pos), 1), "'");
  }
  return absl::StrCat(where, ":", m.line + 1, ":", m.column + 1, ": malformed YAML: unexpected ",
                      found,
                      " (a ',' belongs inside a [...] or {...} collection; quote a value "
                      "that contains one at its start)");
}

class ConfigLoader {
 public:
  explicit ConfigLoader(std::string file) : file_(std::move(file)) { config_.source = file_; }

  absl::Status ReadFile();
  absl::Status ApplyOverride(const std::string& text);
  absl::Status Validate();
  ServerConfig TakeConfig() {
    for (const auto& [key, origin] : origins_) config_.origins[key] = Where(origin);
    return std::move(config_);
  }

 private:
  absl::Status FileError(const YAML::Mark& mark, const std::string& message) const {
    return absl::InvalidArgumentError(
        absl::StrCat(Where(Origin{file_, LineOf(mark), ""}), ": ", message));
  }
  // An error about `key` at the place its value came from (the file alone when it has none).
  absl::Status KeyError(const std::string& key, const std::string& message) const;
  absl::Status WalkMap(const YAML::Node& map, const std::string& prefix);
  absl::Status CheckFileExists(const std::string& key, const std::string& value) const;

  std::string file_;
  ConfigContext file_context_;
  ServerConfig config_;
  std::map<std::string, Origin> origins_;     // key -> where its value was set last
  std::map<std::string, int> section_lines_;  // section -> line of its first mention
};

absl::Status ConfigLoader::KeyError(const std::string& key, const std::string& message) const {
  const auto it = origins_.find(key);
  const Origin origin = it != origins_.end() ? it->second : Origin{file_, 0, ""};
  // An override names the key already ("--set key=value: ...").
  if (!origin.flag.empty()) return absl::InvalidArgumentError(Where(origin) + ": " + message);
  return absl::InvalidArgumentError(absl::StrCat(Where(origin), ": ", key, ": ", message));
}

absl::Status ConfigLoader::ReadFile() {
  std::error_code ec;
  if (std::filesystem::is_directory(file_, ec)) {
    return absl::InvalidArgumentError(absl::StrCat(file_, ": is a directory, not a config file"));
  }
  std::ifstream in(file_, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(
        absl::StrCat(file_, ": cannot read config file: ", std::strerror(errno)));
  }
  std::stringstream text;
  text << in.rdbuf();
  file_context_.base_dir = std::filesystem::path(file_).parent_path().string();

  try {
    const std::string content = text.str();
    const YamlDocumentScan scan = ScanYamlDocuments(content);
    if (scan.stuck) return absl::InvalidArgumentError(MalformedAt(file_, content, scan.second));
    if (scan.documents == 0) return absl::OkStatus();  // empty, or comments only
    if (scan.documents > 1) {
      return FileError(scan.second, "expected one YAML document, found more than one");
    }
    const YAML::Node root = YAML::Load(content);
    if (root.IsNull()) return absl::OkStatus();
    if (!root.IsMap()) {
      return FileError(
          root.Mark(),
          absl::StrCat("expected a map of sections at the top level, got ", DescribeNode(root)));
    }
    return WalkMap(root, "");
  } catch (const YAML::Exception& e) {
    std::string where = file_;
    if (!e.mark.is_null()) absl::StrAppend(&where, ":", e.mark.line + 1, ":", e.mark.column + 1);
    return absl::InvalidArgumentError(absl::StrCat(where, ": malformed YAML: ", e.msg));
  }
}

absl::Status ConfigLoader::WalkMap(const YAML::Node& map, const std::string& prefix) {
  std::map<std::string, int> seen;  // key text -> line, within this map
  for (auto it = map.begin(); it != map.end(); ++it) {
    const YAML::Node key_node = it->first;  // copies: the iterator yields a temporary pair
    const YAML::Node value = it->second;
    if (!key_node.IsScalar()) {
      return FileError(key_node.Mark(),
                       absl::StrCat("keys must be plain names, got ", DescribeNode(key_node),
                                    prefix.empty() ? "" : " under '" + prefix + "'"));
    }
    const std::string path = Join(prefix, key_node.Scalar());
    const int line = LineOf(key_node.Mark());
    if (const auto [first, inserted] = seen.emplace(key_node.Scalar(), line); !inserted) {
      return FileError(key_node.Mark(), absl::StrCat("duplicate key '", path, "' (first at line ",
                                                     first->second, ")"));
    }

    if (const ConfigKey* key = FindConfigKey(path)) {
      if (const auto previous = origins_.find(path); previous != origins_.end()) {
        return FileError(key_node.Mark(), absl::StrCat("duplicate key '", path, "' (first at line ",
                                                       previous->second.line, ")"));
      }
      // A null value has no useful mark of its own (it points past the key's line).
      const YAML::Mark value_mark = value.IsNull() ? key_node.Mark() : value.Mark();
      if (!value.IsScalar() && !value.IsNull()) {
        return FileError(value_mark, absl::StrCat(path, ": expected a single value (",
                                                  key->accepted, "), got ", DescribeNode(value)));
      }
      absl::Status status = key->set(ScalarOf(value), file_context_, config_);
      if (!status.ok()) return FileError(value_mark, absl::StrCat(path, ": ", status.message()));
      origins_[path] = Origin{file_, LineOf(value_mark), ""};
      continue;
    }
    if (IsConfigSection(path)) {
      section_lines_.emplace(path, line);
      if (value.IsNull()) continue;  // a section whose keys are all commented out
      if (!value.IsMap()) {
        return FileError(value.Mark(),
                         absl::StrCat(path, ": expected a map of keys, got ", DescribeNode(value)));
      }
      absl::Status status = WalkMap(value, path);
      if (!status.ok()) return status;
      continue;
    }
    return FileError(key_node.Mark(), UnknownKeyMessage(path));
  }
  return absl::OkStatus();
}

absl::Status ConfigLoader::ApplyOverride(const std::string& text) {
  const std::string where = absl::StrCat("--set ", text);
  const size_t equals = text.find('=');
  if (equals == std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": expected key.path=value"));
  }
  const std::string path(absl::StripAsciiWhitespace(text.substr(0, equals)));
  const std::string raw = text.substr(equals + 1);
  if (path.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": expected key.path=value"));
  }
  const ConfigKey* key = FindConfigKey(path);
  if (key == nullptr) {
    if (IsConfigSection(path)) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, ": '", path, "' is a section; set one of its keys (", path, ".<key>=value)"));
    }
    return absl::InvalidArgumentError(absl::StrCat(where, ": ", UnknownKeyMessage(path)));
  }

  const bool takes_text =
      key->type == ConfigValueType::kString || key->type == ConfigValueType::kPath;
  ConfigScalar scalar;
  try {
    const YamlDocumentScan scan = ScanYamlDocuments(raw);
    if (scan.stuck || scan.documents > 1) {
      if (!takes_text) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, ": expected a single YAML value, got '", raw, "'"));
      }
      scalar = ConfigScalar{raw, false, true};  // not one YAML value: taken as written
    } else {
      const YAML::Node node = YAML::Load(raw);
      if (node.IsScalar() || node.IsNull()) {
        scalar = ScalarOf(node);
      } else if (takes_text) {
        scalar.text = raw;
      } else {
        return absl::InvalidArgumentError(absl::StrCat(
            where, ": expected a single value (", key->accepted, "), got ", DescribeNode(node)));
      }
    }
  } catch (const YAML::Exception& e) {
    if (!takes_text) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": malformed value: ", e.msg));
    }
    scalar = ConfigScalar{raw, false, true};
  }
  absl::Status status = key->set(scalar, ConfigContext{}, config_);
  if (!status.ok()) return absl::InvalidArgumentError(absl::StrCat(where, ": ", status.message()));
  origins_[path] = Origin{"", 0, where};
  return absl::OkStatus();
}

absl::Status ConfigLoader::CheckFileExists(const std::string& key, const std::string& value) const {
  if (value.empty()) return absl::OkStatus();
  std::error_code ec;
  const std::filesystem::file_status status = std::filesystem::status(value, ec);
  if (!std::filesystem::exists(status)) return KeyError(key, "no such file: " + value);
  if (std::filesystem::is_directory(status)) {
    return KeyError(key, "is a directory, not a file: " + value);
  }
  return absl::OkStatus();
}

absl::Status ConfigLoader::Validate() {
  ServerConfig& c = config_;
  if (c.model_path.empty()) {
    if (origins_.count("model.path") > 0) return KeyError("model.path", "must not be empty");
    std::string message = "model.path is required";
    if (file_.empty()) {
      return absl::InvalidArgumentError(message + " (set it with --set model.path=FILE)");
    }
    const auto section = section_lines_.find("model");
    const int line = section == section_lines_.end() ? 0 : section->second;
    if (line > 0) absl::StrAppend(&message, " (the 'model' section has no 'path')");
    return absl::InvalidArgumentError(absl::StrCat(Where(Origin{file_, line, ""}), ": ", message));
  }

  const bool has_cert = !c.tls.cert_file.empty();
  const bool has_key = !c.tls.key_file.empty();
  if (has_cert != has_key) {
    const std::string set = has_cert ? "server.tls.cert_file" : "server.tls.key_file";
    const std::string unset = has_cert ? "server.tls.key_file" : "server.tls.cert_file";
    return KeyError(set, absl::StrCat("is set but ", unset, " is not; set both or neither"));
  }

  for (const auto& [key, value] : std::vector<std::pair<std::string, std::string>>{
           {"model.path", c.model_path},
           {"model.tokenizer", c.tokenizer_path},
           {"model.chat_template", c.chat_template_path},
           {"server.api_keys_file", c.api_keys_file},
           {"server.tls.cert_file", c.tls.cert_file},
           {"server.tls.key_file", c.tls.key_file}}) {
    absl::Status status = CheckFileExists(key, value);
    if (!status.ok()) return status;
  }

  if (c.auth_on_loopback && c.api_keys_file.empty()) {
    return KeyError("server.auth_on_loopback",
                    "is true but server.api_keys_file is not set (no keys to check)");
  }
  if (c.max_request_bytes != 0 && c.max_request_bytes < 1024) {
    return KeyError("server.max_request_bytes",
                    absl::StrCat("must be 0 (derived from the prompt limits) or in [1024, "
                                 "2147483647], got ",
                                 c.max_request_bytes));
  }
  // A non-loopback listener without keys would serve anyone who can reach it.
  if (!IsLoopbackAddress(c.address) && c.api_keys_file.empty() && !c.allow_unauthenticated) {
    return KeyError("server.address",
                    absl::StrCat(c.address,
                                 " is not a loopback address and server.api_keys_file is not set: "
                                 "anyone who can reach it could call every method. Set "
                                 "server.api_keys_file, listen on a loopback address, or set "
                                 "server.allow_unauthenticated: true"));
  }
  // Port 0 picks a free port for each, so two ":0" addresses never collide.
  if (!c.metrics_address.empty() && c.metrics_address == c.address &&
      !absl::EndsWith(c.address, ":0")) {
    return KeyError("metrics.address",
                    absl::StrCat("must differ from server.address (both are ", c.address, ")"));
  }
  if (!c.http.address.empty() && !absl::EndsWith(c.http.address, ":0") &&
      (c.http.address == c.address || c.http.address == c.metrics_address)) {
    return KeyError("http.address",
                    absl::StrCat("must differ from ",
                                 c.http.address == c.address ? "server.address" : "metrics.address",
                                 " (both are ", c.http.address, ")"));
  }
  // The HTTP API takes the same keys as gRPC, by the same rule (server/grpc/auth.h).
  if (!c.http.address.empty() && !IsLoopbackAddress(c.http.address) && c.api_keys_file.empty() &&
      !c.allow_unauthenticated) {
    return KeyError("http.address",
                    absl::StrCat(c.http.address,
                                 " is not a loopback address and server.api_keys_file is not set: "
                                 "anyone who can reach it could call every endpoint. Set "
                                 "server.api_keys_file, listen on a loopback address, or set "
                                 "server.allow_unauthenticated: true"));
  }
  const int32_t limit = c.engine.max_tokens_limit;
  if (limit > 0 && c.default_max_tokens > limit) {
    // Blame the default when it was set explicitly, the limit otherwise.
    const std::string key = origins_.count("limits.default_max_tokens") > 0
                                ? "limits.default_max_tokens"
                                : "limits.max_tokens";
    return KeyError(key, absl::StrCat("limits.default_max_tokens (", c.default_max_tokens,
                                      ") must not exceed limits.max_tokens (", limit, ")"));
  }

  const engine::LocalModelOptions& m = c.engine.model;
  if (m.kv_budget_bytes == 0 && m.device == "cpu") {
    return KeyError("kv_cache.budget_mb",
                    "0 (a share of free device memory) needs engine.device: cuda; on the cpu "
                    "set a budget in MiB");
  }
  if (m.device != "cpu") {
    // What the device does not run yet, refused before the model loads (LocalModel::Open checks
    // the formats again against the backend).
    const std::string why =
        absl::StrCat("engine.device ", m.device, " does not store lowrank keys (CPU only)");
    if (m.kv_format == kernels::KvFormat::kLowrank) return KeyError("kv_cache.format", why);
    for (const auto& [layer, format] : m.kv_layer_formats) {
      if (format == kernels::KvFormat::kLowrank) {
        return KeyError("kv_cache.layer_formats", absl::StrCat("layer ", layer, ": ", why));
      }
    }
    if (c.engine.token_eviction.policy != "none") {
      return KeyError("token_eviction.policy",
                      absl::StrCat(c.engine.token_eviction.policy,
                                   ": token eviction compacts KV on the host; engine.device ",
                                   m.device, " does not run it yet (use none)"));
    }
  }

  const engine::TokenEvictionConfig& te = c.engine.token_eviction;
  if (te.policy != "none" && te.budget_tokens == 0) {
    return KeyError("token_eviction.budget_tokens",
                    absl::StrCat("must be set (> 0) when token_eviction.policy is ", te.policy));
  }
  if (te.max_budget_tokens > 0 && te.min_budget_tokens > te.max_budget_tokens) {
    return KeyError("token_eviction.min_budget_tokens",
                    absl::StrCat("(", te.min_budget_tokens,
                                 ") must not exceed token_eviction.max_budget_tokens (",
                                 te.max_budget_tokens, ")"));
  }
  if (te.budget_tokens > 0 &&
      (te.budget_tokens < te.min_budget_tokens ||
       (te.max_budget_tokens > 0 && te.budget_tokens > te.max_budget_tokens))) {
    return KeyError(
        "token_eviction.budget_tokens",
        absl::StrCat("(", te.budget_tokens, ") must lie within token_eviction.min_budget_tokens (",
                     te.min_budget_tokens, ") and token_eviction.max_budget_tokens (",
                     te.max_budget_tokens, ", 0 = no limit)"));
  }
  if (te.policy != "none" &&
      te.budget_tokens <= te.options.sink_tokens + te.options.slack_tokens + 1) {
    return KeyError("token_eviction.budget_tokens",
                    absl::StrCat("(", te.budget_tokens,
                                 ") must exceed token_eviction.sink_tokens + "
                                 "token_eviction.slack_tokens + 1 (",
                                 te.options.sink_tokens + te.options.slack_tokens + 1, ")"));
  }

  // The engine reads these from its own options.
  c.engine.model.model_path = c.model_path;
  c.engine.model.tokenizer_path = c.tokenizer_path;
  c.engine.model.max_batch_tokens = c.engine.max_batch_tokens;
  return absl::OkStatus();
}

absl::StatusOr<ServerConfig> Load(const std::string& path,
                                  const std::vector<std::string>& overrides) {
  ConfigLoader loader(path);
  if (!path.empty()) {
    absl::Status status = loader.ReadFile();
    if (!status.ok()) return status;
  }
  for (const std::string& override_text : overrides) {
    absl::Status status = loader.ApplyOverride(override_text);
    if (!status.ok()) return status;
  }
  absl::Status status = loader.Validate();
  if (!status.ok()) return status;
  return loader.TakeConfig();
}

}  // namespace

absl::StatusOr<ServerConfig> LoadServerConfig(const std::string& path,
                                              const std::vector<std::string>& overrides) {
  const std::string where = path.empty() ? std::string("config") : path;
  try {
    return Load(path, overrides);
  } catch (const YAML::Exception& e) {
    std::string at = where;
    if (!e.mark.is_null()) absl::StrAppend(&at, ":", e.mark.line + 1, ":", e.mark.column + 1);
    return absl::InvalidArgumentError(absl::StrCat(at, ": ", e.msg));
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": ", e.what()));
  }
}

std::optional<std::string> LocateConfigError(const ServerConfig& config,
                                             const absl::Status& error) {
  const std::string message(error.message());
  // The keys the message names, in the order they appear (a key is followed by ':', ' ', ',',
  // ')' or the end, so that "kv_cache.format" does not match inside a longer key).
  std::vector<std::pair<size_t, std::string>> named;
  for (const ConfigKey& key : ServerConfigKeys()) {
    for (size_t at = message.find(key.path); at != std::string::npos;
         at = message.find(key.path, at + 1)) {
      const size_t end = at + key.path.size();
      if (end == message.size() || std::strchr(": ,)", message[end]) != nullptr) {
        named.emplace_back(at, key.path);
        break;
      }
    }
  }
  std::sort(named.begin(), named.end());
  if (named.empty() || named.front().first != 0) return std::nullopt;
  for (const auto& [at, key] : named) {
    if (const auto it = config.origins.find(key); it != config.origins.end()) {
      return absl::StrCat(it->second, ": ", message);
    }
  }
  return absl::StrCat(config.source.empty() ? std::string("config") : config.source, ": ", message);
}

std::string FormatServerConfig(const ServerConfig& config) {
  std::string out;
  std::vector<std::string> open;  // sections of the previous key
  for (const ConfigKey& key : ServerConfigKeys()) {
    const std::vector<std::string> parts = absl::StrSplit(key.path, '.');
    size_t common = 0;
    while (common < open.size() && common + 1 < parts.size() && open[common] == parts[common]) {
      ++common;
    }
    for (size_t depth = common; depth + 1 < parts.size(); ++depth) {
      absl::StrAppend(&out, std::string(2 * depth, ' '), parts[depth], ":\n");
    }
    absl::StrAppend(&out, std::string(2 * (parts.size() - 1), ' '), parts.back(), ": ",
                    key.get(config), "\n");
    open.assign(parts.begin(), parts.end() - 1);
  }
  return out;
}

}  // namespace kvserve::server
