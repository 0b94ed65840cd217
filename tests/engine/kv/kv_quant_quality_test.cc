// Quality of every quantized KV format on the real model: perplexity of stories260K over the
// first 40 documents of tinystories_valid_a.txt (512-token context) stays within each format's
// target, relative to FP32 KV on the same documents, with and without a full-precision window.
// A regression of an encoding (scales, zero points, rounding) shows up here first.
#include <cmath>
#include <fstream>
#include <sstream>
#include <string>

#include "engine/eval/perplexity.h"
#include "engine/kv/block_pool.h"
#include "engine/kv/kv_cache_policy.h"
#include "engine/runtime/local_model.h"
#include "gtest/gtest.h"
#include "kernels/kv_format.h"

namespace kvserve::engine {
namespace {

using kernels::KvFormat;

double MeanNll(const std::string& text, KvFormat format, int window, int sinks) {
  LocalModelOptions o;
  o.model_path = std::string(KVSERVE_MODELS_DIR) + "/stories260K.gguf";
  o.kv_format = format;
  o.kv_window_format = KvFormat::kFp32;
  o.kv_recent_window = window;
  o.kv_sink_tokens = sinks;
  auto lm = LocalModel::Open(o);
  EXPECT_TRUE(lm.ok()) << lm.status();
  if (!lm.ok()) return NAN;
  PerplexityOptions po;
  po.max_tokens = 512;
  po.max_documents = 40;
  auto r = EvaluatePerplexity(**lm, text, po);
  EXPECT_TRUE(r.ok()) << r.status();
  EXPECT_EQ((*lm)->kv_pool().used_blocks(), 0);
  return r.ok() ? r->mean_nll() : NAN;
}

TEST(KvQuantQualityTest, PerplexityIncreaseWithinEachFormatsTarget) {
  std::ifstream in(std::string(KVSERVE_EVAL_DIR) + "/tinystories_valid_a.txt");
  ASSERT_TRUE(in.good());
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string text = ss.str();
  const double reference = MeanNll(text, KvFormat::kFp32, 0, 0);
  struct Target {
    KvFormat format;
    double window;     // max relative increase, recent window 32 + 4 sinks at FP32
    double no_window;  // max relative increase, no window, no sinks
  };
  // Targets of the design (INT8, INT4, FP8, NVFP4 with a window, INT2 with a window); for NVFP4
  // and INT2 without a window, regression bounds above the measured 8.1% and 16.2%.
  const Target targets[] = {
      {KvFormat::kInt8, 0.0001, 0.0005}, {KvFormat::kInt4, 0.001, 0.005},
      {KvFormat::kFp8, 0.005, 0.01},     {KvFormat::kNvfp4, 0.01, 0.10},
      {KvFormat::kInt2, 0.03, 0.20},
  };
  for (const Target& t : targets) {
    const double windowed = std::expm1(MeanNll(text, t.format, 32, 4) - reference);
    const double plain = std::expm1(MeanNll(text, t.format, 0, 0) - reference);
    EXPECT_LE(windowed, t.window) << kernels::KvFormatName(t.format) << " with a window";
    EXPECT_LE(plain, t.no_window) << kernels::KvFormatName(t.format) << " without a window";
  }
}

// Formats that need the whole block are staged in the window format even with no window; a
// window format that cannot be written token by token, or a shape a format cannot hold, is
// refused with an error naming it.
TEST(KvQuantPolicyTest, StagingAndRefusals) {
  const KvGeometry geom{5, 4, 8, 16};
  for (KvFormat f :
       {KvFormat::kFp8, KvFormat::kInt8, KvFormat::kInt4, KvFormat::kNvfp4, KvFormat::kInt2}) {
    BlockPool pool(geom, 1 << 22);
    KvCachePolicyConfig c;
    c.format = f;
    auto p = KvCachePolicy::Create(&pool, c);
    ASSERT_TRUE(p.ok()) << p.status();
    EXPECT_TRUE(p->demotes()) << kernels::KvFormatName(f);
    c.window_format = f;
    EXPECT_NE(KvCachePolicy::Create(&pool, c).status().message().find("window_format"),
              std::string::npos);
  }
  BlockPool wide(KvGeometry{2, 1, 320, 16}, 1 << 24);
  KvCachePolicyConfig c;
  c.format = KvFormat::kInt4;
  const absl::Status s = KvCachePolicy::Create(&wide, c).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("int4 cannot store"), std::string::npos) << s;
  c.format = KvFormat::kNvfp4;  // no per-channel parameters: any head_dim
  EXPECT_TRUE(KvCachePolicy::Create(&wide, c).ok());
}

// Accounting by format splits every byte of a quantized block into values, scales and padding.
TEST(KvQuantPolicyTest, AccountingCoversEveryByte) {
  const KvGeometry geom{3, 8, 128, 16};
  for (KvFormat f :
       {KvFormat::kFp8, KvFormat::kInt8, KvFormat::kInt4, KvFormat::kNvfp4, KvFormat::kInt2}) {
    BlockPool pool(geom, 1 << 24);
    auto layout = pool.RegisterUniformLayout(f);
    ASSERT_TRUE(layout.ok());
    auto id = pool.Allocate(*layout);
    ASSERT_TRUE(id.ok());
    const KvPoolStats st = pool.Stats();
    const KvFormatUsage& u = st.used_by_format[static_cast<int>(f)];
    EXPECT_EQ(u.total(), pool.layout(*layout).block_bytes) << kernels::KvFormatName(f);
    EXPECT_EQ(u.regions, 2 * geom.num_layers);
    const kernels::KvRegionShape shape{16, 8, 128};
    EXPECT_EQ(u.scale_bytes,
              geom.num_layers * (kernels::KvRegionScaleBytes(f, kernels::KvRole::kKey, shape) +
                                 kernels::KvRegionScaleBytes(f, kernels::KvRole::kValue, shape)));
    EXPECT_EQ(u.value_bytes, 2 * geom.num_layers * 16 * 8 * 128 *
                                 kernels::KvSchemeOf(f, kernels::KvRole::kKey).value_bits / 8);
    pool.Release(*id);
  }
}

}  // namespace
}  // namespace kvserve::engine
