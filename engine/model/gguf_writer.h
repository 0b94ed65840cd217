// A writer for GGUF v3 files: metadata of every value type (nested arrays included) and tensors
// stored as F32, F16, BF16 or Q8_0 (or any ggml type when the caller supplies encoded bytes).
//
// Tensor data is laid out in insertion order, each tensor at a multiple of the alignment
// (`general.alignment` when set, else 32), with zero padding, so that GgufFile and other GGUF
// readers accept the result. The writer holds all encoded tensor bytes in memory until written.
// Not thread-safe; use one writer per file.
//
//   GgufWriter w;
//   w.SetString("general.architecture", "llama");
//   w.SetU32("llama.block_count", 5);
//   KVSERVE_RETURN_IF_ERROR(w.AddTensor("output_norm.weight", {64}, GgmlType::kF32, norm));
//   KVSERVE_RETURN_IF_ERROR(w.WriteFile(path));
#ifndef KVSERVE_ENGINE_MODEL_GGUF_WRITER_H_
#define KVSERVE_ENGINE_MODEL_GGUF_WRITER_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/model/gguf.h"

namespace kvserve::engine {

// Encodes F32 values as `type`: F32, F16 and BF16 round to nearest even; Q8_0 (values.size() a
// multiple of 32) stores per block of 32 the FP16 scale d = fp16(absmax / 127) and
// q = round(x / d), so each value is within d / 2 of the original. InvalidArgument for other types
// and for values Q8_0 cannot represent (non-finite, or a block scale beyond FP16's range).
absl::StatusOr<std::vector<uint8_t>> EncodeFromF32(GgmlType type, absl::Span<const float> values);

class GgufWriter {
 public:
  GgufWriter() = default;

  // Metadata keeps insertion order; setting an existing key replaces its value in place.
  void Set(std::string_view key, GgufValue value);
  void SetU8(std::string_view key, uint8_t v) { Set(key, GgufValue(v)); }
  void SetI8(std::string_view key, int8_t v) { Set(key, GgufValue(v)); }
  void SetU16(std::string_view key, uint16_t v) { Set(key, GgufValue(v)); }
  void SetI16(std::string_view key, int16_t v) { Set(key, GgufValue(v)); }
  void SetU32(std::string_view key, uint32_t v) { Set(key, GgufValue(v)); }
  void SetI32(std::string_view key, int32_t v) { Set(key, GgufValue(v)); }
  void SetU64(std::string_view key, uint64_t v) { Set(key, GgufValue(v)); }
  void SetI64(std::string_view key, int64_t v) { Set(key, GgufValue(v)); }
  void SetF32(std::string_view key, float v) { Set(key, GgufValue(v)); }
  void SetF64(std::string_view key, double v) { Set(key, GgufValue(v)); }
  void SetBool(std::string_view key, bool v) { Set(key, GgufValue(v)); }
  void SetString(std::string_view key, std::string v) { Set(key, GgufValue(std::move(v))); }
  void SetArray(std::string_view key, GgufArray v) { Set(key, GgufValue(std::move(v))); }
  // Returns whether the key was present.
  bool Remove(std::string_view key);
  const std::vector<GgufKeyValue>& metadata() const { return metadata_; }

  // Adds a tensor of shape `ne` (ggml order: ne[0] = columns) from F32 values stored as `type`
  // (see EncodeFromF32). InvalidArgument naming the tensor for a duplicate name, a bad shape
  // (1 to 4 dimensions, each >= 1, ne[0] a multiple of the type's block size) or a value count
  // that does not match the shape.
  absl::Status AddTensor(std::string name, std::vector<int64_t> ne, GgmlType type,
                         absl::Span<const float> values);
  // Adds a tensor whose bytes are already encoded as `type` (any type GgmlTypeInfoOf knows); the
  // byte count must match the shape.
  absl::Status AddRawTensor(std::string name, std::vector<int64_t> ne, GgmlType type,
                            std::vector<uint8_t> bytes);
  // Returns whether the tensor was present.
  bool RemoveTensor(std::string_view name);

  // The whole file in memory. InvalidArgument if `general.alignment` is set to something other
  // than a u32 power of two.
  absl::StatusOr<std::string> Serialize() const;
  // Writes the file: to `path` + ".partial" first, renamed to `path` once complete. Errors name
  // the path (NotFound, PermissionDenied, Internal for I/O errors).
  absl::Status WriteFile(const std::string& path) const;

 private:
  struct Tensor {
    std::string name;
    std::vector<int64_t> ne;
    GgmlType type;
    std::vector<uint8_t> bytes;
  };
  absl::StatusOr<uint32_t> Alignment() const;
  // Everything before the data section, padding included.
  std::string SerializeHeader(uint32_t alignment) const;

  std::vector<GgufKeyValue> metadata_;
  std::vector<Tensor> tensors_;
};

}  // namespace kvserve::engine

#endif  // KVSERVE_ENGINE_MODEL_GGUF_WRITER_H_
