// The gRPC server of `kvserve serve`: the Generation and Memory services, standard health
// checking (grpc.health.v1.Health) and server reflection, over plaintext or TLS; when
// http.address is set, the OpenAI-compatible HTTP API on the same engine, keys and certificate
// (server/http/http_server.h); and, when metrics.address is set, the Prometheus /metrics
// endpoint (server_metrics.h).
//
// Lifecycle: Start() binds and starts serving (health SERVING). BeginDrain() turns health to
// NOT_SERVING and makes the services answer UNAVAILABLE to new calls while calls in flight go on.
// Shutdown() stops the server, giving calls in flight up to `grace` to end before they are
// cancelled, and waits for every handler to return.
//
// Thread-safety: BeginDrain() is thread-safe; Shutdown() and the destructor belong to the thread
// that owns the server.
// The engine must outlive the server.
#ifndef KVSERVE_SERVER_GRPC_GRPC_SERVER_H_
#define KVSERVE_SERVER_GRPC_GRPC_SERVER_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "engine/runtime/engine.h"
#include "grpcpp/grpcpp.h"
#include "server/config/server_config.h"
#include "server/grpc/auth.h"
#include "server/grpc/generation_service.h"
#include "server/grpc/memory_service.h"
#include "server/http/http_server.h"
#include "server/metrics/server_metrics.h"

namespace kvserve::server {

// Checks what Start() reads besides the config itself: the TLS files and the keys file.
// InvalidArgument naming the config key.
absl::Status CheckServerFiles(const ServerConfig& config);

class GrpcServer {
 public:
  // Builds the services and listens on config.address. A port of 0 picks a free port (see
  // bound_address()). Errors: InvalidArgument naming the key for unreadable TLS or keys files;
  // Unavailable when the address cannot be bound (in use, not local, no permission).
  static absl::StatusOr<std::unique_ptr<GrpcServer>> Start(const ServerConfig& config,
                                                           engine::Engine* engine);
  ~GrpcServer();

  // The address actually listened on: config.address with the chosen port.
  const std::string& bound_address() const { return bound_address_; }
  int port() const { return port_; }
  bool tls() const { return tls_; }
  bool api_keys_required() const { return authenticator_ != nullptr; }
  // The OpenAI-compatible HTTP API (http.address); null when it is off.
  const HttpServer* http() const { return http_.get(); }
  // The port /metrics is served on; 0 when metrics are off.
  int metrics_port() const { return metrics_ != nullptr ? metrics_->port() : 0; }

  void BeginDrain();
  void Shutdown(absl::Duration grace);

  // Config reload: reads the keys file `path` again and replaces the keys at once. Does nothing
  // when keys are not required (that is decided at start). InvalidArgument naming
  // server.api_keys_file when the file cannot be read or holds no key; the old keys then stay.
  // Thread-safe.
  absl::Status ReloadApiKeys(const std::string& path);

  // Sets the grpc.health.v1 status of one service (kLivenessService: liveness_watchdog.h).
  // BeginDrain sets every service NOT_SERVING; a later call sets this one again. Thread-safe.
  void SetHealthStatus(const std::string& service, bool serving);

 private:
  GrpcServer() = default;

  std::unique_ptr<ApiKeyAuthenticator> authenticator_;
  RequestOutcomes outcomes_;  // how the generation calls ended (metrics and Memory read it)
  std::unique_ptr<ServerMetrics> metrics_;
  std::unique_ptr<GenerationService> service_;
  std::unique_ptr<MemoryService> memory_service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<HttpServer> http_;
  std::string bound_address_;
  int port_ = 0;
  bool tls_ = false;
  bool shut_down_ = false;
};

}  // namespace kvserve::server

#endif  // KVSERVE_SERVER_GRPC_GRPC_SERVER_H_
