#include "server/config/config_schema.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <filesystem>
#include <optional>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "kernels/kv_format.h"

namespace kvserve::server {
namespace {

// "'abc'" for a plain scalar, "the string \"16\"" for a quoted one, "nothing" for null.
std::string Describe(const ConfigScalar& value) {
  if (value.is_null) return "nothing";
  if (value.quoted) return absl::StrCat("the string ", QuoteYamlString(value.text));
  return absl::StrCat("'", value.text, "'");
}

absl::StatusOr<int64_t> ParseInt(const ConfigScalar& value) {
  int64_t out = 0;
  if (value.is_null || value.quoted || !absl::SimpleAtoi(value.text, &out)) {
    return absl::InvalidArgumentError(absl::StrCat("expected an integer, got ", Describe(value)));
  }
  return out;
}

absl::StatusOr<double> ParseFloat(const ConfigScalar& value) {
  double out = 0;
  if (value.is_null || value.quoted || !absl::SimpleAtod(value.text, &out) || !std::isfinite(out)) {
    return absl::InvalidArgumentError(absl::StrCat("expected a number, got ", Describe(value)));
  }
  return out;
}

absl::StatusOr<bool> ParseBool(const ConfigScalar& value) {
  if (!value.is_null && !value.quoted) {
    const std::string& t = value.text;
    if (t == "true" || t == "True" || t == "TRUE") return true;
    if (t == "false" || t == "False" || t == "FALSE") return false;
  }
  return absl::InvalidArgumentError(absl::StrCat("expected true or false, got ", Describe(value)));
}

std::string Range(const std::string& min, const std::string& max) {
  return absl::StrCat("[", min, ", ", max, "]");
}

// Edit distance between two short strings.
size_t EditDistance(std::string_view a, std::string_view b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] != b[j - 1] ? 1 : 0)});
      diagonal = above;
    }
  }
  return row[b.size()];
}

}  // namespace

ConfigKey IntKey(std::string path, int64_t min, int64_t max,
                 std::function<void(ServerConfig&, int64_t)> set,
                 std::function<int64_t(const ServerConfig&)> get, std::string help) {
  std::string accepted = Range(absl::StrCat(min), absl::StrCat(max));
  auto setter = [min, max, accepted, set = std::move(set)](const ConfigScalar& value,
                                                           const ConfigContext&,
                                                           ServerConfig& config) -> absl::Status {
    absl::StatusOr<int64_t> v = ParseInt(value);
    if (!v.ok()) return v.status();
    if (*v < min || *v > max) {
      return absl::InvalidArgumentError(absl::StrCat("must be in ", accepted, ", got ", *v));
    }
    set(config, *v);
    return absl::OkStatus();
  };
  auto getter = [get = std::move(get)](const ServerConfig& c) { return absl::StrCat(get(c)); };
  return ConfigKey{std::move(path), ConfigValueType::kInt, std::move(accepted),
                   std::move(help), std::move(setter),     std::move(getter)};
}

ConfigKey FloatKey(std::string path, double min, double max,
                   std::function<void(ServerConfig&, double)> set,
                   std::function<double(const ServerConfig&)> get, std::string help) {
  std::string accepted = Range(FormatDouble(min), FormatDouble(max));
  auto setter = [min, max, accepted, set = std::move(set)](const ConfigScalar& value,
                                                           const ConfigContext&,
                                                           ServerConfig& config) -> absl::Status {
    absl::StatusOr<double> v = ParseFloat(value);
    if (!v.ok()) return v.status();
    if (*v < min || *v > max) {
      return absl::InvalidArgumentError(
          absl::StrCat("must be in ", accepted, ", got ", value.text));
    }
    set(config, *v);
    return absl::OkStatus();
  };
  auto getter = [get = std::move(get)](const ServerConfig& c) { return FormatDouble(get(c)); };
  return ConfigKey{std::move(path), ConfigValueType::kFloat, std::move(accepted),
                   std::move(help), std::move(setter),       std::move(getter)};
}

ConfigKey BoolKey(std::string path, std::function<void(ServerConfig&, bool)> set,
                  std::function<bool(const ServerConfig&)> get, std::string help) {
  auto setter = [set = std::move(set)](const ConfigScalar& value, const ConfigContext&,
                                       ServerConfig& config) -> absl::Status {
    absl::StatusOr<bool> v = ParseBool(value);
    if (!v.ok()) return v.status();
    set(config, *v);
    return absl::OkStatus();
  };
  auto getter = [get = std::move(get)](const ServerConfig& c) -> std::string {
    return get(c) ? "true" : "false";
  };
  return ConfigKey{std::move(path), ConfigValueType::kBool, "true|false",
                   std::move(help), std::move(setter),      std::move(getter)};
}

ConfigKey StringKey(std::string path, std::function<absl::Status(const std::string&)> check,
                    std::function<void(ServerConfig&, std::string)> set,
                    std::function<std::string(const ServerConfig&)> get, std::string help) {
  auto setter = [check = std::move(check), set = std::move(set)](
                    const ConfigScalar& value, const ConfigContext&,
                    ServerConfig& config) -> absl::Status {
    std::string text = value.is_null ? std::string() : value.text;
    if (check) {
      absl::Status status = check(text);
      if (!status.ok()) return status;
    }
    set(config, std::move(text));
    return absl::OkStatus();
  };
  auto getter = [get = std::move(get)](const ServerConfig& c) { return QuoteYamlString(get(c)); };
  return ConfigKey{std::move(path), ConfigValueType::kString, "a string",
                   std::move(help), std::move(setter),        std::move(getter)};
}

ConfigKey EnumKey(std::string path, std::vector<std::string> names,
                  std::function<void(ServerConfig&, const std::string&)> set,
                  std::function<std::string(const ServerConfig&)> get, std::string help) {
  std::string accepted = absl::StrJoin(names, "|");
  auto setter = [names = std::move(names), set = std::move(set)](
                    const ConfigScalar& value, const ConfigContext&,
                    ServerConfig& config) -> absl::Status {
    if (value.is_null || std::find(names.begin(), names.end(), value.text) == names.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("must be one of ", absl::StrJoin(names, ", "), "; got ", Describe(value)));
    }
    set(config, value.text);
    return absl::OkStatus();
  };
  auto getter = [get = std::move(get)](const ServerConfig& c) { return get(c); };
  return ConfigKey{std::move(path), ConfigValueType::kEnum, std::move(accepted),
                   std::move(help), std::move(setter),      std::move(getter)};
}

ConfigKey PathKey(std::string path, std::function<void(ServerConfig&, std::string)> set,
                  std::function<std::string(const ServerConfig&)> get, std::string help) {
  auto setter = [set = std::move(set)](const ConfigScalar& value, const ConfigContext& context,
                                       ServerConfig& config) -> absl::Status {
    std::string text = value.is_null ? std::string() : value.text;
    if (!text.empty() && !context.base_dir.empty()) {
      std::filesystem::path p(text);
      if (p.is_relative()) text = (std::filesystem::path(context.base_dir) / p).string();
    }
    set(config, std::move(text));
    return absl::OkStatus();
  };
  auto getter = [get = std::move(get)](const ServerConfig& c) { return QuoteYamlString(get(c)); };
  return ConfigKey{std::move(path), ConfigValueType::kPath, "a file path",
                   std::move(help), std::move(setter),      std::move(getter)};
}

const ConfigKey* FindConfigKey(std::string_view path) {
  for (const ConfigKey& key : ServerConfigKeys()) {
    if (key.path == path) return &key;
  }
  return nullptr;
}

bool IsConfigSection(std::string_view path) {
  if (path.empty()) return false;
  for (const ConfigKey& key : ServerConfigKeys()) {
    if (key.path.size() > path.size() && key.path.compare(0, path.size(), path) == 0 &&
        key.path[path.size()] == '.') {
      return true;
    }
  }
  return false;
}

std::string SuggestConfigKey(std::string_view path) {
  // Candidates: every key and every section.
  std::vector<std::string> candidates;
  for (const ConfigKey& key : ServerConfigKeys()) {
    candidates.push_back(key.path);
    for (size_t dot = key.path.find('.'); dot != std::string::npos;
         dot = key.path.find('.', dot + 1)) {
      candidates.push_back(key.path.substr(0, dot));
    }
  }
  std::string best;
  // Up to 2 edits for short names, 3 for long ones.
  size_t best_distance = std::max<size_t>(2, std::min<size_t>(3, path.size() / 5)) + 1;
  for (const std::string& candidate : candidates) {
    const size_t d = EditDistance(path, candidate);
    if (d < best_distance) {
      best_distance = d;
      best = candidate;
    }
  }
  return best;
}

absl::Status CheckHostPort(const std::string& address) {
  auto bad = [&address]() {
    return absl::InvalidArgumentError(
        absl::StrCat("expected host:port (or [ipv6]:port), got '", address, "'"));
  };
  std::string host;
  std::string port;
  if (absl::StartsWith(address, "[")) {
    const size_t close = address.find(']');
    if (close == std::string::npos || close + 1 >= address.size() || address[close + 1] != ':') {
      return bad();
    }
    host = address.substr(1, close - 1);
    port = address.substr(close + 2);
  } else {
    const size_t colon = address.rfind(':');
    if (colon == std::string::npos) return bad();
    host = address.substr(0, colon);
    port = address.substr(colon + 1);
    if (host.find(':') != std::string::npos) return bad();  // IPv6 needs brackets
  }
  if (host.empty() || host.find_first_of(" \t/") != std::string::npos) return bad();
  if (port.empty() || port.size() > 5 ||
      port.find_first_not_of("0123456789") != std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("port must be a number in [0, 65535] (0 = any free port), got '", port, "'"));
  }
  const int number = std::stoi(port);
  if (number < 0 || number > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("port must be in [0, 65535] (0 = any free port), got ", number));
  }
  return absl::OkStatus();
}

std::vector<std::string> KvFormatNames() {
  // Every enum value whose name ParseKvFormat reads back; the enum's storage is 8 bits.
  std::vector<std::string> names;
  for (int i = 0; i < 256; ++i) {
    const auto format = static_cast<kernels::KvFormat>(i);
    const std::string_view name = kernels::KvFormatName(format);
    const std::optional<kernels::KvFormat> parsed = kernels::ParseKvFormat(name);
    if (parsed.has_value() && *parsed == format) names.emplace_back(name);
  }
  return names;
}

std::string FormatDouble(double value) {
  char buffer[64];
  const auto result = std::to_chars(buffer, buffer + sizeof(buffer), value);
  return std::string(buffer, result.ptr);
}

std::string QuoteYamlString(const std::string& value) {
  std::string out = "\"";
  for (const char c : value) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        out += c;
    }
  }
  out += "\"";
  return out;
}

}  // namespace kvserve::server
