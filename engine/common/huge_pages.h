// Transparent huge pages for memory that is streamed once per decode step (model weights): with
// 4 KiB pages the hardware prefetchers stop at every page. Advice only: without transparent huge
// pages the memory works the same, more slowly.
#ifndef KVSERVE_ENGINE_COMMON_HUGE_PAGES_H_
#define KVSERVE_ENGINE_COMMON_HUGE_PAGES_H_

#include <sys/mman.h>

#include <cstddef>

namespace kvserve::engine {

inline constexpr size_t kHugePageBytes = size_t{2} << 20;

inline size_t RoundUpToHugePages(size_t bytes) {
  return (bytes + kHugePageBytes - 1) / kHugePageBytes * kHugePageBytes;
}

// Asks for huge pages over [p, p + bytes) (p on a kHugePageBytes boundary for full effect).
inline void AdviseHugePages(void* p, size_t bytes) { ::madvise(p, bytes, MADV_HUGEPAGE); }

}  // namespace kvserve::engine

#endif  // KVSERVE_ENGINE_COMMON_HUGE_PAGES_H_
