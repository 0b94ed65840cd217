// Helpers shared by the kernel tests: seeded random data and 16-bit encodings.
#ifndef KVSERVE_TESTS_KERNELS_KERNEL_TEST_UTIL_H_
#define KVSERVE_TESTS_KERNELS_KERNEL_TEST_UTIL_H_

#include <cstdint>
#include <random>
#include <vector>

#include "kernels/dtype.h"

namespace kvserve::kernels::testing {

inline std::vector<float> RandomFloats(std::mt19937& rng, int64_t n, float lo = -1.0f,
                                       float hi = 1.0f) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = dist(rng);
  return v;
}

// A weight matrix stored in `dtype` together with the float value of every stored element.
struct TestMatrix {
  DType dtype = DType::kF32;
  int64_t rows = 0;
  int64_t cols = 0;
  std::vector<float> f32;     // storage when dtype == kF32
  std::vector<uint16_t> u16;  // storage when dtype is 16-bit
  std::vector<float> values;  // [rows * cols] what the stored elements mean

  WeightView view() const {
    return WeightView{dtype,
                      dtype == DType::kF32 ? static_cast<const void*>(f32.data())
                                           : static_cast<const void*>(u16.data()),
                      rows, cols};
  }
};

inline TestMatrix RandomMatrix(std::mt19937& rng, DType dtype, int64_t rows, int64_t cols) {
  TestMatrix m;
  m.dtype = dtype;
  m.rows = rows;
  m.cols = cols;
  const std::vector<float> raw = RandomFloats(rng, rows * cols);
  m.values.resize(raw.size());
  if (dtype == DType::kF32) {
    m.f32 = raw;
    m.values = raw;
  } else {
    m.u16.resize(raw.size());
    for (size_t i = 0; i < raw.size(); ++i) {
      m.u16[i] = dtype == DType::kF16 ? FloatToFp16(raw[i]) : FloatToBf16(raw[i]);
      m.values[i] = dtype == DType::kF16 ? Fp16ToFloat(m.u16[i]) : Bf16ToFloat(m.u16[i]);
    }
  }
  return m;
}

inline const DType kAllDTypes[] = {DType::kF32, DType::kF16, DType::kBF16};

}  // namespace kvserve::kernels::testing

#endif  // KVSERVE_TESTS_KERNELS_KERNEL_TEST_UTIL_H_
