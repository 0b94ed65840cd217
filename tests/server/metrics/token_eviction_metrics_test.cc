// Token eviction through the real server: a request's override is honoured (and a bad one is
// INVALID_ARGUMENT naming the field, the server keeps serving), and the tokens it evicts show in
// Memory.GetStats and in kvserve_tokens_evicted_total{policy}.
#include <map>
#include <string>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "kvserve/v1/memory.grpc.pb.h"
#include "tests/server/grpc/server_process.h"
#include "tests/server/metrics/metrics_scrape.h"

namespace kvserve::server::testing {
namespace {

TEST(TokenEvictionMetricsTest, EvictedTokensReachGetStatsAndPrometheus) {
  ServerProcess server;
  ASSERT_TRUE(
      server.Start({"metrics.address=127.0.0.1:0", "token_eviction.policy=sliding_window",
                    "token_eviction.budget_tokens=48", "token_eviction.min_budget_tokens=32"}));
  const int port = MetricsPort(server);
  ASSERT_GT(port, 0) << server.Stderr();
  auto stub = server.Stub();

  // Server default (sliding_window, 48): 20 prompt + 100 generated tokens.
  v1::GenerateRequest a = TokenPrompt(20, 5, 100);
  a.mutable_sampling()->set_temperature(0);
  StreamResult ra = ReadStream(*stub, a);
  ASSERT_TRUE(ra.status.ok()) << ra.status.error_message();
  // Override: h2o with 32 slots.
  v1::GenerateRequest b = TokenPrompt(20, 9, 100);
  b.mutable_token_eviction()->set_policy("h2o");
  b.mutable_token_eviction()->set_budget_tokens(32);
  StreamResult rb = ReadStream(*stub, b);
  ASSERT_TRUE(rb.status.ok()) << rb.status.error_message();
  EXPECT_GE(rb.last.kv_usage().evicted_tokens(), 119 - 32);
  EXPECT_GE(ra.last.kv_usage().evicted_tokens(), 119 - 48);
  // Below the configured minimum: refused, naming the field.
  v1::GenerateRequest c = TokenPrompt(20, 9, 10);
  c.mutable_token_eviction()->set_policy("h2o");
  c.mutable_token_eviction()->set_budget_tokens(8);
  StreamResult rc = ReadStream(*stub, c);
  EXPECT_EQ(rc.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(rc.status.error_message().find("token_eviction.budget_tokens"), std::string::npos)
      << rc.status.error_message();

  // The engine publishes its snapshot between steps: wait until it has seen both requests end.
  auto memory = v1::Memory::NewStub(server.Channel());
  v1::MemoryStats stats;
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  do {
    grpc::ClientContext context;
    stats.Clear();
    ASSERT_TRUE(memory->GetStats(&context, v1::GetStatsRequest(), &stats).ok());
    if (stats.requests_finished() == 2 && stats.running_requests() == 0) break;
    absl::SleepFor(absl::Milliseconds(20));
  } while (absl::Now() < deadline);
  ASSERT_EQ(stats.requests_finished(), 2);
  EXPECT_EQ(stats.token_eviction_policy(), "sliding_window");
  EXPECT_EQ(stats.token_eviction_budget_tokens(), 48);
  std::map<std::string, int64_t> evicted;
  for (const auto& e : stats.tokens_evicted()) evicted[e.policy()] = e.tokens();
  // Each sequence fed 20 + 99 tokens and held at most its budget.
  EXPECT_GE(evicted["sliding_window"], 119 - 48);
  EXPECT_GE(evicted["h2o"], 119 - 32);

  std::map<std::string, double> m = ParseExposition(HttpGet(port, "/metrics").body);
  EXPECT_EQ(m[R"(kvserve_tokens_evicted_total{policy="sliding_window"})"],
            evicted["sliding_window"]);
  EXPECT_EQ(m[R"(kvserve_tokens_evicted_total{policy="h2o"})"], evicted["h2o"]);
  EXPECT_EQ(m[R"(kvserve_tokens_evicted_total{policy="attention"})"], 0);
  EXPECT_EQ(m["kvserve_token_eviction_events_total"], stats.token_eviction_events());
}

}  // namespace
}  // namespace kvserve::server::testing
