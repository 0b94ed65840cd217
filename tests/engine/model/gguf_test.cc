// GgufFile and GgufWriter: the real stories260K.gguf's layout, typed metadata access, a byte-exact
// small file, and the writer -> reader round trip of every value type and tensor type.
#include "engine/model/gguf.h"

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "engine/model/gguf_writer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/engine/model/model_test_util.h"

namespace kvserve::engine {
namespace {

using ::testing::HasSubstr;
using testing_util::ModelPath;

absl::Span<const uint8_t> AsSpan(const std::string& bytes) {
  return absl::Span<const uint8_t>(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
}

// Facts below were read from the fixture with an independent script (header, key order, offsets).
TEST(GgufReaderTest, Stories260KLayout) {
  auto file = GgufFile::Open(ModelPath("stories260K.gguf"));
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(file->version(), 3u);
  EXPECT_EQ(file->alignment(), 32u);
  EXPECT_EQ(file->metadata().size(), 19u);
  EXPECT_EQ(file->tensors().size(), 48u);
  EXPECT_EQ(file->data_offset(), 14176u);  // tensor infos end at byte 14152
  EXPECT_EQ(file->bytes().size(), 1185376u);
  EXPECT_EQ(file->metadata().front().key, "tokenizer.ggml.tokens");
  EXPECT_EQ(file->metadata().back().key, "llama.attention.layer_norm_rms_epsilon");

  const GgufTensorInfo* embd = file->FindTensor("token_embd.weight");
  ASSERT_NE(embd, nullptr);
  EXPECT_EQ(embd->ne, (std::vector<int64_t>{64, 512}));
  EXPECT_EQ(embd->type, GgmlType::kF32);
  EXPECT_EQ(embd->offset, 0u);
  EXPECT_EQ(embd->file_offset, 14176u);
  EXPECT_EQ(embd->num_bytes, 64u * 512 * 4);
  EXPECT_EQ(embd->data, file->bytes().data() + 14176);

  const GgufTensorInfo* down = file->FindTensor("blk.0.ffn_down.weight");
  ASSERT_NE(down, nullptr);
  EXPECT_EQ(down->ne, (std::vector<int64_t>{172, 64}));
  EXPECT_EQ(down->offset, 355840u);
  EXPECT_EQ(down->ShapeString(), "[172, 64]");
  const GgufTensorInfo& last = file->tensors().back();
  EXPECT_EQ(last.name, "blk.4.ffn_norm.weight");
  EXPECT_EQ(last.file_offset + last.num_bytes, 1185376u);  // ends exactly at the end of the file
  EXPECT_EQ(file->FindTensor("nope"), nullptr);
}

TEST(GgufReaderTest, TypedAccessors) {
  auto file = GgufFile::Open(ModelPath("stories260K.gguf"));
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(*file->GetU32("llama.block_count"), 5u);
  EXPECT_EQ(*file->GetU32("llama.attention.head_count_kv"), 4u);
  EXPECT_EQ(*file->GetU32("tokenizer.ggml.seperator_token_id"), 4294967295u);
  EXPECT_EQ(*file->GetInteger("llama.context_length"), 2048);
  EXPECT_FLOAT_EQ(*file->GetF32("llama.attention.layer_norm_rms_epsilon"), 1e-5f);
  EXPECT_NEAR(*file->GetFloat("llama.attention.layer_norm_rms_epsilon"), 1e-5, 1e-12);
  EXPECT_EQ(*file->GetString("general.architecture"), "llama");
  EXPECT_EQ(*file->GetString("tokenizer.ggml.model"), "llama");

  auto tokens = file->GetArrayOf<std::string>("tokenizer.ggml.tokens");
  ASSERT_TRUE(tokens.ok()) << tokens.status();
  ASSERT_EQ(tokens->size(), 512u);
  EXPECT_EQ((*tokens)[1], "<s>");
  EXPECT_EQ((*tokens)[3], "<0x00>");
  auto scores = file->GetArrayOf<float>("tokenizer.ggml.scores");
  ASSERT_TRUE(scores.ok());
  EXPECT_EQ((*scores)[260], -1.0f);  // "he", the second merge
  auto types = file->GetArrayOf<int32_t>("tokenizer.ggml.token_type");
  ASSERT_TRUE(types.ok());
  EXPECT_EQ((*types)[0], 2);
  EXPECT_EQ((*types)[3], 6);
  auto array = file->GetArray("tokenizer.ggml.token_type");
  ASSERT_TRUE(array.ok());
  EXPECT_EQ((*array)->element_type(), GgufValueType::kInt32);
  EXPECT_EQ((*array)->size(), 512u);

  // Wrong type and missing key: the message names the file and the key.
  auto wrong = file->GetString("llama.block_count");
  EXPECT_EQ(wrong.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(wrong.status().message(), HasSubstr("stories260K.gguf"));
  EXPECT_THAT(wrong.status().message(),
              HasSubstr("'llama.block_count' has type u32, expected string"));
  auto wrong_array = file->GetArrayOf<int32_t>("tokenizer.ggml.scores");
  EXPECT_THAT(wrong_array.status().message(), HasSubstr("array of f32, expected array of i32"));
  auto not_int = file->GetInteger("general.name");
  EXPECT_EQ(not_int.status().code(), absl::StatusCode::kInvalidArgument);
  auto missing = file->GetU32("llama.nope");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr("'llama.nope' is missing"));
  EXPECT_FALSE(file->HasKey("llama.nope"));
}

TEST(GgufReaderTest, OpenErrorsNameThePath) {
  auto missing = GgufFile::Open("/nonexistent/dir/model.gguf");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr("/nonexistent/dir/model.gguf"));
}

// The writer's output for a tiny file, byte by byte, as the GGUF v3 layout prescribes.
TEST(GgufWriterTest, ByteExactSmallFile) {
  GgufWriter w;
  w.SetU8("a", 7);
  ASSERT_TRUE(w.AddTensor("t", {2}, GgmlType::kF32, std::vector<float>{1.0f, -2.0f}).ok());
  auto bytes = w.Serialize();
  ASSERT_TRUE(bytes.ok()) << bytes.status();

  std::string expected;
  auto put = [&expected](const void* p, size_t n) {
    expected.append(static_cast<const char*>(p), n);
  };
  auto u32 = [&](uint32_t v) { put(&v, 4); };
  auto u64 = [&](uint64_t v) { put(&v, 8); };
  expected += "GGUF";
  u32(3);  // version
  u64(1);  // tensors
  u64(1);  // metadata entries
  u64(1);  // key length
  expected += "a";
  u32(0);  // u8
  expected += '\x07';
  u64(1);  // name length
  expected += "t";
  u32(1);                     // n_dims
  u64(2);                     // ne[0]
  u32(0);                     // F32
  u64(0);                     // offset
  expected.resize(96, '\0');  // the header ends at byte 71; padded to 32
  const float values[2] = {1.0f, -2.0f};
  put(values, 8);
  expected.resize(128, '\0');
  EXPECT_EQ(*bytes, expected);
}

GgufArray NestedArray() {
  std::vector<GgufArray> inner;
  inner.push_back(GgufArray(std::vector<std::string>{"x", "", std::string("a\0b", 3)}));
  inner.push_back(GgufArray(std::vector<int32_t>{-1, 2}));
  inner.push_back(GgufArray(std::vector<GgufArray>{GgufArray(std::vector<double>{0.5})}));
  return GgufArray(std::move(inner));
}

TEST(GgufWriterTest, MetadataOfEveryTypeRoundTrips) {
  GgufWriter w;
  w.SetU8("u8", 255);
  w.SetI8("i8", -128);
  w.SetU16("u16", 65535);
  w.SetI16("i16", -32768);
  w.SetU32("u32", 4294967295u);
  w.SetI32("i32", std::numeric_limits<int32_t>::min());
  w.SetF32("f32", -1.5e-7f);
  w.SetBool("bool", true);
  w.SetString("string", "Once upon a \xE2\x96\x81time");
  w.SetString("empty", "");
  w.SetU64("u64", std::numeric_limits<uint64_t>::max());
  w.SetI64("i64", std::numeric_limits<int64_t>::min());
  w.SetF64("f64", 3.141592653589793);
  w.SetArray("a.u8", GgufArray(std::vector<uint8_t>{0, 1, 255}));
  w.SetArray("a.i8", GgufArray(std::vector<int8_t>{-1}));
  w.SetArray("a.u16", GgufArray(std::vector<uint16_t>{1, 2}));
  w.SetArray("a.i16", GgufArray(std::vector<int16_t>{-3}));
  w.SetArray("a.u32", GgufArray(std::vector<uint32_t>{7, 8, 9}));
  w.SetArray("a.i32", GgufArray(std::vector<int32_t>{}));
  w.SetArray("a.f32", GgufArray(std::vector<float>{0.25f, -0.0f}));
  w.SetArray("a.bool", GgufArray(std::vector<bool>{true, false, true}));
  w.SetArray("a.string", GgufArray(std::vector<std::string>{"<s>", "\xE2\x96\x81the"}));
  w.SetArray("a.u64", GgufArray(std::vector<uint64_t>{1ull << 63}));
  w.SetArray("a.i64", GgufArray(std::vector<int64_t>{-5}));
  w.SetArray("a.f64", GgufArray(std::vector<double>{1e300}));
  w.SetArray("a.nested", NestedArray());
  w.SetU32("u32", 42);  // replaces in place, keeps the position
  EXPECT_TRUE(w.Remove("empty"));
  EXPECT_FALSE(w.Remove("empty"));
  auto bytes = w.Serialize();
  ASSERT_TRUE(bytes.ok()) << bytes.status();

  auto file = GgufFile::Parse(AsSpan(*bytes), "roundtrip.gguf");
  ASSERT_TRUE(file.ok()) << file.status();
  ASSERT_EQ(file->metadata().size(), w.metadata().size());
  for (size_t i = 0; i < w.metadata().size(); ++i) {
    EXPECT_EQ(file->metadata()[i].key, w.metadata()[i].key);
    EXPECT_TRUE(file->metadata()[i].value == w.metadata()[i].value) << w.metadata()[i].key;
  }
  EXPECT_EQ(file->metadata()[4].key, "u32");
  EXPECT_EQ(*file->GetU32("u32"), 42u);
  EXPECT_EQ(*file->GetI8("i8"), -128);
  EXPECT_EQ(*file->GetU64("u64"), std::numeric_limits<uint64_t>::max());
  EXPECT_EQ(file->GetInteger("u64").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(*file->GetInteger("i16"), -32768);
  EXPECT_EQ(*file->GetF64("f64"), 3.141592653589793);
  EXPECT_EQ(*file->GetBool("bool"), true);
  EXPECT_EQ(*file->GetString("string"), "Once upon a \xE2\x96\x81time");
  auto nested = file->GetArray("a.nested");
  ASSERT_TRUE(nested.ok());
  const auto* level1 = (*nested)->As<GgufArray>();
  ASSERT_NE(level1, nullptr);
  ASSERT_EQ(level1->size(), 3u);
  EXPECT_EQ((*(*level1)[0].As<std::string>())[2], std::string("a\0b", 3));
  const auto* level2 = (*level1)[2].As<GgufArray>();
  ASSERT_NE(level2, nullptr);
  EXPECT_EQ((*(*level2)[0].As<double>())[0], 0.5);
  const auto* bools = (*file->GetArray("a.bool"))->As<bool>();
  ASSERT_NE(bools, nullptr);
  EXPECT_EQ(*bools, (std::vector<bool>{true, false, true}));
}

TEST(GgufWriterTest, TensorsOfEveryTypeRoundTrip) {
  GgufWriter w;
  w.SetU32("general.alignment", 64);
  const std::vector<float> f32 = {1, 2, 3, 4, 5, 6};
  const std::vector<float> f16 = {0.5f, -1.0f, 65504.0f, 1.0f / 1024};
  const std::vector<float> bf16 = {1.0f, -3.0f, 256.0f, 0.0078125f};
  std::vector<float> q8(64);
  for (int i = 0; i < 64; ++i) q8[i] = 0.25f * (i - 32);
  ASSERT_TRUE(w.AddTensor("f32", {3, 2}, GgmlType::kF32, f32).ok());
  ASSERT_TRUE(w.AddTensor("f16", {4}, GgmlType::kF16, f16).ok());
  ASSERT_TRUE(w.AddTensor("bf16", {2, 2}, GgmlType::kBF16, bf16).ok());
  ASSERT_TRUE(w.AddTensor("q8", {32, 2}, GgmlType::kQ8_0, q8).ok());
  ASSERT_TRUE(w.AddRawTensor("q4k", {256}, GgmlType::kQ4_K, std::vector<uint8_t>(144, 0x11)).ok());
  auto bytes = w.Serialize();
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  EXPECT_EQ(bytes->size() % 64, 0u);

  auto file = GgufFile::Parse(AsSpan(*bytes), "tensors.gguf");
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(file->alignment(), 64u);
  ASSERT_EQ(file->tensors().size(), 5u);
  for (const GgufTensorInfo& t : file->tensors()) {
    EXPECT_EQ(t.offset % 64, 0u) << t.name;
    EXPECT_EQ(t.file_offset % 64, 0u) << t.name;
  }
  EXPECT_EQ(testing_util::TensorValues(*file->FindTensor("f32")), f32);
  EXPECT_EQ(testing_util::TensorValues(*file->FindTensor("f16")), f16);    // all exact in FP16
  EXPECT_EQ(testing_util::TensorValues(*file->FindTensor("bf16")), bf16);  // all exact in BF16
  const GgufTensorInfo* q4k = file->FindTensor("q4k");
  EXPECT_EQ(q4k->type, GgmlType::kQ4_K);
  EXPECT_EQ(q4k->num_bytes, 144u);
  EXPECT_EQ(q4k->data[143], 0x11);
  const std::vector<float> q8_back = testing_util::TensorValues(*file->FindTensor("q8"));
  for (int i = 0; i < 64; ++i) {
    // Block absmax 8 (block 0) or 7.75 (block 1): error at most absmax / 127 / 2 (+ FP16 scale).
    EXPECT_NEAR(q8_back[i], q8[i], 8.0f / 127 / 2 * (1 + 1.0f / 1024)) << i;
  }
}

TEST(GgufWriterTest, EncodesKnownBitPatterns) {
  auto f16 = EncodeFromF32(GgmlType::kF16, std::vector<float>{1.0f, -2.0f, 65504.0f, 1e-8f});
  ASSERT_TRUE(f16.ok());
  EXPECT_EQ(*f16, (std::vector<uint8_t>{0x00, 0x3C, 0x00, 0xC0, 0xFF, 0x7B, 0x00, 0x00}));
  auto bf16 = EncodeFromF32(GgmlType::kBF16, std::vector<float>{1.0f, -2.0f});
  ASSERT_TRUE(bf16.ok());
  EXPECT_EQ(*bf16, (std::vector<uint8_t>{0x80, 0x3F, 0x00, 0xC0}));

  // One Q8_0 block with absmax 31.75: d = 0.25 (FP16 0x3400) and q = x / 0.25 exactly.
  std::vector<float> x(32);
  for (int i = 0; i < 32; ++i) x[i] = 0.25f * (i * 8 - 127);
  x[31] = 31.75f;
  auto q8 = EncodeFromF32(GgmlType::kQ8_0, x);
  ASSERT_TRUE(q8.ok());
  ASSERT_EQ(q8->size(), 34u);
  EXPECT_EQ((*q8)[0], 0x00);
  EXPECT_EQ((*q8)[1], 0x34);
  for (int i = 0; i < 31; ++i) EXPECT_EQ(static_cast<int8_t>((*q8)[2 + i]), i * 8 - 127) << i;
  EXPECT_EQ(static_cast<int8_t>((*q8)[33]), 127);
  std::vector<float> back(32);
  ASSERT_TRUE(DecodeToF32(GgmlType::kQ8_0, q8->data(), 32, back.data()).ok());
  EXPECT_EQ(back, x);

  // An all-zero block has scale 0 and decodes to zeros.
  auto zeros = EncodeFromF32(GgmlType::kQ8_0, std::vector<float>(32, 0.0f));
  ASSERT_TRUE(zeros.ok());
  EXPECT_EQ(*zeros, std::vector<uint8_t>(34, 0));
}

TEST(GgufWriterTest, RejectsInvalidTensorsAndAlignment) {
  GgufWriter w;
  const std::vector<float> v(172 * 2, 0.5f);
  auto s = w.AddTensor("m", {172, 2}, GgmlType::kQ8_0, v);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("'m'"));
  EXPECT_THAT(s.message(), HasSubstr("block size 32"));
  s = w.AddTensor("m", {172, 3}, GgmlType::kF32, v);
  EXPECT_THAT(s.message(), HasSubstr("344 values, its shape needs 516"));
  s = w.AddTensor("m", {}, GgmlType::kF32, v);
  EXPECT_THAT(s.message(), HasSubstr("0 dimensions"));
  s = w.AddTensor("nan", {32}, GgmlType::kQ8_0,
                  std::vector<float>(32, std::numeric_limits<float>::quiet_NaN()));
  EXPECT_THAT(s.message(), HasSubstr("non-finite"));
  s = w.AddRawTensor("raw", {256}, GgmlType::kQ4_K, std::vector<uint8_t>(100));
  EXPECT_THAT(s.message(), HasSubstr("100 bytes, Q4_K of its shape needs 144"));
  ASSERT_TRUE(w.AddTensor("m", {172, 2}, GgmlType::kF32, v).ok());
  s = w.AddTensor("m", {172, 2}, GgmlType::kF16, v);
  EXPECT_THAT(s.message(), HasSubstr("duplicate tensor 'm'"));
  EXPECT_TRUE(w.RemoveTensor("m"));
  EXPECT_FALSE(w.RemoveTensor("m"));

  w.SetU32("general.alignment", 48);
  EXPECT_EQ(w.Serialize().status().code(), absl::StatusCode::kInvalidArgument);
  w.SetU32("general.alignment", 1);
  EXPECT_TRUE(w.Serialize().ok());
}

TEST(GgufWriterTest, WriteFileErrorsNameThePath) {
  GgufWriter w;
  const absl::Status s = w.WriteFile("/nonexistent/dir/out.gguf");
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(s.message(), HasSubstr("/nonexistent/dir/out.gguf"));
}

TEST(GgufWriterTest, CopyOfStories260KIsByteIdentical) {
  // Same metadata order, same tensor order, same alignment: the writer reproduces the file.
  auto src = GgufFile::Open(ModelPath("stories260K.gguf"));
  ASSERT_TRUE(src.ok()) << src.status();
  GgufWriter w = testing_util::CopyGguf(*src, [](const GgufTensorInfo& t) { return t.type; });
  testing_util::ScratchDir dir;
  ASSERT_TRUE(w.WriteFile(dir.File("copy.gguf")).ok());
  EXPECT_EQ(testing_util::ReadBytes(dir.File("copy.gguf")),
            testing_util::ReadBytes(ModelPath("stories260K.gguf")));
  EXPECT_FALSE(std::filesystem::exists(dir.File("copy.gguf.partial")));
}

}  // namespace
}  // namespace kvserve::engine
