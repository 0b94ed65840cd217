// The bytes of a whole file, read once into private read-only memory.
//
// The contents are copied at Open() into an anonymous mapping (not a mapping of the file): a file
// that is truncated, rewritten or deleted afterwards can neither fault a reader (SIGBUS past the
// new end of a file mapping) nor change what it reads. MappedFile owns that memory and unmaps it
// when destroyed. It is movable, not copyable; moving keeps the address, so pointers into data()
// stay valid for as long as some MappedFile owns the memory. The memory is 2 MiB-aligned, read
// into ordinary pages, and collapsed into transparent huge pages in the background once the owner
// asks (StartHugePages: weights used in place are streamed once per decode step). The bytes are
// immutable (PROT_READ) and safe to read from any number of threads. An empty file gives
// data() == nullptr and size() == 0.
#ifndef KVSERVE_ENGINE_COMMON_MAPPED_FILE_H_
#define KVSERVE_ENGINE_COMMON_MAPPED_FILE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <utility>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace kvserve::engine {

class MappedFile {
 public:
  // Reads `path` into private read-only memory. Errors name the path: NotFound (no such file),
  // PermissionDenied, InvalidArgument (a directory or other non-regular file), DataLoss (the file
  // shrank while it was read), Internal (stat, read or allocation failure).
  static absl::StatusOr<MappedFile> Open(const std::string& path);

  MappedFile();
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile();

  const uint8_t* data() const { return data_; }
  int64_t size() const { return size_; }  // bytes
  absl::Span<const uint8_t> bytes() const {
    return absl::Span<const uint8_t>(data_, static_cast<size_t>(size_));
  }
  // The path as given to Open().
  const std::string& path() const { return path_; }

  // Returns the memory of the whole pages inside [p, p + n) to the system (the part of the range
  // outside this file's bytes is ignored). Those bytes read as zeros afterwards: only for ranges
  // nothing reads again (a weight matrix repacked elsewhere). Returns the bytes released.
  // Released ranges are never collapsed into huge pages afterwards.
  int64_t Release(const void* p, int64_t n) const;

  // Starts collapsing the bytes into huge pages on a background thread (HugePageCollapser);
  // later calls do nothing. Call it once the ranges to release are released: a 2 MiB page
  // collapsed first and released afterwards is split again.
  void StartHugePages() const;
  // Blocks until the collapse started by StartHugePages() is done (nothing when none was
  // started). For tests and benchmarks.
  void WaitForHugePages() const;

 private:
  struct HugePages;

  MappedFile(std::string path, const uint8_t* data, int64_t size);
  void Reset();

  std::string path_;
  const uint8_t* data_ = nullptr;
  int64_t size_ = 0;
  std::unique_ptr<HugePages> huge_;  // non-null while data_ is
};

}  // namespace kvserve::engine

#endif  // KVSERVE_ENGINE_COMMON_MAPPED_FILE_H_
