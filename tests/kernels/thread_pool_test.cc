#include "kernels/cpu/thread_pool.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <set>
#include <thread>
#include <utility>
#include <vector>

namespace kvserve::kernels {
namespace {

struct Coverage {
  std::mutex mu;
  std::vector<std::pair<int64_t, int64_t>> chunks;
};

void CheckCoverage(ThreadPool& pool, int64_t n, int64_t min_chunk) {
  std::vector<std::atomic<int>> visits(static_cast<size_t>(n));
  Coverage cov;
  pool.ParallelFor(n, min_chunk, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) visits[i].fetch_add(1, std::memory_order_relaxed);
    std::lock_guard<std::mutex> lock(cov.mu);
    cov.chunks.emplace_back(begin, end);
  });
  for (int64_t i = 0; i < n; ++i) {
    ASSERT_EQ(visits[i].load(), 1) << "n=" << n << " min_chunk=" << min_chunk << " i=" << i;
  }
  if (n == 0) {
    EXPECT_TRUE(cov.chunks.empty());
    return;
  }
  EXPECT_LE(static_cast<int>(cov.chunks.size()), pool.num_threads());
  for (const auto& [begin, end] : cov.chunks) {
    EXPECT_LT(begin, end);
    if (cov.chunks.size() > 1) {
      EXPECT_GE(end - begin, min_chunk) << "n=" << n << " min_chunk=" << min_chunk;
    }
  }
}

TEST(ThreadPoolTest, VisitsEveryIndexExactlyOnce) {
  for (int threads : {1, 2, 3, 4, 7}) {
    ThreadPool pool(threads);
    ASSERT_EQ(pool.num_threads(), threads);
    for (int64_t n : {0, 1, 2, 3, 5, 7, 8, 17, 64, 100, 1000, 4099, 100003}) {
      for (int64_t min_chunk : {0, 1, 2, 3, 7, 64, 1000, 1 << 20}) {
        CheckCoverage(pool, n, min_chunk);
      }
    }
  }
}

TEST(ThreadPoolTest, DefaultSizeIsOnlineCpus) {
  ThreadPool pool;
  const int expected = std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  EXPECT_EQ(pool.num_threads(), expected);
  CheckCoverage(pool, 12345, 1);
}

TEST(ThreadPoolTest, PoolOfOneRunsInlineOnCaller) {
  ThreadPool pool(1);
  const std::thread::id caller = std::this_thread::get_id();
  int calls = 0;
  pool.ParallelFor(1000, 1, [&](int64_t begin, int64_t end) {
    EXPECT_EQ(std::this_thread::get_id(), caller);
    EXPECT_EQ(begin, 0);
    EXPECT_EQ(end, 1000);
    ++calls;
  });
  EXPECT_EQ(calls, 1);
}

TEST(ThreadPoolTest, WorkersRunChunksConcurrentlyWithTheCaller) {
  for (int threads : {2, 4}) {
    ThreadPool pool(threads);
    const std::thread::id caller = std::this_thread::get_id();
    std::mutex mu;
    std::set<std::thread::id> ids;
    std::atomic<int> entered{0};
    bool all_met = true;
    // Every chunk waits until all chunks have started, which only a pool whose workers really
    // run chunks next to the caller can satisfy.
    pool.ParallelFor(threads, 1, [&](int64_t, int64_t) {
      entered.fetch_add(1);
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
      while (entered.load() < threads) {
        if (std::chrono::steady_clock::now() > deadline) {
          std::lock_guard<std::mutex> lock(mu);
          all_met = false;
          break;
        }
        std::this_thread::yield();
      }
      std::lock_guard<std::mutex> lock(mu);
      ids.insert(std::this_thread::get_id());
    });
    EXPECT_TRUE(all_met);
    EXPECT_EQ(static_cast<int>(ids.size()), threads);
    EXPECT_EQ(ids.count(caller), 1u);
  }
}

TEST(ThreadPoolTest, SmallWorkStaysOnCaller) {
  ThreadPool pool(4);
  const std::thread::id caller = std::this_thread::get_id();
  int calls = 0;
  pool.ParallelFor(100, 64, [&](int64_t begin, int64_t end) {
    EXPECT_EQ(std::this_thread::get_id(), caller);
    ++calls;
  });
  EXPECT_EQ(calls, 1);
}

TEST(ThreadPoolTest, ManyBackToBackCalls) {
  ThreadPool pool(3);
  std::atomic<int64_t> sum{0};
  constexpr int kCalls = 20000;
  for (int c = 0; c < kCalls; ++c) {
    pool.ParallelFor(9, 1, [&](int64_t begin, int64_t end) {
      int64_t s = 0;
      for (int64_t i = begin; i < end; ++i) s += i;
      sum.fetch_add(s, std::memory_order_relaxed);
    });
  }
  EXPECT_EQ(sum.load(), int64_t{kCalls} * 36);
}

TEST(ThreadPoolTest, WakesWorkersThatWentToSleep) {
  ThreadPool pool(2);
  for (int round = 0; round < 5; ++round) {
    // Idle long enough for the workers to stop spinning and block.
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    CheckCoverage(pool, 1000, 1);
  }
}

TEST(ThreadPoolTest, ConstructAndDestroyRepeatedly) {
  for (int i = 0; i < 50; ++i) {
    ThreadPool pool(1 + i % 4);
    if (i % 2 == 0) CheckCoverage(pool, 100, 1);
  }
}

}  // namespace
}  // namespace kvserve::kernels
