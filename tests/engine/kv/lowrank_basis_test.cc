#include "engine/kv/lowrank_basis.h"

#include <cmath>
#include <random>

#include "gtest/gtest.h"

namespace kvserve::engine {
namespace {

TEST(JacobiEigenTest, MatrixWorkedByHand) {
  // [[2,1,0],[1,2,0],[0,0,5]]: eigenvalues 5, 3, 1 with eigenvectors e3, (e1+e2)/sqrt2,
  // (e1-e2)/sqrt2.
  const SymmetricEigen e = JacobiEigen({2, 1, 0, 1, 2, 0, 0, 0, 5}, 3);
  ASSERT_EQ(e.values.size(), 3u);
  EXPECT_NEAR(e.values[0], 5, 1e-12);
  EXPECT_NEAR(e.values[1], 3, 1e-12);
  EXPECT_NEAR(e.values[2], 1, 1e-12);
  auto col = [&](int j, int k) { return e.vectors[k * 3 + j]; };
  EXPECT_NEAR(std::fabs(col(0, 2)), 1, 1e-12);
  EXPECT_NEAR(std::fabs(col(1, 0)), std::sqrt(0.5), 1e-12);
  EXPECT_NEAR(col(1, 0), col(1, 1), 1e-12);
  EXPECT_NEAR(col(2, 0), -col(2, 1), 1e-12);
  EXPECT_NEAR(col(2, 2), 0, 1e-12);
}

TEST(JacobiEigenTest, RandomSymmetricMatricesDecompose) {
  std::mt19937 rng(3);
  std::normal_distribution<double> nd;
  for (int n : {1, 2, 5, 8, 16, 64}) {
    std::vector<double> a(n * n);
    for (int i = 0; i < n; ++i) {
      for (int j = 0; j <= i; ++j) a[i * n + j] = a[j * n + i] = nd(rng);
    }
    const SymmetricEigen e = JacobiEigen(a, n);
    for (int j = 0; j < n; ++j) {
      if (j > 0) EXPECT_GE(e.values[j - 1], e.values[j]);
      for (int i = 0; i < n; ++i) {  // A v_j = lambda_j v_j
        double av = 0;
        for (int k = 0; k < n; ++k) av += a[i * n + k] * e.vectors[k * n + j];
        EXPECT_NEAR(av, e.values[j] * e.vectors[i * n + j], 1e-9) << n;
      }
      for (int j2 = 0; j2 < n; ++j2) {  // orthonormal
        double dot = 0;
        for (int k = 0; k < n; ++k) dot += e.vectors[k * n + j] * e.vectors[k * n + j2];
        EXPECT_NEAR(dot, j == j2 ? 1.0 : 0.0, 1e-10);
      }
    }
  }
}

TEST(KeyCovarianceTest, KeysInASubspaceAreReconstructedExactly) {
  // Keys of head_dim 8 spanned by two fixed directions: the rank-2 basis keeps all of them.
  constexpr int kDim = 8;
  const float u[kDim] = {1, 2, 0, 0, -1, 0, 0, 3};
  const float w[kDim] = {0, 1, 1, 1, 0, 0, -2, 0};
  KeyCovariance cov(/*num_layers=*/2, /*num_kv_heads=*/1, kDim);
  std::mt19937 rng(5);
  std::normal_distribution<float> nd;
  std::vector<std::vector<float>> keys;
  for (int t = 0; t < 50; ++t) {
    const float a = nd(rng), b = nd(rng);
    std::vector<float> k(kDim);
    for (int d = 0; d < kDim; ++d) k[d] = a * u[d] + b * w[d];
    cov.Add(0, 0, k.data());
    std::vector<float> noise(kDim);
    for (float& x : noise) x = nd(rng);
    cov.Add(1, 0, noise.data());
    keys.push_back(k);
  }
  EXPECT_EQ(cov.tokens(0, 0), 50);
  EXPECT_NEAR(cov.EnergyKept(0, 0, 2), 1.0, 1e-9);
  EXPECT_LT(cov.EnergyKept(0, 0, 1), 1.0);
  EXPECT_LT(cov.EnergyKept(1, 0, 2), 0.9);  // isotropic noise is not low-rank
  auto basis = cov.Basis(2);
  ASSERT_TRUE(basis.ok()) << basis.status();
  ASSERT_EQ(basis->size(), 2u * kDim * 2);
  const float* b = basis->data();  // layer 0, head 0: [kDim][2]
  for (const auto& k : keys) {
    float c[2] = {};
    for (int d = 0; d < kDim; ++d) {
      for (int i = 0; i < 2; ++i) c[i] += b[d * 2 + i] * k[d];
    }
    for (int d = 0; d < kDim; ++d) {
      EXPECT_NEAR(b[d * 2] * c[0] + b[d * 2 + 1] * c[1], k[d], 1e-4);
    }
  }
  EXPECT_FALSE(cov.Basis(0).ok());
  EXPECT_FALSE(cov.Basis(kDim + 1).ok());
  KeyCovariance empty(1, 1, kDim);
  EXPECT_EQ(empty.Basis(2).status().code(), absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace kvserve::engine
