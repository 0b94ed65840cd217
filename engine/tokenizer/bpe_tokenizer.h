// Byte-level BPE (GPT-2 style; tokenizer.ggml.model "gpt2"), the algorithm behind Tokenizer for
// vocabularies of kind kByteLevelBpe.
//
// Vocabulary form: a normal token's text is its bytes written through GPT-2's byte-to-unicode
// mapping (the printable bytes '!'..'~', 0xA1..0xAC and 0xAE..0xFF stand for themselves, every
// other byte b for U+0100 + its index among those others: ' ' is "Ġ", '\n' is "Ċ"). Merges are
// "left right" pairs in that form, ranked by their order (first = merged first).
//
// Encoding one pre-token (EncodeWord): with ignore_merges (llama-bpe), a pre-token that is a normal
// token is that token. Otherwise each byte starts as the token of its mapped character, and the
// adjacent pair with the best-ranked merge is merged (the leftmost on ties) until no pair has one.
// A byte whose token is missing never merges and becomes the unknown token (or nothing when there
// is none).
//
// Immutable after construction; safe to use from many threads at once.
#ifndef KVSERVE_ENGINE_TOKENIZER_BPE_TOKENIZER_H_
#define KVSERVE_ENGINE_TOKENIZER_BPE_TOKENIZER_H_

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "engine/tokenizer/pre_tokenizer.h"
#include "engine/tokenizer/vocabulary.h"

namespace kvserve::engine {

// GPT-2's byte-to-unicode mapping: the code point byte `b` is written as.
uint32_t ByteToUnicode(uint8_t b);
// The byte code point `cp` stands for, or -1 when it is not in the mapping's range.
int UnicodeToByte(uint32_t cp);
// The raw bytes of a mapped text: each mapped code point becomes its byte; any other character
// (or ill-formed UTF-8) is kept as it is.
std::string UnmapBytes(std::string_view mapped);
// The mapped form of raw bytes.
std::string MapBytes(std::string_view bytes);

class BpeTokenizer {
 public:
  // `vocab.kind` must be kByteLevelBpe. Errors (InvalidArgument): an unknown `pre` (the message
  // names it), a malformed merge.
  static absl::StatusOr<BpeTokenizer> Create(
      const Vocabulary& vocab, PreTokenizer::Engine engine = PreTokenizer::Engine::kFast);

  // Appends the tokens of `text` (plain text with no special tokens in it): pre-split, then BPE
  // within each piece.
  void Encode(std::string_view text, std::vector<int32_t>* out) const;
  // Appends the tokens of one pre-token.
  void EncodeWord(std::string_view word, std::vector<int32_t>* out) const;

  // The raw bytes of every token: a normal token's text unmapped, a user-defined token's text,
  // "<0xAB>" byte tokens their byte, "" for the rest.
  const std::vector<std::string>& token_bytes() const { return token_bytes_; }
  const PreTokenizer& pre_tokenizer() const { return pre_; }

 private:
  explicit BpeTokenizer(PreTokenizer pre) : pre_(std::move(pre)) {}

  struct Merge {
    int32_t rank;
    int32_t id;  // the merged token
  };
  static uint64_t PairKey(int32_t left, int32_t right) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) |
           static_cast<uint32_t>(right);
  }

  PreTokenizer pre_;
  int32_t unk_id_ = -1;
  std::vector<std::string> token_bytes_;
  std::array<int32_t, 256> byte_token_;  // the normal token of each single byte, or -1
  // Normal tokens by their raw bytes (ignore_merges lookups).
  absl::flat_hash_map<std::string, int32_t> bytes_to_id_;
  absl::flat_hash_map<uint64_t, Merge> merges_;
};

}  // namespace kvserve::engine

#endif  // KVSERVE_ENGINE_TOKENIZER_BPE_TOKENIZER_H_
