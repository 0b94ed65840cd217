// Synthetic models: GGUF files at real shapes with seeded random weights and a working
// SentencePiece-style vocabulary, so that speed and memory can be measured at the sizes users serve
// and every architecture and weight type can be tested (`kvserve mkmodel`). The output is
// meaningless text; everything else (shapes, tensor names and types, metadata, tokenizer) is what
// a real GGUF of the architecture (llama, qwen2, qwen3, phi3) carries.
//
// Determinism: the same spec and seed give the same bytes on every machine (the generators are
// our own, not the standard library's distributions). Each tensor is seeded from (seed, tensor
// name), so tensors do not depend on the order they are written in.
#ifndef KVSERVE_ENGINE_MODEL_SYNTHETIC_MODEL_H_
#define KVSERVE_ENGINE_MODEL_SYNTHETIC_MODEL_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/model/gguf.h"
#include "engine/tokenizer/vocabulary.h"

namespace kvserve::engine {

struct SyntheticModelSpec {
  std::string name = "synthetic";  // general.name
  // general.architecture: llama, qwen2 (adds q/k/v biases), qwen3 (adds per-head q/k RMSNorm
  // weights, writes attention.key_length) or phi3 (fused attn_qkv and gate+up ffn_up).
  std::string arch = "llama";
  int32_t dim = 0;         // embedding width
  int32_t hidden_dim = 0;  // feed-forward width
  int32_t num_layers = 0;
  int32_t num_heads = 0;
  int32_t num_kv_heads = 0;  // < num_heads: grouped-query attention
  int32_t vocab_size = 0;
  int32_t context_length = 0;  // tokens
  // head_dim when it is not dim / num_heads (written as attention.key_length/value_length, as
  // Qwen3 files do); 0: dim / num_heads.
  int32_t explicit_head_dim = 0;
  // Matrices: F32, F16, BF16 or any block-quantized type of kernels/weight_formats.h (quantized
  // with QuantizeRow); vectors (norms, biases) are always F32.
  GgmlType weight_type = GgmlType::kF32;
  // With weight_type Q4_K or Q5_K: llama.cpp's Q4_K_M / Q5_K_M mix (the output matrix, or the
  // tied embedding, and attn_v / ffn_down of the first and last eighth of the layers and every
  // third one between them in Q6_K).
  bool k_quant_mix = false;
  // Norm weights uniform in [0.75, 1.25] instead of 1 (tests: the norms then matter).
  bool random_norms = false;
  uint64_t seed = 0;
  float rms_norm_eps = 1e-5f;
  float rope_freq_base = 10000.0f;
  // No output.weight: the output projection reuses token_embd.weight (llama2.c and Llama 3.2 1B
  // do this; so do all named shapes).
  bool tie_embeddings = true;

  int32_t head_dim() const {
    if (explicit_head_dim > 0) return explicit_head_dim;
    return num_heads > 0 ? dim / num_heads : 0;
  }
};

// The architectures WriteSyntheticModel writes.
std::vector<std::string> SyntheticArchNames();

// Parses a weight type name as `kvserve mkmodel --type` takes it: f32, f16, bf16, q8_0, q4_0, q4_1,
// q5_0, q5_1, q2_k, q3_k, q4_k, q5_k, q6_k, or the mixes q4_k_m and q5_k_m (case-insensitive).
// InvalidArgument naming the known names.
absl::Status ParseSyntheticWeightType(std::string_view name, SyntheticModelSpec& spec);

// The named shapes: "tiny" (dim 64, 5 layers, 8 heads, 4 KV heads, hidden 172, vocab 512,
// context 512: the size of stories260K), "110m" (dim 768, 12 layers, 12 heads, hidden 2048,
// vocab 32000, context 1024: the llama2.c 110M model), "1b-gqa" (dim 2048, 16 layers, 32 heads,
// 8 KV heads, head_dim 64, hidden 8192, vocab 32000, context 2048). InvalidArgument naming the
// known shapes for any other name.
absl::StatusOr<SyntheticModelSpec> NamedSyntheticShape(std::string_view shape);
std::vector<std::string> SyntheticShapeNames();

// InvalidArgument naming the first field that is out of range or inconsistent (a known arch, dim a
// multiple of num_heads unless head_dim is explicit, an even head_dim, num_heads a multiple of
// num_kv_heads, vocab_size at least MinSyntheticVocabSize(), a weight type the kernels read whose
// block size divides every matrix's column count).
absl::Status ValidateSyntheticSpec(const SyntheticModelSpec& spec);

// Smallest vocabulary MakeSyntheticVocabulary accepts: 3 control tokens, 256 byte tokens and the
// single characters every merge is built from.
int32_t MinSyntheticVocabSize();

// A SentencePiece-style BPE vocabulary of exactly `size` tokens: <unk> (0), <s> (1), </s> (2),
// the 256 byte-fallback tokens <0x00>..<0xFF>, single characters ("▁" for space, letters, digits,
// punctuation), then merged pieces. Every merged piece is the concatenation of two pieces already
// in the vocabulary and scores decrease with id, so the BPE tokenizer reaches every piece by
// merges. Pieces keep ' ' for U+2581 (as Vocabulary does).
absl::StatusOr<Vocabulary> MakeSyntheticVocabulary(int32_t size, uint64_t seed);

// Parameters of the model (embeddings, every layer, final norm and, unless tied, output matrix).
// 110m: 109,529,856.
int64_t SyntheticParameterCount(const SyntheticModelSpec& spec);

// Writes the GGUF v3 file (see GgufWriter::WriteFile for the errors it can return). Weights are
// uniform in +-sqrt(3 / fan_in) (unit-variance activations); norm weights are 1.
absl::Status WriteSyntheticModel(const SyntheticModelSpec& spec, const std::string& path);

}  // namespace kvserve::engine

#endif  // KVSERVE_ENGINE_MODEL_SYNTHETIC_MODEL_H_
