// The vocabulary of a tokenizer, as read from a GGUF file (tokenizer.ggml.*) or a llama2.c
// tokenizer file: SentencePiece-style BPE (tokenizer.ggml.model "llama") or byte-level BPE
// ("gpt2"). Plain data; the Tokenizer owns the logic.
#ifndef KVSERVE_ENGINE_TOKENIZER_VOCABULARY_H_
#define KVSERVE_ENGINE_TOKENIZER_VOCABULARY_H_

#include <cstdint>
#include <string>
#include <vector>

namespace kvserve::engine {

// Values follow GGUF's tokenizer.ggml.token_type.
enum class TokenType : int32_t {
  kNormal = 1,
  kUnknown = 2,
  kControl = 3,
  kUserDefined = 4,
  kUnused = 5,
  kByte = 6,  // "<0xAB>": stands for the single raw byte 0xAB (byte fallback)
};

enum class TokenizerKind : int32_t {
  kSentencePiece = 0,  // tokenizer.ggml.model "llama": merges by piece score, byte fallback
  kByteLevelBpe = 1,   // tokenizer.ggml.model "gpt2": GPT-2 byte mapping, ranked merges
};

struct Vocabulary {
  TokenizerKind kind = TokenizerKind::kSentencePiece;
  // kSentencePiece: the token's text with SentencePiece's U+2581 ("▁") already replaced by ' '.
  // kByteLevelBpe: as stored in the file: normal tokens in the GPT-2 byte-to-unicode mapping
  // ("Ġ" for a space byte), user-defined and control tokens as plain text.
  std::vector<std::string> pieces;
  std::vector<float> scores;     // merge priority: higher merges first (kSentencePiece)
  std::vector<TokenType> types;  // same length as pieces
  int32_t bos_id = 1;
  int32_t eos_id = 2;
  int32_t unk_id = 0;
  bool add_bos = true;           // prepend BOS when encoding a prompt
  bool add_space_prefix = true;  // SentencePiece dummy prefix: encode " " + text
  bool add_eos = false;          // append EOS when encoding with special tokens
  int32_t eot_id = -1;           // tokenizer.ggml.eot_token_id; -1 when not declared
  int32_t eom_id = -1;           // tokenizer.ggml.eom_token_id; -1 when not declared
  // kByteLevelBpe only: tokenizer.ggml.pre (the pre-tokenizer's split rules) and
  // tokenizer.ggml.merges ("left right" in the mapped form, highest priority first).
  std::string pre;
  std::vector<std::string> merges;

  int32_t size() const { return static_cast<int32_t>(pieces.size()); }
};

}  // namespace kvserve::engine

#endif  // KVSERVE_ENGINE_TOKENIZER_VOCABULARY_H_
