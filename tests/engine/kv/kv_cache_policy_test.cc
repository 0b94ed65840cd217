#include "engine/kv/kv_cache_policy.h"

#include <fstream>
#include <random>
#include <sstream>

#include "engine/eval/perplexity.h"
#include "engine/runtime/local_model.h"
#include "gtest/gtest.h"
#include "kernels/cpu/kv_quantize.h"

namespace kvserve::engine {
namespace {

using kernels::KvFormat;

constexpr KvGeometry kGeom{5, 4, 8, 16};  // stories260K

TEST(KvCachePolicyTest, ColdEligibilityHandWorked) {
  BlockPool pool(kGeom, 1 << 22);
  KvCachePolicyConfig c;
  c.format = KvFormat::kBf16;
  c.window_format = KvFormat::kFp32;
  c.recent_window = 32;
  c.sink_tokens = 4;
  auto p = KvCachePolicy::Create(&pool, c);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_TRUE(p->demotes());
  // 100 tokens: window covers [68, 100); block 0 holds the sinks.
  EXPECT_FALSE(p->ColdEligible(0, 100));
  EXPECT_TRUE(p->ColdEligible(1, 100));
  EXPECT_TRUE(p->ColdEligible(3, 100));   // [48, 64)
  EXPECT_FALSE(p->ColdEligible(4, 100));  // [64, 80) overlaps the window
  EXPECT_FALSE(p->ColdEligible(6, 100));  // partial
}

TEST(KvCachePolicyTest, NextDemotionPointHandWorked) {
  BlockPool pool(kGeom, 1 << 22);
  KvCachePolicyConfig c;
  c.format = KvFormat::kInt4;
  c.recent_window = 20;
  c.sink_tokens = 4;
  auto p = KvCachePolicy::Create(&pool, c);
  ASSERT_TRUE(p.ok()) << p.status();
  // Block 0 holds the sinks and never demotes; block b >= 1 becomes eligible at
  // (b + 1) * 16 + 20 tokens: 52, 68, 84, ...
  EXPECT_EQ(p->NextDemotionPoint(0), 52);
  EXPECT_EQ(p->NextDemotionPoint(51), 52);
  EXPECT_EQ(p->NextDemotionPoint(52), 68);
  EXPECT_EQ(p->NextDemotionPoint(67), 68);
  EXPECT_EQ(p->NextDemotionPoint(68), 84);
  // Against the definition: the first count above t at which the eligible set grows.
  for (int64_t t = 0; t < 200; ++t) {
    int64_t want = t + 1;
    auto eligible = [&](int64_t tokens) {
      int64_t n = 0;
      for (int64_t b = 0; b < 20; ++b) n += p->ColdEligible(b, tokens);
      return n;
    };
    while (eligible(want) == eligible(t)) ++want;
    EXPECT_EQ(p->NextDemotionPoint(t), want) << t;
  }
  // No window, no sinks: every block boundary.
  BlockPool pool2(kGeom, 1 << 22);
  KvCachePolicyConfig plain;
  plain.format = KvFormat::kInt8;
  auto q = KvCachePolicy::Create(&pool2, plain);
  ASSERT_TRUE(q.ok()) << q.status();
  EXPECT_EQ(q->NextDemotionPoint(0), 16);
  EXPECT_EQ(q->NextDemotionPoint(15), 16);
  EXPECT_EQ(q->NextDemotionPoint(16), 32);
}

TEST(KvCachePolicyTest, NoWindowAndTokenWritableFormatWritesFinalFormatDirectly) {
  BlockPool pool(kGeom, 1 << 22);
  KvCachePolicyConfig c;
  c.format = KvFormat::kFp16;
  auto p = KvCachePolicy::Create(&pool, c);
  ASSERT_TRUE(p.ok());
  EXPECT_FALSE(p->demotes());
  EXPECT_EQ(p->write_layout(), p->cold_layout());
}

TEST(KvCachePolicyTest, BadSettingsAreNamed) {
  BlockPool pool(kGeom, 1 << 22);
  KvCachePolicyConfig c;
  c.layer_formats[7] = KvFormat::kFp16;
  EXPECT_NE(
      KvCachePolicy::Create(&pool, c).status().message().find("kv_cache.layer_formats: layer"),
      std::string::npos);
  c = {};
  c.recent_window = -1;
  EXPECT_NE(KvCachePolicy::Create(&pool, c).status().message().find("recent_window"),
            std::string::npos);
  c = {};
  c.format = KvFormat::kFp32;
  c.window_format = KvFormat::kBf16;
  c.sink_tokens = 4;
  EXPECT_NE(KvCachePolicy::Create(&pool, c).status().message().find("window_format"),
            std::string::npos);
}

TEST(KvCachePolicyTest, DemotionConvertsExactlyTheEligibleBlocks) {
  BlockPool pool(kGeom, 1 << 22);
  KvCachePolicyConfig c;
  c.format = KvFormat::kBf16;
  c.layer_formats[2] = KvFormat::kFp16;
  c.window_format = KvFormat::kFp32;
  c.recent_window = 32;
  c.sink_tokens = 4;
  auto p = KvCachePolicy::Create(&pool, c);
  ASSERT_TRUE(p.ok());
  SequenceKv seq(&pool, p->write_layout());
  ASSERT_TRUE(seq.Reserve(100).ok());  // 7 blocks
  const kernels::KvRegionShape shape{16, 4, 8};
  const size_t region = 16 * 4 * 8;
  std::mt19937 rng(3);
  std::normal_distribution<float> dist(0, 3);
  // values[block][layer][k/v][region]
  std::vector<std::vector<float>> values(7, std::vector<float>(5 * 2 * region));
  for (int b = 0; b < 7; ++b) {
    for (float& x : values[b]) x = dist(rng);
    uint8_t* base = pool.mutable_block_data(seq.block_table()[b]);
    for (int l = 0; l < 5; ++l) {
      const auto& r = pool.layout(p->write_layout()).regions[l];
      ASSERT_TRUE(kernels::cpu::QuantizeKvRegion(KvFormat::kFp32, kernels::KvRole::kKey,
                                                 &values[b][(2 * l) * region], shape, 16,
                                                 base + r.k_offset));
      ASSERT_TRUE(kernels::cpu::QuantizeKvRegion(KvFormat::kFp32, kernels::KvRole::kValue,
                                                 &values[b][(2 * l + 1) * region], shape, 16,
                                                 base + r.v_offset));
    }
  }
  const int64_t before = pool.used_bytes();
  ASSERT_TRUE(p->Demote(seq, 100).ok());
  for (int b = 0; b < 7; ++b) {
    const bool cold = b >= 1 && b <= 3;
    EXPECT_EQ(pool.layout_of(seq.block_table()[b]), cold ? p->cold_layout() : p->write_layout())
        << "block " << b;
    const BlockLayout& layout = pool.layout(pool.layout_of(seq.block_table()[b]));
    const uint8_t* base = pool.block_data(seq.block_table()[b]);
    for (int l = 0; l < 5; ++l) {
      std::vector<float> out(region);
      kernels::cpu::DequantizeKvRegion(layout.regions[l].format, kernels::KvRole::kKey,
                                       base + layout.regions[l].k_offset, shape, 16, out.data());
      for (size_t i = 0; i < region; ++i) {
        const float want = values[b][(2 * l) * region + i];
        const float rounded = !cold    ? want
                              : l == 2 ? kernels::Fp16ToFloat(kernels::FloatToFp16(want))
                                       : kernels::Bf16ToFloat(kernels::FloatToBf16(want));
        ASSERT_EQ(out[i], rounded) << "block " << b << " layer " << l << " at " << i;
      }
    }
  }
  // Three blocks went from FP32 (20480 bytes) to 4 BF16 + 1 FP16 layers (10240 bytes).
  EXPECT_EQ(pool.used_bytes(), before - 3 * (20480 - 10240));
  EXPECT_EQ(seq.demoted_blocks(), 4);
  // The window moves on: at 116 tokens block 4 [64, 80) is out of it.
  ASSERT_TRUE(seq.Reserve(116).ok());
  ASSERT_TRUE(p->Demote(seq, 116).ok());
  EXPECT_EQ(pool.layout_of(seq.block_table()[4]), p->cold_layout());
  EXPECT_EQ(pool.layout_of(seq.block_table()[5]), p->write_layout());
}

TEST(KvCachePolicyTest, WindowOfFullPrecisionLowersThePerplexityCost) {
  std::ifstream in(std::string(KVSERVE_EVAL_DIR) + "/tinystories_valid_a.txt");
  std::stringstream ss;
  ss << in.rdbuf();
  auto ppl = [&](KvFormat format, int window, int sinks) {
    LocalModelOptions o;
    o.model_path = std::string(KVSERVE_MODELS_DIR) + "/stories260K.gguf";
    o.kv_format = format;
    o.kv_window_format = KvFormat::kFp32;
    o.kv_recent_window = window;
    o.kv_sink_tokens = sinks;
    auto lm = LocalModel::Open(o);
    EXPECT_TRUE(lm.ok()) << lm.status();
    PerplexityOptions po;
    po.max_tokens = 512;
    po.max_documents = 40;
    auto r = EvaluatePerplexity(**lm, ss.str(), po);
    EXPECT_TRUE(r.ok()) << r.status();
    EXPECT_EQ((*lm)->kv_pool().used_blocks(), 0);
    return r->perplexity();
  };
  const double fp32 = ppl(KvFormat::kFp32, 0, 0);
  const double bf16 = ppl(KvFormat::kBf16, 0, 0);
  const double mixed = ppl(KvFormat::kBf16, 32, 4);
  EXPECT_NE(bf16, fp32);
  EXPECT_LT(std::abs(mixed - fp32), std::abs(bf16 - fp32));
}

}  // namespace
}  // namespace kvserve::engine
