#include "engine/tokenizer/tokenizer.h"

#include <chrono>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "engine/common/status_macros.h"
#include "engine/model/model.h"
#include "engine/tokenizer/llama2c_tokenizer_file.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/engine/tokenizer/tokenizer_reference.h"

namespace kvserve::engine {
namespace {

using ::kvserve::engine::testing::ReferenceEncoder;
using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::IsEmpty;

Vocabulary LoadVocab(const std::string& relative, int32_t size) {
  absl::StatusOr<Vocabulary> vocab =
      ReadLlama2cTokenizer(std::string(KVSERVE_MODELS_DIR) + "/" + relative, size);
  KVSERVE_CHECK(vocab.ok()) << vocab.status().ToString();
  return *std::move(vocab);
}

const Tokenizer& Tok512() {
  static const Tokenizer* const tokenizer = new Tokenizer(LoadVocab("tok512.bin", 512));
  return *tokenizer;
}

const Tokenizer& Tok105() {
  static const Tokenizer* const tokenizer = new Tokenizer(LoadVocab("babyllama/tok105.bin", 105));
  return *tokenizer;
}

// Byte fallback ids in tok512: byte b is "<0xbb>", id 3 + b.
int32_t Byte512(unsigned char b) { return 3 + b; }

// Random text mixing ASCII, spaces, newlines, multi-byte characters (pieces and non-pieces) and
// whole vocabulary pieces, so that encoding exercises long merge chains and byte fallback.
std::string RandomText(std::mt19937& rng, const Vocabulary& vocab, int units) {
  // clang-format off
  static const std::vector<std::string> kFragments = {
      " ", " ", "  ", "\n", "\t", ".", ",", "!", "\"", "'", "e", "a", "t", "s", "x", "Q",
      "\xC3\xA9", "\xC3\xB1", "\xE6\x97\xA5", "\xE6\x9C\xAC", "\xE8\xAA\x9E",
      "\xF0\x9F\x99\x82", "\xE2\x80\x99", "\xE2\x80\x9C", "\xC2\xA0", "Once", " upon", " time",
      "Lily", " little", " friend", "ing", " the", "0", "~", "\x7F", std::string(1, '\0')};
  // clang-format on
  std::string out;
  for (int i = 0; i < units; ++i) {
    if (rng() % 3 == 0) {
      const std::string& piece = vocab.pieces[rng() % vocab.pieces.size()];
      if (vocab.types[&piece - vocab.pieces.data()] == TokenType::kNormal) out += piece;
    } else {
      out += kFragments[rng() % kFragments.size()];
    }
  }
  return out;
}

TEST(TokenizerTest, BasicAccessors) {
  const Tokenizer& tok = Tok512();
  EXPECT_EQ(tok.vocab_size(), 512);
  EXPECT_EQ(tok.bos_id(), 1);
  EXPECT_EQ(tok.eos_id(), 2);
  EXPECT_EQ(tok.unk_id(), 0);
  EXPECT_TRUE(tok.IsValidId(0));
  EXPECT_TRUE(tok.IsValidId(511));
  EXPECT_FALSE(tok.IsValidId(512));
  EXPECT_FALSE(tok.IsValidId(-1));
  EXPECT_TRUE(tok.has_byte_fallback());
  EXPECT_FALSE(Tok105().has_byte_fallback());
  EXPECT_EQ(tok.vocab().pieces[403], " Once");
}

// Worked out by hand from tok512's pieces and scores.
TEST(TokenizerTest, HandWorkedEncodingsTok512) {
  const Tokenizer& tok = Tok512();
  EXPECT_THAT(tok.Encode("", false), IsEmpty());
  EXPECT_THAT(tok.Encode("", true), ElementsAre(1));
  // " a" (261) is a piece.
  EXPECT_THAT(tok.Encode("a", true), ElementsAre(1, 261));
  // " Once" (403), " upon" (407), " a" (261), " time" (378) are pieces, and each is reachable by
  // merges of higher score than any merge across the word boundaries.
  EXPECT_THAT(tok.Encode("Once upon a time", true), ElementsAre(1, 403, 407, 261, 378));
  // U+65E5 is not a piece: its bytes E6 97 A5 fall back to byte pieces, which never merge with
  // the dummy-prefix space (410).
  EXPECT_THAT(tok.Encode("\xE6\x97\xA5", true),
              ElementsAre(1, 410, Byte512(0xE6), Byte512(0x97), Byte512(0xA5)));
  // é is piece 485, " é" is not.
  EXPECT_THAT(tok.Encode("\xC3\xA9", false), ElementsAre(410, 485));
  // Newline is not a piece: byte 0x0A.
  EXPECT_THAT(tok.Encode("\n", false), ElementsAre(410, Byte512('\n')));
  // A control piece is never produced from text: "<s>" is '<' (504), 's' (419), '>' (505), and
  // neither " <", "<s" nor "s>" is a piece, so the space (410) stays alone.
  EXPECT_THAT(tok.Encode("<s>", false), ElementsAre(410, 504, 419, 505));
}

// Expected ids produced by tests/engine/tokenizer/llama2c_encode_reference.py (a plain Python
// transcription of llama2.c's encode()) over tok512.bin, BOS included.
TEST(TokenizerTest, KnownEncodingsTok512) {
  const Tokenizer& tok = Tok512();
  EXPECT_THAT(tok.Encode("Lily and Tim played in the park.", true),
              ElementsAre(1, 317, 269, 326, 337, 266, 322, 265, 282, 295, 433, 426));
  EXPECT_THAT(tok.Encode("Hello, world!", true),
              ElementsAre(1, 346, 306, 414, 432, 263, 304, 341, 443));
  EXPECT_THAT(tok.Encode("\xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E", true),  // 日本語
              ElementsAre(1, 410, 233, 154, 168, 233, 159, 175, 235, 173, 161));
  EXPECT_THAT(tok.Encode("caf\xC3\xA9", true), ElementsAre(1, 280, 412, 431, 485));
  EXPECT_THAT(
      tok.Encode("The little girl said: \xE2\x80\x9CLet\xE2\x80\x99s go!\xE2\x80\x9D", true),
      ElementsAre(1, 291, 376, 298, 315, 421, 336, 467, 410, 465, 438, 316, 468, 419, 298, 414, 443,
                  466));
  EXPECT_THAT(tok.Encode("  two  spaces", true),
              ElementsAre(1, 410, 410, 259, 424, 414, 410, 262, 427, 412, 331, 419));
  EXPECT_THAT(tok.Encode("line one\nline two", true),
              ElementsAre(1, 278, 271, 411, 353, 411, 13, 421, 271, 411, 259, 424, 414));
  EXPECT_THAT(tok.Encode("\xF0\x9F\x99\x82 emoji", true),
              ElementsAre(1, 410, 243, 162, 156, 133, 344, 423, 414, 449, 417));
}

TEST(TokenizerTest, Tok105HasNoMergesAndFallsBackToUnk) {
  const Tokenizer& tok = Tok105();
  // Every tok105 piece is a single character: ' ' 3, 'H' 33, 'e' 4, 'l' 14, 'o' 7.
  EXPECT_THAT(tok.Encode("Hello", true), ElementsAre(1, 3, 33, 4, 14, 14, 7));
  // No byte pieces: a character that is not a piece is one unk (0), not one per byte.
  EXPECT_THAT(tok.Encode("\xE6\x97\xA5\xE6\x9C\xAC", true), ElementsAre(1, 3, 0, 0));
  EXPECT_THAT(tok.Encode("a\nb", false), ElementsAre(3, 5, 0, 23));
  EXPECT_THAT(tok.Encode("\xC3\xA9", false), ElementsAre(3, 78));  // é is piece 78
  // Invalid UTF-8: each stray byte is one unk.
  EXPECT_THAT(tok.Encode("\xFF\x80", false), ElementsAre(3, 0, 0));
  EXPECT_EQ(tok.Decode(tok.Encode("a\xE6\x97\xA5"
                                  "b",
                                  true)),
            "ab");
}

TEST(TokenizerTest, MatchesReferenceOnRandomText) {
  for (const Tokenizer* tok : {&Tok512(), &Tok105()}) {
    const ReferenceEncoder reference(tok->vocab());
    std::mt19937 rng(1234);
    for (int i = 0; i < 1500; ++i) {
      const std::string text = RandomText(rng, tok->vocab(), 1 + static_cast<int>(rng() % 40));
      const bool add_bos = i % 2 == 0;
      ASSERT_EQ(tok->Encode(text, add_bos), reference.Encode(text, add_bos))
          << "vocab " << tok->vocab_size() << " text \"" << text << "\"";
    }
  }
}

TEST(TokenizerTest, MatchesReferenceOnLongText) {
  const Tokenizer& tok = Tok512();
  const ReferenceEncoder reference(tok.vocab());
  std::mt19937 rng(99);
  for (int i = 0; i < 3; ++i) {
    const std::string text = RandomText(rng, tok.vocab(), 600);
    ASSERT_EQ(tok.Encode(text, true), reference.Encode(text, true));
  }
}

TEST(TokenizerTest, MatchesReferenceOnRandomBytes) {
  const Tokenizer& tok = Tok512();
  const ReferenceEncoder reference(tok.vocab());
  const ReferenceEncoder reference105(Tok105().vocab());
  // Lead bytes, continuation bytes of every range, and bytes that never occur in UTF-8.
  static constexpr unsigned char kBytes[] = {'a',  'e',  ' ',  0x80, 0x8F, 0x90, 0x9F,
                                             0xA0, 0xA9, 0xBF, 0xC0, 0xC3, 0xDF, 0xE0,
                                             0xE2, 0xE6, 0xED, 0xF0, 0xF4, 0xF5, 0xFF};
  std::mt19937 rng(7);
  for (int i = 0; i < 2000; ++i) {
    std::string bytes(rng() % 24, '\0');
    for (char& c : bytes) {
      c = static_cast<char>(rng() % 2 == 0 ? kBytes[rng() % sizeof(kBytes)] : rng());
    }
    const std::vector<int32_t> ids = tok.Encode(bytes, false);
    ASSERT_EQ(ids, reference.Encode(bytes, false));
    for (const int32_t id : ids) ASSERT_TRUE(tok.IsValidId(id));
    // With all 256 byte pieces every byte string survives a round trip.
    ASSERT_EQ(tok.Decode(ids), bytes);
    ASSERT_EQ(tok.Decode(tok.Encode(bytes, true)), bytes);
    // Without byte pieces each stray byte is one unk.
    const std::vector<int32_t> ids105 = Tok105().Encode(bytes, true);
    ASSERT_EQ(ids105, reference105.Encode(bytes, true));
    for (const int32_t id : ids105) ASSERT_TRUE(Tok105().IsValidId(id));
  }
}

TEST(TokenizerTest, RoundTrips) {
  const std::vector<std::string> texts = {
      "Once upon a time, there was a little girl named Lily.",
      "Hello",
      " leading space",
      "   three leading spaces",
      "trailing space ",
      "trailing spaces   ",
      "multiple   inner    spaces",
      " ",
      "  ",
      "\n",
      "line one\nline two\n\nline four\n",
      "\ttab",
      "caf\xC3\xA9 na\xC3\xAFve",                         // é, ï
      "\xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E",             // 日本語
      "emoji \xF0\x9F\x99\x82\xF0\x9F\x8E\x89 end",       // 🙂🎉
      "\xE2\x80\x9CQuoted\xE2\x80\x9D and \xE2\x80\x99",  // “Quoted” and ’
      "<s> and </s> and <0x41> as text",
      std::string("nul\0inside", 10),
  };
  for (const std::string& text : texts) {
    EXPECT_EQ(Tok512().Decode(Tok512().Encode(text, true)), text);
    EXPECT_EQ(Tok512().Decode(Tok512().Encode(text, false)), text);
  }
  // tok105 covers only its own characters (no '\n', '\t', '\0').
  for (const std::string text : {"Hello, world!", "  spaced  out  ", "\xC3\xA9t\xC3\xA9", "x"}) {
    EXPECT_EQ(Tok105().Decode(Tok105().Encode(text, true)), text);
  }
  std::mt19937 rng(42);
  for (int i = 0; i < 500; ++i) {
    const std::string text = RandomText(rng, Tok512().vocab(), 1 + static_cast<int>(rng() % 30));
    ASSERT_EQ(Tok512().Decode(Tok512().Encode(text, i % 2 == 0)), text);
  }
}

TEST(TokenizerTest, TokenBytes) {
  const Tokenizer& tok = Tok512();
  EXPECT_EQ(tok.TokenBytes(Byte512('A')), "A");
  EXPECT_EQ(tok.TokenBytes(Byte512(0xE6)), "\xE6");
  EXPECT_EQ(tok.TokenBytes(Byte512(0)), std::string(1, '\0'));
  EXPECT_EQ(tok.TokenBytes(261), " a");
  EXPECT_EQ(tok.TokenBytes(485), "\xC3\xA9");
  EXPECT_EQ(tok.TokenBytes(0), "");
  EXPECT_EQ(tok.TokenBytes(1), "");
  EXPECT_EQ(tok.TokenBytes(2), "");
  EXPECT_EQ(tok.TokenBytes(-1), "");
  EXPECT_EQ(tok.TokenBytes(512), "");
}

TEST(TokenizerTest, DecodeDropsTheDummyPrefixOnlyAtTheStartAndAfterBos) {
  const Tokenizer& tok = Tok512();
  EXPECT_EQ(tok.Decode({1, 403, 407}), "Once upon");
  EXPECT_EQ(tok.Decode({403, 407}), "Once upon");
  EXPECT_EQ(tok.Decode({403, 407}, /*at_sequence_start=*/false), " Once upon");
  EXPECT_EQ(tok.Decode({1, 403, 2, 1, 403}), "OnceOnce");
  EXPECT_EQ(tok.Decode({2, 403}), " Once");  // EOS is not BOS
  EXPECT_EQ(tok.Decode({1, 410, 410, 259}), "  t");
  EXPECT_EQ(tok.Decode({1, Byte512(' '), Byte512('x')}), "x");
  EXPECT_EQ(tok.Decode({1, 0, 403}), " Once");  // unk directly follows BOS, not " Once"
  EXPECT_EQ(tok.Decode({1, 2}), "");
  EXPECT_EQ(tok.Decode({-5, 1, 9999, 426}), ".");
  EXPECT_EQ(tok.Decode({}), "");
}

TEST(TokenizerTest, TieBreaksLeftmostAndHigherScoreFirst) {
  Vocabulary vocab;
  vocab.pieces = {"<unk>", "<s>", "</s>", "a", "b", "ab", "ba", "abab"};
  vocab.scores = {0, 0, 0, -10, -10, -1, -1, -5};
  vocab.types = {TokenType::kUnknown, TokenType::kControl, TokenType::kControl, TokenType::kNormal,
                 TokenType::kNormal,  TokenType::kNormal,  TokenType::kNormal,  TokenType::kNormal};
  vocab.add_space_prefix = false;
  absl::StatusOr<Tokenizer> tok = Tokenizer::Create(vocab);
  ASSERT_TRUE(tok.ok()) << tok.status();
  // "ab" and "ba" tie at -1: the leftmost pair merges first.
  EXPECT_THAT(tok->Encode("aba", false), ElementsAre(5, 3));
  EXPECT_THAT(tok->Encode("bab", false), ElementsAre(6, 4));
  // a b a b -> ab a b -> ab ab -> abab.
  EXPECT_THAT(tok->Encode("abab", false), ElementsAre(7));
  // No space prefix, no space piece, no byte pieces: ' ' is unk.
  EXPECT_THAT(tok->Encode("a b", true), ElementsAre(1, 3, 0, 4));

  vocab.scores[6] = 0;  // now "ba" outranks "ab"
  absl::StatusOr<Tokenizer> tok2 = Tokenizer::Create(vocab);
  ASSERT_TRUE(tok2.ok());
  EXPECT_THAT(tok2->Encode("aba", false), ElementsAre(3, 6));
  EXPECT_EQ(tok2->Encode("aba", false), ReferenceEncoder(tok2->vocab()).Encode("aba", false));
}

TEST(TokenizerTest, ControlPiecesAreNeverMatchedFromText) {
  Vocabulary vocab;
  vocab.pieces = {"<unk>", "<s>", "</s>", "<", "s", ">", "<s"};
  vocab.scores = {0, 0, 0, -1, -1, -1, 0};
  vocab.types = {TokenType::kUnknown, TokenType::kControl, TokenType::kControl, TokenType::kNormal,
                 TokenType::kNormal,  TokenType::kNormal,  TokenType::kNormal};
  vocab.add_space_prefix = false;
  const Tokenizer tok(vocab);
  EXPECT_THAT(tok.Encode("<s>", false), ElementsAre(6, 5));
  EXPECT_THAT(tok.Encode("<unk>", false), ElementsAre(3, 0, 0, 0, 5));
}

TEST(TokenizerTest, CreateRejectsBrokenVocabularies) {
  Vocabulary empty;
  EXPECT_EQ(Tokenizer::Create(empty).status().code(), absl::StatusCode::kInvalidArgument);

  Vocabulary vocab;
  vocab.pieces = {"<unk>", "<s>", "</s>"};
  vocab.scores = {0, 0};
  vocab.types = {TokenType::kUnknown, TokenType::kControl, TokenType::kControl};
  EXPECT_EQ(Tokenizer::Create(vocab).status().code(), absl::StatusCode::kInvalidArgument);
  vocab.scores = {0, 0, 0};
  EXPECT_TRUE(Tokenizer::Create(vocab).ok());
  vocab.eos_id = 3;
  EXPECT_EQ(Tokenizer::Create(vocab).status().code(), absl::StatusCode::kInvalidArgument);
  vocab.eos_id = 2;
  vocab.unk_id = 7;
  EXPECT_EQ(Tokenizer::Create(vocab).status().code(), absl::StatusCode::kInvalidArgument);
  vocab.unk_id = -1;
  EXPECT_TRUE(Tokenizer::Create(vocab).ok());
}

// stories260K.gguf carries the same vocabulary as tok512.bin; both readers must agree, so that a
// model tokenizes identically whichever file it was loaded from.
TEST(TokenizerTest, GgufAndLlama2cVocabulariesAgree) {
  absl::StatusOr<std::unique_ptr<LoadedModel>> model =
      LoadModel(std::string(KVSERVE_MODELS_DIR) + "/stories260K.gguf");
  ASSERT_TRUE(model.ok()) << model.status();
  const Vocabulary& gguf = (*model)->vocab();
  const Vocabulary& bin = Tok512().vocab();
  EXPECT_EQ(gguf.pieces, bin.pieces);
  EXPECT_EQ(gguf.types, bin.types);
  EXPECT_EQ(gguf.scores, bin.scores);
  EXPECT_EQ(gguf.bos_id, bin.bos_id);
  EXPECT_EQ(gguf.eos_id, bin.eos_id);
  EXPECT_EQ(gguf.unk_id, bin.unk_id);
  EXPECT_EQ(gguf.add_space_prefix, bin.add_space_prefix);
  const Tokenizer from_gguf(gguf);
  std::mt19937 rng(21);
  for (int i = 0; i < 200; ++i) {
    const std::string text = RandomText(rng, bin, 20);
    ASSERT_EQ(from_gguf.Encode(text, true), Tok512().Encode(text, true));
  }
}

TEST(TokenizerTest, EncodesHundredKilobytesQuickly) {
  const Tokenizer& tok = Tok512();
  std::mt19937 rng(5);
  std::string text;
  while (text.size() < 100 * 1024) text += RandomText(rng, tok.vocab(), 50);
  // A single long word of one repeated letter forces a long chain of merges in one place.
  text += std::string(20000, 'e');
  const auto start = std::chrono::steady_clock::now();
  const std::vector<int32_t> ids = tok.Encode(text, true);
  const double ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(tok.Decode(ids), text);
  // O(n log n) takes a few ms here; a quadratic scan would take tens of seconds.
  EXPECT_LT(ms, 1000.0) << ids.size() << " tokens";
}

TEST(TokenizerTest, ConcurrentEncodeAgrees) {
  const Tokenizer& tok = Tok512();
  std::mt19937 rng(11);
  std::vector<std::string> texts;
  for (int i = 0; i < 200; ++i) texts.push_back(RandomText(rng, tok.vocab(), 30));
  std::vector<std::vector<int32_t>> expected;
  for (const std::string& t : texts) expected.push_back(tok.Encode(t, true));
  std::vector<int> mismatches(4, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 5; ++round) {
        for (size_t i = 0; i < texts.size(); ++i) {
          if (tok.Encode(texts[i], true) != expected[i]) ++mismatches[t];
        }
      }
    });
  }
  for (std::thread& th : threads) th.join();
  EXPECT_THAT(mismatches, ElementsAreArray({0, 0, 0, 0}));
}

}  // namespace
}  // namespace kvserve::engine
