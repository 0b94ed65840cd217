// Building a LoadedModel from a llama2.c checkpoint (see LoadModel in model.h).
//
// Layout (little-endian): a header of 7 int32 — dim, hidden_dim, n_layers, n_heads, n_kv_heads,
// vocab_size, seq_len; a negative vocab_size means the classifier is stored separately at the end
// — then F32 arrays, row-major, in this order:
//   token_embedding [vocab, dim], rms_att [L, dim], wq [L, dim, dim], wk [L, kv_dim, dim],
//   wv [L, kv_dim, dim], wo [L, dim, dim], rms_ffn [L, dim], w1 [L, hidden, dim],
//   w2 [L, dim, hidden], w3 [L, hidden, dim], rms_final [dim],
//   freq_cis_real [seq_len, head_dim / 2], freq_cis_imag [seq_len, head_dim / 2],
//   wcls [vocab, dim] (only when vocab_size was negative).
// The file's size must equal exactly what the header implies. Every weight is an F32 view into
// the mapped file. The model uses rms_norm_eps 1e-5, rope base 10000, context_length = seq_len.
//
// Vocabulary: `tokenizer_path` when not empty, else tok<vocab>.bin, then tokenizer.bin, in the
// model's directory; its size must equal the header's vocab_size.
//
// Errors name the file: InvalidArgument for a bad header value (which field and why), a size
// mismatch (expected vs actual bytes, and for a truncated file the array it cuts and that array's
// byte offset), or a tokenizer of the wrong size; NotFound when no tokenizer file exists.
#ifndef KVSERVE_ENGINE_MODEL_LLAMA2C_MODEL_H_
#define KVSERVE_ENGINE_MODEL_LLAMA2C_MODEL_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "engine/common/mapped_file.h"
#include "engine/model/model.h"

namespace kvserve::engine {

inline constexpr int64_t kLlama2cHeaderBytes = 7 * 4;

// Takes ownership of the mapping: the model's weight views point into it.
absl::StatusOr<std::unique_ptr<LoadedModel>> LoadLlama2cModel(MappedFile file,
                                                              const std::string& tokenizer_path);

}  // namespace kvserve::engine

#endif  // KVSERVE_ENGINE_MODEL_LLAMA2C_MODEL_H_
