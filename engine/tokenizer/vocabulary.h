// The vocabulary of a SentencePiece-style BPE model, as read from a GGUF file
// (tokenizer.ggml.*) or a llama2.c tokenizer file. Plain data; the Tokenizer owns the logic.
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

struct Vocabulary {
  // pieces[id] is the token's text with SentencePiece's U+2581 ("▁") already replaced by ' '.
  std::vector<std::string> pieces;
  std::vector<float> scores;     // merge priority: higher merges first
  std::vector<TokenType> types;  // same length as pieces
  int32_t bos_id = 1;
  int32_t eos_id = 2;
  int32_t unk_id = 0;
  bool add_bos = true;           // prepend BOS when encoding a prompt
  bool add_space_prefix = true;  // SentencePiece dummy prefix: encode " " + text

  int32_t size() const { return static_cast<int32_t>(pieces.size()); }
};

}  // namespace kvserve::engine

#endif  // KVSERVE_ENGINE_TOKENIZER_VOCABULARY_H_
