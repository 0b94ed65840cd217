#include "engine/common/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "engine/common/huge_pages.h"

namespace kvserve::engine {
namespace {

absl::Status ErrnoError(int err, const std::string& what, const std::string& path) {
  const std::string message = absl::StrCat(path, ": ", what, ": ", std::strerror(err));
  switch (err) {
    case ENOENT:
    case ENOTDIR:
      return absl::NotFoundError(message);
    case EACCES:
    case EPERM:
      return absl::PermissionDeniedError(message);
    case EISDIR:
      return absl::InvalidArgumentError(message);
    default:
      return absl::InternalError(message);
  }
}

}  // namespace

// The background collapse, started once; a mutex of its own so that a const MappedFile can start
// it and release ranges while it runs.
struct MappedFile::HugePages {
  absl::Mutex mu;
  std::unique_ptr<HugePageCollapser> collapser ABSL_GUARDED_BY(mu);
  std::vector<HugePageCollapser::Range> released ABSL_GUARDED_BY(mu);  // before the collapser
};

MappedFile::MappedFile() = default;

MappedFile::MappedFile(std::string path, const uint8_t* data, int64_t size)
    : path_(std::move(path)),
      data_(data),
      size_(size),
      huge_(data != nullptr ? std::make_unique<HugePages>() : nullptr) {}

void MappedFile::StartHugePages() const {
  if (huge_ == nullptr) return;
  absl::MutexLock lock(&huge_->mu);
  if (huge_->collapser == nullptr) {
    huge_->collapser = std::make_unique<HugePageCollapser>(
        const_cast<uint8_t*>(data_), static_cast<size_t>(size_), huge_->released);
  }
}

void MappedFile::WaitForHugePages() const {
  if (huge_ == nullptr) return;
  absl::MutexLock lock(&huge_->mu);
  if (huge_->collapser != nullptr) huge_->collapser->Wait();
}

absl::StatusOr<MappedFile> MappedFile::Open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoError(errno, "cannot open file", path);

  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return ErrnoError(err, "cannot stat file", path);
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": not a regular file", S_ISDIR(st.st_mode) ? " (a directory)" : ""));
  }
  const int64_t size = static_cast<int64_t>(st.st_size);
  if (size == 0) {
    ::close(fd);
    return MappedFile(path, nullptr, 0);
  }
  // The bytes are read into private anonymous memory rather than mapped from the file: a mapping
  // of the file itself faults (SIGBUS) on any page past a later truncation and shows later
  // rewrites, so a model file changed under a running server could crash it or change its
  // weights. The copy costs one read of the file at load and no page-cache sharing between
  // processes.
  // The memory starts on a 2 MiB boundary so that StartHugePages() can collapse it into huge
  // pages: decode streams every weight once per token, and with 4 KiB pages the hardware
  // prefetchers stop at every page (a 1b-gqa Q4_K_M decode on one core: 8.9 GB/s against
  // 9.7 GB/s from huge pages). It is read into ordinary pages first (engine/common/huge_pages.h).
  // Whole 2 MiB pages, populated before the read (engine/common/huge_pages.h); the tail past the
  // file's end reads as zeros.
  const size_t mapped = RoundUpToHugePages(static_cast<size_t>(size));
  auto* bytes = static_cast<uint8_t*>(AllocateHugeAligned(mapped));
  if (bytes == nullptr) {
    const int err = errno;
    ::close(fd);
    return ErrnoError(err, absl::StrCat("cannot allocate ", size, " bytes for the file"), path);
  }
  int64_t done = 0;
  while (done < size) {
    const ssize_t n = ::pread(fd, bytes + done, static_cast<size_t>(size - done), done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int err = errno;
      ::close(fd);
      FreeHugeAligned(bytes, mapped);
      if (n == 0) {
        return absl::DataLossError(absl::StrCat(path, ": the file shrank while it was read (", size,
                                                " bytes at open, ", done, " read)"));
      }
      return ErrnoError(err, absl::StrCat("cannot read file at byte ", done), path);
    }
    done += n;
  }
  ::close(fd);
  ::mprotect(bytes, mapped, PROT_READ);
  return MappedFile(path, bytes, size);
}

int64_t MappedFile::Release(const void* p, int64_t n) const {
  if (data_ == nullptr || n <= 0) return 0;
  const auto page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const auto base = reinterpret_cast<uintptr_t>(data_);
  uintptr_t begin = std::max(reinterpret_cast<uintptr_t>(p), base);
  uintptr_t end = std::min(reinterpret_cast<uintptr_t>(p) + static_cast<uintptr_t>(n),
                           base + static_cast<uintptr_t>(size_));
  begin = (begin + page - 1) / page * page;
  end = end / page * page;
  if (end <= begin) return 0;
  // The address as an offset from data_ (this memory is ours: mapped in Open()).
  auto* start = const_cast<uint8_t*>(data_) + (begin - base);
  {
    // Never collapsed into huge pages afterwards (that would fill the range again).
    absl::MutexLock lock(&huge_->mu);
    if (huge_->collapser != nullptr) {
      huge_->collapser->Exclude(start, end - begin);
    } else {
      huge_->released.emplace_back(start, end - begin);
    }
  }
  if (::madvise(start, end - begin, MADV_DONTNEED) != 0) return 0;
  return static_cast<int64_t>(end - begin);
}

MappedFile::MappedFile(MappedFile&& other) noexcept
    : path_(std::move(other.path_)),
      data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      huge_(std::move(other.huge_)) {}

MappedFile& MappedFile::operator=(MappedFile&& other) noexcept {
  if (this != &other) {
    Reset();
    path_ = std::move(other.path_);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
    huge_ = std::move(other.huge_);
  }
  return *this;
}

MappedFile::~MappedFile() { Reset(); }

void MappedFile::Reset() {
  huge_.reset();  // the collapser stops before the memory goes
  if (data_ != nullptr) {
    FreeHugeAligned(const_cast<uint8_t*>(data_), RoundUpToHugePages(static_cast<size_t>(size_)));
  }
  data_ = nullptr;
  size_ = 0;
}

}  // namespace kvserve::engine
