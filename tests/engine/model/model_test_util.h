// Helpers shared by the model loader tests: fixture paths, a per-test scratch directory, file
// bytes, and copying a GGUF file through GgufWriter with per-tensor type changes.
#ifndef KVSERVE_TESTS_ENGINE_MODEL_MODEL_TEST_UTIL_H_
#define KVSERVE_TESTS_ENGINE_MODEL_MODEL_TEST_UTIL_H_

#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <string>
#include <vector>

#include "engine/model/gguf.h"
#include "engine/model/gguf_writer.h"
#include "gtest/gtest.h"

namespace kvserve::engine::testing_util {

inline std::string ModelPath(const std::string& name) {
  return std::string(KVSERVE_MODELS_DIR) + "/" + name;
}

inline std::string ReadBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << path;
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

inline void WriteBytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

template <typename T>
void PutLe(std::string& bytes, size_t offset, T value) {
  ASSERT_LE(offset + sizeof(T), bytes.size());
  std::memcpy(bytes.data() + offset, &value, sizeof(T));
}

template <typename T>
T GetLe(const std::string& bytes, size_t offset) {
  T value{};
  std::memcpy(&value, bytes.data() + offset, sizeof(T));
  return value;
}

// A fresh directory under testing::TempDir() for the running test, removed when destroyed.
class ScratchDir {
 public:
  ScratchDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    path_ = std::filesystem::path(::testing::TempDir()) /
            (std::string("kvserve_model_") + info->test_suite_name() + "_" + info->name() + "_" +
             std::to_string(::getpid()));
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~ScratchDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  std::string File(const std::string& name) const { return (path_ / name).string(); }
  std::string path() const { return path_.string(); }

 private:
  std::filesystem::path path_;
};

// The tensor's values as F32 (it must be F32, F16, BF16 or Q8_0).
inline std::vector<float> TensorValues(const GgufTensorInfo& info) {
  std::vector<float> values(static_cast<size_t>(info.num_elements));
  EXPECT_TRUE(DecodeToF32(info.type, info.data, info.num_elements, values.data()).ok());
  return values;
}

// Decides how a copied tensor is stored; may also change its shape and values.
using TensorRewrite = std::function<GgmlType(const GgufTensorInfo& info)>;

// Copies all metadata, then every tensor for which `keep` is true, stored as `type_of(info)`.
inline GgufWriter CopyGguf(const GgufFile& src, const TensorRewrite& type_of,
                           const std::function<bool(const std::string&)>& keep = nullptr) {
  GgufWriter w;
  for (const GgufKeyValue& kv : src.metadata()) w.Set(kv.key, kv.value);
  for (const GgufTensorInfo& info : src.tensors()) {
    if (keep && !keep(info.name)) continue;
    const std::vector<float> values = TensorValues(info);
    const absl::Status s = w.AddTensor(info.name, info.ne, type_of(info), values);
    EXPECT_TRUE(s.ok()) << s;
  }
  return w;
}

}  // namespace kvserve::engine::testing_util

#endif  // KVSERVE_TESTS_ENGINE_MODEL_MODEL_TEST_UTIL_H_
