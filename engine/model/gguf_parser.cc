// GgufParser: reads the GGUF layout from a byte span into a GgufFile (see gguf.h).
#include <algorithm>
#include <bit>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "engine/common/status_macros.h"
#include "engine/model/gguf.h"

namespace kvserve::engine {

static_assert(std::endian::native == std::endian::little,
              "GGUF reading assumes a little-endian host");

namespace {

// This Abseil build does not alias absl::string_view to std::string_view; StrCat needs the former.
absl::string_view Sv(std::string_view s) { return absl::string_view(s.data(), s.size()); }

// Fewest bytes one element of each value type takes in the file (an array: type + count).
constexpr uint64_t kMinValueBytes[kGgufNumValueTypes] = {1, 1, 2, 2, 4, 4, 4, 1, 8, 12, 8, 8, 8};
// Fewest bytes of one metadata entry (key length, type, a 1-byte value) and one tensor info
// (name length, n_dims, one dimension, type, offset).
constexpr uint64_t kMinMetadataEntryBytes = 8 + 4 + 1;
constexpr uint64_t kMinTensorInfoBytes = 8 + 4 + 8 + 4 + 8;
// No file is this large (256 TiB): a count that needs more is corrupt, not merely truncated.
constexpr uint64_t kImpossibleBytes = uint64_t{1} << 48;
// Elements reserved up front for string and nested arrays; the rest grow as bytes are consumed.
constexpr uint64_t kMaxReserve = 1 << 16;

}  // namespace

// Reads the GGUF layout from a byte span into a GgufFile. Every read checks the bytes left.
class GgufParser {
 public:
  GgufParser(absl::Span<const uint8_t> bytes, const std::string& name)
      : data_(bytes.data()), size_(bytes.size()), name_(name) {}

  absl::Status Run(GgufFile& out);

 private:
  absl::Status Error(uint64_t at, std::string_view message) const {
    return absl::InvalidArgumentError(
        absl::StrCat(name_, ": ", Sv(message), " at byte ", at, " (", context_, ")"));
  }
  absl::Status Truncated(uint64_t need) const {
    return absl::InvalidArgumentError(absl::StrCat(name_, ": truncated at byte ", pos_,
                                                   " while reading ", context_, " (needs ", need,
                                                   " bytes, the file has ", size_, ")"));
  }
  uint64_t Remaining() const { return size_ - pos_; }
  // `count` items of at least `min_bytes` each do not fit in the bytes left: a truncated file, or
  // a corrupt count when they would need more than kImpossibleBytes.
  absl::Status CountError(uint64_t count, std::string_view items, uint64_t count_at,
                          uint64_t min_bytes) const {
    return absl::InvalidArgumentError(absl::StrCat(
        name_, ": truncated at byte ", pos_, " while reading ", context_, ": ", count, " ",
        Sv(items), " (count at byte ", count_at, ", at least ", min_bytes,
        " bytes each) do not fit in the ", Remaining(), " bytes left (the file has ", size_, ")",
        count > kImpossibleBytes / min_bytes ? "; the count is corrupt" : ""));
  }

  template <typename T>
  absl::StatusOr<T> Read() {
    if (Remaining() < sizeof(T)) return Truncated(sizeof(T));
    T value;
    std::memcpy(&value, data_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return value;
  }
  absl::StatusOr<std::string> ReadString();
  absl::StatusOr<bool> ReadBool();
  absl::StatusOr<GgufValue> ReadValue(uint32_t type, int depth);
  absl::StatusOr<GgufArray> ReadArray(int depth);
  template <typename T>
  absl::StatusOr<GgufArray> ReadNumericArray(uint64_t count);
  absl::Status ReadHeader(GgufFile& out, uint64_t& tensor_count, uint64_t& metadata_count);
  absl::Status ReadMetadata(GgufFile& out, uint64_t count);
  absl::Status ReadTensorInfo(GgufFile& out, uint64_t index);
  absl::Status ReadAlignment(GgufFile& out);
  absl::Status PlaceTensors(GgufFile& out);

  const uint8_t* data_;
  uint64_t size_;
  const std::string& name_;
  uint64_t pos_ = 0;
  std::string context_ = "header";
};

absl::StatusOr<std::string> GgufParser::ReadString() {
  const uint64_t at = pos_;
  KVSERVE_ASSIGN_OR_RETURN(const uint64_t length, Read<uint64_t>());
  if (length > Remaining()) {
    pos_ = at;
    return absl::InvalidArgumentError(absl::StrCat(
        name_, ": truncated at byte ", at, " while reading ", context_, ": a string of ", length,
        " bytes does not fit in the ", size_ - at - 8, " bytes left (the file has ", size_, ")"));
  }
  std::string s(reinterpret_cast<const char*>(data_ + pos_), length);
  pos_ += length;
  return s;
}

absl::StatusOr<bool> GgufParser::ReadBool() {
  const uint64_t at = pos_;
  KVSERVE_ASSIGN_OR_RETURN(const uint8_t byte, Read<uint8_t>());
  if (byte > 1) return Error(at, absl::StrCat("invalid bool value ", byte));
  return byte == 1;
}

template <typename T>
absl::StatusOr<GgufArray> GgufParser::ReadNumericArray(uint64_t count) {
  // The caller checked count * sizeof(T) <= Remaining().
  std::vector<T> values(count);
  if (count > 0) std::memcpy(values.data(), data_ + pos_, count * sizeof(T));
  pos_ += count * sizeof(T);
  return GgufArray(std::move(values));
}

absl::StatusOr<GgufArray> GgufParser::ReadArray(int depth) {
  const uint64_t at = pos_;
  if (depth >= kGgufMaxArrayNesting) {
    return Error(at, absl::StrCat("arrays nested deeper than ", kGgufMaxArrayNesting));
  }
  KVSERVE_ASSIGN_OR_RETURN(const uint32_t type, Read<uint32_t>());
  if (type >= kGgufNumValueTypes) {
    return Error(at, absl::StrCat("unknown array element type ", type));
  }
  const uint64_t count_at = pos_;
  KVSERVE_ASSIGN_OR_RETURN(const uint64_t count, Read<uint64_t>());
  const uint64_t min_bytes = kMinValueBytes[type];
  if (count > Remaining() / min_bytes) {
    return CountError(count,
                      absl::StrCat("array elements of type ",
                                   Sv(GgufValueTypeName(static_cast<GgufValueType>(type)))),
                      count_at, min_bytes);
  }
  switch (static_cast<GgufValueType>(type)) {
    case GgufValueType::kUint8:
      return ReadNumericArray<uint8_t>(count);
    case GgufValueType::kInt8:
      return ReadNumericArray<int8_t>(count);
    case GgufValueType::kUint16:
      return ReadNumericArray<uint16_t>(count);
    case GgufValueType::kInt16:
      return ReadNumericArray<int16_t>(count);
    case GgufValueType::kUint32:
      return ReadNumericArray<uint32_t>(count);
    case GgufValueType::kInt32:
      return ReadNumericArray<int32_t>(count);
    case GgufValueType::kFloat32:
      return ReadNumericArray<float>(count);
    case GgufValueType::kUint64:
      return ReadNumericArray<uint64_t>(count);
    case GgufValueType::kInt64:
      return ReadNumericArray<int64_t>(count);
    case GgufValueType::kFloat64:
      return ReadNumericArray<double>(count);
    case GgufValueType::kBool: {
      std::vector<bool> values(count);
      for (uint64_t i = 0; i < count; ++i) {
        KVSERVE_ASSIGN_OR_RETURN(values[i], ReadBool());
      }
      return GgufArray(std::move(values));
    }
    case GgufValueType::kString: {
      std::vector<std::string> values;
      values.reserve(std::min(count, kMaxReserve));
      for (uint64_t i = 0; i < count; ++i) {
        KVSERVE_ASSIGN_OR_RETURN(std::string s, ReadString());
        values.push_back(std::move(s));
      }
      return GgufArray(std::move(values));
    }
    case GgufValueType::kArray: {
      std::vector<GgufArray> values;
      values.reserve(std::min(count, kMaxReserve));
      for (uint64_t i = 0; i < count; ++i) {
        KVSERVE_ASSIGN_OR_RETURN(GgufArray inner, ReadArray(depth + 1));
        values.push_back(std::move(inner));
      }
      return GgufArray(std::move(values));
    }
  }
  return Error(at, "unreachable array type");
}

absl::StatusOr<GgufValue> GgufParser::ReadValue(uint32_t type, int depth) {
  switch (static_cast<GgufValueType>(type)) {
    case GgufValueType::kUint8: {
      KVSERVE_ASSIGN_OR_RETURN(const uint8_t v, Read<uint8_t>());
      return GgufValue(v);
    }
    case GgufValueType::kInt8: {
      KVSERVE_ASSIGN_OR_RETURN(const int8_t v, Read<int8_t>());
      return GgufValue(v);
    }
    case GgufValueType::kUint16: {
      KVSERVE_ASSIGN_OR_RETURN(const uint16_t v, Read<uint16_t>());
      return GgufValue(v);
    }
    case GgufValueType::kInt16: {
      KVSERVE_ASSIGN_OR_RETURN(const int16_t v, Read<int16_t>());
      return GgufValue(v);
    }
    case GgufValueType::kUint32: {
      KVSERVE_ASSIGN_OR_RETURN(const uint32_t v, Read<uint32_t>());
      return GgufValue(v);
    }
    case GgufValueType::kInt32: {
      KVSERVE_ASSIGN_OR_RETURN(const int32_t v, Read<int32_t>());
      return GgufValue(v);
    }
    case GgufValueType::kFloat32: {
      KVSERVE_ASSIGN_OR_RETURN(const float v, Read<float>());
      return GgufValue(v);
    }
    case GgufValueType::kBool: {
      KVSERVE_ASSIGN_OR_RETURN(const bool v, ReadBool());
      return GgufValue(v);
    }
    case GgufValueType::kString: {
      KVSERVE_ASSIGN_OR_RETURN(std::string v, ReadString());
      return GgufValue(std::move(v));
    }
    case GgufValueType::kArray: {
      KVSERVE_ASSIGN_OR_RETURN(GgufArray v, ReadArray(depth));
      return GgufValue(std::move(v));
    }
    case GgufValueType::kUint64: {
      KVSERVE_ASSIGN_OR_RETURN(const uint64_t v, Read<uint64_t>());
      return GgufValue(v);
    }
    case GgufValueType::kInt64: {
      KVSERVE_ASSIGN_OR_RETURN(const int64_t v, Read<int64_t>());
      return GgufValue(v);
    }
    case GgufValueType::kFloat64: {
      KVSERVE_ASSIGN_OR_RETURN(const double v, Read<double>());
      return GgufValue(v);
    }
  }
  return Error(pos_ - 4, absl::StrCat("unknown value type ", type));
}

absl::Status GgufParser::ReadHeader(GgufFile& out, uint64_t& tensor_count,
                                    uint64_t& metadata_count) {
  context_ = "the header magic";
  if (size_ < 4) return Truncated(4);
  if (std::memcmp(data_, "GGUF", 4) != 0) {
    const std::string magic(reinterpret_cast<const char*>(data_), 4);
    return Error(0, absl::StrCat("not a GGUF file: the magic is \"", absl::CHexEscape(magic),
                                 "\", expected \"GGUF\""));
  }
  pos_ = 4;
  context_ = "the header version";
  KVSERVE_ASSIGN_OR_RETURN(out.version_, Read<uint32_t>());
  if (out.version_ != 2 && out.version_ != 3) {
    const uint32_t swapped = __builtin_bswap32(out.version_);
    return Error(4, absl::StrCat("unsupported GGUF version ", out.version_,
                                 swapped == 2 || swapped == 3 ? " (a big-endian file?)" : "",
                                 "; supported: 2 and 3"));
  }
  context_ = "the header tensor count";
  KVSERVE_ASSIGN_OR_RETURN(tensor_count, Read<uint64_t>());
  context_ = "the header metadata count";
  KVSERVE_ASSIGN_OR_RETURN(metadata_count, Read<uint64_t>());
  // Counts that could not fit even at one byte per item fail here; smaller ones are read until
  // the data runs out, which reports the exact byte where a truncated file ends.
  context_ = "the metadata";
  if (metadata_count > Remaining()) {
    return CountError(metadata_count, "metadata entries", 16, kMinMetadataEntryBytes);
  }
  return absl::OkStatus();
}

absl::Status GgufParser::ReadMetadata(GgufFile& out, uint64_t count) {
  out.metadata_.reserve(std::min(count, Remaining() / kMinMetadataEntryBytes));
  for (uint64_t i = 0; i < count; ++i) {
    const uint64_t entry_at = pos_;
    context_ = absl::StrCat("the key of metadata entry #", i);
    KVSERVE_ASSIGN_OR_RETURN(std::string key, ReadString());
    context_ = absl::StrCat("metadata key '", absl::CHexEscape(key), "'");
    if (out.metadata_index_.count(key) != 0) return Error(entry_at, "duplicate metadata key");
    const uint64_t type_at = pos_;
    KVSERVE_ASSIGN_OR_RETURN(const uint32_t type, Read<uint32_t>());
    if (type >= kGgufNumValueTypes) {
      return Error(type_at, absl::StrCat("unknown value type ", type));
    }
    KVSERVE_ASSIGN_OR_RETURN(GgufValue value, ReadValue(type, 0));
    out.metadata_index_.emplace(key, out.metadata_.size());
    out.metadata_.push_back(GgufKeyValue{std::move(key), std::move(value)});
  }
  return absl::OkStatus();
}

absl::Status GgufParser::ReadAlignment(GgufFile& out) {
  context_ = "metadata key 'general.alignment'";
  const GgufValue* value = out.FindValue("general.alignment");
  if (value == nullptr) return absl::OkStatus();
  const uint32_t* alignment = value->As<uint32_t>();
  if (alignment == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(name_, ": metadata key 'general.alignment' has type ",
                     Sv(GgufValueTypeName(value->type())), ", expected u32"));
  }
  if (*alignment == 0 || (*alignment & (*alignment - 1)) != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        name_, ": metadata key 'general.alignment' = ", *alignment, " is not a power of two"));
  }
  out.alignment_ = *alignment;
  return absl::OkStatus();
}

absl::Status GgufParser::ReadTensorInfo(GgufFile& out, uint64_t index) {
  const uint64_t info_at = pos_;
  context_ = absl::StrCat("the name of tensor info #", index);
  GgufTensorInfo info;
  KVSERVE_ASSIGN_OR_RETURN(info.name, ReadString());
  context_ = absl::StrCat("tensor info '", absl::CHexEscape(info.name), "'");
  if (out.tensor_index_.count(info.name) != 0) return Error(info_at, "duplicate tensor name");

  const uint64_t dims_at = pos_;
  KVSERVE_ASSIGN_OR_RETURN(const uint32_t n_dims, Read<uint32_t>());
  if (n_dims == 0 || n_dims > kGgufMaxDims) {
    return Error(dims_at, absl::StrCat("tensor has ", n_dims, " dimensions (1 to ", kGgufMaxDims,
                                       " allowed)"));
  }
  info.num_elements = 1;
  for (uint32_t d = 0; d < n_dims; ++d) {
    const uint64_t ne_at = pos_;
    KVSERVE_ASSIGN_OR_RETURN(const uint64_t ne, Read<uint64_t>());
    if (ne > static_cast<uint64_t>(INT64_MAX) ||
        __builtin_mul_overflow(info.num_elements, static_cast<int64_t>(ne), &info.num_elements)) {
      return Error(ne_at, absl::StrCat("dimension ne[", d, "] = ", ne, " overflows the size"));
    }
    info.ne.push_back(static_cast<int64_t>(ne));
  }

  const uint64_t type_at = pos_;
  KVSERVE_ASSIGN_OR_RETURN(const uint32_t type_id, Read<uint32_t>());
  const GgmlTypeInfo* type = FindGgmlType(type_id);
  if (type == nullptr) return Error(type_at, absl::StrCat("unknown tensor type id ", type_id));
  info.type = type->type;
  if (info.ne[0] % type->block_size != 0) {
    return Error(dims_at, absl::StrCat("ne[0] = ", info.ne[0], " is not a multiple of ",
                                       Sv(type->name), "'s block size ", type->block_size));
  }
  int64_t num_bytes = 0;
  if (__builtin_mul_overflow(info.num_elements / type->block_size, type->block_bytes, &num_bytes)) {
    return Error(dims_at, "the tensor's size in bytes overflows");
  }
  info.num_bytes = static_cast<uint64_t>(num_bytes);
  KVSERVE_ASSIGN_OR_RETURN(info.offset, Read<uint64_t>());
  out.tensor_index_.emplace(info.name, out.tensors_.size());
  out.tensors_.push_back(std::move(info));
  return absl::OkStatus();
}

absl::Status GgufParser::PlaceTensors(GgufFile& out) {
  const uint64_t alignment = out.alignment_;
  out.data_offset_ = (pos_ + alignment - 1) / alignment * alignment;
  for (GgufTensorInfo& info : out.tensors_) {
    if (info.offset % alignment != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(name_, ": tensor '", info.name, "' data offset ", info.offset,
                       " is not a multiple of the alignment ", alignment));
    }
    uint64_t start = 0;
    uint64_t end = 0;
    const bool overflow = __builtin_add_overflow(out.data_offset_, info.offset, &start) ||
                          __builtin_add_overflow(start, info.num_bytes, &end);
    if (overflow || end > size_) {
      const std::string range = overflow ? absl::StrCat("at ", out.data_offset_, " + ", info.offset,
                                                        " of ", info.num_bytes, " bytes")
                                         : absl::StrCat("[", start, ", ", end, ")");
      return absl::InvalidArgumentError(absl::StrCat(name_, ": tensor '", info.name, "' data ",
                                                     range, " lies outside the file (size ", size_,
                                                     ")"));
    }
    info.file_offset = start;
    info.data = data_ + start;
  }
  return absl::OkStatus();
}

absl::Status GgufParser::Run(GgufFile& out) {
  uint64_t tensor_count = 0;
  uint64_t metadata_count = 0;
  KVSERVE_RETURN_IF_ERROR(ReadHeader(out, tensor_count, metadata_count));
  KVSERVE_RETURN_IF_ERROR(ReadMetadata(out, metadata_count));
  KVSERVE_RETURN_IF_ERROR(ReadAlignment(out));
  context_ = "the tensor infos";
  if (tensor_count > Remaining()) {
    return CountError(tensor_count, "tensor infos", 8, kMinTensorInfoBytes);
  }
  out.tensors_.reserve(std::min(tensor_count, Remaining() / kMinTensorInfoBytes));
  for (uint64_t i = 0; i < tensor_count; ++i) {
    KVSERVE_RETURN_IF_ERROR(ReadTensorInfo(out, i));
  }
  return PlaceTensors(out);
}

absl::StatusOr<GgufFile> GgufFile::Open(const std::string& path) {
  KVSERVE_ASSIGN_OR_RETURN(MappedFile file, MappedFile::Open(path));
  return Parse(std::move(file));
}

absl::StatusOr<GgufFile> GgufFile::Parse(MappedFile file) {
  const absl::Span<const uint8_t> bytes = file.bytes();
  KVSERVE_ASSIGN_OR_RETURN(GgufFile parsed, Parse(bytes, file.path()));
  parsed.file_ = std::move(file);  // the mapping's address does not change
  return parsed;
}

absl::StatusOr<GgufFile> GgufFile::Parse(absl::Span<const uint8_t> bytes, std::string name) {
  GgufFile out;
  out.name_ = std::move(name);
  out.bytes_ = bytes;
  GgufParser parser(bytes, out.name_);
  KVSERVE_RETURN_IF_ERROR(parser.Run(out));
  return out;
}

}  // namespace kvserve::engine
