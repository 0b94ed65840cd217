// LoadModel on the real fixtures: the facts the models README states, and the GGUF and llama2.c
// copies of stories260K agreeing on every weight and on the vocabulary.
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/model/model.h"
#include "engine/tokenizer/llama2c_tokenizer_file.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/dtype.h"
#include "tests/engine/model/model_test_util.h"

namespace kvserve::engine {
namespace {

using ::testing::HasSubstr;
using testing_util::ModelPath;

std::unique_ptr<LoadedModel> Load(const std::string& model, const std::string& tokenizer = "") {
  auto loaded = LoadModel(ModelPath(model), tokenizer.empty() ? "" : ModelPath(tokenizer));
  EXPECT_TRUE(loaded.ok()) << loaded.status();
  return loaded.ok() ? std::move(*loaded) : nullptr;
}

std::vector<float> Elements(const kernels::WeightView& v) {
  std::vector<float> out(static_cast<size_t>(v.rows * v.cols));
  for (size_t i = 0; i < out.size(); ++i) {
    if (v.dtype == kernels::DType::kF32) {
      out[i] = static_cast<const float*>(v.data)[i];
    } else {
      const uint16_t h = static_cast<const uint16_t*>(v.data)[i];
      out[i] = v.dtype == kernels::DType::kF16 ? kernels::Fp16ToFloat(h) : kernels::Bf16ToFloat(h);
    }
  }
  return out;
}

std::vector<float> Elements(const float* data, int64_t n) { return {data, data + n}; }

TEST(ModelLoaderTest, Stories260KGgufFacts) {
  auto m = Load("stories260K.gguf");
  ASSERT_NE(m, nullptr);
  const ModelConfig& c = m->config();
  EXPECT_EQ(m->file_format(), "gguf");
  EXPECT_EQ(m->path(), ModelPath("stories260K.gguf"));
  EXPECT_EQ(c.architecture, "llama");
  EXPECT_EQ(c.name, "llama");  // general.name
  EXPECT_EQ(c.dim, 64);
  EXPECT_EQ(c.hidden_dim, 172);
  EXPECT_EQ(c.num_layers, 5);
  EXPECT_EQ(c.num_heads, 8);
  EXPECT_EQ(c.num_kv_heads, 4);
  EXPECT_EQ(c.head_dim, 8);
  EXPECT_EQ(c.kv_dim(), 32);
  EXPECT_EQ(c.vocab_size, 512);
  EXPECT_EQ(c.context_length, 2048);  // the converter's default, as the README notes
  EXPECT_FLOAT_EQ(c.rms_norm_eps, 1e-5f);
  EXPECT_EQ(c.rope_freq_base, 10000.0f);
  EXPECT_FALSE(c.tied_classifier);

  const Vocabulary& v = m->vocab();
  EXPECT_EQ(v.size(), 512);
  EXPECT_EQ(v.bos_id, 1);
  EXPECT_EQ(v.eos_id, 2);
  EXPECT_EQ(v.unk_id, 0);
  EXPECT_TRUE(v.add_bos);
  EXPECT_TRUE(v.add_space_prefix);

  const ModelWeights& w = m->weights();
  ASSERT_EQ(w.layers.size(), 5u);
  EXPECT_EQ(w.token_embedding.rows, 512);
  EXPECT_EQ(w.token_embedding.cols, 64);
  EXPECT_EQ(w.token_embedding.dtype, kernels::DType::kF32);
  EXPECT_EQ(w.layers[0].wk.rows, 32);
  EXPECT_EQ(w.layers[0].wk.cols, 64);
  EXPECT_EQ(w.layers[4].w_down.rows, 64);
  EXPECT_EQ(w.layers[4].w_down.cols, 172);
  EXPECT_EQ(w.layers[2].w_gate.rows, 172);
  // Viewed in place in the mapping: the embedding sits at file byte 14176 of a page-aligned map.
  EXPECT_EQ(reinterpret_cast<uintptr_t>(w.token_embedding.data) % 4096, 14176u % 4096);
  // A separate output tensor whose values equal the embeddings.
  EXPECT_NE(w.output.data, w.token_embedding.data);
  EXPECT_EQ(Elements(w.output), Elements(w.token_embedding));
}

TEST(ModelLoaderTest, Stories260KBinFacts) {
  auto m = Load("stories260K.bin", "tok512.bin");
  ASSERT_NE(m, nullptr);
  const ModelConfig& c = m->config();
  EXPECT_EQ(m->file_format(), "llama2c");
  EXPECT_EQ(c.name, "stories260K");
  EXPECT_EQ(c.dim, 64);
  EXPECT_EQ(c.hidden_dim, 172);
  EXPECT_EQ(c.num_layers, 5);
  EXPECT_EQ(c.num_heads, 8);
  EXPECT_EQ(c.num_kv_heads, 4);
  EXPECT_EQ(c.head_dim, 8);
  EXPECT_EQ(c.vocab_size, 512);
  EXPECT_EQ(c.context_length, 512);
  EXPECT_FLOAT_EQ(c.rms_norm_eps, 1e-5f);
  EXPECT_EQ(c.rope_freq_base, 10000.0f);
  EXPECT_TRUE(c.tied_classifier);
  EXPECT_EQ(m->vocab().size(), 512);
  EXPECT_EQ(m->vocab().bos_id, 1);
  EXPECT_EQ(m->vocab().eos_id, 2);

  const ModelWeights& w = m->weights();
  EXPECT_EQ(w.output.data, w.token_embedding.data);
  EXPECT_EQ(w.output.rows, 512);
  // In place: the embedding follows the 28-byte header of the page-aligned mapping, and the
  // per-layer slices of one array are consecutive.
  const auto base = reinterpret_cast<uintptr_t>(w.token_embedding.data);
  EXPECT_EQ(base % 4096, 28u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(w.layers[0].attn_norm), base + 512 * 64 * 4);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(w.layers[1].wq.data) -
                reinterpret_cast<uintptr_t>(w.layers[0].wq.data),
            64u * 64 * 4);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(w.layers[1].w_down.data) -
                reinterpret_cast<uintptr_t>(w.layers[0].w_down.data),
            64u * 172 * 4);
}

TEST(ModelLoaderTest, FindsTheTokenizerBesideTheModel) {
  // No tokenizer path: tok512.bin in the model's directory.
  auto m = Load("stories260K.bin");
  ASSERT_NE(m, nullptr);
  EXPECT_EQ(m->vocab().size(), 512);
}

TEST(ModelLoaderTest, BabyLlamaFacts) {
  auto m = Load("babyllama/model5000.bin");
  ASSERT_NE(m, nullptr);
  const ModelConfig& c = m->config();
  EXPECT_EQ(c.dim, 128);
  EXPECT_EQ(c.hidden_dim, 352);
  EXPECT_EQ(c.num_layers, 5);
  EXPECT_EQ(c.num_heads, 8);
  EXPECT_EQ(c.num_kv_heads, 4);
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_EQ(c.vocab_size, 105);
  EXPECT_EQ(c.context_length, 256);
  EXPECT_TRUE(c.tied_classifier);
  EXPECT_EQ(m->vocab().size(), 105);
  for (const TokenType t : m->vocab().types) EXPECT_NE(t, TokenType::kByte);  // no byte fallback
  const ModelWeights& w = m->weights();
  EXPECT_EQ(w.layers[4].wv.rows, 64);
  EXPECT_EQ(w.layers[4].wv.cols, 128);
  for (const float x : Elements(w.layers[4].w_up)) ASSERT_TRUE(std::isfinite(x));
  for (const float x : Elements(w.final_norm, 128)) ASSERT_TRUE(std::isfinite(x));

  // The explicit tokenizer path gives the same vocabulary.
  auto explicit_tok = Load("babyllama/model5000.bin", "babyllama/tok105.bin");
  ASSERT_NE(explicit_tok, nullptr);
  EXPECT_EQ(explicit_tok->vocab().pieces, m->vocab().pieces);
}

TEST(ModelLoaderTest, GgufAndBinHoldTheSameWeights) {
  auto gguf = Load("stories260K.gguf");
  auto bin = Load("stories260K.bin", "tok512.bin");
  ASSERT_NE(gguf, nullptr);
  ASSERT_NE(bin, nullptr);
  const ModelWeights& g = gguf->weights();
  const ModelWeights& b = bin->weights();
  const int64_t dim = 64;
  EXPECT_EQ(Elements(g.token_embedding), Elements(b.token_embedding));
  EXPECT_EQ(Elements(g.output), Elements(b.output));
  EXPECT_EQ(Elements(g.final_norm, dim), Elements(b.final_norm, dim));
  ASSERT_EQ(g.layers.size(), b.layers.size());
  for (size_t l = 0; l < g.layers.size(); ++l) {
    SCOPED_TRACE(l);
    const LayerWeights& x = g.layers[l];
    const LayerWeights& y = b.layers[l];
    EXPECT_EQ(Elements(x.attn_norm, dim), Elements(y.attn_norm, dim));
    EXPECT_EQ(Elements(x.ffn_norm, dim), Elements(y.ffn_norm, dim));
    for (auto [p, q] : {std::pair{&x.wq, &y.wq},
                        {&x.wk, &y.wk},
                        {&x.wv, &y.wv},
                        {&x.wo, &y.wo},
                        {&x.w_gate, &y.w_gate},
                        {&x.w_down, &y.w_down},
                        {&x.w_up, &y.w_up}}) {
      EXPECT_EQ(p->rows, q->rows);
      EXPECT_EQ(p->cols, q->cols);
      EXPECT_EQ(Elements(*p), Elements(*q));
    }
  }
  // Distinct tensors really differ (the comparison above is not vacuous).
  EXPECT_NE(Elements(g.layers[0].wq), Elements(g.layers[1].wq));
}

TEST(ModelLoaderTest, GgufVocabularyEqualsTok512) {
  auto gguf = Load("stories260K.gguf");
  ASSERT_NE(gguf, nullptr);
  auto tok = ReadLlama2cTokenizer(ModelPath("tok512.bin"), 512);
  ASSERT_TRUE(tok.ok()) << tok.status();
  const Vocabulary& g = gguf->vocab();
  EXPECT_EQ(g.pieces, tok->pieces);
  EXPECT_EQ(g.scores, tok->scores);
  EXPECT_EQ(g.types, tok->types);
  // The GGUF's own types: unknown, two controls, the 256 byte pieces, then normal pieces.
  EXPECT_EQ(g.types[0], TokenType::kUnknown);
  EXPECT_EQ(g.types[1], TokenType::kControl);
  EXPECT_EQ(g.types[2], TokenType::kControl);
  for (int i = 3; i <= 258; ++i) EXPECT_EQ(g.types[i], TokenType::kByte) << i;
  for (int i = 259; i < 512; ++i) EXPECT_EQ(g.types[i], TokenType::kNormal) << i;
  EXPECT_EQ(g.pieces[3], "<0x00>");
  EXPECT_EQ(g.pieces[259], " t");  // U+2581 replaced by ' '
  for (const std::string& p : g.pieces) EXPECT_EQ(p.find("\xE2\x96\x81"), std::string::npos);
}

TEST(ModelLoaderTest, TokenizerPathIsIgnoredForGguf) {
  auto m = LoadModel(ModelPath("stories260K.gguf"), ModelPath("babyllama/tok105.bin"));
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ((*m)->vocab().size(), 512);
}

TEST(ModelLoaderTest, RejectsMissingTinyAndUnknownFiles) {
  testing_util::ScratchDir dir;
  auto missing = LoadModel(dir.File("absent.gguf"));
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr("absent.gguf"));

  testing_util::WriteBytes(dir.File("tiny.bin"), std::string(27, '\x01'));
  auto tiny = LoadModel(dir.File("tiny.bin"));
  EXPECT_EQ(tiny.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(tiny.status().message(), HasSubstr("tiny.bin: 27 bytes is too small"));

  testing_util::WriteBytes(dir.File("empty.bin"), "");
  EXPECT_EQ(LoadModel(dir.File("empty.bin")).status().code(), absl::StatusCode::kInvalidArgument);

  testing_util::WriteBytes(dir.File("text.txt"),
                           "Once upon a time, there was a little girl named Lily.");
  auto text = LoadModel(dir.File("text.txt"));
  EXPECT_EQ(text.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(text.status().message(), HasSubstr("text.txt: unknown model format"));

  auto directory = LoadModel(dir.path());
  EXPECT_EQ(directory.status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace kvserve::engine
