#include "kernels/cpu/ops.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "tests/kernels/kernel_test_util.h"

namespace kvserve::kernels::cpu {
namespace {

using testing::RandomFloats;

constexpr double kUnit = 1.0 / (1 << 24);
const int64_t kSizes[] = {1, 3, 7, 8, 15, 16, 17, 31, 64, 172, 513, 1000};

TEST(RmsNormTest, MatchesReference) {
  std::mt19937 rng(10);
  for (int64_t n : {1, 3}) {
    for (int64_t dim : kSizes) {
      for (bool in_place : {false, true}) {
        std::vector<float> x = RandomFloats(rng, n * dim, -3.0f, 3.0f);
        const std::vector<float> w = RandomFloats(rng, dim, 0.5f, 1.5f);
        const std::vector<float> x0 = x;
        std::vector<float> out(static_cast<size_t>(n * dim));
        float* dst = in_place ? x.data() : out.data();
        RmsNorm(x.data(), w.data(), n, dim, 1e-5f, dst);
        for (int64_t t = 0; t < n; ++t) {
          double ss = 0.0;
          for (int64_t i = 0; i < dim; ++i)
            ss += static_cast<double>(x0[t * dim + i]) * x0[t * dim + i];
          const double inv = 1.0 / std::sqrt(ss / dim + 1e-5);
          for (int64_t i = 0; i < dim; ++i) {
            const double ref = x0[t * dim + i] * inv * w[i];
            // Sum of squares: (dim + 2) u relative; sqrt, division and two products: 6 u.
            ASSERT_NEAR(dst[t * dim + i], ref,
                        (0.5 * (dim + 2) + 8) * kUnit * std::fabs(ref) + 1e-30)
                << "dim=" << dim << " t=" << t << " i=" << i;
          }
        }
      }
    }
  }
}

TEST(ArgMaxTest, MatchesScalarScanWithTiesNansAndInfinities) {
  std::mt19937 rng(5);
  const float inf = std::numeric_limits<float>::infinity();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (int64_t n : {1, 2, 15, 16, 17, 31, 32, 100, 512, 513}) {
    for (int trial = 0; trial < 50; ++trial) {
      std::vector<float> x(n);
      std::uniform_int_distribution<int> small(-3, 3);  // few distinct values: many ties
      for (auto& v : x) v = static_cast<float>(small(rng));
      std::uniform_int_distribution<int64_t> at(0, n - 1);
      if (trial % 5 == 1) x[at(rng)] = nan;
      if (trial % 5 == 2) x[at(rng)] = inf;
      if (trial % 5 == 3) std::fill(x.begin(), x.end(), -inf);
      if (trial % 5 == 4) x[0] = nan;
      if (trial % 7 == 0) x[at(rng)] = -0.0f;
      int64_t want = 0;
      for (int64_t i = 1; i < n; ++i) {
        if (x[i] > x[want]) want = i;
      }
      ASSERT_EQ(ArgMax(x.data(), n), want) << "n=" << n << " trial=" << trial;
    }
  }
}

TEST(RopeTest, MatchesReference) {
  std::mt19937 rng(11);
  std::uniform_int_distribution<int32_t> pos_dist(0, 40000);
  for (int head_dim : {2, 7, 8, 12, 64, 128}) {
    for (int heads : {1, 3, 8}) {
      for (float base : {10000.0f, 500000.0f}) {
        const int64_t n = 5;
        std::vector<int32_t> pos(n);
        for (auto& p : pos) p = pos_dist(rng);
        pos[0] = 0;
        std::vector<float> x = RandomFloats(rng, n * heads * head_dim);
        const std::vector<float> x0 = x;
        RopeAdjacentPairs(x.data(), pos.data(), n, heads, head_dim, base);
        // The table form (computed once per step in the engine) gives exactly the same values.
        std::vector<float> table(n * (head_dim / 2) * 2), xt = x0;
        RopeTable(pos.data(), n, head_dim, base, table.data());
        RopeAdjacentPairsTable(xt.data(), table.data(), n, heads, head_dim);
        ASSERT_EQ(xt, x) << "hd=" << head_dim;
        for (int64_t t = 0; t < n; ++t) {
          for (int h = 0; h < heads; ++h) {
            const int64_t off = (t * heads + h) * head_dim;
            for (int i = 0; i < head_dim / 2; ++i) {
              const double angle =
                  pos[t] * std::pow(static_cast<double>(base), -2.0 * i / head_dim);
              const double a = x0[off + 2 * i];
              const double b = x0[off + 2 * i + 1];
              const double tol = 4 * kUnit * (std::fabs(a) + std::fabs(b)) + 1e-30;
              ASSERT_NEAR(x[off + 2 * i], a * std::cos(angle) - b * std::sin(angle), tol)
                  << "hd=" << head_dim << " pos=" << pos[t] << " i=" << i;
              ASSERT_NEAR(x[off + 2 * i + 1], a * std::sin(angle) + b * std::cos(angle), tol);
            }
            if (head_dim % 2 == 1) {
              ASSERT_EQ(x[off + head_dim - 1], x0[off + head_dim - 1]);  // odd dim untouched
            }
          }
        }
      }
    }
  }
}

TEST(SwiGluTest, MatchesReference) {
  std::mt19937 rng(12);
  for (int64_t n : kSizes) {
    for (bool in_place : {false, true}) {
      std::vector<float> g = RandomFloats(rng, n, -20.0f, 20.0f);
      if (n > 4) {
        g[0] = -100.0f;
        g[1] = 100.0f;
        g[2] = 0.0f;
        g[3] = -1e-3f;
      }
      const std::vector<float> u = RandomFloats(rng, n, -2.0f, 2.0f);
      const std::vector<float> g0 = g;
      std::vector<float> out(static_cast<size_t>(n));
      float* dst = in_place ? g.data() : out.data();
      SwiGlu(g.data(), u.data(), n, dst);
      for (int64_t i = 0; i < n; ++i) {
        const double x = g0[i];
        const double ref = x / (1.0 + std::exp(-x)) * u[i];
        ASSERT_NEAR(dst[i], ref, 1e-6 * std::fabs(ref) + 1e-30) << "n=" << n << " g=" << x;
      }
    }
  }
}

TEST(AddInPlaceTest, IsExact) {
  std::mt19937 rng(13);
  for (int64_t n : kSizes) {
    std::vector<float> x = RandomFloats(rng, n + 1);
    const std::vector<float> y = RandomFloats(rng, n + 1);
    const std::vector<float> x0 = x;
    AddInPlace(x.data(), y.data(), n);
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(x[i], x0[i] + y[i]);
    ASSERT_EQ(x[n], x0[n]);  // nothing past n
  }
}

TEST(EmbeddingGatherTest, ConvertsRowsExactly) {
  std::mt19937 rng(14);
  for (DType dtype : testing::kAllDTypes) {
    for (int64_t dim : kSizes) {
      const int64_t vocab = 37;
      const testing::TestMatrix table = testing::RandomMatrix(rng, dtype, vocab, dim);
      const std::vector<int32_t> ids = {0, 36, 5, 5, 17};
      std::vector<float> out(ids.size() * dim + 1, -7.0f);
      EmbeddingGather(table.view(), ids.data(), static_cast<int64_t>(ids.size()), out.data());
      for (size_t t = 0; t < ids.size(); ++t) {
        for (int64_t i = 0; i < dim; ++i) {
          ASSERT_EQ(out[t * dim + i], table.values[ids[t] * dim + i]) << DTypeName(dtype);
        }
      }
      ASSERT_EQ(out.back(), -7.0f);
    }
  }
}

TEST(SoftmaxTest, MatchesReference) {
  std::mt19937 rng(15);
  for (int64_t n : kSizes) {
    for (float spread : {1.0f, 50.0f}) {
      std::vector<float> x = RandomFloats(rng, n, -spread, spread);
      if (n > 2) x[1] = -1000.0f;  // underflows to (almost) nothing
      const std::vector<float> x0 = x;
      SoftmaxInPlace(x.data(), n);
      double mx = x0[0];
      for (float v : x0) mx = std::max(mx, static_cast<double>(v));
      double sum = 0.0;
      for (float v : x0) sum += std::exp(v - mx);
      double total = 0.0;
      for (int64_t i = 0; i < n; ++i) {
        const double ref = std::exp(x0[i] - mx) / sum;
        // Rounding x - max costs |x - max| u relative after exp(); exp() itself a few u; the
        // float sum of n terms n u; the division u.
        const double rel = (std::fabs(x0[i] - mx) + n + 16) * kUnit;
        ASSERT_NEAR(x[i], ref, rel * ref + 1e-30) << "n=" << n << " i=" << i;
        total += x[i];
      }
      EXPECT_NEAR(total, 1.0, 1e-5);
    }
  }
}

}  // namespace
}  // namespace kvserve::kernels::cpu
