// The OpenAI-compatible client: request bodies, chunk and model-list parsing, URLs, and streams
// from a scripted server over HTTP and HTTPS (events split across writes, CRLF, comments, usage,
// errors, a truncated stream).
#include "tools/openai_client.h"

#include <chrono>
#include <fstream>
#include <string>
#include <vector>

#include "absl/synchronization/notification.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/server/grpc/server_process.h"
#include "tests/tools/fake_openai_server.h"

namespace kvserve::tools {
namespace {

using testing::FakeOpenAiServer;
using testing::FakeOpenAiServerOptions;
using Json = nlohmann::json;

TEST(OpenAiClientTest, CompletionBodyWithTokenIds) {
  OpenAiRequest r;
  r.model = "m";
  r.prompt_ids = {1, 300, 301};
  r.max_tokens = 9;
  r.temperature = 0.5f;
  r.seed = 7;
  r.ignore_eos = true;
  const Json j = Json::parse(OpenAiRequestBody(r));
  EXPECT_EQ(j["model"], "m");
  EXPECT_EQ(j["prompt"], Json::array({1, 300, 301}));
  EXPECT_EQ(j["max_tokens"], 9);
  EXPECT_DOUBLE_EQ(j["temperature"].get<double>(), 0.5);
  EXPECT_EQ(j["seed"], 7);
  EXPECT_EQ(j["ignore_eos"], true);
  EXPECT_EQ(j["stream"], true);
  EXPECT_EQ(j["stream_options"]["include_usage"], true);
  EXPECT_FALSE(j.contains("messages"));
  EXPECT_STREQ(OpenAiPath(r.endpoint), "/v1/completions");
}

TEST(OpenAiClientTest, ChatBodyIsOneUserMessage) {
  OpenAiRequest r;
  r.endpoint = OpenAiEndpoint::kChat;
  r.prompt_text = "hello \xFF";  // invalid UTF-8 is replaced, not thrown
  const Json j = Json::parse(OpenAiRequestBody(r));
  ASSERT_EQ(j["messages"].size(), 1u);
  EXPECT_EQ(j["messages"][0]["role"], "user");
  EXPECT_EQ(j["messages"][0]["content"], "hello \xEF\xBF\xBD");
  EXPECT_FALSE(j.contains("prompt"));
  EXPECT_FALSE(j.contains("model"));
  EXPECT_FALSE(j.contains("ignore_eos"));
  EXPECT_STREQ(OpenAiPath(r.endpoint), "/v1/chat/completions");
}

TEST(OpenAiClientTest, ParsesChunksOfBothEndpoints) {
  auto c = ParseOpenAiChunk(
      R"({"object":"text_completion","choices":[{"index":0,"text":"Hi","logprobs":null,)"
      R"("finish_reason":null}]})");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->text, "Hi");
  EXPECT_EQ(c->finish_reason, "");
  EXPECT_FALSE(c->usage.has_value());
  c = ParseOpenAiChunk(
      R"({"object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant"},)"
      R"("finish_reason":null}]})");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->text, "");
  c = ParseOpenAiChunk(
      R"({"choices":[{"index":0,"delta":{"content":" there"},"finish_reason":"stop"}]})");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->text, " there");
  EXPECT_EQ(c->finish_reason, "stop");
  c = ParseOpenAiChunk(
      R"({"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":5,"total_tokens":17,)"
      R"("prompt_tokens_details":{"cached_tokens":8}}})");
  ASSERT_TRUE(c.ok());
  ASSERT_TRUE(c->usage.has_value());
  EXPECT_EQ(c->usage->prompt_tokens, 12);
  EXPECT_EQ(c->usage->completion_tokens, 5);
  EXPECT_EQ(c->usage->cached_prompt_tokens, 8);
  c = ParseOpenAiChunk(R"({"choices":[{"text":"x"}],"usage":null})");  // usage: null is none
  ASSERT_TRUE(c.ok());
  EXPECT_FALSE(c->usage.has_value());
  c = ParseOpenAiChunk("[DONE]");
  ASSERT_TRUE(c.ok());
  EXPECT_TRUE(c->done);
}

TEST(OpenAiClientTest, ErrorEventsAndBadData) {
  auto c = ParseOpenAiChunk(
      R"({"error":{"object":"error","message":"too long","type":"BadRequestError","code":400}})");
  ASSERT_TRUE(c.ok());
  ASSERT_TRUE(c->error.has_value());
  EXPECT_EQ(c->error->code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(c->error->message().find("too long"), std::string::npos);
  EXPECT_EQ(ParseOpenAiChunk("{not json").status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(ParseOpenAiChunk("[1, 2]").status().code(), absl::StatusCode::kDataLoss);
}

TEST(OpenAiClientTest, HttpErrorsMapToStatusCodes) {
  absl::Status s = OpenAiHttpError(429, R"({"error":{"message":"slow down","type":"x"}})");
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(s.message(), "HTTP 429: slow down");
  EXPECT_EQ(OpenAiHttpError(401, "").code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(OpenAiHttpError(404, "").code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(OpenAiHttpError(400, "").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(OpenAiHttpError(503, "").code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(OpenAiHttpError(500, "plain text").message(), "HTTP 500: plain text");
}

TEST(OpenAiClientTest, ParsesModelListsOfSeveralServers) {
  auto models =
      ParseOpenAiModels(R"({"object":"list","data":[{"id":"a","max_model_len":4096},)"
                        R"({"id":"b","meta":{"n_vocab":32000,"n_ctx_train":4096}},{"id":"c"}]})");
  ASSERT_TRUE(models.ok()) << models.status();
  ASSERT_EQ(models->size(), 3u);
  EXPECT_EQ((*models)[0].id, "a");
  EXPECT_EQ((*models)[0].context_length, 4096);  // vLLM
  EXPECT_EQ((*models)[0].vocab_size, 0);
  EXPECT_EQ((*models)[1].vocab_size, 32000);  // llama.cpp
  EXPECT_EQ((*models)[1].context_length, 0);  // the training context is not the served one
  EXPECT_EQ((*models)[2].vocab_size, 0);
  EXPECT_EQ(ParseOpenAiModels("[]").status().code(), absl::StatusCode::kDataLoss);
}

TEST(OpenAiClientTest, ParsesUrls) {
  auto u = ParseHttpUrl("http://127.0.0.1:8000/v1/");
  ASSERT_TRUE(u.ok()) << u.status();
  EXPECT_FALSE(u->tls);
  EXPECT_EQ(u->host, "127.0.0.1");
  EXPECT_EQ(u->port, "8000");
  EXPECT_EQ(u->path, "/v1");
  u = ParseHttpUrl("HTTPS://example.com");
  ASSERT_TRUE(u.ok());
  EXPECT_TRUE(u->tls);
  EXPECT_EQ(u->port, "443");
  EXPECT_EQ(u->path, "");
  u = ParseHttpUrl("http://[::1]:9000/proxy");
  ASSERT_TRUE(u.ok());
  EXPECT_EQ(u->host, "::1");
  EXPECT_EQ(u->port, "9000");
  EXPECT_EQ(u->path, "/proxy");
  for (const char* bad : {"127.0.0.1:8000", "ftp://h", "http://", "http://h:0", "http://h:x",
                          "http://h/?q=1", "http://u@h/"}) {
    EXPECT_EQ(ParseHttpUrl(bad).status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
}

// Collects one stream.
class Collector : public OpenAiStreamHandler {
 public:
  void OnChunk(const OpenAiChunk& chunk, Clock::time_point received) override {
    chunks.push_back(chunk);
    if (!chunk.text.empty()) times.push_back(received);
  }
  void OnDone(const absl::Status& s, Clock::time_point) override {
    status = s;
    done.Notify();
  }
  std::vector<OpenAiChunk> chunks;
  std::vector<Clock::time_point> times;  // of the chunks carrying text
  absl::Status status;
  absl::Notification done;
};

std::shared_ptr<Collector> StreamOne(OpenAiClient& client, OpenAiEndpoint endpoint,
                                     int max_tokens) {
  OpenAiRequest r;
  r.endpoint = endpoint;
  r.model = "fake-model";
  r.prompt_ids = {1, 2, 3};
  r.prompt_text = "four";
  r.max_tokens = max_tokens;
  auto collector = std::make_shared<Collector>();
  client.Stream(r, collector);
  EXPECT_TRUE(collector->done.WaitForNotificationWithTimeout(absl::Seconds(30)));
  return collector;
}

std::string Texts(const Collector& c) {
  std::string out;
  for (const OpenAiChunk& chunk : c.chunks) {
    if (!chunk.text.empty()) out += chunk.text + ",";
  }
  return out;
}

TEST(OpenAiClientTest, StreamsACompletion) {
  FakeOpenAiServerOptions o;
  o.api_key = "secret";
  o.event_gap_ms = 50;
  FakeOpenAiServer server(o);
  OpenAiClientOptions co;
  co.api_key = "secret";
  auto client = OpenAiClient::Create(server.url() + "/v1", co);
  ASSERT_TRUE(client.ok()) << client.status();
  auto c = StreamOne(**client, OpenAiEndpoint::kCompletions, 4);
  ASSERT_TRUE(c->status.ok()) << c->status;
  EXPECT_EQ(Texts(*c), "t0,t1,t2,t3,");
  ASSERT_TRUE(c->chunks.back().usage.has_value());
  EXPECT_EQ(c->chunks.back().usage->prompt_tokens, 3);  // the ids were sent
  EXPECT_EQ(c->chunks.back().usage->completion_tokens, 4);
  EXPECT_EQ(c->chunks[c->chunks.size() - 2].finish_reason, "length");
  // The events come about 50 ms apart: three gaps between the first and the last.
  ASSERT_EQ(c->times.size(), 4u);
  EXPECT_GE(c->times[3] - c->times[0], std::chrono::milliseconds(120));
  const auto bodies = server.bodies();
  ASSERT_EQ(bodies.size(), 1u);
  const Json body = Json::parse(bodies[0]);
  EXPECT_EQ(body["prompt"], Json::array({1, 2, 3}));
  EXPECT_EQ(server.targets(), std::vector<std::string>{"/v1/completions"});
}

TEST(OpenAiClientTest, StreamsAChat) {
  FakeOpenAiServerOptions o;
  o.event_gap_ms = 1;
  FakeOpenAiServer server(o);
  auto client = OpenAiClient::Create(server.url(), {});
  ASSERT_TRUE(client.ok()) << client.status();
  auto c = StreamOne(**client, OpenAiEndpoint::kChat, 3);
  ASSERT_TRUE(c->status.ok()) << c->status;
  EXPECT_EQ(Texts(*c), "t0,t1,t2,");
  EXPECT_EQ(c->chunks.front().text, "");                // the role delta carries no text
  EXPECT_EQ(c->chunks.back().usage->prompt_tokens, 4);  // characters of "four"
}

TEST(OpenAiClientTest, ListsModelsAndDetokenizes) {
  FakeOpenAiServer server({});
  auto client = OpenAiClient::Create(server.url(), {});
  ASSERT_TRUE(client.ok()) << client.status();
  auto models = (*client)->ListModels();
  ASSERT_TRUE(models.ok()) << models.status();
  ASSERT_EQ(models->size(), 1u);
  EXPECT_EQ((*models)[0].id, "fake-model");
  EXPECT_EQ((*models)[0].vocab_size, 512);
  EXPECT_EQ((*models)[0].context_length, 2048);
  auto text = (*client)->Detokenize("fake-model", {5, 6});
  ASSERT_TRUE(text.ok()) << text.status();
  EXPECT_EQ(*text, "w5 w6");
}

TEST(OpenAiClientTest, ErrorsAreStatuses) {
  FakeOpenAiServerOptions o;
  o.api_key = "secret";
  o.event_gap_ms = 1;
  FakeOpenAiServer server(o);
  auto client = OpenAiClient::Create(server.url(), {});  // no key
  ASSERT_TRUE(client.ok());
  auto c = StreamOne(**client, OpenAiEndpoint::kCompletions, 2);
  EXPECT_EQ(c->status.code(), absl::StatusCode::kUnauthenticated) << c->status;
  EXPECT_NE(c->status.message().find("HTTP 401: invalid API key"), std::string::npos);
  EXPECT_EQ((*client)->ListModels().status().code(), absl::StatusCode::kUnauthenticated);

  FakeOpenAiServerOptions t;
  t.event_gap_ms = 1;
  t.truncate_after = 2;
  FakeOpenAiServer truncating(t);
  client = OpenAiClient::Create(truncating.url(), {});
  ASSERT_TRUE(client.ok());
  c = StreamOne(**client, OpenAiEndpoint::kCompletions, 5);
  EXPECT_EQ(c->status.code(), absl::StatusCode::kDataLoss) << c->status;
  EXPECT_EQ(Texts(*c), "t0,t1,");

  // Nothing listens on the port any more.
  std::string closed_url;
  {
    FakeOpenAiServer gone({});
    closed_url = gone.url();
  }
  client = OpenAiClient::Create(closed_url, {});
  ASSERT_TRUE(client.ok());
  c = StreamOne(**client, OpenAiEndpoint::kCompletions, 1);
  EXPECT_EQ(c->status.code(), absl::StatusCode::kUnavailable) << c->status;
}

TEST(OpenAiClientTest, TimeoutIsDeadlineExceeded) {
  FakeOpenAiServerOptions o;
  o.event_gap_ms = 400;  // events at about 0.4 s and 0.8 s
  FakeOpenAiServer server(o);
  OpenAiClientOptions co;
  co.timeout_s = 0.6;
  auto client = OpenAiClient::Create(server.url(), co);
  ASSERT_TRUE(client.ok());
  auto c = StreamOne(**client, OpenAiEndpoint::kCompletions, 10);
  EXPECT_EQ(c->status.code(), absl::StatusCode::kDeadlineExceeded) << c->status;
  EXPECT_EQ(Texts(*c), "t0,");
}

TEST(OpenAiClientTest, StreamsOverTls) {
  FakeOpenAiServerOptions o;
  o.tls = true;
  o.event_gap_ms = 1;
  FakeOpenAiServer server(o);
  server::testing::ScratchDir dir;
  const std::string ca = dir.Write("ca.pem", server.cert_pem());
  OpenAiClientOptions co;
  co.ca_file = ca;
  auto client = OpenAiClient::Create(server.url(), co);
  ASSERT_TRUE(client.ok()) << client.status();
  auto c = StreamOne(**client, OpenAiEndpoint::kCompletions, 3);
  ASSERT_TRUE(c->status.ok()) << c->status;
  EXPECT_EQ(Texts(*c), "t0,t1,t2,");

  // Without the server's certificate among the trusted ones, the handshake fails.
  auto untrusting = OpenAiClient::Create(server.url(), {});
  ASSERT_TRUE(untrusting.ok()) << untrusting.status();
  c = StreamOne(**untrusting, OpenAiEndpoint::kCompletions, 1);
  EXPECT_EQ(c->status.code(), absl::StatusCode::kUnavailable) << c->status;
  EXPECT_NE(c->status.message().find("TLS handshake"), std::string::npos) << c->status;
}

}  // namespace
}  // namespace kvserve::tools
