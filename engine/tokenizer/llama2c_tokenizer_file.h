// Reads a llama2.c tokenizer file (tokenizer.bin, tok512.bin, ...) into a Vocabulary.
//
// File layout (little-endian, no padding):
//   int32 max_token_length
//   vocab_size times: float32 score, int32 byte length n, n bytes of piece text
// The vocabulary size is not stored in the file; the caller passes the size the model declares,
// and the file must hold exactly that many tokens with no trailing bytes.
//
// The resulting Vocabulary:
//   * pieces: the stored bytes, with any U+2581 ("▁") replaced by ' ' (llama2.c's exporter already
//     writes ' '). The exporter writes BOS and EOS as "\n<s>\n" and "\n</s>\n"; those are
//     normalised to "<s>" and "</s>" so that the vocabulary matches the one a GGUF file carries.
//   * types: "<0xAB>" pieces are TokenType::kByte; id 0 "<unk>" is kUnknown; ids 1 "<s>" and
//     2 "</s>" are kControl (only when those are the pieces); every other piece is kNormal.
//   * unk_id = 0, bos_id = 1, eos_id = 2, add_bos = true, add_space_prefix = true.
//
// Errors: NotFound when the file cannot be opened; InvalidArgument for every malformed file
// (truncation, a negative or absurd length, a non-finite score, a token count other than
// `expected_vocab_size`, trailing bytes). Messages name the file, the token index and the byte
// offset, e.g. "tok512.bin: truncated at byte 6200 reading the length of token 510 ...".
//
// Thread-safe: no shared state.
#ifndef KVSERVE_ENGINE_TOKENIZER_LLAMA2C_TOKENIZER_FILE_H_
#define KVSERVE_ENGINE_TOKENIZER_LLAMA2C_TOKENIZER_FILE_H_

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "engine/tokenizer/vocabulary.h"

namespace kvserve::engine {

// Largest max_token_length (bytes) accepted in a file header; larger values are rejected as absurd.
inline constexpr int32_t kMaxLlama2cTokenLength = 1 << 16;

// Reads the file at `path`. REQUIRES: expected_vocab_size > 0 (otherwise InvalidArgument).
absl::StatusOr<Vocabulary> ReadLlama2cTokenizer(const std::string& path,
                                                int32_t expected_vocab_size);

// Parses the contents of a tokenizer file already in memory; `name` is used in error messages.
absl::StatusOr<Vocabulary> ParseLlama2cTokenizer(std::string_view contents, std::string_view name,
                                                 int32_t expected_vocab_size);

}  // namespace kvserve::engine

#endif  // KVSERVE_ENGINE_TOKENIZER_LLAMA2C_TOKENIZER_FILE_H_
