// Generation.Chat and ChatComplete against the real server: a conversation is rendered with the
// configured chat template and generated exactly as the same tokens sent to Generate would be;
// the errors name what is missing; Tokenize and GetModelInfo report the chat side.
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "kvserve/v1/generation.grpc.pb.h"
#include "tests/server/grpc/server_process.h"

namespace kvserve::server::testing {
namespace {

// A plain template: every message as "role: content", then "assistant:" (no control tokens, so
// the stories260K vocabulary can say it).
constexpr char kTemplate[] =
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] | trim }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}";

v1::GenerateRequest ChatRequest(const std::vector<std::pair<std::string, std::string>>& turns,
                                int max_tokens) {
  v1::GenerateRequest r;
  for (const auto& [role, content] : turns) {
    v1::ChatMessage* m = r.mutable_chat()->add_messages();
    m->set_role(role);
    m->set_content(content);
  }
  r.set_max_tokens(max_tokens);
  r.mutable_sampling()->set_temperature(0);
  return r;
}

TEST(ChatTest, ConversationIsRenderedByTheTemplateAndGeneratedAsItsTokens) {
  ServerProcess server;
  ScratchDir dir;
  const std::string path = dir.Write("chat.jinja", kTemplate);
  ASSERT_TRUE(server.Start({"model.chat_template=" + path})) << server.Stderr();
  auto stub = server.Stub();

  const std::vector<std::pair<std::string, std::string>> turns = {{"system", "You tell stories."},
                                                                  {"user", "  Once upon a time  "}};
  const v1::GenerateRequest chat = ChatRequest(turns, 24);
  v1::CompleteResponse chat_out;
  {
    grpc::ClientContext context;
    const grpc::Status s = stub->ChatComplete(&context, chat, &chat_out);
    ASSERT_TRUE(s.ok()) << s.error_message();
  }

  // The prompt the template gives, worked out by hand, tokenized without BOS (the template
  // writes none) and generated from its ids.
  const std::string rendered = "system: You tell stories.\nuser: Once upon a time\nassistant:";
  v1::TokenizeRequest tokenize;
  tokenize.set_text(rendered);
  tokenize.set_add_bos(false);
  v1::TokenizeResponse ids;
  {
    grpc::ClientContext context;
    ASSERT_TRUE(stub->Tokenize(&context, tokenize, &ids).ok());
  }
  v1::GenerateRequest plain = chat;
  plain.mutable_token_ids()->mutable_ids()->CopyFrom(ids.token_ids());
  v1::CompleteResponse plain_out;
  {
    grpc::ClientContext context;
    ASSERT_TRUE(stub->Complete(&context, plain, &plain_out).ok());
  }
  EXPECT_EQ(chat_out.usage().prompt_tokens(), ids.token_ids_size());
  EXPECT_EQ(std::vector<int32_t>(chat_out.token_ids().begin(), chat_out.token_ids().end()),
            std::vector<int32_t>(plain_out.token_ids().begin(), plain_out.token_ids().end()));
  EXPECT_EQ(chat_out.text(), plain_out.text());
  EXPECT_FALSE(chat_out.text().empty());

  // Streamed: the same text.
  grpc::ClientContext context;
  auto reader = stub->Chat(&context, chat);
  v1::GenerateResponse message;
  std::string streamed;
  while (reader->Read(&message)) streamed += message.text();
  ASSERT_TRUE(reader->Finish().ok());
  EXPECT_EQ(streamed, chat_out.text());

  // Without a generation prompt the rendered prompt ends after the last message.
  v1::GenerateRequest no_prompt = chat;
  no_prompt.mutable_chat()->set_add_generation_prompt(false);
  v1::CompleteResponse no_prompt_out;
  grpc::ClientContext context2;
  ASSERT_TRUE(stub->ChatComplete(&context2, no_prompt, &no_prompt_out).ok());
  EXPECT_LT(no_prompt_out.usage().prompt_tokens(), chat_out.usage().prompt_tokens());

  v1::ModelInfo info;
  grpc::ClientContext context3;
  ASSERT_TRUE(stub->GetModelInfo(&context3, v1::GetModelInfoRequest(), &info).ok());
  EXPECT_TRUE(info.has_chat_template());
  EXPECT_EQ(info.tokenizer(), "spm");
  ASSERT_GE(info.end_of_generation_ids_size(), 1);
  EXPECT_EQ(info.end_of_generation_ids(0), info.eos_id());
}

TEST(ChatTest, ErrorsNameWhatIsMissing) {
  ServerProcess server;
  ASSERT_TRUE(server.Start()) << server.Stderr();  // stories260K ships no chat template
  auto stub = server.Stub();
  v1::CompleteResponse out;
  {
    grpc::ClientContext context;
    const grpc::Status s = stub->ChatComplete(&context, ChatRequest({{"user", "hi"}}, 4), &out);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(s.error_message().find("model.chat_template"), std::string::npos)
        << s.error_message();
  }
  {
    v1::GenerateRequest text;
    text.set_text("Once upon a time");
    grpc::ClientContext context;
    const grpc::Status s = stub->ChatComplete(&context, text, &out);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_EQ(s.error_message().rfind("chat: required", 0), 0u) << s.error_message();
  }
  {
    v1::GenerateRequest empty;
    empty.mutable_chat();
    grpc::ClientContext context;
    const grpc::Status s = stub->ChatComplete(&context, empty, &out);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  }
}

TEST(ChatTest, TemplateErrorsAndBadMessagesAreInvalidArgument) {
  ServerProcess server;
  ScratchDir dir;
  const std::string path =
      dir.Write("strict.jinja",
                "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first must be user') }}"
                "{% endif %}{% for m in messages %}{{ m['content'] }}{% endfor %}");
  ASSERT_TRUE(server.Start({"model.chat_template=" + path})) << server.Stderr();
  auto stub = server.Stub();
  v1::CompleteResponse out;
  {
    grpc::ClientContext context;
    const grpc::Status s =
        stub->ChatComplete(&context, ChatRequest({{"system", "x"}, {"user", "y"}}, 4), &out);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(s.error_message().find("first must be user"), std::string::npos) << s.error_message();
  }
  {
    grpc::ClientContext context;
    const grpc::Status s = stub->ChatComplete(&context, ChatRequest({{"", "y"}}, 4), &out);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_EQ(s.error_message().rfind("chat.messages[0].role", 0), 0u) << s.error_message();
  }
}

TEST(ChatTest, UnparsableTemplateFileIsAConfigError) {
  ScratchDir dir;
  const std::string path = dir.Write("bad.jinja", "{% for m in messages %}{{ m }");
  const ProcessResult r = RunProcess(
      {KvserveBinary(), "serve", "--config", SourceDir() + "/configs/server.yaml", "--set",
       "model.path=" + ModelPath(), "--set", "model.chat_template=" + path, "--check"});
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("model.chat_template"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("bad.jinja"), std::string::npos) << r.err;
}

// Length of the longest prefix of `s` that is valid UTF-8 (s.size() when all of it is).
size_t ValidUtf8Prefix(const std::string& s) {
  size_t i = 0;
  while (i < s.size()) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    const size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (n == 0 || i + n > s.size()) return i;
    for (size_t k = 1; k < n; ++k) {
      if ((static_cast<unsigned char>(s[i + k]) >> 6) != 2) return i;
    }
    i += n;
  }
  return s.size();
}

std::string ArchModel(const std::string& name) {
  return std::string(KVSERVE_MODELS_DIR) + "/arch/" + name;
}

// A byte-level BPE model with random weights: sampled tokens split multi-byte characters all the
// time, and no stream message may carry half of one.
TEST(ChatBpeTest, StreamedMessagesAreAlwaysWholeUtf8Characters) {
  ServerProcess server;
  ASSERT_TRUE(server.Start({"model.path=" + ArchModel("dev-smol-llama-Q4_K_M.gguf")}))
      << server.Stderr();
  auto stub = server.Stub();
  v1::GenerateRequest r;
  r.set_text("Once upon a time, 東京で");
  r.set_max_tokens(400);
  r.set_ignore_eos(true);
  r.mutable_sampling()->set_temperature(1.5f);
  r.mutable_sampling()->set_seed(7);
  grpc::ClientContext context;
  auto reader = stub->Generate(&context, r);
  v1::GenerateResponse message;
  std::string text;
  int messages = 0;
  int multibyte = 0;
  while (reader->Read(&message)) {
    ++messages;
    EXPECT_EQ(ValidUtf8Prefix(message.text()), message.text().size())
        << "message " << messages << " splits a character";
    for (char c : message.text()) multibyte += (static_cast<unsigned char>(c) & 0xC0) == 0xC0;
    text += message.text();
  }
  ASSERT_TRUE(reader->Finish().ok());
  EXPECT_GT(messages, 10);
  EXPECT_GT(multibyte, 0) << "the sample should hold multi-byte characters: " << text;
}

TEST(ChatBpeTest, ControlTokenTextInAMessageIsInertUnlessAsked) {
  ServerProcess server;
  ASSERT_TRUE(server.Start({"model.path=" + ArchModel("dev-smol-llama-Q4_K_M.gguf"),
                            "model.chat_template=" + std::string(KVSERVE_MODELS_DIR) +
                                "/../chat-templates/Qwen-Qwen2.5-7B-Instruct.jinja"}))
      << server.Stderr();
  auto stub = server.Stub();
  // <|endoftext|> is a control token of this (StarCoder) vocabulary.
  v1::GenerateRequest r = ChatRequest({{"user", "hi<|endoftext|>there"}}, 1);
  v1::CompleteResponse inert;
  {
    grpc::ClientContext context;
    ASSERT_TRUE(stub->ChatComplete(&context, r, &inert).ok());
  }
  r.mutable_chat()->set_parse_special_in_content(true);
  v1::CompleteResponse parsed;
  {
    grpc::ClientContext context;
    ASSERT_TRUE(stub->ChatComplete(&context, r, &parsed).ok());
  }
  // As text, "<|endoftext|>" takes several tokens; parsed, one.
  EXPECT_GT(inert.usage().prompt_tokens(), parsed.usage().prompt_tokens() + 1);
  v1::TokenizeRequest t;
  t.set_text("<|endoftext|>");
  t.set_parse_special(true);
  v1::TokenizeResponse ids;
  grpc::ClientContext context;
  ASSERT_TRUE(stub->Tokenize(&context, t, &ids).ok());
  ASSERT_EQ(ids.token_ids_size(), 1);
  v1::ModelInfo info;
  grpc::ClientContext context2;
  ASSERT_TRUE(stub->GetModelInfo(&context2, v1::GetModelInfoRequest(), &info).ok());
  EXPECT_EQ(info.tokenizer(), "bpe");
  EXPECT_EQ(info.tokenizer_pre(), "smollm");
}

TEST(ChatTest, ClientChatOneTurnPrintsTheReply) {
  ServerProcess server;
  ScratchDir dir;
  const std::string path = dir.Write("chat.jinja", kTemplate);
  ASSERT_TRUE(server.Start({"model.chat_template=" + path})) << server.Stderr();
  auto stub = server.Stub();
  v1::CompleteResponse expected;
  grpc::ClientContext context;
  ASSERT_TRUE(stub->ChatComplete(&context,
                                 ChatRequest({{"system", "Be brief."}, {"user", "Lily"}}, 16),
                                 &expected)
                  .ok());
  const ProcessResult r =
      RunProcess({KvserveBinary(), "client", "chat", "--addr", server.address(), "--system",
                  "Be brief.", "--message", "Lily", "--max-tokens", "16", "--temperature", "0"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, expected.text() + "\n");
}

}  // namespace
}  // namespace kvserve::server::testing
