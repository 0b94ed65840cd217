// EncodeAtMost: the tokens of Encode when they fit the bound, nothing otherwise, and never more
// work than the bound calls for.
#include <cstdint>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "engine/common/status_macros.h"
#include "engine/tokenizer/llama2c_tokenizer_file.h"
#include "engine/tokenizer/tokenizer.h"
#include "gtest/gtest.h"

namespace kvserve::engine {
namespace {

const Tokenizer& Tok512() {
  static const Tokenizer* const tokenizer = [] {
    absl::StatusOr<Vocabulary> vocab =
        ReadLlama2cTokenizer(std::string(KVSERVE_MODELS_DIR) + "/tok512.bin", 512);
    KVSERVE_CHECK(vocab.ok()) << vocab.status().ToString();
    return new Tokenizer(*std::move(vocab));
  }();
  return *tokenizer;
}

// Printable ASCII with a few multi-byte characters and stray bytes (byte fallback).
std::string RandomText(std::mt19937& rng, int length) {
  static const std::vector<std::string> kUnits = {
      "a", "b", "e", " ", "the", "Once", ".", "\n", "\xC3\xA9", "\xE2\x82\xAC", "\xFF", "z", "q"};
  std::string out;
  while (static_cast<int>(out.size()) < length) out += kUnits[rng() % kUnits.size()];
  return out;
}

TEST(BoundedEncodeTest, SameTokensAsEncodeWhenTheyFitNoneOtherwise) {
  const Tokenizer& tok = Tok512();
  std::mt19937 rng(7);
  for (int i = 0; i < 600; ++i) {
    const std::string text = RandomText(rng, 1 + static_cast<int>(rng() % 300));
    const bool add_bos = i % 2 == 0;
    const std::vector<int32_t> full = tok.Encode(text, add_bos);
    for (size_t limit : {size_t{0}, size_t{1}, full.size() - 1, full.size(), full.size() + 1,
                         full.size() * 3, text.size() * 8}) {
      const std::optional<std::vector<int32_t>> bounded = tok.EncodeAtMost(text, add_bos, limit);
      if (full.size() <= limit) {
        ASSERT_TRUE(bounded.has_value()) << "limit " << limit << " text \"" << text << "\"";
        EXPECT_EQ(*bounded, full);
      } else {
        EXPECT_FALSE(bounded.has_value()) << "limit " << limit << ", " << full.size() << " tokens";
      }
    }
  }
}

TEST(BoundedEncodeTest, LongestTokenBoundsTheTokenCount) {
  const Tokenizer& tok = Tok512();
  ASSERT_GE(tok.max_token_bytes(), 4u);
  size_t longest = 0;
  for (int32_t id = 0; id < tok.vocab_size(); ++id) {
    longest = std::max(longest, tok.TokenBytes(id).size());
  }
  EXPECT_GE(tok.max_token_bytes(), longest);
  // The text that packs the most bytes into a token: the longest piece, repeated.
  std::string best;
  for (int32_t id = 0; id < tok.vocab_size(); ++id) {
    if (tok.TokenBytes(id).size() == longest) best = tok.TokenBytes(id);
  }
  std::string text;
  for (int i = 0; i < 50; ++i) text += best;
  const size_t tokens = tok.Encode(text, false).size();
  EXPECT_GE(tokens * tok.max_token_bytes(), text.size());
}

TEST(BoundedEncodeTest, TextFarPastTheBoundIsNotRead) {
  const Tokenizer& tok = Tok512();
  // A view whose length no memory backs: refusing it must not read past the first bytes.
  const std::string backing(64, 'a');
  const std::string_view huge(backing.data(), size_t{1} << 40);
  EXPECT_FALSE(tok.EncodeAtMost(huge, true, 100).has_value());
  // Within the byte bound but more tokens than allowed: stray bytes are one fallback token each.
  const std::string bytes(10 * tok.max_token_bytes(), '\xFF');
  EXPECT_FALSE(tok.EncodeAtMost(bytes, false, 10).has_value());
  const std::vector<int32_t> all = tok.Encode(bytes, false);
  EXPECT_GE(all.size(), bytes.size());
  EXPECT_EQ(tok.EncodeAtMost(bytes, false, all.size()), all);
}

}  // namespace
}  // namespace kvserve::engine
