// The SIMD backends' primitives against plain scalar results, for every backend this build has.
#include "kernels/cpu/simd.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "kernels/dtype.h"

namespace kvserve::kernels::cpu::simd {
namespace {

template <class V>
class SimdTest : public ::testing::Test {};

#if defined(KVSERVE_SIMD_AVX512)
using Backends = ::testing::Types<VecScalar, VecAvx2, VecAvx512>;
#elif defined(KVSERVE_SIMD_AVX2)
using Backends = ::testing::Types<VecScalar, VecAvx2>;
#else
using Backends = ::testing::Types<VecScalar>;
#endif
TYPED_TEST_SUITE(SimdTest, Backends);

template <class V>
std::vector<float> ToVector(typename V::Reg r) {
  std::vector<float> out(V::kLanes);
  V::Store(out.data(), r);
  return out;
}

template <class V>
typename V::Reg FromVector(const std::vector<float>& v) {
  return V::Load(v.data());
}

std::vector<float> Iota(int n, float start, float step) {
  std::vector<float> v(n);
  for (int i = 0; i < n; ++i) v[i] = start + step * i;
  return v;
}

TYPED_TEST(SimdTest, LoadNStoreNTouchOnlyNElements) {
  using V = TypeParam;
  constexpr int kL = V::kLanes;
  const std::vector<float> src = Iota(kL, 1.0f, 1.0f);
  for (int n = 0; n <= kL; ++n) {
    const std::vector<float> got = ToVector<V>(V::LoadN(src.data(), n));
    for (int i = 0; i < kL; ++i) ASSERT_EQ(got[i], i < n ? src[i] : 0.0f) << "n=" << n;
    std::vector<float> dst(kL + 1, -1.0f);
    V::StoreN(dst.data(), V::Load(src.data()), n);
    for (int i = 0; i <= kL; ++i) ASSERT_EQ(dst[i], i < n ? src[i] : -1.0f) << "n=" << n;
  }
}

TYPED_TEST(SimdTest, HalfConversionsMatchScalar) {
  using V = TypeParam;
  constexpr int kL = V::kLanes;
  std::mt19937 rng(3);
  std::uniform_int_distribution<uint32_t> bits;
  for (int iter = 0; iter < 20000; ++iter) {
    std::vector<float> f(kL);
    for (float& x : f) {
      uint32_t b = bits(rng);
      if (iter % 2) b = (b & 0x807FFFFFu) | ((100u + (b >> 23) % 50u) << 23);  // half's range
      std::memcpy(&x, &b, 4);
      if (std::isnan(x)) x = 1.5f;
    }
    const int n = iter % (kL + 1);
    std::vector<Fp16> h(kL + 1, Fp16{0xABCD});
    std::vector<Bf16> b(kL + 1, Bf16{0xABCD});
    V::StoreN(h.data(), V::Load(f.data()), n);
    V::StoreN(b.data(), V::Load(f.data()), n);
    for (int i = 0; i <= kL; ++i) {
      ASSERT_EQ(h[i].bits, i < n ? FloatToFp16(f[i]) : 0xABCD) << f[i];
      ASSERT_EQ(b[i].bits, i < n ? FloatToBf16(f[i]) : 0xABCD) << f[i];
    }
    const std::vector<float> hf = ToVector<V>(V::LoadN(h.data(), n));
    const std::vector<float> bf = ToVector<V>(V::LoadN(b.data(), n));
    for (int i = 0; i < kL; ++i) {
      ASSERT_EQ(hf[i], i < n ? Fp16ToFloat(h[i].bits) : 0.0f);
      ASSERT_EQ(bf[i], i < n ? Bf16ToFloat(b[i].bits) : 0.0f);
    }
  }
  // NaN stays NaN in both formats.
  std::vector<float> nan(kL, std::numeric_limits<float>::quiet_NaN());
  std::vector<Fp16> h(kL);
  std::vector<Bf16> b(kL);
  V::Store(h.data(), V::Load(nan.data()));
  V::Store(b.data(), V::Load(nan.data()));
  EXPECT_TRUE(std::isnan(Fp16ToFloat(h[0].bits)));
  EXPECT_TRUE(std::isnan(Bf16ToFloat(b[0].bits)));
}

TYPED_TEST(SimdTest, Reductions) {
  using V = TypeParam;
  constexpr int kL = V::kLanes;
  typename V::Reg regs[kL];
  std::vector<double> sums;
  for (int r = 0; r < kL; ++r) {
    const std::vector<float> v = Iota(kL, static_cast<float>(r * 100), static_cast<float>(r + 1));
    regs[r] = FromVector<V>(v);
    double s = 0;
    for (float x : v) s += x;
    sums.push_back(s);
  }
  for (int r = 0; r < kL; ++r) ASSERT_EQ(V::ReduceAdd(regs[r]), sums[r]);
  EXPECT_EQ(V::ReduceMax(regs[1]), 100.0f + 2.0f * (kL - 1));
  float four[4];
  V::Reduce4Store(regs[0], regs[1], regs[2], regs[3 % kL], four);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(four[i], sums[i % kL]);
  const std::vector<float> t = ToVector<V>(V::TransposeReduce(regs));
  for (int r = 0; r < kL; ++r) EXPECT_EQ(t[r], sums[r]) << r;
}

TYPED_TEST(SimdTest, TransposeAndMasks) {
  using V = TypeParam;
  constexpr int kL = V::kLanes;
  typename V::Reg regs[kL];
  for (int r = 0; r < kL; ++r) regs[r] = FromVector<V>(Iota(kL, r * 1000.0f, 1.0f));
  V::Transpose(regs);
  for (int r = 0; r < kL; ++r) {
    const std::vector<float> v = ToVector<V>(regs[r]);
    for (int c = 0; c < kL; ++c) ASSERT_EQ(v[c], c * 1000.0f + r) << r << "," << c;
  }
  const typename V::Reg ones = V::Set1(1.0f);
  for (int n = 0; n <= kL; ++n) {
    const std::vector<float> z = ToVector<V>(V::ZeroFrom(ones, n));
    const std::vector<float> f = ToVector<V>(V::FillFrom(ones, n, -5.0f));
    for (int i = 0; i < kL; ++i) {
      ASSERT_EQ(z[i], i < n ? 1.0f : 0.0f);
      ASSERT_EQ(f[i], i < n ? 1.0f : -5.0f);
    }
  }
}

TYPED_TEST(SimdTest, ExpIsAccurate) {
  using V = TypeParam;
  constexpr int kL = V::kLanes;
  double worst = 0.0;
  for (float x = -87.0f; x <= 88.0f; x += 0.0137f) {
    const std::vector<float> in = Iota(kL, x, 1e-4f);
    const std::vector<float> out = ToVector<V>(V::Exp(FromVector<V>(in)));
    for (int i = 0; i < kL; ++i) {
      const double ref = std::exp(static_cast<double>(in[i]));
      worst = std::max(worst, std::fabs(out[i] - ref) / ref);
    }
  }
  EXPECT_LT(worst, 4e-7);  // a few ulp
  // Far below the range: tiny, never negative, inf or nan.
  const std::vector<float> low = ToVector<V>(V::Exp(V::Set1(-1e30f)));
  EXPECT_GE(low[0], 0.0f);
  EXPECT_LT(low[0], 1e-37f);
  const std::vector<float> ninf =
      ToVector<V>(V::Exp(V::Set1(-std::numeric_limits<float>::infinity())));
  EXPECT_GE(ninf[0], 0.0f);
  EXPECT_LT(ninf[0], 1e-37f);
  EXPECT_TRUE(std::isfinite(ToVector<V>(V::Exp(V::Set1(1e30f)))[0]));
}

}  // namespace
}  // namespace kvserve::kernels::cpu::simd
