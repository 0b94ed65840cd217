#include "engine/model/gguf_writer.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <type_traits>

#include "absl/strings/str_cat.h"
#include "engine/common/status_macros.h"
#include "kernels/dtype.h"
#include "kernels/weight_formats.h"

namespace kvserve::engine {
namespace {

// This Abseil build does not alias absl::string_view to std::string_view; StrCat needs the former.
absl::string_view Sv(std::string_view s) { return absl::string_view(s.data(), s.size()); }

template <typename T>
void Append(std::string& out, T value) {
  static_assert(std::is_trivially_copyable_v<T>);
  out.append(reinterpret_cast<const char*>(&value), sizeof(T));
}

void AppendString(std::string& out, std::string_view s) {
  Append<uint64_t>(out, s.size());
  out.append(s.data(), s.size());
}

void AppendArray(std::string& out, const GgufArray& array);

void AppendValue(std::string& out, const GgufValue& value) {
  std::visit(
      [&out](const auto& v) {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<T, std::string>) {
          AppendString(out, v);
        } else if constexpr (std::is_same_v<T, GgufArray>) {
          AppendArray(out, v);
        } else if constexpr (std::is_same_v<T, bool>) {
          Append<uint8_t>(out, v ? 1 : 0);
        } else {
          Append<T>(out, v);
        }
      },
      value.storage());
}

void AppendArray(std::string& out, const GgufArray& array) {
  Append<uint32_t>(out, static_cast<uint32_t>(array.element_type()));
  Append<uint64_t>(out, array.size());
  std::visit(
      [&out](const auto& elements) {
        using T = typename std::decay_t<decltype(elements)>::value_type;
        if constexpr (std::is_same_v<T, std::string>) {
          for (const std::string& s : elements) AppendString(out, s);
        } else if constexpr (std::is_same_v<T, GgufArray>) {
          for (const GgufArray& inner : elements) AppendArray(out, inner);
        } else if constexpr (std::is_same_v<T, bool>) {
          for (const bool b : elements) Append<uint8_t>(out, b ? 1 : 0);
        } else {
          if (!elements.empty()) {
            out.append(reinterpret_cast<const char*>(elements.data()), elements.size() * sizeof(T));
          }
        }
      },
      array.storage());
}

uint64_t AlignUp(uint64_t n, uint64_t alignment) {
  return (n + alignment - 1) / alignment * alignment;
}

absl::Status EncodeQ8_0(absl::Span<const float> values, uint8_t* out) {
  for (size_t b = 0; b < values.size() / kQ8_0BlockSize; ++b) {
    const float* x = values.data() + b * kQ8_0BlockSize;
    float amax = 0.0f;
    for (int i = 0; i < kQ8_0BlockSize; ++i) {
      if (!std::isfinite(x[i])) {
        return absl::InvalidArgumentError(absl::StrCat(
            "Q8_0 cannot encode the non-finite value at index ", b * kQ8_0BlockSize + i));
      }
      amax = std::max(amax, std::fabs(x[i]));
    }
    const uint16_t d_bits = kernels::FloatToFp16(amax / 127.0f);
    const float d = kernels::Fp16ToFloat(d_bits);
    if (!std::isfinite(d)) {
      return absl::InvalidArgumentError(absl::StrCat("Q8_0 cannot encode block ", b, ": its scale ",
                                                     amax / 127.0f, " exceeds FP16's range"));
    }
    uint8_t* block = out + b * kQ8_0BlockBytes;
    std::memcpy(block, &d_bits, 2);
    for (int i = 0; i < kQ8_0BlockSize; ++i) {
      const float q = d == 0.0f ? 0.0f : std::nearbyint(x[i] / d);
      block[2 + i] = static_cast<uint8_t>(static_cast<int8_t>(std::clamp(q, -127.0f, 127.0f)));
    }
  }
  return absl::OkStatus();
}

absl::Status ErrnoStatus(int err, const std::string& what) {
  const std::string message = absl::StrCat(what, ": ", std::strerror(err));
  if (err == ENOENT || err == ENOTDIR) return absl::NotFoundError(message);
  if (err == EACCES || err == EPERM || err == EROFS) return absl::PermissionDeniedError(message);
  return absl::InternalError(message);
}

absl::Status ValidateShape(const std::string& name, const std::vector<int64_t>& ne,
                           const GgmlTypeInfo& type, int64_t& num_elements) {
  if (ne.empty() || ne.size() > static_cast<size_t>(kGgufMaxDims)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor '", name, "' has ", ne.size(), " dimensions (1 to ", kGgufMaxDims, " allowed)"));
  }
  num_elements = 1;
  for (const int64_t n : ne) {
    if (n < 1 || __builtin_mul_overflow(num_elements, n, &num_elements)) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", name, "' has an invalid dimension ", n));
    }
  }
  if (ne[0] % type.block_size != 0) {
    return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "': ne[0] = ", ne[0],
                                                   " is not a multiple of ", Sv(type.name),
                                                   "'s block size ", type.block_size));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::vector<uint8_t>> EncodeFromF32(GgmlType type, absl::Span<const float> values) {
  const size_t n = values.size();
  std::vector<uint8_t> out;
  switch (type) {
    case GgmlType::kF32:
      out.resize(n * 4);
      if (n > 0) std::memcpy(out.data(), values.data(), n * 4);
      return out;
    case GgmlType::kF16:
    case GgmlType::kBF16:
      out.resize(n * 2);
      for (size_t i = 0; i < n; ++i) {
        const uint16_t h = type == GgmlType::kF16 ? kernels::FloatToFp16(values[i])
                                                  : kernels::FloatToBf16(values[i]);
        std::memcpy(out.data() + 2 * i, &h, 2);
      }
      return out;
    case GgmlType::kQ8_0:
      if (n % kQ8_0BlockSize != 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("Q8_0 needs a multiple of ", kQ8_0BlockSize, " values, got ", n));
      }
      out.resize(n / kQ8_0BlockSize * kQ8_0BlockBytes);
      KVSERVE_RETURN_IF_ERROR(EncodeQ8_0(values, out.data()));
      return out;
    default: {
      // The other block-quantized types: the kernels' round-to-nearest quantizer.
      const std::optional<kernels::DType> t = GgmlKernelType(type);
      if (!t.has_value()) {
        return absl::InvalidArgumentError(absl::StrCat("cannot encode F32 values as ",
                                                       GgmlTypeLabel(static_cast<uint32_t>(type))));
      }
      const int64_t block = kernels::DTypeBlockSize(*t);
      if (static_cast<int64_t>(n) % block != 0) {
        return absl::InvalidArgumentError(absl::StrCat(GgmlTypeLabel(static_cast<uint32_t>(type)),
                                                       " needs a multiple of ", block,
                                                       " values, got ", n));
      }
      out.resize(
          static_cast<size_t>(static_cast<int64_t>(n) / block * kernels::DTypeBlockBytes(*t)));
      kernels::QuantizeRow(*t, values.data(), static_cast<int64_t>(n), out.data());
      return out;
    }
  }
}

void GgufWriter::Set(std::string_view key, GgufValue value) {
  for (GgufKeyValue& kv : metadata_) {
    if (kv.key == key) {
      kv.value = std::move(value);
      return;
    }
  }
  metadata_.push_back(GgufKeyValue{std::string(key), std::move(value)});
}

bool GgufWriter::Remove(std::string_view key) {
  const auto it = std::find_if(metadata_.begin(), metadata_.end(),
                               [key](const GgufKeyValue& kv) { return kv.key == key; });
  if (it == metadata_.end()) return false;
  metadata_.erase(it);
  return true;
}

absl::Status GgufWriter::AddTensor(std::string name, std::vector<int64_t> ne, GgmlType type,
                                   absl::Span<const float> values) {
  int64_t num_elements = 0;
  KVSERVE_RETURN_IF_ERROR(ValidateShape(name, ne, GgmlTypeInfoOf(type), num_elements));
  if (static_cast<int64_t>(values.size()) != num_elements) {
    return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "' has ", values.size(),
                                                   " values, its shape needs ", num_elements));
  }
  auto encoded = EncodeFromF32(type, values);
  if (!encoded.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor '", name, "': ", encoded.status().message()));
  }
  return AddRawTensor(std::move(name), std::move(ne), type, *std::move(encoded));
}

absl::Status GgufWriter::AddRawTensor(std::string name, std::vector<int64_t> ne, GgmlType type,
                                      std::vector<uint8_t> bytes) {
  const GgmlTypeInfo& info = GgmlTypeInfoOf(type);
  int64_t num_elements = 0;
  KVSERVE_RETURN_IF_ERROR(ValidateShape(name, ne, info, num_elements));
  const uint64_t expected = static_cast<uint64_t>(num_elements / info.block_size) *
                            static_cast<uint64_t>(info.block_bytes);
  if (bytes.size() != expected) {
    return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "' has ", bytes.size(),
                                                   " bytes, ", Sv(info.name),
                                                   " of its shape needs ", expected));
  }
  for (const Tensor& t : tensors_) {
    if (t.name == name) {
      return absl::InvalidArgumentError(absl::StrCat("duplicate tensor '", name, "'"));
    }
  }
  tensors_.push_back(Tensor{std::move(name), std::move(ne), type, std::move(bytes)});
  return absl::OkStatus();
}

bool GgufWriter::RemoveTensor(std::string_view name) {
  const auto it = std::find_if(tensors_.begin(), tensors_.end(),
                               [name](const Tensor& t) { return t.name == name; });
  if (it == tensors_.end()) return false;
  tensors_.erase(it);
  return true;
}

absl::StatusOr<uint32_t> GgufWriter::Alignment() const {
  for (const GgufKeyValue& kv : metadata_) {
    if (kv.key != "general.alignment") continue;
    const uint32_t* alignment = kv.value.As<uint32_t>();
    if (alignment == nullptr || *alignment == 0 || (*alignment & (*alignment - 1)) != 0) {
      return absl::InvalidArgumentError(
          "metadata key 'general.alignment' must be a u32 power of two");
    }
    return *alignment;
  }
  return kGgufDefaultAlignment;
}

std::string GgufWriter::SerializeHeader(uint32_t alignment) const {
  std::string out;
  Append<uint32_t>(out, kGgufMagic);
  Append<uint32_t>(out, kGgufVersion);
  Append<uint64_t>(out, tensors_.size());
  Append<uint64_t>(out, metadata_.size());
  for (const GgufKeyValue& kv : metadata_) {
    AppendString(out, kv.key);
    Append<uint32_t>(out, static_cast<uint32_t>(kv.value.type()));
    AppendValue(out, kv.value);
  }
  uint64_t offset = 0;
  for (const Tensor& t : tensors_) {
    AppendString(out, t.name);
    Append<uint32_t>(out, static_cast<uint32_t>(t.ne.size()));
    for (const int64_t n : t.ne) Append<uint64_t>(out, static_cast<uint64_t>(n));
    Append<uint32_t>(out, static_cast<uint32_t>(t.type));
    Append<uint64_t>(out, offset);
    offset = AlignUp(offset + t.bytes.size(), alignment);
  }
  out.resize(AlignUp(out.size(), alignment), '\0');
  return out;
}

absl::StatusOr<std::string> GgufWriter::Serialize() const {
  KVSERVE_ASSIGN_OR_RETURN(const uint32_t alignment, Alignment());
  std::string out = SerializeHeader(alignment);
  for (const Tensor& t : tensors_) {
    out.append(reinterpret_cast<const char*>(t.bytes.data()), t.bytes.size());
    out.resize(AlignUp(out.size(), alignment), '\0');
  }
  return out;
}

absl::Status GgufWriter::WriteFile(const std::string& path) const {
  KVSERVE_ASSIGN_OR_RETURN(const uint32_t alignment, Alignment());
  const std::string header = SerializeHeader(alignment);
  const std::string partial = path + ".partial";
  std::FILE* f = std::fopen(partial.c_str(), "wb");
  if (f == nullptr) return ErrnoStatus(errno, absl::StrCat(path, ": cannot create file"));
  const std::string zeros(alignment, '\0');
  bool ok = std::fwrite(header.data(), 1, header.size(), f) == header.size();
  for (const Tensor& t : tensors_) {
    if (!ok) break;
    ok = std::fwrite(t.bytes.data(), 1, t.bytes.size(), f) == t.bytes.size();
    const size_t pad = AlignUp(t.bytes.size(), alignment) - t.bytes.size();
    ok = ok && std::fwrite(zeros.data(), 1, pad, f) == pad;
  }
  const int write_errno = errno;
  ok = (std::fclose(f) == 0) && ok;
  if (!ok) {
    std::remove(partial.c_str());
    return ErrnoStatus(write_errno, absl::StrCat(path, ": write failed"));
  }
  if (std::rename(partial.c_str(), path.c_str()) != 0) {
    const int err = errno;
    std::remove(partial.c_str());
    return ErrnoStatus(err, absl::StrCat(path, ": cannot rename ", partial));
  }
  return absl::OkStatus();
}

}  // namespace kvserve::engine
