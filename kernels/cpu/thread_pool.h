// A small fixed-size thread pool for data-parallel kernels.
//
// ParallelFor(n, fn) splits [0, n) into contiguous chunks, runs fn(begin, end) on the calling
// thread and the workers, and returns when every chunk is done. Workers spin briefly before they
// sleep, so back-to-back calls from a decode loop do not pay a futex wake each time.
// Thread-safety: one caller at a time (the engine thread); fn must be safe to run concurrently on
// disjoint ranges. A pool of size 1 runs everything inline.
#ifndef KVSERVE_KERNELS_CPU_THREAD_POOL_H_
#define KVSERVE_KERNELS_CPU_THREAD_POOL_H_

#include <cstdint>
#include <functional>
#include <memory>

namespace kvserve::kernels {

class ThreadPool {
 public:
  // num_threads includes the calling thread; 0 means the number of online CPUs.
  explicit ThreadPool(int num_threads = 0);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int num_threads() const;

  // Runs fn over [0, n) in at most num_threads() chunks, each at least min_chunk long.
  void ParallelFor(int64_t n, int64_t min_chunk, const std::function<void(int64_t, int64_t)>& fn);

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace kvserve::kernels

#endif  // KVSERVE_KERNELS_CPU_THREAD_POOL_H_
