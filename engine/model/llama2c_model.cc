#include "engine/model/llama2c_model.h"

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/common/status_macros.h"
#include "engine/model/model_limits.h"
#include "engine/tokenizer/llama2c_tokenizer_file.h"
#include "kernels/dtype.h"

namespace kvserve::engine {
namespace {

using kernels::DType;
using kernels::WeightView;

constexpr const char* kHeaderFields[7] = {"dim",        "hidden_dim", "n_layers", "n_heads",
                                          "n_kv_heads", "vocab_size", "seq_len"};

// One F32 array of the checkpoint: its name, shape and place in the file.
struct ArraySpec {
  const char* name;
  std::vector<int64_t> shape;
  int64_t offset = 0;  // bytes from the start of the file
  int64_t bytes = 0;
};

class Llama2cModel final : public LoadedModel {
 public:
  explicit Llama2cModel(MappedFile file) : file_(std::move(file)) {
    path_ = file_.path();
    file_format_ = "llama2c";
  }

  absl::Status Build(const std::string& tokenizer_path);

 protected:
  int64_t ReleaseFileBytes(const void* p, int64_t n) const override { return file_.Release(p, n); }
  void StartFileHugePages() const override { file_.StartHugePages(); }
  void WaitForFileHugePages() const override { file_.WaitForHugePages(); }

 private:
  absl::Status Error(std::string_view message) const {
    return absl::InvalidArgumentError(
        absl::StrCat(path_, ": ", absl::string_view(message.data(), message.size())));
  }
  absl::Status ReadHeader(int32_t header[7]);
  absl::Status LayOut(std::vector<ArraySpec>& arrays) const;
  absl::Status LoadVocabulary(const std::string& tokenizer_path);
  const float* At(const ArraySpec& a) const {
    return reinterpret_cast<const float*>(file_.data() + a.offset);
  }

  MappedFile file_;
  int32_t raw_vocab_size_ = 0;
};

absl::Status Llama2cModel::ReadHeader(int32_t header[7]) {
  if (file_.size() < kLlama2cHeaderBytes) {
    return Error(absl::StrCat("truncated: ", file_.size(), " bytes, the llama2.c header needs ",
                              kLlama2cHeaderBytes));
  }
  std::memcpy(header, file_.data(), kLlama2cHeaderBytes);
  const int64_t limits[7] = {kMaxModelDim, kMaxHiddenDim, kMaxLayers, kMaxHeads,
                             kMaxHeads,    kMaxVocab,     kMaxContext};
  for (int i = 0; i < 7; ++i) {
    int64_t value = header[i];
    if (i == 5) value = value < 0 ? -value : value;  // the sign of vocab_size marks the classifier
    if (value < 1 || value > limits[i]) {
      return Error(absl::StrCat("llama2.c header field ", kHeaderFields[i], " (byte ", 4 * i,
                                ") = ", header[i],
                                " is out of range: ", i == 5 ? "its absolute value" : "it",
                                " must be in [1, ", limits[i], "]"));
    }
  }
  const int32_t dim = header[0];
  const int32_t n_heads = header[3];
  const int32_t n_kv_heads = header[4];
  if (dim % n_heads != 0) {
    return Error(
        absl::StrCat("llama2.c header: dim ", dim, " is not a multiple of n_heads ", n_heads));
  }
  if (n_kv_heads > n_heads || n_heads % n_kv_heads != 0) {
    return Error(absl::StrCat("llama2.c header: n_heads ", n_heads,
                              " is not a multiple of n_kv_heads ", n_kv_heads));
  }
  if ((dim / n_heads) % 2 != 0) {
    return Error(absl::StrCat("llama2.c header: head size ", dim / n_heads,
                              " (dim / n_heads) is odd; RoPE needs pairs"));
  }
  ModelConfig& c = config_;
  c.architecture = "llama";
  c.name = std::filesystem::path(path_).stem().string();
  c.dim = dim;
  c.hidden_dim = header[1];
  c.num_layers = header[2];
  c.num_heads = n_heads;
  c.num_kv_heads = n_kv_heads;
  c.head_dim = dim / n_heads;
  raw_vocab_size_ = header[5];
  c.vocab_size = raw_vocab_size_ < 0 ? -raw_vocab_size_ : raw_vocab_size_;
  c.context_length = header[6];
  c.rms_norm_eps = 1e-5f;
  c.rope_freq_base = 10000.0f;
  c.tied_classifier = raw_vocab_size_ > 0;
  return absl::OkStatus();
}

absl::Status Llama2cModel::LayOut(std::vector<ArraySpec>& arrays) const {
  const ModelConfig& c = config_;
  const int64_t L = c.num_layers, dim = c.dim, hidden = c.hidden_dim, kv = c.kv_dim();
  const int64_t vocab = c.vocab_size, half_head = c.head_dim / 2;
  arrays = {
      {"token_embedding", {vocab, dim}},
      {"rms_att", {L, dim}},
      {"wq", {L, dim, dim}},
      {"wk", {L, kv, dim}},
      {"wv", {L, kv, dim}},
      {"wo", {L, dim, dim}},
      {"rms_ffn", {L, dim}},
      {"w1", {L, hidden, dim}},
      {"w2", {L, dim, hidden}},
      {"w3", {L, hidden, dim}},
      {"rms_final", {dim}},
      {"freq_cis_real", {c.context_length, half_head}},
      {"freq_cis_imag", {c.context_length, half_head}},
  };
  if (!c.tied_classifier) arrays.push_back({"wcls", {vocab, dim}});
  // The header limits keep every product and the running offset far below 2^63.
  int64_t offset = kLlama2cHeaderBytes;
  for (ArraySpec& a : arrays) {
    int64_t elements = 1;
    for (const int64_t n : a.shape) elements *= n;
    a.offset = offset;
    a.bytes = elements * static_cast<int64_t>(sizeof(float));
    offset += a.bytes;
  }
  const int64_t expected = offset;
  const int64_t actual = file_.size();
  if (actual < expected) {
    for (const ArraySpec& a : arrays) {
      if (a.offset + a.bytes <= actual) continue;
      return Error(absl::StrCat(
          "truncated: array '", a.name, "' [", absl::StrJoin(a.shape, ", "), "] at byte ", a.offset,
          " needs ", a.bytes, " bytes but the file ends at byte ", actual, " (the header implies ",
          expected, " bytes, the file has ", actual, ")"));
    }
  }
  if (actual > expected) {
    return Error(absl::StrCat("size mismatch: the header implies ", expected,
                              " bytes but the file has ", actual, " (", actual - expected,
                              " extra bytes after array '", arrays.back().name, "')"));
  }
  return absl::OkStatus();
}

absl::Status Llama2cModel::LoadVocabulary(const std::string& tokenizer_path) {
  std::string path = tokenizer_path;
  if (path.empty()) {
    std::filesystem::path dir = std::filesystem::path(path_).parent_path();
    if (dir.empty()) dir = ".";
    const std::string candidates[2] = {
        (dir / absl::StrCat("tok", config_.vocab_size, ".bin")).string(),
        (dir / "tokenizer.bin").string()};
    for (const std::string& candidate : candidates) {
      std::error_code ec;
      if (std::filesystem::is_regular_file(candidate, ec)) {
        path = candidate;
        break;
      }
    }
    if (path.empty()) {
      return absl::NotFoundError(absl::StrCat(path_, ": no tokenizer file: tried ", candidates[0],
                                              " and ", candidates[1],
                                              " (pass the tokenizer path explicitly)"));
    }
  }
  auto vocab = ReadLlama2cTokenizer(path, config_.vocab_size);
  if (!vocab.ok()) {
    return absl::Status(vocab.status().code(),
                        absl::StrCat(path_, ": tokenizer: ", vocab.status().message()));
  }
  vocab_ = *std::move(vocab);
  return absl::OkStatus();
}

absl::Status Llama2cModel::Build(const std::string& tokenizer_path) {
  int32_t header[7];
  KVSERVE_RETURN_IF_ERROR(ReadHeader(header));
  std::vector<ArraySpec> arrays;
  KVSERVE_RETURN_IF_ERROR(LayOut(arrays));
  KVSERVE_RETURN_IF_ERROR(LoadVocabulary(tokenizer_path));

  const ModelConfig& c = config_;
  const int64_t dim = c.dim, hidden = c.hidden_dim, kv = c.kv_dim();
  auto matrix = [](const float* data, int64_t rows, int64_t cols) {
    return WeightView{DType::kF32, data, rows, cols};
  };
  const float* embedding = At(arrays[0]);
  const float* rms_att = At(arrays[1]);
  const float* wq = At(arrays[2]);
  const float* wk = At(arrays[3]);
  const float* wv = At(arrays[4]);
  const float* wo = At(arrays[5]);
  const float* rms_ffn = At(arrays[6]);
  const float* w1 = At(arrays[7]);
  const float* w2 = At(arrays[8]);
  const float* w3 = At(arrays[9]);
  weights_.token_embedding = matrix(embedding, c.vocab_size, dim);
  weights_.layers.resize(static_cast<size_t>(c.num_layers));
  for (int64_t l = 0; l < c.num_layers; ++l) {
    LayerWeights& w = weights_.layers[static_cast<size_t>(l)];
    w.attn_norm = rms_att + l * dim;
    w.wq = matrix(wq + l * dim * dim, dim, dim);
    w.wk = matrix(wk + l * kv * dim, kv, dim);
    w.wv = matrix(wv + l * kv * dim, kv, dim);
    w.wo = matrix(wo + l * dim * dim, dim, dim);
    w.ffn_norm = rms_ffn + l * dim;
    w.w_gate = matrix(w1 + l * hidden * dim, hidden, dim);
    w.w_down = matrix(w2 + l * dim * hidden, dim, hidden);
    w.w_up = matrix(w3 + l * hidden * dim, hidden, dim);
  }
  weights_.final_norm = At(arrays[10]);
  weights_.output =
      c.tied_classifier ? weights_.token_embedding : matrix(At(arrays[13]), c.vocab_size, dim);
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<LoadedModel>> LoadLlama2cModel(MappedFile file,
                                                              const std::string& tokenizer_path) {
  auto model = std::make_unique<Llama2cModel>(std::move(file));
  KVSERVE_RETURN_IF_ERROR(model->Build(tokenizer_path));
  return std::unique_ptr<LoadedModel>(std::move(model));
}

}  // namespace kvserve::engine
