#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "tests/server/metrics/prometheus_process.h"

namespace kvserve::server::testing {

bool HaveProgram(const std::string& name) {
  return RunProcess({"/bin/sh", "-c", absl::StrCat("command -v ", name)}).exit_code == 0;
}

std::string UrlEncode(const std::string& value) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : value) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out.push_back(static_cast<char>(c));
    } else {
      out.push_back('%');
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 15]);
    }
  }
  return out;
}

PrometheusProcess::~PrometheusProcess() {
  if (pid_ <= 0) return;
  kill(pid_, SIGTERM);
  int status = 0;
  waitpid(pid_, &status, 0);
}

bool PrometheusProcess::Start(const ScratchDir& dir, const std::string& job,
                              const std::vector<int>& ports) {
  for (int p = 20000 + getpid() % 20000; p < 65000; p += 7) {
    if (HttpGet(p, "/", absl::Milliseconds(200)).status == 0) {
      web_port_ = p;
      break;
    }
  }
  if (web_port_ == 0) return false;
  std::vector<std::string> targets;
  for (int port : ports) targets.push_back(absl::StrCat("'127.0.0.1:", port, "'"));
  const std::string config = dir.Write(
      "prometheus.yml", absl::StrCat("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
                                     "scrape_configs:\n  - job_name: ",
                                     job, "\n    static_configs:\n      - targets: [",
                                     absl::StrJoin(targets, ", "), "]\n"));
  const std::string tsdb = dir.path() + "/tsdb";
  const std::string log = dir.path() + "/prometheus.log";
  pid_ = fork();
  if (pid_ < 0) return false;
  if (pid_ == 0) {
    const std::string listen = absl::StrCat("--web.listen-address=127.0.0.1:", web_port_);
    const std::string cfg = "--config.file=" + config;
    const std::string storage = "--storage.tsdb.path=" + tsdb;
    freopen("/dev/null", "w", stdout);
    freopen(log.c_str(), "w", stderr);
    execlp("prometheus", "prometheus", cfg.c_str(), storage.c_str(), listen.c_str(),
           static_cast<char*>(nullptr));
    _exit(127);
  }
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (absl::Now() < deadline) {
    if (HttpGet(web_port_, "/-/ready", absl::Seconds(1)).status == 200) return true;
    absl::SleepFor(absl::Milliseconds(200));
  }
  return false;
}

HttpResponse PrometheusProcess::Query(const std::string& expr) const {
  return HttpGet(web_port_, "/api/v1/query?query=" + UrlEncode(expr), absl::Seconds(5));
}

}  // namespace kvserve::server::testing
