// The dense CUDA ops against their CPU twins on random data, outputs poisoned first.
#include "kernels/cpu/ops.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "kernels/cuda/ops.h"
#include "tests/gpu/gpu_test_util.h"
#include "tests/kernels/kernel_test_util.h"

namespace kvserve::kernels::cuda {
namespace {

using testing::DeviceBuffer;
using testing::MaxRelDiff;
using testing::RandomFloats;

TEST(GpuOpsTest, RmsNormMatchesCpu) {
  KVSERVE_REQUIRE_GPU();
  std::mt19937 rng(31);
  for (int64_t dim : {1, 7, 64, 288, 4096, 5000}) {
    const int64_t n = 5;
    const std::vector<float> x = RandomFloats(rng, n * dim, -3.0f, 3.0f);
    const std::vector<float> w = RandomFloats(rng, dim);
    std::vector<float> expect(x.size());
    cpu::RmsNorm(x.data(), w.data(), n, dim, 1e-5f, expect.data());
    DeviceBuffer<float> dx(x), dw(w), dy(x.size());
    dy.Fill(0xFF);
    RmsNorm(dx.get(), dw.get(), n, dim, 1e-5f, dy.get(), nullptr);
    EXPECT_LE(MaxRelDiff(dy.Download(), expect), 1e-5) << "dim=" << dim;
    RmsNorm(dx.get(), dw.get(), n, dim, 1e-5f, dx.get(), nullptr);  // in place
    EXPECT_LE(MaxRelDiff(dx.Download(), expect), 1e-5) << "dim=" << dim << " in place";
  }
}

TEST(GpuOpsTest, RopeMatchesCpu) {
  KVSERVE_REQUIRE_GPU();
  std::mt19937 rng(32);
  for (int hd : {2, 8, 64, 128}) {
    const int64_t n = 9;
    const int heads = 3;
    std::vector<float> x = RandomFloats(rng, n * heads * hd);
    std::vector<int32_t> pos(n);
    for (int64_t t = 0; t < n; ++t) pos[t] = static_cast<int32_t>(t * 997 % 5000);
    DeviceBuffer<float> dx(x);
    DeviceBuffer<int32_t> dp(pos);
    RopeAdjacentPairs(dx.get(), dp.get(), n, heads, hd, 10000.0f, nullptr);
    cpu::RopeAdjacentPairs(x.data(), pos.data(), n, heads, hd, 10000.0f);
    EXPECT_LE(MaxRelDiff(dx.Download(), x), 1e-6) << "hd=" << hd;
  }
}

TEST(GpuOpsTest, SwiGluAndAddMatchCpu) {
  KVSERVE_REQUIRE_GPU();
  std::mt19937 rng(33);
  for (int64_t n : {1, 17, 768, 100003}) {
    const std::vector<float> g = RandomFloats(rng, n, -8.0f, 8.0f);
    const std::vector<float> u = RandomFloats(rng, n);
    std::vector<float> expect(n);
    cpu::SwiGlu(g.data(), u.data(), n, expect.data());
    DeviceBuffer<float> dg(g), du(u), dy(n);
    dy.Fill(0xFF);
    SwiGlu(dg.get(), du.get(), n, dy.get(), nullptr);
    EXPECT_LE(MaxRelDiff(dy.Download(), expect), 1e-6) << "n=" << n;
    std::vector<float> sum = g;
    cpu::AddInPlace(sum.data(), u.data(), n);
    AddInPlace(dg.get(), du.get(), n, nullptr);
    EXPECT_EQ(dg.Download(), sum) << "n=" << n;  // one rounding: exact
  }
}

TEST(GpuOpsTest, EmbeddingGatherMatchesCpuForEveryDType) {
  KVSERVE_REQUIRE_GPU();
  std::mt19937 rng(34);
  for (DType dt : testing::kAllDTypes) {
    const testing::TestMatrix table = testing::RandomMatrix(rng, dt, 50, 24);
    const std::vector<int32_t> ids = {0, 49, 7, 7, 23};
    std::vector<float> expect(ids.size() * 24);
    cpu::EmbeddingGather(table.view(), ids.data(), 5, expect.data());
    DeviceBuffer<uint8_t> dtab(std::vector<uint8_t>(
        static_cast<const uint8_t*>(table.view().data),
        static_cast<const uint8_t*>(table.view().data) + 50 * 24 * DTypeBytes(dt)));
    DeviceBuffer<int32_t> did(ids);
    DeviceBuffer<float> dy(expect.size());
    dy.Fill(0xFF);
    WeightView v = table.view();
    v.data = dtab.get();
    EmbeddingGather(v, did.get(), 5, dy.get(), nullptr);
    EXPECT_EQ(dy.Download(), expect) << DTypeName(dt);
  }
}

TEST(GpuOpsTest, ArgMaxRowsPicksTheFirstLargest) {
  KVSERVE_REQUIRE_GPU();
  std::mt19937 rng(35);
  const int64_t vocab = 32000, n = 4;
  std::vector<float> logits = RandomFloats(rng, n * vocab, -10.0f, 10.0f);
  logits[0 * vocab + 31999] = 50.0f;  // last
  logits[1 * vocab + 3] = 60.0f;      // ties: the lower index
  logits[1 * vocab + 20000] = 60.0f;
  logits[2 * vocab + 100] = std::numeric_limits<float>::quiet_NaN();  // NaN never wins
  logits[2 * vocab + 101] = 40.0f;
  std::vector<int32_t> expect(n);
  for (int64_t t = 0; t < n; ++t) {
    int64_t best = -1;
    for (int64_t i = 0; i < vocab; ++i) {
      const float v = logits[t * vocab + i];
      if (!std::isnan(v) && (best < 0 || v > logits[t * vocab + best])) best = i;
    }
    expect[t] = static_cast<int32_t>(best);
  }
  EXPECT_EQ(expect[0], 31999);
  EXPECT_EQ(expect[1], 3);
  EXPECT_EQ(expect[2], 101);
  DeviceBuffer<float> dl(logits);
  DeviceBuffer<int32_t> did(n);
  did.Fill(0xFF);
  ArgMaxRows(dl.get(), n, vocab, did.get(), nullptr);
  EXPECT_EQ(did.Download(), expect);
  std::vector<float> host(logits.size());
  CopyLogitsToHost(dl.get(), n, vocab, host.data(), nullptr);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_EQ(std::memcmp(host.data(), logits.data(), host.size() * 4), 0);
}

}  // namespace
}  // namespace kvserve::kernels::cuda
