#include "engine/tokenizer/tokenizer.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <queue>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/common/status_macros.h"
#include "engine/tokenizer/bpe_tokenizer.h"
#include "engine/tokenizer/pre_tokenizer.h"

namespace kvserve::engine {
namespace {

constexpr std::string_view kReplacementCharacter = "\xEF\xBF\xBD";  // U+FFFD

enum class Utf8Scan {
  kValid,       // a complete, well-formed sequence of `length` bytes
  kIncomplete,  // a well-formed prefix that the end of the data cuts short
  kInvalid,     // an ill-formed maximal subpart of `length` (>= 1) bytes
};

// Classifies the UTF-8 sequence starting at data[0] (data non-empty), following the Unicode
// definition of well-formed UTF-8 (no overlong forms, no surrogates, nothing above U+10FFFF).
Utf8Scan ScanUtf8(std::string_view data, size_t* length) {
  const auto b0 = static_cast<uint8_t>(data[0]);
  size_t need = 0;
  uint8_t lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (b0 < 0x80) {
    *length = 1;
    return Utf8Scan::kValid;
  } else if (b0 >= 0xC2 && b0 <= 0xDF) {
    need = 2;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    need = 3;
    if (b0 == 0xE0) lo = 0xA0;
    if (b0 == 0xED) hi = 0x9F;
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    need = 4;
    if (b0 == 0xF0) lo = 0x90;
    if (b0 == 0xF4) hi = 0x8F;
  } else {
    *length = 1;
    return Utf8Scan::kInvalid;
  }
  for (size_t i = 1; i < need; ++i) {
    if (i >= data.size()) {
      *length = i;
      return Utf8Scan::kIncomplete;
    }
    const auto b = static_cast<uint8_t>(data[i]);
    const bool ok = i == 1 ? (b >= lo && b <= hi) : (b >= 0x80 && b <= 0xBF);
    if (!ok) {
      *length = i;
      return Utf8Scan::kInvalid;
    }
  }
  *length = need;
  return Utf8Scan::kValid;
}

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

// The byte a "<0xAB>" piece stands for, or -1.
int BytePieceValue(std::string_view piece) {
  if (piece.size() != 6 || piece.substr(0, 3) != "<0x" || piece[5] != '>') return -1;
  const int hi = HexValue(piece[3]);
  const int lo = HexValue(piece[4]);
  return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

// One token of the working sequence: text[begin, begin + length) of the (prefixed) input, linked
// to its neighbours. Merged-away symbols have length 0.
struct Symbol {
  int32_t prev;
  int32_t next;
  uint32_t begin;
  uint32_t length;
  int32_t id;      // the token; -1 for dropped text (no unk token)
  bool mergeable;  // false for byte-fallback and unk tokens
};

// A candidate merge of symbols[left] with its right neighbour into token `id`.
struct Bigram {
  float score;
  int32_t left;
  int32_t right;
  uint32_t length;  // combined length when queued; stale if the symbols have changed since
  int32_t id;
};

// Orders the queue so that top() is the highest score, then the leftmost pair.
struct BigramLess {
  bool operator()(const Bigram& a, const Bigram& b) const {
    if (a.score != b.score) return a.score < b.score;
    return a.left > b.left;
  }
};

// The initial SentencePiece symbols of `text`: one per code point that is a piece
// (lookup(unit) >= 0), fallback tokens (fallback(unit, &ids)) for the rest, each ill-formed
// byte on its own. prev/next are left unset. Returns false as soon as a lower bound on the final
// token count passes max_tokens (fixed_tokens are already counted): fallback tokens never
// merge, and a merged token covers at most max_piece_bytes bytes of matchable text; the rest of
// the text is then not looked at.
template <typename Lookup, typename Fallback>
bool ScanSymbols(std::string_view text, size_t max_piece_bytes, size_t fixed_tokens,
                 size_t max_tokens, const Lookup& lookup, const Fallback& fallback_of,
                 std::vector<Symbol>* symbols) {
  symbols->reserve(text.size());
  std::vector<int32_t> fallback;
  const size_t piece_bytes = std::max<size_t>(max_piece_bytes, 1);
  size_t mergeable_bytes = 0;
  for (size_t pos = 0; pos < text.size();) {
    if (fixed_tokens + (mergeable_bytes + piece_bytes - 1) / piece_bytes > max_tokens) {
      return false;
    }
    size_t length = 0;
    const Utf8Scan scan = ScanUtf8(text.substr(pos), &length);
    if (scan != Utf8Scan::kValid) length = 1;  // each byte of ill-formed text on its own
    const std::string_view unit = text.substr(pos, length);
    const int32_t id = scan == Utf8Scan::kValid ? lookup(unit) : -1;
    if (id >= 0) {
      symbols->push_back({0, 0, static_cast<uint32_t>(pos), static_cast<uint32_t>(length), id,
                          /*mergeable=*/true});
      mergeable_bytes += length;
    } else {
      fallback.clear();
      fallback_of(unit, &fallback);
      // Split the unit's bytes among its fallback tokens (one per byte, or one for all).
      for (size_t k = 0; k < fallback.size(); ++k) {
        const size_t begin = pos + (fallback.size() == 1 ? 0 : k);
        const size_t bytes = fallback.size() == 1 ? length : 1;
        symbols->push_back({0, 0, static_cast<uint32_t>(begin), static_cast<uint32_t>(bytes),
                            fallback[k], /*mergeable=*/false});
        if (fallback[k] >= 0) ++fixed_tokens;
      }
    }
    pos += length;
  }
  return true;
}

// Links the symbols into a list in order (prev/next; -1 at the ends).
void LinkSymbols(std::vector<Symbol>& symbols) {
  const auto count = static_cast<int32_t>(symbols.size());
  for (int32_t i = 0; i < count; ++i) {
    symbols[static_cast<size_t>(i)].prev = i - 1;
    symbols[static_cast<size_t>(i)].next = i + 1 < count ? i + 1 : -1;
  }
}

// Repeatedly merges the pair of live, mergeable neighbours whose concatenated text is a piece
// (lookup(text) >= 0) with the highest score (the leftmost on ties). A merged-away symbol keeps
// length 0 and is unlinked.
template <typename Lookup>
void MergeSymbols(std::string_view text, const std::vector<float>& scores, const Lookup& lookup,
                  std::vector<Symbol>& symbols) {
  const auto count = static_cast<int32_t>(symbols.size());
  std::priority_queue<Bigram, std::vector<Bigram>, BigramLess> queue;
  auto try_add = [&](int32_t left, int32_t right) {
    if (left < 0 || right < 0) return;
    const Symbol& l = symbols[static_cast<size_t>(left)];
    const Symbol& r = symbols[static_cast<size_t>(right)];
    if (!l.mergeable || !r.mergeable) return;
    const uint32_t length = l.length + r.length;
    const int32_t id = lookup(text.substr(l.begin, length));
    if (id < 0) return;
    queue.push({scores[static_cast<size_t>(id)], left, right, length, id});
  };
  for (int32_t i = 1; i < count; ++i) try_add(i - 1, i);

  while (!queue.empty()) {
    const Bigram bigram = queue.top();
    queue.pop();
    Symbol& l = symbols[static_cast<size_t>(bigram.left)];
    Symbol& r = symbols[static_cast<size_t>(bigram.right)];
    // Symbols only grow, so an unchanged combined length of two live neighbours means unchanged
    // text.
    if (l.length == 0 || r.length == 0 || l.next != bigram.right ||
        l.length + r.length != bigram.length) {
      continue;
    }
    l.length += r.length;
    l.id = bigram.id;
    l.next = r.next;
    if (r.next >= 0) symbols[static_cast<size_t>(r.next)].prev = bigram.left;
    r.length = 0;
    try_add(l.prev, bigram.left);
    try_add(bigram.left, l.next);
  }
}

// Appends the ids of the linked symbols, from the first, skipping dropped text (id -1).
void AppendSymbolIds(const std::vector<Symbol>& symbols, std::vector<int32_t>* out) {
  out->reserve(out->size() + symbols.size());
  for (int32_t i = symbols.empty() ? -1 : 0; i >= 0; i = symbols[static_cast<size_t>(i)].next) {
    const int32_t id = symbols[static_cast<size_t>(i)].id;
    if (id >= 0) out->push_back(id);
  }
}

}  // namespace

absl::Status ValidateVocabulary(const Vocabulary& vocab) {
  const size_t n = vocab.pieces.size();
  if (n == 0) return absl::InvalidArgumentError("vocabulary is empty");
  if (n > static_cast<size_t>(INT32_MAX)) {
    return absl::InvalidArgumentError(absl::StrCat("vocabulary has ", n, " pieces, too many"));
  }
  if (vocab.scores.size() != n || vocab.types.size() != n) {
    return absl::InvalidArgumentError(absl::StrCat("vocabulary has ", n, " pieces but ",
                                                   vocab.scores.size(), " scores and ",
                                                   vocab.types.size(), " types"));
  }
  for (size_t i = 0; i < n; ++i) {
    if (!std::isfinite(vocab.scores[i])) {
      return absl::InvalidArgumentError(absl::StrCat("token ", i, " has a non-finite score"));
    }
  }
  const auto size = static_cast<int32_t>(n);
  auto in_range = [size](int32_t id) { return id >= 0 && id < size; };
  if (!in_range(vocab.bos_id) || !in_range(vocab.eos_id)) {
    return absl::InvalidArgumentError(absl::StrCat("bos_id ", vocab.bos_id, " or eos_id ",
                                                   vocab.eos_id, " outside the vocabulary of ",
                                                   size, " tokens"));
  }
  if (vocab.unk_id != -1 && !in_range(vocab.unk_id)) {
    return absl::InvalidArgumentError(
        absl::StrCat("unk_id ", vocab.unk_id, " outside the vocabulary of ", size, " tokens"));
  }
  for (const auto& [name, id] : {std::pair<std::string_view, int32_t>{"eot_id", vocab.eot_id},
                                 std::pair<std::string_view, int32_t>{"eom_id", vocab.eom_id}}) {
    if (id != -1 && !in_range(id)) {
      return absl::InvalidArgumentError(
          absl::StrCat(std::string(name), " ", id, " outside the vocabulary of ", size, " tokens"));
    }
  }
  if (vocab.kind == TokenizerKind::kByteLevelBpe) {
    if (!PreTokenizer::IsKnown(vocab.pre)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "pre-tokenizer '", vocab.pre,
          "' (tokenizer.ggml.pre) is not supported; known: ", PreTokenizer::KnownNames()));
    }
    for (size_t i = 0; i < vocab.merges.size(); ++i) {
      const std::string& merge = vocab.merges[i];
      const size_t space = merge.find(' ', 1);
      if (space == std::string::npos || space + 1 >= merge.size()) {
        return absl::InvalidArgumentError(absl::StrCat("tokenizer.ggml.merges[", i, "] = '", merge,
                                                       "' is not two tokens separated by a space"));
      }
    }
  }
  return absl::OkStatus();
}

namespace {

// Texts of tokens that end a generation when the vocabulary has them as control or user-defined
// tokens (the chat formats' end-of-turn markers).
constexpr std::string_view kEndOfGenerationNames[] = {
    "<|eot_id|>",
    "<|eom_id|>",
    "<|im_end|>",
    "<end_of_turn>",
    "<|end|>",
    "<|endoftext|>",
    "<|return|>",
    "<|call|>",
    "</s>",
    "<|end_of_text|>",
    "<EOT>",
    "<|EOT|>",
    "<end_of_utterance>",
    // DeepSeek's, in pieces so that no hex escape runs into the letters after it.
    "<\xEF\xBD\x9C"  // NOLINT(bugprone-suspicious-missing-comma): one literal on purpose
    "end\xE2\x96\x81"
    "of\xE2\x96\x81"
    "sentence\xEF\xBD\x9C>",
};

}  // namespace

absl::StatusOr<Tokenizer> Tokenizer::Create(Vocabulary vocab) {
  KVSERVE_RETURN_IF_ERROR(ValidateVocabulary(vocab));
  return Tokenizer(std::move(vocab));
}

Tokenizer::Tokenizer(Vocabulary vocab) : vocab_(std::move(vocab)) {
  const absl::Status valid = ValidateVocabulary(vocab_);
  KVSERVE_CHECK(valid.ok()) << valid.ToString();
  byte_to_id_.fill(-1);
  const int32_t n = vocab_.size();
  const bool byte_level = vocab_.kind == TokenizerKind::kByteLevelBpe;

  // Special tokens split out of text, and the end-of-generation set (both kinds).
  std::vector<int32_t> eog = {vocab_.eos_id};
  if (vocab_.eot_id >= 0) eog.push_back(vocab_.eot_id);
  if (vocab_.eom_id >= 0) eog.push_back(vocab_.eom_id);
  for (int32_t id = 0; id < n; ++id) {
    const TokenType type = vocab_.types[static_cast<size_t>(id)];
    if (type != TokenType::kControl && type != TokenType::kUserDefined) continue;
    const std::string& text = vocab_.pieces[static_cast<size_t>(id)];
    for (const std::string_view name : kEndOfGenerationNames) {
      if (text == name) eog.push_back(id);
    }
    if (text.empty()) continue;
    // A byte-level vocabulary's user-defined tokens are always split out; everything else only
    // with parse_special.
    const bool always = byte_level && type == TokenType::kUserDefined;
    specials_[static_cast<uint8_t>(text[0])].push_back({text, id, /*control=*/!always});
    has_user_defined_specials_ = has_user_defined_specials_ || always;
    max_special_bytes_ = std::max(max_special_bytes_, text.size());
  }
  for (auto& bucket : specials_) {
    std::stable_sort(
        bucket.begin(), bucket.end(),
        [](const SpecialToken& a, const SpecialToken& b) { return a.text.size() > b.text.size(); });
  }
  std::sort(eog.begin(), eog.end());
  eog.erase(std::unique(eog.begin(), eog.end()), eog.end());
  end_of_generation_ids_ = std::move(eog);

  if (byte_level) {
    vocab_.add_space_prefix = false;
    auto bpe = BpeTokenizer::Create(vocab_);
    KVSERVE_CHECK(bpe.ok()) << bpe.status().ToString();
    bpe_ = std::make_shared<const BpeTokenizer>(*std::move(bpe));
    bytes_ = bpe_->token_bytes();
    for (int32_t id = 0; id < n; ++id) {
      const TokenType type = vocab_.types[static_cast<size_t>(id)];
      if (type == TokenType::kNormal || type == TokenType::kUserDefined) {
        max_piece_bytes_ = std::max(max_piece_bytes_, bytes_[static_cast<size_t>(id)].size());
      }
    }
    return;
  }
  bytes_.resize(static_cast<size_t>(n));
  piece_to_id_.reserve(static_cast<size_t>(n));
  for (int32_t id = 0; id < n; ++id) {
    const std::string& piece = vocab_.pieces[static_cast<size_t>(id)];
    switch (vocab_.types[static_cast<size_t>(id)]) {
      case TokenType::kNormal:
      case TokenType::kUserDefined:
        bytes_[static_cast<size_t>(id)] = piece;
        // The first of duplicate pieces wins.
        if (!piece.empty() && piece_to_id_.emplace(piece, id).second) {
          max_piece_bytes_ = std::max(max_piece_bytes_, piece.size());
        }
        break;
      case TokenType::kByte: {
        const int value = BytePieceValue(piece);
        if (value >= 0) {
          bytes_[static_cast<size_t>(id)] = std::string(1, static_cast<char>(value));
          if (byte_to_id_[static_cast<size_t>(value)] < 0) {
            byte_to_id_[static_cast<size_t>(value)] = id;
          }
          has_byte_fallback_ = true;
        }
        break;
      }
      case TokenType::kUnknown:
      case TokenType::kControl:
      case TokenType::kUnused:
        break;
    }
  }
}

std::string_view Tokenizer::Bytes(int32_t id) const {
  if (!IsValidId(id)) return {};
  return bytes_[static_cast<size_t>(id)];
}

std::string Tokenizer::TokenBytes(int32_t id) const { return std::string(Bytes(id)); }

int32_t Tokenizer::LookupPiece(std::string_view text) const {
  if (text.size() > max_piece_bytes_) return -1;
  const auto it = piece_to_id_.find(text);
  return it == piece_to_id_.end() ? -1 : it->second;
}

void Tokenizer::AppendFallback(std::string_view bytes, std::vector<int32_t>* ids) const {
  if (!has_byte_fallback_) {
    ids->push_back(vocab_.unk_id);
    return;
  }
  for (const char c : bytes) {
    const int32_t id = byte_to_id_[static_cast<uint8_t>(c)];
    ids->push_back(id >= 0 ? id : vocab_.unk_id);
  }
}

bool Tokenizer::IsEndOfGeneration(int32_t id) const {
  return std::binary_search(end_of_generation_ids_.begin(), end_of_generation_ids_.end(), id);
}

std::vector<int32_t> Tokenizer::Encode(std::string_view text, bool add_bos) const {
  return *EncodeAtMost(text, add_bos, std::numeric_limits<size_t>::max());
}

std::vector<int32_t> Tokenizer::Encode(std::string_view text, const EncodeOptions& options) const {
  return *EncodeAtMost(text, options, std::numeric_limits<size_t>::max());
}

size_t Tokenizer::max_token_bytes() const {
  return std::max<size_t>({max_piece_bytes_, max_special_bytes_, 4});
}

std::optional<std::vector<int32_t>> Tokenizer::EncodeAtMost(std::string_view text, bool add_bos,
                                                            size_t max_tokens) const {
  if (bpe_ == nullptr) {
    return SpmEncodeAtMost(text, add_bos, vocab_.add_space_prefix, max_tokens);
  }
  return BoundedEncode(text, add_bos && vocab_.add_bos, /*eos=*/false, /*parse_special=*/false,
                       max_tokens);
}

std::optional<std::vector<int32_t>> Tokenizer::EncodeAtMost(std::string_view text,
                                                            const EncodeOptions& options,
                                                            size_t max_tokens) const {
  const bool bos = options.add_special && vocab_.add_bos;
  const bool eos = options.add_special && vocab_.add_eos;
  if (bpe_ == nullptr && !options.parse_special) {
    auto ids = SpmEncodeAtMost(text, bos, vocab_.add_space_prefix,
                               eos && max_tokens > 0 ? max_tokens - 1 : max_tokens);
    if (ids.has_value() && eos) ids->push_back(vocab_.eos_id);
    if (ids.has_value() && ids->size() > max_tokens) return std::nullopt;
    return ids;
  }
  return BoundedEncode(text, bos, eos, options.parse_special, max_tokens);
}

std::optional<std::vector<int32_t>> Tokenizer::BoundedEncode(std::string_view text, bool bos,
                                                             bool eos, bool parse_special,
                                                             size_t max_tokens) const {
  // Each token stands for at most max_token_bytes() bytes of text.
  const size_t fixed = (bos ? 1 : 0) + (eos ? 1 : 0);
  if (fixed > max_tokens) return std::nullopt;
  if (max_tokens != std::numeric_limits<size_t>::max() &&
      (text.size() + max_token_bytes() - 1) / max_token_bytes() > max_tokens - fixed) {
    return std::nullopt;
  }
  std::vector<int32_t> ids = EncodeWithSpecials(text, bos, eos, parse_special);
  if (ids.size() > max_tokens) return std::nullopt;
  return ids;
}

void Tokenizer::EncodePlain(std::string_view text, bool first_fragment,
                            std::vector<int32_t>* out) const {
  if (text.empty()) return;
  if (bpe_ != nullptr) {
    bpe_->Encode(text, out);
    return;
  }
  const auto ids =
      SpmEncodeAtMost(text, /*add_bos=*/false, first_fragment && vocab_.add_space_prefix,
                      std::numeric_limits<size_t>::max());
  out->insert(out->end(), ids->begin(), ids->end());
}

std::vector<int32_t> Tokenizer::EncodeWithSpecials(std::string_view text, bool bos, bool eos,
                                                   bool parse_special) const {
  std::vector<int32_t> out;
  if (bos) out.push_back(vocab_.bos_id);
  if (!parse_special && !has_user_defined_specials_) {
    EncodePlain(text, /*first_fragment=*/true, &out);
  } else {
    size_t start = 0;
    size_t i = 0;
    while (i < text.size()) {
      const SpecialToken* match = nullptr;
      for (const SpecialToken& special : specials_[static_cast<uint8_t>(text[i])]) {
        if ((parse_special || !special.control) &&
            text.compare(i, special.text.size(), special.text) == 0) {
          match = &special;
          break;
        }
      }
      if (match == nullptr) {
        ++i;
        continue;
      }
      EncodePlain(text.substr(start, i - start), /*first_fragment=*/start == 0, &out);
      out.push_back(match->id);
      i += match->text.size();
      start = i;
    }
    EncodePlain(text.substr(start), /*first_fragment=*/start == 0, &out);
  }
  if (eos) out.push_back(vocab_.eos_id);
  return out;
}

std::vector<int32_t> Tokenizer::EncodeParts(absl::Span<const TextPart> parts) const {
  std::string text;
  std::vector<size_t> ends;  // ends[k]: end of part k in `text`
  for (const TextPart& p : parts) {
    text.append(p.text);
    ends.push_back(text.size());
  }
  std::vector<int32_t> out;
  size_t start = 0;
  size_t part = 0;  // the part holding byte i
  size_t i = 0;
  while (i < text.size()) {
    while (ends[part] <= i) ++part;
    const SpecialToken* match = nullptr;
    for (const SpecialToken& special : specials_[static_cast<uint8_t>(text[i])]) {
      // A control token only inside one part that parses them.
      if (special.control && (!parts[part].parse_special || i + special.text.size() > ends[part])) {
        continue;
      }
      if (text.compare(i, special.text.size(), special.text) == 0) {
        match = &special;
        break;
      }
    }
    if (match == nullptr) {
      ++i;
      continue;
    }
    EncodePlain(std::string_view(text).substr(start, i - start), /*first_fragment=*/start == 0,
                &out);
    out.push_back(match->id);
    i += match->text.size();
    start = i;
  }
  EncodePlain(std::string_view(text).substr(start), /*first_fragment=*/start == 0, &out);
  return out;
}

std::optional<std::vector<int32_t>> Tokenizer::SpmEncodeAtMost(std::string_view text, bool add_bos,
                                                               bool add_prefix,
                                                               size_t max_tokens) const {
  std::vector<int32_t> out;
  if (add_bos) out.push_back(vocab_.bos_id);
  if (out.size() > max_tokens) return std::nullopt;
  if (text.empty()) return out;
  // Each token stands for at most max_token_bytes() bytes of the (prefixed) text.
  if (max_tokens != std::numeric_limits<size_t>::max() &&
      text.size() / max_token_bytes() > max_tokens - out.size()) {
    return std::nullopt;
  }

  std::string prefixed;
  if (add_prefix) {
    prefixed.reserve(text.size() + 1);
    prefixed.push_back(' ');
    prefixed.append(text);
    text = prefixed;
  }
  KVSERVE_CHECK(text.size() < static_cast<size_t>(INT32_MAX))
      << "text of " << text.size() << " bytes";

  std::vector<Symbol> symbols;
  const auto lookup = [this](std::string_view piece) { return LookupPiece(piece); };
  const auto fallback = [this](std::string_view unit, std::vector<int32_t>* ids) {
    AppendFallback(unit, ids);
  };
  if (!ScanSymbols(text, max_piece_bytes_, out.size(), max_tokens, lookup, fallback, &symbols)) {
    return std::nullopt;
  }
  LinkSymbols(symbols);
  MergeSymbols(text, vocab_.scores, lookup, symbols);
  AppendSymbolIds(symbols, &out);
  if (out.size() > max_tokens) return std::nullopt;
  return out;
}

void Tokenizer::AppendDecodedToken(int32_t id, bool* after_start, std::string* out) const {
  std::string_view bytes = Bytes(id);
  if (*after_start && vocab_.add_space_prefix && !bytes.empty() && bytes[0] == ' ') {
    const TokenType type = vocab_.types[static_cast<size_t>(id)];
    if (type == TokenType::kNormal || type == TokenType::kUserDefined || type == TokenType::kByte) {
      bytes.remove_prefix(1);
    }
  }
  out->append(bytes);
  *after_start = id == vocab_.bos_id;
}

std::string Tokenizer::Decode(absl::Span<const int32_t> ids, bool at_sequence_start) const {
  std::string out;
  bool after_start = at_sequence_start;
  for (const int32_t id : ids) AppendDecodedToken(id, &after_start, &out);
  return out;
}

StreamingDetokenizer::StreamingDetokenizer(const Tokenizer& tokenizer, bool at_sequence_start)
    : tokenizer_(tokenizer),
      initial_at_start_(at_sequence_start),
      after_start_(at_sequence_start) {}

std::string StreamingDetokenizer::Feed(int32_t id) {
  tokenizer_.AppendDecodedToken(id, &after_start_, &pending_);
  return Drain(/*final=*/false);
}

std::string StreamingDetokenizer::Flush() {
  std::string out = Drain(/*final=*/true);
  after_start_ = initial_at_start_;
  return out;
}

std::string StreamingDetokenizer::Drain(bool final) {
  std::string out;
  const std::string_view data = pending_;
  size_t pos = 0;
  while (pos < data.size()) {
    size_t length = 0;
    const Utf8Scan scan = ScanUtf8(data.substr(pos), &length);
    if (scan == Utf8Scan::kValid) {
      out.append(data.substr(pos, length));
    } else if (scan == Utf8Scan::kIncomplete && !final) {
      break;  // hold back until the rest of the sequence arrives
    } else {
      out.append(kReplacementCharacter);
    }
    pos += length;
  }
  pending_.erase(0, pos);
  return out;
}

}  // namespace kvserve::engine
