#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "kernels/cpu/ops.h"
#include "kernels/cpu/thread_pool.h"
#include "tests/kernels/kernel_test_util.h"

namespace kvserve::kernels::cpu {
namespace {

using testing::RandomFloats;
using testing::RandomMatrix;
using testing::TestMatrix;

constexpr double kUnit = 1.0 / (1 << 24);  // float unit roundoff
constexpr float kGuard = 1234.5f;

// Checks MatMul against a double-precision reference of the stored weight values. A float dot
// product of `cols` terms is within (cols + 2) * u * sum |x_i w_i| of the exact one, whatever
// the summation order.
// With `panels`, the weights are first packed by PackWeightPanels and MatMul takes that path.
void CheckMatMul(std::mt19937& rng, DType dtype, int64_t n, int64_t rows, int64_t cols,
                 ThreadPool* pool, bool panels = false) {
  const TestMatrix w = RandomMatrix(rng, dtype, rows, cols);
  const std::vector<float> x = RandomFloats(rng, n * cols);
  std::vector<float> y(static_cast<size_t>(n * rows + 16), kGuard);
  WeightView view = w.view();
  std::vector<uint8_t> packed(WeightPanelBytes(view));
  if (panels) {
    PackWeightPanels(view, packed.data());
    view.panels = packed.data();
  }
  MatMul(x.data(), n, view, y.data(), pool);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t r = 0; r < rows; ++r) {
      double ref = 0.0;
      double mag = 0.0;
      for (int64_t c = 0; c < cols; ++c) {
        const double p = static_cast<double>(x[i * cols + c]) * w.values[r * cols + c];
        ref += p;
        mag += std::fabs(p);
      }
      const double tol = (cols + 2) * kUnit * mag + 1e-30;
      ASSERT_NEAR(y[i * rows + r], ref, tol) << DTypeName(dtype) << " n=" << n << " rows=" << rows
                                             << " cols=" << cols << " i=" << i << " r=" << r;
    }
  }
  for (size_t g = n * rows; g < y.size(); ++g) ASSERT_EQ(y[g], kGuard) << "wrote past y";
}

TEST(MatMulTest, SweepOfShapesAndDTypes) {
  std::mt19937 rng(1);
  for (DType dtype : testing::kAllDTypes) {
    for (int64_t n : {1, 2, 3, 4, 5, 7, 8, 17}) {
      for (int64_t rows : {1, 3, 7, 8, 17, 64, 172, 513}) {
        for (int64_t cols : {1, 3, 7, 8, 9, 16, 17, 64, 172, 513}) {
          CheckMatMul(rng, dtype, n, rows, cols, nullptr);
          CheckMatMul(rng, dtype, n, rows, cols, nullptr, /*panels=*/true);
        }
      }
    }
  }
}

TEST(MatMulTest, ParallelMatchesReference) {
  std::mt19937 rng(2);
  for (int threads : {2, 3}) {
    ThreadPool pool(threads);
    for (DType dtype : testing::kAllDTypes) {
      for (int64_t n : {1, 5, 32}) {
        for (int64_t rows : {7, 64, 172, 513}) {
          for (int64_t cols : {8, 64, 172, 513}) {
            CheckMatMul(rng, dtype, n, rows, cols, &pool);
            CheckMatMul(rng, dtype, n, rows, cols, &pool, /*panels=*/true);
          }
        }
      }
    }
  }
}

TEST(MatMulTest, ModelShapes) {
  std::mt19937 rng(3);
  ThreadPool pool(2);
  // stories260K projections, then a 768-wide layer.
  const int64_t shapes[][2] = {{64, 64}, {32, 64}, {172, 64}, {64, 172}, {512, 64}, {768, 768}};
  for (DType dtype : testing::kAllDTypes) {
    for (const auto& s : shapes) {
      for (int64_t n : {1, 32}) {
        CheckMatMul(rng, dtype, n, s[0], s[1], nullptr);
        CheckMatMul(rng, dtype, n, s[0], s[1], &pool);
        CheckMatMul(rng, dtype, n, s[0], s[1], &pool, /*panels=*/true);
      }
    }
  }
}

// The panel path computes every output as the fused multiply-add chain over the columns in
// ascending order, y = fma(x[c], w[c], y) from y = 0: bitwise that plain scalar loop, for any
// batch size, any row of the batch and any split over threads.
TEST(MatMulTest, PanelsEqualTheAscendingFmaChainBitwise) {
  std::mt19937 rng(5);
  ThreadPool pool(3);
  for (DType dtype : testing::kAllDTypes) {
    for (int64_t rows : {1, 31, 32, 33, 64, 172, 513}) {
      for (int64_t cols : {1, 7, 64, 172, 768}) {
        const TestMatrix w = RandomMatrix(rng, dtype, rows, cols);
        WeightView view = w.view();
        std::vector<uint8_t> packed(WeightPanelBytes(view));
        PackWeightPanels(view, packed.data());
        view.panels = packed.data();
        const int64_t n = 37;
        const std::vector<float> x = RandomFloats(rng, n * cols);
        std::vector<float> expected(n * rows);
        for (int64_t i = 0; i < n; ++i) {
          for (int64_t r = 0; r < rows; ++r) {
            float acc = 0.0f;
            for (int64_t c = 0; c < cols; ++c) {
              acc = std::fma(x[i * cols + c], w.values[r * cols + c], acc);
            }
            expected[i * rows + r] = acc;
          }
        }
        // The whole batch on the pool and on one thread, then sub-batches of 1, 2, 3, 5 and 8
        // rows starting at every offset, each on its own.
        for (ThreadPool* p : {&pool, static_cast<ThreadPool*>(nullptr)}) {
          std::vector<float> y(n * rows);
          MatMul(x.data(), n, view, y.data(), p);
          for (int64_t e = 0; e < n * rows; ++e) {
            ASSERT_EQ(y[e], expected[e])
                << DTypeName(dtype) << " rows=" << rows << " cols=" << cols << " element " << e;
          }
        }
        for (int64_t m : {1, 2, 3, 5, 8}) {
          for (int64_t i0 = 0; i0 + m <= n; i0 += m + 1) {
            std::vector<float> y(m * rows);
            MatMul(x.data() + i0 * cols, m, view, y.data(), nullptr);
            for (int64_t e = 0; e < m * rows; ++e) {
              ASSERT_EQ(y[e], expected[i0 * rows + e])
                  << DTypeName(dtype) << " rows=" << rows << " cols=" << cols << " m=" << m
                  << " i0=" << i0;
            }
          }
        }
      }
    }
  }
}

TEST(MatMulTest, ZeroSizedShapes) {
  TestMatrix w;
  std::mt19937 rng(4);
  w = RandomMatrix(rng, DType::kF32, 3, 0);
  std::vector<float> y(6, kGuard);
  MatMul(nullptr, 2, w.view(), y.data(), nullptr);
  for (float v : y) EXPECT_EQ(v, 0.0f);
  std::vector<float> y2(4, kGuard);
  MatMul(nullptr, 0, RandomMatrix(rng, DType::kF32, 3, 5).view(), y2.data(), nullptr);
  for (float v : y2) EXPECT_EQ(v, kGuard);
}

}  // namespace
}  // namespace kvserve::kernels::cpu
