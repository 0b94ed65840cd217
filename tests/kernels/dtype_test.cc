#include "kernels/dtype.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>

#include "kernels/kv_format.h"

#if defined(__F16C__)
#include <immintrin.h>
#endif

namespace kvserve::kernels {
namespace {

float FromBits(uint32_t b) {
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}
uint32_t ToBits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return b;
}

TEST(Fp16Test, WorkedValuesToHalf) {
  EXPECT_EQ(FloatToFp16(1.0f), 0x3C00);
  EXPECT_EQ(FloatToFp16(-2.0f), 0xC000);
  EXPECT_EQ(FloatToFp16(0.5f), 0x3800);
  EXPECT_EQ(FloatToFp16(0.0f), 0x0000);
  EXPECT_EQ(FloatToFp16(-0.0f), 0x8000);
  EXPECT_EQ(FloatToFp16(65504.0f), 0x7BFF);   // largest finite half
  EXPECT_EQ(FloatToFp16(65519.99f), 0x7BFF);  // below the overflow midpoint
  EXPECT_EQ(FloatToFp16(65520.0f), 0x7C00);   // the midpoint rounds (to even) to inf
  EXPECT_EQ(FloatToFp16(1e6f), 0x7C00);
  EXPECT_EQ(FloatToFp16(-1e6f), 0xFC00);
  EXPECT_EQ(FloatToFp16(0.1f), 0x2E66);
  EXPECT_EQ(FloatToFp16(1.0f / 3.0f), 0x3555);
  EXPECT_EQ(FloatToFp16(std::ldexp(1.0f, -14)), 0x0400);     // smallest normal
  EXPECT_EQ(FloatToFp16(std::ldexp(1.0f, -24)), 0x0001);     // smallest subnormal
  EXPECT_EQ(FloatToFp16(std::ldexp(1023.0f, -24)), 0x03FF);  // largest subnormal
  EXPECT_EQ(FloatToFp16(std::ldexp(1.0f, -25)), 0x0000);     // tie between 0 and 2^-24: even
  EXPECT_EQ(FloatToFp16(std::ldexp(1.5f, -25)), 0x0001);
  EXPECT_EQ(FloatToFp16(std::ldexp(3.0f, -25)), 0x0002);  // tie between 1 and 2 ulp: even
  EXPECT_EQ(FloatToFp16(std::ldexp(5.0f, -25)), 0x0002);  // tie between 2 and 3 ulp: even
  EXPECT_EQ(FloatToFp16(std::ldexp(1.0f, -26)), 0x0000);
}

TEST(Fp16Test, RoundsTiesToEven) {
  EXPECT_EQ(FloatToFp16(1.0f + std::ldexp(1.0f, -11)), 0x3C00);      // 1 + half ulp -> 1
  EXPECT_EQ(FloatToFp16(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3C02);  // 1 + 1.5 ulp -> 1 + 2 ulp
  EXPECT_EQ(FloatToFp16(1.0f + std::ldexp(1.0f, -11) + std::ldexp(1.0f, -20)), 0x3C01);
  EXPECT_EQ(FloatToFp16(2047.0f / 1024.0f + std::ldexp(1.0f, -11)), 0x4000);  // carries
}

TEST(Fp16Test, InfAndNan) {
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(FloatToFp16(inf), 0x7C00);
  EXPECT_EQ(FloatToFp16(-inf), 0xFC00);
  const uint16_t nan = FloatToFp16(std::numeric_limits<float>::quiet_NaN());
  EXPECT_EQ(nan & 0x7C00, 0x7C00);
  EXPECT_NE(nan & 0x03FF, 0);
  const uint16_t snan = FloatToFp16(FromBits(0x7F800001u));  // payload only in low bits
  EXPECT_EQ(snan & 0x7C00, 0x7C00);
  EXPECT_NE(snan & 0x03FF, 0);
  EXPECT_TRUE(std::isinf(Fp16ToFloat(0x7C00)));
  EXPECT_TRUE(std::isinf(Fp16ToFloat(0xFC00)) && Fp16ToFloat(0xFC00) < 0);
  EXPECT_TRUE(std::isnan(Fp16ToFloat(0x7E00)));
  EXPECT_TRUE(std::isnan(Fp16ToFloat(0xFC01)));
}

TEST(Fp16Test, WorkedValuesToFloat) {
  EXPECT_EQ(Fp16ToFloat(0x3C00), 1.0f);
  EXPECT_EQ(Fp16ToFloat(0x7BFF), 65504.0f);
  EXPECT_EQ(Fp16ToFloat(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(Fp16ToFloat(0x03FF), std::ldexp(1023.0f, -24));
  EXPECT_EQ(Fp16ToFloat(0x0400), std::ldexp(1.0f, -14));
  EXPECT_EQ(ToBits(Fp16ToFloat(0x8000)), 0x80000000u);
  EXPECT_EQ(Fp16ToFloat(0xC000), -2.0f);
}

TEST(Fp16Test, EveryHalfRoundTrips) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float f = Fp16ToFloat(static_cast<uint16_t>(h));
    if (std::isnan(f)) continue;
    ASSERT_EQ(FloatToFp16(f), h) << std::hex << h;
  }
}

#if defined(__F16C__)
// The hardware converter is an independent reference for round-to-nearest-even.
TEST(Fp16Test, MatchesHardwareConversion) {
  std::mt19937 rng(7);
  std::uniform_int_distribution<uint32_t> bits;
  for (int i = 0; i < 2000000; ++i) {
    // Half the samples in the half range [2^-26, 2^17) where rounding matters.
    uint32_t b = bits(rng);
    if (i & 1) b = (b & 0x807FFFFFu) | ((101u + (b >> 23) % 42u) << 23);
    const float f = FromBits(b);
    if (std::isnan(f)) continue;
    const uint16_t hw = static_cast<uint16_t>(_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT));
    ASSERT_EQ(FloatToFp16(f), hw) << std::hex << b;
    ASSERT_EQ(ToBits(Fp16ToFloat(hw)), ToBits(_cvtsh_ss(hw))) << std::hex << hw;
  }
}
#endif

TEST(Bf16Test, WorkedValues) {
  EXPECT_EQ(FloatToBf16(1.0f), 0x3F80);
  EXPECT_EQ(FloatToBf16(-2.0f), 0xC000);
  EXPECT_EQ(FloatToBf16(0.0f), 0x0000);
  EXPECT_EQ(FloatToBf16(-0.0f), 0x8000);
  EXPECT_EQ(FloatToBf16(3.0e38f), 0x7F62);
  EXPECT_EQ(FloatToBf16(FromBits(0x7F7FFFFFu)), 0x7F80);  // FLT_MAX rounds up to inf
  EXPECT_EQ(Bf16ToFloat(0x3F80), 1.0f);
  EXPECT_EQ(Bf16ToFloat(0x0001), FromBits(0x00010000u));  // subnormal
  EXPECT_EQ(Bf16ToFloat(0xC000), -2.0f);
}

TEST(Bf16Test, RoundsTiesToEven) {
  EXPECT_EQ(FloatToBf16(FromBits(0x3F808000u)), 0x3F80);  // tie, even below
  EXPECT_EQ(FloatToBf16(FromBits(0x3F818000u)), 0x3F82);  // tie, even above
  EXPECT_EQ(FloatToBf16(FromBits(0x3F808001u)), 0x3F81);
  EXPECT_EQ(FloatToBf16(FromBits(0x3F807FFFu)), 0x3F80);
  EXPECT_EQ(FloatToBf16(FromBits(0x00008000u)), 0x0000);  // subnormal tie
  EXPECT_EQ(FloatToBf16(FromBits(0x00018000u)), 0x0002);
  EXPECT_EQ(FloatToBf16(FromBits(0x3FFF8000u)), 0x4000);  // carries into the exponent
}

TEST(Bf16Test, InfAndNan) {
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(FloatToBf16(inf), 0x7F80);
  EXPECT_EQ(FloatToBf16(-inf), 0xFF80);
  EXPECT_EQ(FloatToBf16(std::numeric_limits<float>::quiet_NaN()), 0x7FC0);
  // A NaN whose payload sits only in the dropped bits must stay NaN, not become inf.
  const uint16_t snan = FloatToBf16(FromBits(0x7F800001u));
  EXPECT_TRUE(std::isnan(Bf16ToFloat(snan)));
  EXPECT_TRUE(std::isnan(Bf16ToFloat(FloatToBf16(FromBits(0xFFFFFFFFu)))));
}

TEST(Bf16Test, EveryBf16RoundTrips) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float f = Bf16ToFloat(static_cast<uint16_t>(h));
    if (std::isnan(f)) continue;
    ASSERT_EQ(FloatToBf16(f), h) << std::hex << h;
  }
}

TEST(Bf16Test, IsNearestRepresentable) {
  std::mt19937 rng(11);
  std::uniform_int_distribution<uint32_t> bits;
  for (int i = 0; i < 1000000; ++i) {
    const float f = FromBits(bits(rng));
    if (std::isnan(f) || std::isinf(f)) continue;
    const uint16_t r = FloatToBf16(f);
    if (std::isinf(Bf16ToFloat(r))) {  // only values at or past the overflow midpoint
      ASSERT_GE(std::fabs(f), FromBits(0x7F7F8000u));
      continue;
    }
    const double err = std::fabs(static_cast<double>(Bf16ToFloat(r)) - f);
    // Neighbours one bf16 step either side are no closer.
    for (int step : {-1, 1}) {
      const uint16_t other = static_cast<uint16_t>(r + step);
      const float of = Bf16ToFloat(other);
      if (std::isnan(of) || (other & 0x7FFF) == 0 || ((other ^ r) & 0x8000)) continue;
      ASSERT_LE(err, std::fabs(static_cast<double>(of) - f)) << std::hex << ToBits(f);
    }
  }
}

TEST(DTypeTest, NamesAndSizes) {
  EXPECT_EQ(DTypeName(DType::kF32), "F32");
  EXPECT_EQ(DTypeName(DType::kF16), "F16");
  EXPECT_EQ(DTypeName(DType::kBF16), "BF16");
  EXPECT_EQ(DTypeBytes(DType::kF32), 4);
  EXPECT_EQ(DTypeBytes(DType::kF16), 2);
  EXPECT_EQ(DTypeBytes(DType::kBF16), 2);
}

TEST(KvFormatTest, NamesParseAndRegionBytes) {
  for (int i = 0; i < kNumKvFormats; ++i) {
    const auto f = static_cast<KvFormat>(i);
    ASSERT_EQ(ParseKvFormat(KvFormatName(f)), f);
  }
  EXPECT_EQ(ParseKvFormat("int3"), std::nullopt);
  const KvRegionShape s{16, 4, 8};
  EXPECT_EQ(KvRegionValueBytes(KvFormat::kFp32, KvRole::kKey, s), 16 * 4 * 8 * 4);
  EXPECT_EQ(KvRegionValueBytes(KvFormat::kBf16, KvRole::kValue, s), 16 * 4 * 8 * 2);
  // 42 bytes, padded
  EXPECT_EQ(KvRegionBytes(KvFormat::kFp16, KvRole::kKey, KvRegionShape{3, 1, 7}), 64);
  EXPECT_EQ(KvRegionBytes(KvFormat::kFp16, KvRole::kValue, KvRegionShape{3, 1, 12}), 128);
}

}  // namespace
}  // namespace kvserve::kernels
