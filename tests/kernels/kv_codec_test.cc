// The quantized codecs on every SIMD backend the build has (scalar, the 8-lane and the widest):
// code loads and stores of simd_quant.h against scalar definitions, and the Rows readers
// (Load / LoadN / LoadPacked) against the float64 reader of kv_quant_reference.h.
#include "kernels/cpu/kv_codec.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/kv_quantize.h"
#include "kernels/cpu/simd.h"
#include "kernels/cpu/simd_quant.h"
#include "tests/kernels/kv_quant_reference.h"

namespace kvserve::kernels::cpu {
namespace {

// Nearest E4M3 / E2M1 value by search, ties to the even code.
uint8_t NearestCode(double y, int codes, double (*value)(uint8_t)) {
  int best = 0;
  double best_err = INFINITY;
  for (int c = 0; c < codes; ++c) {
    if (codes == 256 && (c & 0x7f) == 0x7f) continue;
    const double err = std::fabs(value(static_cast<uint8_t>(c)) - y);
    if (err < best_err || (err == best_err && (c & 1) == 0 && (best & 1) == 1)) {
      best = c;
      best_err = err;
    }
  }
  return static_cast<uint8_t>(best);
}

template <class V>
void CheckCodeIo(std::mt19937& rng) {
  using Io = simd::QuantIo<V>;
  constexpr int kL = V::kLanes;
  SCOPED_TRACE(V::kName);
  std::uniform_int_distribution<int> byte(0, 255);
  for (int iter = 0; iter < 200; ++iter) {
    uint8_t p[32];
    for (uint8_t& b : p) b = static_cast<uint8_t>(byte(rng));
    for (uint8_t& b : p) {
      if ((b & 0x7f) == 0x7f) b &= 0xfe;  // no NaN codes
    }
    for (int n = 1; n <= kL; ++n) {
      alignas(64) float got[5][kL];
      V::Store(got[0], Io::I8(reinterpret_cast<const int8_t*>(p), n));
      V::Store(got[1], Io::U4(p, n));
      V::Store(got[2], Io::U2(p, n));
      V::Store(got[3], Io::E2m1(p, n));
      V::Store(got[4], Io::E4m3x256(p, n));
      for (int i = 0; i < kL; ++i) {
        const bool in = i < n;
        ASSERT_EQ(got[0][i], in ? static_cast<int8_t>(p[i]) : 0) << n << " " << i;
        ASSERT_EQ(got[1][i], in ? (p[i / 2] >> (4 * (i % 2))) & 15 : 0) << n << " " << i;
        ASSERT_EQ(got[2][i], in ? (p[i / 4] >> (2 * (i % 4))) & 3 : 0) << n << " " << i;
        ASSERT_EQ(got[3][i], in ? testing::RefE2m1((p[i / 2] >> (4 * (i % 2))) & 15) : 0);
        ASSERT_EQ(got[4][i], in ? testing::RefE4m3(p[i]) / 256 : 0) << n << " " << i;
      }
      alignas(64) float scales[kL];
      V::Store(scales, Io::LogScale(p, n));
      for (int i = 0; i < kL; ++i) ASSERT_EQ(scales[i], i < n ? KvLogScale(p[i]) : 0.0f);
    }
  }
  // Stores: the codes of n lanes, nothing past their bytes.
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  for (int iter = 0; iter < 300; ++iter) {
    alignas(64) float y[kL];
    const float range = iter % 3 == 0 ? 0.05f : iter % 3 == 1 ? 6.5f : 460.0f;
    for (float& x : y) x = u(rng) * range;
    if (iter % 7 == 0) y[0] = 0.25f * (1 + iter % 5);  // E2M1 ties
    for (int n = 1; n <= kL; ++n) {
      uint8_t e4[32], e2[32], i8[32], u4[32], u2[32];
      std::memset(e4, 0xCD, 32);
      std::memset(e2, 0xCD, 32);
      std::memset(i8, 0xCD, 32);
      std::memset(u4, 0xCD, 32);
      std::memset(u2, 0xCD, 32);
      Io::StoreE4m3(e4, V::Load(y), n);
      Io::StoreE2m1(e2, V::Load(y), n);
      alignas(64) float qi[kL];
      for (int i = 0; i < kL; ++i) qi[i] = std::fmod(std::nearbyint(std::fabs(y[i]) * 977), 16);
      Io::StoreI8(reinterpret_cast<int8_t*>(i8), Io::Round(V::Load(qi)), n);
      Io::StoreU4(u4, V::Load(qi), n);
      alignas(64) float q2[kL];
      for (int i = 0; i < kL; ++i) q2[i] = std::fmod(qi[i], 4);
      Io::StoreU2(u2, V::Load(q2), n);
      for (int i = 0; i < n; ++i) {
        const float yc = std::max(-448.0f, std::min(448.0f, y[i]));
        ASSERT_EQ(testing::RefE4m3(e4[i]), testing::RefE4m3(NearestCode(yc, 256, testing::RefE4m3)))
            << y[i];
        ASSERT_EQ(e4[i], simd::EncodeE4m3(y[i]));
        const float y2 = std::max(-6.0f, std::min(6.0f, y[i]));
        const uint8_t want2 = NearestCode(std::fabs(y2), 8, testing::RefE2m1) |
                              (y2 < 0 && std::fabs(y2) > 0.25f ? 8 : 0);
        ASSERT_EQ((e2[i / 2] >> (4 * (i % 2))) & 15, want2) << y[i];
        ASSERT_EQ(static_cast<int8_t>(i8[i]), static_cast<int>(qi[i]));
        ASSERT_EQ((u4[i / 2] >> (4 * (i % 2))) & 15, static_cast<int>(qi[i]));
        ASSERT_EQ((u2[i / 4] >> (2 * (i % 4))) & 3, static_cast<int>(q2[i]));
      }
      if (n % 2 == 1) {
        ASSERT_EQ(u4[n / 2] >> 4, 0);
        ASSERT_EQ(e2[n / 2] >> 4, 0);
      }
      ASSERT_EQ(e4[n], 0xCD);
      ASSERT_EQ(i8[n], 0xCD);
      ASSERT_EQ(u4[(n + 1) / 2], 0xCD);
      ASSERT_EQ(e2[(n + 1) / 2], 0xCD);
      ASSERT_EQ(u2[(n + 3) / 4], 0xCD);
    }
  }
}

TEST(QuantCodeIoTest, EveryBackendMatchesTheScalarDefinitions) {
  std::mt19937 rng(400);
  CheckCodeIo<simd::VecScalar>(rng);
  CheckCodeIo<simd::VecNarrow>(rng);
  CheckCodeIo<simd::VecWide>(rng);
}

// Every reader of every backend returns the stored values (a float rounding or two of the
// float64 reading) and zeros past n.
template <class V, class Rows>
void CheckRows(const Rows& rows, const testing::RefRegion& ref, const KvRegionShape& s, int head) {
  constexpr int kL = V::kLanes;
  SCOPED_TRACE(V::kName);
  auto close = [&](float got, int t, int d) {
    const double want = ref.Value(head, t, d);
    const double tol = 4e-7 * (std::fabs(want) + 64 * std::fabs(ref.Step(head, t, d)) +
                               std::fabs(ref.Center(head, d))) +
                       1e-30;
    return std::fabs(got - want) <= tol;
  };
  alignas(64) float buf[kL];
  for (int t = 0; t < s.block_size; ++t) {
    int d0 = 0;
    for (; d0 + kL <= s.head_dim; d0 += kL) {
      V::Store(buf, rows.template Load<V>(t, d0));
      for (int i = 0; i < kL; ++i) ASSERT_TRUE(close(buf[i], t, d0 + i)) << t << " " << d0 + i;
    }
    for (int n = 1; d0 + n <= s.head_dim && n < kL; ++n) {
      V::Store(buf, rows.template LoadN<V>(t, d0, n));
      for (int i = 0; i < kL; ++i) {
        if (i < n) {
          ASSERT_TRUE(close(buf[i], t, d0 + i)) << t << " " << d0 + i << " n=" << n;
        } else {
          ASSERT_EQ(buf[i], 0.0f) << "lane " << i << " past n=" << n;
        }
      }
    }
    // Rows read back to back (head_dim < kLanes).
    if (s.head_dim >= kL) continue;
    for (int n = 0; n <= kL && t * s.head_dim + n <= s.block_size * s.head_dim; ++n) {
      V::Store(buf, rows.template LoadPacked<V>(t, n));
      for (int i = 0; i < kL; ++i) {
        if (i < n) {
          ASSERT_TRUE(close(buf[i], t + i / s.head_dim, i % s.head_dim)) << t << " " << i;
        } else {
          ASSERT_EQ(buf[i], 0.0f) << "packed lane " << i << " past n=" << n;
        }
      }
    }
  }
}

TEST(QuantRowsTest, EveryReaderOnEveryBackend) {
  std::mt19937 rng(401);
  std::normal_distribution<float> n01(0.0f, 1.0f);
  for (KvFormat f : testing::kQuantizedFormats) {
    for (int hd : {1, 3, 4, 8, 12, 16, 20, 64, 72, 128}) {
      const KvRegionShape s{16, 2, hd};
      for (KvRole role : {KvRole::kKey, KvRole::kValue}) {
        SCOPED_TRACE(std::string(KvFormatName(f)) + (role == KvRole::kKey ? " K" : " V") +
                     " hd=" + std::to_string(hd));
        std::vector<float> x(static_cast<size_t>(2) * 16 * hd);
        for (size_t i = 0; i < x.size(); ++i) x[i] = n01(rng) + 0.5f * (i % hd);
        std::vector<uint8_t> region(KvRegionBytes(f, role, s));
        ASSERT_TRUE(QuantizeKvRegion(f, role, x.data(), s, 16, region.data()));
        const testing::RefRegion ref(f, role, region.data(), s);
        DispatchKvFormat(f, [&](auto codec) {
          using Codec = decltype(codec);
          for (int h = 0; h < 2; ++h) {
            if (role == KvRole::kKey) {
              const typename Codec::KeyRows rows(region.data(), s, h);
              CheckRows<simd::VecScalar>(rows, ref, s, h);
              CheckRows<simd::VecNarrow>(rows, ref, s, h);
              CheckRows<simd::VecWide>(rows, ref, s, h);
            } else {
              const typename Codec::ValueRows rows(region.data(), s, h);
              CheckRows<simd::VecScalar>(rows, ref, s, h);
              CheckRows<simd::VecNarrow>(rows, ref, s, h);
              CheckRows<simd::VecWide>(rows, ref, s, h);
            }
          }
        });
        if (::testing::Test::HasFatalFailure()) return;
      }
    }
  }
}

}  // namespace
}  // namespace kvserve::kernels::cpu
