// The Prometheus endpoint of the real server: served, parsed, equal to GetStats at a quiet
// moment, accepted by `promtool check metrics`, and scraped by a real Prometheus server.
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "kvserve/v1/memory.grpc.pb.h"
#include "tests/server/grpc/server_process.h"
#include "tests/server/metrics/metrics_scrape.h"

namespace kvserve::server::testing {
namespace {

bool HaveProgram(const std::string& name) {
  return RunProcess({"/bin/sh", "-c", absl::StrCat("command -v ", name)}).exit_code == 0;
}

v1::MemoryStats QuietStats(const ServerProcess& server) {
  auto stub = v1::Memory::NewStub(server.Channel());
  v1::MemoryStats stats;
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  do {
    grpc::ClientContext context;
    stats.Clear();
    EXPECT_TRUE(stub->GetStats(&context, v1::GetStatsRequest(), &stats).ok());
    if (stats.running_requests() == 0 && stats.waiting_requests() == 0 &&
        stats.active_bytes() == 0) {
      break;
    }
    absl::SleepFor(absl::Milliseconds(20));
  } while (absl::Now() < deadline);
  return stats;
}

class MetricsEndpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(server_.Start({"metrics.address=127.0.0.1:0"}));
    port_ = MetricsPort(server_);
    ASSERT_GT(port_, 0) << server_.Stderr();
    auto stub = server_.Stub();
    for (int i = 0; i < 2; ++i) {
      StreamResult r = ReadStream(*stub, TokenPrompt(40, 7 + 60 * i, 5));
      ASSERT_TRUE(r.status.ok()) << r.status.error_message();
    }
  }

  std::string Scrape() {
    HttpResponse r = HttpGet(port_, "/metrics");
    EXPECT_EQ(r.status, 200);
    return r.body;
  }

  ServerProcess server_;
  int port_ = 0;
};

TEST_F(MetricsEndpointTest, KvSeriesEqualGetStats) {
  const v1::MemoryStats s = QuietStats(server_);
  ASSERT_EQ(s.active_bytes(), 0);
  ASSERT_GT(s.cached_blocks(), 0);
  std::map<std::string, double> m = ParseExposition(Scrape());
  EXPECT_EQ(m["kvserve_kv_capacity_bytes"], s.capacity_bytes());
  EXPECT_EQ(m["kvserve_kv_allocated_bytes"], s.allocated_bytes());
  EXPECT_EQ(m[R"(kvserve_kv_bytes{state="active"})"], s.active_bytes());
  EXPECT_EQ(m[R"(kvserve_kv_bytes{state="cached"})"], s.cached_bytes());
  EXPECT_EQ(m[R"(kvserve_kv_bytes{state="free"})"], s.free_bytes());
  EXPECT_EQ(m[R"(kvserve_kv_blocks{state="active"})"], s.active_blocks());
  EXPECT_EQ(m[R"(kvserve_kv_blocks{state="cached"})"], s.cached_blocks());
  EXPECT_EQ(m[R"(kvserve_kv_blocks{state="free"})"], s.free_blocks());
  ASSERT_EQ(s.used_by_format_size(), 1);
  EXPECT_EQ(m[R"(kvserve_kv_used_bytes{format="fp32",role="value"})"],
            s.used_by_format(0).value_bytes());
  EXPECT_EQ(m[R"(kvserve_kv_used_bytes{format="fp32",role="scale"})"], 0);
  EXPECT_EQ(m[R"(kvserve_kv_used_bytes{format="fp32",role="padding"})"],
            s.used_by_format(0).padding_bytes());
  EXPECT_DOUBLE_EQ(m["kvserve_kv_compression_ratio"], 0.5);
  EXPECT_DOUBLE_EQ(m["kvserve_kv_usage_ratio"], s.usage_ratio());
  EXPECT_EQ(m["kvserve_kv_fp16_equivalent_bytes"], s.fp16_equivalent_bytes());
  EXPECT_EQ(m["kvserve_prefix_cache_queries_total"], s.prefix_queries());
  EXPECT_EQ(m["kvserve_prefix_cache_hit_tokens_total"], s.prefix_hit_tokens());
  EXPECT_EQ(m[R"(kvserve_block_evictions_total{policy="lru"})"], s.evicted_blocks());
  EXPECT_EQ(m["kvserve_preemptions_total"], s.preemptions());
  EXPECT_EQ(m[R"(kvserve_requests_total{status="ok",protocol="grpc"})"], 2);
  EXPECT_EQ(m[R"(kvserve_requests_total{status="ok",protocol="http"})"], 0);
  EXPECT_EQ(m["kvserve_running_requests"], 0);
  EXPECT_EQ(m["kvserve_waiting_requests"], 0);
  EXPECT_EQ(m["kvserve_generation_tokens_total"], 10);
  EXPECT_EQ(m["kvserve_prompt_tokens_total"], s.prompt_tokens());
  EXPECT_EQ(m[R"(kvserve_build_info{version="0.1.0"})"], 1);
  // Two requests of five tokens: two first tokens, eight gaps.
  EXPECT_EQ(m[R"(kvserve_time_to_first_token_seconds_count{protocol="grpc"})"], 2);
  EXPECT_EQ(m[R"(kvserve_request_duration_seconds_count{protocol="grpc"})"], 2);
  EXPECT_EQ(m[R"(kvserve_inter_token_latency_seconds_count{protocol="grpc"})"], 8);
  EXPECT_EQ(m[R"(kvserve_request_duration_seconds_bucket{protocol="grpc",le="+Inf"})"], 2);
  EXPECT_EQ(m[R"(kvserve_request_duration_seconds_count{protocol="http"})"], 0);
}

TEST_F(MetricsEndpointTest, PromtoolAcceptsTheExposition) {
  if (!HaveProgram("promtool")) {
    GTEST_SKIP() << "promtool not installed (Debian package 'prometheus'): check skipped";
  }
  const std::string file = server_.dir().Write("metrics.txt", Scrape());
  const ProcessResult r =
      RunProcess({"/bin/sh", "-c", absl::StrCat("promtool check metrics < ", file)});
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_EQ(r.out + r.err, "") << "promtool reported problems";
}

// Starts `prometheus` scraping the server every second and reads the capacity back through its
// query API.
TEST_F(MetricsEndpointTest, PrometheusScrapesTheServer) {
  if (!HaveProgram("prometheus")) {
    GTEST_SKIP() << "prometheus not installed (Debian package 'prometheus'): test skipped";
  }
  // A free port for Prometheus' own web server.
  const int web_port = [] {
    for (int p = 20000 + getpid() % 20000; p < 65000; p += 7) {
      if (HttpGet(p, "/", absl::Milliseconds(200)).status == 0) return p;
    }
    return 0;
  }();
  ASSERT_GT(web_port, 0);
  const std::string config = server_.dir().Write(
      "prometheus.yml", absl::StrCat("global:\n  scrape_interval: 1s\n"
                                     "scrape_configs:\n  - job_name: kvserve\n"
                                     "    static_configs:\n      - targets: ['127.0.0.1:",
                                     port_, "']\n"));
  const std::string tsdb = server_.dir().path() + "/tsdb";
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    const std::string listen = absl::StrCat("--web.listen-address=127.0.0.1:", web_port);
    const std::string cfg = "--config.file=" + config;
    const std::string storage = "--storage.tsdb.path=" + tsdb;
    freopen("/dev/null", "w", stdout);
    freopen((server_.dir().path() + "/prometheus.log").c_str(), "w", stderr);
    execlp("prometheus", "prometheus", cfg.c_str(), storage.c_str(), listen.c_str(),
           static_cast<char*>(nullptr));
    _exit(127);
  }
  const v1::MemoryStats s = QuietStats(server_);
  const std::string expected = absl::StrCat("\"", s.capacity_bytes(), "\"");
  std::string last;
  bool found = false;
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (!found && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(500));
    HttpResponse r =
        HttpGet(web_port, "/api/v1/query?query=kvserve_kv_capacity_bytes", absl::Seconds(2));
    last = r.body;
    found = r.status == 200 && last.find(expected) != std::string::npos;
  }
  kill(pid, SIGTERM);
  int status = 0;
  waitpid(pid, &status, 0);
  EXPECT_TRUE(found) << "last answer: " << last;
}

}  // namespace
}  // namespace kvserve::server::testing
