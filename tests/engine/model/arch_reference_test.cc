// Every architecture and weight type against an independent plain-NumPy implementation
// (tests/engine/model/reference_forward.py, float64, written from each architecture's
// description and ggml's block layouts):
//  * the dequantized values of every block-quantized type, on blocks our quantizer wrote and on
//    tensors llama.cpp's quantizer wrote (../shared/models/arch), equal bit for bit;
//  * random-weight models of each architecture (llama, qwen2, qwen3, phi3) at a small shape,
//    written by our GGUF writer and quantized by our quantizer: the log-likelihood of every
//    position of a sequence and the argmax agree with the reference's logits.
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_join.h"
#include "engine/model/gguf.h"
#include "engine/model/gguf_writer.h"
#include "engine/model/model.h"
#include "engine/model/sequence_scoring.h"
#include "engine/model/synthetic_model.h"
#include "gtest/gtest.h"
#include "kernels/weight_formats.h"
#include "model_test_util.h"
#include "nlohmann/json.hpp"

namespace kvserve::engine {
namespace {

using Json = nlohmann::json;
using testing_util::ScratchDir;

constexpr int kNoNumpy = 3;  // reference_forward.py's exit status without NumPy

// Runs reference_forward.py with `args`; its JSON output, or null JSON with *status set to the
// exit status.
Json RunReference(const std::string& args, int* status) {
  const std::string script =
      std::string(KVSERVE_SOURCE_DIR) + "/tests/engine/model/reference_forward.py";
  const std::string cmd = "/usr/bin/python3 '" + script + "' " + args;
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) {
    *status = -1;
    return nullptr;
  }
  std::string out;
  char buf[1 << 16];
  size_t got = 0;
  while ((got = std::fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, got);
  const int rc = pclose(p);
  *status = WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
  if (*status != 0) return nullptr;
  return Json::parse(out);
}

// ---- Dequantization ------------------------------------------------------------------------

struct TypeCase {
  const char* name;
  GgmlType type;
};

class DequantReferenceTest : public ::testing::TestWithParam<TypeCase> {};

// A tensor of random blocks (several magnitudes, signs, zeros and a constant row) quantized by
// our quantizer: our decoding equals the reference's, float for float.
TEST_P(DequantReferenceTest, OurBlocksDecodeAsTheReferenceDecodesThem) {
  const TypeCase tc = GetParam();
  ScratchDir dir;
  const int64_t rows = 6, cols = 512;
  std::mt19937 rng(17);
  std::normal_distribution<float> n01(0.0f, 1.0f);
  std::vector<float> values(static_cast<size_t>(rows * cols));
  for (int64_t r = 0; r < rows; ++r) {
    const float scale = std::pow(10.0f, static_cast<float>(r) - 3.0f);  // 1e-3 .. 1e2
    for (int64_t c = 0; c < cols; ++c) {
      float v = n01(rng) * scale;
      if (r == 2 && c % 7 == 0) v = 0.0f;
      if (r == 4) v = std::fabs(v);  // one sign only
      if (r == 5) v = 0.25f;         // constant
      values[static_cast<size_t>(r * cols + c)] = v;
    }
  }
  GgufWriter w;
  w.SetString("general.architecture", "llama");
  ASSERT_TRUE(w.AddTensor("t", {cols, rows}, tc.type, values).ok());
  const std::string path = dir.File("t.gguf");
  ASSERT_TRUE(w.WriteFile(path).ok());

  auto file = GgufFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  const GgufTensorInfo* info = file->FindTensor("t");
  ASSERT_NE(info, nullptr);
  std::vector<float> ours(static_cast<size_t>(rows * cols));
  ASSERT_TRUE(DecodeToF32(info->type, info->data, rows * cols, ours.data()).ok());

  int status = 0;
  const Json ref = RunReference("'" + path + "' --dequant t", &status);
  if (status == kNoNumpy) GTEST_SKIP() << "NumPy is not installed (scripts/install-deps.sh)";
  ASSERT_EQ(status, 0);
  ASSERT_EQ(ref["type"].get<std::string>(), tc.name);
  const std::vector<double> want = ref["values"].get<std::vector<double>>();
  ASSERT_EQ(want.size(), ours.size());
  int differ = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    if (ours[i] != static_cast<float>(want[i]) && ++differ <= 5) {
      ADD_FAILURE() << tc.name << " element " << i << ": ours " << ours[i] << ", reference "
                    << want[i];
    }
  }
  EXPECT_EQ(differ, 0) << tc.name;
}

INSTANTIATE_TEST_SUITE_P(
    Types, DequantReferenceTest,
    ::testing::Values(TypeCase{"Q4_0", GgmlType::kQ4_0}, TypeCase{"Q4_1", GgmlType::kQ4_1},
                      TypeCase{"Q5_0", GgmlType::kQ5_0}, TypeCase{"Q5_1", GgmlType::kQ5_1},
                      TypeCase{"Q8_0", GgmlType::kQ8_0}, TypeCase{"Q2_K", GgmlType::kQ2_K},
                      TypeCase{"Q3_K", GgmlType::kQ3_K}, TypeCase{"Q4_K", GgmlType::kQ4_K},
                      TypeCase{"Q5_K", GgmlType::kQ5_K}, TypeCase{"Q6_K", GgmlType::kQ6_K},
                      TypeCase{"F16", GgmlType::kF16}, TypeCase{"BF16", GgmlType::kBF16}),
    [](const ::testing::TestParamInfo<TypeCase>& info) { return std::string(info.param.name); });

// Tensors that llama.cpp's quantizer wrote (Q8_0, Q4_0, Q4_K, Q6_K) decode as the reference
// decodes them.
TEST(DequantReferenceTest, LlamaCppQuantizedTensorsDecodeAsTheReferenceDecodesThem) {
  const std::string arch = std::string(KVSERVE_MODELS_DIR) + "/arch/";
  int checked = 0;
  for (const char* file_name :
       {"dev-smol-llama-Q8_0.gguf", "dev-smol-llama-Q4_0.gguf", "dev-smol-llama-Q4_K_M.gguf"}) {
    const std::string path = arch + file_name;
    if (!std::ifstream(path).good()) continue;
    auto file = GgufFile::Open(path);
    ASSERT_TRUE(file.ok()) << file.status();
    for (const char* tensor : {"blk.0.attn_q.weight", "blk.1.ffn_down.weight"}) {
      const GgufTensorInfo* info = file->FindTensor(tensor);
      ASSERT_NE(info, nullptr) << tensor;
      std::vector<float> ours(static_cast<size_t>(info->num_elements));
      ASSERT_TRUE(DecodeToF32(info->type, info->data, info->num_elements, ours.data()).ok());
      int status = 0;
      const Json ref = RunReference("'" + path + "' --dequant " + tensor, &status);
      if (status == kNoNumpy) GTEST_SKIP() << "NumPy is not installed (scripts/install-deps.sh)";
      ASSERT_EQ(status, 0);
      const std::vector<double> want = ref["values"].get<std::vector<double>>();
      ASSERT_EQ(want.size(), ours.size());
      int differ = 0;
      for (size_t i = 0; i < want.size(); ++i) differ += ours[i] != static_cast<float>(want[i]);
      EXPECT_EQ(differ, 0) << file_name << " " << tensor << " (" << ref["type"].get<std::string>()
                           << ")";
      ++checked;
    }
  }
  if (checked == 0) GTEST_SKIP() << "no fixtures in " << arch;
}

// ---- Architectures -----------------------------------------------------------------------------

struct ArchCase {
  const char* arch;
  const char* type;  // as `kvserve mkmodel --type` takes it
  bool tied;
};

std::string CaseName(const ArchCase& c) {
  return std::string(c.arch) + "_" + c.type + (c.tied ? "_tied" : "");
}

class ArchReferenceTest : public ::testing::TestWithParam<ArchCase> {};

TEST_P(ArchReferenceTest, LogLikelihoodsAndArgmaxMatchTheNumpyForwardPass) {
  const ArchCase ac = GetParam();
  SyntheticModelSpec spec;
  spec.name = "arch-test";
  spec.arch = ac.arch;
  spec.dim = 256;
  spec.hidden_dim = 512;
  spec.num_layers = 2;
  spec.num_heads = 4;
  spec.num_kv_heads = 2;
  spec.vocab_size = 512;
  spec.context_length = 64;
  spec.seed = 11;
  spec.random_norms = true;
  spec.tie_embeddings = ac.tied;
  spec.rope_freq_base = 10000.0f;
  if (std::string(ac.arch) == "qwen3") spec.explicit_head_dim = 128;  // != dim / heads
  ASSERT_TRUE(ParseSyntheticWeightType(ac.type, spec).ok());
  ScratchDir dir;
  const std::string path = dir.File("m.gguf");
  ASSERT_TRUE(WriteSyntheticModel(spec, path).ok());

  auto model = LoadModel(path);
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ((*model)->config().architecture, ac.arch);
  // A sequence long enough that rope and causal attention over many positions matter.
  std::vector<int32_t> ids = {1};
  std::mt19937 rng(5);
  std::uniform_int_distribution<int32_t> id_dist(3, spec.vocab_size - 1);
  while (ids.size() < 40) ids.push_back(id_dist(rng));
  auto scores = ScoreSequence(**model, ids, nullptr, 16);
  ASSERT_TRUE(scores.ok()) << scores.status();

  int status = 0;
  const Json ref = RunReference("'" + path + "' --ids '" + absl::StrJoin(ids, " ") + "'", &status);
  if (status == kNoNumpy) GTEST_SKIP() << "NumPy is not installed (scripts/install-deps.sh)";
  ASSERT_EQ(status, 0);
  ASSERT_EQ(ref["arch"].get<std::string>(), ac.arch);
  const auto& logits = ref["logits"];
  ASSERT_EQ(logits.size(), ids.size());

  // Float weights are multiplied in float: differences are rounding only. Quantized weights
  // meet activations quantized to 8 bits per block (as llama.cpp's do), which the float64
  // reference does not do: per-position differences of about 1e-2 there.
  const bool float_weights = spec.weight_type == GgmlType::kF32 ||
                             spec.weight_type == GgmlType::kF16 ||
                             spec.weight_type == GgmlType::kBF16;
  const double max_tol = float_weights ? 2e-3 : 0.12;
  const double mean_tol = float_weights ? 5e-4 : 0.03;
  double sum_diff = 0, max_diff = 0;
  int confident = 0, agree = 0;
  for (size_t i = 0; i + 1 < ids.size(); ++i) {
    const std::vector<double> row = logits[i].get<std::vector<double>>();
    double mx = row[0];
    size_t arg = 0;
    for (size_t j = 1; j < row.size(); ++j) {
      if (row[j] > mx) {
        mx = row[j];
        arg = j;
      }
    }
    double sum = 0, second = -1e300;
    for (size_t j = 0; j < row.size(); ++j) {
      sum += std::exp(row[j] - mx);
      if (j != arg) second = std::max(second, row[j]);
    }
    const double ref_nll = mx + std::log(sum) - row[static_cast<size_t>(ids[i + 1])];
    const double d = std::fabs(scores->nll[i] - ref_nll);
    sum_diff += d;
    max_diff = std::max(max_diff, d);
    EXPECT_LT(d, max_tol) << CaseName(ac) << " position " << i;
    if (mx - second > (float_weights ? 1e-3 : 0.1)) {
      ++confident;
      agree += scores->top1[i] == static_cast<int32_t>(arg);
      EXPECT_EQ(scores->top1[i], static_cast<int32_t>(arg))
          << CaseName(ac) << " position " << i << " (reference margin " << mx - second << ")";
    }
  }
  const double mean = sum_diff / static_cast<double>(ids.size() - 1);
  EXPECT_LT(mean, mean_tol) << CaseName(ac);
  EXPECT_GT(confident, static_cast<int>(ids.size()) / 2) << CaseName(ac);
  std::printf("%s: mean |dNLL| %.2e, max %.2e, top-1 %d/%d\n", CaseName(ac).c_str(), mean, max_diff,
              agree, confident);
}

INSTANTIATE_TEST_SUITE_P(
    Archs, ArchReferenceTest,
    ::testing::Values(ArchCase{"llama", "f32", true}, ArchCase{"qwen2", "f32", false},
                      ArchCase{"qwen3", "f32", true}, ArchCase{"phi3", "f32", false},
                      ArchCase{"llama", "q4_k_m", false}, ArchCase{"qwen2", "q8_0", true},
                      ArchCase{"qwen3", "q4_k_m", true}, ArchCase{"phi3", "q4_k_m", true},
                      ArchCase{"phi3", "f16", true}, ArchCase{"qwen2", "q5_k_m", false},
                      ArchCase{"llama", "q6_k", true}, ArchCase{"llama", "q3_k", true},
                      ArchCase{"qwen3", "q2_k", false}, ArchCase{"llama", "q4_0", true},
                      ArchCase{"qwen2", "q4_1", true}, ArchCase{"phi3", "q5_0", false},
                      ArchCase{"llama", "q5_1", false}, ArchCase{"qwen3", "bf16", false}),
    [](const ::testing::TestParamInfo<ArchCase>& info) { return CaseName(info.param); });

}  // namespace
}  // namespace kvserve::engine
