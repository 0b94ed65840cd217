// Malformed GGUF files, made by patching or truncating copies of stories260K.gguf or with the
// writer: each gives InvalidArgument (Unimplemented for an unsupported architecture or tokenizer)
// whose message names the file and the byte offset, key or tensor. Offsets are located in the
// fixture's bytes by searching for the key or tensor name and applying the GGUF layout.
#include <cstdint>
#include <initializer_list>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/model/gguf.h"
#include "engine/model/gguf_model.h"
#include "engine/model/gguf_writer.h"
#include "engine/model/model.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/engine/model/model_test_util.h"

namespace kvserve::engine {
namespace {

using ::testing::HasSubstr;
using testing_util::GetLe;
using testing_util::ModelPath;
using testing_util::PutLe;

constexpr uint64_t kFileSize = 1185376;  // stories260K.gguf
constexpr uint64_t kDataOffset = 14176;  // its data section

absl::Span<const uint8_t> AsSpan(const std::string& bytes) {
  return absl::Span<const uint8_t>(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
}

class GgufMalformedTest : public ::testing::Test {
 protected:
  void SetUp() override {
    bytes_ = testing_util::ReadBytes(ModelPath("stories260K.gguf"));
    ASSERT_EQ(bytes_.size(), kFileSize);
  }

  // Position of the first occurrence of `needle` (a key or tensor name) in the fixture.
  size_t Find(const std::string& needle) const {
    const size_t at = bytes_.find(needle);
    EXPECT_NE(at, std::string::npos) << needle;
    return at;
  }

  // Parses `bytes` as a file named `name` and expects an error with `code` whose message names
  // the file and contains every one of `parts`.
  void ExpectParseError(const std::string& bytes, std::initializer_list<std::string> parts,
                        const std::string& name = "broken.gguf") {
    auto file = GgufFile::Parse(AsSpan(bytes), name);
    ASSERT_FALSE(file.ok());
    ExpectStatus(file.status(), absl::StatusCode::kInvalidArgument, name, parts);
  }

  // Writes `bytes` to a scratch file, loads it with LoadModel and expects the error.
  void ExpectLoadError(const std::string& bytes, absl::StatusCode code,
                       std::initializer_list<std::string> parts) {
    const std::string path = dir_.File("broken.gguf");
    testing_util::WriteBytes(path, bytes);
    auto model = LoadModel(path);
    ASSERT_FALSE(model.ok());
    ExpectStatus(model.status(), code, path, parts);
  }

  void ExpectLoadError(const GgufWriter& w, absl::StatusCode code,
                       std::initializer_list<std::string> parts) {
    auto bytes = w.Serialize();
    ASSERT_TRUE(bytes.ok()) << bytes.status();
    ExpectLoadError(*bytes, code, parts);
  }

  static void ExpectStatus(const absl::Status& s, absl::StatusCode code, const std::string& name,
                           std::initializer_list<std::string> parts) {
    EXPECT_EQ(s.code(), code) << s;
    EXPECT_THAT(s.message(), HasSubstr(name));
    for (const std::string& part : parts) EXPECT_THAT(s.message(), HasSubstr(part));
  }

  // A writer holding a copy of the fixture, optionally without some tensors.
  GgufWriter Copy(const std::function<bool(const std::string&)>& keep = nullptr) {
    auto src = GgufFile::Parse(AsSpan(bytes_), "stories260K.gguf");
    EXPECT_TRUE(src.ok()) << src.status();
    return testing_util::CopyGguf(
        *src, [](const GgufTensorInfo& t) { return t.type; }, keep);
  }

  std::string bytes_;
  testing_util::ScratchDir dir_;
};

TEST_F(GgufMalformedTest, WrongMagic) {
  std::string b = bytes_;
  b[3] = 'X';
  ExpectParseError(b, {"not a GGUF file", "\"GGUX\"", "at byte 0"});
  ExpectLoadError(b, absl::StatusCode::kInvalidArgument, {"unknown model format"});
}

TEST_F(GgufMalformedTest, UnsupportedVersion) {
  std::string b = bytes_;
  PutLe<uint32_t>(b, 4, 99);
  ExpectParseError(b, {"unsupported GGUF version 99", "at byte 4"});
  ExpectLoadError(b, absl::StatusCode::kInvalidArgument, {"unsupported GGUF version 99"});
  PutLe<uint32_t>(b, 4, 1);
  ExpectParseError(b, {"unsupported GGUF version 1"});
  PutLe<uint32_t>(b, 4, 0x03000000);
  ExpectParseError(b, {"big-endian"});
}

TEST_F(GgufMalformedTest, TruncatedInsideTheHeader) {
  ExpectParseError(bytes_.substr(0, 2), {"truncated at byte 0", "header magic"});
  ExpectParseError(bytes_.substr(0, 20), {"truncated at byte 16", "header metadata count"});
  ExpectParseError(bytes_.substr(0, 30), {"truncated at byte 24", "the metadata",
                                          "19 metadata entries (count at byte 16"});
  ExpectLoadError(bytes_.substr(0, 20), absl::StatusCode::kInvalidArgument,
                  {"20 bytes is too small"});
}

TEST_F(GgufMalformedTest, TruncatedInsideMetadata) {
  // Inside the scores array: [u64 key length][key][u32 type][u32 element type][u64 count][data].
  const size_t key = Find("tokenizer.ggml.scores");
  const size_t data = key + 21 + 4 + 4 + 8;
  ExpectParseError(bytes_.substr(0, data + 100),
                   {absl::StrCat("truncated at byte ", data),
                    "metadata key 'tokenizer.ggml.scores'", "512 array elements of type f32"});
  ExpectLoadError(bytes_.substr(0, data + 100), absl::StatusCode::kInvalidArgument,
                  {absl::StrCat("truncated at byte ", data), "'tokenizer.ggml.scores'"});
  // Inside the last token string (3 bytes, just before the scores key's 8-byte length).
  const size_t last_token = key - 8 - 3 - 8;
  ExpectParseError(bytes_.substr(0, key - 8 - 2),
                   {absl::StrCat("truncated at byte ", last_token),
                    "metadata key 'tokenizer.ggml.tokens'", "a string of 3 bytes"});
  // Inside the second key.
  ExpectParseError(bytes_.substr(0, key + 5),
                   {absl::StrCat("truncated at byte ", key - 8), "the key of metadata entry #1",
                    "a string of 21 bytes"});
  // Inside a scalar value: llama.block_count's u32.
  const size_t block_count = Find("llama.block_count") + 17 + 4;
  ExpectParseError(bytes_.substr(0, block_count + 2),
                   {absl::StrCat("truncated at byte ", block_count),
                    "metadata key 'llama.block_count'", "needs 4 bytes"});
}

TEST_F(GgufMalformedTest, TruncatedInsideTensorInfos) {
  // blk.2.attn_k.weight is tensor #22: token_embd, output_norm, output, then 9 per block.
  const size_t name = Find("blk.2.attn_k.weight");
  ExpectParseError(bytes_.substr(0, name + 5),
                   {absl::StrCat("truncated at byte ", name - 8), "the name of tensor info #22"});
  // Inside ne[0], after the name and n_dims.
  ExpectParseError(
      bytes_.substr(0, name + 19 + 4 + 2),
      {absl::StrCat("truncated at byte ", name + 19 + 4), "tensor info 'blk.2.attn_k.weight'"});
  ExpectLoadError(bytes_.substr(0, name + 5), absl::StatusCode::kInvalidArgument,
                  {"tensor info #22"});
}

TEST_F(GgufMalformedTest, TruncatedInsideTensorData) {
  // 1000 bytes short: blk.4.ffn_up.weight (offset 1126912, 64 x 172 F32) is the first tensor cut.
  const uint64_t size = kFileSize - 1000;
  const uint64_t start = kDataOffset + 1126912;
  const std::string range = absl::StrCat("[", start, ", ", start + 64 * 172 * 4, ")");
  ExpectParseError(bytes_.substr(0, size),
                   {"tensor 'blk.4.ffn_up.weight' data " + range,
                    absl::StrCat("lies outside the file (size ", size, ")")});
  ExpectLoadError(bytes_.substr(0, size), absl::StatusCode::kInvalidArgument,
                  {"'blk.4.ffn_up.weight'", "lies outside the file"});
}

TEST_F(GgufMalformedTest, EveryTruncationIsRejected) {
  // Every prefix through the start of the data, then a sample of the data section.
  std::vector<size_t> lengths;
  for (size_t n = 0; n < kDataOffset + 64; ++n) lengths.push_back(n);
  for (size_t n = kDataOffset + 64; n < kFileSize; n += 4099) lengths.push_back(n);
  lengths.push_back(kFileSize - 1);
  for (const size_t n : lengths) {
    auto file = GgufFile::Parse(AsSpan(bytes_).subspan(0, n), "prefix.gguf");
    ASSERT_FALSE(file.ok()) << n;
    ASSERT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument) << n;
    const std::string_view message(file.status().message().data(), file.status().message().size());
    ASSERT_TRUE(message.find("prefix.gguf: truncated at byte ") == 0 ||
                message.find("lies outside the file") != std::string_view::npos)
        << n << ": " << message;
  }
}

TEST_F(GgufMalformedTest, TensorDataOutOfBounds) {
  // Tensor info: [u64 name length][name][u32 n_dims][u64 ne x n_dims][u32 type][u64 offset].
  const size_t name = Find("blk.0.attn_q.weight");
  const size_t offset_at = name + 19 + 4 + 16 + 4;
  ASSERT_EQ(GetLe<uint64_t>(bytes_, offset_at), 262400u);  // as listed by the fixture
  std::string b = bytes_;
  PutLe<uint64_t>(b, offset_at, uint64_t{1} << 30);
  const uint64_t start = kDataOffset + (uint64_t{1} << 30);
  ExpectParseError(
      b, {absl::StrCat("tensor 'blk.0.attn_q.weight' data [", start, ", ", start + 64 * 64 * 4,
                       ") lies outside the file (size ", kFileSize, ")")});
  ExpectLoadError(b, absl::StatusCode::kInvalidArgument, {"'blk.0.attn_q.weight'"});
  PutLe<uint64_t>(b, offset_at, ~uint64_t{31});  // start + size overflows 64 bits
  ExpectParseError(b, {"tensor 'blk.0.attn_q.weight' data", "lies outside the file"});
  PutLe<uint64_t>(b, offset_at, 262404);
  ExpectParseError(
      b, {"tensor 'blk.0.attn_q.weight' data offset 262404", "not a multiple of the alignment 32"});
}

TEST_F(GgufMalformedTest, BadTensorInfoFields) {
  const size_t name = Find("blk.0.attn_q.weight");
  const size_t type_at = name + 19 + 4 + 16;
  std::string b = bytes_;
  PutLe<uint32_t>(b, type_at, 77);
  ExpectParseError(
      b, {"unknown tensor type id 77", absl::StrCat("at byte ", type_at), "'blk.0.attn_q.weight'"});
  PutLe<uint32_t>(b, type_at, 12);  // Q4_K: 256-element blocks cannot hold 64-wide rows
  ExpectParseError(
      b, {"ne[0] = 64 is not a multiple of Q4_K's block size 256", "'blk.0.attn_q.weight'"});
  b = bytes_;
  PutLe<uint32_t>(b, name + 19, 5);
  ExpectParseError(b, {"tensor has 5 dimensions", absl::StrCat("at byte ", name + 19)});
  b = bytes_;
  PutLe<uint64_t>(b, name + 19 + 4, uint64_t{1} << 62);
  PutLe<uint64_t>(b, name + 19 + 12, uint64_t{1} << 62);
  ExpectParseError(b, {"ne[1] = 4611686018427387904 overflows"});
}

TEST_F(GgufMalformedTest, UnsupportedTensorType) {
  GgufWriter w = Copy([](const std::string& n) { return n != "blk.1.attn_v.weight"; });
  // IQ4_NL: 32-element blocks of 18 bytes; a valid GGUF type the loader does not support.
  ASSERT_TRUE(w.AddRawTensor("blk.1.attn_v.weight", {64, 32}, GgmlType::kIQ4_NL,
                             std::vector<uint8_t>(64 * 32 / 32 * 18))
                  .ok());
  ExpectLoadError(w, absl::StatusCode::kInvalidArgument,
                  {"tensor 'blk.1.attn_v.weight' has unsupported type IQ4_NL (20)"});
}

TEST_F(GgufMalformedTest, MissingTensor) {
  GgufWriter w = Copy([](const std::string& n) { return n != "blk.3.ffn_up.weight"; });
  ExpectLoadError(w, absl::StatusCode::kInvalidArgument,
                  {"tensor 'blk.3.ffn_up.weight' is missing"});
  GgufWriter no_norm = Copy([](const std::string& n) { return n != "output_norm.weight"; });
  ExpectLoadError(no_norm, absl::StatusCode::kInvalidArgument,
                  {"tensor 'output_norm.weight' is missing"});
}

TEST_F(GgufMalformedTest, ShapeMismatch) {
  GgufWriter w = Copy([](const std::string& n) { return n != "blk.0.attn_k.weight"; });
  ASSERT_TRUE(
      w.AddTensor("blk.0.attn_k.weight", {64, 64}, GgmlType::kF32, std::vector<float>(64 * 64))
          .ok());
  ExpectLoadError(w, absl::StatusCode::kInvalidArgument,
                  {"tensor 'blk.0.attn_k.weight' has shape [64, 64], expected [64, 32]"});
  GgufWriter v = Copy([](const std::string& n) { return n != "blk.2.ffn_norm.weight"; });
  ASSERT_TRUE(
      v.AddTensor("blk.2.ffn_norm.weight", {32, 2}, GgmlType::kF32, std::vector<float>(64)).ok());
  ExpectLoadError(v, absl::StatusCode::kInvalidArgument,
                  {"tensor 'blk.2.ffn_norm.weight' has shape [32, 2], expected [64]"});
}

TEST_F(GgufMalformedTest, AbsurdCountsAndLengths) {
  std::string b = bytes_;
  PutLe<uint64_t>(b, 16, uint64_t{1} << 62);
  ExpectParseError(
      b, {"4611686018427387904 metadata entries (count at byte 16", "the count is corrupt"});
  ExpectLoadError(b, absl::StatusCode::kInvalidArgument,
                  {"4611686018427387904 metadata entries (count at byte 16"});
  b = bytes_;
  PutLe<uint64_t>(b, 8, ~uint64_t{0});
  ExpectParseError(b,
                   {"18446744073709551615 tensor infos (count at byte 8", "the count is corrupt"});
  // The tokens array's count: after the key (8 + 21 bytes), its type and element type.
  b = bytes_;
  const size_t count_at = 24 + 8 + 21 + 4 + 4;
  ASSERT_EQ(GetLe<uint64_t>(b, count_at), 512u);
  PutLe<uint64_t>(b, count_at, uint64_t{1} << 60);
  ExpectParseError(b, {"1152921504606846976 array elements of type string",
                       absl::StrCat("count at byte ", count_at), "the count is corrupt",
                       "metadata key 'tokenizer.ggml.tokens'"});
  b = bytes_;
  PutLe<uint64_t>(b, 24, uint64_t{1} << 63);  // the first key's length
  ExpectParseError(b, {"truncated at byte 24", "a string of 9223372036854775808 bytes"});
  b = bytes_;
  PutLe<uint32_t>(b, 24 + 8 + 21, 13);  // the first value's type
  ExpectParseError(b, {"unknown value type 13", absl::StrCat("at byte ", 24 + 8 + 21),
                       "'tokenizer.ggml.tokens'"});
  b = bytes_;
  PutLe<uint32_t>(b, 24 + 8 + 21 + 4, 99);  // the tokens array's element type
  ExpectParseError(b, {"unknown array element type 99", "'tokenizer.ggml.tokens'"});
}

TEST_F(GgufMalformedTest, MalformedValues) {
  GgufWriter w;
  w.SetBool("b.flag", true);
  w.SetU32("k1", 1);
  w.SetU32("k2", 2);
  w.SetU32("general.alignment", 64);
  std::vector<GgufArray> deep{GgufArray(std::vector<uint8_t>{1})};
  for (int i = 0; i < kGgufMaxArrayNesting; ++i) {
    deep = std::vector<GgufArray>{GgufArray(std::move(deep))};
  }
  ASSERT_TRUE(w.AddTensor("t1", {32}, GgmlType::kF32, std::vector<float>(32)).ok());
  ASSERT_TRUE(w.AddTensor("t2", {32}, GgmlType::kF32, std::vector<float>(32)).ok());
  const std::string good = *w.Serialize();
  ASSERT_TRUE(GgufFile::Parse(AsSpan(good), "good.gguf").ok());

  std::string b = good;
  const size_t flag = b.find("b.flag") + 6 + 4;
  b[flag] = 2;
  ExpectParseError(b, {"invalid bool value 2", absl::StrCat("at byte ", flag), "'b.flag'"});
  b = good;
  b[b.find("k2") + 1] = '1';
  ExpectParseError(b, {"duplicate metadata key", "'k1'"});
  b = good;
  b[b.find("t2") + 1] = '1';
  ExpectParseError(b, {"duplicate tensor name", "'t1'"});
  b = good;
  PutLe<uint32_t>(b, b.find("general.alignment") + 17 + 4, 48);
  ExpectParseError(b, {"'general.alignment' = 48 is not a power of two"});

  w.SetArray("deep", GgufArray(std::move(deep)));
  ExpectParseError(*w.Serialize(), {"arrays nested deeper than 8", "'deep'"});
}

TEST_F(GgufMalformedTest, BadModelMetadata) {
  {
    GgufWriter w = Copy();
    w.SetU32("llama.rope.dimension_count", 4);
    ExpectLoadError(w, absl::StatusCode::kInvalidArgument,
                    {"llama.rope.dimension_count = 4 but head_dim = 8"});
  }
  {
    GgufWriter w = Copy();
    w.SetString("tokenizer.ggml.model", "bert");
    ExpectLoadError(w, absl::StatusCode::kUnimplemented, {"tokenizer model 'bert'"});
  }
  {
    // Byte-level BPE needs its merges.
    GgufWriter w = Copy();
    w.SetString("tokenizer.ggml.model", "gpt2");
    ExpectLoadError(w, absl::StatusCode::kInvalidArgument, {"tokenizer.ggml.merges"});
  }
  {
    GgufWriter w = Copy();
    w.SetString("general.architecture", "falcon");
    ExpectLoadError(w, absl::StatusCode::kUnimplemented, {"architecture 'falcon'"});
  }
  {
    GgufWriter w = Copy();
    w.Remove("llama.block_count");
    ExpectLoadError(w, absl::StatusCode::kInvalidArgument,
                    {"metadata key 'llama.block_count' is missing"});
  }
  {
    GgufWriter w = Copy();
    w.SetString("llama.embedding_length", "64");
    ExpectLoadError(w, absl::StatusCode::kInvalidArgument,
                    {"'llama.embedding_length' has type string, expected an integer"});
  }
  {
    GgufWriter w = Copy();
    w.SetU64("llama.block_count", uint64_t{1} << 40);
    ExpectLoadError(w, absl::StatusCode::kInvalidArgument,
                    {"'llama.block_count' = 1099511627776 is out of range"});
  }
  {
    GgufWriter w = Copy();
    w.SetU32("llama.block_count", 6);
    ExpectLoadError(w, absl::StatusCode::kInvalidArgument,
                    {"tensor 'blk.5.attn_norm.weight' is missing"});
  }
  {
    GgufWriter w = Copy();
    w.SetU32("llama.attention.head_count", 7);
    ExpectLoadError(w, absl::StatusCode::kInvalidArgument,
                    {"64 is not a multiple of llama.attention.head_count 7"});
  }
  {
    GgufWriter w = Copy();
    w.SetU32("llama.attention.head_count_kv", 3);
    ExpectLoadError(w, absl::StatusCode::kInvalidArgument,
                    {"head_count 8 is not a multiple of llama.attention.head_count_kv 3"});
  }
  {
    GgufWriter w = Copy();
    w.SetU32("tokenizer.ggml.bos_token_id", 600);
    ExpectLoadError(w, absl::StatusCode::kInvalidArgument,
                    {"'tokenizer.ggml.bos_token_id' = 600 is outside the vocabulary [0, 512)"});
  }
  {
    GgufWriter w = Copy();
    w.SetArray("tokenizer.ggml.scores", GgufArray(std::vector<float>(511)));
    ExpectLoadError(w, absl::StatusCode::kInvalidArgument,
                    {"tokenizer.ggml.tokens has 512 entries but tokenizer.ggml.scores has 511"});
  }
  {
    GgufWriter w = Copy();
    std::vector<int32_t> types(512, 1);
    types[5] = 9;
    w.SetArray("tokenizer.ggml.token_type", GgufArray(std::move(types)));
    ExpectLoadError(w, absl::StatusCode::kInvalidArgument,
                    {"tokenizer.ggml.token_type[5] = 9 is not a token type"});
  }
  {
    GgufWriter w = Copy();
    w.SetArray("tokenizer.ggml.tokens", GgufArray(std::vector<std::string>(500, "x")));
    w.SetArray("tokenizer.ggml.scores", GgufArray(std::vector<float>(500)));
    w.SetArray("tokenizer.ggml.token_type", GgufArray(std::vector<int32_t>(500, 1)));
    ExpectLoadError(w, absl::StatusCode::kInvalidArgument,
                    {"'token_embd.weight' has 512 rows", "has 500 tokens"});
  }
  {
    GgufWriter w = Copy();
    w.SetArray("tokenizer.ggml.scores", GgufArray(std::vector<int32_t>(512)));
    ExpectLoadError(w, absl::StatusCode::kInvalidArgument,
                    {"'tokenizer.ggml.scores' has type array of i32, expected array of f32"});
  }
}

TEST_F(GgufMalformedTest, RandomCorruptionNeverCrashes) {
  // Flips bytes of the header, metadata and tensor infos; whatever parses must load or fail
  // cleanly. The loader views the buffer in place, so it stays alive while each model lives.
  std::mt19937 rng(1234);
  std::string b = bytes_;
  int parsed = 0;
  int loaded = 0;
  for (int iter = 0; iter < 2000; ++iter) {
    std::vector<std::pair<size_t, char>> saved;
    const int flips = 1 + static_cast<int>(rng() % 4);
    for (int f = 0; f < flips; ++f) {
      const size_t at = rng() % kDataOffset;
      saved.emplace_back(at, b[at]);
      b[at] = static_cast<char>(rng());
    }
    auto file = GgufFile::Parse(AsSpan(b), "fuzz.gguf");
    if (file.ok()) {
      ++parsed;
      auto model = LoadGgufModel(*std::move(file));
      if (model.ok()) {
        ++loaded;
      } else {
        EXPECT_THAT(model.status().message(), HasSubstr("fuzz.gguf")) << model.status();
      }
    } else {
      EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument);
      EXPECT_THAT(file.status().message(), HasSubstr("fuzz.gguf: "));
    }
    for (auto it = saved.rbegin(); it != saved.rend(); ++it) b[it->first] = it->second;
  }
  // Most flips land in token text or scores, which keep the file valid.
  EXPECT_GT(parsed, 0);
  EXPECT_GT(loaded, 0);
}

}  // namespace
}  // namespace kvserve::engine
