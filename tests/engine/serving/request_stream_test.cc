// RequestStream: pushes are queued silently and the consumer is told once per Notify; WaitAndTake
// sees events whether or not they were notified, and wakes on Notify from another thread.
#include "engine/serving/request_stream.h"

#include <atomic>
#include <thread>
#include <vector>

#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"

namespace kvserve::engine {
namespace {

StreamEvent Tokens(std::initializer_list<int32_t> ids, bool final = false) {
  StreamEvent e;
  e.token_ids.assign(ids.begin(), ids.end());
  e.final = final;
  return e;
}

TEST(RequestStreamTest, PushOwesOneNotifyUntilNotified) {
  RequestStream stream("r", 100);
  int calls = 0;
  stream.SetListener([&calls] { ++calls; });
  EXPECT_EQ(calls, 0);  // nothing pending yet
  EXPECT_TRUE(stream.Push(Tokens({1})));
  EXPECT_FALSE(stream.Push(Tokens({2, 3})));
  EXPECT_FALSE(stream.Push(Tokens({4})));
  EXPECT_EQ(calls, 0);  // a push alone does not call the listener
  stream.Notify();
  EXPECT_EQ(calls, 1);
  EXPECT_TRUE(stream.Push(Tokens({5})));  // owed again after the Notify
  stream.Notify();
  EXPECT_EQ(calls, 2);

  std::vector<StreamEvent> out;
  EXPECT_FALSE(stream.Take(&out));
  ASSERT_EQ(out.size(), 4u);
  EXPECT_EQ(out[1].token_ids.size(), 2u);
  EXPECT_EQ(out[3].token_ids[0], 5);
}

TEST(RequestStreamTest, SetListenerCallsAtOnceWhenEventsArePending) {
  RequestStream stream("r", 100);
  stream.Push(Tokens({1}));
  int calls = 0;
  stream.SetListener([&calls] { ++calls; });
  EXPECT_EQ(calls, 1);
}

TEST(RequestStreamTest, HasRoomCountsUntakenTokens) {
  RequestStream stream("r", 3);
  EXPECT_TRUE(stream.HasRoom());
  stream.Push(Tokens({1, 2}));
  EXPECT_TRUE(stream.HasRoom());  // 2 < 3
  stream.Push(Tokens({3}));
  EXPECT_FALSE(stream.HasRoom());  // 3 held back
  std::vector<StreamEvent> out;
  stream.Take(&out);
  EXPECT_TRUE(stream.HasRoom());
}

TEST(RequestStreamTest, NothingIsPushedAfterTheFinalEvent) {
  RequestStream stream("r", 100);
  EXPECT_TRUE(stream.Push(Tokens({1}, /*final=*/true)));
  stream.Notify();
  EXPECT_FALSE(stream.Push(Tokens({2})));
  std::vector<StreamEvent> out;
  EXPECT_TRUE(stream.Take(&out));
  ASSERT_EQ(out.size(), 1u);
  EXPECT_TRUE(out[0].final);
}

TEST(RequestStreamTest, WaitAndTakeTakesEventsNotYetNotified) {
  RequestStream stream("r", 100);
  stream.Push(Tokens({7}));
  std::vector<StreamEvent> out;
  const absl::Time start = absl::Now();
  EXPECT_FALSE(stream.WaitAndTake(&out, absl::Seconds(30)));
  EXPECT_LT(absl::Now() - start, absl::Seconds(20));  // did not wait for the timeout
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].token_ids[0], 7);
}

TEST(RequestStreamTest, WaitAndTakeWakesOnNotifyFromAnotherThread) {
  RequestStream stream("r", 100);
  absl::Notification waiting;
  std::vector<StreamEvent> out;
  bool final = false;
  absl::Duration waited;
  std::thread consumer([&] {
    waiting.Notify();
    const absl::Time start = absl::Now();
    final = stream.WaitAndTake(&out, absl::Seconds(10));
    waited = absl::Now() - start;
  });
  waiting.WaitForNotification();
  absl::SleepFor(absl::Milliseconds(20));  // most likely asleep in WaitAndTake by now
  EXPECT_TRUE(stream.Push(Tokens({1, 2}, /*final=*/true)));
  stream.Notify();
  consumer.join();
  // Woken by Notify, not by the timeout (which would also hand over the pushed events).
  EXPECT_LT(waited, absl::Seconds(5));
  EXPECT_TRUE(final);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].token_ids.size(), 2u);
}

TEST(RequestStreamTest, WaitAndTakeReturnsEmptyAtTheTimeout) {
  RequestStream stream("r", 100);
  std::vector<StreamEvent> out;
  const absl::Time start = absl::Now();
  EXPECT_FALSE(stream.WaitAndTake(&out, absl::Milliseconds(30)));
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(30));
  EXPECT_TRUE(out.empty());
}

}  // namespace
}  // namespace kvserve::engine
