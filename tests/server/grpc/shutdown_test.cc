// SIGTERM with streams in flight: each stream finishes or ends with UNAVAILABLE, new calls are
// refused, health turns NOT_SERVING, and the process exits 0.
#include <signal.h>

#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "tests/server/grpc/server_process.h"

namespace kvserve::server::testing {
namespace {

TEST(GrpcShutdownTest, SigtermLetsActiveStreamsFinishThenExitsZero) {
  ServerProcess server;
  ASSERT_TRUE(server.Start());
  constexpr int kStreams = 4;
  std::vector<StreamResult> results(kStreams);
  std::vector<std::thread> threads;
  absl::Mutex mu;
  int started = 0;
  auto channel = server.Channel();
  for (int i = 0; i < kStreams; ++i) {
    threads.emplace_back([&, i] {
      auto stub = v1::Generation::NewStub(channel);
      grpc::ClientContext context;
      v1::GenerateRequest request = TokenPrompt(50, i, 1500);
      auto reader = stub->Generate(&context, request);
      v1::GenerateResponse message;
      bool first = true;
      while (reader->Read(&message)) {
        if (first) {
          absl::MutexLock lock(&mu);
          ++started;
          first = false;
        }
        results[i].token_ids.insert(results[i].token_ids.end(), message.token_ids().begin(),
                                    message.token_ids().end());
        results[i].last = message;
      }
      results[i].status = reader->Finish();
    });
  }
  {
    absl::MutexLock lock(&mu);
    auto all_started = [&]() ABSL_SHARED_LOCKS_REQUIRED(mu) { return started == kStreams; };
    mu.AwaitWithTimeout(absl::Condition(&all_started), absl::Seconds(20));
  }
  EXPECT_EQ(server.SignalAndWait(SIGTERM, absl::Seconds(30)), 0);
  for (std::thread& t : threads) t.join();
  for (int i = 0; i < kStreams; ++i) {
    const grpc::Status& s = results[i].status;
    if (s.ok()) {
      EXPECT_EQ(results[i].token_ids.size(), 1500u) << i;
      EXPECT_EQ(results[i].last.finish_reason(), v1::FINISH_REASON_LENGTH) << i;
    } else {
      EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE) << i << ": " << s.error_message();
    }
  }
  EXPECT_NE(server.Stderr().find("received SIGTERM"), std::string::npos) << server.Stderr();
}

TEST(GrpcShutdownTest, DrainTimeoutEndsStalledStreamsWithUnavailable) {
  ServerProcess server;
  ASSERT_TRUE(
      server.Start({"server.drain_timeout_seconds=1.5", "scheduler.stream_buffer_tokens=16"}));
  // Two clients that stop reading: their requests cannot finish before the drain timeout.
  auto slow = server.Channel(nullptr, SlowReaderArguments());
  struct Call {
    std::unique_ptr<v1::Generation::Stub> stub;
    grpc::ClientContext context;
    std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> reader;
  };
  std::vector<std::unique_ptr<Call>> calls;
  for (int i = 0; i < 2; ++i) {
    auto call = std::make_unique<Call>();
    call->stub = v1::Generation::NewStub(slow);
    call->reader = call->stub->Generate(&call->context, TokenPrompt(50, i, 1500));
    v1::GenerateResponse first;
    ASSERT_TRUE(call->reader->Read(&first));
    calls.push_back(std::move(call));
  }
  kill(server.pid(), SIGTERM);
  ASSERT_TRUE(server.WaitForStderr("draining", absl::Seconds(10)));
  // While draining: health says NOT_SERVING and new calls are refused.
  auto channel = server.Channel();
  EXPECT_EQ(HealthStatus(channel), "NOT_SERVING");
  StreamResult refused =
      ReadStream(*v1::Generation::NewStub(channel), GreedyRequest("Once upon a time", 8));
  EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::UNAVAILABLE)
      << refused.status.error_message();
  // Past the drain timeout the stalled streams are ended; reading again delivers that.
  ASSERT_TRUE(server.WaitForStderr("drain timeout", absl::Seconds(10))) << server.Stderr();
  for (auto& call : calls) {
    v1::GenerateResponse message;
    while (call->reader->Read(&message)) {
    }
    grpc::Status status = call->reader->Finish();
    EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();
  }
  EXPECT_EQ(server.SignalAndWait(0, absl::Seconds(20)), 0) << server.Stderr();
}

}  // namespace
}  // namespace kvserve::server::testing
