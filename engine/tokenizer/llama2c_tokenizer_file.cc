#include "engine/tokenizer/llama2c_tokenizer_file.h"

#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <fstream>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace kvserve::engine {
namespace {

// Files larger than this are rejected before reading (a 256K-token vocabulary is a few MB).
constexpr int64_t kMaxFileBytes = int64_t{1} << 30;

// Little-endian cursor over the file contents. Every read is bounds-checked by the caller through
// Remaining().
class Reader {
 public:
  explicit Reader(std::string_view data) : data_(data) {}

  size_t offset() const { return offset_; }
  size_t size() const { return data_.size(); }
  size_t Remaining() const { return data_.size() - offset_; }

  uint32_t ReadU32() {
    uint32_t v = 0;
    for (int i = 3; i >= 0; --i) {
      v = (v << 8) | static_cast<uint8_t>(data_[offset_ + static_cast<size_t>(i)]);
    }
    offset_ += 4;
    return v;
  }
  std::string_view ReadBytes(size_t n) {
    std::string_view out = data_.substr(offset_, n);
    offset_ += n;
    return out;
  }

 private:
  std::string_view data_;
  size_t offset_ = 0;
};

struct RawToken {
  float score = 0.0f;
  std::string_view bytes;
};

// Reads one token record at the reader's position. On error returns a message without the file
// name prefix.
std::optional<std::string> ReadToken(Reader& r, int32_t index, int32_t max_token_length,
                                     RawToken* token) {
  const size_t score_at = r.offset();
  if (r.Remaining() < 4) {
    return absl::StrCat("truncated at byte ", score_at, " reading the score of token ", index,
                        " (the file is ", r.size(), " bytes)");
  }
  token->score = std::bit_cast<float>(r.ReadU32());
  if (!std::isfinite(token->score)) {
    return absl::StrCat("token ", index, " has a non-finite score (", token->score, ") at byte ",
                        score_at);
  }
  const size_t length_at = r.offset();
  if (r.Remaining() < 4) {
    return absl::StrCat("truncated at byte ", length_at, " reading the length of token ", index,
                        " (the file is ", r.size(), " bytes)");
  }
  const int32_t length = static_cast<int32_t>(r.ReadU32());
  if (length < 0) {
    return absl::StrCat("token ", index, " has a negative length (", length, ") at byte ",
                        length_at);
  }
  if (length > max_token_length) {
    return absl::StrCat("token ", index, " has length ", length, " at byte ", length_at,
                        ", more than the file's max_token_length ", max_token_length);
  }
  const size_t bytes_at = r.offset();
  if (r.Remaining() < static_cast<size_t>(length)) {
    return absl::StrCat("truncated at byte ", bytes_at, " reading the ", length, " bytes of token ",
                        index, " (the file is ", r.size(), " bytes)");
  }
  token->bytes = r.ReadBytes(static_cast<size_t>(length));
  return std::nullopt;
}

bool IsHexDigit(char c) {
  return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'F') || (c >= 'a' && c <= 'f');
}

// "<0xAB>": SentencePiece's byte-fallback pieces.
bool IsBytePiece(std::string_view piece) {
  return piece.size() == 6 && piece.substr(0, 3) == "<0x" && IsHexDigit(piece[3]) &&
         IsHexDigit(piece[4]) && piece[5] == '>';
}

// SentencePiece writes spaces as U+2581 ("▁"); the Vocabulary holds plain ' '.
std::string ReplaceMetaSpace(std::string_view bytes) {
  constexpr std::string_view kMetaSpace = "\xE2\x96\x81";
  std::string out;
  out.reserve(bytes.size());
  for (size_t i = 0; i < bytes.size();) {
    if (bytes.substr(i, kMetaSpace.size()) == kMetaSpace) {
      out.push_back(' ');
      i += kMetaSpace.size();
    } else {
      out.push_back(bytes[i++]);
    }
  }
  return out;
}

// Reads the header's max_token_length (checked to be 1..kMaxLlama2cTokenLength). On error
// returns a message without the file name prefix.
std::optional<std::string> ReadMaxTokenLength(Reader& r, int32_t* max_token_length) {
  if (r.Remaining() < 4) {
    return absl::StrCat("truncated at byte 0 reading max_token_length (the file is ", r.size(),
                        " bytes)");
  }
  *max_token_length = static_cast<int32_t>(r.ReadU32());
  if (*max_token_length <= 0 || *max_token_length > kMaxLlama2cTokenLength) {
    return absl::StrCat("max_token_length at byte 0 is ", *max_token_length, ", expected 1..",
                        kMaxLlama2cTokenLength);
  }
  return std::nullopt;
}

// Reads `count` token records into vocab.pieces (meta spaces replaced) and vocab.scores. On
// error returns a message without the file name prefix.
std::optional<std::string> ReadTokens(Reader& r, int32_t count, int32_t max_token_length,
                                      Vocabulary& vocab) {
  vocab.pieces.reserve(static_cast<size_t>(count));
  vocab.scores.reserve(static_cast<size_t>(count));
  vocab.types.reserve(static_cast<size_t>(count));
  for (int32_t i = 0; i < count; ++i) {
    if (r.Remaining() == 0) {
      return absl::StrCat("holds ", i, " tokens, expected ", count, " (the file ends at byte ",
                          r.offset(), ")");
    }
    RawToken token;
    if (std::optional<std::string> message = ReadToken(r, i, max_token_length, &token)) {
      return message;
    }
    vocab.pieces.push_back(ReplaceMetaSpace(token.bytes));
    vocab.scores.push_back(token.score);
  }
  return std::nullopt;
}

// The error message for bytes left after the expected tokens (the reader is not at the end):
// either more whole tokens than expected, or garbage after the last one.
std::string DescribeTrailing(Reader& r, int32_t expected_vocab_size, int32_t max_token_length) {
  const size_t trailing_at = r.offset();
  const size_t trailing = r.Remaining();
  int32_t extra = 0;
  bool whole_tokens = true;
  while (r.Remaining() > 0) {
    RawToken token;
    if (ReadToken(r, expected_vocab_size + extra, max_token_length, &token)) {
      whole_tokens = false;
      break;
    }
    ++extra;
  }
  if (whole_tokens) {
    return absl::StrCat("holds ", expected_vocab_size + extra, " tokens, expected ",
                        expected_vocab_size);
  }
  return absl::StrCat(trailing, " trailing bytes at byte ", trailing_at, " after token ",
                      expected_vocab_size - 1, " (the last expected token)");
}

// Fills vocab.types from the pieces: byte pieces, <unk> at 0, and <s>/</s> at 1 and 2 (whose
// "\n<s>\n" spellings are normalized).
void AssignTokenTypes(Vocabulary& vocab) {
  const int32_t n = static_cast<int32_t>(vocab.pieces.size());
  for (int32_t i = 0; i < n; ++i) {
    std::string& piece = vocab.pieces[static_cast<size_t>(i)];
    TokenType type = TokenType::kNormal;
    if (IsBytePiece(piece)) {
      type = TokenType::kByte;
    } else if (i == 0 && piece == "<unk>") {
      type = TokenType::kUnknown;
    } else if (i == 1 && (piece == "<s>" || piece == "\n<s>\n")) {
      type = TokenType::kControl;
      piece = "<s>";
    } else if (i == 2 && (piece == "</s>" || piece == "\n</s>\n")) {
      type = TokenType::kControl;
      piece = "</s>";
    }
    vocab.types.push_back(type);
  }
}

}  // namespace

absl::StatusOr<Vocabulary> ParseLlama2cTokenizer(std::string_view contents, std::string_view name,
                                                 int32_t expected_vocab_size) {
  const std::string file(name);
  auto error = [&](const std::string& message) {
    return absl::InvalidArgumentError(absl::StrCat(file, ": ", message));
  };
  if (expected_vocab_size <= 0) {
    return error(
        absl::StrCat("expected vocabulary size must be positive, got ", expected_vocab_size));
  }
  Reader r(contents);
  int32_t max_token_length = 0;
  if (std::optional<std::string> message = ReadMaxTokenLength(r, &max_token_length)) {
    return error(*message);
  }
  Vocabulary vocab;
  if (std::optional<std::string> message =
          ReadTokens(r, expected_vocab_size, max_token_length, vocab)) {
    return error(*message);
  }
  if (r.Remaining() > 0) {
    return error(DescribeTrailing(r, expected_vocab_size, max_token_length));
  }
  AssignTokenTypes(vocab);
  vocab.unk_id = 0;
  vocab.bos_id = 1;
  vocab.eos_id = 2;
  vocab.add_bos = true;
  vocab.add_space_prefix = true;
  return vocab;
}

absl::StatusOr<Vocabulary> ReadLlama2cTokenizer(const std::string& path,
                                                int32_t expected_vocab_size) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) {
    return absl::NotFoundError(absl::StrCat(path, ": cannot open the tokenizer file"));
  }
  const std::streamoff size = in.tellg();
  if (size < 0) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": cannot determine the file size"));
  }
  if (size > kMaxFileBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": file is ", size, " bytes, too large for a tokenizer"));
  }
  std::string contents(static_cast<size_t>(size), '\0');
  in.seekg(0);
  if (size > 0 && !in.read(contents.data(), size)) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": read failed"));
  }
  return ParseLlama2cTokenizer(contents, path, expected_vocab_size);
}

}  // namespace kvserve::engine
