// Test helpers for the Prometheus endpoint: an HTTP GET over loopback and a parser of the text
// exposition format (enough of it for our own output and Prometheus' query API answers).
#ifndef KVSERVE_TESTS_SERVER_METRICS_METRICS_SCRAPE_H_
#define KVSERVE_TESTS_SERVER_METRICS_METRICS_SCRAPE_H_

#include <map>
#include <optional>
#include <string>

#include "absl/time/time.h"
#include "tests/server/grpc/server_process.h"

namespace kvserve::server::testing {

struct HttpResponse {
  int status = 0;  // 0: no answer
  std::string body;
};

// GET http://127.0.0.1:port/path (HTTP/1.0, the whole answer read).
HttpResponse HttpGet(int port, const std::string& path, absl::Duration timeout = absl::Seconds(10));

// Samples of a text exposition keyed by the series as written: `name` or `name{labels}`.
std::map<std::string, double> ParseExposition(const std::string& text);

// The metrics port a ServerProcess logged ("metrics on http://HOST:PORT/metrics"), or 0.
int MetricsPort(const ServerProcess& server);

}  // namespace kvserve::server::testing

#endif  // KVSERVE_TESTS_SERVER_METRICS_METRICS_SCRAPE_H_
