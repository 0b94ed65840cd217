// Round trips of every quantized KV format against a float64 reading of the stored bytes
// (kv_quant_reference.h), with error bounds derived from the format and from the data alone,
// on random and adversarial blocks; refusal of non-finite and out-of-range input; layout sizes.
#include "kernels/cpu/kv_quantize.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "kernels/kv_format.h"
#include "tests/kernels/kv_quant_reference.h"

namespace kvserve::kernels::cpu {
namespace {

using testing::kQuantizedFormats;
using testing::RefRegion;

enum class Data {
  kRandom,          // N(0, 1) plus an N(0, 3) offset per channel (key-like)
  kOutlierChannel,  // channel 0 of every head scaled by 50 and shifted by 20
  kOffsetChannel,   // every channel: a large offset (up to 1000) with a tiny spread
  kConstant,        // every value 3.14159
  kZeros,
  kHuge,          // uniform in [-1, 1] * kKvQuantMaxAbs, one value exactly at the limit
  kTiny,          // random * 1e-20
  kOutlierToken,  // token 3 of every head scaled by 1000
};
constexpr Data kAllData[] = {Data::kRandom,   Data::kOutlierChannel, Data::kOffsetChannel,
                             Data::kConstant, Data::kZeros,          Data::kHuge,
                             Data::kTiny,     Data::kOutlierToken};

std::vector<float> MakeData(Data kind, const KvRegionShape& s, std::mt19937& rng) {
  const int hd = s.head_dim, bs = s.block_size;
  std::vector<float> x(static_cast<size_t>(s.num_kv_heads) * bs * hd);
  std::normal_distribution<float> n01(0.0f, 1.0f);
  std::uniform_real_distribution<float> u11(-1.0f, 1.0f);
  std::vector<float> offset(static_cast<size_t>(s.num_kv_heads) * hd);
  for (float& o : offset) o = 3.0f * n01(rng);
  for (int h = 0; h < s.num_kv_heads; ++h) {
    for (int t = 0; t < bs; ++t) {
      for (int d = 0; d < hd; ++d) {
        float& v = x[(static_cast<size_t>(h) * bs + t) * hd + d];
        const float o = offset[static_cast<size_t>(h) * hd + d];
        switch (kind) {
          case Data::kRandom:
            v = n01(rng) + o;
            break;
          case Data::kOutlierChannel:
            v = n01(rng) + o;
            if (d == 0) v = 50.0f * v + 20.0f;
            break;
          case Data::kOffsetChannel:
            v = 333.0f * o + 0.01f * n01(rng);
            break;
          case Data::kConstant:
            v = 3.14159f;
            break;
          case Data::kZeros:
            v = 0.0f;
            break;
          case Data::kHuge:
            v = u11(rng) * kKvQuantMaxAbs;
            break;
          case Data::kTiny:
            v = 1e-20f * (n01(rng) + o);
            break;
          case Data::kOutlierToken:
            v = n01(rng) + o;
            if (t == 3) v *= 1000.0f;
            break;
        }
      }
    }
  }
  if (kind == Data::kHuge) x[x.size() / 2] = -kKvQuantMaxAbs;
  return x;
}

// The largest error the format allows at each element, from the input data alone: the worst
// parameters the encoder may pick (scales rounded up by at most one step of their encoding).
class DataBound {
 public:
  DataBound(KvFormat f, KvRole role, const std::vector<float>& x, const KvRegionShape& s,
            int tokens)
      : s_(s), bound_(x.size(), 0.0) {
    const bool key = role == KvRole::kKey;
    const int hd = s.head_dim;
    auto at = [&](int h, int t, int d) {
      return static_cast<double>(x[(static_cast<size_t>(h) * s.block_size + t) * hd + d]);
    };
    constexpr double kBf16Up = 1.0 + 1.0 / 128;  // a BF16 rounded up: at most one ulp more
    constexpr double kSlack = 1.0 + 1e-5;
    double region_amax = 0.0;
    for (int h = 0; h < s.num_kv_heads; ++h) {
      for (int t = 0; t < tokens; ++t) {
        for (int d = 0; d < hd; ++d) region_amax = std::max(region_amax, std::fabs(at(h, t, d)));
      }
    }
    for (int h = 0; h < s.num_kv_heads; ++h) {
      std::vector<double> lo(hd, 1e300), hi(hd, -1e300);
      for (int t = 0; t < tokens; ++t) {
        for (int d = 0; d < hd; ++d) {
          lo[d] = std::min(lo[d], at(h, t, d));
          hi[d] = std::max(hi[d], at(h, t, d));
        }
      }
      // Integer keys: per channel, log-encoded scale (steps of 2^(1/16)) relative to the head's
      // largest; int4 / int2 also need |4 lo / s| <= 127 for the zero point.
      const double levels = f == KvFormat::kInt8 ? 127 : f == KvFormat::kInt4 ? 15 : 3;
      std::vector<double> need(hd);
      double ref = 0.0;
      for (int d = 0; d < hd; ++d) {
        need[d] = f == KvFormat::kInt8 ? std::max(-lo[d], hi[d]) / levels
                                       : std::max((hi[d] - lo[d]) / levels,
                                                  std::fabs(lo[d]) * kKvZeroSubsteps / 127);
        ref = std::max(ref, need[d]);
      }
      // fp8 keys: a per-channel center (FP16 of mid / unit: relative error 2^-11 plus its
      // subnormal floor) comes off first.
      std::vector<double> mid(hd, 0.0), center_err(hd, 0.0);
      if (f == KvFormat::kFp8 && key) {
        double big = 0.0;
        for (int d = 0; d < hd; ++d) {
          mid[d] = 0.5 * (lo[d] + hi[d]);
          big = std::max(big, std::fabs(mid[d]));
        }
        const double unit = big > 0 ? std::ldexp(1.0, std::ilogb(big) - 14) : 1.0;
        for (int d = 0; d < hd; ++d) center_err[d] = std::fabs(mid[d]) / 2048 + unit * 0x1p-24;
      }
      for (int t = 0; t < tokens; ++t) {
        std::vector<double> r(hd);
        double row_amax = 0.0, row_lo = 1e300, row_hi = -1e300;
        for (int d = 0; d < hd; ++d) {
          r[d] = std::fabs(at(h, t, d) - mid[d]) + center_err[d];
          row_amax = std::max(row_amax, r[d]);
          row_lo = std::min(row_lo, at(h, t, d));
          row_hi = std::max(row_hi, at(h, t, d));
        }
        for (int d = 0; d < hd; ++d) {
          double b = 0.0;
          switch (f) {
            case KvFormat::kInt8:
            case KvFormat::kInt4:
            case KvFormat::kInt2:
              if (key) {
                b = std::max(need[d] * std::exp2(1.0 / 16), ref * KvLogScale(255)) / 2;
              } else if (f == KvFormat::kInt8) {
                b = std::max(-row_lo, row_hi) / 127 * kBf16Up / 2;
              } else {  // BF16 {scale, min} per group of kKvIntValueGroup dims
                const int g0 = d / kKvIntValueGroup * kKvIntValueGroup;
                double glo = 1e300, ghi = -1e300;
                for (int e = g0; e < std::min(hd, g0 + kKvIntValueGroup); ++e) {
                  glo = std::min(glo, at(h, t, e));
                  ghi = std::max(ghi, at(h, t, e));
                }
                b = (ghi - glo + std::fabs(glo) / 128) / levels * kBf16Up / 2;
              }
              break;
            case KvFormat::kFp8:
              // E4M3 rounds to 3 mantissa bits (relative 2^-4) above 2^-6 of the row scale, in
              // steps of 2^-9 scales below.
              b = std::max(r[d] / 16, row_amax / kKvE4m3Max * kBf16Up / 1024);
              break;
            case KvFormat::kNvfp4: {
              const int g0 = d / kKvNvfp4Group * kKvNvfp4Group;
              double amax = 0.0;
              for (int e = g0; e < std::min(hd, g0 + kKvNvfp4Group); ++e) {
                amax = std::max(amax, std::fabs(at(h, t, e)));
              }
              const double g = region_amax / (kKvE2m1Max * kKvE4m3Max);
              // The E4M3 group scale rounded up: at most 1/8 relative, or 2^-9 g below 2^-6 g;
              // E2M1 then errs by at most a quarter of the scale or of the value.
              const double scale = std::max(amax / kKvE2m1Max * (1.0 + 1.0 / 8), g / 512);
              b = std::max(scale / 4, std::fabs(at(h, t, d)) / 4);
              break;
            }
            default:
              break;
          }
          bound_[(static_cast<size_t>(h) * s.block_size + t) * hd + d] = b * kSlack + 1e-38;
        }
      }
    }
  }

  double operator()(int h, int t, int d) const {
    return bound_[(static_cast<size_t>(h) * s_.block_size + t) * s_.head_dim + d];
  }

 private:
  KvRegionShape s_;
  std::vector<double> bound_;
};

// The bound from the parameters as stored: half a step for the integer formats, the rounding of
// E4M3 / E2M1 for the floating-point ones.
double StoredBound(KvFormat f, const RefRegion& r, int h, int t, int d, double x) {
  const double step = r.Step(h, t, d);
  switch (f) {
    case KvFormat::kFp8:
      return std::max(std::fabs(x - r.Center(h, d)) / 16, step / 1024) * (1 + 1e-5) + 1e-38;
    case KvFormat::kNvfp4:
      return std::max(step / 4, std::fabs(x) / 4) * (1 + 1e-5) + 1e-38;
    default:
      return step / 2 * (1 + 1e-5) + 1e-38;
  }
}

std::string Name(KvFormat f, KvRole role, const KvRegionShape& s, int tokens, Data kind) {
  return std::string(KvFormatName(f)) + (role == KvRole::kKey ? " K" : " V") +
         " bs=" + std::to_string(s.block_size) + " heads=" + std::to_string(s.num_kv_heads) +
         " hd=" + std::to_string(s.head_dim) + " tokens=" + std::to_string(tokens) +
         " data=" + std::to_string(static_cast<int>(kind));
}

void CheckRoundTrip(KvFormat f, KvRole role, const KvRegionShape& s, int tokens, Data kind,
                    std::mt19937& rng) {
  SCOPED_TRACE(Name(f, role, s, tokens, kind));
  const std::vector<float> x = MakeData(kind, s, rng);
  std::vector<uint8_t> region(KvRegionBytes(f, role, s), 0xAB);
  ASSERT_TRUE(QuantizeKvRegion(f, role, x.data(), s, tokens, region.data()));
  std::vector<float> out(x.size(), -7.0f);
  DequantizeKvRegion(f, role, region.data(), s, tokens, out.data());
  const RefRegion ref(f, role, region.data(), s);
  const DataBound data_bound(f, role, x, s, tokens);
  for (int h = 0; h < s.num_kv_heads; ++h) {
    for (int t = 0; t < s.block_size; ++t) {
      for (int d = 0; d < s.head_dim; ++d) {
        const size_t i = (static_cast<size_t>(h) * s.block_size + t) * s.head_dim + d;
        if (t >= tokens) {
          ASSERT_EQ(out[i], -7.0f) << "row " << t << " beyond `tokens` was written";
          continue;
        }
        const double want = ref.Value(h, t, d);
        // The kernel's decode is the reference's formula in float: a few roundings.
        const double tol = 4e-7 * (std::fabs(want) + 64 * std::fabs(ref.Step(h, t, d)) +
                                   std::fabs(ref.Center(h, d))) +
                           1e-38;
        ASSERT_NEAR(out[i], want, tol) << "h=" << h << " t=" << t << " d=" << d;
        const double err = std::fabs(want - x[i]);
        ASSERT_LE(err, StoredBound(f, ref, h, t, d, x[i])) << "h=" << h << " t=" << t << " d=" << d;
        ASSERT_LE(err, data_bound(h, t, d))
            << "h=" << h << " t=" << t << " d=" << d << " x=" << x[i];
        if (kind == Data::kZeros) {
          ASSERT_EQ(out[i], 0.0f);
        }
      }
    }
  }
}

const KvRegionShape kShapes[] = {{16, 4, 8}, {16, 2, 12}, {16, 1, 17},  {16, 2, 64},  {16, 2, 128},
                                 {1, 1, 8},  {5, 3, 20},  {32, 1, 130}, {16, 1, 256}, {7, 2, 3}};

TEST(KvQuantizeTest, RoundTripWithinFormatBoundsOnEveryKindOfData) {
  std::mt19937 rng(7);
  for (KvFormat f : kQuantizedFormats) {
    for (KvRole role : {KvRole::kKey, KvRole::kValue}) {
      for (const KvRegionShape& s : kShapes) {
        for (Data kind : kAllData) {
          CheckRoundTrip(f, role, s, s.block_size, kind, rng);
          if (s.block_size > 2) CheckRoundTrip(f, role, s, s.block_size / 2 + 1, kind, rng);
          if (::testing::Test::HasFatalFailure()) return;
        }
      }
    }
  }
}

// Blocks of one value come back exactly from the encodings that store a value as a parameter:
// the BF16 minimum of int4 / int2 value groups and the FP16 center of fp8 keys.
TEST(KvQuantizeTest, ConstantsAreExactWhereAParameterHoldsThem) {
  const KvRegionShape s{16, 2, 24};
  const std::pair<KvFormat, KvRole> exact[] = {{KvFormat::kInt4, KvRole::kValue},
                                               {KvFormat::kInt2, KvRole::kValue},
                                               {KvFormat::kFp8, KvRole::kKey}};
  for (const auto& [f, role] : exact) {
    SCOPED_TRACE(std::string(KvFormatName(f)) + (role == KvRole::kKey ? " K" : " V"));
    for (float c : {0.0f, 1.0f, -2.5f, 0.75f, 96.0f}) {
      std::vector<float> x(2 * 16 * 24, c);
      std::vector<uint8_t> region(KvRegionBytes(f, role, s));
      ASSERT_TRUE(QuantizeKvRegion(f, role, x.data(), s, 16, region.data()));
      std::vector<float> out(x.size());
      DequantizeKvRegion(f, role, region.data(), s, 16, out.data());
      for (float v : out) ASSERT_EQ(v, c) << "c=" << c;
    }
  }
}

TEST(KvQuantizeTest, NonFiniteAndOutOfRangeInputIsRefused) {
  std::mt19937 rng(9);
  const KvRegionShape s{16, 2, 12};
  std::uniform_int_distribution<int> pos(0, 16 * 2 * 12 - 1);
  for (int i = 0; i < kNumKvFormats; ++i) {
    const auto f = static_cast<KvFormat>(i);
    if (f == KvFormat::kLowrank) continue;  // needs a basis: kv_lowrank_test.cc
    for (KvRole role : {KvRole::kKey, KvRole::kValue}) {
      SCOPED_TRACE(std::string(KvFormatName(f)));
      std::vector<uint8_t> region(KvRegionBytes(f, role, s));
      for (float bad : {std::nanf(""), -std::nanf(""), INFINITY, -INFINITY}) {
        std::vector<float> x = MakeData(Data::kRandom, s, rng);
        x[pos(rng)] = bad;
        EXPECT_FALSE(QuantizeKvRegion(f, role, x.data(), s, 16, region.data())) << bad;
      }
      // A refused value in a row beyond `tokens` is not read.
      std::vector<float> x = MakeData(Data::kRandom, s, rng);
      x[15 * 12] = std::nanf("");
      EXPECT_TRUE(QuantizeKvRegion(f, role, x.data(), s, 15, region.data()));
      if (KvFormatTokenWritable(f)) continue;
      x = MakeData(Data::kRandom, s, rng);
      x[pos(rng)] = kKvQuantMaxAbs;
      EXPECT_TRUE(QuantizeKvRegion(f, role, x.data(), s, 16, region.data()));
      x[pos(rng)] = -std::nextafter(kKvQuantMaxAbs, INFINITY);
      EXPECT_FALSE(QuantizeKvRegion(f, role, x.data(), s, 16, region.data()));
    }
  }
}

// Bits per element including every parameter and the region padding, computed by hand from the
// layout in kv_format.h, at head_dim 128 (8 KV heads) and head_dim 8 (stories260K: 4 KV heads),
// block 16.
TEST(KvFormatLayoutTest, BitsPerElementMatchTheHandComputedLayout) {
  struct Want {
    KvFormat f;
    double bits128;
    double bits8;
  };
  // hd 128: region of 16384 values. fp8 K 16384 + 32 + 2048 + 256 = 18720 -> 18752 (64-byte
  // padding), V 16384 + 256; int8 K 16384 + 32 + 1024 -> 17472, V 16640; int4 K 8192 + 32 + 2048
  // -> 10304, V 8192 + 1024; int2 K 4096 + 32 + 2048 -> 6208, V 4096 + 1024; nvfp4 8192 + 4 +
  // 1024 -> 9280 each.
  // hd 8: region of 512 values. fp8 K 512 + 16 + 64 + 128 -> 768, V 512 + 128; int8 K 512 + 16 +
  // 32 -> 576, V 640; int4 K 256 + 16 + 64 -> 384, V 256 + 256; int2 K 128 + 16 + 64 -> 256,
  // V 128 + 256; nvfp4 256 + 4 + 64 -> 384 each.
  const Want wants[] = {
      {KvFormat::kFp32, 32, 32},
      {KvFormat::kFp16, 16, 16},
      {KvFormat::kBf16, 16, 16},
      {KvFormat::kFp8, (18752 + 16640) * 8.0 / 32768, (768 + 640) * 8.0 / 1024},
      {KvFormat::kInt8, (17472 + 16640) * 8.0 / 32768, (576 + 640) * 8.0 / 1024},
      {KvFormat::kInt4, (10304 + 9216) * 8.0 / 32768, (384 + 512) * 8.0 / 1024},
      {KvFormat::kNvfp4, (9280 + 9280) * 8.0 / 32768, (384 + 384) * 8.0 / 1024},
      {KvFormat::kInt2, (6208 + 5120) * 8.0 / 32768, (256 + 384) * 8.0 / 1024},
  };
  for (const Want& w : wants) {
    SCOPED_TRACE(std::string(KvFormatName(w.f)));
    const KvRegionShape s128{16, 8, 128}, s8{16, 4, 8};
    EXPECT_DOUBLE_EQ(KvLayerBytes(w.f, s128) * 8.0 / (2 * 16384), w.bits128);
    EXPECT_DOUBLE_EQ(KvLayerBytes(w.f, s8) * 8.0 / (2 * 512), w.bits8);
  }
  // The memory targets relative to FP16 at head_dim 128.
  const KvRegionShape s{16, 8, 128};
  const double fp16 = static_cast<double>(KvLayerBytes(KvFormat::kFp16, s));
  EXPECT_LE(KvLayerBytes(KvFormat::kInt8, s) / fp16, 0.53);
  EXPECT_LE(KvLayerBytes(KvFormat::kInt4, s) / fp16, 0.30);
  EXPECT_LE(KvLayerBytes(KvFormat::kNvfp4, s) / fp16, 0.29);
  EXPECT_LE(KvLayerBytes(KvFormat::kInt2, s) / fp16, 0.19);
}

// Parts of a region never overlap, stay 4-byte aligned and fit the region, for odd shapes too.
TEST(KvFormatLayoutTest, PartsAreDisjointAlignedAndAccounted) {
  for (int i = 0; i < kNumKvFormats; ++i) {
    const auto f = static_cast<KvFormat>(i);
    if (f == KvFormat::kLowrank) continue;  // rows of key_rank dims: kv_lowrank_test.cc
    for (KvRole role : {KvRole::kKey, KvRole::kValue}) {
      for (const KvRegionShape& s : kShapes) {
        const KvRegionLayout l = KvRegionLayoutOf(f, role, s);
        const KvScheme k = KvSchemeOf(f, role);
        SCOPED_TRACE(std::string(KvFormatName(f)) + " hd=" + std::to_string(s.head_dim));
        EXPECT_EQ(l.row_bytes, (s.head_dim * k.value_bits + 7) / 8);
        EXPECT_EQ(l.value_bytes, int64_t{s.num_kv_heads} * s.block_size * l.row_bytes);
        const int64_t channel = int64_t{s.num_kv_heads} * s.head_dim * k.channel_param_bytes;
        const int64_t token =
            int64_t{s.num_kv_heads} * s.block_size * l.groups * k.token_param_bytes;
        EXPECT_EQ(l.scale_bytes, (k.region_scale ? 4 : 0) +
                                     (k.head_param ? 4 * s.num_kv_heads : 0) + channel + token);
        EXPECT_LE(l.value_bytes, l.region_scale_offset);
        EXPECT_LE(l.head_param_offset + (k.head_param ? 4 * s.num_kv_heads : 0),
                  l.channel_param_offset);
        EXPECT_LE(l.channel_param_offset + channel, l.token_param_offset);
        EXPECT_LE(l.token_param_offset + token, l.bytes);
        EXPECT_EQ(l.bytes % kKvRegionAlign, 0);
        EXPECT_EQ(l.head_param_offset % 4, 0);
        EXPECT_EQ(l.token_param_offset % 4, 0);
        EXPECT_LT(l.bytes - (l.value_bytes + l.scale_bytes), kKvRegionAlign + 12);
        EXPECT_EQ(KvRegionBytes(f, role, s), l.bytes);
        EXPECT_EQ(KvRegionScaleBytes(f, role, s), l.scale_bytes);
      }
    }
    EXPECT_EQ(KvFormatTokenWritable(f), i < 3) << KvFormatName(f);
  }
}

TEST(KvFormatLayoutTest, SupportsRefusesShapesTheReadersCannotHold) {
  for (KvFormat f : kQuantizedFormats) {
    EXPECT_TRUE(KvFormatSupports(f, KvRegionShape{16, 4, 8}));
    EXPECT_TRUE(KvFormatSupports(f, KvRegionShape{1, 1, 1}));
    EXPECT_TRUE(KvFormatSupports(f, KvRegionShape{16, 4, 257}) ==
                (KvSchemeOf(f, KvRole::kKey).channel_param_bytes == 0))
        << KvFormatName(f);
    EXPECT_FALSE(KvFormatSupports(f, KvRegionShape{0, 4, 8}));
  }
  EXPECT_TRUE(KvFormatSupports(KvFormat::kFp16, KvRegionShape{16, 4, 1000}));
  // Token parameters of one head of a block: block_size * groups <= kKvMaxTokenParams.
  EXPECT_TRUE(KvFormatSupports(KvFormat::kNvfp4, KvRegionShape{128, 8, 128}));   // 128 * 8
  EXPECT_FALSE(KvFormatSupports(KvFormat::kNvfp4, KvRegionShape{256, 8, 128}));  // 256 * 8
  EXPECT_TRUE(KvFormatSupports(KvFormat::kInt8, KvRegionShape{1024, 8, 128}));
  EXPECT_FALSE(KvFormatSupports(KvFormat::kInt8, KvRegionShape{1025, 8, 128}));
  EXPECT_TRUE(KvFormatSupports(KvFormat::kFp16, KvRegionShape{4096, 8, 128}));
}

TEST(KvFormatLayoutTest, CodeTablesMatchTheirDefinitions) {
  for (int c = 0; c < 256; ++c) {
    if ((c & 0x7f) == 0x7f) continue;  // NaN codes
    EXPECT_EQ(KvE4m3ToFloat(static_cast<uint8_t>(c)), testing::RefE4m3(static_cast<uint8_t>(c)))
        << c;
    EXPECT_NEAR(KvLogScale(c), std::exp2(-c / 16.0), std::exp2(-c / 16.0) * 1e-7) << c;
  }
  for (int c = 0; c < 16; ++c) {
    EXPECT_EQ(KvE2m1ToFloat(static_cast<uint8_t>(c)), testing::RefE2m1(static_cast<uint8_t>(c)));
  }
  for (int i = 0; i < kNumKvFormats; ++i) {
    const auto f = static_cast<KvFormat>(i);
    EXPECT_EQ(ParseKvFormat(KvFormatName(f)), f);
  }
  EXPECT_EQ(ParseKvFormat("fp8"), KvFormat::kFp8);
  EXPECT_EQ(ParseKvFormat("nvfp4"), KvFormat::kNvfp4);
}

}  // namespace
}  // namespace kvserve::kernels::cpu
