#include "kernels/cpu/quant_matmul.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/cpu/ops.h"
#include "kernels/cpu/thread_pool.h"
#include "kernels/weight_formats.h"

namespace kvserve::kernels::cpu {
namespace {

const DType kQuantTypes[] = {DType::kQ4_0, DType::kQ4_1, DType::kQ5_0, DType::kQ5_1, DType::kQ8_0,
                             DType::kQ2_K, DType::kQ3_K, DType::kQ4_K, DType::kQ5_K, DType::kQ6_K};
const QuantKernel kPaths[] = {QuantKernel::kScalar, QuantKernel::kAvx2, QuantKernel::kAvx512Vnni};

struct QuantMatrix {
  DType t;
  int64_t rows, cols;
  std::vector<uint8_t> bytes;
  std::vector<float> values;  // reference dequantization
  WeightView view() const { return WeightView{t, bytes.data(), rows, cols, nullptr}; }
};

QuantMatrix RandomQuant(std::mt19937& rng, DType t, int64_t rows, int64_t cols) {
  std::normal_distribution<float> normal(0.0f, 0.05f);
  std::vector<float> raw(rows * cols);
  for (float& v : raw) v = normal(rng);
  QuantMatrix m{t, rows, cols, std::vector<uint8_t>(rows * WeightRowBytes(t, cols)),
                std::vector<float>(rows * cols)};
  for (int64_t r = 0; r < rows; ++r) {
    QuantizeRow(t, raw.data() + r * cols, cols, m.bytes.data() + r * WeightRowBytes(t, cols));
    DequantizeRow(t, m.bytes.data() + r * WeightRowBytes(t, cols), cols,
                  m.values.data() + r * cols);
  }
  return m;
}

std::vector<float> RandomX(std::mt19937& rng, int64_t count) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(count);
  for (float& v : x) v = normal(rng);
  return x;
}

// Against the reference dequantization and a double dot product: the activations are rounded
// to 8 bits per block (error <= d/2 = amax/254 per element), plus scale and float rounding.
TEST(QuantMatMulTest, EveryTypeAndPathMatchesTheReferenceDequantization) {
  std::mt19937 rng(3);
  for (DType t : kQuantTypes) {
    const int64_t bs = DTypeBlockSize(t);
    for (QuantKernel k : kPaths) {
      if (!QuantKernelSupported(k)) continue;
      for (int64_t n : {1, 3, 8}) {
        for (int64_t rows : {1, 5, 33}) {
          const int64_t cols = 2 * std::max<int64_t>(bs, 128);
          const QuantMatrix w = RandomQuant(rng, t, rows, cols);
          const std::vector<float> x = RandomX(rng, n * cols);
          std::vector<float> y(n * rows, -1.0f);
          QuantMatMulWith(k, x.data(), n, w.view(), y.data(), nullptr);
          for (int64_t i = 0; i < n; ++i) {
            for (int64_t r = 0; r < rows; ++r) {
              double ref = 0, tol = 0;
              for (int64_t b = 0; b < cols / bs; ++b) {
                double amax = 0;
                for (int64_t j = 0; j < bs; ++j) {
                  amax = std::max(amax, std::fabs(double{x[i * cols + b * bs + j]}));
                }
                for (int64_t j = 0; j < bs; ++j) {
                  const int64_t c = b * bs + j;
                  const double wv = w.values[r * cols + c];
                  ref += wv * x[i * cols + c];
                  // Plus the FP16 rounding of a 32-block's scale (relative 2^-11).
                  tol += std::fabs(wv) * (amax / 254.0) + 1e-3 * std::fabs(wv * x[i * cols + c]);
                }
              }
              ASSERT_NEAR(y[i * rows + r], ref, tol + 1e-6)
                  << DTypeName(t) << " " << QuantKernelName(k) << " n=" << n << " r=" << r;
            }
          }
        }
      }
    }
  }
}

// The SIMD paths compute the same integers as the scalar one and combine them identically.
TEST(QuantMatMulTest, SimdPathsAreBitwiseEqualToScalar) {
  std::mt19937 rng(4);
  for (DType t : kQuantTypes) {
    const int64_t cols = 512, rows = 19, n = 5;
    const QuantMatrix w = RandomQuant(rng, t, rows, cols);
    const std::vector<float> x = RandomX(rng, n * cols);
    std::vector<float> scalar(n * rows), simd(n * rows);
    QuantMatMulWith(QuantKernel::kScalar, x.data(), n, w.view(), scalar.data(), nullptr);
    for (QuantKernel k : {QuantKernel::kAvx2, QuantKernel::kAvx512Vnni}) {
      if (!QuantKernelSupported(k)) continue;
      QuantMatMulWith(k, x.data(), n, w.view(), simd.data(), nullptr);
      EXPECT_EQ(0, std::memcmp(scalar.data(), simd.data(), scalar.size() * 4))
          << DTypeName(t) << " " << QuantKernelName(k);
    }
  }
}

// A row's outputs are the same bits alone, in a batch of 7, and on 1 or 2 threads.
TEST(QuantMatMulTest, BatchAndThreadInvariant) {
  std::mt19937 rng(5);
  ThreadPool two(2);
  for (DType t : kQuantTypes) {
    const int64_t cols = 768, rows = 300, n = 7;
    const QuantMatrix w = RandomQuant(rng, t, rows, cols);
    const std::vector<float> x = RandomX(rng, n * cols);
    std::vector<float> alone(rows), batch(n * rows), threaded(n * rows);
    MatMul(x.data() + 3 * cols, 1, w.view(), alone.data(), nullptr);
    MatMul(x.data(), n, w.view(), batch.data(), nullptr);
    MatMul(x.data(), n, w.view(), threaded.data(), &two);
    EXPECT_EQ(0, std::memcmp(alone.data(), batch.data() + 3 * rows, rows * 4)) << DTypeName(t);
    EXPECT_EQ(0, std::memcmp(batch.data(), threaded.data(), batch.size() * 4)) << DTypeName(t);
  }
}

TEST(QuantMatMulTest, EmbeddingGatherDequantizesTheGatheredRows) {
  std::mt19937 rng(6);
  for (DType t : {DType::kQ6_K, DType::kQ4_0, DType::kQ8_0}) {
    const QuantMatrix w = RandomQuant(rng, t, 10, 256);
    const int32_t ids[] = {7, 0, 7, 9};
    std::vector<float> out(4 * 256);
    EmbeddingGather(w.view(), ids, 4, out.data());
    for (int k = 0; k < 4; ++k) {
      for (int c = 0; c < 256; ++c) {
        ASSERT_EQ(out[k * 256 + c], w.values[ids[k] * 256 + c]) << DTypeName(t);
      }
    }
  }
}

// Blocks of random bytes exercise every code, scale and min (Q8_0 -128, Q6_K scale -128, 6-bit
// scales and mins of 63, ...), with finite FP16 scales; activations include an all-zero block
// and single spikes. Row counts leave tails after the SIMD kernels' groups of rows. Every path
// must give the scalar path's bits, and each row the same bits alone as in the batch.
// One activation row through every SIMD path this CPU has: the outputs are the scalar path's,
// bit for bit.
void ExpectSimdPathsMatchScalar(const QuantMatrix& w, const std::vector<float>& x) {
  std::vector<float> scalar(w.rows), simd(w.rows);
  QuantMatMulWith(QuantKernel::kScalar, x.data(), 1, w.view(), scalar.data(), nullptr);
  for (QuantKernel k : {QuantKernel::kAvx2, QuantKernel::kAvx512Vnni}) {
    if (!QuantKernelSupported(k)) continue;
    QuantMatMulWith(k, x.data(), 1, w.view(), simd.data(), nullptr);
    EXPECT_EQ(0, std::memcmp(scalar.data(), simd.data(), scalar.size() * 4))
        << DTypeName(w.t) << " " << QuantKernelName(k);
  }
}

// The SIMD paths quantize K-type activations with vector code; the codes must be the scalar
// ones: products exactly halfway between two integers rounded to even (rounding half away
// from zero gives other codes), magnitudes that tie between -m and m, and a block that is all
// zero.
TEST(QuantMatMulTest, SimdActivationCodesMatchScalarOnTiesAndHalves) {
  std::mt19937 rng(8);
  for (DType t : {DType::kQ4_K, DType::kQ6_K, DType::kQ2_K}) {
    const int64_t cols = 1024, rows = 16;
    const QuantMatrix w = RandomQuant(rng, t, rows, cols);
    std::vector<float> x = RandomX(rng, cols);
    // Block 0: -2 at 37 comes before +2 at 200, so iscale = -127 / -2 = 63.5, and k / 127
    // scales to k / 2: 0.5, 1.5, 2.5 and -0.5 sit exactly halfway.
    for (int64_t j = 0; j < 256; ++j) x[j] = std::clamp(x[j], -1.9f, 1.9f);
    x[37] = -2.0f;
    x[200] = 2.0f;
    x[1] = 1.0f / 127;
    x[2] = 3.0f / 127;
    x[3] = 5.0f / 127;
    x[4] = -1.0f / 127;
    // Block 1: +2 first, then -2.
    for (int64_t j = 256; j < 512; ++j) x[j] = std::clamp(x[j], -1.9f, 1.9f);
    x[300] = 2.0f;
    x[301] = -2.0f;
    // Block 2: all zero.
    std::fill(x.begin() + 512, x.begin() + 768, 0.0f);
    ExpectSimdPathsMatchScalar(w, x);
  }
}

// The same for 32-element activation blocks, which round half away from zero: with amax = 127
// the scale is 1, so 0.5, 2.5, -0.5 and -2.5 are exactly halfway.
TEST(QuantMatMulTest, SimdActivationCodesMatchScalarOnHalvesOf32Blocks) {
  std::mt19937 rng(9);
  for (DType t : {DType::kQ8_0, DType::kQ4_0, DType::kQ5_1}) {
    const int64_t cols = 256, rows = 16;
    const QuantMatrix w = RandomQuant(rng, t, rows, cols);
    std::vector<float> x = RandomX(rng, cols);
    x[0] = 127.0f;
    x[1] = 0.5f;
    x[2] = 2.5f;
    x[3] = -0.5f;
    x[4] = -2.5f;
    x[40] = -1.0f;  // block 1: -1 and 1 tie
    x[41] = 1.0f;
    for (int64_t j = 32; j < 64; ++j) x[j] = std::clamp(x[j], -0.9f, 0.9f);
    std::fill(x.begin() + 64, x.begin() + 96, 0.0f);  // block 2: all zero
    ExpectSimdPathsMatchScalar(w, x);
  }
}

TEST(QuantMatMulTest, SimdPathsMatchScalarOnArbitraryBlocks) {
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_real_distribution<float> scale(-0.02f, 0.02f);
  for (DType t : kQuantTypes) {
    const int64_t cols = 512, rows = 37;
    const int64_t bb = DTypeBlockBytes(t), blocks = rows * cols / DTypeBlockSize(t);
    std::vector<uint8_t> bytes(rows * WeightRowBytes(t, cols));
    for (uint8_t& v : bytes) v = static_cast<uint8_t>(byte(rng));
    // Offsets of the FP16 fields of a block.
    std::vector<int64_t> halves;
    switch (t) {
      case DType::kQ4_1:
      case DType::kQ5_1:
      case DType::kQ4_K:
      case DType::kQ5_K:
        halves = {0, 2};
        break;
      case DType::kQ2_K:
        halves = {bb - 4, bb - 2};
        break;
      case DType::kQ3_K:
      case DType::kQ6_K:
        halves = {bb - 2};
        break;
      default:
        halves = {0};
    }
    for (int64_t b = 0; b < blocks; ++b) {
      for (int64_t o : halves) {
        const uint16_t h = FloatToFp16(scale(rng));
        std::memcpy(bytes.data() + b * bb + o, &h, 2);
      }
    }
    const WeightView w{t, bytes.data(), rows, cols, nullptr};
    for (int64_t n : {1, 2, 9}) {
      std::vector<float> x = RandomX(rng, n * cols);
      std::fill(x.begin(), x.begin() + 256, 0.0f);
      x[n * cols - 1] = 1e4f;
      x[n * cols / 2] = -3e3f;
      std::vector<float> scalar(n * rows), simd(n * rows), alone(rows);
      QuantMatMulWith(QuantKernel::kScalar, x.data(), n, w, scalar.data(), nullptr);
      for (QuantKernel k : {QuantKernel::kAvx2, QuantKernel::kAvx512Vnni}) {
        if (!QuantKernelSupported(k)) continue;
        QuantMatMulWith(k, x.data(), n, w, simd.data(), nullptr);
        EXPECT_EQ(0, std::memcmp(scalar.data(), simd.data(), scalar.size() * 4))
            << DTypeName(t) << " " << QuantKernelName(k) << " n=" << n;
        QuantMatMulWith(k, x.data() + (n - 1) * cols, 1, w, alone.data(), nullptr);
        EXPECT_EQ(0, std::memcmp(alone.data(), scalar.data() + (n - 1) * rows, rows * 4))
            << DTypeName(t) << " " << QuantKernelName(k) << " n=" << n;
      }
      for (float v : scalar) ASSERT_TRUE(std::isfinite(v)) << DTypeName(t);
    }
  }
}

}  // namespace
}  // namespace kvserve::kernels::cpu
