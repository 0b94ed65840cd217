// The serving benchmark against a real `kvserve serve` on loopback (stories260K): the benchmark's
// request and token counts agree with the server's own counters, and the CLI writes its table and
// a JSON report that parses back.
#include <fstream>
#include <sstream>

#include "gtest/gtest.h"
#include "tests/server/grpc/server_process.h"
#include "tools/bench_json.h"
#include "tools/bench_runner.h"
#include "tools/bench_workload.h"

namespace kvserve::tools {
namespace {

using server::testing::KvserveBinary;
using server::testing::RunProcess;
using server::testing::ServerProcess;

TEST(BenchEndToEndTest, CountsAgreeWithTheServer) {
  ServerProcess server;
  ASSERT_TRUE(server.Start({"metrics.min_watch_interval_ms=10"}));
  auto channel = server.Channel();
  auto limits = FetchModelLimits(channel, nullptr);
  ASSERT_TRUE(limits.ok()) << limits.status();
  EXPECT_EQ(limits->vocab_size, 512);

  WorkloadOptions w;
  w.num_requests = 12;
  w.input_len = 20;
  w.output_len = 9;
  w.seed = 5;
  auto requests = GenerateWorkload(w, *limits);
  ASSERT_TRUE(requests.ok()) << requests.status();
  BenchOptions o;
  o.max_concurrency = 4;
  o.request_rate = 200;  // Poisson arrivals
  o.stats_interval_ms = 10;
  auto report = RunBenchmark(channel, *requests, o);
  ASSERT_TRUE(report.ok()) << report.status();

  EXPECT_EQ(report->completed, 12);
  EXPECT_EQ(report->failed, 0);
  EXPECT_LE(report->peak_concurrency, 4);
  EXPECT_EQ(report->output_tokens, 12 * 9);  // ignore_eos: exactly output_len each
  EXPECT_EQ(report->prompt_tokens, 12 * 20);
  for (const RequestRecord& r : report->records) {
    EXPECT_TRUE(r.ok) << r.error;
    EXPECT_EQ(r.output_tokens, 9);
    EXPECT_EQ(r.prompt_tokens, 20);
    EXPECT_GT(r.ttft_s, 0);
    EXPECT_GE(r.e2e_s, r.ttft_s);
    EXPECT_GE(r.start_s, r.scheduled_s);
  }
  // The server's counters over the run.
  ASSERT_TRUE(report->server.available) << report->server.error;
  EXPECT_EQ(report->server.requests_finished, 12);
  EXPECT_EQ(report->server.generated_tokens, report->output_tokens);
  EXPECT_EQ(report->server.prompt_tokens + report->cached_prompt_tokens, report->prompt_tokens);
  EXPECT_EQ(report->server.prefix_hit_tokens, report->cached_prompt_tokens);
  EXPECT_GT(report->server.peak_used_bytes, 0);
  EXPECT_GE(report->server.samples, 2);
  // Throughput figures follow from the counts and the duration.
  EXPECT_NEAR(report->output_throughput * report->duration_s, 108, 1e-6);
  EXPECT_NEAR(report->request_throughput * report->duration_s, 12, 1e-9);
  EXPECT_EQ(report->ttft_ms.count, 12);
  EXPECT_EQ(report->tpot_ms.count, 12);
  EXPECT_GT(report->cpu_user_s + report->cpu_system_s, 0);
}

TEST(BenchEndToEndTest, SharedPrefixHitsTheCache) {
  ServerProcess server;
  ASSERT_TRUE(server.Start());
  auto channel = server.Channel();
  auto limits = FetchModelLimits(channel, nullptr);
  ASSERT_TRUE(limits.ok()) << limits.status();
  WorkloadOptions w;
  w.kind = "shared-prefix";
  w.num_requests = 8;
  w.prefix_len = 64;  // 4 full blocks of 16
  w.suffix_len = 5;
  w.num_prefixes = 2;
  w.output_len = 3;
  auto requests = GenerateWorkload(w, *limits);
  ASSERT_TRUE(requests.ok());
  BenchOptions o;
  o.max_concurrency = 1;  // one at a time: every request after the first two finds its prefix
  auto report = RunBenchmark(channel, *requests, o);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->completed, 8);
  ASSERT_TRUE(report->server.available);
  // Requests 2..7 reuse the 64 cached prefix tokens of request 0 or 1.
  EXPECT_EQ(report->cached_prompt_tokens, 6 * 64);
  EXPECT_EQ(report->server.prefix_hit_tokens, 6 * 64);
  EXPECT_NEAR(report->server.prefix_hit_rate,
              static_cast<double>(6 * 64) / report->server.prefix_query_tokens, 1e-12);
}

TEST(BenchEndToEndTest, CommandPrintsTheTableAndWritesJson) {
  ServerProcess server;
  ASSERT_TRUE(server.Start());
  const std::string json = server.dir().path() + "/bench.json";
  auto r = RunProcess({KvserveBinary(),  "bench", "--addr",         server.address(),
                       "--num-requests", "6",     "--input-len",    "12",
                       "--output-len",   "5",     "--request-rate", "100",
                       "--burstiness",   "0.5",   "--seed",         "3",
                       "--warmup",       "2",     "--json",         json},
                      absl::Seconds(120));
  ASSERT_EQ(r.exit_code, 0) << r.err << r.out;
  EXPECT_NE(r.out.find("Successful requests:                     6"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("Output tokens:                           30"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("Preemptions:"), std::string::npos);
  EXPECT_NE(r.out.find("CPU time (s):"), std::string::npos);
  EXPECT_EQ(r.err.find("requests\r"), std::string::npos);  // no progress bar off a terminal
  std::ifstream in(json);
  std::stringstream text;
  text << in.rdbuf();
  auto v = ParseJson(text.str());
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->object.at("completed").number, 6);
  EXPECT_EQ(v->object.at("output_tokens").number, 30);
  EXPECT_EQ(v->object.at("requests").array.size(), 6u);
  EXPECT_EQ(v->object.at("requests").array[0].object.at("output_tokens").number, 5);
  // One gap between consecutive token-carrying messages (5 tokens come in 1 to 5 messages).
  const auto& first = v->object.at("requests").array[0].object;
  const double messages = first.at("token_messages").number;
  EXPECT_GE(messages, 1);
  EXPECT_LE(messages, 5);
  EXPECT_EQ(first.at("itl_s").array.size(), static_cast<size_t>(messages) - 1);
  // The two warm-up requests ran before the measured run and are not counted.
  EXPECT_EQ(v->object.at("server").object.at("requests_finished").number, 6);
  EXPECT_EQ(v->object.at("settings").object.at("burstiness").string, "0.5");
}

TEST(BenchEndToEndTest, TraceIsReplayedAtItsTimestamps) {
  ServerProcess server;
  ASSERT_TRUE(server.Start());
  const std::string trace = server.dir().Write(
      "trace.jsonl",
      "# three requests: text, token ids, a random prompt of 20 tokens\n"
      "{\"timestamp\": 0.0, \"prompt\": \"Once upon a time\", \"output_len\": 4}\n"
      "{\"timestamp\": 0.2, \"prompt_token_ids\": [1, 300, 301, 302], \"output_len\": 3}\n"
      "{\"timestamp\": 0.4, \"input_len\": 20, \"output_len\": 2}\n");
  const std::string json = server.dir().path() + "/trace.json";
  auto r = RunProcess({KvserveBinary(), "bench", "--addr", server.address(), "--workload", "trace",
                       "--trace", trace, "--json", json},
                      absl::Seconds(120));
  ASSERT_EQ(r.exit_code, 0) << r.err << r.out;
  std::ifstream in(json);
  std::stringstream text;
  text << in.rdbuf();
  auto v = ParseJson(text.str());
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->object.at("completed").number, 3);
  EXPECT_EQ(v->object.at("output_tokens").number, 4 + 3 + 2);
  const auto& reqs = v->object.at("requests").array;
  ASSERT_EQ(reqs.size(), 3u);
  const double scheduled[] = {0.0, 0.2, 0.4};
  for (int i = 0; i < 3; ++i) {
    const auto& rec = reqs[i].object;
    EXPECT_DOUBLE_EQ(rec.at("scheduled_s").number, scheduled[i]);
    // Sent at its timestamp (no concurrency cap), give or take the scheduling of this process.
    EXPECT_GE(rec.at("start_s").number, scheduled[i]);
    EXPECT_LT(rec.at("start_s").number, scheduled[i] + 0.3);
  }
  // The token-id prompt is used as given; the text one is tokenized by the server (BOS first).
  EXPECT_EQ(reqs[1].object.at("prompt_tokens").number, 4);
  EXPECT_EQ(reqs[2].object.at("prompt_tokens").number, 20);
  EXPECT_GT(reqs[0].object.at("prompt_tokens").number, 1);
}

TEST(BenchEndToEndTest, BadFlagsAndBadTracesAreClearErrors) {
  ServerProcess server;
  ASSERT_TRUE(server.Start());
  auto r =
      RunProcess({KvserveBinary(), "bench", "--addr", server.address(), "--request-rate", "fast"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("--request-rate: 'fast'"), std::string::npos) << r.err;
  const std::string trace =
      server.dir().Write("t.jsonl", "{\"input_len\": 4, \"output_len\": 2}\n{\"input_len\": 4}\n");
  r = RunProcess({KvserveBinary(), "bench", "--addr", server.address(), "--workload", "trace",
                  "--trace", trace});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("t.jsonl:2: \"output_len\" is missing"), std::string::npos) << r.err;
  EXPECT_TRUE(server.running());
}

}  // namespace
}  // namespace kvserve::tools
