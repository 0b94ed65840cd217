#include "engine/model/gguf_model.h"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "engine/common/status_macros.h"
#include "engine/model/model_limits.h"
#include "engine/tokenizer/pre_tokenizer.h"
#include "kernels/dtype.h"
#include "kernels/weight_formats.h"

namespace kvserve::engine {
namespace {

// This Abseil build does not alias absl::string_view to std::string_view; StrCat needs the former.
absl::string_view Sv(std::string_view s) { return absl::string_view(s.data(), s.size()); }

using kernels::DType;
using kernels::WeightView;

// A missing required key is a malformed model file, not a missing file.
absl::Status Required(absl::Status status) {
  if (absl::IsNotFound(status)) return absl::InvalidArgumentError(status.message());
  return status;
}

std::string NeString(const std::vector<int64_t>& ne) {
  std::string out = "[";
  for (size_t i = 0; i < ne.size(); ++i) absl::StrAppend(&out, i ? ", " : "", ne[i]);
  return out + "]";
}

// A vocabulary of ids only: the file's token strings and types, for a tokenizer model this
// build cannot run (see LoadGgufModel).
absl::StatusOr<Vocabulary> IdsOnlyVocabulary(const GgufFile& file) {
  auto tokens = file.GetArrayOf<std::string>("tokenizer.ggml.tokens");
  if (!tokens.ok()) return Required(tokens.status());
  if (tokens->empty() || tokens->size() > static_cast<size_t>(kMaxVocab)) {
    return absl::InvalidArgumentError(absl::StrCat(file.name(), ": tokenizer.ggml.tokens has ",
                                                   tokens->size(), " tokens (1 to ", kMaxVocab,
                                                   " allowed)"));
  }
  Vocabulary vocab;
  const int32_t n = static_cast<int32_t>(tokens->size());
  vocab.pieces.assign(tokens->begin(), tokens->end());
  vocab.scores.assign(tokens->size(), 0.0f);
  vocab.types.assign(tokens->size(), TokenType::kNormal);
  if (auto types = file.GetArrayOf<int32_t>("tokenizer.ggml.token_type");
      types.ok() && types->size() == tokens->size()) {
    for (int32_t i = 0; i < n; ++i) {
      const int32_t t = (*types)[i];
      if (t >= static_cast<int32_t>(TokenType::kNormal) &&
          t <= static_cast<int32_t>(TokenType::kByte)) {
        vocab.types[i] = static_cast<TokenType>(t);
      }
    }
  }
  for (auto [key, id] : {std::pair{"tokenizer.ggml.bos_token_id", &vocab.bos_id},
                         std::pair{"tokenizer.ggml.eos_token_id", &vocab.eos_id}}) {
    if (!file.HasKey(key)) continue;
    auto v = file.GetInteger(key);
    if (v.ok() && *v >= 0 && *v < n) *id = static_cast<int32_t>(*v);
  }
  if (file.HasKey("tokenizer.ggml.add_bos_token")) {
    if (auto b = file.GetBool("tokenizer.ggml.add_bos_token"); b.ok()) vocab.add_bos = *b;
  }
  return vocab;
}

// What distinguishes the architectures served: everything else (the block structure, SwiGLU,
// RMSNorm, GQA, tied or untied classifier) is common.
struct ArchitectureInfo {
  std::string_view name;
  kernels::RopeStyle rope_style;
  bool qkv_bias;       // blk.N.attn_{q,k,v}.bias required (optional for the others)
  bool qk_norm;        // blk.N.attn_{q,k}_norm.weight: RMSNorm of each head
  bool fused_qkv;      // blk.N.attn_qkv.weight holds the q, k and v rows
  bool fused_gate_up;  // blk.N.ffn_up.weight holds the gate rows, then the up rows
};

constexpr ArchitectureInfo kArchitectures[] = {
    {"llama", kernels::RopeStyle::kAdjacentPairs, false, false, false, false},
    {"qwen2", kernels::RopeStyle::kNeox, true, false, false, false},
    {"qwen3", kernels::RopeStyle::kNeox, false, true, false, false},
    {"phi3", kernels::RopeStyle::kNeox, false, false, true, true},
};

std::string ArchitectureNames() {
  std::string out;
  for (const ArchitectureInfo& a : kArchitectures) {
    absl::StrAppend(&out, out.empty() ? "" : ", ", Sv(a.name));
  }
  return out;
}

class GgufModel final : public LoadedModel {
 public:
  GgufModel(GgufFile file, bool ids_only_vocabulary)
      : file_(std::move(file)), ids_only_vocabulary_(ids_only_vocabulary) {
    path_ = file_.name();
    file_format_ = "gguf";
  }

  absl::Status Build();

 protected:
  int64_t ReleaseFileBytes(const void* p, int64_t n) const override {
    return file_.ReleaseBytes(p, n);
  }
  void StartFileHugePages() const override { file_.StartHugePages(); }
  void WaitForFileHugePages() const override { file_.WaitForHugePages(); }

 private:
  absl::Status Error(std::string_view message) const {
    return absl::InvalidArgumentError(absl::StrCat(file_.name(), ": ", Sv(message)));
  }
  // The metadata key `suffix` of this architecture ("qwen2.block_count").
  std::string Key(std::string_view suffix) const {
    return absl::StrCat(Sv(arch_->name), ".", Sv(suffix));
  }
  absl::StatusOr<int> ReadDim(std::string_view suffix, int64_t max_value,
                              std::optional<int64_t> default_value = std::nullopt) const;
  absl::Status ReadConfig();
  // Parts of ReadConfig, in the order it runs them; each fills its fields of config_.
  absl::Status ReadArchitecture();             // architecture and name
  absl::Status ReadShape();                    // dims, layers, heads, context, head_dim
  absl::Status ReadNormAndRopeBase();          // rms_norm_eps, rope_freq_base
  absl::Status ReadRopeScaling();              // rope_freq_scale (none, linear or llama3)
  absl::Status RejectUnsupportedKeys() const;  // keys that change the math
  absl::Status ReadLayer(int l, LayerWeights& w);
  absl::Status ReadRopeFactors();
  // Every tensor of the file must have been used: one that is not would change the model's math.
  absl::Status RejectUnusedTensors() const;
  absl::StatusOr<const GgufTensorInfo*> Tensor(const std::string& name,
                                               const std::vector<int64_t>& expected_ne);
  absl::StatusOr<WeightView> Matrix(const std::string& name, int64_t rows, int64_t cols);
  // Rows [row0, row0 + rows) of a matrix, as a view into it (fused tensors).
  static WeightView RowRange(const WeightView& m, int64_t row0, int64_t rows);
  absl::StatusOr<const float*> Vector(const std::string& name, int64_t n);
  // Vector(name, n) when the file has the tensor, else null.
  absl::StatusOr<const float*> OptionalVector(const std::string& name, int64_t n);
  absl::StatusOr<const float*> OwnedF32(const GgufTensorInfo& info);

  GgufFile file_;
  bool ids_only_vocabulary_ = false;
  const ArchitectureInfo* arch_ = nullptr;
  int64_t original_context_ = 0;  // rope.scaling.original_context_length (Phi-3), or 0
  absl::flat_hash_set<std::string> used_tensors_;
  std::vector<std::vector<float>> owned_f32_;
  std::vector<std::vector<uint16_t>> owned_u16_;
};

absl::StatusOr<int> GgufModel::ReadDim(std::string_view suffix, int64_t max_value,
                                       std::optional<int64_t> default_value) const {
  const std::string key = Key(suffix);
  int64_t value = 0;
  if (default_value.has_value() && !file_.HasKey(key)) {
    value = *default_value;
  } else {
    auto read = file_.GetInteger(key);
    if (!read.ok()) return Required(read.status());
    value = *read;
  }
  if (value < 1 || value > max_value) {
    return Error(absl::StrCat("metadata key '", key, "' = ", value, " is out of range [1, ",
                              max_value, "]"));
  }
  return static_cast<int>(value);
}

absl::Status GgufModel::ReadConfig() {
  KVSERVE_RETURN_IF_ERROR(ReadArchitecture());
  KVSERVE_RETURN_IF_ERROR(ReadShape());
  KVSERVE_RETURN_IF_ERROR(ReadNormAndRopeBase());
  KVSERVE_RETURN_IF_ERROR(ReadRopeScaling());
  return RejectUnsupportedKeys();
}

absl::Status GgufModel::ReadArchitecture() {
  auto arch = file_.GetString("general.architecture");
  if (!arch.ok()) return Required(arch.status());
  for (const ArchitectureInfo& a : kArchitectures) {
    if (*arch == a.name) arch_ = &a;
  }
  if (arch_ == nullptr) {
    return absl::UnimplementedError(
        absl::StrCat(file_.name(), ": architecture '", *arch,
                     "' is not supported (supported: ", ArchitectureNames(), ")"));
  }
  ModelConfig& c = config_;
  c.architecture = *arch;
  c.rope_style = arch_->rope_style;
  if (auto name = file_.GetString("general.name"); name.ok()) {
    c.name = *name;
  } else {
    c.name = std::filesystem::path(file_.name()).stem().string();
  }
  return absl::OkStatus();
}

absl::Status GgufModel::ReadShape() {
  ModelConfig& c = config_;
  KVSERVE_ASSIGN_OR_RETURN(c.dim, ReadDim("embedding_length", kMaxModelDim));
  KVSERVE_ASSIGN_OR_RETURN(c.hidden_dim, ReadDim("feed_forward_length", kMaxHiddenDim));
  KVSERVE_ASSIGN_OR_RETURN(c.num_layers, ReadDim("block_count", kMaxLayers));
  KVSERVE_ASSIGN_OR_RETURN(c.num_heads, ReadDim("attention.head_count", kMaxHeads));
  KVSERVE_ASSIGN_OR_RETURN(c.num_kv_heads,
                           ReadDim("attention.head_count_kv", kMaxHeads, c.num_heads));
  KVSERVE_ASSIGN_OR_RETURN(c.context_length, ReadDim("context_length", kMaxContext));
  const bool explicit_head_dim = file_.HasKey(Key("attention.key_length"));
  if (!explicit_head_dim && c.dim % c.num_heads != 0) {
    return Error(absl::StrCat(Key("embedding_length"), " ", c.dim, " is not a multiple of ",
                              Key("attention.head_count"), " ", c.num_heads));
  }
  if (c.num_heads % c.num_kv_heads != 0) {
    return Error(absl::StrCat(Key("attention.head_count"), " ", c.num_heads,
                              " is not a multiple of ", Key("attention.head_count_kv"), " ",
                              c.num_kv_heads));
  }
  c.head_dim = c.dim / c.num_heads;
  if (explicit_head_dim) {
    KVSERVE_ASSIGN_OR_RETURN(c.head_dim, ReadDim("attention.key_length", kMaxModelDim));
    KVSERVE_ASSIGN_OR_RETURN(const int value_length,
                             ReadDim("attention.value_length", kMaxModelDim, c.head_dim));
    if (value_length != c.head_dim) {
      return Error(absl::StrCat(Key("attention.value_length"), " = ", value_length,
                                " differs from ", Key("attention.key_length"), " = ", c.head_dim,
                                " (not supported)"));
    }
  }
  if (c.head_dim % 2 != 0) {
    return Error(absl::StrCat("head_dim ", c.head_dim, " is odd; RoPE needs pairs"));
  }
  if (file_.HasKey(Key("rope.dimension_count"))) {
    KVSERVE_ASSIGN_OR_RETURN(const int64_t rope_dims,
                             file_.GetInteger(Key("rope.dimension_count")));
    if (rope_dims != c.head_dim) {
      return Error(absl::StrCat(Key("rope.dimension_count"), " = ", rope_dims, " but head_dim = ",
                                c.head_dim, " (partial rotary embeddings are not supported)"));
    }
  }
  // A sliding attention window shorter than the context (Phi-3 mini: 2047 of 4096) would change
  // attention past the window; the context is limited to the window instead, so that every
  // position is computed exactly.
  if (file_.HasKey(Key("attention.sliding_window"))) {
    KVSERVE_ASSIGN_OR_RETURN(const int64_t window,
                             file_.GetInteger(Key("attention.sliding_window")));
    if (window < 1) {
      return Error(
          absl::StrCat(Key("attention.sliding_window"), " = ", window, " must be positive"));
    }
    if (window < c.context_length) c.context_length = static_cast<int>(window);
  }
  return absl::OkStatus();
}

absl::Status GgufModel::ReadNormAndRopeBase() {
  ModelConfig& c = config_;
  const std::string eps_key = Key("attention.layer_norm_rms_epsilon");
  auto eps = file_.GetFloat(eps_key);
  if (!eps.ok()) return Required(eps.status());
  if (!(*eps > 0.0 && *eps < 1.0)) {
    return Error(absl::StrCat(eps_key, " = ", *eps, " is out of range (0, 1)"));
  }
  c.rms_norm_eps = static_cast<float>(*eps);
  if (file_.HasKey(Key("rope.freq_base"))) {
    KVSERVE_ASSIGN_OR_RETURN(const double base, file_.GetFloat(Key("rope.freq_base")));
    if (!(base > 1.0 && std::isfinite(base))) {
      return Error(absl::StrCat(Key("rope.freq_base"), " = ", base, " must be finite and > 1"));
    }
    c.rope_freq_base = static_cast<float>(base);
  }
  return absl::OkStatus();
}

absl::Status GgufModel::ReadRopeScaling() {
  ModelConfig& c = config_;
  // Rope scaling: none, linear (positions divided by the factor) or llama3 (frequency factors
  // from rope_freqs.weight); Phi-3's LongRoPE factors are tensors too (ReadRopeFactors).
  // Anything else changes the math in ways not implemented here.
  std::string scaling = "none";
  if (file_.HasKey(Key("rope.scaling.type"))) {
    KVSERVE_ASSIGN_OR_RETURN(scaling, file_.GetString(Key("rope.scaling.type")));
  }
  if (scaling == "linear") {
    KVSERVE_ASSIGN_OR_RETURN(const double factor, file_.GetFloat(Key("rope.scaling.factor")));
    if (!(factor > 0.0 && std::isfinite(factor))) {
      return Error(
          absl::StrCat(Key("rope.scaling.factor"), " = ", factor, " must be finite and > 0"));
    }
    c.rope_freq_scale = static_cast<float>(1.0 / factor);
  } else if (scaling == "llama3") {
    if (file_.FindTensor("rope_freqs.weight") == nullptr) {
      return Error(
          absl::StrCat(Key("rope.scaling.type"), " 'llama3' needs the tensor 'rope_freqs.weight'"));
    }
  } else if (scaling != "none") {
    return absl::UnimplementedError(absl::StrCat(
        file_.name(), ": ", Key("rope.scaling.type"), " '", scaling,
        "' is not supported (supported: none, linear, llama3 with rope_freqs.weight)"));
  }
  // Magnitude scaling of the rotated queries and keys (cos and sin times the factor), as
  // llama.cpp applies rope.scaling.attn_factor.
  if (file_.HasKey(Key("rope.scaling.attn_factor"))) {
    KVSERVE_ASSIGN_OR_RETURN(const double f, file_.GetFloat(Key("rope.scaling.attn_factor")));
    if (!(f > 0.0 && std::isfinite(f))) {
      return Error(
          absl::StrCat(Key("rope.scaling.attn_factor"), " = ", f, " must be finite and > 0"));
    }
    c.rope_attn_factor = static_cast<float>(f);
  }
  if (file_.HasKey(Key("rope.scaling.original_context_length"))) {
    KVSERVE_ASSIGN_OR_RETURN(original_context_,
                             file_.GetInteger(Key("rope.scaling.original_context_length")));
  }
  return absl::OkStatus();
}

absl::Status GgufModel::RejectUnsupportedKeys() const {
  for (std::string_view suffix : {"rope.scaling.yarn_log_multiplier", "attention.logit_softcapping",
                                  "final_logit_softcapping", "attention.scale", "embedding_scale",
                                  "residual_scale", "logit_scale"}) {
    const std::string key = Key(suffix);
    if (file_.HasKey(key)) {
      return absl::UnimplementedError(absl::StrCat(file_.name(), ": metadata key '", key,
                                                   "' changes the model's math and is not "
                                                   "supported"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<const GgufTensorInfo*> GgufModel::Tensor(const std::string& name,
                                                        const std::vector<int64_t>& expected_ne) {
  const GgufTensorInfo* info = file_.FindTensor(name);
  if (info == nullptr) {
    return Error(
        absl::StrCat("tensor '", name, "' is missing (architecture '", Sv(arch_->name), "')"));
  }
  used_tensors_.insert(name);
  if (info->ne != expected_ne) {
    return Error(absl::StrCat("tensor '", name, "' has shape ", NeString(info->ne), ", expected ",
                              NeString(expected_ne), " (ggml order, ne[0] = columns)"));
  }
  const std::optional<DType> type = GgmlKernelType(info->type);
  if (!type.has_value()) {
    return Error(absl::StrCat("tensor '", name, "' has unsupported type ",
                              GgmlTypeLabel(static_cast<uint32_t>(info->type)),
                              " (supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, "
                              "Q3_K, Q4_K, Q5_K, Q6_K)"));
  }
  if (info->ne[0] % kernels::DTypeBlockSize(*type) != 0) {
    return Error(absl::StrCat("tensor '", name, "' has ", info->ne[0],
                              " columns, not a multiple of ", kernels::DTypeBlockSize(*type),
                              " (the ", Sv(kernels::DTypeName(*type)), " block size)"));
  }
  return info;
}

absl::StatusOr<const float*> GgufModel::OwnedF32(const GgufTensorInfo& info) {
  std::vector<float> values(static_cast<size_t>(info.num_elements));
  kernels::DequantizeRow(*GgmlKernelType(info.type), info.data, info.num_elements, values.data());
  owned_f32_.push_back(std::move(values));
  return owned_f32_.back().data();
}

absl::StatusOr<WeightView> GgufModel::Matrix(const std::string& name, int64_t rows, int64_t cols) {
  KVSERVE_ASSIGN_OR_RETURN(const GgufTensorInfo* info, Tensor(name, {cols, rows}));
  WeightView view;
  view.rows = rows;
  view.cols = cols;
  const auto address = reinterpret_cast<uintptr_t>(info->data);
  switch (info->type) {
    case GgmlType::kF32:
      view.dtype = DType::kF32;
      if (address % alignof(float) == 0) {
        view.data = info->data;
      } else {
        KVSERVE_ASSIGN_OR_RETURN(view.data, OwnedF32(*info));
      }
      return view;
    case GgmlType::kF16:
    case GgmlType::kBF16:
      view.dtype = info->type == GgmlType::kF16 ? DType::kF16 : DType::kBF16;
      if (address % alignof(uint16_t) == 0) {
        view.data = info->data;
      } else {
        std::vector<uint16_t> copy(static_cast<size_t>(info->num_elements));
        std::memcpy(copy.data(), info->data, info->num_bytes);
        owned_u16_.push_back(std::move(copy));
        view.data = owned_u16_.back().data();
      }
      return view;
    default:  // block-quantized: used in place (blocks are read with unaligned-safe loads)
      view.dtype = *GgmlKernelType(info->type);
      view.data = info->data;
      return view;
  }
}

absl::StatusOr<const float*> GgufModel::Vector(const std::string& name, int64_t n) {
  KVSERVE_ASSIGN_OR_RETURN(const GgufTensorInfo* info, Tensor(name, {n}));
  if (info->type == GgmlType::kF32 &&
      reinterpret_cast<uintptr_t>(info->data) % alignof(float) == 0) {
    return reinterpret_cast<const float*>(info->data);
  }
  return OwnedF32(*info);
}

absl::StatusOr<const float*> GgufModel::OptionalVector(const std::string& name, int64_t n) {
  if (file_.FindTensor(name) == nullptr) return nullptr;
  return Vector(name, n);
}

absl::Status GgufModel::Build() {
  KVSERVE_RETURN_IF_ERROR(ReadConfig());
  absl::StatusOr<Vocabulary> vocab = ReadGgufVocabulary(file_);
  if (!vocab.ok() && absl::IsUnimplemented(vocab.status()) && ids_only_vocabulary_) {
    vocab = IdsOnlyVocabulary(file_);
  }
  if (!vocab.ok()) return vocab.status();
  vocab_ = *std::move(vocab);
  ModelConfig& c = config_;
  c.vocab_size = vocab_.size();

  const GgufTensorInfo* embd = file_.FindTensor("token_embd.weight");
  if (embd != nullptr && embd->ne.size() == 2 && embd->ne[1] != c.vocab_size) {
    return Error(absl::StrCat("tensor 'token_embd.weight' has ", embd->ne[1],
                              " rows but the vocabulary (tokenizer.ggml.tokens) has ", c.vocab_size,
                              " tokens"));
  }
  KVSERVE_ASSIGN_OR_RETURN(weights_.token_embedding,
                           Matrix("token_embd.weight", c.vocab_size, c.dim));
  weights_.layers.resize(static_cast<size_t>(c.num_layers));
  for (int l = 0; l < c.num_layers; ++l) {
    KVSERVE_RETURN_IF_ERROR(ReadLayer(l, weights_.layers[static_cast<size_t>(l)]));
  }
  KVSERVE_ASSIGN_OR_RETURN(weights_.final_norm, Vector("output_norm.weight", c.dim));
  KVSERVE_RETURN_IF_ERROR(ReadRopeFactors());
  if (file_.FindTensor("output.weight") != nullptr) {
    KVSERVE_ASSIGN_OR_RETURN(weights_.output, Matrix("output.weight", c.vocab_size, c.dim));
    c.tied_classifier = false;
  } else {
    weights_.output = weights_.token_embedding;
    c.tied_classifier = true;
  }
  return RejectUnusedTensors();
}

WeightView GgufModel::RowRange(const WeightView& m, int64_t row0, int64_t rows) {
  WeightView v = m;
  v.rows = rows;
  v.data = static_cast<const uint8_t*>(m.data) + row0 * kernels::WeightRowBytes(m.dtype, m.cols);
  return v;
}

absl::Status GgufModel::ReadLayer(int l, LayerWeights& w) {
  const ModelConfig& c = config_;
  const int64_t q_dim = static_cast<int64_t>(c.num_heads) * c.head_dim;
  const int64_t kv_dim = c.kv_dim();
  const std::string p = absl::StrCat("blk.", l, ".");
  KVSERVE_ASSIGN_OR_RETURN(w.attn_norm, Vector(p + "attn_norm.weight", c.dim));
  if (arch_->fused_qkv) {
    KVSERVE_ASSIGN_OR_RETURN(const WeightView qkv,
                             Matrix(p + "attn_qkv.weight", q_dim + 2 * kv_dim, c.dim));
    w.wq = RowRange(qkv, 0, q_dim);
    w.wk = RowRange(qkv, q_dim, kv_dim);
    w.wv = RowRange(qkv, q_dim + kv_dim, kv_dim);
  } else {
    KVSERVE_ASSIGN_OR_RETURN(w.wq, Matrix(p + "attn_q.weight", q_dim, c.dim));
    KVSERVE_ASSIGN_OR_RETURN(w.wk, Matrix(p + "attn_k.weight", kv_dim, c.dim));
    KVSERVE_ASSIGN_OR_RETURN(w.wv, Matrix(p + "attn_v.weight", kv_dim, c.dim));
  }
  // Q/K/V biases: required by qwen2, taken when present elsewhere (as llama.cpp does).
  for (auto [name, n, bias] :
       {std::tuple{"attn_q.bias", q_dim, &w.bq}, std::tuple{"attn_k.bias", kv_dim, &w.bk},
        std::tuple{"attn_v.bias", kv_dim, &w.bv}}) {
    const std::string full = p + name;
    if (arch_->qkv_bias) {
      KVSERVE_ASSIGN_OR_RETURN(*bias, Vector(full, n));
    } else {
      KVSERVE_ASSIGN_OR_RETURN(*bias, OptionalVector(full, n));
    }
  }
  if (arch_->qk_norm) {
    KVSERVE_ASSIGN_OR_RETURN(w.q_norm, Vector(p + "attn_q_norm.weight", c.head_dim));
    KVSERVE_ASSIGN_OR_RETURN(w.k_norm, Vector(p + "attn_k_norm.weight", c.head_dim));
  }
  KVSERVE_ASSIGN_OR_RETURN(w.wo, Matrix(p + "attn_output.weight", c.dim, q_dim));
  KVSERVE_ASSIGN_OR_RETURN(w.ffn_norm, Vector(p + "ffn_norm.weight", c.dim));
  if (arch_->fused_gate_up) {
    KVSERVE_ASSIGN_OR_RETURN(const WeightView gate_up,
                             Matrix(p + "ffn_up.weight", 2 * int64_t{c.hidden_dim}, c.dim));
    w.w_gate = RowRange(gate_up, 0, c.hidden_dim);
    w.w_up = RowRange(gate_up, c.hidden_dim, c.hidden_dim);
  } else {
    KVSERVE_ASSIGN_OR_RETURN(w.w_gate, Matrix(p + "ffn_gate.weight", c.hidden_dim, c.dim));
    KVSERVE_ASSIGN_OR_RETURN(w.w_up, Matrix(p + "ffn_up.weight", c.hidden_dim, c.dim));
  }
  KVSERVE_ASSIGN_OR_RETURN(w.w_down, Matrix(p + "ffn_down.weight", c.dim, c.hidden_dim));
  return absl::OkStatus();
}

absl::Status GgufModel::ReadRopeFactors() {
  const ModelConfig& c = config_;
  const int64_t pairs = c.head_dim / 2;
  const bool has_long = file_.FindTensor("rope_factors_long.weight") != nullptr;
  const bool has_short = file_.FindTensor("rope_factors_short.weight") != nullptr;
  std::string name;
  if (file_.FindTensor("rope_freqs.weight") != nullptr) {
    name = "rope_freqs.weight";
  } else if (has_long || has_short) {
    // Phi-3 LongRoPE: the long factors when the context exceeds the original one, as llama.cpp
    // chooses them for a context of the model's full length.
    if (!has_long || !has_short) {
      return Error("rope_factors_long.weight and rope_factors_short.weight come together");
    }
    const bool use_long = original_context_ > 0 && c.context_length > original_context_;
    name = use_long ? "rope_factors_long.weight" : "rope_factors_short.weight";
    // The other set is read (and checked) too: it is part of the model, unused at this context.
    KVSERVE_RETURN_IF_ERROR(
        Vector(use_long ? "rope_factors_short.weight" : "rope_factors_long.weight", pairs)
            .status());
  } else {
    return absl::OkStatus();
  }
  KVSERVE_ASSIGN_OR_RETURN(weights_.rope_freq_factors, Vector(name, pairs));
  for (int i = 0; i < pairs; ++i) {
    const float f = weights_.rope_freq_factors[i];
    if (!(f > 0.0f && std::isfinite(f))) {
      return Error(
          absl::StrCat("tensor '", name, "' element ", i, " = ", f, " must be finite and > 0"));
    }
  }
  return absl::OkStatus();
}

absl::Status GgufModel::RejectUnusedTensors() const {
  for (const GgufTensorInfo& t : file_.tensors()) {
    if (!used_tensors_.contains(t.name)) {
      return absl::UnimplementedError(absl::StrCat(
          file_.name(), ": tensor '", t.name, "' is not part of architecture '", Sv(arch_->name),
          "' as implemented here (it would change the model's math)"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<bool> OptionalBool(const GgufFile& file, std::string_view key, bool default_value) {
  if (!file.HasKey(key)) return default_value;
  return file.GetBool(key);
}

absl::StatusOr<int32_t> OptionalTokenId(const GgufFile& file, std::string_view key,
                                        int32_t default_value, int32_t vocab_size) {
  if (!file.HasKey(key)) return default_value;
  KVSERVE_ASSIGN_OR_RETURN(const int64_t id, file.GetInteger(key));
  if (id < 0 || id >= vocab_size) {
    return absl::InvalidArgumentError(absl::StrCat(file.name(), ": metadata key '", Sv(key),
                                                   "' = ", id, " is outside the vocabulary [0, ",
                                                   vocab_size, ")"));
  }
  return static_cast<int32_t>(id);
}

// The tokenizer kind named by tokenizer.ggml.model: 'llama' (SentencePiece BPE) or 'gpt2'
// (byte-level BPE).
absl::StatusOr<TokenizerKind> ReadTokenizerKind(const GgufFile& file) {
  auto model = file.GetString("tokenizer.ggml.model");
  if (!model.ok()) return Required(model.status());
  if (*model == "llama") return TokenizerKind::kSentencePiece;
  if (*model == "gpt2") return TokenizerKind::kByteLevelBpe;
  return absl::UnimplementedError(absl::StrCat(
      file.name(), ": tokenizer model '", *model,
      "' (tokenizer.ggml.model) is not supported (only 'llama', SentencePiece BPE, and 'gpt2', "
      "byte-level BPE)"));
}

// The token strings, scores and types, each pointing into `file`. Byte-level vocabularies carry
// no scores, and may leave out the token types (all normal): those spans may then be empty;
// otherwise each has one entry per token.
struct TokenArrays {
  absl::Span<const std::string> tokens;
  absl::Span<const float> scores;
  absl::Span<const int32_t> types;
};

absl::StatusOr<TokenArrays> ReadTokenArrays(const GgufFile& file, bool byte_level) {
  TokenArrays a;
  auto tokens = file.GetArrayOf<std::string>("tokenizer.ggml.tokens");
  if (!tokens.ok()) return Required(tokens.status());
  if (tokens->empty() || tokens->size() > static_cast<size_t>(kMaxVocab)) {
    return absl::InvalidArgumentError(absl::StrCat(file.name(), ": tokenizer.ggml.tokens has ",
                                                   tokens->size(), " tokens (1 to ", kMaxVocab,
                                                   " allowed)"));
  }
  a.tokens = *tokens;
  if (!byte_level || file.HasKey("tokenizer.ggml.scores")) {
    auto s = file.GetArrayOf<float>("tokenizer.ggml.scores");
    if (!s.ok()) return Required(s.status());
    a.scores = *s;
  }
  if (!byte_level || file.HasKey("tokenizer.ggml.token_type")) {
    auto t = file.GetArrayOf<int32_t>("tokenizer.ggml.token_type");
    if (!t.ok()) return Required(t.status());
    a.types = *t;
  }
  if ((!byte_level && a.scores.size() != a.tokens.size()) ||
      (!a.scores.empty() && a.scores.size() != a.tokens.size()) ||
      (!byte_level && a.types.size() != a.tokens.size()) ||
      (!a.types.empty() && a.types.size() != a.tokens.size())) {
    return absl::InvalidArgumentError(
        absl::StrCat(file.name(), ": tokenizer.ggml.tokens has ", a.tokens.size(),
                     " entries but tokenizer.ggml.scores has ", a.scores.size(),
                     " and tokenizer.ggml.token_type has ", a.types.size()));
  }
  return a;
}

// Fills vocab.pieces (SentencePiece's U+2581 turned into spaces unless byte-level), vocab.types
// (each checked to be a token type) and vocab.scores (zeros when the file has none).
absl::Status FillPieces(const GgufFile& file, const TokenArrays& a, bool byte_level,
                        Vocabulary& vocab) {
  const int32_t n = static_cast<int32_t>(a.tokens.size());
  vocab.pieces.reserve(a.tokens.size());
  vocab.types.reserve(a.tokens.size());
  for (int32_t i = 0; i < n; ++i) {
    if (byte_level) {
      vocab.pieces.push_back(a.tokens[i]);
    } else {
      vocab.pieces.push_back(absl::StrReplaceAll(a.tokens[i], {{"\xE2\x96\x81", " "}}));
    }
    const int32_t type = a.types.empty() ? static_cast<int32_t>(TokenType::kNormal) : a.types[i];
    if (type < static_cast<int32_t>(TokenType::kNormal) ||
        type > static_cast<int32_t>(TokenType::kByte)) {
      return absl::InvalidArgumentError(absl::StrCat(file.name(), ": tokenizer.ggml.token_type[", i,
                                                     "] = ", type, " is not a token type"));
    }
    vocab.types.push_back(static_cast<TokenType>(type));
  }
  if (a.scores.empty()) {
    vocab.scores.assign(a.tokens.size(), 0.0f);
  } else {
    vocab.scores.assign(a.scores.begin(), a.scores.end());
  }
  return absl::OkStatus();
}

// Byte-level BPE only: vocab.merges (required) and vocab.pre (default "default"; must be a
// known pre-tokenizer).
absl::Status ReadByteLevelMerges(const GgufFile& file, Vocabulary& vocab) {
  auto merges = file.GetArrayOf<std::string>("tokenizer.ggml.merges");
  if (!merges.ok()) return Required(merges.status());
  vocab.merges.assign(merges->begin(), merges->end());
  vocab.pre = "default";
  if (file.HasKey("tokenizer.ggml.pre")) {
    KVSERVE_ASSIGN_OR_RETURN(vocab.pre, file.GetString("tokenizer.ggml.pre"));
  }
  if (!PreTokenizer::IsKnown(vocab.pre)) {
    return absl::InvalidArgumentError(absl::StrCat(
        file.name(), ": pre-tokenizer '", vocab.pre,
        "' (tokenizer.ggml.pre) is not supported; known: ", PreTokenizer::KnownNames()));
  }
  return absl::OkStatus();
}

// Special token ids and add-BOS/EOS/space flags, from their metadata keys or the defaults of
// the tokenizer kind; vocab.pieces must be filled.
absl::Status ReadSpecialTokens(const GgufFile& file, bool byte_level, Vocabulary& vocab) {
  const int32_t n = static_cast<int32_t>(vocab.pieces.size());
  // Byte-level files without BOS/EOS ids: the "<|endoftext|>" token when there is one.
  int32_t default_special = byte_level ? 0 : 1;
  if (byte_level) {
    for (int32_t i = 0; i < n; ++i) {
      if (vocab.pieces[static_cast<size_t>(i)] == "<|endoftext|>") {
        default_special = i;
        break;
      }
    }
  }
  KVSERVE_ASSIGN_OR_RETURN(
      vocab.bos_id, OptionalTokenId(file, "tokenizer.ggml.bos_token_id", default_special, n));
  KVSERVE_ASSIGN_OR_RETURN(vocab.eos_id, OptionalTokenId(file, "tokenizer.ggml.eos_token_id",
                                                         byte_level ? default_special : 2, n));
  KVSERVE_ASSIGN_OR_RETURN(vocab.unk_id, OptionalTokenId(file, "tokenizer.ggml.unknown_token_id",
                                                         byte_level ? -1 : 0, n));
  KVSERVE_ASSIGN_OR_RETURN(vocab.eot_id,
                           OptionalTokenId(file, "tokenizer.ggml.eot_token_id", -1, n));
  KVSERVE_ASSIGN_OR_RETURN(vocab.eom_id,
                           OptionalTokenId(file, "tokenizer.ggml.eom_token_id", -1, n));
  KVSERVE_ASSIGN_OR_RETURN(vocab.add_bos,
                           OptionalBool(file, "tokenizer.ggml.add_bos_token", !byte_level));
  KVSERVE_ASSIGN_OR_RETURN(vocab.add_eos,
                           OptionalBool(file, "tokenizer.ggml.add_eos_token", false));
  KVSERVE_ASSIGN_OR_RETURN(vocab.add_space_prefix,
                           OptionalBool(file, "tokenizer.ggml.add_space_prefix", !byte_level));
  if (byte_level) vocab.add_space_prefix = false;
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<Vocabulary> ReadGgufVocabulary(const GgufFile& file) {
  Vocabulary vocab;
  KVSERVE_ASSIGN_OR_RETURN(vocab.kind, ReadTokenizerKind(file));
  const bool byte_level = vocab.kind == TokenizerKind::kByteLevelBpe;
  KVSERVE_ASSIGN_OR_RETURN(const TokenArrays arrays, ReadTokenArrays(file, byte_level));
  KVSERVE_RETURN_IF_ERROR(FillPieces(file, arrays, byte_level, vocab));
  if (byte_level) {
    KVSERVE_RETURN_IF_ERROR(ReadByteLevelMerges(file, vocab));
  }
  KVSERVE_RETURN_IF_ERROR(ReadSpecialTokens(file, byte_level, vocab));
  return vocab;
}

absl::StatusOr<Vocabulary> ReadGgufVocabularyFile(const std::string& path) {
  KVSERVE_ASSIGN_OR_RETURN(GgufFile file, GgufFile::Open(path));
  return ReadGgufVocabulary(file);
}

absl::StatusOr<std::unique_ptr<LoadedModel>> LoadGgufModel(GgufFile file,
                                                           bool ids_only_vocabulary) {
  auto model = std::make_unique<GgufModel>(std::move(file), ids_only_vocabulary);
  KVSERVE_RETURN_IF_ERROR(model->Build());
  return std::unique_ptr<LoadedModel>(std::move(model));
}

}  // namespace kvserve::engine
