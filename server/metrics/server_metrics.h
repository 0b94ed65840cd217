// Prometheus metrics of `kvserve serve` (the names and meanings are listed in docs/metrics.md).
//
// Two sources feed the registry:
//   - the engine: on every scrape a Collectable pulls one Engine::Stats() snapshot and turns it
//     into gauges (KV bytes by format, role and state, blocks, ratios, queue lengths) and
//     counters (prefix cache queries and hits, evictions, preemptions, requests, tokens), so a
//     scrape never sees a half-updated set;
//   - the gRPC and HTTP calls: ObserveRequest() records each finished request in the latency
//     histograms (time to first token, inter-token latency, request duration), and
//     `kvserve_requests_total` reads the calls' outcomes (request_outcomes.h) on every scrape;
//     all of them carry a `protocol` label, "grpc" or "http".
// The engine never sees any of this: the server pulls from it.
//
// Thread-safety: ObserveRequest and scrapes run concurrently from any thread. The engine and the
// outcomes must outlive the object.
#ifndef KVSERVE_SERVER_METRICS_SERVER_METRICS_H_
#define KVSERVE_SERVER_METRICS_SERVER_METRICS_H_

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "engine/runtime/engine.h"
#include "engine/serving/request.h"
#include "server/metrics/request_outcomes.h"

namespace prometheus {
class Exposer;
class Histogram;
class Registry;
}  // namespace prometheus

namespace kvserve::server {

class EngineCollector;

class ServerMetrics {
 public:
  ServerMetrics(engine::Engine* engine, const RequestOutcomes* outcomes);
  ~ServerMetrics();
  ServerMetrics(const ServerMetrics&) = delete;
  ServerMetrics& operator=(const ServerMetrics&) = delete;

  // Serves GET /metrics on `address` (host:port; port 0 picks a free one, see port()).
  // Unavailable naming metrics.address when it cannot be bound.
  absl::Status Serve(const std::string& address);
  // The port /metrics is served on; 0 before Serve().
  int port() const { return port_; }

  // Records a finished request (its final stream event) in the latency histograms. The
  // inter-token latency of a request with n > 1 generated tokens is its mean gap,
  // (total - time to first token) / (n - 1), counted once per gap.
  void ObserveRequest(const engine::StreamEvent& final, Protocol protocol = Protocol::kGrpc);

  // The text exposition of every metric, as a scrape returns it.
  std::string Render() const;

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  std::shared_ptr<EngineCollector> collector_;
  // Per protocol (the `protocol` label).
  prometheus::Histogram* ttft_[kNumProtocols] = {};
  prometheus::Histogram* inter_token_[kNumProtocols] = {};
  prometheus::Histogram* duration_[kNumProtocols] = {};
  std::unique_ptr<prometheus::Exposer> exposer_;
  int port_ = 0;
};

}  // namespace kvserve::server

#endif  // KVSERVE_SERVER_METRICS_SERVER_METRICS_H_
