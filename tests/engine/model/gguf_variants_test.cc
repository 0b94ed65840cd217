// F16, BF16 and Q8_0 copies of stories260K written with GgufWriter load, and every weight stays
// within its type's rounding bound of the F32 original; a copy with misaligned tensor data loads
// with exact values.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "engine/model/gguf.h"
#include "engine/model/gguf_writer.h"
#include "engine/model/model.h"
#include "gtest/gtest.h"
#include "kernels/dtype.h"
#include "kernels/weight_formats.h"
#include "tests/engine/model/model_test_util.h"

namespace kvserve::engine {
namespace {

using kernels::DType;
using kernels::WeightView;
using testing_util::ModelPath;

float ViewElement(const WeightView& v, int64_t i) {
  switch (v.dtype) {
    case DType::kF32:
      return static_cast<const float*>(v.data)[i];
    case DType::kF16:
      return kernels::Fp16ToFloat(static_cast<const uint16_t*>(v.data)[i]);
    case DType::kBF16:
      return kernels::Bf16ToFloat(static_cast<const uint16_t*>(v.data)[i]);
    default: {  // block-quantized, used in place: the reference dequantization of its block
      const int64_t bs = kernels::DTypeBlockSize(v.dtype);
      float block[kernels::kQK_K];
      kernels::DequantizeRow(
          v.dtype, static_cast<const uint8_t*>(v.data) + i / bs * kernels::DTypeBlockBytes(v.dtype),
          bs, block);
      return block[i % bs];
    }
  }
}

// The largest error a stored type may add to x (x from the F32 original, `block` its Q8_0 block).
// F16: round to nearest with an 11-bit significand, relative 2^-11 (absolute 2^-25 below the
// normal range). BF16: 8-bit significand, relative 2^-8. Q8_0: half a quantization step,
// absmax / 127 / 2, widened by the FP16 rounding of the scale (relative 2^-11) and float slack.
float Bound(GgmlType type, float x, const float* block) {
  switch (type) {
    case GgmlType::kF32:
      return 0.0f;
    case GgmlType::kF16:
      return std::max(std::fabs(x) * std::ldexp(1.0f, -11), std::ldexp(1.0f, -25));
    case GgmlType::kBF16:
      return std::fabs(x) * std::ldexp(1.0f, -8);
    case GgmlType::kQ8_0: {
      float amax = 0.0f;
      for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(block[i]));
      return amax / 127.0f / 2.0f * (1.0f + std::ldexp(1.0f, -10));
    }
    default:
      return NAN;
  }
}

struct Counts {
  int64_t checked = 0;
  int64_t changed = 0;  // elements whose stored value differs from the original
};

// Checks `n` loaded values against the original tensor's values stored as `type`.
void ExpectWithinBound(const std::string& name, GgmlType type, const std::vector<float>& original,
                       const std::function<float(int64_t)>& loaded, Counts& counts) {
  SCOPED_TRACE(name);
  for (int64_t i = 0; i < static_cast<int64_t>(original.size()); ++i) {
    const float x = original[i];
    const float y = loaded(i);
    const float bound = Bound(type, x, original.data() + (i / 32) * 32);
    ASSERT_LE(std::fabs(y - x), bound) << "element " << i << ": " << x << " -> " << y;
    ++counts.checked;
    counts.changed += (y != x);
  }
}

using TypeRule = GgmlType (*)(const GgufTensorInfo&);

// Writes a copy of stories260K with each tensor stored as rule(info), loads it, and checks every
// weight against the F32 original within its stored type's bound.
Counts CheckVariant(const std::string& label, TypeRule rule, DType expected_matrix_dtype) {
  Counts counts;
  auto src = GgufFile::Open(ModelPath("stories260K.gguf"));
  EXPECT_TRUE(src.ok()) << src.status();
  if (!src.ok()) return counts;
  GgufWriter w = testing_util::CopyGguf(*src, rule);
  testing_util::ScratchDir dir;
  const std::string path = dir.File("stories260K-" + label + ".gguf");
  const absl::Status written = w.WriteFile(path);
  EXPECT_TRUE(written.ok()) << written;

  auto model = LoadModel(path);
  EXPECT_TRUE(model.ok()) << model.status();
  if (!model.ok()) return counts;
  const ModelWeights& mw = (*model)->weights();
  const ModelConfig& c = (*model)->config();
  EXPECT_EQ(c.dim, 64);
  EXPECT_EQ((*model)->vocab().size(), 512);

  auto check_matrix = [&](const std::string& name, const WeightView& v) {
    const GgufTensorInfo* info = src->FindTensor(name);
    ASSERT_NE(info, nullptr) << name;
    const GgmlType stored = rule(*info);
    EXPECT_EQ(v.rows, info->ne[1]) << name;
    EXPECT_EQ(v.cols, info->ne[0]) << name;
    // Q8_0 matrices are used in place, not expanded to F32.
    EXPECT_EQ(v.dtype, stored == GgmlType::kQ8_0 ? DType::kQ8_0 : expected_matrix_dtype) << name;
    if (stored == GgmlType::kF32) {
      EXPECT_EQ(v.dtype, DType::kF32) << name;
    }
    ExpectWithinBound(
        name, stored, testing_util::TensorValues(*info),
        [&](int64_t i) { return ViewElement(v, i); }, counts);
  };
  auto check_vector = [&](const std::string& name, const float* data) {
    const GgufTensorInfo* info = src->FindTensor(name);
    ASSERT_NE(info, nullptr) << name;
    ExpectWithinBound(
        name, rule(*info), testing_util::TensorValues(*info), [&](int64_t i) { return data[i]; },
        counts);
  };
  check_matrix("token_embd.weight", mw.token_embedding);
  check_matrix("output.weight", mw.output);
  check_vector("output_norm.weight", mw.final_norm);
  for (int l = 0; l < c.num_layers; ++l) {
    const LayerWeights& lw = mw.layers[l];
    const std::string p = "blk." + std::to_string(l) + ".";
    check_vector(p + "attn_norm.weight", lw.attn_norm);
    check_vector(p + "ffn_norm.weight", lw.ffn_norm);
    check_matrix(p + "attn_q.weight", lw.wq);
    check_matrix(p + "attn_k.weight", lw.wk);
    check_matrix(p + "attn_v.weight", lw.wv);
    check_matrix(p + "attn_output.weight", lw.wo);
    check_matrix(p + "ffn_gate.weight", lw.w_gate);
    check_matrix(p + "ffn_down.weight", lw.w_down);
    check_matrix(p + "ffn_up.weight", lw.w_up);
  }
  return counts;
}

// Total element count of stories260K's 48 tensors.
constexpr int64_t kStories260KElements =
    2 * 512 * 64 + 64 + 5 * (64 * 64 * 2 + 32 * 64 * 2 + 3 * 172 * 64 + 2 * 64);

TEST(GgufModelTest, F16CopyWithinRoundingBound) {
  // Everything F16, norms included (the loader converts norms to F32).
  const Counts counts = CheckVariant(
      "f16", [](const GgufTensorInfo&) { return GgmlType::kF16; }, DType::kF16);
  EXPECT_EQ(counts.checked, kStories260KElements);
  EXPECT_GT(counts.changed, counts.checked / 2);  // the copy really was rounded
}

TEST(GgufModelTest, Bf16CopyWithinRoundingBound) {
  const Counts counts = CheckVariant(
      "bf16", [](const GgufTensorInfo&) { return GgmlType::kBF16; }, DType::kBF16);
  EXPECT_EQ(counts.checked, kStories260KElements);
  EXPECT_GT(counts.changed, counts.checked / 2);
}

TEST(GgufModelTest, Q8_0CopyWithinQuantizationBound) {
  // Q8_0 where the row length allows it (ffn_down rows have 172 columns: kept F16), norms F32.
  const Counts counts = CheckVariant(
      "q8_0",
      [](const GgufTensorInfo& t) {
        if (t.ne.size() == 1) return GgmlType::kF32;
        return t.ne[0] % 32 == 0 ? GgmlType::kQ8_0 : GgmlType::kF16;
      },
      DType::kF16);
  EXPECT_EQ(counts.checked, kStories260KElements);
  EXPECT_GT(counts.changed, counts.checked / 2);
}

TEST(GgufModelTest, Q8_0NormsAreDequantized) {
  const Counts counts = CheckVariant(
      "q8_0_all",
      [](const GgufTensorInfo& t) { return t.ne[0] % 32 == 0 ? GgmlType::kQ8_0 : GgmlType::kF32; },
      DType::kF32);
  EXPECT_EQ(counts.checked, kStories260KElements);
}

TEST(GgufModelTest, MisalignedTensorDataIsCopiedExactly) {
  auto src = GgufFile::Open(ModelPath("stories260K.gguf"));
  ASSERT_TRUE(src.ok()) << src.status();
  for (const GgmlType type : {GgmlType::kF32, GgmlType::kF16}) {
    SCOPED_TRACE(static_cast<int>(type));
    GgufWriter w = testing_util::CopyGguf(
        *src, [type](const GgufTensorInfo& t) { return t.ne.size() == 1 ? GgmlType::kF32 : type; });
    w.SetU32("general.alignment", 1);
    // With alignment 1 the data section starts right after the tensor infos: pick a padding
    // string that makes that offset odd.
    w.SetString("test.padding", "x");
    auto data_offset = [&w]() -> uint64_t {
      const std::string bytes = *w.Serialize();
      auto parsed = GgufFile::Parse(
          absl::Span<const uint8_t>(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()),
          "in memory");
      return parsed.ok() ? parsed->data_offset() : 0;
    };
    if (data_offset() % 2 == 0) w.SetString("test.padding", "xx");
    testing_util::ScratchDir dir;
    const std::string path = dir.File("misaligned.gguf");
    ASSERT_TRUE(w.WriteFile(path).ok());

    auto parsed = GgufFile::Open(path);
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    ASSERT_EQ(parsed->alignment(), 1u);
    ASSERT_EQ(parsed->data_offset() % 2, 1u);
    const GgufTensorInfo* embd = parsed->FindTensor("token_embd.weight");
    ASSERT_NE(reinterpret_cast<uintptr_t>(embd->data) % 2, 0u);

    auto model = LoadModel(path);
    ASSERT_TRUE(model.ok()) << model.status();
    const ModelWeights& mw = (*model)->weights();
    const DType expected = type == GgmlType::kF32 ? DType::kF32 : DType::kF16;
    EXPECT_EQ(mw.token_embedding.dtype, expected);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(mw.token_embedding.data) % 4, 0u);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(mw.layers[3].w_down.data) % 4, 0u);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(mw.final_norm) % alignof(float), 0u);
    Counts counts;
    for (const auto& [name, view] :
         {std::pair<std::string, const WeightView*>{"token_embd.weight", &mw.token_embedding},
          {"blk.3.ffn_down.weight", &mw.layers[3].w_down},
          {"blk.0.attn_k.weight", &mw.layers[0].wk}}) {
      ExpectWithinBound(
          name, type, testing_util::TensorValues(*src->FindTensor(name)),
          [&](int64_t i) { return ViewElement(*view, i); }, counts);
    }
    ExpectWithinBound(
        "output_norm.weight", GgmlType::kF32,
        testing_util::TensorValues(*src->FindTensor("output_norm.weight")),
        [&](int64_t i) { return mw.final_norm[i]; }, counts);
    if (type == GgmlType::kF32) {
      EXPECT_EQ(counts.changed, 0);
    }
  }
}

TEST(GgufModelTest, GgufVersion2IsAccepted) {
  std::string bytes = testing_util::ReadBytes(ModelPath("stories260K.gguf"));
  testing_util::PutLe<uint32_t>(bytes, 4, 2);
  testing_util::ScratchDir dir;
  testing_util::WriteBytes(dir.File("v2.gguf"), bytes);
  auto model = LoadModel(dir.File("v2.gguf"));
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ((*model)->config().num_layers, 5);
}

TEST(GgufModelTest, OptionalKeysTakeTheirDefaults) {
  auto src = GgufFile::Open(ModelPath("stories260K.gguf"));
  ASSERT_TRUE(src.ok()) << src.status();
  GgufWriter w = testing_util::CopyGguf(
      *src, [](const GgufTensorInfo& t) { return t.type; },
      [](const std::string& name) { return name != "output.weight"; });
  ASSERT_TRUE(w.Remove("llama.rope.dimension_count"));
  ASSERT_TRUE(w.Remove("general.name"));
  ASSERT_TRUE(w.Remove("tokenizer.ggml.bos_token_id"));
  w.SetF32("llama.rope.freq_base", 500000.0f);
  w.SetBool("tokenizer.ggml.add_bos_token", false);
  w.SetBool("tokenizer.ggml.add_space_prefix", false);
  w.SetU32("tokenizer.ggml.eos_token_id", 5);
  testing_util::ScratchDir dir;
  ASSERT_TRUE(w.WriteFile(dir.File("tied.gguf")).ok());
  auto model = LoadModel(dir.File("tied.gguf"));
  ASSERT_TRUE(model.ok()) << model.status();
  const LoadedModel& m = **model;
  EXPECT_EQ(m.config().name, "tied");  // the file's stem
  EXPECT_EQ(m.config().rope_freq_base, 500000.0f);
  EXPECT_TRUE(m.config().tied_classifier);
  EXPECT_EQ(m.weights().output.data, m.weights().token_embedding.data);
  EXPECT_EQ(m.vocab().bos_id, 1);
  EXPECT_EQ(m.vocab().eos_id, 5);
  EXPECT_FALSE(m.vocab().add_bos);
  EXPECT_FALSE(m.vocab().add_space_prefix);
}

}  // namespace
}  // namespace kvserve::engine
