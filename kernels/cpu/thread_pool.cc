#include "kernels/cpu/thread_pool.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace kvserve::kernels {
namespace {

// A worker polls for new work this long after its last chunk before it sleeps: long enough to
// bridge the serial gaps between the kernels of one forward pass.
constexpr auto kSpinTime = std::chrono::microseconds(200);
// Polls between clock reads / yields while spinning.
constexpr int kPollsPerCheck = 64;
constexpr int kMaxThreads = 1024;

inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

// Job and claim words pack a job sequence number (bits 63..16) with a count (bits 15..0): the
// job word carries the number of chunks, the claim word the next unclaimed chunk. Tagging claims
// with the sequence number keeps a worker that wakes late from claiming a chunk of a later job.
constexpr int kCountBits = 16;
constexpr uint64_t kCountMask = (uint64_t{1} << kCountBits) - 1;

}  // namespace

struct ThreadPool::State {
  int num_threads = 1;
  std::vector<std::thread> workers;

  alignas(64) std::atomic<uint64_t> job{0};
  alignas(64) std::atomic<uint64_t> claim{0};
  alignas(64) std::atomic<int64_t> done{0};  // chunks of the current job finished
  alignas(64) std::atomic<int> sleepers{0};
  std::atomic<bool> stop{false};

  // Valid while a job runs; written by the caller before it publishes `job`.
  const std::function<void(int64_t, int64_t)>* fn = nullptr;
  int64_t n = 0;

  // Guards no data (the job state is atomics): it only orders a worker's decision to sleep against
  // a caller's wake-up (see WorkerLoop and Publish), so there is nothing to annotate. A plain
  // std::mutex: kernels/ links no Abseil.
  std::mutex mu;
  std::condition_variable cv;

  // Bounds of chunk i of `chunks` equal parts of [0, n).
  static void ChunkBounds(int64_t n, int64_t chunks, int64_t i, int64_t* begin, int64_t* end) {
    const int64_t base = n / chunks;
    const int64_t extra = n % chunks;
    *begin = base * i + std::min(i, extra);
    *end = *begin + base + (i < extra ? 1 : 0);
  }

  // Claims and runs chunks of job `word` until none is left. Once a chunk is claimed its job
  // cannot finish before the chunk does, so fn and n are still that job's.
  void RunChunks(uint64_t word) {
    const uint64_t seq = word >> kCountBits;
    const uint64_t chunks = word & kCountMask;
    uint64_t c = claim.load(std::memory_order_acquire);
    for (;;) {
      if ((c >> kCountBits) != seq || (c & kCountMask) >= chunks) return;
      if (!claim.compare_exchange_weak(c, c + 1, std::memory_order_acq_rel)) continue;
      int64_t begin;
      int64_t end;
      ChunkBounds(n, static_cast<int64_t>(chunks), static_cast<int64_t>(c & kCountMask), &begin,
                  &end);
      (*fn)(begin, end);
      done.fetch_add(1, std::memory_order_acq_rel);
      c = claim.load(std::memory_order_acquire);
    }
  }

  void WorkerLoop() {
    uint64_t seen = 0;
    for (;;) {
      uint64_t word = job.load(std::memory_order_acquire);
      if (word == seen) {
        const auto deadline = std::chrono::steady_clock::now() + kSpinTime;
        int polls = 0;
        while ((word = job.load(std::memory_order_acquire)) == seen) {
          CpuRelax();
          if (++polls % kPollsPerCheck != 0) continue;
          if (std::chrono::steady_clock::now() < deadline) {
            std::this_thread::yield();  // let a descheduled caller or worker run
            continue;
          }
          // Sleep. `sleepers` is raised before `job` is re-checked under the mutex, so a caller
          // that publishes a job either sees the sleeper and notifies, or is seen here.
          std::unique_lock<std::mutex> lock(mu);
          sleepers.fetch_add(1, std::memory_order_seq_cst);
          while ((word = job.load(std::memory_order_seq_cst)) == seen) cv.wait(lock);
          sleepers.fetch_sub(1, std::memory_order_relaxed);
          break;
        }
      }
      seen = word;
      if (stop.load(std::memory_order_acquire)) return;
      RunChunks(word);
    }
  }

  // Publishes a job of `chunks` chunks (0: wake-up only) and returns its word.
  uint64_t Publish(uint64_t chunks) {
    const uint64_t seq = (job.load(std::memory_order_relaxed) >> kCountBits) + 1;
    const uint64_t word = (seq << kCountBits) | chunks;
    done.store(0, std::memory_order_relaxed);
    claim.store(seq << kCountBits, std::memory_order_relaxed);
    job.store(word, std::memory_order_seq_cst);
    if (sleepers.load(std::memory_order_seq_cst) > 0) {
      { std::lock_guard<std::mutex> lock(mu); }
      cv.notify_all();
    }
    return word;
  }
};

ThreadPool::ThreadPool(int num_threads) : state_(std::make_unique<State>()) {
  if (num_threads <= 0) num_threads = static_cast<int>(std::thread::hardware_concurrency());
  num_threads = std::clamp(num_threads, 1, kMaxThreads);
  state_->num_threads = num_threads;
  state_->workers.reserve(num_threads - 1);
  for (int i = 1; i < num_threads; ++i) {
    state_->workers.emplace_back([s = state_.get()] { s->WorkerLoop(); });
  }
}

ThreadPool::~ThreadPool() {
  state_->stop.store(true, std::memory_order_release);
  state_->Publish(0);
  for (std::thread& t : state_->workers) t.join();
}

int ThreadPool::num_threads() const { return state_->num_threads; }

void ThreadPool::ParallelFor(int64_t n, int64_t min_chunk,
                             const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  min_chunk = std::max<int64_t>(min_chunk, 1);
  const int64_t chunks =
      std::min<int64_t>(state_->num_threads, std::max<int64_t>(1, n / min_chunk));
  if (chunks == 1) {
    fn(0, n);
    return;
  }
  State& s = *state_;
  s.fn = &fn;
  s.n = n;
  // The caller claims chunks like any worker, so a worker that is asleep or descheduled delays
  // nothing but the chunk it has already started.
  s.RunChunks(s.Publish(static_cast<uint64_t>(chunks)));
  int polls = 0;
  while (s.done.load(std::memory_order_acquire) != chunks) {
    CpuRelax();
    if (++polls % kPollsPerCheck == 0) std::this_thread::yield();
  }
}

}  // namespace kvserve::kernels
