#include "engine/common/huge_pages.h"

#include <unistd.h>

#include <cerrno>

namespace kvserve::engine {
namespace {

#ifdef MADV_COLLAPSE
constexpr int kMadvCollapse = MADV_COLLAPSE;
#else
constexpr int kMadvCollapse = 25;  // Linux's value; older headers lack the name
#endif

}  // namespace

void* AllocateHugeAligned(size_t bytes) {
  const size_t reserved = bytes + kHugePageBytes;
  void* p = ::mmap(nullptr, reserved, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return nullptr;
  // Keep the aligned [start, start + bytes) of the reservation, then populate it.
  auto* first = static_cast<uint8_t*>(p);
  const size_t misalign = reinterpret_cast<uintptr_t>(first) % kHugePageBytes;
  uint8_t* start = first + (misalign == 0 ? 0 : kHugePageBytes - misalign);
  if (start > first) ::munmap(first, static_cast<size_t>(start - first));
  uint8_t* end = start + bytes;
  if (first + reserved > end) ::munmap(end, static_cast<size_t>(first + reserved - end));
  ::madvise(start, bytes, MADV_POPULATE_WRITE);
  return start;
}

void FreeHugeAligned(void* p, size_t bytes) {
  if (p != nullptr) ::munmap(p, bytes);
}

HugePageCollapser::HugePageCollapser(void* p, size_t bytes, const std::vector<Range>& excluded)
    : base_(static_cast<uint8_t*>(p)) {
  const auto first = reinterpret_cast<uintptr_t>(p);
  begin_ = (first + kHugePageBytes - 1) / kHugePageBytes * kHugePageBytes;
  end_ = (first + bytes) / kHugePageBytes * kHugePageBytes;
  if (end_ < begin_) end_ = begin_;
  AdviseHugePages(p, bytes);
  for (const auto& [q, n] : excluded) Exclude(q, n);
  thread_ = std::thread([this] { Run(); });
}

HugePageCollapser::~HugePageCollapser() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  thread_.join();
}

void HugePageCollapser::Exclude(const void* p, size_t n) {
  const auto first = reinterpret_cast<uintptr_t>(p);
  {
    absl::MutexLock lock(&mu_);  // held by Run while it collapses a page
    excluded_.emplace_back(first, first + n);
  }
  const auto page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t b = (first + page - 1) / page * page;
  const uintptr_t e = (first + n) / page * page;
  // As an offset from the pointer given (no integer-to-pointer cast).
  if (b < e)
    ::madvise(const_cast<uint8_t*>(static_cast<const uint8_t*>(p)) + (b - first), e - b,
              MADV_NOHUGEPAGE);
}

void HugePageCollapser::Wait() {
  absl::MutexLock lock(&mu_);
  mu_.Await(absl::Condition(&done_));
}

void HugePageCollapser::Run() {
  for (uintptr_t page = begin_; page < end_; page += kHugePageBytes) {
    absl::MutexLock lock(&mu_);
    if (stop_) break;
    bool skip = false;
    for (const auto& [b, e] : excluded_) skip = skip || (b < page + kHugePageBytes && page < e);
    if (skip) continue;
    // Under the lock, so that Exclude() returns only once this page is done.
    if (::madvise(base_ + (page - reinterpret_cast<uintptr_t>(base_)), kHugePageBytes,
                  kMadvCollapse) != 0 &&
        errno == EINVAL) {
      break;  // a kernel without MADV_COLLAPSE: the advice stays, for khugepaged
    }
    // Other errors (no free huge page now, EAGAIN): that page keeps its small pages.
  }
  absl::MutexLock lock(&mu_);
  done_ = true;
}

}  // namespace kvserve::engine
