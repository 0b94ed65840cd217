#include "kernels/weight_formats.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

namespace kvserve::kernels {
namespace {

const DType kQuantTypes[] = {DType::kQ4_0, DType::kQ4_1, DType::kQ5_0, DType::kQ5_1, DType::kQ8_0,
                             DType::kQ2_K, DType::kQ3_K, DType::kQ4_K, DType::kQ5_K, DType::kQ6_K};

TEST(WeightFormatsTest, BlockSizesAreGgmls) {
  struct Expect {
    DType t;
    int64_t size, bytes;
  } expect[] = {{DType::kQ4_0, 32, 18},   {DType::kQ4_1, 32, 20},   {DType::kQ5_0, 32, 22},
                {DType::kQ5_1, 32, 24},   {DType::kQ8_0, 32, 34},   {DType::kQ2_K, 256, 84},
                {DType::kQ3_K, 256, 110}, {DType::kQ4_K, 256, 144}, {DType::kQ5_K, 256, 176},
                {DType::kQ6_K, 256, 210}, {DType::kF16, 1, 2},      {DType::kF32, 1, 4}};
  for (const Expect& e : expect) {
    EXPECT_EQ(DTypeBlockSize(e.t), e.size) << DTypeName(e.t);
    EXPECT_EQ(DTypeBlockBytes(e.t), e.bytes) << DTypeName(e.t);
    EXPECT_TRUE(IsQuantized(e.t) == (e.size > 1)) << DTypeName(e.t);
  }
  EXPECT_EQ(WeightRowBytes(DType::kQ4_K, 512), 288);
  EXPECT_EQ(DTypeName(DType::kQ6_K), "Q6_K");
}

TEST(WeightFormatsTest, Q8_0HandWorkedBlock) {
  BlockQ8_0 b;
  b.d = FloatToFp16(0.5f);
  for (int j = 0; j < 32; ++j) b.qs[j] = static_cast<int8_t>(j - 16);
  float y[32];
  DequantizeRow(DType::kQ8_0, &b, 32, y);
  for (int j = 0; j < 32; ++j) EXPECT_EQ(y[j], 0.5f * (j - 16)) << j;
}

TEST(WeightFormatsTest, Q4_0HandWorkedBlock) {
  BlockQ4_0 b;
  b.d = FloatToFp16(2.0f);
  for (int j = 0; j < 16; ++j) b.qs[j] = static_cast<uint8_t>(j | ((15 - j) << 4));
  float y[32];
  DequantizeRow(DType::kQ4_0, &b, 32, y);
  for (int j = 0; j < 16; ++j) {
    EXPECT_EQ(y[j], 2.0f * (j - 8)) << j;       // low nibble: element j
    EXPECT_EQ(y[j + 16], 2.0f * (7 - j)) << j;  // high nibble: element j + 16
  }
}

TEST(WeightFormatsTest, Q4_KHandWorkedBlock) {
  BlockQ4_K b;
  std::memset(&b, 0, sizeof(b));
  b.d = FloatToFp16(1.0f);
  b.dmin = FloatToFp16(0.5f);
  // Sub-block 0: scale 1 (scales[0] & 63), min 2 (scales[4] & 63). Sub-block 4: scale
  // (scales[8] & 15) | (scales[0] >> 6) << 4 = 3 | 16 = 19, min (scales[8] >> 4) |
  // (scales[4] >> 6) << 4 = 5. The other sub-blocks have scale 0 and min 0.
  b.scales[0] = 0x41;
  b.scales[4] = 0x02;
  b.scales[8] = 0x53;
  for (int l = 0; l < 128; ++l) b.qs[l] = static_cast<uint8_t>((l % 16) | (3 << 4));
  float y[256];
  DequantizeRow(DType::kQ4_K, &b, 256, y);
  for (int l = 0; l < 32; ++l) {
    EXPECT_EQ(y[l], 1.0f * (l % 16) - 1.0f) << l;         // low nibbles of qs[0, 32)
    EXPECT_EQ(y[32 + l], 0.0f) << l;                      // high nibbles, scale 0
    EXPECT_EQ(y[128 + l], 19.0f * (l % 16) - 2.5f) << l;  // low nibbles of qs[64, 96)
  }
}

TEST(WeightFormatsTest, Q6_KHandWorkedBlock) {
  BlockQ6_K b;
  std::memset(&b, 0, sizeof(b));
  b.d = FloatToFp16(0.25f);
  for (int s = 0; s < 16; ++s) b.scales[s] = static_cast<int8_t>(s - 8);
  b.ql[0] = 0xA5;  // element 0: low nibble 5; element 64: high nibble 10
  b.qh[0] = 0x32;  // element 0: bits 0-1 = 2; element 32: bits 2-3 = 0; element 64: 3
  float y[256];
  DequantizeRow(DType::kQ6_K, &b, 256, y);
  EXPECT_EQ(y[0], 0.25f * -8 * ((5 | (2 << 4)) - 32));    // scale 0
  EXPECT_EQ(y[32], 0.25f * -6 * -32);                     // scale 2, code 0
  EXPECT_EQ(y[64], 0.25f * -4 * ((10 | (3 << 4)) - 32));  // scale 4
  EXPECT_EQ(y[96], 0.25f * -2 * -32);                     // scale 6, code 0
  EXPECT_EQ(y[16], 0.25f * -7 * -32);                     // scale 1
  EXPECT_EQ(y[128], 0.0f);                                // scale 8 = 0
  EXPECT_EQ(y[255], 0.25f * 7 * -32);                     // scale 15
}

// Our quantizer and the reference dequantizer agree: the round trip stays within the type's
// resolution, and every element is reproduced (a wrong layout scrambles elements).
TEST(WeightFormatsTest, RoundTripOfEveryType) {
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const int64_t n = 1024;
  std::vector<float> x(n);
  for (float& v : x) v = normal(rng);
  for (DType t : kQuantTypes) {
    std::vector<uint8_t> q(WeightRowBytes(t, n));
    QuantizeRow(t, x.data(), n, q.data());
    std::vector<float> y(n);
    DequantizeRow(t, q.data(), n, y.data());
    double err = 0, ref = 0;
    for (int64_t i = 0; i < n; ++i) {
      err += (y[i] - x[i]) * (y[i] - x[i]);
      ref += x[i] * x[i];
    }
    const double rel = std::sqrt(err / ref);
    // Relative RMS error of round-to-nearest at the type's bits per weight, with margin.
    double bound = 0.02;
    switch (t) {
      case DType::kQ8_0:
        bound = 0.01;
        break;
      case DType::kQ6_K:
        bound = 0.04;
        break;
      case DType::kQ5_0:
      case DType::kQ5_1:
      case DType::kQ5_K:
        bound = 0.07;
        break;
      case DType::kQ4_0:
      case DType::kQ4_1:
      case DType::kQ4_K:
        bound = 0.14;
        break;
      case DType::kQ3_K:
        bound = 0.3;
        break;
      default:
        bound = 0.5;
        break;  // Q2_K
    }
    EXPECT_LT(rel, bound) << DTypeName(t);
    EXPECT_GT(rel, 0.0) << DTypeName(t);
  }
}

}  // namespace
}  // namespace kvserve::kernels
