#include "engine/model/synthetic_model.h"

#include <cmath>
#include <unordered_set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "engine/common/status_macros.h"
#include "engine/model/gguf_writer.h"
#include "engine/model/model_limits.h"

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
  if (s.dim % s.num_heads != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("dim = ", s.dim, " is not a multiple of heads = ", s.num_heads));
  }
  if (s.head_dim() % 2 != 0) {
    return absl::InvalidArgumentError(absl::StrCat("head_dim = dim / heads = ", s.head_dim(),
                                                   " is odd (rotary embeddings need pairs)"));
  }
  if (s.num_heads % s.num_kv_heads != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("heads = ", s.num_heads, " is not a multiple of kv_heads = ", s.num_kv_heads));
  }
  if (s.weight_type != GgmlType::kF32 && s.weight_type != GgmlType::kF16) {
    return absl::InvalidArgumentError("weight type must be F32 or F16");
  }
  return absl::OkStatus();
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
  const int64_t per_layer =
      2 * dim + dim * dim /*q*/ + 2 * kv_dim * dim /*k, v*/ + dim * dim /*o*/ + 3 * hidden * dim;
  const int64_t embeddings = static_cast<int64_t>(s.vocab_size) * dim;
  return (s.tie_embeddings ? 1 : 2) * embeddings + s.num_layers * per_layer + dim;
}

absl::Status WriteSyntheticModel(const SyntheticModelSpec& s, const std::string& path) {
  KVSERVE_RETURN_IF_ERROR(ValidateSyntheticSpec(s));
  KVSERVE_ASSIGN_OR_RETURN(Vocabulary vocab, MakeSyntheticVocabulary(s.vocab_size, s.seed));

  GgufWriter w;
  w.SetString("general.architecture", "llama");
  w.SetString("general.name", s.name);
  w.SetU32("general.file_type", s.weight_type == GgmlType::kF16 ? 1 : 0);  // ggml ftype
  w.SetU32("llama.context_length", static_cast<uint32_t>(s.context_length));
  w.SetU32("llama.embedding_length", static_cast<uint32_t>(s.dim));
  w.SetU32("llama.block_count", static_cast<uint32_t>(s.num_layers));
  w.SetU32("llama.feed_forward_length", static_cast<uint32_t>(s.hidden_dim));
  w.SetU32("llama.rope.dimension_count", static_cast<uint32_t>(s.head_dim()));
  w.SetU32("llama.attention.head_count", static_cast<uint32_t>(s.num_heads));
  w.SetU32("llama.attention.head_count_kv", static_cast<uint32_t>(s.num_kv_heads));
  w.SetF32("llama.attention.layer_norm_rms_epsilon", s.rms_norm_eps);
  w.SetF32("llama.rope.freq_base", s.rope_freq_base);
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

  const int64_t dim = s.dim, hidden = s.hidden_dim, vocab_n = s.vocab_size;
  const int64_t q_dim = dim;
  const int64_t kv_dim = static_cast<int64_t>(s.head_dim()) * s.num_kv_heads;
  // A matrix of `rows` outputs over `cols` inputs (ggml order {cols, rows}).
  auto matrix = [&](const std::string& name, int64_t rows, int64_t cols) -> absl::Status {
    const float bound = static_cast<float>(std::sqrt(3.0 / static_cast<double>(cols)));
    return w.AddTensor(name, {cols, rows}, s.weight_type,
                       RandomValues(s.seed, name, rows * cols, bound));
  };
  auto ones = [&](const std::string& name, int64_t n) {
    return w.AddTensor(name, {n}, GgmlType::kF32, std::vector<float>(static_cast<size_t>(n), 1.0f));
  };
  {  // Embeddings. Tied ones are also the output matrix: scaled like one (fan-in dim) so that
     // logits stay moderate; the first RMS norm rescales the rows anyway.
    const std::string name = "token_embd.weight";
    const float bound =
        s.tie_embeddings ? std::sqrt(3.0f / static_cast<float>(dim)) : std::sqrt(3.0f);
    KVSERVE_RETURN_IF_ERROR(w.AddTensor(name, {dim, vocab_n}, s.weight_type,
                                        RandomValues(s.seed, name, vocab_n * dim, bound)));
  }
  for (int l = 0; l < s.num_layers; ++l) {
    const std::string p = absl::StrCat("blk.", l, ".");
    KVSERVE_RETURN_IF_ERROR(ones(p + "attn_norm.weight", dim));
    KVSERVE_RETURN_IF_ERROR(matrix(p + "attn_q.weight", q_dim, dim));
    KVSERVE_RETURN_IF_ERROR(matrix(p + "attn_k.weight", kv_dim, dim));
    KVSERVE_RETURN_IF_ERROR(matrix(p + "attn_v.weight", kv_dim, dim));
    KVSERVE_RETURN_IF_ERROR(matrix(p + "attn_output.weight", dim, q_dim));
    KVSERVE_RETURN_IF_ERROR(ones(p + "ffn_norm.weight", dim));
    KVSERVE_RETURN_IF_ERROR(matrix(p + "ffn_gate.weight", hidden, dim));
    KVSERVE_RETURN_IF_ERROR(matrix(p + "ffn_down.weight", dim, hidden));
    KVSERVE_RETURN_IF_ERROR(matrix(p + "ffn_up.weight", hidden, dim));
  }
  KVSERVE_RETURN_IF_ERROR(ones("output_norm.weight", dim));
  if (!s.tie_embeddings) {
    KVSERVE_RETURN_IF_ERROR(matrix("output.weight", vocab_n, dim));
  }
  return w.WriteFile(path);
}

}  // namespace kvserve::engine
