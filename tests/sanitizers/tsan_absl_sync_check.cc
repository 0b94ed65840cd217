// Self-check of tsan_absl_sync.cc (tests/sanitizers/check_tsan_absl.sh builds it with TSan, once
// without and once with that file): data guarded by the system Abseil's Mutex, handed over through
// a Notification and through a CondVar wait. Without the interposition TSan reports a race that
// is not one (the library is not instrumented); with it TSan must report nothing.
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"

int main() {
  absl::Mutex mu;
  int counter = 0;
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 1000; ++i) {
        absl::MutexLock lock(&mu);
        ++counter;
      }
    });
  }
  for (std::thread& t : threads) t.join();

  int payload = 0;
  absl::Notification note;
  std::thread writer([&] {
    payload = 42;
    note.Notify();
  });
  note.WaitForNotification();
  const int read = payload;
  writer.join();

  absl::CondVar cv;
  bool ready = false;
  int data = 0;
  std::thread producer([&] {
    absl::MutexLock lock(&mu);
    data = 7;
    ready = true;
    cv.Signal();
  });
  {
    absl::MutexLock lock(&mu);
    while (!ready) cv.Wait(&mu);
  }
  producer.join();
  return counter == 4000 && read == 42 && data == 7 ? 0 : 1;
}
