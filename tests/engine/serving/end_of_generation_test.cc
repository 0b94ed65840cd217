// Generation ends at every end-of-generation token of the vocabulary, not only at EOS: a copy of
// stories260K whose GGUF declares tokenizer.ggml.eot_token_id stops where the greedy output
// produces that token, with finish reason EOS, and runs past it with ignore_eos.
#include <memory>
#include <string>
#include <vector>

#include "engine/model/gguf.h"
#include "engine/model/gguf_writer.h"
#include "engine/runtime/local_model.h"
#include "gtest/gtest.h"
#include "tests/engine/model/model_test_util.h"

namespace kvserve::engine {
namespace {

std::unique_ptr<LocalModel> Open(const std::string& path) {
  LocalModelOptions o;
  o.model_path = path;
  o.kv_budget_bytes = 16 << 20;
  o.num_threads = 1;
  auto lm = LocalModel::Open(o);
  EXPECT_TRUE(lm.ok()) << lm.status();
  return lm.ok() ? std::move(*lm) : nullptr;
}

GenerationRequest Greedy(const Tokenizer& tok, bool ignore_eos) {
  GenerationRequest r;
  r.prompt = tok.Encode("Once upon a time", true);
  r.max_tokens = 12;
  r.sampling.temperature = 0;
  r.ignore_eos = ignore_eos;
  return r;
}

TEST(ServingEndOfGenerationTest, AnEndOfTurnTokenEndsTheGenerationLikeEos) {
  const std::string original = testing_util::ModelPath("stories260K.gguf");
  auto base = Open(original);
  ASSERT_NE(base, nullptr);
  auto full = base->generator().Run({Greedy(base->tokenizer(), false)});
  ASSERT_TRUE(full.ok()) << full.status();
  const std::vector<int32_t> reference = (*full)[0].tokens;
  ASSERT_GE(reference.size(), 4u);
  // Published continuation: ", there was a little girl named Lily."
  ASSERT_EQ((*full)[0].text.rfind(", there was", 0), 0u) << (*full)[0].text;
  const int32_t eot = reference[2];
  EXPECT_FALSE(base->tokenizer().IsEndOfGeneration(eot));

  // The same model, its vocabulary declaring that token the end of a turn.
  auto src = GgufFile::Open(original);
  ASSERT_TRUE(src.ok()) << src.status();
  GgufWriter w = testing_util::CopyGguf(*src, [](const GgufTensorInfo& info) { return info.type; });
  w.SetU32("tokenizer.ggml.eot_token_id", static_cast<uint32_t>(eot));
  testing_util::ScratchDir dir;
  const std::string path = dir.File("stories260K-eot.gguf");
  ASSERT_TRUE(w.WriteFile(path).ok());
  auto lm = Open(path);
  ASSERT_NE(lm, nullptr);
  EXPECT_TRUE(lm->tokenizer().IsEndOfGeneration(eot));
  EXPECT_TRUE(lm->tokenizer().IsEndOfGeneration(lm->tokenizer().eos_id()));

  auto stopped = lm->generator().Run({Greedy(lm->tokenizer(), false)});
  ASSERT_TRUE(stopped.ok()) << stopped.status();
  EXPECT_EQ((*stopped)[0].tokens, std::vector<int32_t>(reference.begin(), reference.begin() + 2));
  EXPECT_EQ((*stopped)[0].finish_reason, FinishReason::kEos);

  auto past = lm->generator().Run({Greedy(lm->tokenizer(), true)});
  ASSERT_TRUE(past.ok()) << past.status();
  EXPECT_EQ((*past)[0].tokens, reference);
  EXPECT_EQ((*past)[0].finish_reason, FinishReason::kLength);
}

}  // namespace
}  // namespace kvserve::engine
