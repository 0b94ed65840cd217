// Liveness of the engine loop (server/grpc/liveness_watchdog.h): the decision with injected
// times, the watchdog thread with an injected engine and clock, and the real server, where the
// liveness service stays SERVING through slow readers and a drain while readiness does not.
#include <signal.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "server/grpc/liveness_watchdog.h"
#include "tests/server/grpc/server_process.h"
#include "tools/client_util.h"

namespace kvserve::server::testing {
namespace {

const absl::Time kT0 = absl::FromUnixSeconds(1000000);

TEST(LivenessTrackerTest, IdleEngineIsLive) {
  LivenessTracker t(absl::Seconds(60));
  for (int s = 0; s <= 600; s += 30) {
    EXPECT_TRUE(t.Observe(kT0 + absl::Seconds(s), {/*steps=*/5, absl::Seconds(1), /*queued=*/0}));
  }
}

TEST(LivenessTrackerTest, StepsWithWorkQueuedAreLive) {
  LivenessTracker t(absl::Seconds(60));
  for (int s = 0; s <= 600; s += 30) {
    EXPECT_TRUE(t.Observe(kT0 + absl::Seconds(s), {s, absl::Seconds(s), 8}));
  }
}

TEST(LivenessTrackerTest, NoProgressWithWorkQueuedFailsAfterTheStallTime) {
  LivenessTracker t(absl::Seconds(60));
  EXPECT_TRUE(t.Observe(kT0, {100, absl::Seconds(10), 4}));
  EXPECT_TRUE(t.Observe(kT0 + absl::Seconds(30), {100, absl::Seconds(10), 4}));
  EXPECT_TRUE(t.Observe(kT0 + absl::Seconds(59), {100, absl::Seconds(10), 4}));
  EXPECT_FALSE(t.Observe(kT0 + absl::Seconds(60), {100, absl::Seconds(10), 4}));
  EXPECT_EQ(t.stalled_for(), absl::Seconds(60));
  EXPECT_FALSE(t.Observe(kT0 + absl::Seconds(90), {100, absl::Seconds(10), 5}));
  // One step run: live again, and the stall time starts over.
  EXPECT_TRUE(t.Observe(kT0 + absl::Seconds(91), {101, absl::Seconds(11), 5}));
  EXPECT_TRUE(t.Observe(kT0 + absl::Seconds(150), {101, absl::Seconds(11), 5}));
  EXPECT_FALSE(t.Observe(kT0 + absl::Seconds(151), {101, absl::Seconds(11), 5}));
}

// Every stream waits for a slow reader: no step runs, but the loop keeps turning (its step time
// grows), which is not a wedge.
TEST(LivenessTrackerTest, LoopTurningWithoutStepsIsLive) {
  LivenessTracker t(absl::Seconds(60));
  for (int s = 0; s <= 600; s += 30) {
    EXPECT_TRUE(t.Observe(kT0 + absl::Seconds(s), {100, absl::Milliseconds(1000 + s), 2}));
  }
}

// The queue emptying while stalled counts as progress (the requests ended or were cancelled).
TEST(LivenessTrackerTest, EmptyQueueResetsTheStall) {
  LivenessTracker t(absl::Seconds(60));
  EXPECT_TRUE(t.Observe(kT0, {7, absl::Seconds(1), 1}));
  EXPECT_TRUE(t.Observe(kT0 + absl::Seconds(50), {7, absl::Seconds(1), 0}));
  EXPECT_TRUE(t.Observe(kT0 + absl::Seconds(100), {7, absl::Seconds(1), 1}));
  EXPECT_FALSE(t.Observe(kT0 + absl::Seconds(110), {7, absl::Seconds(1), 1}));
}

// The watchdog thread with an injected engine (frozen, then moving) and a clock that advances
// 10 s per observation.
TEST(LivenessWatchdogTest, ReportsAWedgedEngineAndItsRecovery) {
  std::atomic<int64_t> steps{0};
  std::atomic<int64_t> clock_s{0};
  absl::Mutex mu;
  std::vector<bool> reports;
  {
    LivenessWatchdog watchdog(
        [&] {
          return LivenessSample{steps.load(), absl::Seconds(steps.load()), 3};
        },
        [&](bool live) {
          absl::MutexLock lock(&mu);
          reports.push_back(live);
        },
        absl::Seconds(60), absl::Milliseconds(1),
        [&] { return kT0 + absl::Seconds(clock_s.fetch_add(10)); });
    auto has = [&](bool value) {
      return [&reports, value]() ABSL_SHARED_LOCKS_REQUIRED(mu) {
        return !reports.empty() && reports.back() == value;
      };
    };
    {
      absl::MutexLock lock(&mu);
      auto wedged = has(false);
      ASSERT_TRUE(mu.AwaitWithTimeout(absl::Condition(&wedged), absl::Seconds(30)));
      // Live for the first 60 s of the injected clock (observations at 0, 10, ..., 50).
      ASSERT_GE(reports.size(), 7u);
      for (size_t i = 0; i < 6; ++i) EXPECT_TRUE(reports[i]) << i;
      EXPECT_FALSE(reports[6]);
    }
    steps.store(1);
    absl::MutexLock lock(&mu);
    auto live = has(true);
    ASSERT_TRUE(mu.AwaitWithTimeout(absl::Condition(&live), absl::Seconds(30)));
  }
}

std::string Health(const std::shared_ptr<grpc::Channel>& channel, const std::string& service) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  auto status = tools::CheckHealth(channel, &context, service);
  if (!status.ok()) return absl::StatusCodeToString(status.status().code());
  return *status;
}

// Samples the liveness service for `d`: true when it answered SERVING every time.
bool LiveThroughout(const std::shared_ptr<grpc::Channel>& channel, absl::Duration d,
                    std::string* last) {
  const absl::Time end = absl::Now() + d;
  while (absl::Now() < end) {
    *last = Health(channel, kLivenessService);
    if (*last != "SERVING") return false;
    absl::SleepFor(absl::Milliseconds(100));
  }
  return true;
}

// The real server: liveness is a service of its own, SERVING while a request is paused for a
// reader that stopped reading (longer than the stall time), and still SERVING while the server
// drains, when readiness (service "") says NOT_SERVING.
TEST(LivenessServerTest, LivenessIsDistinctFromReadiness) {
  ServerProcess server;
  ASSERT_TRUE(server.Start({"server.liveness_stall_seconds=1", "scheduler.stream_buffer_tokens=16",
                            "server.drain_timeout_seconds=30"}));
  auto channel = server.Channel();
  EXPECT_EQ(Health(channel, ""), "SERVING");
  EXPECT_EQ(Health(channel, kLivenessService), "SERVING");
  EXPECT_EQ(Health(channel, "kvserve.no-such-service"), "NOT_FOUND");

  // A client that reads one message and stops: its request pauses with its buffer full.
  auto slow = server.Channel(nullptr, SlowReaderArguments());
  auto stub = v1::Generation::NewStub(slow);
  grpc::ClientContext context;
  auto reader = stub->Generate(&context, TokenPrompt(50, 0, 1500));
  v1::GenerateResponse first;
  ASSERT_TRUE(reader->Read(&first));
  std::string last;
  EXPECT_TRUE(LiveThroughout(channel, absl::Seconds(2.5), &last)) << last;

  ASSERT_EQ(kill(server.pid(), SIGTERM), 0);
  ASSERT_TRUE(server.WaitForStderr("draining", absl::Seconds(10)));
  EXPECT_EQ(Health(channel, ""), "NOT_SERVING");
  // The drain resets every service; the watchdog sets liveness again within its interval.
  const absl::Time deadline = absl::Now() + absl::Seconds(5);
  while (Health(channel, kLivenessService) != "SERVING" && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_TRUE(LiveThroughout(channel, absl::Seconds(2), &last)) << last;
  EXPECT_EQ(Health(channel, ""), "NOT_SERVING");
  EXPECT_EQ(server.Stderr().find("liveness: the engine loop has made no progress"),
            std::string::npos)
      << server.Stderr();

  context.TryCancel();
  EXPECT_EQ(server.SignalAndWait(0, absl::Seconds(30)), 0) << server.Stderr();
}

}  // namespace
}  // namespace kvserve::server::testing
