// Golden tests: the real stories260K model reproduces its published greedy continuation.
#include <string>

#include "engine/runtime/local_model.h"
#include "gtest/gtest.h"

namespace kvserve::engine {
namespace {

// From ../shared/models/README.md: greedy decoding of "Once upon a time" on stories260K.
constexpr char kPublished[] =
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the "
    "park. One day, she saw a big, red ball. She wanted to play with it, but it was too high.";

std::string GreedyText(LocalModel& lm, const std::string& prompt, int max_tokens) {
  GenerationRequest r;
  r.prompt = lm.tokenizer().Encode(prompt, true);
  r.max_tokens = max_tokens;
  r.sampling.temperature = 0;
  auto results = lm.generator().Run({r});
  EXPECT_TRUE(results.ok()) << results.status();
  if (!results.ok()) return "";
  std::vector<int32_t> all = r.prompt;
  all.insert(all.end(), (*results)[0].tokens.begin(), (*results)[0].tokens.end());
  return lm.tokenizer().Decode(all);
}

struct GoldenCase {
  const char* name;
  const char* model;
  const char* tokenizer;
  kernels::KvFormat format;
};

class GoldenTest : public ::testing::TestWithParam<GoldenCase> {};

TEST_P(GoldenTest, GreedyOnceUponATimeMatchesPublishedText) {
  LocalModelOptions o;
  o.model_path = std::string(KVSERVE_MODELS_DIR) + "/" + GetParam().model;
  if (GetParam().tokenizer[0] != '\0') {
    o.tokenizer_path = std::string(KVSERVE_MODELS_DIR) + "/" + GetParam().tokenizer;
  }
  o.kv_format = GetParam().format;
  auto lm = LocalModel::Open(o);
  ASSERT_TRUE(lm.ok()) << lm.status();
  const std::string text = GreedyText(**lm, "Once upon a time", 60);
  ASSERT_GE(text.size(), std::string(kPublished).size()) << text;
  EXPECT_EQ(text.substr(0, std::string(kPublished).size()), kPublished);
  // Every KV block went back to the pool.
  EXPECT_EQ((*lm)->ActiveKvBlocks(), 0);
}

INSTANTIATE_TEST_SUITE_P(
    Stories260K, GoldenTest,
    ::testing::Values(
        GoldenCase{"gguf_fp32", "stories260K.gguf", "", kernels::KvFormat::kFp32},
        GoldenCase{"bin_fp32", "stories260K.bin", "tok512.bin", kernels::KvFormat::kFp32},
        GoldenCase{"gguf_fp16", "stories260K.gguf", "", kernels::KvFormat::kFp16},
        GoldenCase{"bin_default_tokenizer", "stories260K.bin", "", kernels::KvFormat::kFp32}),
    [](const ::testing::TestParamInfo<GoldenCase>& info) { return info.param.name; });

TEST(GoldenTest, BabyLlamaLoadsAndGeneratesText) {
  LocalModelOptions o;
  o.model_path = std::string(KVSERVE_MODELS_DIR) + "/babyllama/model5000.bin";
  o.tokenizer_path = std::string(KVSERVE_MODELS_DIR) + "/babyllama/tok105.bin";
  auto lm = LocalModel::Open(o);
  ASSERT_TRUE(lm.ok()) << lm.status();
  EXPECT_EQ((*lm)->config().vocab_size, 105);
  EXPECT_EQ((*lm)->config().num_kv_heads, 4);
  const std::string text = GreedyText(**lm, "Once upon a time", 40);
  EXPECT_EQ(text.rfind("Once upon a time", 0), 0u) << text;
  EXPECT_GT(text.size(), std::string("Once upon a time").size() + 20) << text;
}

}  // namespace
}  // namespace kvserve::engine
