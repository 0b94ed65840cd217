// SHA-256 against the FIPS 180-2 test vectors, and the prefix hash functions.
#include "engine/kv/sha256.h"

#include <string>

#include "engine/kv/prefix_hash.h"
#include "gtest/gtest.h"

namespace kvserve::engine {
namespace {

TEST(Sha256Test, Fips180_2OneBlockMessage) {
  EXPECT_EQ(Sha256Hex(Sha256::Hash("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST(Sha256Test, Fips180_2MultiBlockMessage) {
  // 448 bits: the padding spills into a second block.
  EXPECT_EQ(Sha256Hex(Sha256::Hash("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq")),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
}

TEST(Sha256Test, Fips180_2OneMillionA) {
  EXPECT_EQ(Sha256Hex(Sha256::Hash(std::string(1000000, 'a'))),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST(Sha256Test, EmptyMessage) {
  EXPECT_EQ(Sha256Hex(Sha256::Hash("")),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

TEST(Sha256Test, IncrementalUpdatesMatchOneShotAtEveryBoundary) {
  std::string msg;
  for (int i = 0; i < 300; ++i) msg.push_back(static_cast<char>('a' + i % 26));
  for (size_t len : {0u, 1u, 55u, 56u, 63u, 64u, 65u, 119u, 120u, 128u, 300u}) {
    const std::string m = msg.substr(0, len);
    const Sha256Digest expected = Sha256::Hash(m);
    for (size_t chunk : {1u, 3u, 63u, 64u, 70u}) {
      Sha256 h;
      for (size_t i = 0; i < m.size(); i += chunk) h.Update(m.substr(i, chunk));
      EXPECT_EQ(h.Finish(), expected) << "len " << len << " chunk " << chunk;
    }
  }
  // Finish resets: the object hashes a new message from scratch.
  Sha256 h;
  h.Update("junk");
  h.Finish();
  h.Update("abc");
  EXPECT_EQ(h.Finish(), Sha256::Hash("abc"));
}

TEST(PrefixHashTest, AlgorithmsByName) {
  for (absl::string_view name : {"xxh3_128", "xxh64", "sha256"}) {
    auto a = ParsePrefixHashAlgorithm(name);
    ASSERT_TRUE(a.ok()) << name;
    EXPECT_EQ(PrefixHashAlgorithmName(*a), name);
  }
  auto bad = ParsePrefixHashAlgorithm("md5");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("xxh3_128, xxh64, sha256"), std::string::npos);
}

TEST(PrefixHashTest, DigestWidthsAndKnownValues) {
  const std::string abc = "abc";
  const auto bytes = absl::Span<const uint8_t>(reinterpret_cast<const uint8_t*>(abc.data()), 3);
  const BlockHash sha = MakePrefixHashFunction(PrefixHashAlgorithm::kSha256)(bytes);
  EXPECT_EQ(BlockHashHex(sha), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  // XXH64 of the empty input with seed 0 (xxHash's reference value).
  const BlockHash x64 = MakePrefixHashFunction(PrefixHashAlgorithm::kXxh64)({});
  EXPECT_EQ(x64.words[0], 0xEF46DB3751D8E999ull);
  EXPECT_EQ(x64.words[1] | x64.words[2] | x64.words[3], 0u);
  const BlockHash x128 = MakePrefixHashFunction(PrefixHashAlgorithm::kXxh3_128)(bytes);
  EXPECT_NE(x128.words[0] | x128.words[1], 0u);
  EXPECT_EQ(x128.words[2] | x128.words[3], 0u);
  // Deterministic across calls (no per-process seed): cached hashes are stable.
  EXPECT_EQ(x128, MakePrefixHashFunction(PrefixHashAlgorithm::kXxh3_128)(bytes));
}

}  // namespace
}  // namespace kvserve::engine
