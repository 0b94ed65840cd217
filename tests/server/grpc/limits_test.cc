// Limits against hostile or careless clients, against the real server: the per-connection stream
// limit, and a slow reader that stalls neither other streams nor the engine.
#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "kvserve/v1/memory.grpc.pb.h"
#include "tests/server/grpc/server_process.h"

namespace kvserve::server::testing {
namespace {

v1::MemoryStats Stats(const ServerProcess& server) {
  auto stub = v1::Memory::NewStub(server.Channel());
  grpc::ClientContext context;
  v1::MemoryStats stats;
  EXPECT_TRUE(stub->GetStats(&context, v1::GetStatsRequest(), &stats).ok());
  return stats;
}

struct Stalled {
  std::unique_ptr<v1::Generation::Stub> stub;
  grpc::ClientContext context;
  std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> reader;
};

// Opens a long stream on `channel` and reads its first message only.
void OpenStalled(const std::shared_ptr<grpc::Channel>& channel, int first, Stalled* call) {
  call->stub = v1::Generation::NewStub(channel);
  call->reader = call->stub->Generate(&call->context, TokenPrompt(60, first, 1500));
  v1::GenerateResponse message;
  ASSERT_TRUE(call->reader->Read(&message)) << call->reader->Finish().error_message();
}

void Cancel(Stalled* call) {
  call->context.TryCancel();
  v1::GenerateResponse message;
  while (call->reader->Read(&message)) {
  }
  call->reader->Finish();
}

// One connection may hold server.max_streams_per_connection calls; its next call waits (here
// until its deadline) while another connection is served at once.
TEST(GrpcLimitsTest, StreamsPerConnectionAreLimited) {
  ServerProcess server;
  ASSERT_TRUE(
      server.Start({"server.max_streams_per_connection=2", "scheduler.stream_buffer_tokens=16"}));
  auto hog = server.Channel(nullptr, SlowReaderArguments());
  Stalled a, b;
  OpenStalled(hog, 0, &a);
  OpenStalled(hog, 50, &b);

  auto stub = v1::Generation::NewStub(hog);
  StreamResult third = ReadStream(*stub, GreedyRequest("Once upon a time", 8), absl::Seconds(2));
  EXPECT_EQ(third.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED)
      << third.status.error_message();
  EXPECT_EQ(third.messages, 0);
  const v1::MemoryStats stats = Stats(server);
  EXPECT_EQ(stats.running_requests() + stats.waiting_requests(), 2);

  // Another connection is not held up by the first one's limit.
  auto other = server.Stub();
  StreamResult served = ReadStream(*other, GreedyRequest("Once upon a time", 8), absl::Seconds(20));
  ASSERT_TRUE(served.status.ok()) << served.status.error_message();
  EXPECT_EQ("Once upon a time" + served.text + "\n", OfflineGreedy("Once upon a time", 8));

  // Once one of the first connection's calls ends, its next call runs.
  Cancel(&a);
  StreamResult later = ReadStream(*stub, GreedyRequest("Once upon a time", 8), absl::Seconds(20));
  EXPECT_TRUE(later.status.ok()) << later.status.error_message();
  Cancel(&b);
}

// A client that stops reading fills only its own bounded buffer: the engine pauses that request
// (its generated token count stops), and other streams run at full speed meanwhile.
TEST(GrpcLimitsTest, SlowReaderStallsNeitherOtherStreamsNorTheEngine) {
  ServerProcess server;
  ASSERT_TRUE(server.Start({"scheduler.stream_buffer_tokens=16"}));
  Stalled slow;
  OpenStalled(server.Channel(nullptr, SlowReaderArguments()), 3, &slow);

  const std::vector<std::string> prompts = {"Once upon a time", "The little dog", "Mom said"};
  std::vector<std::string> expected;
  for (const std::string& p : prompts) expected.push_back(OfflineGreedy(p, 30));
  std::vector<StreamResult> results(prompts.size());
  std::vector<std::thread> threads;
  auto channel = server.Channel();
  for (size_t i = 0; i < prompts.size(); ++i) {
    threads.emplace_back([&, i] {
      auto stub = v1::Generation::NewStub(channel);
      results[i] = ReadStream(*stub, GreedyRequest(prompts[i], 30), absl::Seconds(30));
    });
  }
  for (std::thread& t : threads) t.join();
  for (size_t i = 0; i < prompts.size(); ++i) {
    ASSERT_TRUE(results[i].status.ok()) << results[i].status.error_message();
    EXPECT_EQ(prompts[i] + results[i].text + "\n", expected[i]);
  }

  // The stalled request is paused: nothing more is generated for it while nobody reads. It may
  // still be filling its buffer and the transport's windows when the other streams end (a slow
  // build), so first wait for the count to settle; a request that never pauses would instead run
  // on to its max_tokens and end (caught below).
  v1::MemoryStats before = Stats(server);
  for (int i = 0; i < 40; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
    const v1::MemoryStats now = Stats(server);
    const bool settled = now.generated_tokens() == before.generated_tokens();
    before = now;
    if (settled) break;
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(700));
  const v1::MemoryStats after = Stats(server);
  EXPECT_EQ(after.generated_tokens(), before.generated_tokens());
  EXPECT_EQ(after.running_requests(), 1);
  EXPECT_LT(before.generated_tokens(), 1500);
  Cancel(&slow);
}

}  // namespace
}  // namespace kvserve::server::testing
