// The OpenAI-compatible HTTP API against the real server, on the wire: outputs equal to the
// offline greedy generation and to gRPC's, server-sent event framing byte by byte, every error
// status with its JSON error object, keys, body limits, a client that goes away mid-stream
// (its KV freed, seen through the Memory service), drain, and 500 concurrent streams.
#include <signal.h>

#include <algorithm>
#include <regex>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "kvserve/v1/memory.grpc.pb.h"
#include "nlohmann/json.hpp"
#include "tests/server/grpc/server_process.h"
#include "tests/server/http/http_client.h"

namespace kvserve::server::testing {
namespace {

using nlohmann::json;
using ::testing::HasSubstr;

constexpr char kPrompt[] = "Once upon a time";

// The offline greedy completion of kPrompt (without the prompt and the final newline).
std::string ExpectedCompletion(int max_tokens) {
  const std::string out = OfflineGreedy(kPrompt, max_tokens);
  EXPECT_TRUE(absl::StartsWith(out, kPrompt)) << out;
  return out.substr(std::string(kPrompt).size(), out.size() - std::string(kPrompt).size() - 1);
}

json Parse(const std::string& text) {
  json j = json::parse(text, nullptr, false);
  EXPECT_FALSE(j.is_discarded()) << text;
  return j;
}

// The JSON of an SSE event "data: {...}".
json EventJson(const std::string& event) {
  EXPECT_TRUE(absl::StartsWith(event, "data: ")) << event;
  return Parse(event.substr(6));
}

// Checks the error object of a response: status, message naming `param`, and its type.
void ExpectError(const HttpResponse& r, int status, const std::string& param,
                 const std::string& message_part) {
  EXPECT_EQ(r.status, status) << r.body;
  EXPECT_EQ(r.headers.count("content-type") ? r.headers.at("content-type") : "",
            "application/json");
  const json j = Parse(r.body);
  ASSERT_TRUE(j.contains("error")) << r.body;
  const json& e = j["error"];
  EXPECT_TRUE(e["message"].is_string());
  EXPECT_THAT(e["message"].get<std::string>(), HasSubstr(message_part)) << r.body;
  EXPECT_TRUE(e["type"].is_string()) << r.body;
  EXPECT_TRUE(e.contains("code")) << r.body;
  if (param.empty()) {
    EXPECT_TRUE(e["param"].is_null()) << r.body;
  } else {
    EXPECT_EQ(e["param"], param) << r.body;
  }
}

class HttpApiTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(server_.Start()) << server_.Stderr(); }
  int port() const { return server_.http_port(); }
  HttpResponse Post(const std::string& path, const json& body) {
    return HttpCall(port(), "POST", path, body.dump());
  }
  ServerProcess server_;
};

TEST_F(HttpApiTest, ModelsListsTheServedModel) {
  ASSERT_GT(port(), 0) << server_.Stderr();
  const HttpResponse r = HttpCall(port(), "GET", "/v1/models");
  ASSERT_EQ(r.status, 200) << r.body;
  const json j = Parse(r.body);
  EXPECT_EQ(j["object"], "list");
  ASSERT_EQ(j["data"].size(), 1u);
  EXPECT_EQ(j["data"][0]["object"], "model");
  EXPECT_EQ(j["data"][0]["max_model_len"], 2048);  // stories260K's context
  const std::string id = j["data"][0]["id"];
  EXPECT_EQ(HttpCall(port(), "GET", "/v1/models/" + id).status, 200);
  ExpectError(HttpCall(port(), "GET", "/v1/models/gpt-4"), 404, "model", "gpt-4");
}

TEST_F(HttpApiTest, GreedyCompletionIsTheOfflineGreedyText) {
  const HttpResponse r =
      Post("/v1/completions", {{"prompt", kPrompt}, {"max_tokens", 24}, {"temperature", 0}});
  ASSERT_EQ(r.status, 200) << r.body;
  const json j = Parse(r.body);
  EXPECT_EQ(j["object"], "text_completion");
  EXPECT_TRUE(absl::StartsWith(j["id"].get<std::string>(), "cmpl-"));
  ASSERT_EQ(j["choices"].size(), 1u);
  EXPECT_EQ(j["choices"][0]["text"], ExpectedCompletion(24));
  EXPECT_EQ(j["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(j["choices"][0]["index"], 0);
  // Usage: BOS + the prompt's tokens (as /tokenize counts them), 24 generated.
  const HttpResponse tok = Post("/tokenize", {{"prompt", kPrompt}});
  ASSERT_EQ(tok.status, 200) << tok.body;
  EXPECT_EQ(j["usage"]["prompt_tokens"], Parse(tok.body)["count"]);
  EXPECT_EQ(j["usage"]["completion_tokens"], 24);
  EXPECT_EQ(j["usage"]["total_tokens"], j["usage"]["prompt_tokens"].get<int>() + 24);
}

TEST_F(HttpApiTest, CompletionEqualsGrpcGenerateForTokenIdPrompts) {
  auto stub = server_.Stub();
  const v1::GenerateRequest grpc_request = TokenPrompt(20, 7, 30);
  const StreamResult grpc_out = ReadStream(*stub, grpc_request);
  ASSERT_TRUE(grpc_out.status.ok()) << grpc_out.status.error_message();
  std::vector<int32_t> ids(grpc_request.token_ids().ids().begin(),
                           grpc_request.token_ids().ids().end());
  const HttpResponse r =
      Post("/v1/completions", {{"prompt", ids}, {"max_tokens", 30}, {"temperature", 0}});
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(Parse(r.body)["choices"][0]["text"], grpc_out.text);
}

TEST_F(HttpApiTest, StreamIsServerSentEventsEndingWithDone) {
  HttpStream stream;
  ASSERT_TRUE(stream.Open(port(), "/v1/completions",
                          json{{"prompt", kPrompt},
                               {"max_tokens", 40},
                               {"temperature", 0},
                               {"stream", true},
                               {"stream_options", {{"include_usage", true}}}}
                              .dump()));
  EXPECT_EQ(stream.status(), 200);
  EXPECT_EQ(stream.headers().at("content-type"), "text/event-stream");
  EXPECT_EQ(stream.headers().at("transfer-encoding"), "chunked");
  const std::vector<std::string> events = stream.ReadAll();
  ASSERT_TRUE(stream.complete());
  // Every event is "data: " + one line of JSON + a blank line; the last is [DONE].
  std::string rebuilt;
  for (const std::string& e : events) absl::StrAppend(&rebuilt, e, "\n\n");
  EXPECT_EQ(rebuilt, stream.body());
  ASSERT_GE(events.size(), 3u);
  EXPECT_EQ(events.back(), "data: [DONE]");
  std::string text;
  std::string id;
  int finish_chunks = 0;
  for (size_t i = 0; i + 2 < events.size(); ++i) {
    EXPECT_EQ(events[i].find('\n'), std::string::npos) << events[i];
    const json c = EventJson(events[i]);
    EXPECT_EQ(c["object"], "text_completion");
    if (id.empty()) id = c["id"];
    EXPECT_EQ(c["id"], id);
    ASSERT_EQ(c["choices"].size(), 1u);
    text += c["choices"][0]["text"].get<std::string>();
    if (!c["choices"][0]["finish_reason"].is_null()) {
      ++finish_chunks;
      EXPECT_EQ(c["choices"][0]["finish_reason"], "length");
      EXPECT_EQ(i + 3, events.size()) << "the finish_reason comes in the last choice chunk";
    }
  }
  EXPECT_EQ(finish_chunks, 1);
  EXPECT_EQ(text, ExpectedCompletion(40));
  // include_usage: a last chunk with no choices and the usage.
  const json usage = EventJson(events[events.size() - 2]);
  EXPECT_TRUE(usage["choices"].empty());
  EXPECT_EQ(usage["usage"]["completion_tokens"], 40);
  EXPECT_EQ(usage["id"], id);
}

TEST_F(HttpApiTest, EchoSeedsNAndStopStrings) {
  // echo: the prompt's text first.
  HttpResponse r =
      Post("/v1/completions",
           {{"prompt", kPrompt}, {"max_tokens", 10}, {"temperature", 0}, {"echo", true}});
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(Parse(r.body)["choices"][0]["text"], kPrompt + ExpectedCompletion(10));
  // A stop string: the text ends before it, finish_reason stop.
  const std::string full = ExpectedCompletion(24);
  const size_t lily = full.find("Lily");
  ASSERT_NE(lily, std::string::npos) << full;
  r = Post("/v1/completions",
           {{"prompt", kPrompt}, {"max_tokens", 24}, {"temperature", 0}, {"stop", "Lily"}});
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(Parse(r.body)["choices"][0]["text"], full.substr(0, lily));
  EXPECT_EQ(Parse(r.body)["choices"][0]["finish_reason"], "stop");
  // n = 3 sampled with a seed: choice j uses seed + j, so the same request twice gives the same
  // choices, and a request with seed + 1 gives choice 1 as its choice 0.
  const json sampled = {
      {"prompt", kPrompt}, {"max_tokens", 16}, {"temperature", 1.0}, {"n", 3}, {"seed", 1234}};
  const json a = Parse(Post("/v1/completions", sampled).body);
  const json b = Parse(Post("/v1/completions", sampled).body);
  ASSERT_EQ(a["choices"].size(), 3u) << a.dump();
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(a["choices"][i]["index"], i);
    EXPECT_EQ(a["choices"][i]["text"], b["choices"][i]["text"]);
  }
  EXPECT_NE(a["choices"][0]["text"], a["choices"][1]["text"]);
  json shifted = sampled;
  shifted["seed"] = 1235;
  shifted["n"] = 1;
  EXPECT_EQ(Parse(Post("/v1/completions", shifted).body)["choices"][0]["text"],
            a["choices"][1]["text"]);
  // Two prompts at once: a choice per prompt, in order, each as it would be alone.
  r = Post("/v1/completions",
           {{"prompt", {kPrompt, "The cat"}}, {"max_tokens", 10}, {"temperature", 0}});
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(Parse(r.body)["choices"][0]["text"], ExpectedCompletion(10));
  EXPECT_EQ(Parse(r.body)["usage"]["completion_tokens"], 20);
}

TEST_F(HttpApiTest, LogprobsAndPenaltiesReachTheEngine) {
  // Greedy with logprobs: each token is its step's most probable one, so its logprob is the
  // first of its top alternatives; the tokens' bytes spell the text; offsets add up.
  HttpResponse r =
      Post("/v1/completions",
           {{"prompt", kPrompt}, {"max_tokens", 12}, {"temperature", 0}, {"logprobs", 3}});
  ASSERT_EQ(r.status, 200) << r.body;
  json choice = Parse(r.body)["choices"][0];
  const json& lp = choice["logprobs"];
  ASSERT_EQ(lp["tokens"].size(), 12u) << r.body;
  std::string spelled;
  for (size_t i = 0; i < 12; ++i) {
    EXPECT_EQ(lp["text_offset"][i], spelled.size());
    spelled += lp["tokens"][i].get<std::string>();
    ASSERT_EQ(lp["top_logprobs"][i].size(), 3u);
    float best = -1e30f;
    for (auto& [token, value] : lp["top_logprobs"][i].items())
      best = std::max(best, value.get<float>());
    EXPECT_FLOAT_EQ(lp["token_logprobs"][i].get<float>(), best);
    EXPECT_LE(lp["token_logprobs"][i].get<float>(), 0.0f);
  }
  EXPECT_EQ(spelled, choice["text"]);
  EXPECT_EQ(choice["text"], ExpectedCompletion(12));
  // Penalties: the same output as gRPC with the same fields, and different from none.
  v1::GenerateRequest penalised = GreedyRequest(kPrompt, 40);
  penalised.mutable_sampling()->set_frequency_penalty(1.5f);
  penalised.mutable_sampling()->set_presence_penalty(0.5f);
  const StreamResult grpc_out = ReadStream(*server_.Stub(), penalised);
  ASSERT_TRUE(grpc_out.status.ok()) << grpc_out.status.error_message();
  r = Post("/v1/completions", {{"prompt", kPrompt},
                               {"max_tokens", 40},
                               {"temperature", 0},
                               {"frequency_penalty", 1.5},
                               {"presence_penalty", 0.5}});
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(Parse(r.body)["choices"][0]["text"], grpc_out.text);
  EXPECT_NE(grpc_out.text, ExpectedCompletion(40));
  ExpectError(Post("/v1/completions", {{"prompt", kPrompt}, {"presence_penalty", 3}}), 400,
              "presence_penalty", "[-2, 2]");
  ExpectError(Post("/v1/completions", {{"prompt", kPrompt}, {"logprobs", 21}}), 400, "logprobs",
              "logprobs: must be");
}

TEST_F(HttpApiTest, BadRequestsAre400NamingTheField) {
  ExpectError(HttpCall(port(), "POST", "/v1/completions", "{\"prompt\": \"x\""), 400, "",
              "not valid JSON");
  ExpectError(HttpCall(port(), "POST", "/v1/completions", "[1, 2]"), 400, "", "JSON object");
  ExpectError(Post("/v1/completions", {{"prompt", kPrompt}, {"temperature", "hot"}}), 400,
              "temperature", "temperature: must be a number in [0, 2]");
  ExpectError(Post("/v1/completions", {{"prompt", kPrompt}, {"top_p", 1.5}}), 400, "top_p",
              "got 1.5");
  ExpectError(Post("/v1/completions", {{"prompt", kPrompt}, {"max_tokens", 100000}}), 400,
              "max_tokens", "max_tokens: must be at most");
  ExpectError(Post("/v1/completions", {{"prompt", {1, 2, 9999}}}), 400, "prompt[2]",
              "token id 9999 is outside the vocabulary");
  ExpectError(Post("/v1/completions", {{"prompt", kPrompt}, {"best_of_three", true}}), 400,
              "best_of_three", "unknown field 'best_of_three'");
  ExpectError(Post("/v1/completions", {{"prompt", kPrompt}, {"logit_bias", {{"5", 10}}}}), 400,
              "logit_bias", "not supported");
  ExpectError(Post("/v1/completions", {{"max_tokens", 5}}), 400, "prompt", "prompt: is required");
  ExpectError(Post("/v1/completions", {{"prompt", kPrompt}, {"n", 0}}), 400, "n", "n: must be");
  // stories260K ships no chat template and the server sets none: chat names the key.
  ExpectError(Post("/v1/chat/completions", {{"messages", {{{"role", "user"}, {"content", "hi"}}}}}),
              400, "messages", "model.chat_template");
  ExpectError(Post("/v1/completions", {{"prompt", kPrompt}, {"model", "gpt-4"}}), 404, "model",
              "gpt-4");
  ExpectError(HttpCall(port(), "GET", "/v1/completions"), 405, "", "use POST");
  ExpectError(HttpCall(port(), "GET", "/v2/nothing"), 404, "", "no such endpoint");
  // A request line that is not HTTP gets no response and the server goes on.
  HttpRaw(port(), "NOT HTTP AT ALL\r\n\r\n", absl::Seconds(5));
  EXPECT_EQ(HttpCall(port(), "GET", "/health").status, 200);
}

TEST_F(HttpApiTest, TokenizeAndDetokenizeRoundTrip) {
  const HttpResponse t = Post("/tokenize", {{"prompt", kPrompt}});
  ASSERT_EQ(t.status, 200) << t.body;
  const json ids = Parse(t.body)["tokens"];
  EXPECT_EQ(ids[0], 1);  // BOS
  const HttpResponse d = Post("/detokenize", {{"tokens", ids}});
  ASSERT_EQ(d.status, 200) << d.body;
  EXPECT_EQ(Parse(d.body)["prompt"], kPrompt);
  ExpectError(Post("/detokenize", {{"tokens", {1, 600}}}), 400, "tokens[1]", "tokens[1]");
}

TEST(HttpApiLimitsTest, LargeBodiesAre413AndAFullQueueIs429) {
  ServerProcess server;
  ASSERT_TRUE(server.Start({"http.max_body_bytes=2048", "scheduler.max_running_requests=1",
                            "scheduler.max_waiting_requests=1"}))
      << server.Stderr();
  const int port = server.http_port();
  ExpectError(
      HttpCall(port, "POST", "/v1/completions", json{{"prompt", std::string(4096, 'a')}}.dump()),
      413, "", "http.max_body_bytes");
  // One running, one waiting: the third is refused with 429.
  const std::string long_request = json{
      {"prompt", kPrompt},
      {"max_tokens", 2000},
      {"ignore_eos", true},
      {"temperature", 0},
      {"stream", true}}.dump();
  HttpStream running;
  ASSERT_TRUE(running.Open(port, "/v1/completions", long_request));
  ASSERT_TRUE(running.NextEvent().has_value());
  HttpStream waiting;
  ASSERT_TRUE(waiting.Open(port, "/v1/completions", long_request));
  const HttpResponse refused = HttpCall(port, "POST", "/v1/completions", long_request);
  ExpectError(refused, 429, "", "scheduler.max_waiting_requests");
}

// curl sends `Expect: 100-continue` before a large body and waits for the server's go-ahead
// (here for up to 30 s): the server answers it at once, and refuses a body over the limit
// before it is sent.
TEST(HttpApiLimitsTest, ExpectContinueIsAnsweredAtOnce) {
  if (RunProcess({"/bin/sh", "-c", "command -v curl"}).exit_code != 0) {
    GTEST_SKIP() << "curl is not installed";
  }
  ServerProcess server;
  ASSERT_TRUE(server.Start({"http.max_body_bytes=100000"})) << server.Stderr();
  const std::string url = absl::StrCat("http://127.0.0.1:", server.http_port(), "/v1/completions");
  // A valid body of about 20 KB: the prompt as token ids.
  std::vector<int> ids(4000, 5);
  ids[0] = 1;
  const std::string body = server.dir().Write(
      "body.json", json{{"prompt", ids}, {"max_tokens", 2}, {"temperature", 0}}.dump());
  const absl::Time start = absl::Now();
  ProcessResult r = RunProcess(
      {"/usr/bin/env", "curl", "-sS", "-H", "Expect: 100-continue", "--expect100-timeout", "30",
       "-w", "\n%{http_code}", url, "--data-binary", "@" + body},
      absl::Seconds(60));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(absl::EndsWith(r.out, "\n400")) << r.out;  // 4000 ids: longer than the context
  EXPECT_THAT(r.out, HasSubstr("the prompt has 4000 tokens"));
  EXPECT_LT(absl::Now() - start, absl::Seconds(10));
  // Over the limit: 413 before the body is sent.
  std::vector<int> more(60000, 5);  // 120 KB
  const std::string big = server.dir().Write("big.json", json{{"prompt", more}}.dump());
  r = RunProcess(
      {"/usr/bin/env", "curl", "-sS", "-H", "Expect: 100-continue", "--expect100-timeout", "30",
       "-w", "\n%{http_code}", url, "--data-binary", "@" + big},
      absl::Seconds(60));
  EXPECT_TRUE(absl::EndsWith(r.out, "\n413")) << r.out << r.err;
  EXPECT_LT(absl::Now() - start, absl::Seconds(20));
}

TEST(HttpApiAuthTest, KeysAreRequiredLikeGrpcAndHealthIsOpen) {
  ServerProcess server;
  const std::string keys = server.dir().Write("keys", "secret-one\nsecret-two\n");
  ASSERT_TRUE(server.Start({"server.api_keys_file=" + keys, "server.auth_on_loopback=true"}))
      << server.Stderr();
  const int port = server.http_port();
  const std::string body = json{{"prompt", kPrompt}, {"max_tokens", 4}}.dump();
  ExpectError(HttpCall(port, "POST", "/v1/completions", body), 401, "", "");
  ExpectError(HttpCall(port, "POST", "/v1/completions", body, {"Authorization: Bearer nope"}), 401,
              "", "");
  ExpectError(HttpCall(port, "GET", "/v1/models"), 401, "", "");
  EXPECT_EQ(
      HttpCall(port, "POST", "/v1/completions", body, {"Authorization: Bearer secret-two"}).status,
      200);
  EXPECT_EQ(HttpCall(port, "GET", "/health").status, 200);
}

// Memory.GetStats on the server's gRPC port.
v1::MemoryStats Stats(const ServerProcess& server) {
  auto stub = v1::Memory::NewStub(server.Channel());
  grpc::ClientContext context;
  v1::MemoryStats stats;
  EXPECT_TRUE(stub->GetStats(&context, v1::GetStatsRequest(), &stats).ok());
  return stats;
}

TEST_F(HttpApiTest, ClientThatGoesAwayMidStreamFreesItsKv) {
  HttpStream stream;
  ASSERT_TRUE(stream.Open(port(), "/v1/completions",
                          json{{"prompt", kPrompt},
                               {"max_tokens", 2000},
                               {"ignore_eos", true},
                               {"temperature", 0},
                               {"stream", true}}
                              .dump()));
  ASSERT_TRUE(stream.NextEvent().has_value());
  EXPECT_EQ(Stats(server_).running_requests(), 1);
  EXPECT_GT(Stats(server_).active_blocks(), 0);
  stream.Close();
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  v1::MemoryStats stats;
  do {
    stats = Stats(server_);
    if (stats.running_requests() == 0 && stats.active_blocks() == 0) break;
    absl::SleepFor(absl::Milliseconds(20));
  } while (absl::Now() < deadline);
  EXPECT_EQ(stats.running_requests(), 0);
  EXPECT_EQ(stats.active_blocks(), 0);
  EXPECT_EQ(stats.requests_cancelled(), 1);
  EXPECT_TRUE(server_.WaitForStderr("(client gone)", absl::Seconds(5))) << server_.Stderr();
}

TEST_F(HttpApiTest, DrainRefusesNewRequestsAndFinishesRunningStreams) {
  HttpStream stream;
  ASSERT_TRUE(stream.Open(port(), "/v1/completions",
                          json{{"prompt", kPrompt},
                               {"max_tokens", 1500},
                               {"ignore_eos", true},
                               {"temperature", 0},
                               {"stream", true}}
                              .dump()));
  ASSERT_TRUE(stream.NextEvent().has_value());
  ASSERT_EQ(kill(server_.pid(), SIGTERM), 0);
  ASSERT_TRUE(server_.WaitForStderr("draining", absl::Seconds(10)));
  ExpectError(Post("/v1/completions", {{"prompt", kPrompt}, {"max_tokens", 4}}), 503, "",
              "shutting down");
  EXPECT_EQ(HttpCall(port(), "GET", "/health").status, 503);
  const std::vector<std::string> rest = stream.ReadAll();
  ASSERT_FALSE(rest.empty());
  EXPECT_EQ(rest.back(), "data: [DONE]");
  EXPECT_TRUE(stream.complete());
  int completion_tokens = 0;
  for (const std::string& e : rest) {
    if (e == "data: [DONE]") continue;
    const json c = EventJson(e);
    if (!c["choices"].empty() && !c["choices"][0]["finish_reason"].is_null()) {
      EXPECT_EQ(c["choices"][0]["finish_reason"], "length");
      ++completion_tokens;
    }
  }
  EXPECT_EQ(completion_tokens, 1);
  EXPECT_EQ(server_.SignalAndWait(0, absl::Seconds(20)), 0);
}

TEST(HttpApiChatTest, ChatIsRenderedByTheTemplateAndEqualsGrpcChat) {
  ServerProcess server;
  const std::string path = server.dir().Write(
      "chat.jinja",
      "{% for m in messages %}{{ m['role'] }}: {{ m['content'] | trim }}\n{% endfor %}"
      "{% if add_generation_prompt %}assistant:{% endif %}");
  ASSERT_TRUE(server.Start({"model.chat_template=" + path})) << server.Stderr();
  const json messages = {{{"role", "system"}, {"content", "You tell stories."}},
                         {{"role", "user"}, {"content", "Once upon a time"}}};
  // gRPC ChatComplete on the same conversation.
  v1::GenerateRequest chat;
  for (const json& m : messages) {
    v1::ChatMessage* msg = chat.mutable_chat()->add_messages();
    msg->set_role(m["role"]);
    msg->set_content(m["content"]);
  }
  chat.set_max_tokens(30);
  chat.mutable_sampling()->set_temperature(0);
  v1::CompleteResponse grpc_out;
  {
    grpc::ClientContext context;
    ASSERT_TRUE(server.Stub()->ChatComplete(&context, chat, &grpc_out).ok());
  }
  const HttpResponse r =
      HttpCall(server.http_port(), "POST", "/v1/chat/completions",
               json{{"messages", messages}, {"max_tokens", 30}, {"temperature", 0}}.dump());
  ASSERT_EQ(r.status, 200) << r.body;
  const json j = Parse(r.body);
  EXPECT_EQ(j["object"], "chat.completion");
  EXPECT_EQ(j["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(j["choices"][0]["message"]["content"], grpc_out.text());
  EXPECT_EQ(j["usage"]["prompt_tokens"], grpc_out.usage().prompt_tokens());
  // Streamed: a first delta with the role, then content deltas, one finish_reason, [DONE].
  HttpStream stream;
  ASSERT_TRUE(stream.Open(
      server.http_port(), "/v1/chat/completions",
      json{{"messages", messages}, {"max_tokens", 30}, {"temperature", 0}, {"stream", true}}
          .dump()));
  const std::vector<std::string> events = stream.ReadAll();
  ASSERT_GE(events.size(), 3u);
  EXPECT_EQ(events.back(), "data: [DONE]");
  const json first = EventJson(events[0]);
  EXPECT_EQ(first["object"], "chat.completion.chunk");
  EXPECT_EQ(first["choices"][0]["delta"]["role"], "assistant");
  std::string content;
  for (size_t i = 1; i + 1 < events.size(); ++i) {
    const json c = EventJson(events[i]);
    EXPECT_FALSE(c["choices"][0]["delta"].contains("role"));
    if (c["choices"][0]["delta"].contains("content")) {
      content += c["choices"][0]["delta"]["content"].get<std::string>();
    }
  }
  EXPECT_EQ(content, grpc_out.text());
  EXPECT_EQ(EventJson(events[events.size() - 2])["choices"][0]["finish_reason"], "length");
}

TEST(HttpApiMetricsTest, HttpRequestsAreCountedWithTheProtocolLabel) {
  ServerProcess server;
  ASSERT_TRUE(server.Start({"metrics.address=127.0.0.1:0"})) << server.Stderr();
  std::smatch m;
  const std::string err = server.Stderr();
  ASSERT_TRUE(std::regex_search(err, m, std::regex(R"(metrics on http://[0-9.]+:([0-9]+))")))
      << err;
  const int metrics_port = std::stoi(m[1].str());
  ASSERT_EQ(HttpCall(server.http_port(), "POST", "/v1/completions",
                     json{{"prompt", kPrompt}, {"max_tokens", 5}, {"temperature", 0}}.dump())
                .status,
            200);
  // A client that goes away mid-stream is counted as cancelled.
  {
    HttpStream stream;
    ASSERT_TRUE(stream.Open(
        server.http_port(), "/v1/completions",
        json{{"prompt", kPrompt}, {"max_tokens", 2000}, {"ignore_eos", true}, {"stream", true}}
            .dump()));
    ASSERT_TRUE(stream.NextEvent().has_value());
  }
  ASSERT_TRUE(server.WaitForStderr("(client gone)", absl::Seconds(10))) << server.Stderr();
  const std::string page = HttpCall(metrics_port, "GET", "/metrics").body;
  auto value = [&page](const std::string& series) {
    const size_t at = page.find("\n" + series + " ");
    EXPECT_NE(at, std::string::npos) << series << "\n" << page;
    return at == std::string::npos ? -1.0 : std::stod(page.substr(at + series.size() + 2));
  };
  EXPECT_EQ(value(R"(kvserve_requests_total{status="ok",protocol="http"})"), 1);
  EXPECT_EQ(value(R"(kvserve_requests_total{status="cancelled",protocol="http"})"), 1);
  EXPECT_EQ(value(R"(kvserve_requests_total{status="ok",protocol="grpc"})"), 0);
  EXPECT_EQ(value(R"(kvserve_time_to_first_token_seconds_count{protocol="http"})"), 2);
  // The first request's 4 gaps, and those of what the second generated before it ended.
  EXPECT_GE(value(R"(kvserve_inter_token_latency_seconds_count{protocol="http"})"), 4);
}

// With server.tls set, the HTTP port speaks HTTPS with the gRPC certificate (curl checks it).
TEST(HttpApiTlsTest, HttpsWithTheServerCertificate) {
  if (RunProcess({"/usr/bin/openssl", "version"}).exit_code != 0 ||
      RunProcess({"/bin/sh", "-c", "command -v curl"}).exit_code != 0) {
    GTEST_SKIP() << "openssl or curl is not installed; skipping the HTTPS test";
  }
  ServerProcess server;
  const std::string cert = server.dir().path() + "/cert.pem";
  const std::string key = server.dir().path() + "/key.pem";
  ProcessResult gen =
      RunProcess({"/usr/bin/openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                  key, "-out", cert, "-days", "1", "-subj", "/CN=localhost", "-addext",
                  "subjectAltName=IP:127.0.0.1,DNS:localhost"});
  ASSERT_EQ(gen.exit_code, 0) << gen.err;
  ASSERT_TRUE(server.Start({"server.tls.cert_file=" + cert, "server.tls.key_file=" + key}))
      << server.Stderr();
  EXPECT_TRUE(absl::StrContains(server.Stderr(), "HTTP API on https://")) << server.Stderr();
  const std::string url = absl::StrCat("https://127.0.0.1:", server.http_port());
  ProcessResult r =
      RunProcess({"/usr/bin/env", "curl", "-sS", "--cacert", cert, url + "/v1/completions", "-d",
                  json{{"prompt", kPrompt}, {"max_tokens", 12}, {"temperature", 0}}.dump()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(Parse(r.out)["choices"][0]["text"], ExpectedCompletion(12));
  // Streaming over TLS too.
  r = RunProcess({"/usr/bin/env", "curl", "-sSN", "--cacert", cert, url + "/v1/completions", "-d",
                  json{{"prompt", kPrompt}, {"max_tokens", 12}, {"stream", true}}.dump()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(absl::EndsWith(r.out, "data: [DONE]\n\n")) << r.out;
  // Plain HTTP to the TLS port gets no HTTP response.
  const HttpResponse plain =
      HttpCall(server.http_port(), "GET", "/health", "", {}, absl::Seconds(5));
  EXPECT_NE(plain.status, 200);
}

TEST(HttpApiConcurrencyTest, FiveHundredConcurrentStreamsAllComplete) {
  ServerProcess server;
  ASSERT_TRUE(server.Start({"scheduler.max_waiting_requests=1024"})) << server.Stderr();
  constexpr int kStreams = 500;
  std::vector<std::unique_ptr<HttpStream>> streams;
  const std::string body = json{
      {"prompt", kPrompt},
      {"max_tokens", 8},
      {"ignore_eos", true},
      {"temperature", 0},
      {"stream", true}}.dump();
  for (int i = 0; i < kStreams; ++i) {
    streams.push_back(std::make_unique<HttpStream>());
    ASSERT_TRUE(streams.back()->Open(server.http_port(), "/v1/completions", body)) << i;
  }
  const std::string expected = ExpectedCompletion(8);
  for (int i = 0; i < kStreams; ++i) {
    EXPECT_EQ(streams[i]->status(), 200) << i;
    const std::vector<std::string> events = streams[i]->ReadAll();
    ASSERT_FALSE(events.empty()) << i;
    EXPECT_EQ(events.back(), "data: [DONE]") << i;
    std::string text;
    for (size_t e = 0; e + 1 < events.size(); ++e) {
      text += EventJson(events[e])["choices"][0]["text"].get<std::string>();
    }
    EXPECT_EQ(text, expected) << i;
  }
}

}  // namespace
}  // namespace kvserve::server::testing
