// The serving benchmark over the OpenAI-compatible HTTP API, against a scripted server whose
// events come 50 ms apart: TTFT and ITL are measured from the events, token counts come from the
// usage (or from the events without it), chat prompts are detokenized, and the CLI prints and
// writes the same report as over gRPC.
#include "tools/bench_openai.h"

#include <algorithm>
#include <fstream>
#include <sstream>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/server/grpc/server_process.h"
#include "tests/tools/fake_openai_server.h"
#include "tools/bench_json.h"
#include "tools/bench_runner.h"
#include "tools/bench_workload.h"

namespace kvserve::tools {
namespace {

using server::testing::KvserveBinary;
using server::testing::RunProcess;
using server::testing::ScratchDir;
using server::testing::ServerProcess;
using testing::FakeOpenAiServer;
using testing::FakeOpenAiServerOptions;
using Json = nlohmann::json;

std::vector<BenchRequest> Workload(const ModelLimits& limits, int n, int input_len,
                                   int output_len) {
  WorkloadOptions w;
  w.num_requests = n;
  w.input_len = input_len;
  w.output_len = output_len;
  w.seed = 3;
  auto requests = GenerateWorkload(w, limits);
  EXPECT_TRUE(requests.ok()) << requests.status();
  return requests.ok() ? *requests : std::vector<BenchRequest>{};
}

TEST(BenchOpenAiTest, TimesEventsAndCountsUsage) {
  FakeOpenAiServerOptions so;
  so.event_gap_ms = 50;
  FakeOpenAiServer server(so);
  auto client = OpenAiClient::Create(server.url(), {});
  ASSERT_TRUE(client.ok()) << client.status();
  auto choice = ChooseOpenAiModel(**client, "");
  ASSERT_TRUE(choice.ok()) << choice.status();
  EXPECT_EQ(choice->model, "fake-model");
  EXPECT_EQ(choice->limits.vocab_size, 512);
  EXPECT_EQ(choice->limits.context_length, 2048);

  const auto requests = Workload(choice->limits, 6, 10, 4);
  BenchOptions o;
  o.max_concurrency = 3;
  o.no_memory_channel_reason = "no Memory service here";
  auto sender = MakeOpenAiSender(client->get(), OpenAiEndpoint::kCompletions, choice->model, o);
  auto report = RunBenchmark(*sender, nullptr, requests, o);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->completed, 6);
  EXPECT_EQ(report->failed, 0);
  EXPECT_LE(report->peak_concurrency, 3);
  EXPECT_EQ(report->output_tokens, 6 * 4);   // the usage's completion_tokens
  EXPECT_EQ(report->prompt_tokens, 6 * 10);  // the usage's prompt_tokens: the ids sent
  for (const RequestRecord& r : report->records) {
    EXPECT_TRUE(r.ok) << r.error;
    EXPECT_TRUE(r.usage_reported);
    EXPECT_EQ(r.token_messages, 4);
    EXPECT_EQ(r.itl_s.size(), 3u);
    EXPECT_GE(r.ttft_s, 0.040);  // the server sleeps 50 ms before the first event
    EXPECT_GE(r.e2e_s, r.ttft_s + 3 * 0.030);
  }
  // Events 50 ms apart. (A single gap can read shorter when this process was late to read the
  // event before it; the median cannot, short of most reads being late.)
  EXPECT_EQ(report->itl_ms.count, 6 * 3);
  EXPECT_GE(report->itl_ms.median, 40);
  EXPECT_LT(report->itl_ms.median, 1000);
  EXPECT_GE(report->ttft_ms.median, 40);
  EXPECT_GE(report->tpot_ms.median, 40);
  EXPECT_EQ(report->tpot_ms.count, 6);
  EXPECT_FALSE(report->server.available);
  EXPECT_EQ(report->server.error, "no Memory service here");

  // What was sent: the ids as the prompt, the output length, the sampling and the extras.
  const auto bodies = server.bodies();
  ASSERT_EQ(bodies.size(), 6u);
  for (const std::string& b : bodies) {
    const Json j = Json::parse(b);
    EXPECT_EQ(j["model"], "fake-model");
    EXPECT_TRUE(j["prompt"].is_array());
    EXPECT_EQ(j["prompt"].size(), 10u);
    EXPECT_EQ(j["prompt"][0], 1);  // BOS
    EXPECT_EQ(j["max_tokens"], 4);
    EXPECT_EQ(j["ignore_eos"], true);
    EXPECT_EQ(j["stream_options"]["include_usage"], true);
  }
}

TEST(BenchOpenAiTest, WithoutUsageTheEventsAreCounted) {
  FakeOpenAiServerOptions so;
  so.event_gap_ms = 1;
  so.send_usage = false;
  FakeOpenAiServer server(so);
  auto client = OpenAiClient::Create(server.url(), {});
  ASSERT_TRUE(client.ok()) << client.status();
  ModelLimits limits;
  limits.vocab_size = 512;
  const auto requests = Workload(limits, 3, 7, 5);
  BenchOptions o;
  auto sender = MakeOpenAiSender(client->get(), OpenAiEndpoint::kCompletions, "", o);
  auto report = RunBenchmark(*sender, nullptr, requests, o);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->completed, 3);
  EXPECT_EQ(report->output_tokens, 3 * 5);
  EXPECT_EQ(report->prompt_tokens, 3 * 7);  // the ids sent
  for (const RequestRecord& r : report->records) EXPECT_FALSE(r.usage_reported);
}

TEST(BenchOpenAiTest, ChatSendsTheTextOfTheIds) {
  FakeOpenAiServerOptions so;
  so.event_gap_ms = 1;
  FakeOpenAiServer server(so);
  auto client = OpenAiClient::Create(server.url(), {});
  ASSERT_TRUE(client.ok()) << client.status();
  ModelLimits limits;
  limits.vocab_size = 512;
  auto requests = Workload(limits, 2, 3, 2);
  const std::vector<int32_t> ids = requests[0].prompt_ids;
  ASSERT_TRUE(PromptIdsToText(requests, [&](const std::vector<int32_t>& i) {
                return (*client)->Detokenize("fake-model", i);
              }).ok());
  EXPECT_TRUE(requests[0].prompt_ids.empty());
  EXPECT_EQ(requests[0].prompt_text, "w" + std::to_string(ids[0]) + " w" + std::to_string(ids[1]) +
                                         " w" + std::to_string(ids[2]));
  BenchOptions o;
  auto sender = MakeOpenAiSender(client->get(), OpenAiEndpoint::kChat, "fake-model", o);
  auto report = RunBenchmark(*sender, nullptr, requests, o);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->completed, 2);
  EXPECT_EQ(report->output_tokens, 4);
  // The role delta carries no text: only the two content events are timed.
  EXPECT_EQ(report->records[0].token_messages, 2);
  const auto targets = server.targets();
  EXPECT_EQ(std::count(targets.begin(), targets.end(), "/v1/chat/completions"), 2);
  const Json last = Json::parse(server.bodies().back());
  EXPECT_EQ(last["messages"][0]["role"], "user");
}

TEST(BenchOpenAiTest, FailuresAreCountedByCode) {
  FakeOpenAiServerOptions so;
  so.event_gap_ms = 1;
  so.api_key = "right";
  FakeOpenAiServer server(so);
  OpenAiClientOptions co;
  co.api_key = "wrong";
  auto client = OpenAiClient::Create(server.url(), co);
  ASSERT_TRUE(client.ok()) << client.status();
  ModelLimits limits;
  limits.vocab_size = 512;
  BenchOptions o;
  auto sender = MakeOpenAiSender(client->get(), OpenAiEndpoint::kCompletions, "m", o);
  auto report = RunBenchmark(*sender, nullptr, Workload(limits, 3, 4, 2), o);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->failed, 3);
  EXPECT_EQ(report->errors.at("UNAUTHENTICATED"), 3);
  EXPECT_NE(report->records[0].error.find("HTTP 401"), std::string::npos);
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

TEST(BenchOpenAiTest, CommandPrintsTheTableAndWritesJson) {
  FakeOpenAiServerOptions so;
  so.event_gap_ms = 20;
  FakeOpenAiServer server(so);
  ScratchDir dir;
  const std::string json = dir.path() + "/bench.json";
  auto r = RunProcess({KvserveBinary(), "bench", "--protocol", "openai", "--url",
                       server.url() + "/v1", "--num-requests", "4", "--concurrency", "2",
                       "--input-len", "12", "--output-len", "3", "--warmup", "1", "--json", json},
                      absl::Seconds(120));
  ASSERT_EQ(r.exit_code, 0) << r.err << r.out;
  EXPECT_NE(r.out.find("Protocol:"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("openai completions"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("Successful requests:                     4"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("Output tokens:                           12"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("the OpenAI API has no Memory service"), std::string::npos) << r.out;
  auto v = ParseJson(ReadFile(json));
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->object.at("completed").number, 4);
  EXPECT_EQ(v->object.at("prompt_tokens").number, 4 * 12);
  EXPECT_EQ(v->object.at("output_tokens").number, 12);
  EXPECT_GE(v->object.at("itl_ms").object.at("median").number, 15);
  EXPECT_NE(v->object.at("protocol").string.find("openai"), std::string::npos);
  const auto& settings = v->object.at("settings").object;
  EXPECT_EQ(settings.at("protocol").string, "openai");
  EXPECT_EQ(settings.at("endpoint").string, "completions");
  EXPECT_EQ(settings.at("model").string, "fake-model");
  EXPECT_FALSE(v->object.at("server").object.at("available").boolean);
  EXPECT_EQ(v->object.at("requests").array.size(), 4u);
  EXPECT_EQ(server.bodies().size(), 5u);  // the warm-up request and the 4 measured
}

TEST(BenchOpenAiTest, CommandUsesKvserveGrpcForLimitsMemoryAndChatText) {
  // The HTTP server stands in for kvserve's HTTP front end; --addr is the real server's gRPC.
  ServerProcess grpc_server;
  ASSERT_TRUE(grpc_server.Start());
  FakeOpenAiServerOptions so;
  so.event_gap_ms = 1;
  FakeOpenAiServer server(so);
  auto r = RunProcess({KvserveBinary(), "bench", "--protocol", "openai", "--url", server.url(),
                       "--addr", grpc_server.address(), "--endpoint", "chat", "--model", "named",
                       "--num-requests", "2", "--input-len", "6", "--output-len", "2"},
                      absl::Seconds(120));
  ASSERT_EQ(r.exit_code, 0) << r.err << r.out;
  EXPECT_NE(r.out.find("Peak KV used (MiB):"), std::string::npos) << r.out;  // sampled
  EXPECT_NE(r.out.find("model named; gRPC"), std::string::npos) << r.out;
  // The prompts' text came from the server's Detokenize, not from the HTTP server.
  const auto targets = server.targets();
  EXPECT_EQ(std::count(targets.begin(), targets.end(), "/detokenize"), 0);
  for (const std::string& b : server.bodies()) {
    const Json j = Json::parse(b);
    EXPECT_EQ(j["model"], "named");
    EXPECT_FALSE(j["messages"][0]["content"].get<std::string>().empty());
  }
}

TEST(BenchOpenAiTest, BadFlagsAreClearErrors) {
  auto r = RunProcess({KvserveBinary(), "bench", "--protocol", "openai"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("--protocol openai needs --url"), std::string::npos) << r.err;
  r = RunProcess({KvserveBinary(), "bench", "--endpoint", "chat"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("--endpoint is for --protocol openai"), std::string::npos) << r.err;
  r = RunProcess({KvserveBinary(), "bench", "--protocol", "openai", "--url", "http://h:1",
                  "--endpoint", "embeddings"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("--endpoint: 'embeddings'"), std::string::npos) << r.err;
  r = RunProcess({KvserveBinary(), "bench", "--protocol", "http"});
  EXPECT_EQ(r.exit_code, 2);
  r = RunProcess({KvserveBinary(), "bench", "--protocol", "openai", "--url", "127.0.0.1:8000"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("expected http:// or https://"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace kvserve::tools
