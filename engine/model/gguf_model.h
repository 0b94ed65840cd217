// Building a LoadedModel from a GGUF file (see LoadModel in model.h) of architecture `llama`,
// `qwen2`, `qwen3` or `phi3` (general.architecture; ARCH below).
//
// Hyper-parameters come from ARCH.* keys (embedding_length, feed_forward_length, block_count,
// attention.head_count, attention.head_count_kv (default head_count), context_length,
// attention.key_length / value_length (default embedding_length / head_count),
// attention.layer_norm_rms_epsilon, rope.freq_base (default 10000), rope.dimension_count (must
// equal head_dim when present), rope.scaling.type (none, linear with rope.scaling.factor, llama3),
// rope.scaling.attn_factor, rope.scaling.original_context_length, attention.sliding_window (the
// context is limited to the window)); the name from general.name (default: the file's stem).
//
// Tensors (ggml order ne = [cols, rows] maps to WeightView{rows, cols}): token_embd.weight,
// blk.N.{attn_norm, attn_q, attn_k, attn_v, attn_output, ffn_norm, ffn_gate, ffn_down,
// ffn_up}.weight, output_norm.weight and output.weight (absent: the classifier is tied to the
// embedding); blk.N.attn_{q,k,v}.bias (required by qwen2, optional elsewhere);
// blk.N.attn_{q,k}_norm.weight (qwen3); phi3's fused blk.N.attn_qkv.weight (q, k, v rows) and
// blk.N.ffn_up.weight (gate rows, then up rows), split into row views without copying; rope
// frequency factors rope_freqs.weight, or phi3's rope_factors_short/long.weight (long when
// context_length exceeds rope.scaling.original_context_length). Every shape is checked against
// the configuration, and a tensor the architecture does not use is an error.
//   * Matrices stored as F32 / F16 / BF16 or a block-quantized type are viewed in place in the
//     mapped file (F32/F16/BF16 are copied into an owned buffer of the same type only when the
//     data is misaligned for its type).
//   * Vectors (norms, biases, rope factors) are F32: other types are converted into owned buffers.
//
// Errors name the file and the key or tensor: InvalidArgument for a malformed or inconsistent
// file (a missing key or tensor, a shape mismatch, an unsupported tensor type); Unimplemented
// for another architecture, a metadata key or tensor that changes the math and is not
// implemented, or a tokenizer model other than `llama` and `gpt2`.
#ifndef KVSERVE_ENGINE_MODEL_GGUF_MODEL_H_
#define KVSERVE_ENGINE_MODEL_GGUF_MODEL_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "engine/model/gguf.h"
#include "engine/model/model.h"
#include "engine/tokenizer/vocabulary.h"

namespace kvserve::engine {

// Takes ownership of the parsed file: the model's weight views point into its bytes. When `file`
// was parsed from caller-owned bytes (GgufFile::Parse(span, name)), those must outlive the model.
// With `ids_only_vocabulary`, an unsupported tokenizer model (Unimplemented from
// ReadGgufVocabulary) gives a vocabulary of the file's token strings and ids only (for scoring
// and generating token ids) instead of the error.
absl::StatusOr<std::unique_ptr<LoadedModel>> LoadGgufModel(GgufFile file,
                                                           bool ids_only_vocabulary = false);

// The vocabulary stored in tokenizer.ggml.*; nothing else of the file is read (neither the
// architecture nor any tensor), so vocab-only files of any architecture load.
//   model "llama" (SentencePiece): tokens (U+2581 replaced by ' '), scores, token_type (all of the
//     same length), bos/eos/unknown_token_id (defaults 1/2/0), add_bos_token and add_space_prefix
//     (default true).
//   model "gpt2" (byte-level BPE): tokens (as stored), token_type (default: all normal), merges,
//     pre (default "default"; an unknown value is InvalidArgument naming it), bos/eos_token_id
//     (default: the "<|endoftext|>" token, else 0), unknown_token_id (default: none),
//     add_bos_token (default false).
//   Both: eot_token_id and eom_token_id (default: none), add_eos_token (default false); every id
//   inside the vocabulary. Another model is Unimplemented naming it.
absl::StatusOr<Vocabulary> ReadGgufVocabulary(const GgufFile& file);

// Opens the GGUF file at `path` and reads its vocabulary (ReadGgufVocabulary).
absl::StatusOr<Vocabulary> ReadGgufVocabularyFile(const std::string& path);

}  // namespace kvserve::engine

#endif  // KVSERVE_ENGINE_MODEL_GGUF_MODEL_H_
