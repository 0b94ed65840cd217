// Helpers of the GPU tests: skipping without a device, device buffers, copies.
#ifndef KVSERVE_TESTS_GPU_GPU_TEST_UTIL_H_
#define KVSERVE_TESTS_GPU_GPU_TEST_UTIL_H_

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "kernels/cuda/runtime.h"

// Skips the current test when the process sees no CUDA device, saying why.
#define KVSERVE_REQUIRE_GPU()                                                \
  do {                                                                       \
    std::string kvserve_no_gpu;                                              \
    if (::kvserve::kernels::cuda::DeviceCount(&kvserve_no_gpu) == 0) {       \
      GTEST_SKIP() << kvserve_no_gpu << ": the GPU tests run on a GPU host"; \
    }                                                                        \
  } while (0)

#define KVSERVE_ASSERT_CUDA(expr) ASSERT_EQ((expr), cudaSuccess) << #expr

namespace kvserve::kernels::testing {

// Device memory holding a copy of (or room for) n elements of T.
template <class T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t n) : n_(n) {
    if (n > 0 && cudaMalloc(reinterpret_cast<void**>(&p_), n * sizeof(T)) != cudaSuccess) {
      p_ = nullptr;
      ADD_FAILURE() << "cudaMalloc of " << n * sizeof(T) << " bytes failed";
    }
  }
  explicit DeviceBuffer(const std::vector<T>& host) : DeviceBuffer(host.size()) { Upload(host); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept : p_(o.p_), n_(o.n_) {
    o.p_ = nullptr;
    o.n_ = 0;
  }
  ~DeviceBuffer() {
    if (p_ != nullptr) cudaFree(p_);
  }

  T* get() const { return p_; }
  size_t size() const { return n_; }

  void Upload(const std::vector<T>& host) {
    ASSERT_LE(host.size(), n_);
    if (!host.empty()) {
      ASSERT_EQ(cudaMemcpy(p_, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice),
                cudaSuccess);
    }
  }
  std::vector<T> Download() const {
    std::vector<T> host(n_);
    if (n_ > 0) {
      EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
      EXPECT_EQ(cudaMemcpy(host.data(), p_, n_ * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
    }
    return host;
  }
  // Fills every byte with `byte` (0xFF makes float NaN: poisoned outputs).
  void Fill(uint8_t byte) {
    if (n_ > 0) {
      EXPECT_EQ(cudaMemset(p_, byte, n_ * sizeof(T)), cudaSuccess);
    }
  }

 private:
  T* p_ = nullptr;
  size_t n_ = 0;
};

// Largest |a - b| over the arrays, relative to max(1e-30, max |b|); NaN anywhere gives +inf.
inline double MaxRelDiff(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return std::numeric_limits<double>::infinity();
  double scale = 1e-30, diff = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::isnan(a[i]) || std::isnan(b[i])) return std::numeric_limits<double>::infinity();
    scale = std::max(scale, std::fabs(static_cast<double>(b[i])));
    diff = std::max(diff, std::fabs(static_cast<double>(a[i]) - b[i]));
  }
  return diff / scale;
}

}  // namespace kvserve::kernels::testing

#endif  // KVSERVE_TESTS_GPU_GPU_TEST_UTIL_H_
