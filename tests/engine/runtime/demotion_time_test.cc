// The generator reports how much of its step time went into demoting blocks (quantize-on-write),
// which decode_bench turns into the share recorded in bench/RESULTS.md.
#include "engine/runtime/local_model.h"
#include "gtest/gtest.h"

namespace kvserve::engine {
namespace {

absl::Duration DemotionTime(kernels::KvFormat format, absl::Duration* step_time) {
  LocalModelOptions o;
  o.model_path = std::string(KVSERVE_MODELS_DIR) + "/stories260K.gguf";
  o.kv_format = format;
  o.num_threads = 1;
  auto lm = LocalModel::Open(o);
  EXPECT_TRUE(lm.ok()) << lm.status();
  if (!lm.ok()) return absl::ZeroDuration();
  GenerationRequest r;
  r.prompt = (*lm)->tokenizer().Encode("Once upon a time", true);
  r.max_tokens = 64;
  r.ignore_eos = true;
  r.sampling.temperature = 0;
  auto res = (*lm)->generator().Run({r, r});
  EXPECT_TRUE(res.ok()) << res.status();
  *step_time = (*lm)->generator().step_time();
  return (*lm)->generator().demotion_time();
}

TEST(DemotionTimeTest, CountedOnlyForFormatsThatDemote) {
  absl::Duration step;
  // fp16 blocks are written in their final format: nothing is demoted.
  EXPECT_EQ(DemotionTime(kernels::KvFormat::kFp16, &step), absl::ZeroDuration());
  EXPECT_GT(step, absl::ZeroDuration());
  // int4 blocks are written in fp16 and encoded when full: 2 sequences x 4 full blocks.
  const absl::Duration demotion = DemotionTime(kernels::KvFormat::kInt4, &step);
  EXPECT_GT(demotion, absl::ZeroDuration());
  EXPECT_LT(demotion, step);
}

}  // namespace
}  // namespace kvserve::engine
