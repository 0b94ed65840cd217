#include "server/grpc/auth.h"

#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace kvserve::server {
namespace {

// Abseil 20220623 has its own string_view type.
absl::string_view Absl(std::string_view s) { return absl::string_view(s.data(), s.size()); }

}  // namespace

absl::StatusOr<std::unique_ptr<ApiKeyAuthenticator>> ApiKeyAuthenticator::FromFile(
    const std::string& path) {
  auto keys = ReadKeysFile(path);
  if (!keys.ok()) return keys.status();
  return std::make_unique<ApiKeyAuthenticator>(*std::move(keys));
}

absl::StatusOr<std::vector<std::string>> ApiKeyAuthenticator::ReadKeysFile(
    const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::InvalidArgumentError(
        absl::StrCat("server.api_keys_file: cannot read '", path, "'"));
  }
  std::stringstream contents;
  contents << in.rdbuf();
  std::vector<std::string> keys;
  for (absl::string_view line : absl::StrSplit(contents.str(), '\n')) {
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line[0] == '#') continue;
    keys.emplace_back(line);
  }
  if (keys.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("server.api_keys_file: '", path, "' holds no key (one key per line)"));
  }
  return keys;
}

void ApiKeyAuthenticator::SetKeys(std::vector<std::string> keys) {
  auto fresh = std::make_shared<const std::vector<std::string>>(std::move(keys));
  absl::MutexLock lock(&mu_);
  keys_ = std::move(fresh);
}

std::shared_ptr<const std::vector<std::string>> ApiKeyAuthenticator::Keys() const {
  absl::MutexLock lock(&mu_);
  return keys_;
}

absl::Status ApiKeyAuthenticator::CheckHeader(std::string_view header) const {
  constexpr std::string_view kScheme = "bearer ";
  std::string_view presented;
  if (header.size() > kScheme.size() &&
      absl::EqualsIgnoreCase(Absl(header.substr(0, kScheme.size())), Absl(kScheme))) {
    presented = header.substr(kScheme.size());
    while (!presented.empty() && presented.front() == ' ') presented.remove_prefix(1);
    while (!presented.empty() && presented.back() == ' ') presented.remove_suffix(1);
  }
  bool match = false;
  const std::shared_ptr<const std::vector<std::string>> keys = Keys();
  for (const std::string& key : *keys) {
    // Every key is compared: the time does not depend on which one matched.
    match |= ConstantTimeEquals(presented, key) && !presented.empty();
  }
  if (match) return absl::OkStatus();
  if (header.empty()) {
    return absl::UnauthenticatedError(
        "this server requires an API key: send the metadata 'authorization: Bearer <key>'");
  }
  return absl::UnauthenticatedError("invalid API key");
}

absl::Status ApiKeyAuthenticator::Check(const grpc::ServerContextBase& context) const {
  const auto& metadata = context.client_metadata();
  auto it = metadata.find("authorization");
  if (it == metadata.end()) return CheckHeader("");
  return CheckHeader(std::string_view(it->second.data(), it->second.size()));
}

bool IsLoopbackAddress(std::string_view address) {
  if (absl::StartsWith(Absl(address), "unix:") ||
      absl::StartsWith(Absl(address), "unix-abstract:")) {
    return true;
  }
  absl::string_view host = Absl(address);
  if (absl::StartsWith(host, "[")) {
    const size_t close = host.find(']');
    if (close == absl::string_view::npos) return false;
    host = host.substr(1, close - 1);
  } else if (const size_t colon = host.rfind(':'); colon != absl::string_view::npos) {
    host = host.substr(0, colon);
  }
  if (absl::EqualsIgnoreCase(host, "localhost") || host == "::1") return true;
  if (absl::StartsWithIgnoreCase(host, "::ffff:")) host.remove_prefix(7);
  if (!absl::StartsWith(host, "127.")) return false;
  // A dotted quad 127.a.b.c.
  std::vector<absl::string_view> parts = absl::StrSplit(host, '.');
  if (parts.size() != 4) return false;
  for (absl::string_view p : parts) {
    if (p.empty() || p.size() > 3 || p.find_first_not_of("0123456789") != absl::string_view::npos) {
      return false;
    }
  }
  return true;
}

bool ApiKeysRequired(std::string_view listen_address, bool keys_file_set, bool auth_on_loopback) {
  if (!keys_file_set) return false;
  return auth_on_loopback || !IsLoopbackAddress(listen_address);
}

bool ConstantTimeEquals(std::string_view a, std::string_view b) {
  const size_t n = a.size() > b.size() ? a.size() : b.size();
  volatile unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < n; ++i) {
    const unsigned char x = i < a.size() ? static_cast<unsigned char>(a[i]) : 0;
    const unsigned char y = i < b.size() ? static_cast<unsigned char>(b[i]) : 0;
    diff = diff | static_cast<unsigned char>(x ^ y);
  }
  return diff == 0;
}

}  // namespace kvserve::server
