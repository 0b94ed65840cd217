// API-key authentication for the kvserve services.
//
// When `server.api_keys_file` is set, a call must carry the metadata
// `authorization: Bearer <key>` with one of the file's keys, or it fails with UNAUTHENTICATED.
// Whether keys are required depends on the address the server listens on:
//   - a non-loopback address (0.0.0.0, a LAN address, a host name): always, once a keys file is
//     set; without a keys file the config loader refuses such an address unless
//     server.allow_unauthenticated is true;
//   - a loopback address (127.0.0.0/8, [::1], localhost) or a unix socket: only when
//     `server.auth_on_loopback` is true. Only local processes can reach such a server, and
//     leaving them out keeps local tools simple; set auth_on_loopback when other local users or a
//     local proxy must not get in.
// The gRPC health service is never authenticated (load balancers probe it). The reflection
// service is not either: it describes only the public API in proto/.
//
// The keys file holds one key per line; blank lines and lines starting with '#' are ignored and
// surrounding whitespace is trimmed. Keys are compared in constant time (no early exit on the
// first differing byte, and every key is compared), so timing does not reveal how much of a key
// matched. Keys never appear in logs.
//
// The keys can be replaced while the server runs (SetKeys, used by a config reload on SIGHUP for
// key rotation); a call is checked against one complete set, the old or the new.
//
// Thread-safety: every method is safe from any thread.
#ifndef KVSERVE_SERVER_GRPC_AUTH_H_
#define KVSERVE_SERVER_GRPC_AUTH_H_

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "grpcpp/grpcpp.h"

namespace kvserve::server {

class ApiKeyAuthenticator {
 public:
  // Reads the keys file. InvalidArgument naming `server.api_keys_file` when it cannot be read or
  // holds no key.
  static absl::StatusOr<std::unique_ptr<ApiKeyAuthenticator>> FromFile(const std::string& path);
  // The keys of a keys file, with FromFile's errors.
  static absl::StatusOr<std::vector<std::string>> ReadKeysFile(const std::string& path);
  // REQUIRES: `keys` is not empty.
  explicit ApiKeyAuthenticator(std::vector<std::string> keys)
      : keys_(std::make_shared<const std::vector<std::string>>(std::move(keys))) {}

  // Replaces the keys at once. REQUIRES: `keys` is not empty.
  void SetKeys(std::vector<std::string> keys);

  // OK when `authorization_header` (the metadata value, "" when absent) is "Bearer <key>" for
  // one of the keys (the scheme is case-insensitive); UNAUTHENTICATED otherwise.
  absl::Status CheckHeader(std::string_view authorization_header) const;
  // CheckHeader on the call's `authorization` metadata.
  absl::Status Check(const grpc::ServerContextBase& context) const;

  size_t num_keys() const { return Keys()->size(); }

 private:
  std::shared_ptr<const std::vector<std::string>> Keys() const;

  mutable absl::Mutex mu_;
  std::shared_ptr<const std::vector<std::string>> keys_ ABSL_GUARDED_BY(mu_);
};

// True for loopback listen addresses: "127.x.y.z:port", "[::1]:port", "localhost:port",
// "unix:...". False for everything else (wildcards, other addresses, host names).
bool IsLoopbackAddress(std::string_view address);

// Whether calls must carry a key, per the rule in the file comment.
bool ApiKeysRequired(std::string_view listen_address, bool keys_file_set, bool auth_on_loopback);

// Equality of two strings whose running time depends only on their lengths.
bool ConstantTimeEquals(std::string_view a, std::string_view b);

}  // namespace kvserve::server

#endif  // KVSERVE_SERVER_GRPC_AUTH_H_
