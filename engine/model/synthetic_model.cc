#include "engine/model/synthetic_model.h"

#include <algorithm>
#include <cmath>
#include <optional>
#include <unordered_set>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "engine/common/status_macros.h"
#include "engine/model/gguf_writer.h"
#include "engine/model/model_limits.h"
#include "kernels/weight_formats.h"

namespace kvserve::engine {
namespace {

// SplitMix64: a small, fast generator with the same output everywhere.
class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  uint64_t Next() {
    uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  // Uniform in [0, 1).
  double Uniform() { return static_cast<double>(Next() >> 11) * 0x1.0p-53; }
  // Uniform in [0, n).
  uint64_t Below(uint64_t n) { return Next() % n; }

 private:
  uint64_t state_;
};

uint64_t MixName(uint64_t seed, std::string_view name) {
  uint64_t h = 0xCBF29CE484222325ull;  // FNV-1a
  for (unsigned char c : name) h = (h ^ c) * 0x100000001B3ull;
  return h ^ (seed * 0x9E3779B97F4A7C15ull);
}

constexpr char kSpace[] = "\xE2\x96\x81";  // U+2581, SentencePiece's space
// Single-character pieces after "▁": the characters of English text.
constexpr std::string_view kAlphabet =
    "etaoinshrdlucmfwypvbgkjqxzETAOINSHRDLUCMFWYPVBGKJQXZ0123456789.,!?'\"-:;()";
// Relative frequencies of the lowercase letters "etaoinshrdlucmfwypvbgkjqxz" in English text (per
// mille), used to pick the next character of a merged piece.
constexpr int kLetterWeights[26] = {127, 91, 82, 75, 70, 67, 63, 61, 60, 43, 40, 28, 28,
                                    24,  22, 24, 20, 20, 10, 15, 20, 8,  2,  1,  2,  1};

struct Shape {
  const char* name;
  SyntheticModelSpec spec;
};

SyntheticModelSpec MakeSpec(int dim, int hidden, int layers, int heads, int kv_heads, int vocab,
                            int context) {
  SyntheticModelSpec s;
  s.dim = dim;
  s.hidden_dim = hidden;
  s.num_layers = layers;
  s.num_heads = heads;
  s.num_kv_heads = kv_heads;
  s.vocab_size = vocab;
  s.context_length = context;
  return s;
}

const std::vector<Shape>& Shapes() {
  static const auto* shapes = new std::vector<Shape>{
      {"tiny", MakeSpec(64, 172, 5, 8, 4, 512, 512)},
      {"110m", MakeSpec(768, 2048, 12, 12, 12, 32000, 1024)},
      {"1b-gqa", MakeSpec(2048, 8192, 16, 32, 8, 32000, 2048)},
  };
  return *shapes;
}

// Fills `n` values uniform in [-bound, bound].
std::vector<float> RandomValues(uint64_t seed, std::string_view name, int64_t n, float bound) {
  Rng rng(MixName(seed, name));
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = static_cast<float>((rng.Uniform() * 2.0 - 1.0) * bound);
  return v;
}

}  // namespace

std::vector<std::string> SyntheticShapeNames() {
  std::vector<std::string> names;
  for (const Shape& s : Shapes()) names.push_back(s.name);
  return names;
}

absl::StatusOr<SyntheticModelSpec> NamedSyntheticShape(std::string_view shape) {
  for (const Shape& s : Shapes()) {
    if (shape == s.name) {
      SyntheticModelSpec spec = s.spec;
      spec.name = absl::StrCat("synthetic-", s.name);
      return spec;
    }
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown model shape '", std::string(shape),
                   "' (known: ", absl::StrJoin(SyntheticShapeNames(), ", "), ", custom)"));
}

int32_t MinSyntheticVocabSize() { return 3 + 256 + 1 + static_cast<int32_t>(kAlphabet.size()); }

absl::Status ValidateSyntheticSpec(const SyntheticModelSpec& s) {
  auto range = [](const char* field, int64_t v, int64_t lo, int64_t hi) -> absl::Status {
    if (v < lo || v > hi) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, " = ", v, " is out of range [", lo, ", ", hi, "]"));
    }
    return absl::OkStatus();
  };
  KVSERVE_RETURN_IF_ERROR(range("dim", s.dim, 2, kMaxModelDim));
  KVSERVE_RETURN_IF_ERROR(range("hidden_dim", s.hidden_dim, 1, kMaxHiddenDim));
  KVSERVE_RETURN_IF_ERROR(range("layers", s.num_layers, 1, kMaxLayers));
  KVSERVE_RETURN_IF_ERROR(range("heads", s.num_heads, 1, kMaxHeads));
  KVSERVE_RETURN_IF_ERROR(range("kv_heads", s.num_kv_heads, 1, s.num_heads));
  KVSERVE_RETURN_IF_ERROR(range("vocab", s.vocab_size, MinSyntheticVocabSize(), kMaxVocab));
  KVSERVE_RETURN_IF_ERROR(range("context", s.context_length, 1, kMaxContext));
  KVSERVE_RETURN_IF_ERROR(range("head_dim", s.explicit_head_dim, 0, kMaxModelDim));
  const std::vector<std::string> archs = SyntheticArchNames();
  if (std::find(archs.begin(), archs.end(), s.arch) == archs.end()) {
    return absl::InvalidArgumentError(
        absl::StrCat("architecture '", s.arch, "' is not one of: ", absl::StrJoin(archs, ", ")));
  }
  if (s.explicit_head_dim == 0 && s.dim % s.num_heads != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("dim = ", s.dim, " is not a multiple of heads = ", s.num_heads));
  }
  if (s.head_dim() % 2 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("head_dim = ", s.head_dim(), " is odd (rotary embeddings need pairs)"));
  }
  if (s.num_heads % s.num_kv_heads != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("heads = ", s.num_heads, " is not a multiple of kv_heads = ", s.num_kv_heads));
  }
  const std::optional<kernels::DType> t = GgmlKernelType(s.weight_type);
  if (!t.has_value()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "weight type ", GgmlTypeLabel(static_cast<uint32_t>(s.weight_type)), " is not supported"));
  }
  if (s.k_quant_mix && s.weight_type != GgmlType::kQ4_K && s.weight_type != GgmlType::kQ5_K) {
    return absl::InvalidArgumentError("the K-quant mix needs weight type Q4_K or Q5_K");
  }
  // Every matrix's columns (dim, q_dim, hidden_dim) split into whole blocks; Q6_K too for a mix.
  const int64_t block = std::max<int64_t>(kernels::DTypeBlockSize(*t), s.k_quant_mix ? 256 : 1);
  const int64_t q_dim = static_cast<int64_t>(s.num_heads) * s.head_dim();
  for (auto [field, cols] : {std::pair{"dim", int64_t{s.dim}}, std::pair{"heads * head_dim", q_dim},
                             std::pair{"hidden_dim", int64_t{s.hidden_dim}}}) {
    if (cols % block != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          field, " = ", cols, " is not a multiple of ", block, ", the block size of ",
          GgmlTypeLabel(static_cast<uint32_t>(s.weight_type)), s.k_quant_mix ? " (and Q6_K)" : ""));
    }
  }
  return absl::OkStatus();
}

std::vector<std::string> SyntheticArchNames() { return {"llama", "qwen2", "qwen3", "phi3"}; }

absl::Status ParseSyntheticWeightType(std::string_view name, SyntheticModelSpec& spec) {
  static constexpr std::pair<std::string_view, GgmlType> kTypes[] = {
      {"f32", GgmlType::kF32},   {"f16", GgmlType::kF16},   {"bf16", GgmlType::kBF16},
      {"q8_0", GgmlType::kQ8_0}, {"q4_0", GgmlType::kQ4_0}, {"q4_1", GgmlType::kQ4_1},
      {"q5_0", GgmlType::kQ5_0}, {"q5_1", GgmlType::kQ5_1}, {"q2_k", GgmlType::kQ2_K},
      {"q3_k", GgmlType::kQ3_K}, {"q4_k", GgmlType::kQ4_K}, {"q5_k", GgmlType::kQ5_K},
      {"q6_k", GgmlType::kQ6_K}};
  const std::string lower = absl::AsciiStrToLower(absl::string_view(name.data(), name.size()));
  for (auto [n, t] : kTypes) {
    if (lower == n) {
      spec.weight_type = t;
      spec.k_quant_mix = false;
      return absl::OkStatus();
    }
  }
  if (lower == "q4_k_m" || lower == "q5_k_m") {
    spec.weight_type = lower == "q4_k_m" ? GgmlType::kQ4_K : GgmlType::kQ5_K;
    spec.k_quant_mix = true;
    return absl::OkStatus();
  }
  std::string known;
  for (auto [n, t] : kTypes) absl::StrAppend(&known, std::string(n), ", ");
  return absl::InvalidArgumentError(
      absl::StrCat("weight type '", lower, "' is not one of ", known, "q4_k_m, q5_k_m"));
}

absl::StatusOr<Vocabulary> MakeSyntheticVocabulary(int32_t size, uint64_t seed) {
  if (size < MinSyntheticVocabSize() || size > kMaxVocab) {
    return absl::InvalidArgumentError(absl::StrCat("vocabulary size ", size, " is out of range [",
                                                   MinSyntheticVocabSize(), ", ", kMaxVocab, "]"));
  }
  Vocabulary v;
  v.pieces.reserve(size);
  auto add = [&v](std::string piece, float score, TokenType type) {
    v.pieces.push_back(std::move(piece));
    v.scores.push_back(score);
    v.types.push_back(type);
  };
  add("<unk>", 0.0f, TokenType::kUnknown);
  add("<s>", 0.0f, TokenType::kControl);
  add("</s>", 0.0f, TokenType::kControl);
  for (int b = 0; b < 256; ++b) add(absl::StrFormat("<0x%02X>", b), 0.0f, TokenType::kByte);
  v.bos_id = 1;
  v.eos_id = 2;
  v.unk_id = 0;

  // Normal pieces: scores -1, -2, ... so that earlier (shorter, more frequent) pieces merge first.
  float score = 0.0f;
  std::unordered_set<std::string> seen;
  std::vector<int32_t> mergeable;  // ids of normal pieces a merge may start with
  auto add_normal = [&](std::string piece) {
    seen.insert(piece);
    mergeable.push_back(v.size());
    add(std::move(piece), score -= 1.0f, TokenType::kNormal);
  };
  add_normal(" ");
  for (char c : kAlphabet) add_normal(std::string(1, c));

  Rng rng(MixName(seed, "tokenizer.ggml.tokens"));
  int letter_total = 0;
  for (int w : kLetterWeights) letter_total += w;
  auto pick_letter = [&]() -> std::string {
    int r = static_cast<int>(rng.Below(letter_total));
    for (int i = 0; i < 26; ++i) {
      if ((r -= kLetterWeights[i]) < 0) return std::string(1, kAlphabet[i]);
    }
    return "e";
  };
  size_t max_len = 8;
  int failures = 0;
  while (v.size() < size) {
    // A piece to extend: a word start (" x...") half of the time, so that words begin with space.
    const std::string& left = v.pieces[mergeable[rng.Below(mergeable.size())]];
    std::string right;
    if (rng.Uniform() < 0.75) {
      right = pick_letter();
    } else {
      right = v.pieces[mergeable[rng.Below(mergeable.size())]];
      if (right[0] == ' ') right.clear();  // a space only starts a piece
    }
    std::string piece = left + right;
    if (right.empty() || piece.size() > max_len || seen.count(piece) > 0) {
      if (++failures > 1000) {  // small alphabets of long vocabularies: allow longer pieces
        ++max_len;
        failures = 0;
      }
      continue;
    }
    failures = 0;
    add_normal(std::move(piece));
  }
  v.add_bos = true;
  v.add_space_prefix = true;
  return v;
}

int64_t SyntheticParameterCount(const SyntheticModelSpec& s) {
  const int64_t dim = s.dim, hidden = s.hidden_dim;
  const int64_t kv_dim = static_cast<int64_t>(s.head_dim()) * s.num_kv_heads;
  const int64_t q_dim = static_cast<int64_t>(s.head_dim()) * s.num_heads;
  int64_t per_layer = 2 * dim + q_dim * dim /*q*/ + 2 * kv_dim * dim /*k, v*/ + dim * q_dim /*o*/ +
                      3 * hidden * dim;
  if (s.arch == "qwen2") per_layer += q_dim + 2 * kv_dim;  // biases
  if (s.arch == "qwen3") per_layer += 2 * s.head_dim();    // q/k norms
  const int64_t embeddings = static_cast<int64_t>(s.vocab_size) * dim;
  return (s.tie_embeddings ? 1 : 2) * embeddings + s.num_layers * per_layer + dim;
}

namespace {

// llama.cpp's ftype number of a file of this spec (general.file_type; informational).
uint32_t FileType(const SyntheticModelSpec& s) {
  switch (s.weight_type) {
    case GgmlType::kF32:
      return 0;
    case GgmlType::kF16:
      return 1;
    case GgmlType::kQ4_0:
      return 2;
    case GgmlType::kQ4_1:
      return 3;
    case GgmlType::kQ8_0:
      return 7;
    case GgmlType::kQ5_0:
      return 8;
    case GgmlType::kQ5_1:
      return 9;
    case GgmlType::kQ2_K:
      return 10;
    case GgmlType::kQ3_K:
      return 12;
    case GgmlType::kQ4_K:
      return s.k_quant_mix ? 15 : 14;
    case GgmlType::kQ5_K:
      return s.k_quant_mix ? 17 : 16;
    case GgmlType::kQ6_K:
      return 18;
    case GgmlType::kBF16:
      return 32;
    default:
      return 0;
  }
}

// llama.cpp's use_more_bits: the layers whose attn_v / ffn_down a K-quant mix keeps in Q6_K.
bool UseMoreBits(int layer, int layers) {
  return layer < layers / 8 || layer >= 7 * layers / 8 || (layer - layers / 8) % 3 == 2;
}

}  // namespace

namespace {

// The values of a matrix of `rows` outputs over `cols` inputs, uniform in +-sqrt(3 / cols).
std::vector<float> MatrixValues(const SyntheticModelSpec& s, const std::string& name, int64_t rows,
                                int64_t cols) {
  const float bound = static_cast<float>(std::sqrt(3.0 / static_cast<double>(cols)));
  return RandomValues(s.seed, name, rows * cols, bound);
}

// An F32 vector of `n` values uniform in center +- spread.
absl::Status AddVector(const SyntheticModelSpec& s, GgufWriter& w, const std::string& name,
                       int64_t n, float center, float spread) {
  std::vector<float> v = RandomValues(s.seed, name, n, spread);
  for (float& x : v) x += center;
  return w.AddTensor(name, {n}, GgmlType::kF32, v);
}

absl::Status AddNorm(const SyntheticModelSpec& s, GgufWriter& w, const std::string& name,
                     int64_t n) {
  return AddVector(s, w, name, n, 1.0f, s.random_norms ? 0.25f : 0.0f);
}

// general.*, ARCH.* and tokenizer.ggml.* keys.
void SetSyntheticMetadata(const SyntheticModelSpec& s, const Vocabulary& vocab, GgufWriter& w) {
  const std::string& a = s.arch;
  auto key = [&a](const char* suffix) { return absl::StrCat(a, ".", suffix); };
  w.SetString("general.architecture", a);
  w.SetString("general.name", s.name);
  w.SetU32("general.file_type", FileType(s));
  w.SetU32(key("context_length"), static_cast<uint32_t>(s.context_length));
  w.SetU32(key("embedding_length"), static_cast<uint32_t>(s.dim));
  w.SetU32(key("block_count"), static_cast<uint32_t>(s.num_layers));
  w.SetU32(key("feed_forward_length"), static_cast<uint32_t>(s.hidden_dim));
  w.SetU32(key("rope.dimension_count"), static_cast<uint32_t>(s.head_dim()));
  w.SetU32(key("attention.head_count"), static_cast<uint32_t>(s.num_heads));
  w.SetU32(key("attention.head_count_kv"), static_cast<uint32_t>(s.num_kv_heads));
  if (s.explicit_head_dim > 0) {
    w.SetU32(key("attention.key_length"), static_cast<uint32_t>(s.explicit_head_dim));
    w.SetU32(key("attention.value_length"), static_cast<uint32_t>(s.explicit_head_dim));
  }
  w.SetF32(key("attention.layer_norm_rms_epsilon"), s.rms_norm_eps);
  w.SetF32(key("rope.freq_base"), s.rope_freq_base);
  w.SetU32("general.alignment", 32);

  std::vector<std::string> tokens;
  tokens.reserve(vocab.pieces.size());
  for (const std::string& p : vocab.pieces)
    tokens.push_back(absl::StrReplaceAll(p, {{" ", kSpace}}));
  std::vector<int32_t> types;
  for (TokenType t : vocab.types) types.push_back(static_cast<int32_t>(t));
  w.SetString("tokenizer.ggml.model", "llama");
  w.SetArray("tokenizer.ggml.tokens", GgufArray(std::move(tokens)));
  w.SetArray("tokenizer.ggml.scores", GgufArray(vocab.scores));
  w.SetArray("tokenizer.ggml.token_type", GgufArray(std::move(types)));
  w.SetU32("tokenizer.ggml.bos_token_id", static_cast<uint32_t>(vocab.bos_id));
  w.SetU32("tokenizer.ggml.eos_token_id", static_cast<uint32_t>(vocab.eos_id));
  w.SetU32("tokenizer.ggml.unknown_token_id", static_cast<uint32_t>(vocab.unk_id));
  w.SetBool("tokenizer.ggml.add_bos_token", true);
  w.SetBool("tokenizer.ggml.add_space_prefix", true);
}

// The tensors of layer l.
absl::Status AddSyntheticLayer(const SyntheticModelSpec& s, int l, GgufWriter& w) {
  const std::string& a = s.arch;
  const int64_t dim = s.dim, hidden = s.hidden_dim;
  const int64_t q_dim = static_cast<int64_t>(s.head_dim()) * s.num_heads;
  const int64_t kv_dim = static_cast<int64_t>(s.head_dim()) * s.num_kv_heads;
  // A matrix stored as `type` (ggml order {cols, rows}).
  auto add_matrix = [&w](const std::string& name, int64_t rows, int64_t cols, GgmlType type,
                         const std::vector<float>& v) {
    return w.AddTensor(name, {cols, rows}, type, v);
  };
  const GgmlType more_bits = s.k_quant_mix ? GgmlType::kQ6_K : s.weight_type;
  const std::string p = absl::StrCat("blk.", l, ".");
  const GgmlType v_type = UseMoreBits(l, s.num_layers) ? more_bits : s.weight_type;
  KVSERVE_RETURN_IF_ERROR(AddNorm(s, w, p + "attn_norm.weight", dim));
  std::vector<float> wq = MatrixValues(s, p + "attn_q.weight", q_dim, dim);
  std::vector<float> wk = MatrixValues(s, p + "attn_k.weight", kv_dim, dim);
  std::vector<float> wv = MatrixValues(s, p + "attn_v.weight", kv_dim, dim);
  if (a == "phi3") {  // one matrix: q rows, k rows, v rows
    std::vector<float> qkv = std::move(wq);
    qkv.insert(qkv.end(), wk.begin(), wk.end());
    qkv.insert(qkv.end(), wv.begin(), wv.end());
    KVSERVE_RETURN_IF_ERROR(
        add_matrix(p + "attn_qkv.weight", q_dim + 2 * kv_dim, dim, v_type, qkv));
  } else {
    KVSERVE_RETURN_IF_ERROR(add_matrix(p + "attn_q.weight", q_dim, dim, s.weight_type, wq));
    KVSERVE_RETURN_IF_ERROR(add_matrix(p + "attn_k.weight", kv_dim, dim, s.weight_type, wk));
    KVSERVE_RETURN_IF_ERROR(add_matrix(p + "attn_v.weight", kv_dim, dim, v_type, wv));
  }
  if (a == "qwen2") {  // biases of the size of the projections' outputs
    KVSERVE_RETURN_IF_ERROR(AddVector(s, w, p + "attn_q.bias", q_dim, 0.0f, 0.5f));
    KVSERVE_RETURN_IF_ERROR(AddVector(s, w, p + "attn_k.bias", kv_dim, 0.0f, 0.5f));
    KVSERVE_RETURN_IF_ERROR(AddVector(s, w, p + "attn_v.bias", kv_dim, 0.0f, 0.5f));
  }
  if (a == "qwen3") {
    KVSERVE_RETURN_IF_ERROR(AddVector(s, w, p + "attn_q_norm.weight", s.head_dim(), 1.0f, 0.25f));
    KVSERVE_RETURN_IF_ERROR(AddVector(s, w, p + "attn_k_norm.weight", s.head_dim(), 1.0f, 0.25f));
  }
  KVSERVE_RETURN_IF_ERROR(add_matrix(p + "attn_output.weight", dim, q_dim, s.weight_type,
                                     MatrixValues(s, p + "attn_output.weight", dim, q_dim)));
  KVSERVE_RETURN_IF_ERROR(AddNorm(s, w, p + "ffn_norm.weight", dim));
  std::vector<float> gate = MatrixValues(s, p + "ffn_gate.weight", hidden, dim);
  std::vector<float> up = MatrixValues(s, p + "ffn_up.weight", hidden, dim);
  if (a == "phi3") {  // one matrix: gate rows, then up rows
    gate.insert(gate.end(), up.begin(), up.end());
    KVSERVE_RETURN_IF_ERROR(add_matrix(p + "ffn_up.weight", 2 * hidden, dim, s.weight_type, gate));
  } else {
    KVSERVE_RETURN_IF_ERROR(add_matrix(p + "ffn_gate.weight", hidden, dim, s.weight_type, gate));
  }
  KVSERVE_RETURN_IF_ERROR(add_matrix(p + "ffn_down.weight", dim, hidden, v_type,
                                     MatrixValues(s, p + "ffn_down.weight", dim, hidden)));
  if (a != "phi3") {
    KVSERVE_RETURN_IF_ERROR(add_matrix(p + "ffn_up.weight", hidden, dim, s.weight_type, up));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status WriteSyntheticModel(const SyntheticModelSpec& s, const std::string& path) {
  KVSERVE_RETURN_IF_ERROR(ValidateSyntheticSpec(s));
  KVSERVE_ASSIGN_OR_RETURN(Vocabulary vocab, MakeSyntheticVocabulary(s.vocab_size, s.seed));
  GgufWriter w;
  SetSyntheticMetadata(s, vocab, w);
  const int64_t dim = s.dim, vocab_n = s.vocab_size;
  const GgmlType more_bits = s.k_quant_mix ? GgmlType::kQ6_K : s.weight_type;
  {  // Embeddings. Tied ones are also the output matrix: scaled like one (fan-in dim) so that
     // logits stay moderate; the first RMS norm rescales the rows anyway.
    const std::string name = "token_embd.weight";
    const float bound =
        s.tie_embeddings ? std::sqrt(3.0f / static_cast<float>(dim)) : std::sqrt(3.0f);
    KVSERVE_RETURN_IF_ERROR(w.AddTensor(name, {dim, vocab_n},
                                        s.tie_embeddings ? more_bits : s.weight_type,
                                        RandomValues(s.seed, name, vocab_n * dim, bound)));
  }
  for (int l = 0; l < s.num_layers; ++l) KVSERVE_RETURN_IF_ERROR(AddSyntheticLayer(s, l, w));
  KVSERVE_RETURN_IF_ERROR(AddNorm(s, w, "output_norm.weight", dim));
  if (!s.tie_embeddings) {
    KVSERVE_RETURN_IF_ERROR(w.AddTensor("output.weight", {dim, vocab_n}, more_bits,
                                        MatrixValues(s, "output.weight", vocab_n, dim)));
  }
  return w.WriteFile(path);
}

}  // namespace kvserve::engine
