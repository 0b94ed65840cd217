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
  if (b < e) ::madvise(const_cast<uint8_t*>(static_cast<const uint8_t*>(p)) + (b - first), e - b, MADV_NOHUGEPAGE);
}

void HugePageCollapser::Wait() {
  absl::MutexLock lock(&mu_);
  mu_.Await(absl::Condition(&done_));
}

int64_t HugePageCollapser::collapsed() const {
  absl::MutexLock lock(&mu_);
  return collapsed_;
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
                  kMadvCollapse) == 0) {
      ++collapsed_;
    } else if (errno == EINVAL) {
      break;  // a kernel without MADV_COLLAPSE: the advice stays, for khugepaged
    }
    // Other errors (no free huge page now, EAGAIN): that page keeps its small pages.
  }
  absl::MutexLock lock(&mu_);
  done_ = true;
}

}  // namespace kvserve::engine
