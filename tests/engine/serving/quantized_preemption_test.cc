// Preemption with recompute, chunked prefill and prefix reuse never change a greedy output, in
// every KV format: a block's bytes, and what each token's attention reads, do not depend on how
// the block was filled (scheduler.h, "Recompute"). The reference is each request run alone on a
// separate model with a large budget, one prefill chunk per prompt and no prefix cache.
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "engine/runtime/local_model.h"
#include "gtest/gtest.h"
#include "kernels/kv_format.h"

namespace kvserve::engine {
namespace {

struct KvCase {
  const char* format;
  int32_t recent_window;
  int32_t sink_tokens;
};

std::string CaseName(const ::testing::TestParamInfo<KvCase>& info) {
  return std::string(info.param.format) + "_window" + std::to_string(info.param.recent_window) +
         "_sinks" + std::to_string(info.param.sink_tokens);
}

std::unique_ptr<LocalModel> Open(const KvCase& c, int64_t budget_bytes, int64_t max_batch_tokens,
                                 bool prefix_cache) {
  LocalModelOptions o;
  o.model_path = std::string(KVSERVE_MODELS_DIR) + "/stories260K.gguf";
  o.kv_format = *kernels::ParseKvFormat(c.format);
  o.kv_recent_window = c.recent_window;
  o.kv_sink_tokens = c.sink_tokens;
  if (o.kv_format == kernels::KvFormat::kLowrank) {
    o.kv_lowrank_rank = 4;
    o.kv_lowrank_text = std::string(KVSERVE_EVAL_DIR) + "/tinystories_valid_a.txt";
  }
  o.kv_budget_bytes = budget_bytes;
  o.max_batch_tokens = max_batch_tokens;
  o.prefix_cache = prefix_cache;
  o.num_threads = 2;
  auto lm = LocalModel::Open(o);
  EXPECT_TRUE(lm.ok()) << lm.status();
  return lm.ok() ? std::move(*lm) : nullptr;
}

// 16 requests, several sharing a long prefix (so that prefix reuse happens, also past a recent
// window of 37 tokens), with prompts of 4 to about 80 tokens and 40 to 72 generated tokens each.
std::vector<GenerationRequest> MakeRequests(const Tokenizer& tok) {
  const char* openings[] = {"Once upon a time",    "The little dog",      "Lily and Ben went",
                            "One day, a big bird", "Tom had a red ball",  "The sun was hot and",
                            "Sara liked to sing",  "A cat sat on the mat"};
  const std::string shared =
      "Once upon a time, there was a little girl named Lily. She loved to play outside in the "
      "park with her friends. One day, she saw a big red ball under a tree and ran to get it.";
  std::vector<GenerationRequest> reqs(16);
  for (int i = 0; i < 16; ++i) {
    const std::string text =
        i % 4 == 0 ? shared + " " + openings[(i / 4) % 8] : std::string(openings[i % 8]);
    reqs[i].prompt = tok.Encode(text, true);
    for (int k = 0; k < i % 3; ++k) {
      const std::vector<int32_t> more = tok.Encode(openings[(i + k + 1) % 8], false);
      reqs[i].prompt.insert(reqs[i].prompt.end(), more.begin(), more.end());
    }
    reqs[i].max_tokens = 40 + 8 * (i % 5);
    reqs[i].ignore_eos = true;  // every request runs its full length, through many blocks
    reqs[i].sampling.temperature = 0;
  }
  return reqs;
}

class QuantizedPreemptionTest : public ::testing::TestWithParam<KvCase> {};

TEST_P(QuantizedPreemptionTest, PreemptedChunkedAndCachedOutputEqualsTheRequestAlone) {
  const KvCase& c = GetParam();
  auto alone = Open(c, 64 << 20, /*max_batch_tokens=*/512, /*prefix_cache=*/false);
  ASSERT_NE(alone, nullptr);
  const std::vector<GenerationRequest> reqs = MakeRequests(alone->tokenizer());
  std::vector<std::vector<int32_t>> expected;
  for (const GenerationRequest& r : reqs) {
    auto res = alone->generator().Run({r});
    ASSERT_TRUE(res.ok()) << res.status();
    expected.push_back((*res)[0].tokens);
  }

  // About 12 window-format blocks (10240 bytes each): any one request fits, the 16 together
  // are several times too many. Prefill chunks of 24 tokens end inside blocks.
  auto loaded = Open(c, 12 * 10240, /*max_batch_tokens=*/24, /*prefix_cache=*/true);
  ASSERT_NE(loaded, nullptr);
  auto res = loaded->generator().Run(reqs);
  ASSERT_TRUE(res.ok()) << res.status();
  int preempted = 0;
  for (size_t i = 0; i < reqs.size(); ++i) {
    EXPECT_EQ((*res)[i].tokens, expected[i])
        << "request " << i << " (preempted " << (*res)[i].preemptions << " times)";
    preempted += (*res)[i].preemptions > 0;
  }
  EXPECT_GE(preempted, 4) << "the budget should force preemption";
  EXPECT_GT(loaded->prefix_index()->counters().hit_blocks, 0) << "prefix reuse should happen";
  EXPECT_EQ(loaded->ActiveKvBlocks(), 0);
}

INSTANTIATE_TEST_SUITE_P(Formats, QuantizedPreemptionTest,
                         ::testing::Values(KvCase{"fp16", 0, 0}, KvCase{"fp8", 0, 0},
                                           KvCase{"int8", 0, 0}, KvCase{"int4", 0, 0},
                                           KvCase{"nvfp4", 0, 0}, KvCase{"int2", 0, 0},
                                           KvCase{"lowrank", 0, 0}, KvCase{"int4", 20, 4},
                                           KvCase{"int8", 37, 0}, KvCase{"fp8", 0, 18}),
                         CaseName);

}  // namespace
}  // namespace kvserve::engine
