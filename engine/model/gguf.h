// A reader for GGUF files (versions 2 and 3, little-endian): header, typed metadata, tensor infos
// and the tensor data section.
//
// Layout (all integers little-endian):
//   "GGUF" u32 version, u64 tensor_count, u64 metadata_count
//   metadata_count x { string key, u32 value_type, value }
//   tensor_count   x { string name, u32 n_dims, u64 ne[n_dims], u32 ggml_type, u64 offset }
//   padding to `general.alignment` (default 32), then the data section; each tensor's data lies
//   at data_offset + offset.
// A string is u64 byte length + bytes (no terminator); an array is u32 element type, u64 count,
// then the elements (arrays may nest).
//
// Every read is bounds-checked. A malformed file gives InvalidArgument whose message names the
// file, the byte offset and, when known, the metadata key or tensor name. Counts and lengths are
// checked against the bytes left in the file before anything is allocated, so a hostile header
// cannot cause a huge allocation.
//
// A parsed GgufFile is immutable and safe to read from any number of threads.
#ifndef KVSERVE_ENGINE_MODEL_GGUF_H_
#define KVSERVE_ENGINE_MODEL_GGUF_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/common/mapped_file.h"
#include "kernels/dtype.h"

namespace kvserve::engine {

inline constexpr uint32_t kGgufMagic = 0x46554747;  // "GGUF" read as a little-endian u32
inline constexpr uint32_t kGgufVersion = 3;         // what the writer produces
inline constexpr uint32_t kGgufDefaultAlignment = 32;
inline constexpr int kGgufMaxDims = 4;
inline constexpr int kGgufMaxArrayNesting = 8;

// Metadata value types; the numeric values are the ones stored in the file.
enum class GgufValueType : uint32_t {
  kUint8 = 0,
  kInt8 = 1,
  kUint16 = 2,
  kInt16 = 3,
  kUint32 = 4,
  kInt32 = 5,
  kFloat32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kUint64 = 10,
  kInt64 = 11,
  kFloat64 = 12,
};
inline constexpr uint32_t kGgufNumValueTypes = 13;
// "u8", "i8", ..., "f32", "bool", "string", "array", "u64", "i64", "f64"; "?" when out of range.
std::string_view GgufValueTypeName(GgufValueType type);

// Tensor element types (ggml's numbering). Only types with a known, stable block layout are listed;
// ids that ggml retired are not.
enum class GgmlType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ4_1 = 3,
  kQ5_0 = 6,
  kQ5_1 = 7,
  kQ8_0 = 8,
  kQ8_1 = 9,
  kQ2_K = 10,
  kQ3_K = 11,
  kQ4_K = 12,
  kQ5_K = 13,
  kQ6_K = 14,
  kQ8_K = 15,
  kIQ2_XXS = 16,
  kIQ2_XS = 17,
  kIQ3_XXS = 18,
  kIQ1_S = 19,
  kIQ4_NL = 20,
  kIQ3_S = 21,
  kIQ2_S = 22,
  kIQ4_XS = 23,
  kI8 = 24,
  kI16 = 25,
  kI32 = 26,
  kI64 = 27,
  kF64 = 28,
  kIQ1_M = 29,
  kBF16 = 30,
  kTQ1_0 = 34,
  kTQ2_0 = 35,
  kMXFP4 = 39,
};

// A ggml type's storage: `block_size` elements take `block_bytes` bytes.
struct GgmlTypeInfo {
  GgmlType type;
  std::string_view name;  // "F32", "Q8_0", "Q4_K", ...
  int64_t block_size;     // elements per block
  int64_t block_bytes;    // bytes per block
};
// nullptr for ids that are unknown or retired.
const GgmlTypeInfo* FindGgmlType(uint32_t id);
// REQUIRES: `type` is one of the enumerators above.
const GgmlTypeInfo& GgmlTypeInfoOf(GgmlType type);
// "Q4_K (12)", or "unknown (77)".
std::string GgmlTypeLabel(uint32_t id);

// Q8_0: blocks of 32 values stored as an FP16 scale d followed by 32 int8 q; value = q * d.
inline constexpr int kQ8_0BlockSize = 32;
inline constexpr int kQ8_0BlockBytes = 2 + kQ8_0BlockSize;

class GgufArray;

// An array of metadata values of one element type. The variant's index equals the element type's
// numeric value, so e.g. a u32 array holds std::vector<uint32_t> and a string array
// std::vector<std::string>; an array of arrays holds std::vector<GgufArray>.
class GgufArray {
 public:
  using Storage = std::variant<std::vector<uint8_t>, std::vector<int8_t>, std::vector<uint16_t>,
                               std::vector<int16_t>, std::vector<uint32_t>, std::vector<int32_t>,
                               std::vector<float>, std::vector<bool>, std::vector<std::string>,
                               std::vector<GgufArray>, std::vector<uint64_t>, std::vector<int64_t>,
                               std::vector<double>>;

  GgufArray() = default;  // an empty u8 array
  explicit GgufArray(Storage storage) : storage_(std::move(storage)) {}
  template <typename T>
  explicit GgufArray(std::vector<T> elements) : storage_(std::move(elements)) {}

  GgufValueType element_type() const { return static_cast<GgufValueType>(storage_.index()); }
  size_t size() const;
  // The elements when they have type T, else nullptr.
  template <typename T>
  const std::vector<T>* As() const {
    return std::get_if<std::vector<T>>(&storage_);
  }
  const Storage& storage() const { return storage_; }
  Storage& mutable_storage() { return storage_; }

  friend bool operator==(const GgufArray& a, const GgufArray& b) {
    return a.storage_ == b.storage_;
  }

 private:
  Storage storage_;
};

// One metadata value. The variant's index equals the value type's numeric value.
class GgufValue {
 public:
  using Storage = std::variant<uint8_t, int8_t, uint16_t, int16_t, uint32_t, int32_t, float, bool,
                               std::string, GgufArray, uint64_t, int64_t, double>;

  GgufValue() = default;  // u8 0
  // T must be exactly one of the Storage alternatives, e.g. GgufValue(uint32_t{5}); a C string
  // becomes a string value.
  template <typename T>
  explicit GgufValue(T value) : storage_(std::move(value)) {
    static_assert(std::is_constructible_v<Storage, std::in_place_type_t<T>, T>);
  }
  explicit GgufValue(const char* value) : storage_(std::string(value)) {}

  GgufValueType type() const { return static_cast<GgufValueType>(storage_.index()); }
  template <typename T>
  const T* As() const {
    return std::get_if<T>(&storage_);
  }
  const Storage& storage() const { return storage_; }

  friend bool operator==(const GgufValue& a, const GgufValue& b) {
    return a.storage_ == b.storage_;
  }

 private:
  Storage storage_;
};

// The variants' indices are the file's type codes.
static_assert(std::is_same_v<std::variant_alternative_t<static_cast<size_t>(GgufValueType::kArray),
                                                        GgufValue::Storage>,
                             GgufArray>);
static_assert(std::is_same_v<std::variant_alternative_t<
                                 static_cast<size_t>(GgufValueType::kFloat64), GgufArray::Storage>,
                             std::vector<double>>);

struct GgufKeyValue {
  std::string key;
  GgufValue value;
};

struct GgufTensorInfo {
  std::string name;
  std::vector<int64_t> ne;  // ggml order: ne[0] is the innermost, contiguous dimension (columns)
  GgmlType type = GgmlType::kF32;
  uint64_t offset = 0;       // bytes from the start of the data section
  uint64_t file_offset = 0;  // bytes from the start of the file
  uint64_t num_bytes = 0;
  int64_t num_elements = 0;
  const uint8_t* data = nullptr;  // into the parsed bytes; valid while the GgufFile lives

  // "[64, 512]" (ggml order).
  std::string ShapeString() const;
};

class GgufFile {
 public:
  // Maps and parses the file at `path`. Errors: those of MappedFile::Open, or InvalidArgument.
  static absl::StatusOr<GgufFile> Open(const std::string& path);
  // Parses a mapped file and takes ownership of the mapping; its path names it in messages.
  static absl::StatusOr<GgufFile> Parse(MappedFile file);
  // Parses bytes owned by the caller, which must outlive the returned object. `name` stands for the
  // file in error messages.
  static absl::StatusOr<GgufFile> Parse(absl::Span<const uint8_t> bytes, std::string name);

  GgufFile(GgufFile&&) = default;
  GgufFile& operator=(GgufFile&&) = default;

  const std::string& name() const { return name_; }
  uint32_t version() const { return version_; }
  uint32_t alignment() const { return alignment_; }
  uint64_t data_offset() const { return data_offset_; }  // start of the data section, in bytes
  absl::Span<const uint8_t> bytes() const { return bytes_; }
  // MappedFile::Release on the file this object read (Open or Parse of a MappedFile); nothing
  // for caller-owned bytes. Returns the bytes released.
  // MappedFile::StartHugePages / WaitForHugePages.
  void StartHugePages() const {
    if (file_.has_value()) file_->StartHugePages();
  }
  void WaitForHugePages() const {
    if (file_.has_value()) file_->WaitForHugePages();
  }
  int64_t ReleaseBytes(const void* p, int64_t n) const {
    return file_.has_value() ? file_->Release(p, n) : 0;
  }

  // Metadata in file order.
  const std::vector<GgufKeyValue>& metadata() const { return metadata_; }
  // nullptr when absent.
  const GgufValue* FindValue(std::string_view key) const;
  bool HasKey(std::string_view key) const { return FindValue(key) != nullptr; }

  // Typed accessors. NotFound when the key is absent, InvalidArgument when it has another type;
  // both messages name the file and the key.
  absl::StatusOr<uint8_t> GetU8(std::string_view key) const;
  absl::StatusOr<int8_t> GetI8(std::string_view key) const;
  absl::StatusOr<uint16_t> GetU16(std::string_view key) const;
  absl::StatusOr<int16_t> GetI16(std::string_view key) const;
  absl::StatusOr<uint32_t> GetU32(std::string_view key) const;
  absl::StatusOr<int32_t> GetI32(std::string_view key) const;
  absl::StatusOr<uint64_t> GetU64(std::string_view key) const;
  absl::StatusOr<int64_t> GetI64(std::string_view key) const;
  absl::StatusOr<float> GetF32(std::string_view key) const;
  absl::StatusOr<double> GetF64(std::string_view key) const;
  absl::StatusOr<bool> GetBool(std::string_view key) const;
  absl::StatusOr<std::string> GetString(std::string_view key) const;
  absl::StatusOr<const GgufArray*> GetArray(std::string_view key) const;
  // Any integer type (u8..i64); InvalidArgument if a u64 does not fit in int64_t.
  absl::StatusOr<int64_t> GetInteger(std::string_view key) const;
  // F32 or F64.
  absl::StatusOr<double> GetFloat(std::string_view key) const;
  // An array whose elements have type T (not bool); the span points into this GgufFile.
  template <typename T>
  absl::StatusOr<absl::Span<const T>> GetArrayOf(std::string_view key) const;

  // Tensor infos in file order.
  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  // nullptr when absent.
  const GgufTensorInfo* FindTensor(std::string_view name) const;

 private:
  GgufFile() = default;
  absl::Status TypeError(std::string_view key, const GgufValue& value,
                         std::string_view expected) const;
  absl::Status MissingKeyError(std::string_view key) const;
  template <typename T>
  absl::StatusOr<T> GetScalar(std::string_view key, std::string_view type_name) const;

  friend class GgufParser;

  std::optional<MappedFile> file_;  // set by Open()
  absl::Span<const uint8_t> bytes_;
  std::string name_;
  uint32_t version_ = 0;
  uint32_t alignment_ = kGgufDefaultAlignment;
  uint64_t data_offset_ = 0;
  std::vector<GgufKeyValue> metadata_;
  std::map<std::string, size_t, std::less<>> metadata_index_;
  std::vector<GgufTensorInfo> tensors_;
  std::map<std::string, size_t, std::less<>> tensor_index_;
};

// The kernels' type of a GGUF tensor type the kernels read in place (F32, F16, BF16, Q4_0, Q4_1,
// Q5_0, Q5_1, Q8_0, Q2_K..Q6_K); nullopt for any other.
std::optional<kernels::DType> GgmlKernelType(GgmlType t);

// Decodes `n` elements of a tensor's bytes of any GgmlKernelType into `out` (n floats); `n` must
// be a multiple of the type's block size. InvalidArgument for other types.
absl::Status DecodeToF32(GgmlType type, const uint8_t* src, int64_t n, float* out);

template <typename T>
absl::StatusOr<absl::Span<const T>> GgufFile::GetArrayOf(std::string_view key) const {
  static_assert(!std::is_same_v<T, bool>, "bool arrays: use GetArray() and As<bool>()");
  const GgufValue* value = FindValue(key);
  if (value == nullptr) return MissingKeyError(key);
  const GgufArray* array = value->As<GgufArray>();
  if (array == nullptr) return TypeError(key, *value, "array");
  const std::vector<T>* elements = array->As<T>();
  if (elements == nullptr) {
    const auto element_type =
        static_cast<GgufValueType>(GgufArray::Storage(std::vector<T>()).index());
    return TypeError(key, *value,
                     std::string("array of ") + std::string(GgufValueTypeName(element_type)));
  }
  return absl::Span<const T>(*elements);
}

}  // namespace kvserve::engine

#endif  // KVSERVE_ENGINE_MODEL_GGUF_H_
