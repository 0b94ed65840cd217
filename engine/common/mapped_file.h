// A read-only memory mapping of a whole file.
//
// MappedFile owns the mapping and unmaps it when destroyed. It is movable, not copyable; moving
// keeps the mapped address, so pointers into data() stay valid for as long as some MappedFile owns
// the mapping. The mapped bytes are immutable (PROT_READ, MAP_PRIVATE) and safe to read from any
// number of threads. An empty file maps to data() == nullptr and size() == 0.
#ifndef KVSERVE_ENGINE_COMMON_MAPPED_FILE_H_
#define KVSERVE_ENGINE_COMMON_MAPPED_FILE_H_

#include <cstdint>
#include <string>
#include <utility>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace kvserve::engine {

class MappedFile {
 public:
  // Maps `path` read-only. Errors name the path: NotFound (no such file), PermissionDenied,
  // InvalidArgument (a directory or other non-regular file), Internal (mmap or stat failure).
  static absl::StatusOr<MappedFile> Open(const std::string& path);

  MappedFile() = default;
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

 private:
  MappedFile(std::string path, const uint8_t* data, int64_t size)
      : path_(std::move(path)), data_(data), size_(size) {}
  void Reset();

  std::string path_;
  const uint8_t* data_ = nullptr;
  int64_t size_ = 0;
};

}  // namespace kvserve::engine

#endif  // KVSERVE_ENGINE_COMMON_MAPPED_FILE_H_
