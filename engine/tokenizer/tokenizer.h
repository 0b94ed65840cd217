// SentencePiece-style BPE tokenizer (the "llama"/SPM tokenizer of llama2.c and llama.cpp) and a
// streaming detokenizer that turns generated token ids into UTF-8 text deltas.
//
// Encoding (Tokenizer::Encode):
//   1. When vocab.add_space_prefix is set and the text is non-empty, a ' ' is prepended
//      (SentencePiece's dummy prefix).
//   2. The text is split into UTF-8 code points. A well-formed code point whose text is a piece
//      becomes that token. Otherwise (a code point that is not a piece, or a byte that is not part
//      of a well-formed UTF-8 sequence) it falls back to bytes: each byte becomes its "<0xAB>"
//      piece when the vocabulary has byte pieces (unk for a byte whose piece is missing); in a
//      vocabulary without any byte piece, the code point (or invalid byte) becomes one unk token.
//   3. Repeatedly, the adjacent pair of tokens whose concatenated text is a piece with the highest
//      score is merged (the leftmost pair on ties), until no pair merges. Tokens produced by byte
//      fallback or unk never merge.
//   Only kNormal and kUserDefined pieces are matched against text: control, unknown, byte and
//   unused pieces are never produced from text, so a prompt cannot smuggle in "<s>" or "</s>".
//   Cost: O(n log n) in the text length (a priority queue over candidate merges).
//
// Decoding (Tokenizer::Decode, StreamingDetokenizer): the concatenated bytes of the tokens
// (TokenBytes), except that the dummy prefix is dropped when vocab.add_space_prefix is set: a
// leading ' ' of the first normal, user-defined or byte token that directly follows BOS, or that
// begins the sequence, is stripped. Decode(Encode(text, add_bos)) == text for every text the
// vocabulary can represent (every text, when the vocabulary has all 256 byte pieces).
#ifndef KVSERVE_ENGINE_TOKENIZER_TOKENIZER_H_
#define KVSERVE_ENGINE_TOKENIZER_TOKENIZER_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/tokenizer/vocabulary.h"

namespace kvserve::engine {

// Checks what the Tokenizer relies on: a non-empty vocabulary, pieces/scores/types of equal
// length, finite scores, bos_id and eos_id in range, unk_id in range or -1 (no unknown token:
// unrepresentable text is then dropped). Returns InvalidArgument naming the problem.
absl::Status ValidateVocabulary(const Vocabulary& vocab);

// Immutable after construction; every method is const and safe to call from many threads at once.
// The Tokenizer holds its own copy of the Vocabulary (pass an rvalue to move it in). Copyable and
// movable; to share one instance, hold it in a std::shared_ptr<const Tokenizer>.
class Tokenizer {
 public:
  // Validates `vocab` (ValidateVocabulary) and builds the tokenizer.
  static absl::StatusOr<Tokenizer> Create(Vocabulary vocab);

  // REQUIRES: ValidateVocabulary(vocab).ok(); a broken vocabulary aborts (KVSERVE_CHECK). Use
  // Create() for vocabularies read from untrusted files.
  explicit Tokenizer(Vocabulary vocab);

  // Token ids of `text` (see the file comment), preceded by BOS when `add_bos`. Never fails: any
  // byte sequence, including invalid UTF-8 and NUL bytes, is accepted.
  // REQUIRES: text.size() < 2^31 - 1 bytes (callers cap prompts far below that).
  std::vector<int32_t> Encode(std::string_view text, bool add_bos) const;

  // Encode with a bound: the tokens of `text` (BOS included) when there are at most `max_tokens`,
  // std::nullopt otherwise. Gives up as soon as the text is known to need more: a lower bound on
  // the count is kept while the text is scanned, so at most about
  // (max_tokens + 1) x max_token_bytes() bytes are looked at and merged, whatever the text's
  // length. The same tokens as Encode when it returns them.
  std::optional<std::vector<int32_t>> EncodeAtMost(std::string_view text, bool add_bos,
                                                   size_t max_tokens) const;

  // The most bytes of text one token can stand for: the longest matchable piece, and at least 4
  // (an unknown token may stand for one code point). A text longer than
  // n x max_token_bytes() bytes has more than n tokens.
  size_t max_token_bytes() const;

  // The raw bytes token `id` stands for: a byte piece gives its single byte, a normal or
  // user-defined piece its text; control, unknown and unused tokens and invalid ids give "".
  std::string TokenBytes(int32_t id) const;

  // Concatenated TokenBytes of `ids` with the dummy-prefix rule of the file comment. When
  // `at_sequence_start` is false, `ids` continue an earlier sequence (for example generated tokens
  // after a prompt): the first token is then not treated as beginning the sequence, and only the
  // rule after BOS applies. Invalid ids contribute nothing. The result is raw bytes and may be
  // invalid UTF-8 when the ids are (for example half of a multi-byte character).
  std::string Decode(absl::Span<const int32_t> ids, bool at_sequence_start = true) const;

  // Appends token `id` as Decode does, given and updating the decoder's state: `*after_start` is
  // true at the beginning of a sequence and directly after BOS.
  void AppendDecodedToken(int32_t id, bool* after_start, std::string* out) const;

  bool IsValidId(int32_t id) const { return id >= 0 && id < vocab_.size(); }
  int32_t bos_id() const { return vocab_.bos_id; }
  int32_t eos_id() const { return vocab_.eos_id; }
  int32_t unk_id() const { return vocab_.unk_id; }
  int32_t vocab_size() const { return vocab_.size(); }
  const Vocabulary& vocab() const { return vocab_; }
  // True when the vocabulary has at least one "<0xAB>" byte piece (byte fallback is used).
  bool has_byte_fallback() const { return has_byte_fallback_; }

 private:
  struct StringHash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };

  // The token text `id` matches and decodes to (empty for control/unknown/unused tokens).
  std::string_view Bytes(int32_t id) const;
  // Id of a kNormal/kUserDefined piece equal to `text`, or -1.
  int32_t LookupPiece(std::string_view text) const;
  // Appends the fallback tokens of `bytes`: one code point that is not a piece, or one byte that
  // is not part of well-formed UTF-8.
  void AppendFallback(std::string_view bytes, std::vector<int32_t>* ids) const;

  Vocabulary vocab_;
  std::vector<std::string> bytes_;  // [vocab_size] what each token decodes to
  std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>> piece_to_id_;
  std::array<int32_t, 256> byte_to_id_;  // -1 where the vocabulary has no "<0xAB>" piece
  bool has_byte_fallback_ = false;
  size_t max_piece_bytes_ = 0;  // longest matchable piece, in bytes
};

// Turns a stream of token ids into UTF-8 text deltas for a client. Every string returned by Feed()
// and Flush() is well-formed UTF-8: a multi-byte character split across tokens is held back until
// complete, and bytes that can never form valid UTF-8 are replaced by U+FFFD (one per maximal
// ill-formed subpart, as Unicode recommends). The concatenation of all outputs equals
// tokenizer.Decode(ids, at_sequence_start) whenever that is valid UTF-8.
//
// Holds a reference to the Tokenizer, which must outlive it. One instance per stream; not
// thread-safe (use it from one thread at a time).
class StreamingDetokenizer {
 public:
  // `at_sequence_start`: as in Tokenizer::Decode; pass false when the fed ids continue a prompt
  // that is not fed (a generation stream), so that the first generated token keeps its space.
  explicit StreamingDetokenizer(const Tokenizer& tokenizer, bool at_sequence_start = true);

  // Adds one token; returns the newly completed text (possibly empty).
  std::string Feed(int32_t id);

  // Returns whatever is held back (an incomplete trailing sequence becomes U+FFFD) and resets the
  // detokenizer to its initial state.
  std::string Flush();

  // Bytes currently held back waiting for the rest of a UTF-8 sequence (at most 3).
  size_t pending_bytes() const { return pending_.size(); }

 private:
  // Moves the complete prefix of pending_ to the result; with `final`, everything.
  std::string Drain(bool final);

  const Tokenizer& tokenizer_;
  bool initial_at_start_;
  bool after_start_;
  std::string pending_;
};

}  // namespace kvserve::engine

#endif  // KVSERVE_ENGINE_TOKENIZER_TOKENIZER_H_
