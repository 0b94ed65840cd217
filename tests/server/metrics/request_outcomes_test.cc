// How requests ended, counted as their clients saw them, against the real server: calls whose
// deadline passed count as `deadline_exceeded` (never `failed`), a client's own cancel as
// `cancelled`, and a response over server.max_message_bytes as `failed` with the
// RESOURCE_EXHAUSTED its client got (logged so too). /metrics and Memory.GetStats agree.
#include "server/metrics/request_outcomes.h"

#include <array>
#include <map>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kvserve/v1/memory.grpc.pb.h"
#include "tests/server/grpc/server_process.h"
#include "tests/server/metrics/metrics_scrape.h"

namespace kvserve::server::testing {
namespace {

using ::testing::HasSubstr;

// Requests ended, by status: ok, cancelled, deadline_exceeded, failed.
using Counts = std::array<int64_t, kNumRequestOutcomes>;

Counts Scraped(int port) {
  HttpResponse r = HttpGet(port, "/metrics");
  EXPECT_EQ(r.status, 200);
  std::map<std::string, double> m = ParseExposition(r.body);
  Counts c{};
  for (int o = 0; o < kNumRequestOutcomes; ++o) {
    const std::string series =
        absl::StrCat("kvserve_requests_total{status=\"",
                     RequestOutcomeName(static_cast<RequestOutcome>(o)), "\",protocol=\"grpc\"}");
    EXPECT_EQ(m.count(series), 1u) << series;
    c[o] = static_cast<int64_t>(m[series]);
  }
  return c;
}

Counts FromMemory(const ServerProcess& server) {
  auto stub = v1::Memory::NewStub(server.Channel());
  grpc::ClientContext context;
  v1::MemoryStats s;
  EXPECT_TRUE(stub->GetStats(&context, v1::GetStatsRequest(), &s).ok());
  return {s.requests_finished(), s.requests_cancelled(), s.requests_deadline_exceeded(),
          s.requests_failed()};
}

int64_t Total(const Counts& c) { return c[0] + c[1] + c[2] + c[3]; }

Counts Minus(const Counts& a, const Counts& b) {
  Counts d{};
  for (int i = 0; i < kNumRequestOutcomes; ++i) d[i] = a[i] - b[i];
  return d;
}

// The counts once `total` requests more than `base` have ended (the server counts a call the
// client gave up on when it sees the cancellation, which may be after the client returned), or
// when `timeout` passes.
Counts WaitForTotal(int port, const Counts& base, int64_t total,
                    absl::Duration timeout = absl::Seconds(20)) {
  Counts now = Scraped(port);
  const absl::Time deadline = absl::Now() + timeout;
  while (Total(now) - Total(base) < total && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(10));
    now = Scraped(port);
  }
  return now;
}

constexpr int kOk = static_cast<int>(RequestOutcome::kOk);
constexpr int kCancelled = static_cast<int>(RequestOutcome::kCancelled);
constexpr int kDeadline = static_cast<int>(RequestOutcome::kDeadlineExceeded);
constexpr int kFailed = static_cast<int>(RequestOutcome::kFailed);

TEST(RequestOutcomesTest, StatusCodesMapOntoTheStatusLabel) {
  EXPECT_EQ(OutcomeOf(absl::StatusCode::kOk), RequestOutcome::kOk);
  EXPECT_EQ(OutcomeOf(absl::StatusCode::kCancelled), RequestOutcome::kCancelled);
  EXPECT_EQ(OutcomeOf(absl::StatusCode::kDeadlineExceeded), RequestOutcome::kDeadlineExceeded);
  EXPECT_EQ(OutcomeOf(absl::StatusCode::kResourceExhausted), RequestOutcome::kFailed);
  EXPECT_EQ(OutcomeOf(absl::StatusCode::kUnavailable), RequestOutcome::kFailed);
  EXPECT_STREQ(RequestOutcomeName(RequestOutcome::kDeadlineExceeded), "deadline_exceeded");
}

TEST(RequestOutcomesServerTest, ExpiredDeadlinesAreCountedAsDeadlineExceeded) {
  ServerProcess server;
  ASSERT_TRUE(server.Start({"metrics.address=127.0.0.1:0"}));
  const int port = MetricsPort(server);
  ASSERT_GT(port, 0) << server.Stderr();
  auto stub = server.Stub();
  {
    // Connect first: a call that spends its 1 ms connecting never reaches the server.
    grpc::ClientContext context;
    v1::ModelInfo info;
    ASSERT_TRUE(stub->GetModelInfo(&context, v1::GetModelInfoRequest(), &info).ok());
  }
  const Counts before = Scraped(port);

  // 300 tokens take far longer than 1 ms: every call runs into its deadline, which either side
  // may see first.
  constexpr int kCalls = 10;
  int deadline_exceeded = 0;
  int ok = 0;
  for (int i = 0; i < kCalls; ++i) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(1));
    v1::CompleteResponse response;
    const grpc::Status s = stub->Complete(&context, TokenPrompt(8, 11 * i, 300), &response);
    if (s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) ++deadline_exceeded;
    if (s.ok()) ++ok;
    EXPECT_TRUE(s.ok() || s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED)
        << s.error_code() << " " << s.error_message();
  }
  EXPECT_GT(deadline_exceeded, 0);

  // A call whose client reset it before the server read its request never reaches a handler (a
  // busy machine can delay the read past 1 ms); such calls are not requests and are not counted.
  // Every call that reached the engine is counted once, by what its client got.
  const Counts delta = Minus(WaitForTotal(port, before, kCalls, absl::Seconds(5)), before);
  EXPECT_EQ(delta[kFailed], 0);
  EXPECT_EQ(delta[kCancelled], 0);
  EXPECT_EQ(delta[kOk], ok);
  if (Total(delta) == kCalls) {
    EXPECT_EQ(delta[kDeadline], deadline_exceeded);
  } else {
    EXPECT_LT(delta[kDeadline], deadline_exceeded);
  }
  EXPECT_EQ(FromMemory(server), Scraped(port));
  EXPECT_TRUE(server.WaitForStderr("finished: status=DEADLINE_EXCEEDED", absl::Seconds(5)));
  EXPECT_THAT(server.Stderr(), ::testing::Not(HasSubstr("finished: status=CANCELLED")));

  // A client that cancels (no deadline) is `cancelled`. It reads slowly, so that the call cannot
  // end before the cancel.
  const Counts before_cancel = Scraped(port);
  {
    auto slow = v1::Generation::NewStub(server.Channel(nullptr, SlowReaderArguments()));
    grpc::ClientContext context;
    auto reader = slow->Generate(&context, TokenPrompt(8, 3, 500));
    v1::GenerateResponse first;
    ASSERT_TRUE(reader->Read(&first));
    context.TryCancel();
    v1::GenerateResponse rest;
    while (reader->Read(&rest)) {
    }
    EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  }
  const Counts cancel_delta = Minus(WaitForTotal(port, before_cancel, 1), before_cancel);
  EXPECT_EQ(cancel_delta, (Counts{0, 1, 0, 0}));
  EXPECT_EQ(FromMemory(server), Scraped(port));
}

TEST(RequestOutcomesServerTest, AResponseOverMaxMessageBytesIsCountedAndLoggedAsTheClientGotIt) {
  ServerProcess server;
  // A stream message carries the events that piled up since the last write: at most
  // stream_buffer_tokens tokens (16 here: about 200 bytes with the final summary, whatever the
  // machine's load), so the streamed call below stays under the 1024-byte limit.
  ASSERT_TRUE(server.Start({"metrics.address=127.0.0.1:0", "server.max_message_bytes=1024",
                            "scheduler.stream_buffer_tokens=16"}));
  const int port = MetricsPort(server);
  ASSERT_GT(port, 0) << server.Stderr();
  auto stub = server.Stub();
  const Counts before = Scraped(port);

  // 300 token ids and their text: well over 1024 bytes in one CompleteResponse.
  grpc::ClientContext context;
  v1::CompleteResponse response;
  const grpc::Status s = stub->Complete(&context, TokenPrompt(8, 5, 300), &response);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << s.error_message();
  EXPECT_THAT(s.error_message(), HasSubstr("server.max_message_bytes (1024 bytes)"));

  // The same tokens streamed: every message is small, so the call succeeds.
  StreamResult streamed = ReadStream(*stub, TokenPrompt(8, 5, 300));
  EXPECT_TRUE(streamed.status.ok()) << streamed.status.error_message();
  EXPECT_EQ(streamed.token_ids.size(), 300u);

  const Counts delta = Minus(WaitForTotal(port, before, 2), before);
  EXPECT_EQ(delta, (Counts{1, 0, 0, 1}));
  EXPECT_EQ(FromMemory(server), Scraped(port));
  EXPECT_TRUE(server.WaitForStderr("finished: status=RESOURCE_EXHAUSTED", absl::Seconds(5)))
      << server.Stderr();
  EXPECT_THAT(server.Stderr(), HasSubstr("larger than server.max_message_bytes"));
  EXPECT_THAT(server.Stderr(), ::testing::Not(HasSubstr("Complete req-1 finished: status=OK")));
}

}  // namespace
}  // namespace kvserve::server::testing
