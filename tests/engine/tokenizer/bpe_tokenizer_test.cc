// Byte-level BPE and special tokens: the vocab fixtures' vectors through the library, the fast
// pre-tokenizers against ICU's regex engine, special-token handling and the end-of-generation set.
#include "engine/tokenizer/bpe_tokenizer.h"

#include <cctype>
#include <cstdint>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "engine/common/status_macros.h"
#include "engine/model/gguf_model.h"
#include "engine/model/gguf_writer.h"
#include "engine/tokenizer/pre_tokenizer.h"
#include "engine/tokenizer/tokenizer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/engine/tokenizer/vocab_vectors.h"

namespace kvserve::engine {
namespace {

using ::kvserve::engine::testing::ReadVocabVectors;
using ::kvserve::engine::testing::VocabDir;
using ::kvserve::engine::testing::VocabFiles;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

// Tokenizers of the fixtures, loaded once.
const Tokenizer& VocabTokenizer(const std::string& file) {
  static auto* cache = new std::map<std::string, Tokenizer>();
  auto it = cache->find(file);
  if (it == cache->end()) {
    absl::StatusOr<Vocabulary> vocab = ReadGgufVocabularyFile(VocabDir() + "/" + file);
    KVSERVE_CHECK(vocab.ok()) << vocab.status().ToString();
    absl::StatusOr<Tokenizer> tok = Tokenizer::Create(*std::move(vocab));
    KVSERVE_CHECK(tok.ok()) << tok.status().ToString();
    it = cache->emplace(file, *std::move(tok)).first;
  }
  return it->second;
}

const Tokenizer& Llama3() { return VocabTokenizer("ggml-vocab-llama-bpe.derived.gguf"); }

class VocabVectorsTest : public ::testing::TestWithParam<std::string> {};

TEST_P(VocabVectorsTest, EncodeMatchesVectorsAndDecodeRoundTrips) {
  const std::vector<testing::VocabVector> vectors = ReadVocabVectors(GetParam());
  ASSERT_EQ(vectors.size(), 46u) << "fixture vectors of " << GetParam() << " in " << VocabDir();
  const Tokenizer& tok = VocabTokenizer(GetParam());
  for (const testing::VocabVector& v : vectors) {
    const std::vector<int32_t> ids = tok.Encode(v.text, EncodeOptions{});
    EXPECT_EQ(ids, v.ids) << GetParam() << ": '" << v.text << "'";
    // The legacy entry point agrees for a byte-level vocabulary without BOS.
    if (tok.kind() == TokenizerKind::kByteLevelBpe) {
      EXPECT_EQ(tok.Encode(v.text, /*add_bos=*/false), v.ids);
    }
    // Lossless: every byte has a token in these vocabularies.
    EXPECT_EQ(tok.Decode(ids), v.text) << GetParam();
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, VocabVectorsTest, ::testing::ValuesIn(VocabFiles()),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           std::string name;
                           for (const char c : info.param.substr(11)) {  // after "ggml-vocab-"
                             if (c == '.') break;
                             name += std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
                           }
                           return name;
                         });

TEST(VocabLoadingTest, KindsAndPreOfTheFixtures) {
  EXPECT_EQ(VocabTokenizer("ggml-vocab-llama-spm.gguf").kind(), TokenizerKind::kSentencePiece);
  EXPECT_EQ(Llama3().kind(), TokenizerKind::kByteLevelBpe);
  EXPECT_EQ(Llama3().pre(), "llama-bpe");
  EXPECT_EQ(VocabTokenizer("ggml-vocab-falcon.gguf").pre(), "falcon");
  EXPECT_TRUE(Llama3().vocab().add_bos);
  EXPECT_FALSE(VocabTokenizer("ggml-vocab-gpt-2.gguf").vocab().add_bos);  // no key: BPE default
}

// ---- pre-tokenizers: the hand-written splitters against ICU's regex engine ---------------------

std::string Utf8(uint32_t cp) {
  std::string s;
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
  return s;
}

// Random text over characters that exercise every alternative: letters, digits and numbers of
// several scripts, apostrophes and contractions, ASCII and Unicode white space, CR/LF,
// punctuation, symbols, emoji.
std::string RandomText(std::mt19937& rng, int length) {
  static const std::vector<uint32_t> pool = {
      'a',    'Z',    's',    'S',    't',     'r',    'e',    'v',    'l',     'L',    'm',
      'd',    'D',    '0',    '7',    '\'',    ' ',    ' ',    ' ',    '\t',    '\n',   '\r',
      '\v',   '!',    '.',    ',',    '$',     '+',    '<',    '|',    '`',     '^',    '~',
      '"',    '(',    0xA0,   0x85,   0x3000,  0x2028, 0x1680, 0xE9,   0x4E2D,  0x3042, 0x0416,
      0x05D0, 0x0661, 0x00B2, 0x2167, 0x1F600, 0x2014, 0x00BF, 0x0301, 0x1D400, 0xFF01, 0x00B5,
  };
  std::uniform_int_distribution<size_t> pick(0, pool.size() - 1);
  std::string text;
  for (int i = 0; i < length; ++i) text += Utf8(pool[pick(rng)]);
  return text;
}

TEST(PreTokenizerTest, FastSplittersEqualIcuRegex) {
  std::mt19937 rng(1234);
  for (const std::string pre :
       {"llama-bpe", "qwen2", "gpt-2", "starcoder", "falcon", "default", "deepseek-llm"}) {
    auto fast = PreTokenizer::Create(pre, PreTokenizer::Engine::kFast);
    auto regex = PreTokenizer::Create(pre, PreTokenizer::Engine::kRegex);
    ASSERT_TRUE(fast.ok()) << fast.status();
    ASSERT_TRUE(regex.ok()) << regex.status();
    for (int trial = 0; trial < 1500; ++trial) {
      const std::string text = RandomText(rng, 1 + trial % 40);
      std::vector<std::string_view> a, b;
      fast->Split(text, &a);
      regex->Split(text, &b);
      ASSERT_EQ(a, b) << pre << ": '" << text << "'";
    }
  }
}

TEST(PreTokenizerTest, Llama3SplitsAsTheReferenceRegex) {
  auto pre = PreTokenizer::Create("llama-bpe");
  ASSERT_TRUE(pre.ok());
  std::vector<std::string_view> pieces;
  pre->Split("Hello world  it's 12345!!\n\n  x", &pieces);
  EXPECT_THAT(pieces, ElementsAre("Hello", " world", " ", " it", "'s", " ", "123", "45", "!!\n\n",
                                  " ", " x"));
  pieces.clear();
  // Categories beyond ASCII: Cyrillic letters, Arabic-Indic digits, an ideographic space.
  pre->Split("\xD0\x96\xD0\xB8\xD9\xA1\xD9\xA2\xE3\x80\x80x", &pieces);
  EXPECT_THAT(pieces, ElementsAre("\xD0\x96\xD0\xB8", "\xD9\xA1\xD9\xA2", "\xE3\x80\x80x"));
}

TEST(PreTokenizerTest, LongWhiteSpaceRunsTakeLinearTime) {
  // 200k spaces before a digit: a backtracking \s+$ would take ~10^10 steps.
  const std::string text = std::string(200000, ' ') + "5";
  for (const std::string pre : {"deepseek-llm", "llama-bpe", "gpt-2", "falcon"}) {
    auto p = PreTokenizer::Create(pre);
    ASSERT_TRUE(p.ok());
    std::vector<std::string_view> pieces;
    p->Split(text, &pieces);
    std::string joined;
    for (const std::string_view piece : pieces) joined += piece;
    EXPECT_EQ(joined, text) << pre;
  }
}

TEST(PreTokenizerTest, UnknownPreIsAnErrorNamingIt) {
  auto pre = PreTokenizer::Create("no-such-pre");
  ASSERT_FALSE(pre.ok());
  EXPECT_EQ(pre.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(pre.status().message(), HasSubstr("'no-such-pre'"));
  EXPECT_THAT(pre.status().message(), HasSubstr("llama-bpe"));

  Vocabulary vocab = Llama3().vocab();
  vocab.pre = "made-up-pre";
  auto tok = Tokenizer::Create(std::move(vocab));
  ASSERT_FALSE(tok.ok());
  EXPECT_THAT(tok.status().message(), HasSubstr("'made-up-pre'"));
}

// A vocab-only GGUF (no tensors, architecture "made-up") with the given tokenizer keys.
absl::StatusOr<Vocabulary> ReadWrittenVocab(const std::string& model, const std::string& pre) {
  GgufWriter w;
  w.SetString("general.architecture", "made-up");
  w.SetString("tokenizer.ggml.model", model);
  w.SetString("tokenizer.ggml.pre", pre);
  w.SetArray("tokenizer.ggml.tokens",
             GgufArray(std::vector<std::string>{"a", "b", "ab", "<|endoftext|>"}));
  w.SetArray("tokenizer.ggml.token_type", GgufArray(std::vector<int32_t>{1, 1, 1, 3}));
  w.SetArray("tokenizer.ggml.merges", GgufArray(std::vector<std::string>{"a b"}));
  auto bytes = w.Serialize();
  KVSERVE_CHECK(bytes.ok());
  static std::vector<std::string>* keep = new std::vector<std::string>();
  keep->push_back(*std::move(bytes));
  auto file = GgufFile::Parse(
      absl::Span<const uint8_t>(reinterpret_cast<const uint8_t*>(keep->back().data()),
                                keep->back().size()),
      "written.gguf");
  if (!file.ok()) return file.status();
  return ReadGgufVocabulary(*file);
}

TEST(VocabLoadingTest, VocabOnlyGgufOfAnyArchitecture) {
  auto vocab = ReadWrittenVocab("gpt2", "gpt-2");
  ASSERT_TRUE(vocab.ok()) << vocab.status();
  EXPECT_EQ(vocab->kind, TokenizerKind::kByteLevelBpe);
  EXPECT_EQ(vocab->bos_id, 3);  // no bos_token_id: <|endoftext|>
  EXPECT_EQ(vocab->eos_id, 3);
  EXPECT_FALSE(vocab->add_bos);
  const Tokenizer tok(*std::move(vocab));
  EXPECT_THAT(tok.Encode("abab", EncodeOptions{}), ElementsAre(2, 2));
}

TEST(VocabLoadingTest, UnknownPreOrModelInAGgufIsAnErrorNamingIt) {
  auto bad_pre = ReadWrittenVocab("gpt2", "bogus-pre");
  ASSERT_FALSE(bad_pre.ok());
  EXPECT_EQ(bad_pre.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad_pre.status().message(), HasSubstr("'bogus-pre'"));
  EXPECT_THAT(bad_pre.status().message(), HasSubstr("tokenizer.ggml.pre"));
  EXPECT_THAT(bad_pre.status().message(), HasSubstr("written.gguf"));
  auto bad_model = ReadWrittenVocab("bert", "default");
  ASSERT_FALSE(bad_model.ok());
  EXPECT_THAT(bad_model.status().message(), HasSubstr("'bert'"));
}

// ---- byte mapping and merges ------------------------------------------------------------------

TEST(ByteMappingTest, RoundTripsEveryByte) {
  EXPECT_EQ(ByteToUnicode(' '), 0x120u);   // "Ġ"
  EXPECT_EQ(ByteToUnicode('\n'), 0x10Au);  // "Ċ"
  EXPECT_EQ(ByteToUnicode('A'), static_cast<uint32_t>('A'));
  std::string all;
  for (int b = 0; b < 256; ++b) {
    all += static_cast<char>(b);
    EXPECT_EQ(UnicodeToByte(ByteToUnicode(static_cast<uint8_t>(b))), b);
  }
  EXPECT_EQ(UnmapBytes(MapBytes(all)), all);
}

// A tiny byte-level vocabulary: bytes 'a', 'b', 'c', ' ' and merges ranked "b c" before "a b".
Vocabulary TinyVocab(std::string pre) {
  Vocabulary v;
  v.kind = TokenizerKind::kByteLevelBpe;
  v.pre = std::move(pre);
  v.pieces = {"<|endoftext|>",
              "a",
              "b",
              "c",
              "\xC4\xA0",
              "bc",
              "ab",
              "abc",
              "<|im_end|>",
              "<special>",
              "\xC4\xA0"
              "a"};
  v.types = {TokenType::kControl, TokenType::kNormal,      TokenType::kNormal, TokenType::kNormal,
             TokenType::kNormal,  TokenType::kNormal,      TokenType::kNormal, TokenType::kNormal,
             TokenType::kControl, TokenType::kUserDefined, TokenType::kNormal};
  v.scores.assign(v.pieces.size(), 0.0f);
  v.merges = {"b c", "a b", "a bc", "\xC4\xA0 a"};
  v.bos_id = 0;
  v.eos_id = 0;
  v.unk_id = -1;
  v.add_bos = false;
  return v;
}

TEST(BpeMergeTest, MergesByRankLeftmostFirst) {
  const Tokenizer tok(TinyVocab("gpt-2"));
  // "abc": "b c" (rank 0) before "a b" (rank 1), then "a bc".
  EXPECT_THAT(tok.Encode("abc", EncodeOptions{}), ElementsAre(7));
  // "abab": "a b" twice, leftmost first; "ab ab" has no merge.
  EXPECT_THAT(tok.Encode("abab", EncodeOptions{}), ElementsAre(6, 6));
  EXPECT_THAT(tok.Encode(" a", EncodeOptions{}), ElementsAre(10));
  EXPECT_EQ(tok.Decode(tok.Encode(" abc ab", EncodeOptions{})), " abc ab");
}

// ---- special tokens ---------------------------------------------------------------------------

TEST(SpecialTokensTest, UserDefinedAreSplitOutControlOnlyWithParseSpecial) {
  const Tokenizer tok(TinyVocab("gpt-2"));
  // User-defined: always split out (not pre-tokenized into "<", "special", ">").
  EXPECT_THAT(tok.Encode("ab<special>c", EncodeOptions{}), ElementsAre(6, 9, 3));
  // Control: plain text by default, the token with parse_special.
  const std::vector<int32_t> plain = tok.Encode("a<|im_end|>", EncodeOptions{});
  EXPECT_THAT(plain, ::testing::Not(::testing::Contains(8)));
  EncodeOptions special;
  special.parse_special = true;
  EXPECT_THAT(tok.Encode("a<|im_end|>", special), ElementsAre(1, 8));
  // Decoding: a user-defined token is its text, a control token nothing.
  EXPECT_EQ(tok.Decode({1, 9, 8}), "a<special>");
}

TEST(SpecialTokensTest, Llama3ControlTokensAndAddSpecial) {
  const Tokenizer& tok = Llama3();
  const std::string text = "<|start_header_id|>user<|end_header_id|>";
  EncodeOptions parse;
  parse.parse_special = true;
  EXPECT_THAT(tok.Encode(text, parse), ElementsAre(128006, 882, 128007));
  const std::vector<int32_t> plain = tok.Encode(text, EncodeOptions{});
  EXPECT_GT(plain.size(), 3u);
  for (const int32_t id : plain) EXPECT_LT(id, 128000) << "control token from plain text";

  // add_bos_token is true in the file and add_eos_token absent (false).
  EncodeOptions add;
  add.add_special = true;
  EXPECT_THAT(tok.Encode("Hello", add), ElementsAre(128000, 9906));
  EXPECT_THAT(tok.Encode("Hello", EncodeOptions{}), ElementsAre(9906));
  EXPECT_THAT(tok.Encode("Hello", /*add_bos=*/true), ElementsAre(128000, 9906));

  // add_eos / add_bos follow the vocabulary.
  Vocabulary v = tok.vocab();
  v.add_bos = false;
  v.add_eos = true;
  const Tokenizer eos_only(std::move(v));
  EXPECT_THAT(eos_only.Encode("Hello", add), ElementsAre(9906, 128001));
  EXPECT_THAT(eos_only.Encode("Hello", /*add_bos=*/true), ElementsAre(9906));
}

TEST(SpecialTokensTest, AddBosAndAddEosFromTheGguf) {
  // deepseek-coder: add_bos_token true, add_eos_token false, bos 32013.
  const Tokenizer& ds = VocabTokenizer("ggml-vocab-deepseek-coder.gguf");
  EXPECT_TRUE(ds.vocab().add_bos);
  EXPECT_FALSE(ds.vocab().add_eos);
  EncodeOptions add;
  add.add_special = true;
  const std::vector<int32_t> ids = ds.Encode("x", add);
  ASSERT_FALSE(ids.empty());
  EXPECT_EQ(ids.front(), 32013);
  EXPECT_NE(ids.back(), 32014);
  // SentencePiece with options: llama-spm adds BOS (1) and no EOS.
  const Tokenizer& spm = VocabTokenizer("ggml-vocab-llama-spm.gguf");
  const std::vector<int32_t> spm_ids = spm.Encode("Hello", add);
  EXPECT_EQ(spm_ids, spm.Encode("Hello", /*add_bos=*/true));
  EXPECT_EQ(spm_ids.front(), 1);
  // SentencePiece control tokens with parse_special.
  EncodeOptions parse;
  parse.parse_special = true;
  EXPECT_THAT(spm.Encode("</s>", parse), ElementsAre(2));
  EXPECT_THAT(spm.Encode("</s>", EncodeOptions{}), ::testing::Not(::testing::Contains(2)));
}

TEST(SpecialTokensTest, MptWhitespaceTokensAreSplitOut) {
  // mpt's user-defined tokens are runs of 2..24 spaces: the longest run at the leftmost place.
  const Tokenizer& mpt = VocabTokenizer("ggml-vocab-mpt.gguf");
  EXPECT_THAT(mpt.Encode("   ", EncodeOptions{}), ElementsAre(50275));  // three spaces
}

TEST(EndOfGenerationTest, Llama3SetHasEosAndEotId) {
  const Tokenizer& tok = Llama3();
  // This vocabulary is Llama 3.0's: 128009 is <|eot_id|>, and 128008 is a reserved token (Llama
  // 3.1 names it <|eom_id|>).
  ASSERT_EQ(tok.vocab().pieces[128009], "<|eot_id|>");
  ASSERT_EQ(tok.vocab().pieces[128001], "<|end_of_text|>");
  EXPECT_THAT(tok.end_of_generation_ids(), ElementsAre(128001, 128009));
  EXPECT_TRUE(tok.IsEndOfGeneration(128009));
  EXPECT_TRUE(tok.IsEndOfGeneration(128001));
  EXPECT_FALSE(tok.IsEndOfGeneration(128000));
  EXPECT_FALSE(tok.IsEndOfGeneration(128008));

  // Llama 3.1 names 128008 <|eom_id|>: it joins the set by name, and by
  // tokenizer.ggml.eom_token_id.
  Vocabulary v = tok.vocab();
  v.pieces[128008] = "<|eom_id|>";
  EXPECT_THAT(Tokenizer(v).end_of_generation_ids(), ElementsAre(128001, 128008, 128009));
  Vocabulary declared = tok.vocab();
  declared.eom_id = 128010;
  declared.eot_id = 128011;
  EXPECT_THAT(Tokenizer(declared).end_of_generation_ids(),
              ElementsAre(128001, 128009, 128010, 128011));
}

TEST(EndOfGenerationTest, OtherVocabularies) {
  // phi-3: </s> is not EOS (32000 <|endoftext|> is); <|end|> (32007) ends a turn.
  const Tokenizer& phi3 = VocabTokenizer("ggml-vocab-phi-3.gguf");
  ASSERT_EQ(phi3.vocab().pieces[32007], "<|end|>");
  EXPECT_TRUE(phi3.IsEndOfGeneration(32000));
  EXPECT_TRUE(phi3.IsEndOfGeneration(32007));
  EXPECT_TRUE(phi3.IsEndOfGeneration(2));  // </s>
  // deepseek-coder: EOS <｜end▁of▁sentence｜> and the user-defined <|EOT|> (32021).
  const Tokenizer& ds = VocabTokenizer("ggml-vocab-deepseek-coder.gguf");
  EXPECT_THAT(ds.end_of_generation_ids(), ElementsAre(32014, 32021));
  // gpt-2: only <|endoftext|>.
  EXPECT_THAT(VocabTokenizer("ggml-vocab-gpt-2.gguf").end_of_generation_ids(), ElementsAre(50256));
}

// ---- decoding and streaming -------------------------------------------------------------------

TEST(BpeDecodeTest, StreamingNeverSplitsACharacter) {
  const Tokenizer& tok = Llama3();
  // Emoji and CJK text whose characters byte-level tokens split.
  const std::string text = "\xF0\x9F\x98\x80\xF0\x9F\xA6\x99 \xE4\xB8\xAD\xE6\x96\x87 caf\xC3\xA9";
  const std::vector<int32_t> ids = tok.Encode(text, EncodeOptions{});
  bool some_token_splits_a_character = false;
  for (const int32_t id : ids) {
    const std::string bytes = tok.TokenBytes(id);
    StreamingDetokenizer probe(tok);
    if (!probe.Feed(id).empty() || bytes.empty()) continue;
    some_token_splits_a_character = true;  // its bytes alone are not whole characters
  }
  EXPECT_TRUE(some_token_splits_a_character);
  StreamingDetokenizer detok(tok);
  std::string joined;
  for (const int32_t id : ids) {
    const std::string delta = detok.Feed(id);
    // Every delta is whole characters: no lead byte without its continuation bytes.
    EXPECT_EQ(delta.find("\xEF\xBF\xBD"), std::string::npos);
    joined += delta;
  }
  joined += detok.Flush();
  EXPECT_EQ(joined, text);
  EXPECT_EQ(tok.Decode(ids), text);
}

TEST(BpeDecodeTest, TokenBytesUndoTheByteMapping) {
  const Tokenizer& tok = Llama3();
  const std::vector<int32_t> ids = tok.Encode(" hello\n", EncodeOptions{});
  std::string joined;
  for (const int32_t id : ids) joined += tok.TokenBytes(id);
  EXPECT_EQ(joined, " hello\n");
  EXPECT_EQ(tok.TokenBytes(128009), "");  // control
}

TEST(BpeBoundedEncodeTest, EncodeAtMostAgreesWithEncode) {
  const Tokenizer& tok = Llama3();
  const std::string text = "The quick brown fox jumps over the lazy dog. 12345";
  const std::vector<int32_t> all = tok.Encode(text, /*add_bos=*/true);
  auto exact = tok.EncodeAtMost(text, /*add_bos=*/true, all.size());
  ASSERT_TRUE(exact.has_value());
  EXPECT_EQ(*exact, all);
  EXPECT_FALSE(tok.EncodeAtMost(text, /*add_bos=*/true, all.size() - 1).has_value());
  // Refused by length without encoding: far more bytes than the bound allows.
  EXPECT_FALSE(tok.EncodeAtMost(std::string(1 << 20, 'x'), false, 10).has_value());
}

}  // namespace
}  // namespace kvserve::engine
