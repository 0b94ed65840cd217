// Transparent huge pages for memory that is streamed once per decode step (model weights): with
// 4 KiB pages the hardware prefetchers stop at every page. Advice only: without transparent huge
// pages the memory works the same, more slowly.
//
// Weights are first written into ordinary pages and collapsed into huge pages afterwards, on a
// background thread (HugePageCollapser): asking for huge pages before the memory is touched makes
// every first touch wait for the kernel to find, and on a virtual machine often to clear, a free
// 2 MiB page, which turned a 0.2 s load of a 610 MiB model into up to 5 s. Collapsed afterwards,
// the load takes the time of the read and decode reaches full speed once the collapse is done
// (0.1-0.7 s for that model).
#ifndef KVSERVE_ENGINE_COMMON_HUGE_PAGES_H_
#define KVSERVE_ENGINE_COMMON_HUGE_PAGES_H_

#include <sys/mman.h>

#include <cstddef>
#include <cstdint>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace kvserve::engine {

inline constexpr size_t kHugePageBytes = size_t{2} << 20;

inline size_t RoundUpToHugePages(size_t bytes) {
  return (bytes + kHugePageBytes - 1) / kHugePageBytes * kHugePageBytes;
}

// `bytes` (a multiple of kHugePageBytes) of zeroed memory on a kHugePageBytes boundary, its pages
// populated at once (MAP_POPULATE: one pass in the kernel costs less than a fault per 4 KiB page
// when the memory is first written); nullptr when the system has no memory for it.
// FreeHugeAligned(p, bytes) returns it.
void* AllocateHugeAligned(size_t bytes);
void FreeHugeAligned(void* p, size_t bytes);

// Asks for huge pages over [p, p + bytes) (p on a kHugePageBytes boundary for full effect).
inline void AdviseHugePages(void* p, size_t bytes) { ::madvise(p, bytes, MADV_HUGEPAGE); }

// Advises [p, p + bytes) as huge pages and collapses every whole 2 MiB page inside it, one at a
// time, on a thread of its own (MADV_COLLAPSE, Linux 6.1 and later; on an older kernel the thread
// ends at once and khugepaged collapses the advised range at its own pace). The memory must stay
// mapped until the collapser is destroyed; readers need not wait for it.
class HugePageCollapser {
 public:
  using Range = std::pair<const void*, size_t>;  // [first, first + second)
  // `excluded`: ranges to leave alone from the start, as Exclude() does.
  HugePageCollapser(void* p, size_t bytes, const std::vector<Range>& excluded = {});
  ~HugePageCollapser();  // stops after the page in progress and joins the thread
  HugePageCollapser(const HugePageCollapser&) = delete;
  HugePageCollapser& operator=(const HugePageCollapser&) = delete;

  // Leaves the 2 MiB pages that overlap [p, p + n) as they are from now on, and advises the
  // range against huge pages (so khugepaged leaves it too): memory about to be released
  // (collapsing a partly released page would fill its released part again). Returns once no
  // collapse of such a page is in progress.
  void Exclude(const void* p, size_t n);
  // Blocks until every page has been tried. For tests and benchmarks.
  void Wait();

 private:
  void Run();

  uint8_t* base_;          // the range as given
  uintptr_t begin_, end_;  // the whole 2 MiB pages of it
  mutable absl::Mutex mu_;
  std::vector<std::pair<uintptr_t, uintptr_t>> excluded_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  bool done_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace kvserve::engine

#endif  // KVSERVE_ENGINE_COMMON_HUGE_PAGES_H_
