// The tokenizer of a model, of one of two kinds (Vocabulary::kind), and a streaming detokenizer
// that turns generated token ids into UTF-8 text deltas.
//   * kSentencePiece: SentencePiece-style BPE (the "llama"/SPM tokenizer of llama2.c and
//     llama.cpp), described below.
//   * kByteLevelBpe: GPT-2 style byte-level BPE (tokenizer.ggml.model "gpt2"): the text is split
//     by the vocabulary's pre-tokenizer (pre_tokenizer.h) and each piece is merged by rank
//     (bpe_tokenizer.h). Every byte sequence is representable; TokenBytes gives a token's raw
//     bytes (the byte mapping undone), so one token may hold part of a multi-byte character.
//
// Special tokens (both kinds, with EncodeOptions): user-defined tokens of a byte-level vocabulary
// are always split out of the text before BPE (leftmost, then longest match first); with
// parse_special, control tokens (and user-defined tokens of an SPM vocabulary) are too, so that
// "<|im_start|>" in the text becomes that token. Without parse_special a control token is never
// produced from text. add_special prepends BOS when the vocabulary's add_bos (add_bos_token) and
// appends EOS when its add_eos (add_eos_token). With special parsing, the SentencePiece dummy
// prefix goes only before text that begins the input, not after a special token.
//
// End of generation: end_of_generation_ids() is EOS plus every EOT/EOM-like token the vocabulary
// declares (tokenizer.ggml.eot_token_id, eom_token_id) or names as a control or user-defined token
// ("<|eot_id|>", "<|eom_id|>", "<|im_end|>", "<end_of_turn>", "<|end|>", "<|endoftext|>", ...).
//
// SentencePiece encoding (Tokenizer::Encode):
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
#include <memory>
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
// length, finite scores, bos_id and eos_id in range, unk_id, eot_id and eom_id in range or -1 (no
// unknown token: unrepresentable text is then dropped), and for a byte-level vocabulary a known
// `pre` and well-formed merges. Returns InvalidArgument naming the problem.
absl::Status ValidateVocabulary(const Vocabulary& vocab);

class BpeTokenizer;

struct EncodeOptions {
  // Prepend BOS when the vocabulary's add_bos, append EOS when its add_eos.
  bool add_special = false;
  // Control tokens written in the text become those tokens.
  bool parse_special = false;
};

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

  // Token ids of `text` (see the file comment), preceded by BOS when `add_bos` (for a byte-level
  // vocabulary: when `add_bos` and the vocabulary's add_bos). No special parsing. Never fails: any
  // byte sequence, including invalid UTF-8 and NUL bytes, is accepted.
  // REQUIRES: text.size() < 2^31 - 1 bytes (callers cap prompts far below that).
  std::vector<int32_t> Encode(std::string_view text, bool add_bos) const;
  std::vector<int32_t> Encode(std::string_view text, const EncodeOptions& options) const;

  // Encode with a bound: the tokens of `text` (BOS included) when there are at most `max_tokens`,
  // std::nullopt otherwise. Gives up as soon as the text is known to need more: a lower bound on
  // the count is kept while the text is scanned, so at most about
  // (max_tokens + 1) x max_token_bytes() bytes are looked at and merged, whatever the text's
  // length. The same tokens as Encode when it returns them.
  std::optional<std::vector<int32_t>> EncodeAtMost(std::string_view text, bool add_bos,
                                                   size_t max_tokens) const;
  // The same with options. For a byte-level vocabulary, or with parse_special, the text is refused
  // by its length first (more than max_tokens x max_token_bytes() bytes) and otherwise encoded
  // whole, then counted.
  std::optional<std::vector<int32_t>> EncodeAtMost(std::string_view text,
                                                   const EncodeOptions& options,
                                                   size_t max_tokens) const;

  // A span of text and whether control tokens may be parsed in it (see EncodeParts).
  struct TextPart {
    std::string_view text;
    bool parse_special = false;
  };
  // Token ids of a text given in parts, as a chat template renders it (template text, where
  // control tokens such as "<|im_start|>" are meant, and message text, where they are not):
  // control tokens are split out only where they lie wholly inside a part with parse_special;
  // user-defined tokens everywhere, as Encode does; and the text between two split-out tokens is
  // encoded as one piece even where it spans parts. So the ids equal Encode(concatenation,
  // {.parse_special = true}) whenever no part without parse_special holds control-token text.
  // No BOS or EOS is added (a template writes its own).
  std::vector<int32_t> EncodeParts(absl::Span<const TextPart> parts) const;

  // The most bytes of text one token can stand for: the longest matchable piece, and at least 4
  // (an unknown token may stand for one code point). A text longer than
  // n x max_token_bytes() bytes has more than n tokens.
  size_t max_token_bytes() const;

  // The raw bytes token `id` stands for: a byte piece gives its single byte, a normal or
  // user-defined piece its text (for a byte-level vocabulary, a normal token's text with the byte
  // mapping undone); control, unknown and unused tokens and invalid ids give "".
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
  TokenizerKind kind() const { return vocab_.kind; }
  // The pre-tokenizer name of a byte-level vocabulary ("" for SentencePiece).
  const std::string& pre() const { return vocab_.pre; }
  // Sorted ids whose generation ends a sequence (see the file comment); never empty.
  const std::vector<int32_t>& end_of_generation_ids() const { return end_of_generation_ids_; }
  bool IsEndOfGeneration(int32_t id) const;
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
  // The SentencePiece algorithm; the dummy prefix only when `add_prefix`.
  std::optional<std::vector<int32_t>> SpmEncodeAtMost(std::string_view text, bool add_bos,
                                                      bool add_prefix, size_t max_tokens) const;

  // Tokens of text that contains no special token to split out (SPM or BPE).
  void EncodePlain(std::string_view text, bool first_fragment, std::vector<int32_t>* out) const;
  // The general path: special tokens split out, then EncodePlain on the text between them.
  // Refuses by length, then EncodeWithSpecials and a count.
  std::optional<std::vector<int32_t>> BoundedEncode(std::string_view text, bool bos, bool eos,
                                                    bool parse_special, size_t max_tokens) const;
  std::vector<int32_t> EncodeWithSpecials(std::string_view text, bool bos, bool eos,
                                          bool parse_special) const;

  struct SpecialToken {
    std::string text;
    int32_t id;
    bool control;  // only split out with parse_special
  };

  Vocabulary vocab_;
  std::shared_ptr<const BpeTokenizer> bpe_;  // kByteLevelBpe
  // Tokens split out of text before BPE, by first byte, longest first.
  std::array<std::vector<SpecialToken>, 256> specials_;
  bool has_user_defined_specials_ = false;
  std::vector<int32_t> end_of_generation_ids_;
  std::vector<std::string> bytes_;  // [vocab_size] what each token decodes to
  std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>> piece_to_id_;
  std::array<int32_t, 256> byte_to_id_;  // -1 where the vocabulary has no "<0xAB>" piece
  bool has_byte_fallback_ = false;
  size_t max_piece_bytes_ = 0;    // longest matchable piece, in bytes
  size_t max_special_bytes_ = 0;  // longest special token text, in bytes
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
