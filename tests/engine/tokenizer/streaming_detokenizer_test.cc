#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "engine/common/status_macros.h"
#include "engine/tokenizer/llama2c_tokenizer_file.h"
#include "engine/tokenizer/tokenizer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/engine/tokenizer/tokenizer_reference.h"

namespace kvserve::engine {
namespace {

using ::kvserve::engine::testing::RefIsValidUtf8;
using ::kvserve::engine::testing::RefReplaceInvalid;
using ::testing::ElementsAre;

constexpr char kFffd[] = "\xEF\xBF\xBD";

const Tokenizer& Tok512() {
  static const Tokenizer* const tokenizer = [] {
    absl::StatusOr<Vocabulary> vocab =
        ReadLlama2cTokenizer(std::string(KVSERVE_MODELS_DIR) + "/tok512.bin", 512);
    KVSERVE_CHECK(vocab.ok()) << vocab.status().ToString();
    return new Tokenizer(*std::move(vocab));
  }();
  return *tokenizer;
}

int32_t Byte(unsigned char b) { return 3 + b; }  // tok512's "<0xbb>" pieces

// Feeds `ids` one at a time; returns every delta, the flush output last.
std::vector<std::string> Stream(const Tokenizer& tok, const std::vector<int32_t>& ids,
                                bool at_sequence_start = true) {
  StreamingDetokenizer detok(tok, at_sequence_start);
  std::vector<std::string> deltas;
  for (const int32_t id : ids) deltas.push_back(detok.Feed(id));
  deltas.push_back(detok.Flush());
  return deltas;
}

std::string Join(const std::vector<std::string>& parts) {
  std::string out;
  for (const std::string& p : parts) out += p;
  return out;
}

TEST(StreamingDetokenizerTest, HoldsBackSplitCharacters) {
  const Tokenizer& tok = Tok512();
  // 日 = E6 97 A5, one byte token each.
  EXPECT_THAT(Stream(tok, {1, 410, Byte(0xE6), Byte(0x97), Byte(0xA5), 426}),
              ElementsAre("", "", "", "", "\xE6\x97\xA5", ".", ""));
  // A 4-byte emoji.
  EXPECT_THAT(Stream(tok, {Byte(0xF0), Byte(0x9F), Byte(0x99), Byte(0x82)}),
              ElementsAre("", "", "", "\xF0\x9F\x99\x82", ""));
}

TEST(StreamingDetokenizerTest, AppliesTheDummyPrefixRule) {
  const Tokenizer& tok = Tok512();
  EXPECT_THAT(Stream(tok, {1, 403, 407}), ElementsAre("", "Once", " upon", ""));
  EXPECT_THAT(Stream(tok, {403, 407}), ElementsAre("Once", " upon", ""));
  EXPECT_THAT(Stream(tok, {403, 407}, /*at_sequence_start=*/false),
              ElementsAre(" Once", " upon", ""));
  EXPECT_THAT(Stream(tok, {1, 403, 1, 403}), ElementsAre("", "Once", "", "Once", ""));
}

TEST(StreamingDetokenizerTest, ReplacesBytesThatCanNeverBeValid) {
  const Tokenizer& tok = Tok512();
  // A stray continuation byte and 0xFF are replaced at once.
  EXPECT_THAT(Stream(tok, {Byte(0x80), Byte(0xFF), 261}), ElementsAre(kFffd, kFffd, " a", ""));
  // A lead byte followed by a non-continuation: one U+FFFD for the lead, then the text.
  EXPECT_THAT(Stream(tok, {Byte(0xE6), 261}), ElementsAre("", std::string(kFffd) + " a", ""));
  // E6 97 then an ASCII byte: the two-byte maximal subpart becomes one U+FFFD.
  EXPECT_THAT(Stream(tok, {Byte(0xE6), Byte(0x97), Byte('x')}),
              ElementsAre("", "", std::string(kFffd) + "x", ""));
  // Overlong (C0 80) and surrogate (ED A0 80) forms are ill-formed.
  EXPECT_EQ(Join(Stream(tok, {Byte(0xC0), Byte(0x80)})), std::string(kFffd) + kFffd);
  EXPECT_EQ(Join(Stream(tok, {Byte(0xED), Byte(0xA0), Byte(0x80)})),
            std::string(kFffd) + kFffd + kFffd);
}

TEST(StreamingDetokenizerTest, FlushReplacesAnIncompleteTailAndResets) {
  const Tokenizer& tok = Tok512();
  StreamingDetokenizer detok(tok);
  EXPECT_EQ(detok.Feed(403), "Once");
  EXPECT_EQ(detok.Feed(Byte(0xE6)), "");
  EXPECT_EQ(detok.Feed(Byte(0x97)), "");
  EXPECT_EQ(detok.pending_bytes(), 2u);
  EXPECT_EQ(detok.Flush(), kFffd);
  EXPECT_EQ(detok.pending_bytes(), 0u);
  EXPECT_EQ(detok.Flush(), "");
  // After a flush the detokenizer starts a new sequence.
  EXPECT_EQ(detok.Feed(403), "Once");
}

TEST(StreamingDetokenizerTest, ControlAndInvalidIdsEmitNothing) {
  const Tokenizer& tok = Tok512();
  EXPECT_THAT(Stream(tok, {1, 2, 0, -3, 4096}), ElementsAre("", "", "", "", "", ""));
}

TEST(StreamingDetokenizerTest, EveryDeltaIsValidAndTheStreamEqualsDecode) {
  const Tokenizer& tok = Tok512();
  const std::vector<std::string> texts = {
      "Once upon a time, there was a little girl named Lily.",
      "\xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E and \xF0\x9F\x99\x82\xF0\x9F\x8E\x89!",
      "  caf\xC3\xA9\n\n\xE2\x80\x9Cquote\xE2\x80\x9D  ",
      "\xC8\xA7\xD0\x96\xE0\xA4\x85\xEA\xB0\x80\xF4\x8F\xBF\xBF",  // ȧЖअ가 U+10FFFF
  };
  std::mt19937 rng(3);
  std::vector<std::string> all = texts;
  // Random valid text from random code points of every UTF-8 length.
  for (int i = 0; i < 300; ++i) {
    std::string s;
    for (int k = 0, n = 1 + static_cast<int>(rng() % 20); k < n; ++k) {
      uint32_t cp = 0;
      switch (rng() % 4) {
        case 0:
          cp = 0x20 + rng() % 0x5F;
          break;
        case 1:
          cp = 0x80 + rng() % 0x780;
          break;
        case 2:
          cp = 0x800 + rng() % 0xF800;
          break;
        default:
          cp = 0x10000 + rng() % 0x100000;
          break;
      }
      if (cp >= 0xD800 && cp <= 0xDFFF) cp = 'x';
      if (cp < 0x80) {
        s += static_cast<char>(cp);
      } else if (cp < 0x800) {
        s += static_cast<char>(0xC0 | (cp >> 6));
        s += static_cast<char>(0x80 | (cp & 0x3F));
      } else if (cp < 0x10000) {
        s += static_cast<char>(0xE0 | (cp >> 12));
        s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        s += static_cast<char>(0x80 | (cp & 0x3F));
      } else {
        s += static_cast<char>(0xF0 | (cp >> 18));
        s += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
        s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        s += static_cast<char>(0x80 | (cp & 0x3F));
      }
    }
    all.push_back(s);
  }
  for (const std::string& text : all) {
    ASSERT_TRUE(RefIsValidUtf8(text));
    for (const bool add_bos : {true, false}) {
      const std::vector<int32_t> ids = tok.Encode(text, add_bos);
      const std::vector<std::string> deltas = Stream(tok, ids);
      for (const std::string& d : deltas) ASSERT_TRUE(RefIsValidUtf8(d)) << text;
      ASSERT_EQ(Join(deltas), tok.Decode(ids));
      ASSERT_EQ(Join(deltas), text);
    }
  }
}

TEST(StreamingDetokenizerTest, RandomIdsNeverProduceBrokenUtf8) {
  const Tokenizer& tok = Tok512();
  std::mt19937 rng(17);
  for (int i = 0; i < 3000; ++i) {
    std::vector<int32_t> ids;
    for (int k = 0, n = static_cast<int>(rng() % 16); k < n; ++k) {
      // Mostly byte tokens of the lead/continuation ranges, so that sequences split and break.
      const uint32_t pick = rng() % 8;
      if (pick < 5) {
        static constexpr unsigned char kInteresting[] = {0x41, 0x80, 0x8F, 0x90, 0x9F, 0xA0,
                                                         0xBF, 0xC0, 0xC2, 0xDF, 0xE0, 0xE6,
                                                         0xED, 0xEF, 0xF0, 0xF4, 0xF5, 0xFF};
        ids.push_back(Byte(kInteresting[rng() % sizeof(kInteresting)]));
      } else if (pick < 6) {
        ids.push_back(Byte(static_cast<unsigned char>(rng())));
      } else {
        ids.push_back(static_cast<int32_t>(rng() % 514) - 1);  // any id, some invalid
      }
    }
    const bool at_start = i % 2 == 0;
    const std::vector<std::string> deltas = Stream(tok, ids, at_start);
    for (const std::string& d : deltas) ASSERT_TRUE(RefIsValidUtf8(d));
    const std::string decoded = tok.Decode(ids, at_start);
    ASSERT_EQ(Join(deltas), RefReplaceInvalid(decoded));
    if (RefIsValidUtf8(decoded)) {
      ASSERT_EQ(Join(deltas), decoded);
    }
  }
}

}  // namespace
}  // namespace kvserve::engine
