// llama2.c checkpoints: a separate classifier, the tokenizer search, and malformed files made by
// patching, truncating or extending copies of stories260K.bin in a scratch directory.
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <initializer_list>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/model/model.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/engine/model/model_test_util.h"

namespace kvserve::engine {
namespace {

using ::testing::HasSubstr;
using testing_util::ModelPath;
using testing_util::PutLe;

// stories260K.bin: dim 64, hidden 172, 5 layers, 8 heads, 4 KV heads, vocab 512, seq_len 512.
constexpr int64_t kBinSize = 1056540;
constexpr int64_t kFreqCisBytes = 512 * 4 * 4;  // one of the two [seq_len, head_size / 2] arrays

class Llama2cModelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    bytes_ = testing_util::ReadBytes(ModelPath("stories260K.bin"));
    ASSERT_EQ(static_cast<int64_t>(bytes_.size()), kBinSize);
  }

  // Writes `bytes` as model.bin beside a copy of tok512.bin (unless `with_tokenizer` is false).
  std::string Write(const std::string& bytes, bool with_tokenizer = true) {
    const std::string path = dir_.File("model.bin");
    testing_util::WriteBytes(path, bytes);
    if (with_tokenizer) {
      testing_util::WriteBytes(dir_.File("tok512.bin"),
                               testing_util::ReadBytes(ModelPath("tok512.bin")));
    }
    return path;
  }

  void ExpectError(const std::string& bytes, absl::StatusCode code,
                   std::initializer_list<std::string> parts) {
    const std::string path = Write(bytes);
    auto model = LoadModel(path);
    ASSERT_FALSE(model.ok());
    EXPECT_EQ(model.status().code(), code) << model.status();
    EXPECT_THAT(model.status().message(), HasSubstr(path));
    for (const std::string& part : parts) EXPECT_THAT(model.status().message(), HasSubstr(part));
  }

  std::string WithHeaderField(int field, int32_t value) const {
    std::string b = bytes_;
    PutLe<int32_t>(b, 4 * field, value);
    return b;
  }

  std::string bytes_;
  testing_util::ScratchDir dir_;
};

TEST_F(Llama2cModelTest, SeparateClassifierWhenVocabSizeIsNegative) {
  // Negative vocab_size, and a classifier appended after the last array: the embeddings negated.
  std::string b = WithHeaderField(5, -512);
  std::vector<float> classifier(512 * 64);
  std::memcpy(classifier.data(), bytes_.data() + 28, classifier.size() * 4);
  for (float& x : classifier) x = -x;
  b.append(reinterpret_cast<const char*>(classifier.data()), classifier.size() * 4);
  auto model = LoadModel(Write(b));
  ASSERT_TRUE(model.ok()) << model.status();
  const LoadedModel& m = **model;
  EXPECT_FALSE(m.config().tied_classifier);
  EXPECT_EQ(m.config().vocab_size, 512);
  const auto* out = static_cast<const float*>(m.weights().output.data);
  const auto* embd = static_cast<const float*>(m.weights().token_embedding.data);
  EXPECT_EQ(m.weights().output.rows, 512);
  EXPECT_EQ(m.weights().output.cols, 64);
  for (int i = 0; i < 512 * 64; ++i) ASSERT_EQ(out[i], -embd[i]) << i;
}

TEST_F(Llama2cModelTest, FallsBackToTokenizerBin) {
  const std::string path = Write(bytes_, /*with_tokenizer=*/false);
  testing_util::WriteBytes(dir_.File("tokenizer.bin"),
                           testing_util::ReadBytes(ModelPath("tok512.bin")));
  auto model = LoadModel(path);
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ((*model)->vocab().size(), 512);
  EXPECT_EQ((*model)->config().name, "model");
}

TEST_F(Llama2cModelTest, Truncated) {
  // Inside the first array, token_embedding [512, 64] at byte 28.
  ExpectError(bytes_.substr(0, 1000), absl::StatusCode::kInvalidArgument,
              {"truncated: array 'token_embedding' [512, 64] at byte 28",
               "the file ends at byte 1000", "the header implies 1056540 bytes"});
  // Inside the last array, freq_cis_imag.
  const int64_t imag = kBinSize - kFreqCisBytes;
  ExpectError(bytes_.substr(0, kBinSize - 10), absl::StatusCode::kInvalidArgument,
              {absl::StrCat("array 'freq_cis_imag' [512, 4] at byte ", imag)});
  // Inside w2 [5, 64, 172]: it starts after embedding, rms_att, wq, wk, wv, wo, rms_ffn, w1.
  const int64_t w2 = 28 + 4 * (512 * 64 + 5 * 64 + 5 * 64 * 64 + 2 * 5 * 32 * 64 + 5 * 64 * 64 +
                               5 * 64 + 5 * 172 * 64);
  ExpectError(bytes_.substr(0, w2 + 4), absl::StatusCode::kInvalidArgument,
              {absl::StrCat("array 'w2' [5, 64, 172] at byte ", w2)});
  // Only the header.
  ExpectError(bytes_.substr(0, 28), absl::StatusCode::kInvalidArgument,
              {"array 'token_embedding'"});
}

TEST_F(Llama2cModelTest, ExtraBytes) {
  ExpectError(bytes_ + std::string(12, '\0'), absl::StatusCode::kInvalidArgument,
              {"the header implies 1056540 bytes but the file has 1056552", "12 extra bytes"});
  // A positive vocab_size with a classifier appended is the same mistake.
  ExpectError(bytes_ + std::string(512 * 64 * 4, '\0'), absl::StatusCode::kInvalidArgument,
              {"extra bytes"});
}

TEST_F(Llama2cModelTest, BadHeaderValues) {
  ExpectError(WithHeaderField(0, 0), absl::StatusCode::kInvalidArgument,
              {"header field dim (byte 0) = 0 is out of range"});
  ExpectError(WithHeaderField(0, -64), absl::StatusCode::kInvalidArgument,
              {"header field dim (byte 0) = -64 is out of range"});
  ExpectError(WithHeaderField(2, 100000), absl::StatusCode::kInvalidArgument,
              {"n_layers (byte 8) = 100000 is out of range"});
  ExpectError(WithHeaderField(3, 7), absl::StatusCode::kInvalidArgument,
              {"dim 64 is not a multiple of n_heads 7"});
  ExpectError(WithHeaderField(4, 3), absl::StatusCode::kInvalidArgument,
              {"n_heads 8 is not a multiple of n_kv_heads 3"});
  ExpectError(WithHeaderField(4, 16), absl::StatusCode::kInvalidArgument,
              {"n_heads 8 is not a multiple of n_kv_heads 16"});
  ExpectError(WithHeaderField(5, 0), absl::StatusCode::kInvalidArgument,
              {"vocab_size (byte 20) = 0 is out of range"});
  ExpectError(WithHeaderField(6, -1), absl::StatusCode::kInvalidArgument,
              {"seq_len (byte 24) = -1"});
  // A consistent header that implies a different size: one more layer.
  ExpectError(WithHeaderField(2, 6), absl::StatusCode::kInvalidArgument, {"truncated: array"});
  // Not a plausible header at all.
  ExpectError(WithHeaderField(0, 0x41414141), absl::StatusCode::kInvalidArgument,
              {"unknown model format"});
}

TEST_F(Llama2cModelTest, MissingTokenizer) {
  const std::string path = Write(bytes_, /*with_tokenizer=*/false);
  auto model = LoadModel(path);
  ASSERT_FALSE(model.ok());
  EXPECT_EQ(model.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(model.status().message(), HasSubstr(path));
  EXPECT_THAT(model.status().message(), HasSubstr(dir_.File("tok512.bin")));
  EXPECT_THAT(model.status().message(), HasSubstr(dir_.File("tokenizer.bin")));

  auto explicit_missing = LoadModel(path, dir_.File("nope.bin"));
  EXPECT_EQ(explicit_missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(explicit_missing.status().message(), HasSubstr("nope.bin"));
}

TEST_F(Llama2cModelTest, TokenizerOfTheWrongSize) {
  // tok105.bin under the name the loader looks for.
  const std::string path = Write(bytes_, /*with_tokenizer=*/false);
  testing_util::WriteBytes(dir_.File("tok512.bin"),
                           testing_util::ReadBytes(ModelPath("babyllama/tok105.bin")));
  auto model = LoadModel(path);
  ASSERT_FALSE(model.ok());
  EXPECT_EQ(model.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(model.status().message(), HasSubstr(path));
  EXPECT_THAT(model.status().message(), HasSubstr("tok512.bin"));
  EXPECT_THAT(model.status().message(), HasSubstr("expected 512"));

  // A larger vocabulary passed explicitly to a smaller model.
  auto baby = LoadModel(ModelPath("babyllama/model5000.bin"), ModelPath("tok512.bin"));
  ASSERT_FALSE(baby.ok());
  EXPECT_EQ(baby.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(baby.status().message(), HasSubstr("model5000.bin"));
  EXPECT_THAT(baby.status().message(), HasSubstr("expected 105"));
}

}  // namespace
}  // namespace kvserve::engine
