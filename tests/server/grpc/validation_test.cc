// Bad requests get INVALID_ARGUMENT naming the proto field, oversized ones RESOURCE_EXHAUSTED, and
// the server keeps serving. Also Tokenize, Detokenize, GetModelInfo and reflection.
#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "grpcpp/generic/generic_stub.h"
#include "gtest/gtest.h"
#include "tests/server/grpc/server_process.h"

namespace kvserve::server::testing {
namespace {

struct BadCase {
  std::string name;
  std::function<void(v1::GenerateRequest&)> mutate;
  std::string field;  // the message must start with this
};

std::vector<BadCase> BadCases() {
  const float nan = std::nanf("");
  return {
      {"no prompt", [](v1::GenerateRequest& r) { r.clear_prompt(); }, "prompt:"},
      {"empty text", [](v1::GenerateRequest& r) { r.set_text(""); }, "text:"},
      {"empty token ids", [](v1::GenerateRequest& r) { r.mutable_token_ids(); }, "token_ids.ids:"},
      {"token id above vocabulary",
       [](v1::GenerateRequest& r) {
         r.mutable_token_ids()->add_ids(1);
         r.mutable_token_ids()->add_ids(512);
       },
       "token_ids.ids[1]:"},
      {"negative token id", [](v1::GenerateRequest& r) { r.mutable_token_ids()->add_ids(-3); },
       "token_ids.ids[0]:"},
      {"max_tokens 0", [](v1::GenerateRequest& r) { r.set_max_tokens(0); }, "max_tokens:"},
      {"max_tokens negative", [](v1::GenerateRequest& r) { r.set_max_tokens(-4); }, "max_tokens:"},
      {"max_tokens above limit", [](v1::GenerateRequest& r) { r.set_max_tokens(1000000); },
       "max_tokens:"},
      {"temperature negative",
       [](v1::GenerateRequest& r) { r.mutable_sampling()->set_temperature(-0.5f); },
       "sampling.temperature:"},
      {"temperature NaN",
       [nan](v1::GenerateRequest& r) { r.mutable_sampling()->set_temperature(nan); },
       "sampling.temperature:"},
      {"top_p zero", [](v1::GenerateRequest& r) { r.mutable_sampling()->set_top_p(0); },
       "sampling.top_p:"},
      {"top_p above one", [](v1::GenerateRequest& r) { r.mutable_sampling()->set_top_p(1.5f); },
       "sampling.top_p:"},
      {"min_p one", [](v1::GenerateRequest& r) { r.mutable_sampling()->set_min_p(1.0f); },
       "sampling.min_p:"},
      {"min_p negative", [](v1::GenerateRequest& r) { r.mutable_sampling()->set_min_p(-0.1f); },
       "sampling.min_p:"},
      {"top_k negative", [](v1::GenerateRequest& r) { r.mutable_sampling()->set_top_k(-1); },
       "sampling.top_k:"},
      {"repetition_penalty zero",
       [](v1::GenerateRequest& r) { r.mutable_sampling()->set_repetition_penalty(0); },
       "sampling.repetition_penalty:"},
      {"repetition_penalty negative",
       [](v1::GenerateRequest& r) { r.mutable_sampling()->set_repetition_penalty(-2); },
       "sampling.repetition_penalty:"},
      {"presence_penalty above 2",
       [](v1::GenerateRequest& r) { r.mutable_sampling()->set_presence_penalty(3); },
       "sampling.presence_penalty:"},
      {"frequency_penalty below -2",
       [](v1::GenerateRequest& r) { r.mutable_sampling()->set_frequency_penalty(-2.5f); },
       "sampling.frequency_penalty:"},
      {"frequency_penalty NaN",
       [nan](v1::GenerateRequest& r) { r.mutable_sampling()->set_frequency_penalty(nan); },
       "sampling.frequency_penalty:"},
      {"logprobs above 20", [](v1::GenerateRequest& r) { r.set_logprobs(21); }, "logprobs:"},
      {"logprobs negative", [](v1::GenerateRequest& r) { r.set_logprobs(-1); }, "logprobs:"},
      {"text prompt too long",
       [](v1::GenerateRequest& r) {
         std::string text;
         for (int i = 0; i < 20; ++i) text += "Once upon a time ";
         r.set_text(text);
       },
       "text:"},
      {"token prompt too long",
       [](v1::GenerateRequest& r) {
         for (int i = 0; i < 40; ++i) r.mutable_token_ids()->add_ids(100);
       },
       "token_ids.ids:"},
      {"text not UTF-8", [](v1::GenerateRequest& r) { r.set_text("Once \xff\xfe upon"); }, "text:"},
      {"stop string not UTF-8", [](v1::GenerateRequest& r) { r.add_stop("ab\xc3"); }, "stop[0]:"},
      {"empty stop string", [](v1::GenerateRequest& r) { r.add_stop(""); }, "stop[0]:"},
      {"retention priority above 100",
       [](v1::GenerateRequest& r) { r.add_retention()->set_priority(101); },
       "retention[0].priority:"},
      {"retention priority negative",
       [](v1::GenerateRequest& r) {
         r.add_retention()->set_priority(50);
         r.add_retention()->set_priority(-1);
       },
       "retention[1].priority:"},
      {"retention range empty",
       [](v1::GenerateRequest& r) {
         auto* h = r.add_retention();
         h->set_start_token(4);
         h->set_end_token(4);
       },
       "retention[0].end_token:"},
      {"request id with a space", [](v1::GenerateRequest& r) { r.set_request_id("a b"); },
       "request_id:"},
  };
}

TEST(GrpcValidationTest, EveryBadFieldIsInvalidArgumentNamingIt) {
  ServerProcess server;
  ASSERT_TRUE(server.Start(
      {"limits.max_prompt_tokens=32", "limits.max_tokens=64", "limits.default_max_tokens=16"}));
  auto stub = server.Stub();
  for (const BadCase& c : BadCases()) {
    v1::GenerateRequest request = GreedyRequest("Once upon a time", 8);
    c.mutate(request);
    {
      grpc::ClientContext context;
      v1::CompleteResponse response;
      grpc::Status status = stub->Complete(&context, request, &response);
      EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << c.name;
      EXPECT_EQ(status.error_message().rfind(c.field, 0), 0u)
          << c.name << ": " << status.error_message();
    }
    StreamResult stream = ReadStream(*stub, request);
    EXPECT_EQ(stream.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << c.name;
    EXPECT_EQ(stream.status.error_message().rfind(c.field, 0), 0u)
        << c.name << ": " << stream.status.error_message();
    EXPECT_EQ(stream.messages, 0) << c.name;
  }
  // Still serving.
  EXPECT_EQ(HealthStatus(server.Channel()), "SERVING");
  StreamResult ok = ReadStream(*stub, GreedyRequest("Once upon a time", 8));
  EXPECT_TRUE(ok.status.ok()) << ok.status.error_message();
  EXPECT_FALSE(ok.text.empty());
}

TEST(GrpcValidationTest, OversizedRequestIsResourceExhausted) {
  ServerProcess server;
  ASSERT_TRUE(server.Start({"server.max_request_bytes=4096"}));
  auto stub = server.Stub();
  grpc::ClientContext context;
  v1::CompleteResponse response;
  grpc::Status status =
      stub->Complete(&context, GreedyRequest(std::string(8000, 'a'), 8), &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << status.error_message();
  grpc::ClientContext next;
  status = stub->Complete(&next, GreedyRequest("Once upon a time", 8), &response);
  EXPECT_TRUE(status.ok()) << status.error_message();
}

TEST(GrpcValidationTest, TokenizeDetokenizeAndModelInfo) {
  ServerProcess server;
  ASSERT_TRUE(server.Start({"kv_cache.block_size=32"}));
  auto stub = server.Stub();

  grpc::ClientContext c1;
  v1::TokenizeRequest tokenize;
  tokenize.set_text("Hello world");
  v1::TokenizeResponse tokens;
  ASSERT_TRUE(stub->Tokenize(&c1, tokenize, &tokens).ok());
  ASSERT_GE(tokens.token_ids_size(), 3);
  EXPECT_EQ(tokens.token_ids(0), 1);  // BOS
  EXPECT_EQ(tokens.pieces(0), "<s>");
  EXPECT_EQ(tokens.pieces_size(), tokens.token_ids_size());

  grpc::ClientContext c2;
  v1::DetokenizeRequest detokenize;
  *detokenize.mutable_token_ids() = tokens.token_ids();
  v1::DetokenizeResponse text;
  ASSERT_TRUE(stub->Detokenize(&c2, detokenize, &text).ok());
  EXPECT_EQ(text.text(), "Hello world");

  grpc::ClientContext c3;
  detokenize.add_token_ids(600);
  grpc::Status status = stub->Detokenize(&c3, detokenize, &text);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(status.error_message().rfind("token_ids[", 0), 0u) << status.error_message();

  grpc::ClientContext c4;
  tokenize.set_text("bad \xff");
  status = stub->Tokenize(&c4, tokenize, &tokens);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(status.error_message().rfind("text:", 0), 0u) << status.error_message();

  // stories260K: dim 64, 5 layers, 8 heads, 4 KV heads, vocab 512, context 2048.
  grpc::ClientContext c5;
  v1::ModelInfo info;
  ASSERT_TRUE(stub->GetModelInfo(&c5, v1::GetModelInfoRequest(), &info).ok());
  EXPECT_EQ(info.architecture(), "llama");
  EXPECT_EQ(info.dim(), 64);
  EXPECT_EQ(info.num_layers(), 5);
  EXPECT_EQ(info.num_heads(), 8);
  EXPECT_EQ(info.num_kv_heads(), 4);
  EXPECT_EQ(info.head_dim(), 8);
  EXPECT_EQ(info.vocab_size(), 512);
  EXPECT_EQ(info.context_length(), 2048);
  EXPECT_EQ(info.kv_format(), v1::KV_FORMAT_FP32);
  EXPECT_EQ(info.block_size(), 32);
  EXPECT_EQ(info.kv_budget_bytes(), 64 << 20);
  // One fp32 block: K and V, 5 layers, 4 KV heads x 8 dims x 32 tokens x 4 bytes.
  EXPECT_EQ(info.kv_block_bytes(), 2 * 5 * 4 * 8 * 32 * 4);
  std::vector<int> formats(info.kv_formats_available().begin(), info.kv_formats_available().end());
  EXPECT_NE(std::find(formats.begin(), formats.end(), v1::KV_FORMAT_FP32), formats.end());
  EXPECT_NE(std::find(formats.begin(), formats.end(), v1::KV_FORMAT_FP16), formats.end());
  EXPECT_NE(std::find(formats.begin(), formats.end(), v1::KV_FORMAT_BF16), formats.end());
  EXPECT_NE(std::find(formats.begin(), formats.end(), v1::KV_FORMAT_INT2), formats.end());
  EXPECT_EQ(info.max_prompt_tokens(), 2047);
  EXPECT_EQ(info.default_max_tokens(), 256);
}

TEST(GrpcValidationTest, ReflectionListsTheServices) {
  ServerProcess server;
  ASSERT_TRUE(server.Start());
  // grpc.reflection.v1alpha.ServerReflectionRequest { list_services = 7: "" }
  const std::string request_bytes("\x3a\x00", 2);
  grpc::GenericStub stub(server.Channel());
  grpc::CompletionQueue cq;
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  auto call = stub.PrepareCall(
      &context, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", &cq);
  void* tag;
  bool ok;
  auto next = [&](intptr_t expected) {
    EXPECT_TRUE(cq.Next(&tag, &ok));
    EXPECT_EQ(reinterpret_cast<intptr_t>(tag), expected);
    return ok;
  };
  call->StartCall(reinterpret_cast<void*>(1));
  ASSERT_TRUE(next(1));
  grpc::Slice slice(request_bytes);
  grpc::ByteBuffer request(&slice, 1);
  call->Write(request, reinterpret_cast<void*>(2));
  ASSERT_TRUE(next(2));
  call->WritesDone(reinterpret_cast<void*>(3));
  ASSERT_TRUE(next(3));
  grpc::ByteBuffer response;
  call->Read(&response, reinterpret_cast<void*>(4));
  ASSERT_TRUE(next(4));
  grpc::Status status;
  call->Finish(&status, reinterpret_cast<void*>(5));
  next(5);
  EXPECT_TRUE(status.ok()) << status.error_message();
  std::vector<grpc::Slice> slices;
  ASSERT_TRUE(response.Dump(&slices).ok());
  std::string bytes;
  for (const grpc::Slice& s : slices)
    bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  EXPECT_NE(bytes.find("kvserve.v1.Generation"), std::string::npos);
  EXPECT_NE(bytes.find("kvserve.v1.Memory"), std::string::npos);
  EXPECT_NE(bytes.find("grpc.health.v1.Health"), std::string::npos);
}

}  // namespace
}  // namespace kvserve::server::testing
