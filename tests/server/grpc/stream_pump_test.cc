// StreamPump: posted calls run on the pump's thread, a call posted again before its run starts
// runs once, a post during a run brings another run, and nothing posted is lost at destruction.
#include "server/grpc/stream_pump.h"

#include <atomic>
#include <memory>
#include <thread>

#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"

namespace kvserve::server {
namespace {

class CountingTarget : public PumpTarget {
 public:
  void Pump() override {
    thread = std::this_thread::get_id();
    if (runs.fetch_add(1) == 0 && block_first != nullptr) {
      entered.Notify();
      block_first->WaitForNotification();
    }
  }
  std::atomic<int> runs{0};
  std::thread::id thread;
  absl::Notification entered;
  absl::Notification* block_first = nullptr;
};

bool WaitFor(const std::atomic<int>& value, int want) {
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (value.load() < want) {
    if (absl::Now() > deadline) return false;
    absl::SleepFor(absl::Milliseconds(1));
  }
  return true;
}

TEST(StreamPumpTest, RunsPostedTargetsOnItsOwnThread) {
  StreamPump pump;
  auto target = std::make_shared<CountingTarget>();
  pump.Post(target);
  ASSERT_TRUE(WaitFor(target->runs, 1));
  EXPECT_NE(target->thread, std::this_thread::get_id());
}

TEST(StreamPumpTest, APostDuringARunBringsAnotherRunAndRepeatsBeforeItAreMerged) {
  StreamPump pump;
  absl::Notification release;
  auto blocker = std::make_shared<CountingTarget>();
  blocker->block_first = &release;
  pump.Post(blocker);
  blocker->entered.WaitForNotification();  // the pump thread is inside blocker's first run
  // Posted three times while queued behind the running one: runs once.
  auto target = std::make_shared<CountingTarget>();
  pump.Post(target);
  pump.Post(target);
  pump.Post(target);
  // Posted while its own run is in progress: runs again afterwards.
  pump.Post(blocker);
  release.Notify();
  ASSERT_TRUE(WaitFor(blocker->runs, 2));
  ASSERT_TRUE(WaitFor(target->runs, 1));
  absl::SleepFor(absl::Milliseconds(50));
  EXPECT_EQ(target->runs.load(), 1);
  EXPECT_EQ(blocker->runs.load(), 2);
}

TEST(StreamPumpTest, SkipsTargetsThatAreGoneAndRunsTheRestBeforeItIsDestroyed) {
  auto kept = std::make_shared<CountingTarget>();
  {
    StreamPump pump;
    absl::Notification release;
    auto blocker = std::make_shared<CountingTarget>();
    blocker->block_first = &release;
    pump.Post(blocker);
    blocker->entered.WaitForNotification();
    auto gone = std::make_shared<CountingTarget>();
    pump.Post(gone);
    pump.Post(kept);
    gone.reset();  // destroyed while queued: skipped
    release.Notify();
  }  // the destructor runs `kept` before it returns
  EXPECT_EQ(kept->runs.load(), 1);
}

}  // namespace
}  // namespace kvserve::server
