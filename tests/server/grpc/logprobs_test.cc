// Log-probabilities and the presence / frequency penalties over gRPC against the real server:
// every message's logprobs are aligned with its token_ids, asking for them changes no token,
// Generate and Complete agree, and penalties at 0 equal unset ones.
#include <chrono>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/server/grpc/server_process.h"

namespace kvserve::server::testing {
namespace {

struct LogprobStream {
  grpc::Status status;
  std::vector<int32_t> token_ids;
  std::vector<v1::TokenLogprob> logprobs;
  std::string text;
};

// Reads a Generate stream, checking in every message that logprobs follow token_ids one to one.
LogprobStream ReadAligned(v1::Generation::Stub& stub, const v1::GenerateRequest& request) {
  LogprobStream out;
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  auto reader = stub.Generate(&context, request);
  v1::GenerateResponse message;
  while (reader->Read(&message)) {
    if (request.has_logprobs()) {
      EXPECT_EQ(message.logprobs_size(), message.token_ids_size());
    } else {
      EXPECT_EQ(message.logprobs_size(), 0);
    }
    for (int i = 0; i < message.logprobs_size() && i < message.token_ids_size(); ++i) {
      EXPECT_EQ(message.logprobs(i).token_id(), message.token_ids(i));
    }
    out.token_ids.insert(out.token_ids.end(), message.token_ids().begin(),
                         message.token_ids().end());
    out.logprobs.insert(out.logprobs.end(), message.logprobs().begin(), message.logprobs().end());
    out.text += message.text();
  }
  out.status = reader->Finish();
  return out;
}

TEST(GrpcLogprobsTest, GenerateCarriesLogprobsAlignedWithTokenIds) {
  ServerProcess server;
  ASSERT_TRUE(server.Start());
  auto stub = server.Stub();
  v1::GenerateRequest request = GreedyRequest("Once upon a time", 24);
  const LogprobStream plain = ReadAligned(*stub, request);
  ASSERT_TRUE(plain.status.ok()) << plain.status.error_message();
  request.set_logprobs(3);
  const LogprobStream with = ReadAligned(*stub, request);
  ASSERT_TRUE(with.status.ok()) << with.status.error_message();
  EXPECT_EQ(with.token_ids, plain.token_ids);
  EXPECT_EQ(with.text, plain.text);
  ASSERT_EQ(with.logprobs.size(), with.token_ids.size());
  for (const v1::TokenLogprob& l : with.logprobs) {
    EXPECT_LE(l.logprob(), 0.0f);
    ASSERT_EQ(l.top_size(), 3);
    // Greedy: the generated token is the most probable one.
    EXPECT_EQ(l.top(0).token_id(), l.token_id());
    EXPECT_EQ(l.top(0).logprob(), l.logprob());
    EXPECT_GE(l.top(0).logprob(), l.top(1).logprob());
    EXPECT_GE(l.top(1).logprob(), l.top(2).logprob());
  }

  // Complete returns the same entries.
  grpc::ClientContext context;
  v1::CompleteResponse response;
  ASSERT_TRUE(stub->Complete(&context, request, &response).ok());
  ASSERT_EQ(response.logprobs_size(), response.token_ids_size());
  ASSERT_EQ(static_cast<size_t>(response.logprobs_size()), with.logprobs.size());
  for (int i = 0; i < response.logprobs_size(); ++i) {
    EXPECT_EQ(response.logprobs(i).token_id(), with.logprobs[i].token_id());
    EXPECT_NEAR(response.logprobs(i).logprob(), with.logprobs[i].logprob(), 1e-5);
    ASSERT_EQ(response.logprobs(i).top_size(), 3);
    for (int k = 0; k < 3; ++k) {
      EXPECT_EQ(response.logprobs(i).top(k).token_id(), with.logprobs[i].top(k).token_id());
    }
  }

  // logprobs 0: the token's own value, no alternatives; a stop string keeps the alignment.
  request.set_logprobs(0);
  request.add_stop("Lily");
  const LogprobStream stopped = ReadAligned(*stub, request);
  ASSERT_TRUE(stopped.status.ok()) << stopped.status.error_message();
  ASSERT_EQ(stopped.logprobs.size(), stopped.token_ids.size());
  ASSERT_FALSE(stopped.logprobs.empty());
  for (size_t i = 0; i < stopped.logprobs.size(); ++i) {
    EXPECT_EQ(stopped.logprobs[i].top_size(), 0);
    EXPECT_NEAR(stopped.logprobs[i].logprob(), with.logprobs[i].logprob(), 1e-5);
  }
}

TEST(GrpcLogprobsTest, ZeroPenaltiesEqualUnsetOnesAndOthersChangeTheOutput) {
  ServerProcess server;
  ASSERT_TRUE(server.Start());
  auto stub = server.Stub();
  v1::GenerateRequest request = GreedyRequest("Once upon a time", 40);
  request.mutable_sampling()->set_temperature(0.8f);
  request.mutable_sampling()->set_seed(5);
  const LogprobStream unset = ReadAligned(*stub, request);
  ASSERT_TRUE(unset.status.ok()) << unset.status.error_message();
  request.mutable_sampling()->set_presence_penalty(0);
  request.mutable_sampling()->set_frequency_penalty(0);
  const LogprobStream zero = ReadAligned(*stub, request);
  EXPECT_EQ(zero.token_ids, unset.token_ids);
  EXPECT_EQ(zero.text, unset.text);
  request.mutable_sampling()->set_presence_penalty(1.5f);
  request.mutable_sampling()->set_frequency_penalty(1.5f);
  const LogprobStream penalised = ReadAligned(*stub, request);
  ASSERT_TRUE(penalised.status.ok()) << penalised.status.error_message();
  EXPECT_NE(penalised.token_ids, unset.token_ids);
}

}  // namespace
}  // namespace kvserve::server::testing
