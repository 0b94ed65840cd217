// The official OpenAI SDK for Node (npm `openai`, pinned by tests/server/http/openai_sdk/
// package-lock.json, installed by scripts/install-node-deps.sh) against the live server:
// openai_sdk/sdk_check.mjs lists the models, completes, chats (whole and streamed) and makes two
// bad calls; its outputs must equal what the gRPC API gives for the same requests.
#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/server/grpc/server_process.h"

namespace kvserve::server::testing {
namespace {

using nlohmann::json;
using ::testing::HasSubstr;

constexpr char kPrompt[] = "Once upon a time";

TEST(OpenAiSdkTest, NodeSdkGetsWhatGrpcGives) {
  if (RunProcess({"/bin/sh", "-c", "command -v node"}).exit_code != 0) {
    GTEST_SKIP() << "node is not installed; skipping the OpenAI SDK test";
  }
  const std::string dir = SourceDir() + "/tests/server/http/openai_sdk";
  ASSERT_EQ(RunProcess({"/bin/sh", "-c", "test -d '" + dir + "/node_modules/openai'"}).exit_code, 0)
      << "the OpenAI SDK is not installed: run scripts/install-node-deps.sh";

  ServerProcess server;
  const std::string keys = server.dir().Write("keys", "sdk-key\n");
  const std::string chat_template = server.dir().Write(
      "chat.jinja",
      "{% for m in messages %}{{ m['role'] }}: {{ m['content'] | trim }}\n{% endfor %}"
      "{% if add_generation_prompt %}assistant:{% endif %}");
  ASSERT_TRUE(server.Start({"model.chat_template=" + chat_template, "server.api_keys_file=" + keys,
                            "server.auth_on_loopback=true"}))
      << server.Stderr();

  // What gRPC gives for the same requests.
  auto stub = server.Stub();
  auto call = [&](const v1::GenerateRequest& request, bool chat) {
    grpc::ClientContext context;
    context.AddMetadata("authorization", "Bearer sdk-key");
    v1::CompleteResponse out;
    const grpc::Status s = chat ? stub->ChatComplete(&context, request, &out)
                                : stub->Complete(&context, request, &out);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return out;
  };
  const v1::CompleteResponse completion = call(GreedyRequest(kPrompt, 24), false);
  v1::GenerateRequest chat;
  for (const auto& [role, content] :
       {std::pair<std::string, std::string>{"system", "You tell stories."}, {"user", kPrompt}}) {
    v1::ChatMessage* m = chat.mutable_chat()->add_messages();
    m->set_role(role);
    m->set_content(content);
  }
  chat.set_max_tokens(30);
  chat.mutable_sampling()->set_temperature(0);
  const v1::CompleteResponse chat_out = call(chat, true);

  const ProcessResult run =
      RunProcess({"/usr/bin/env", "node", dir + "/sdk_check.mjs",
                  absl::StrCat("http://127.0.0.1:", server.http_port(), "/v1"), "sdk-key", kPrompt},
                 absl::Seconds(120));
  ASSERT_EQ(run.exit_code, 0) << run.err << run.out;
  const json out = json::parse(run.out, nullptr, false);
  ASSERT_FALSE(out.is_discarded()) << run.out;

  ASSERT_EQ(out["models"].size(), 1u);
  EXPECT_EQ(out["completion"]["object"], "text_completion");
  EXPECT_EQ(out["completion"]["text"], completion.text());
  EXPECT_EQ(out["completion"]["finish_reason"], "length");
  EXPECT_EQ(out["completion"]["usage"]["prompt_tokens"], completion.usage().prompt_tokens());
  EXPECT_EQ(out["completion"]["usage"]["completion_tokens"], 24);

  EXPECT_EQ(out["chat"]["role"], "assistant");
  EXPECT_EQ(out["chat"]["content"], chat_out.text());
  EXPECT_EQ(out["chat"]["usage"]["prompt_tokens"], chat_out.usage().prompt_tokens());
  EXPECT_EQ(out["chat"]["usage"]["completion_tokens"], chat_out.usage().completion_tokens());

  // Streamed chat: the same greedy text, the role once, one finish_reason, the usage at the end.
  EXPECT_EQ(out["stream"]["content"], chat_out.text());
  EXPECT_EQ(out["stream"]["roles"], json::array({"assistant"}));
  EXPECT_EQ(out["stream"]["finish_reasons"].size(), 1u);
  EXPECT_EQ(out["stream"]["usage"]["completion_tokens"], chat_out.usage().completion_tokens());
  EXPECT_GT(out["stream"]["chunks"].get<int>(), 2);

  // Errors arrive as the SDK's typed errors with the status, the field and the message.
  EXPECT_EQ(out["bad_top_p"]["name"], "BadRequestError");
  EXPECT_EQ(out["bad_top_p"]["status"], 400);
  EXPECT_EQ(out["bad_top_p"]["param"], "top_p");
  EXPECT_THAT(out["bad_top_p"]["message"].get<std::string>(), HasSubstr("top_p: must be"));
  EXPECT_EQ(out["unknown_model"]["name"], "NotFoundError");
  EXPECT_EQ(out["unknown_model"]["status"], 404);
  EXPECT_EQ(out["unknown_model"]["code"], "model_not_found");
}

}  // namespace
}  // namespace kvserve::server::testing
