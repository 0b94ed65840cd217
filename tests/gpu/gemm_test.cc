// cuda::Gemm::MatMul against cpu::MatMul for F32, F16 and BF16 weights. With 16-bit weights the
// GPU rounds the activations to the weight type (tensor cores), so the bound follows from the
// activation rounding (half a unit in the last place: 2^-11 FP16, 2^-8 BF16).
#include "kernels/cuda/gemm.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/ops.h"
#include "tests/gpu/gpu_test_util.h"
#include "tests/kernels/kernel_test_util.h"

namespace kvserve::kernels::cuda {
namespace {

using testing::DeviceBuffer;

TEST(GpuGemmTest, MatchesCpuMatMul) {
  KVSERVE_REQUIRE_GPU();
  Gemm gemm;
  std::string error;
  ASSERT_TRUE(Gemm::Create(&gemm, &error)) << error;
  std::mt19937 rng(41);
  struct Shape {
    int64_t n, rows, cols;
  };
  for (const Shape& s :
       {Shape{1, 32000, 288}, Shape{7, 768, 288}, Shape{64, 1024, 4096}, Shape{3, 5, 13}}) {
    for (DType dt : testing::kAllDTypes) {
      SCOPED_TRACE(std::string(DTypeName(dt)) + " n=" + std::to_string(s.n) +
                   " rows=" + std::to_string(s.rows) + " cols=" + std::to_string(s.cols));
      const testing::TestMatrix w = testing::RandomMatrix(rng, dt, s.rows, s.cols);
      const std::vector<float> x = testing::RandomFloats(rng, s.n * s.cols);
      std::vector<float> expect(static_cast<size_t>(s.n * s.rows));
      cpu::MatMul(x.data(), s.n, w.view(), expect.data(), nullptr);
      const auto* wb = static_cast<const uint8_t*>(w.view().data);
      DeviceBuffer<uint8_t> dw(std::vector<uint8_t>(wb, wb + s.rows * s.cols * DTypeBytes(dt)));
      DeviceBuffer<float> dx(x), dy(expect.size());
      dy.Fill(0xFF);
      WeightView v = w.view();
      v.data = dw.get();
      gemm.MatMul(dx.get(), s.n, v, dy.get(), nullptr);
      const std::vector<float> got = dy.Download();
      // The error of an element is sum_i w_i d_i with independent activation rounding errors
      // |d_i| <= eps |x_i| (|x|, |w| <= 1): standard deviation below eps sqrt(cols / 27). The
      // bound is 8 eps sqrt(cols), over 40 standard deviations, and far below the outputs
      // (standard deviation sqrt(cols) / 3) that a wrong layout would produce.
      const double eps = dt == DType::kF32 ? 1e-6 : (dt == DType::kF16 ? 0x1p-11 : 0x1p-8);
      const double bound = 8.0 * eps * std::sqrt(static_cast<double>(s.cols)) + 1e-4;
      double worst = 0.0;
      for (size_t i = 0; i < got.size(); ++i) {
        ASSERT_FALSE(std::isnan(got[i])) << "element " << i << " was not written";
        worst = std::max(worst, std::fabs(static_cast<double>(got[i]) - expect[i]));
      }
      EXPECT_LE(worst, bound);
    }
  }
}

}  // namespace
}  // namespace kvserve::kernels::cuda
