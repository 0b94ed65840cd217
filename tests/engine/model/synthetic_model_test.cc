// Synthetic models (kvserve mkmodel): the vocabulary works with our tokenizer, the file loads and
// generates, an independent reader (tests/engine/model/gguf_reader.py, Python stdlib) accepts it,
// and the named shapes have their published dimensions.
#include "engine/model/synthetic_model.h"

#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <map>
#include <set>
#include <string>

#include "absl/strings/str_cat.h"
#include "engine/model/gguf.h"
#include "engine/model/model.h"
#include "engine/runtime/local_model.h"
#include "engine/tokenizer/tokenizer.h"
#include "gtest/gtest.h"

namespace kvserve::engine {
namespace {

std::string TempPath(const std::string& name) {
  return (std::filesystem::path(::testing::TempDir()) /
          absl::StrCat("synthetic_", getpid(), "_", name))
      .string();
}

SyntheticModelSpec SmallSpec() {
  SyntheticModelSpec s;
  s.dim = 64;
  s.hidden_dim = 96;
  s.num_layers = 2;
  s.num_heads = 4;
  s.num_kv_heads = 2;
  s.vocab_size = 600;
  s.context_length = 256;
  s.seed = 7;
  return s;
}

TEST(SyntheticVocabularyTest, SizeLayoutAndMergesReachable) {
  auto vocab = MakeSyntheticVocabulary(1000, 3);
  ASSERT_TRUE(vocab.ok()) << vocab.status();
  ASSERT_EQ(vocab->size(), 1000);
  EXPECT_EQ(vocab->pieces[0], "<unk>");
  EXPECT_EQ(vocab->pieces[1], "<s>");
  EXPECT_EQ(vocab->pieces[2], "</s>");
  EXPECT_EQ(vocab->types[3], TokenType::kByte);
  EXPECT_EQ(vocab->pieces[3], "<0x00>");
  EXPECT_EQ(vocab->pieces[258], "<0xFF>");
  std::set<std::string> normal;
  float last_score = 1.0f;
  for (int i = 259; i < vocab->size(); ++i) {
    EXPECT_EQ(vocab->types[i], TokenType::kNormal) << i;
    EXPECT_LT(vocab->scores[i], last_score) << "scores must decrease with id, at " << i;
    last_score = vocab->scores[i];
    EXPECT_TRUE(normal.insert(vocab->pieces[i]).second) << "duplicate piece " << vocab->pieces[i];
  }
  // Every multi-character piece splits into two pieces that come before it (BPE reaches it).
  int merged = 0;
  for (int i = 259; i < vocab->size(); ++i) {
    const std::string& p = vocab->pieces[i];
    if (p.size() < 2) continue;
    ++merged;
    bool found = false;
    for (size_t cut = 1; cut < p.size() && !found; ++cut) {
      found = normal.count(p.substr(0, cut)) > 0 && normal.count(p.substr(cut)) > 0;
    }
    EXPECT_TRUE(found) << "piece '" << p << "' is not a merge of two pieces";
  }
  EXPECT_GT(merged, 500);
}

TEST(SyntheticVocabularyTest, SameSeedSameVocabularyOtherSeedDiffers) {
  auto a = MakeSyntheticVocabulary(700, 1);
  auto b = MakeSyntheticVocabulary(700, 1);
  auto c = MakeSyntheticVocabulary(700, 2);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  EXPECT_EQ(a->pieces, b->pieces);
  EXPECT_NE(a->pieces, c->pieces);
}

TEST(SyntheticVocabularyTest, TooSmallIsRefusedWithTheMinimum) {
  auto v = MakeSyntheticVocabulary(300, 0);
  ASSERT_FALSE(v.ok());
  EXPECT_NE(v.status().message().find(absl::StrCat(MinSyntheticVocabSize())), std::string::npos)
      << v.status();
}

TEST(SyntheticVocabularyTest, TokenizerRoundTripsAndMerges) {
  auto vocab = MakeSyntheticVocabulary(4000, 5);
  ASSERT_TRUE(vocab.ok());
  auto tok = Tokenizer::Create(*vocab);
  ASSERT_TRUE(tok.ok()) << tok.status();
  const std::string text = "Once upon a time, there was a tiny robot named Zed (version 2)!";
  const std::vector<int32_t> ids = tok->Encode(text, true);
  ASSERT_FALSE(ids.empty());
  EXPECT_EQ(ids[0], 1);
  EXPECT_EQ(tok->Decode(ids), text);
  // Merges happen: fewer tokens than characters (+1 for BOS), and no byte fallback for ASCII.
  EXPECT_LT(ids.size(), text.size());
  for (size_t i = 1; i < ids.size(); ++i) EXPECT_NE(vocab->types[ids[i]], TokenType::kByte);
  // Bytes outside the alphabet fall back to byte tokens and still round-trip.
  const std::string utf8 = "caf\xC3\xA9 \xE2\x82\xAC";
  EXPECT_EQ(tok->Decode(tok->Encode(utf8, false)), utf8);
}

TEST(SyntheticShapeTest, NamedShapesHaveTheirDimensions) {
  auto tiny = NamedSyntheticShape("tiny");
  auto m110 = NamedSyntheticShape("110m");
  auto b1 = NamedSyntheticShape("1b-gqa");
  ASSERT_TRUE(tiny.ok() && m110.ok() && b1.ok());
  EXPECT_EQ(m110->dim, 768);
  EXPECT_EQ(m110->num_layers, 12);
  EXPECT_EQ(m110->num_heads, 12);
  EXPECT_EQ(m110->num_kv_heads, 12);
  EXPECT_EQ(b1->dim, 2048);
  EXPECT_EQ(b1->num_layers, 16);
  EXPECT_EQ(b1->num_heads, 32);
  EXPECT_EQ(b1->num_kv_heads, 8);
  EXPECT_EQ(b1->head_dim(), 64);
  // 110m worked out by hand: tied embeddings 32000 * 768 = 24,576,000; per layer 2 * 768 norms +
  // 4 * 768^2 attention + 3 * 2048 * 768 feed-forward = 7,079,424, times 12 = 84,953,088; final
  // norm 768. Total 109,529,856 (the llama2.c 110M model).
  EXPECT_EQ(SyntheticParameterCount(*m110), 109529856);
  // 1b-gqa: K and V are 8 heads * 64 = 512 wide. Per layer 2 * 2048 + 2 * 2048^2 + 2 * 512 * 2048
  // + 3 * 8192 * 2048 = 60,821,504; * 16 = 973,144,064; + 32000 * 2048 = 65,536,000; + 2048.
  EXPECT_EQ(SyntheticParameterCount(*b1), 1038682112);
  auto bad = NamedSyntheticShape("7b");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("110m"), std::string::npos);
}

TEST(SyntheticShapeTest, ValidationNamesTheField) {
  SyntheticModelSpec s = SmallSpec();
  s.num_heads = 5;  // 64 % 5 != 0
  EXPECT_NE(ValidateSyntheticSpec(s).message().find("heads"), std::string::npos);
  s = SmallSpec();
  s.num_kv_heads = 3;  // 4 % 3 != 0
  EXPECT_NE(ValidateSyntheticSpec(s).message().find("kv_heads"), std::string::npos);
  s = SmallSpec();
  s.vocab_size = 10;
  EXPECT_NE(ValidateSyntheticSpec(s).message().find("vocab"), std::string::npos);
  EXPECT_TRUE(ValidateSyntheticSpec(SmallSpec()).ok());
}

TEST(SyntheticModelTest, LoadsAndGeneratesF32AndF16) {
  for (GgmlType type : {GgmlType::kF32, GgmlType::kF16}) {
    SyntheticModelSpec spec = SmallSpec();
    spec.weight_type = type;
    const std::string path = TempPath(absl::StrCat("gen_", static_cast<int>(type), ".gguf"));
    ASSERT_TRUE(WriteSyntheticModel(spec, path).ok());
    auto loaded = LoadModel(path);
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    const ModelConfig& c = (*loaded)->config();
    EXPECT_EQ(c.dim, 64);
    EXPECT_EQ(c.hidden_dim, 96);
    EXPECT_EQ(c.num_layers, 2);
    EXPECT_EQ(c.num_heads, 4);
    EXPECT_EQ(c.num_kv_heads, 2);
    EXPECT_EQ(c.vocab_size, 600);
    EXPECT_EQ(c.context_length, 256);

    LocalModelOptions options;
    options.model_path = path;
    options.num_threads = 1;
    options.kv_budget_bytes = 4 << 20;
    auto lm = LocalModel::Open(options);
    ASSERT_TRUE(lm.ok()) << lm.status();
    GenerationRequest r;
    r.prompt = (*lm)->tokenizer().Encode("the cat sat", true);
    r.max_tokens = 12;
    r.sampling.temperature = 0;
    r.ignore_eos = true;
    auto results = (*lm)->generator().Run({r, r});
    ASSERT_TRUE(results.ok()) << results.status();
    ASSERT_EQ(results->size(), 2u);
    EXPECT_EQ((*results)[0].tokens.size(), 12u);
    // Greedy and deterministic: the same prompt twice in one batch gives the same tokens.
    EXPECT_EQ((*results)[0].tokens, (*results)[1].tokens);
    // Random weights still give a non-degenerate distribution: not a single repeated token.
    std::set<int32_t> distinct((*results)[0].tokens.begin(), (*results)[0].tokens.end());
    EXPECT_GT(distinct.size(), 1u);
    std::filesystem::remove(path);
  }
}

TEST(SyntheticModelTest, SameSeedSameBytes) {
  const std::string a = TempPath("a.gguf"), b = TempPath("b.gguf"), c = TempPath("c.gguf");
  SyntheticModelSpec spec = SmallSpec();
  ASSERT_TRUE(WriteSyntheticModel(spec, a).ok());
  ASSERT_TRUE(WriteSyntheticModel(spec, b).ok());
  spec.seed = 8;
  ASSERT_TRUE(WriteSyntheticModel(spec, c).ok());
  auto read = [](const std::string& p) {
    std::string s;
    FILE* f = std::fopen(p.c_str(), "rb");
    char buf[65536];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof(buf), f)) > 0) s.append(buf, n);
    std::fclose(f);
    return s;
  };
  EXPECT_EQ(read(a), read(b));
  EXPECT_NE(read(a), read(c));
  for (const auto& p : {a, b, c}) std::filesystem::remove(p);
}

// Runs the independent Python reader; returns its stdout.
std::string RunPythonReader(const std::string& path, int* exit_code) {
  const std::string script = std::string(KVSERVE_SOURCE_DIR) + "/tests/engine/model/gguf_reader.py";
  const std::string cmd = absl::StrCat("/usr/bin/python3 '", script, "' '", path, "'");
  FILE* p = popen(cmd.c_str(), "r");
  std::string out;
  if (p == nullptr) return out;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
  const int status = pclose(p);
  *exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return out;
}

TEST(SyntheticModelTest, IndependentReaderAcceptsThe110mShape) {
  if (access("/usr/bin/python3", X_OK) != 0) GTEST_SKIP() << "no /usr/bin/python3";
  // The 110m shape at F16 with a smaller vocabulary (170 MB instead of 220 MB to write).
  auto spec = NamedSyntheticShape("110m");
  ASSERT_TRUE(spec.ok());
  spec->weight_type = GgmlType::kF16;
  spec->vocab_size = 512;
  const std::string path = TempPath("110m.gguf");
  ASSERT_TRUE(WriteSyntheticModel(*spec, path).ok());
  int code = -1;
  const std::string out = RunPythonReader(path, &code);
  std::filesystem::remove(path);
  ASSERT_EQ(code, 0) << out;
  auto has = [&out](const std::string& needle) { return out.find(needle) != std::string::npos; };
  EXPECT_TRUE(has("\"general.architecture\": \"llama\"")) << out.substr(0, 2000);
  EXPECT_TRUE(has("\"llama.embedding_length\": 768"));
  EXPECT_TRUE(has("\"llama.block_count\": 12"));
  EXPECT_TRUE(has("\"llama.attention.head_count\": 12"));
  EXPECT_TRUE(has("\"llama.attention.head_count_kv\": 12"));
  EXPECT_TRUE(has("\"llama.feed_forward_length\": 2048"));
  EXPECT_TRUE(has("\"tokenizer.ggml.model\": \"llama\""));
  EXPECT_TRUE(
      has("\"tokenizer.ggml.tokens\": {\"first\": [\"<unk>\", \"<s>\", \"</s>\", \"<0x00>\""));
  EXPECT_TRUE(has("\"length\": 512"));
  // ggml order: ne[0] = columns (inputs).
  EXPECT_TRUE(
      has("\"blk.11.ffn_down.weight\": {\"bytes\": 3145728, \"shape\": [2048, 768], "
          "\"type\": \"F16\"}"));
  EXPECT_TRUE(
      has("\"token_embd.weight\": {\"bytes\": 786432, \"shape\": [768, 512], "
          "\"type\": \"F16\"}"));
  EXPECT_TRUE(
      has("\"output_norm.weight\": {\"bytes\": 3072, \"shape\": [768], \"type\": \"F32\"}"));
}

TEST(SyntheticModelTest, IndependentReaderAcceptsGqaWithF32) {
  if (access("/usr/bin/python3", X_OK) != 0) GTEST_SKIP() << "no /usr/bin/python3";
  SyntheticModelSpec spec = SmallSpec();
  const std::string path = TempPath("gqa.gguf");
  ASSERT_TRUE(WriteSyntheticModel(spec, path).ok());
  int code = -1;
  const std::string out = RunPythonReader(path, &code);
  std::filesystem::remove(path);
  ASSERT_EQ(code, 0) << out;
  // K projection: 2 KV heads * head_dim 16 = 32 rows over 64 inputs, F32.
  EXPECT_NE(out.find("\"blk.1.attn_k.weight\": {\"bytes\": 8192, \"shape\": [64, 32], \"type\": "
                     "\"F32\"}"),
            std::string::npos)
      << out.substr(0, 2000);
  EXPECT_NE(out.find("\"llama.attention.head_count_kv\": 2"), std::string::npos);
}

}  // namespace
}  // namespace kvserve::engine
