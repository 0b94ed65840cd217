#include "engine/eval/calibrate.h"

#include <fstream>
#include <random>
#include <sstream>

#include "gtest/gtest.h"

namespace kvserve::engine {
namespace {

using kernels::KvFormat;

// stories260K: 4 KV heads, head_dim 8, block 16 -> 2 * 16 * 4 * 8 = 1024 elements per layer and
// block. Layer bytes worked out from the layout in kernels/kv_format.h:
//   fp16: 2 x 1024 values                                  = 2048
//   int8: K 512 + 16 head + 32 channel (=560, pad 576); V 512 + 128 row scales = 640 -> 1216
//   int4: K 256 + 16 + 64 (=336, pad 384);              V 256 + 256 params     = 512 ->  896
//   int2: K 128 + 16 + 64 (=208, pad 256);              V 128 + 256 = 384            ->  640
constexpr kernels::KvRegionShape kStories{16, 4, 8};
constexpr int kLayers = 5;
int64_t HandBytes(KvFormat f) {
  switch (f) {
    case KvFormat::kFp16:
      return 2048;
    case KvFormat::kInt8:
      return 1216;
    case KvFormat::kInt4:
      return 896;
    case KvFormat::kInt2:
      return 640;
    default:
      ADD_FAILURE() << "no hand figure";
      return 0;
  }
}

TEST(CalibrateTest, BitsPerElementIncludeScalesAndPadding) {
  EXPECT_DOUBLE_EQ(KvFormatBitsPerElement(KvFormat::kFp32, kStories), 32.0);
  EXPECT_DOUBLE_EQ(KvFormatBitsPerElement(KvFormat::kFp16, kStories), 16.0);
  EXPECT_DOUBLE_EQ(KvFormatBitsPerElement(KvFormat::kInt8, kStories), 9.5);
  EXPECT_DOUBLE_EQ(KvFormatBitsPerElement(KvFormat::kInt4, kStories), 7.0);
  EXPECT_DOUBLE_EQ(KvFormatBitsPerElement(KvFormat::kInt2, kStories), 5.0);
  // head_dim 128, 8 heads: int4 K 8192 + 32 + 2048 + 32 pad, V 8192 + 1024 -> 19520 bytes for
  // 32768 elements.
  EXPECT_DOUBLE_EQ(KvFormatBitsPerElement(KvFormat::kInt4, {16, 8, 128}), 19520.0 * 8 / 32768);
}

TEST(CalibrateTest, KnapsackWorkedByHand) {
  // Three layers, choices of 4, 2 and 1 bytes; budget 7 bytes.
  // Costs: layer 0 is sensitive, layers 1 and 2 barely.
  const std::vector<std::vector<double>> cost = {
      {0.0, 5.0, 9.0}, {0.0, 0.1, 0.3}, {0.0, 0.2, 0.25}};
  auto pick = ChooseLayerFormats(cost, {4, 2, 1}, 7);
  ASSERT_TRUE(pick.ok()) << pick.status();
  // 4 + 2 + 1 = 7: layer 0 full (0), layer 1 at 2 bytes (0.1), layer 2 at 1 byte (0.25): 0.35.
  // The alternative 4 + 1 + 2 costs 0.3 + 0.2 = 0.5.
  EXPECT_EQ(*pick, (std::vector<int>{0, 1, 2}));
  // Budget 12 fits every layer at full precision.
  EXPECT_EQ(*ChooseLayerFormats(cost, {4, 2, 1}, 12), (std::vector<int>{0, 0, 0}));
  // Budget 3 forces the smallest everywhere; 2 is infeasible.
  EXPECT_EQ(*ChooseLayerFormats(cost, {4, 2, 1}, 3), (std::vector<int>{2, 2, 2}));
  EXPECT_FALSE(ChooseLayerFormats(cost, {4, 2, 1}, 2).ok());
  // A cheaper format that measured *better* is taken even with room to spare.
  EXPECT_EQ(*ChooseLayerFormats({{0.0, -0.01}}, {4, 2}, 4), (std::vector<int>{1}));
  // Malformed input.
  EXPECT_FALSE(ChooseLayerFormats({{0.0, 1.0}}, {4, 0}, 8).ok());
  EXPECT_FALSE(ChooseLayerFormats({{0.0}}, {4, 2}, 8).ok());
  EXPECT_FALSE(ChooseLayerFormats({}, {4, 2}, 8).ok());
}

TEST(CalibrateTest, KnapsackEqualsBruteForce) {
  std::mt19937 rng(7);
  std::uniform_real_distribution<double> cost_dist(-0.05, 1.0);
  const std::vector<int64_t> bytes = {2048, 1216, 896, 640};
  for (int trial = 0; trial < 200; ++trial) {
    const int layers = 1 + trial % 5;
    std::vector<std::vector<double>> cost(layers, std::vector<double>(bytes.size()));
    for (auto& row : cost) {
      for (double& c : row) c = cost_dist(rng);
    }
    const int64_t budget = layers * 640 + static_cast<int64_t>(rng() % (layers * 1500 + 1));
    double best = 1e300;
    int combos = 1;
    for (int l = 0; l < layers; ++l) combos *= static_cast<int>(bytes.size());
    for (int code = 0; code < combos; ++code) {
      int64_t used = 0;
      double total = 0;
      for (int l = 0, c = code; l < layers; ++l, c /= 4) {
        used += bytes[c % 4];
        total += cost[l][c % 4];
      }
      if (used <= budget) best = std::min(best, total);
    }
    auto pick = ChooseLayerFormats(cost, bytes, budget);
    ASSERT_TRUE(pick.ok()) << pick.status();
    int64_t used = 0;
    double total = 0;
    for (int l = 0; l < layers; ++l) {
      used += bytes[(*pick)[l]];
      total += cost[l][(*pick)[l]];
    }
    EXPECT_LE(used, budget);
    EXPECT_NEAR(total, best, 1e-12) << "trial " << trial;
  }
}

class CalibrateModelTest : public ::testing::Test {
 protected:
  static std::string Text() {
    std::ifstream in(std::string(KVSERVE_EVAL_DIR) + "/tinystories_valid_a.txt");
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }
  static LocalModelOptions Model() {
    LocalModelOptions o;
    o.model_path = std::string(KVSERVE_MODELS_DIR) + "/stories260K.gguf";
    o.num_threads = 1;
    return o;
  }
  static CalibrationOptions Options() {
    CalibrationOptions c;
    c.formats = {KvFormat::kFp16, KvFormat::kInt8, KvFormat::kInt4, KvFormat::kInt2};
    c.perplexity.max_tokens = 512;
    c.perplexity.max_documents = 16;
    return c;
  }
};

TEST_F(CalibrateModelTest, BudgetIsMetAndMoreBitsNeverMeasureWorse) {
  const std::string text = Text();
  ASSERT_FALSE(text.empty());
  auto s = MeasureLayerSensitivity(Model(), text, Options());
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->reference, KvFormat::kFp16);
  EXPECT_EQ(s->num_layers, kLayers);
  EXPECT_EQ(s->documents, 16);
  ASSERT_EQ(s->perplexity.size(), static_cast<size_t>(kLayers));
  // int2 hurts, and more than int4, summed over the layers (int4 alone in one layer is within
  // the noise of 16 documents either way).
  double int4 = 0, int2 = 0;
  for (const auto& row : s->perplexity) {
    EXPECT_EQ(row[0], s->reference_perplexity);
    int4 += row[2] - s->reference_perplexity;
    int2 += row[3] - s->reference_perplexity;
  }
  EXPECT_GT(int2, 0.01 * s->reference_perplexity);
  EXPECT_GT(int2, int4);

  double previous = 1e300;
  for (double budget : {5.0, 5.5, 6.0, 7.0, 8.0, 9.5, 12.0, 16.0}) {
    SCOPED_TRACE(budget);
    auto choice = ChooseCalibration(*s, budget);
    ASSERT_TRUE(choice.ok()) << choice.status();
    ASSERT_EQ(choice->layer_formats.size(), static_cast<size_t>(kLayers));
    // The budget by arithmetic: bytes of the chosen layers * 8 <= budget * 5 layers * 1024.
    int64_t bytes = 0;
    for (KvFormat f : choice->layer_formats) bytes += HandBytes(f);
    EXPECT_LE(static_cast<double>(bytes) * 8, budget * kLayers * 1024);
    EXPECT_DOUBLE_EQ(choice->average_bits, static_cast<double>(bytes) * 8 / (kLayers * 1024));
    auto lm = LocalModel::Open(ApplyCalibration(Model(), *choice));
    ASSERT_TRUE(lm.ok()) << lm.status();
    auto measured = EvaluatePerplexity(**lm, text, Options().perplexity);
    ASSERT_TRUE(measured.ok()) << measured.status();
    EXPECT_LE(measured->perplexity(), previous);
    previous = measured->perplexity();
  }
  // The extremes: 5 bits is every layer in int2, 16 bits leaves room for every layer in fp16.
  EXPECT_EQ(ChooseCalibration(*s, 5.0)->layer_formats,
            std::vector<KvFormat>(kLayers, KvFormat::kInt2));
  EXPECT_LE(ChooseCalibration(*s, 16.0)->average_bits, 16.0);
  // Below int2 nothing fits: an error naming the smallest candidate.
  auto too_small = ChooseCalibration(*s, 4.9);
  ASSERT_FALSE(too_small.ok());
  EXPECT_NE(too_small.status().message().find("int2 at 5 bits"), std::string::npos)
      << too_small.status();
  EXPECT_FALSE(ChooseCalibration(*s, 0).ok());
  EXPECT_FALSE(ChooseCalibration(*s, -3).ok());
}

TEST_F(CalibrateModelTest, CalibrateVerifiesTheChoiceAndWritesAFragment) {
  CalibrationOptions options = Options();
  options.formats = {KvFormat::kFp16, KvFormat::kInt4, KvFormat::kInt2};
  options.perplexity.max_documents = 8;
  options.budget_bits = 7.0;
  int progress_lines = 0;
  options.progress = [&](const std::string&) { ++progress_lines; };
  LocalModelOptions base = Model();
  base.kv_recent_window = 16;
  base.kv_sink_tokens = 4;
  auto r = Calibrate(base, Text(), options);
  ASSERT_TRUE(r.ok()) << r.status();
  // Reference + 5 layers x 2 formats + the verification.
  EXPECT_EQ(progress_lines, 1 + kLayers * 2 + 1);
  EXPECT_LE(r->choice.average_bits, 7.0);
  // The verification equals an independent evaluation of the same configuration.
  auto lm = LocalModel::Open(ApplyCalibration(base, r->choice));
  ASSERT_TRUE(lm.ok()) << lm.status();
  auto again = EvaluatePerplexity(**lm, Text(), options.perplexity);
  ASSERT_TRUE(again.ok());
  EXPECT_DOUBLE_EQ(again->perplexity(), r->measured_perplexity);
  const std::string yaml = FormatCalibrationYaml(*r, base, "tinystories_valid_a.txt");
  const LocalModelOptions applied = ApplyCalibration(base, r->choice);
  EXPECT_NE(yaml.find("kv_cache:\n  format: " +
                      std::string(kernels::KvFormatName(applied.kv_format)) + "\n"),
            std::string::npos)
      << yaml;
  EXPECT_NE(yaml.find("  layer_formats: \"" + FormatLayerFormats(applied.kv_layer_formats) +
                      "\"\n  recent_window: 16\n  sink_tokens: 4\n  window_format: fp16\n"),
            std::string::npos)
      << yaml;
  // Every layer's format is either the default or an override.
  for (int l = 0; l < kLayers; ++l) {
    const auto it = applied.kv_layer_formats.find(l);
    EXPECT_EQ(it == applied.kv_layer_formats.end() ? applied.kv_format : it->second,
              r->choice.layer_formats[l]);
  }
}

TEST_F(CalibrateModelTest, BadInputIsRefusedBeforeMeasuring) {
  CalibrationOptions options = Options();
  options.budget_bits = 4.0;  // below int2's 5 bits at head_dim 8
  int progress_lines = 0;
  options.progress = [&](const std::string&) { ++progress_lines; };
  auto r = Calibrate(Model(), Text(), options);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("budget 4 bits/element"), std::string::npos) << r.status();
  EXPECT_EQ(progress_lines, 0);
  options.budget_bits = 8;
  options.formats = {KvFormat::kInt4, KvFormat::kInt4};
  r = Calibrate(Model(), Text(), options);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("'int4' is listed twice"), std::string::npos) << r.status();
  options.formats = {};
  EXPECT_FALSE(Calibrate(Model(), Text(), options).ok());
}

}  // namespace
}  // namespace kvserve::engine
