#include "engine/model/gguf.h"

#include <cstring>
#include <optional>
#include <type_traits>

#include "absl/strings/str_cat.h"
#include "engine/common/status_macros.h"
#include "kernels/dtype.h"
#include "kernels/weight_formats.h"

namespace kvserve::engine {

namespace {

// This Abseil build does not alias absl::string_view to std::string_view; StrCat needs the former.
absl::string_view Sv(std::string_view s) { return absl::string_view(s.data(), s.size()); }

constexpr GgmlTypeInfo kGgmlTypes[] = {
    {GgmlType::kF32, "F32", 1, 4},
    {GgmlType::kF16, "F16", 1, 2},
    {GgmlType::kQ4_0, "Q4_0", 32, 18},
    {GgmlType::kQ4_1, "Q4_1", 32, 20},
    {GgmlType::kQ5_0, "Q5_0", 32, 22},
    {GgmlType::kQ5_1, "Q5_1", 32, 24},
    {GgmlType::kQ8_0, "Q8_0", 32, 34},
    {GgmlType::kQ8_1, "Q8_1", 32, 36},
    {GgmlType::kQ2_K, "Q2_K", 256, 84},
    {GgmlType::kQ3_K, "Q3_K", 256, 110},
    {GgmlType::kQ4_K, "Q4_K", 256, 144},
    {GgmlType::kQ5_K, "Q5_K", 256, 176},
    {GgmlType::kQ6_K, "Q6_K", 256, 210},
    {GgmlType::kQ8_K, "Q8_K", 256, 292},
    {GgmlType::kIQ2_XXS, "IQ2_XXS", 256, 66},
    {GgmlType::kIQ2_XS, "IQ2_XS", 256, 74},
    {GgmlType::kIQ3_XXS, "IQ3_XXS", 256, 98},
    {GgmlType::kIQ1_S, "IQ1_S", 256, 50},
    {GgmlType::kIQ4_NL, "IQ4_NL", 32, 18},
    {GgmlType::kIQ3_S, "IQ3_S", 256, 110},
    {GgmlType::kIQ2_S, "IQ2_S", 256, 82},
    {GgmlType::kIQ4_XS, "IQ4_XS", 256, 136},
    {GgmlType::kI8, "I8", 1, 1},
    {GgmlType::kI16, "I16", 1, 2},
    {GgmlType::kI32, "I32", 1, 4},
    {GgmlType::kI64, "I64", 1, 8},
    {GgmlType::kF64, "F64", 1, 8},
    {GgmlType::kIQ1_M, "IQ1_M", 256, 56},
    {GgmlType::kBF16, "BF16", 1, 2},
    {GgmlType::kTQ1_0, "TQ1_0", 256, 54},
    {GgmlType::kTQ2_0, "TQ2_0", 256, 66},
    {GgmlType::kMXFP4, "MXFP4", 32, 17},
};

}  // namespace

std::string_view GgufValueTypeName(GgufValueType type) {
  static constexpr std::string_view kNames[kGgufNumValueTypes] = {
      "u8",   "i8",     "u16",   "i16", "u32", "i32", "f32",
      "bool", "string", "array", "u64", "i64", "f64"};
  const auto index = static_cast<uint32_t>(type);
  return index < kGgufNumValueTypes ? kNames[index] : "?";
}

const GgmlTypeInfo* FindGgmlType(uint32_t id) {
  for (const GgmlTypeInfo& info : kGgmlTypes) {
    if (static_cast<uint32_t>(info.type) == id) return &info;
  }
  return nullptr;
}

const GgmlTypeInfo& GgmlTypeInfoOf(GgmlType type) {
  const GgmlTypeInfo* info = FindGgmlType(static_cast<uint32_t>(type));
  KVSERVE_CHECK(info != nullptr) << "GgmlType " << static_cast<uint32_t>(type);
  return *info;
}

std::string GgmlTypeLabel(uint32_t id) {
  const GgmlTypeInfo* info = FindGgmlType(id);
  return absl::StrCat(info != nullptr ? Sv(info->name) : "unknown", " (", id, ")");
}

size_t GgufArray::size() const {
  return std::visit([](const auto& v) { return v.size(); }, storage_);
}

std::string GgufTensorInfo::ShapeString() const {
  std::string out = "[";
  for (size_t i = 0; i < ne.size(); ++i) absl::StrAppend(&out, i ? ", " : "", ne[i]);
  return out + "]";
}

const GgufValue* GgufFile::FindValue(std::string_view key) const {
  const auto it = metadata_index_.find(key);
  return it == metadata_index_.end() ? nullptr : &metadata_[it->second].value;
}

const GgufTensorInfo* GgufFile::FindTensor(std::string_view name) const {
  const auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

absl::Status GgufFile::MissingKeyError(std::string_view key) const {
  return absl::NotFoundError(absl::StrCat(name_, ": metadata key '", Sv(key), "' is missing"));
}

absl::Status GgufFile::TypeError(std::string_view key, const GgufValue& value,
                                 std::string_view expected) const {
  std::string actual(GgufValueTypeName(value.type()));
  if (const GgufArray* array = value.As<GgufArray>()) {
    actual = absl::StrCat("array of ", Sv(GgufValueTypeName(array->element_type())));
  }
  return absl::InvalidArgumentError(absl::StrCat(name_, ": metadata key '", Sv(key), "' has type ",
                                                 actual, ", expected ", Sv(expected)));
}

template <typename T>
absl::StatusOr<T> GgufFile::GetScalar(std::string_view key, std::string_view type_name) const {
  const GgufValue* value = FindValue(key);
  if (value == nullptr) return MissingKeyError(key);
  const T* typed = value->As<T>();
  if (typed == nullptr) return TypeError(key, *value, type_name);
  return *typed;
}

absl::StatusOr<uint8_t> GgufFile::GetU8(std::string_view key) const {
  return GetScalar<uint8_t>(key, "u8");
}
absl::StatusOr<int8_t> GgufFile::GetI8(std::string_view key) const {
  return GetScalar<int8_t>(key, "i8");
}
absl::StatusOr<uint16_t> GgufFile::GetU16(std::string_view key) const {
  return GetScalar<uint16_t>(key, "u16");
}
absl::StatusOr<int16_t> GgufFile::GetI16(std::string_view key) const {
  return GetScalar<int16_t>(key, "i16");
}
absl::StatusOr<uint32_t> GgufFile::GetU32(std::string_view key) const {
  return GetScalar<uint32_t>(key, "u32");
}
absl::StatusOr<int32_t> GgufFile::GetI32(std::string_view key) const {
  return GetScalar<int32_t>(key, "i32");
}
absl::StatusOr<uint64_t> GgufFile::GetU64(std::string_view key) const {
  return GetScalar<uint64_t>(key, "u64");
}
absl::StatusOr<int64_t> GgufFile::GetI64(std::string_view key) const {
  return GetScalar<int64_t>(key, "i64");
}
absl::StatusOr<float> GgufFile::GetF32(std::string_view key) const {
  return GetScalar<float>(key, "f32");
}
absl::StatusOr<double> GgufFile::GetF64(std::string_view key) const {
  return GetScalar<double>(key, "f64");
}
absl::StatusOr<bool> GgufFile::GetBool(std::string_view key) const {
  return GetScalar<bool>(key, "bool");
}
absl::StatusOr<std::string> GgufFile::GetString(std::string_view key) const {
  return GetScalar<std::string>(key, "string");
}

absl::StatusOr<const GgufArray*> GgufFile::GetArray(std::string_view key) const {
  const GgufValue* value = FindValue(key);
  if (value == nullptr) return MissingKeyError(key);
  const GgufArray* array = value->As<GgufArray>();
  if (array == nullptr) return TypeError(key, *value, "array");
  return array;
}

absl::StatusOr<int64_t> GgufFile::GetInteger(std::string_view key) const {
  const GgufValue* value = FindValue(key);
  if (value == nullptr) return MissingKeyError(key);
  std::optional<int64_t> result;
  bool too_large = false;
  std::visit(
      [&](const auto& v) {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
          if constexpr (std::is_same_v<T, uint64_t>) {
            too_large = v > static_cast<uint64_t>(INT64_MAX);
          }
          if (!too_large) result = static_cast<int64_t>(v);
        }
      },
      value->storage());
  if (too_large) {
    return absl::InvalidArgumentError(absl::StrCat(
        name_, ": metadata key '", Sv(key), "' = ", *value->As<uint64_t>(), " is too large"));
  }
  if (!result.has_value()) return TypeError(key, *value, "an integer");
  return *result;
}

absl::StatusOr<double> GgufFile::GetFloat(std::string_view key) const {
  const GgufValue* value = FindValue(key);
  if (value == nullptr) return MissingKeyError(key);
  if (const float* f = value->As<float>()) return static_cast<double>(*f);
  if (const double* d = value->As<double>()) return *d;
  return TypeError(key, *value, "f32 or f64");
}

std::optional<kernels::DType> GgmlKernelType(GgmlType t) {
  using kernels::DType;
  switch (t) {
    case GgmlType::kF32:
      return DType::kF32;
    case GgmlType::kF16:
      return DType::kF16;
    case GgmlType::kBF16:
      return DType::kBF16;
    case GgmlType::kQ4_0:
      return DType::kQ4_0;
    case GgmlType::kQ4_1:
      return DType::kQ4_1;
    case GgmlType::kQ5_0:
      return DType::kQ5_0;
    case GgmlType::kQ5_1:
      return DType::kQ5_1;
    case GgmlType::kQ8_0:
      return DType::kQ8_0;
    case GgmlType::kQ2_K:
      return DType::kQ2_K;
    case GgmlType::kQ3_K:
      return DType::kQ3_K;
    case GgmlType::kQ4_K:
      return DType::kQ4_K;
    case GgmlType::kQ5_K:
      return DType::kQ5_K;
    case GgmlType::kQ6_K:
      return DType::kQ6_K;
    default:
      return std::nullopt;
  }
}

absl::Status DecodeToF32(GgmlType type, const uint8_t* src, int64_t n, float* out) {
  if (n == 0) return absl::OkStatus();
  const std::optional<kernels::DType> t = GgmlKernelType(type);
  if (!t.has_value()) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot decode ", GgmlTypeLabel(static_cast<uint32_t>(type)), " to F32"));
  }
  const int64_t block = kernels::DTypeBlockSize(*t);
  if (n % block != 0) {
    return absl::InvalidArgumentError(absl::StrCat(GgmlTypeLabel(static_cast<uint32_t>(type)),
                                                   " data of ", n,
                                                   " elements is not a whole number of blocks"));
  }
  kernels::DequantizeRow(*t, src, n, out);
  return absl::OkStatus();
}

}  // namespace kvserve::engine
