// Cancellation, client disconnects, deadlines and the queue bound, against the real server.
//
// The KV budget of these servers holds one long request at a time: 80 blocks of 16 tokens, and
// each long request below needs 63 or more. A request whose client stops reading keeps its blocks
// (flow control pauses it in the engine) until it is cancelled, so a second long request can only
// run if cancelling, disconnecting or the deadline really freed the first one's blocks.
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "kvserve/v1/memory.grpc.pb.h"
#include "tests/server/grpc/server_process.h"

namespace kvserve::server::testing {
namespace {

// 80 fp32 blocks of this model (20480 bytes each).
const std::vector<std::string> kOneLongRequestBudget = {"kv_cache.budget_mb=1.5625",
                                                        "scheduler.stream_buffer_tokens=16"};

constexpr int kLongPrompt = 1000;

// Starts a long request on a client that then stops reading; returns once the first message
// arrived (its prompt blocks are allocated).
struct StalledCall {
  std::unique_ptr<v1::Generation::Stub> stub;
  grpc::ClientContext context;
  std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> reader;
};

// Waits (up to 30 s) until the server reports `running` running and `waiting` waiting requests.
bool AwaitQueue(const ServerProcess& server, int running, int waiting) {
  auto stub = v1::Memory::NewStub(server.Channel());
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (absl::Now() < deadline) {
    grpc::ClientContext context;
    v1::MemoryStats stats;
    if (stub->GetStats(&context, v1::GetStatsRequest(), &stats).ok() &&
        stats.running_requests() == running && stats.waiting_requests() == waiting) {
      return true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return false;
}

void StartStalled(const std::shared_ptr<grpc::Channel>& channel, const v1::GenerateRequest& req,
                  StalledCall* call) {
  call->stub = v1::Generation::NewStub(channel);
  call->reader = call->stub->Generate(&call->context, req);
  v1::GenerateResponse first;
  ASSERT_TRUE(call->reader->Read(&first)) << call->reader->Finish().error_message();
}

// A second long request must be served in full, without waiting for memory.
void ExpectSecondLongRequestServed(const ServerProcess& server) {
  auto stub = server.Stub();
  v1::GenerateRequest request = TokenPrompt(kLongPrompt, 11, 20);
  request.set_cache_salt("second");
  StreamResult result = ReadStream(*stub, request, absl::Seconds(20));
  ASSERT_TRUE(result.status.ok()) << grpc::StatusCode(result.status.error_code()) << " "
                                  << result.status.error_message();
  EXPECT_EQ(result.last.usage().completion_tokens(), 20);
  EXPECT_EQ(result.last.usage().prompt_tokens(), kLongPrompt);
  EXPECT_EQ(result.last.preemptions(), 0);
}

TEST(GrpcLifecycleTest, CancelMidStreamFreesTheKvBlocks) {
  ServerProcess server;
  ASSERT_TRUE(server.Start(kOneLongRequestBudget));
  StalledCall call;
  StartStalled(server.Channel(nullptr, SlowReaderArguments()), TokenPrompt(kLongPrompt, 0, 900),
               &call);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  call.context.TryCancel();
  v1::GenerateResponse message;
  while (call.reader->Read(&message)) {
  }
  EXPECT_EQ(call.reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  ExpectSecondLongRequestServed(server);
}

TEST(GrpcLifecycleTest, ClientDisconnectFreesTheKvBlocks) {
  ServerProcess server;
  ASSERT_TRUE(server.Start(kOneLongRequestBudget));
  TcpProxy proxy(server.port());
  auto channel = grpc::CreateCustomChannel(proxy.address(), grpc::InsecureChannelCredentials(),
                                           SlowReaderArguments());
  StalledCall call;
  StartStalled(channel, TokenPrompt(kLongPrompt, 0, 900), &call);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  proxy.Cut();  // the connection vanishes under both ends
  v1::GenerateResponse message;
  while (call.reader->Read(&message)) {
  }
  EXPECT_FALSE(call.reader->Finish().ok());
  ExpectSecondLongRequestServed(server);
  EXPECT_TRUE(server.WaitForStderr("CANCELLED", absl::Seconds(5))) << server.Stderr();
}

TEST(GrpcLifecycleTest, DeadlineExceededEndsTheCallAndFreesTheKvBlocks) {
  ServerProcess server;
  ASSERT_TRUE(server.Start(kOneLongRequestBudget));
  auto stub = v1::Generation::NewStub(server.Channel(nullptr, SlowReaderArguments()));
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(1500));
  auto reader = stub->Generate(&context, TokenPrompt(kLongPrompt, 0, 900));
  v1::GenerateResponse message;
  // The first tokens normally arrive well before the deadline; on a slow (sanitizer) build the
  // prefill alone may outlast it, and the call must end the same way.
  reader->Read(&message);
  std::this_thread::sleep_for(std::chrono::milliseconds(2000));  // not reading, past the deadline
  while (reader->Read(&message)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  ExpectSecondLongRequestServed(server);
}

TEST(GrpcLifecycleTest, DeadlineExceededOnCompleteWhileQueued) {
  // One request at a time: the second waits behind a stalled first one until its deadline.
  ServerProcess server;
  ASSERT_TRUE(
      server.Start({"scheduler.max_running_requests=1", "scheduler.stream_buffer_tokens=16"}));
  StalledCall first;
  StartStalled(server.Channel(nullptr, SlowReaderArguments()), TokenPrompt(100, 0, 1500), &first);
  auto stub = server.Stub();
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(300));
  v1::CompleteResponse response;
  grpc::Status status = stub->Complete(&context, GreedyRequest("Once upon a time", 10), &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << status.error_message();
  first.context.TryCancel();
  // The server goes on serving.
  grpc::ClientContext next;
  status = stub->Complete(&next, GreedyRequest("Once upon a time", 10), &response);
  EXPECT_TRUE(status.ok()) << status.error_message();
}

TEST(GrpcLifecycleTest, FullQueueIsResourceExhaustedNamingTheLimit) {
  ServerProcess server;
  ASSERT_TRUE(server.Start({"scheduler.max_running_requests=1", "scheduler.max_waiting_requests=1",
                            "scheduler.stream_buffer_tokens=16"}));
  auto slow = server.Channel(nullptr, SlowReaderArguments());
  StalledCall running;
  StartStalled(slow, TokenPrompt(100, 0, 1500), &running);  // admitted, then paused
  // The second waits for the single running slot.
  auto waiting_stub = v1::Generation::NewStub(slow);
  grpc::ClientContext waiting_context;
  auto waiting = waiting_stub->Generate(&waiting_context, TokenPrompt(100, 5, 1500));
  ASSERT_TRUE(AwaitQueue(server, 1, 1)) << "the second request never queued";
  // Several more at once: each is refused.
  std::vector<grpc::Status> statuses(3);
  std::vector<std::thread> threads;
  auto channel = server.Channel();
  for (int i = 0; i < 3; ++i) {
    threads.emplace_back([&, i] {
      auto stub = v1::Generation::NewStub(channel);
      grpc::ClientContext context;
      v1::CompleteResponse response;
      statuses[i] = stub->Complete(&context, TokenPrompt(100, 9 + i, 1500), &response);
    });
  }
  for (std::thread& t : threads) t.join();
  for (const grpc::Status& s : statuses) {
    EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << s.error_message();
    EXPECT_NE(s.error_message().find("max_waiting_requests"), std::string::npos)
        << s.error_message();
  }
  running.context.TryCancel();
  waiting_context.TryCancel();
  v1::GenerateResponse message;
  while (running.reader->Read(&message)) {
  }
  while (waiting->Read(&message)) {
  }
  running.reader->Finish();
  waiting->Finish();
  // The cancelled requests leave the queue on the engine's next step; then it serves again.
  StreamResult after;
  for (int attempt = 0; attempt < 100; ++attempt) {
    after = ReadStream(*server.Stub(), GreedyRequest("Once upon a time", 8));
    if (after.status.error_code() != grpc::StatusCode::RESOURCE_EXHAUSTED) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_TRUE(after.status.ok()) << after.status.error_code() << " "
                                 << after.status.error_message();
}

}  // namespace
}  // namespace kvserve::server::testing
