// Test helper: a real Prometheus server (Debian package `prometheus`) on loopback scraping given
// targets every second, with its query API. Killed when destroyed.
#ifndef KVSERVE_TESTS_SERVER_METRICS_PROMETHEUS_PROCESS_H_
#define KVSERVE_TESTS_SERVER_METRICS_PROMETHEUS_PROCESS_H_

#include <sys/types.h>

#include <string>
#include <vector>

#include "absl/time/time.h"
#include "tests/server/grpc/server_process.h"
#include "tests/server/metrics/metrics_scrape.h"

namespace kvserve::server::testing {

// Whether `name` is on PATH.
bool HaveProgram(const std::string& name);

// Percent-encoding of a URL query value (RFC 3986 unreserved characters kept).
std::string UrlEncode(const std::string& value);

class PrometheusProcess {
 public:
  PrometheusProcess() = default;
  ~PrometheusProcess();
  PrometheusProcess(const PrometheusProcess&) = delete;
  PrometheusProcess& operator=(const PrometheusProcess&) = delete;

  // Starts prometheus with job `job` scraping http://127.0.0.1:PORT/metrics for every port,
  // files under `dir`. False when no free web port was found or it did not answer in 30 s.
  bool Start(const ScratchDir& dir, const std::string& job, const std::vector<int>& ports);

  // GET /api/v1/query?query=<expr> (instant query, now): the raw JSON answer.
  HttpResponse Query(const std::string& expr) const;

  int web_port() const { return web_port_; }

 private:
  pid_t pid_ = -1;
  int web_port_ = 0;
};

}  // namespace kvserve::server::testing

#endif  // KVSERVE_TESTS_SERVER_METRICS_PROMETHEUS_PROCESS_H_
