#include "engine/tokenizer/llama2c_tokenizer_file.h"

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <limits>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kvserve::engine {
namespace {

using ::testing::HasSubstr;

const std::string kTok512 = std::string(KVSERVE_MODELS_DIR) + "/tok512.bin";
const std::string kTok105 = std::string(KVSERVE_MODELS_DIR) + "/babyllama/tok105.bin";

// Byte offsets in tok512.bin, worked out from the layout: a 4-byte header, then per token 8 bytes
// (score, length) plus the piece. Tokens 0..2 are "<unk>", "\n<s>\n", "\n</s>\n" (13, 13 and 14
// bytes), so token 3 starts at 44; the 256 byte pieces "<0xAB>" take 14 bytes each, so token 5
// starts at 72 and token 259 at 44 + 256 * 14 = 3628. Tokens 510 ("~") and 511 (U+200A, 3 bytes)
// start at 6207 and 6216; the file is 6227 bytes.
constexpr size_t kTok512Size = 6227;
constexpr size_t kToken5Score = 72;
constexpr size_t kToken5Length = 76;
constexpr size_t kToken510Length = 6211;
constexpr size_t kToken511Bytes = 6224;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

std::string WriteTemp(const std::string& name, const std::string& contents) {
  const std::string path = ::testing::TempDir() + "/" + name;
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(contents.data(), static_cast<std::streamsize>(contents.size()));
  return path;
}

void PutI32(std::string* data, size_t offset, int32_t value) {
  std::memcpy(data->data() + offset, &value, 4);  // the fixtures are little-endian, like x86
}

std::string I32(int32_t v) {
  std::string s(4, '\0');
  PutI32(&s, 0, v);
  return s;
}

std::string F32(float v) {
  std::string s(4, '\0');
  std::memcpy(s.data(), &v, 4);
  return s;
}

std::string Token(float score, std::string_view piece) {
  return F32(score) + I32(static_cast<int32_t>(piece.size())) + std::string(piece);
}

TEST(Llama2cTokenizerFileTest, ReadsTok512) {
  absl::StatusOr<Vocabulary> vocab = ReadLlama2cTokenizer(kTok512, 512);
  ASSERT_TRUE(vocab.ok()) << vocab.status();
  ASSERT_EQ(vocab->size(), 512);
  ASSERT_EQ(vocab->scores.size(), 512u);
  ASSERT_EQ(vocab->types.size(), 512u);
  EXPECT_EQ(vocab->pieces[0], "<unk>");
  EXPECT_EQ(vocab->types[0], TokenType::kUnknown);
  EXPECT_EQ(vocab->pieces[1], "<s>");
  EXPECT_EQ(vocab->types[1], TokenType::kControl);
  EXPECT_EQ(vocab->pieces[2], "</s>");
  EXPECT_EQ(vocab->types[2], TokenType::kControl);
  for (int b = 0; b < 256; ++b) {
    char expected[8];
    std::snprintf(expected, sizeof(expected), "<0x%02X>", b);
    EXPECT_EQ(vocab->pieces[3 + b], expected);
    EXPECT_EQ(vocab->types[3 + b], TokenType::kByte) << b;
  }
  EXPECT_EQ(vocab->pieces[259], " t");
  EXPECT_EQ(vocab->types[259], TokenType::kNormal);
  EXPECT_EQ(vocab->pieces[260], "he");
  EXPECT_FLOAT_EQ(vocab->scores[260], -1.0f);
  EXPECT_EQ(vocab->pieces[403], " Once");
  EXPECT_FLOAT_EQ(vocab->scores[403], -144.0f);
  EXPECT_EQ(vocab->pieces[410], " ");
  EXPECT_EQ(vocab->pieces[485], "\xC3\xA9");      // é
  EXPECT_EQ(vocab->pieces[511], "\xE2\x80\x8A");  // U+200A HAIR SPACE
  EXPECT_FLOAT_EQ(vocab->scores[511], -252.0f);
  EXPECT_EQ(vocab->unk_id, 0);
  EXPECT_EQ(vocab->bos_id, 1);
  EXPECT_EQ(vocab->eos_id, 2);
  EXPECT_TRUE(vocab->add_bos);
  EXPECT_TRUE(vocab->add_space_prefix);
}

TEST(Llama2cTokenizerFileTest, ReadsTok105WithoutBytePieces) {
  absl::StatusOr<Vocabulary> vocab = ReadLlama2cTokenizer(kTok105, 105);
  ASSERT_TRUE(vocab.ok()) << vocab.status();
  ASSERT_EQ(vocab->size(), 105);
  EXPECT_EQ(vocab->types[0], TokenType::kUnknown);
  EXPECT_EQ(vocab->types[1], TokenType::kControl);
  EXPECT_EQ(vocab->types[2], TokenType::kControl);
  EXPECT_EQ(vocab->pieces[3], " ");
  EXPECT_EQ(vocab->pieces[4], "e");
  EXPECT_EQ(vocab->pieces[104], "\xE2\x80\x8A");
  for (int i = 3; i < 105; ++i) EXPECT_EQ(vocab->types[i], TokenType::kNormal) << i;
}

TEST(Llama2cTokenizerFileTest, MissingFileIsNotFound) {
  const std::string path = ::testing::TempDir() + "/no_such_tokenizer.bin";
  absl::StatusOr<Vocabulary> vocab = ReadLlama2cTokenizer(path, 512);
  EXPECT_EQ(vocab.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(vocab.status().message(), HasSubstr("no_such_tokenizer.bin"));
}

TEST(Llama2cTokenizerFileTest, TruncatedFilesNameFileTokenAndOffset) {
  const std::string full = ReadFile(kTok512);
  ASSERT_EQ(full.size(), kTok512Size);
  struct Case {
    size_t keep;
    std::string expected;
  } cases[] = {
      {0, "truncated at byte 0 reading max_token_length"},
      {3, "truncated at byte 0 reading max_token_length"},
      {4, "holds 0 tokens, expected 512"},
      {kToken5Score + 2, "truncated at byte 72 reading the score of token 5"},
      {kToken5Length + 1, "truncated at byte 76 reading the length of token 5"},
      {kToken510Length + 3, "truncated at byte 6211 reading the length of token 510"},
      {kToken511Bytes + 2, "truncated at byte 6224 reading the 3 bytes of token 511"},
      {kToken511Bytes - 8, "holds 511 tokens, expected 512"},
  };
  for (const Case& c : cases) {
    const std::string path = WriteTemp("tok512_truncated.bin", full.substr(0, c.keep));
    absl::StatusOr<Vocabulary> vocab = ReadLlama2cTokenizer(path, 512);
    ASSERT_EQ(vocab.status().code(), absl::StatusCode::kInvalidArgument) << c.keep;
    EXPECT_THAT(vocab.status().message(), HasSubstr("tok512_truncated.bin: ")) << c.keep;
    EXPECT_THAT(vocab.status().message(), HasSubstr(c.expected)) << c.keep;
  }
}

TEST(Llama2cTokenizerFileTest, EveryTruncationIsAnErrorNotACrash) {
  const std::string full = ReadFile(kTok512);
  for (size_t keep = 0; keep < full.size(); ++keep) {
    absl::StatusOr<Vocabulary> vocab =
        ParseLlama2cTokenizer(std::string_view(full).substr(0, keep), "cut.bin", 512);
    ASSERT_EQ(vocab.status().code(), absl::StatusCode::kInvalidArgument) << keep;
    ASSERT_THAT(vocab.status().message(), HasSubstr("cut.bin: ")) << keep;
  }
}

TEST(Llama2cTokenizerFileTest, NegativeLength) {
  std::string data = ReadFile(kTok512);
  PutI32(&data, kToken5Length, -1);
  absl::StatusOr<Vocabulary> vocab =
      ReadLlama2cTokenizer(WriteTemp("tok512_negative.bin", data), 512);
  ASSERT_EQ(vocab.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(vocab.status().message(),
              HasSubstr("tok512_negative.bin: token 5 has a negative length (-1) at byte 76"));
}

TEST(Llama2cTokenizerFileTest, AbsurdLengths) {
  std::string data = ReadFile(kTok512);
  PutI32(&data, kToken5Length, 1 << 30);
  absl::StatusOr<Vocabulary> vocab = ParseLlama2cTokenizer(data, "huge.bin", 512);
  ASSERT_EQ(vocab.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(vocab.status().message(),
              HasSubstr("huge.bin: token 5 has length 1073741824 at byte 76, more than the "
                        "file's max_token_length 7"));

  data = ReadFile(kTok512);
  PutI32(&data, 0, -7);
  vocab = ParseLlama2cTokenizer(data, "header.bin", 512);
  ASSERT_EQ(vocab.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(vocab.status().message(), HasSubstr("header.bin: max_token_length at byte 0 is -7"));

  PutI32(&data, 0, 1 << 30);
  vocab = ParseLlama2cTokenizer(data, "header.bin", 512);
  EXPECT_THAT(vocab.status().message(),
              HasSubstr("header.bin: max_token_length at byte 0 is 1073741824"));
}

TEST(Llama2cTokenizerFileTest, NonFiniteScore) {
  std::string data = ReadFile(kTok512);
  const std::string nan = F32(std::numeric_limits<float>::quiet_NaN());
  data.replace(kToken5Score, 4, nan);
  absl::StatusOr<Vocabulary> vocab = ParseLlama2cTokenizer(data, "nan.bin", 512);
  ASSERT_EQ(vocab.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(vocab.status().message(), HasSubstr("nan.bin: token 5 has a non-finite score"));
  EXPECT_THAT(vocab.status().message(), HasSubstr("at byte 72"));
}

TEST(Llama2cTokenizerFileTest, WrongVocabularySize) {
  absl::StatusOr<Vocabulary> fewer = ReadLlama2cTokenizer(kTok512, 500);
  ASSERT_EQ(fewer.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(fewer.status().message(), HasSubstr("tok512.bin: holds 512 tokens, expected 500"));

  absl::StatusOr<Vocabulary> more = ReadLlama2cTokenizer(kTok512, 600);
  ASSERT_EQ(more.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(more.status().message(), HasSubstr("tok512.bin: holds 512 tokens, expected 600"));

  absl::StatusOr<Vocabulary> zero = ReadLlama2cTokenizer(kTok512, 0);
  EXPECT_EQ(zero.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(Llama2cTokenizerFileTest, TrailingBytes) {
  const std::string data = ReadFile(kTok512) + "xyz";
  absl::StatusOr<Vocabulary> vocab =
      ReadLlama2cTokenizer(WriteTemp("tok512_trailing.bin", data), 512);
  ASSERT_EQ(vocab.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(vocab.status().message(),
              HasSubstr("tok512_trailing.bin: 3 trailing bytes at byte 6227 after token 511"));
}

TEST(Llama2cTokenizerFileTest, ParsesTypesAndMetaSpace) {
  const std::string data = I32(8) + Token(0, "<unk>") + Token(0, "<s>") + Token(0, "</s>") +
                           Token(0, "<0x0A>") + Token(-1, "\xE2\x96\x81the") + Token(-2, "<0x") +
                           Token(-3, "");
  absl::StatusOr<Vocabulary> vocab = ParseLlama2cTokenizer(data, "small.bin", 7);
  ASSERT_TRUE(vocab.ok()) << vocab.status();
  ASSERT_EQ(vocab->size(), 7);
  EXPECT_EQ(vocab->types[0], TokenType::kUnknown);
  EXPECT_EQ(vocab->types[1], TokenType::kControl);
  EXPECT_EQ(vocab->types[2], TokenType::kControl);
  EXPECT_EQ(vocab->types[3], TokenType::kByte);
  EXPECT_EQ(vocab->pieces[4], " the");
  EXPECT_EQ(vocab->types[4], TokenType::kNormal);
  EXPECT_EQ(vocab->types[5], TokenType::kNormal);
  EXPECT_EQ(vocab->pieces[6], "");
  EXPECT_FLOAT_EQ(vocab->scores[5], -2.0f);
}

TEST(Llama2cTokenizerFileTest, SpecialTypesOnlyWhereThePiecesAre) {
  const std::string data = I32(4) + Token(0, "a") + Token(0, "b") + Token(0, "<s>");
  absl::StatusOr<Vocabulary> vocab = ParseLlama2cTokenizer(data, "odd.bin", 3);
  ASSERT_TRUE(vocab.ok()) << vocab.status();
  EXPECT_EQ(vocab->types[0], TokenType::kNormal);
  EXPECT_EQ(vocab->types[1], TokenType::kNormal);
  EXPECT_EQ(vocab->types[2], TokenType::kNormal);
}

}  // namespace
}  // namespace kvserve::engine
