// The device KV arena: one allocation cut into blocks, its block table, and errors that name
// what was asked for.
#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/cuda/runtime.h"
#include "tests/gpu/gpu_test_util.h"

namespace kvserve::kernels::cuda {
namespace {

TEST(GpuArenaTest, ReportsTheDevice) {
  std::string why;
  if (DeviceCount(&why) == 0) {
    // The reason names the CUDA versions, so that a driver older than the runtime is told apart
    // from a machine with no GPU.
    EXPECT_NE(why.find("this build's runtime is CUDA"), std::string::npos) << why;
    DeviceInfo info;
    std::string error;
    EXPECT_FALSE(QueryDevice(0, &info, &error));
    EXPECT_FALSE(error.empty());
    GTEST_SKIP() << why;
  }
  DeviceInfo info;
  std::string error;
  ASSERT_TRUE(QueryDevice(0, &info, &error)) << error;
  EXPECT_FALSE(info.name.empty());
  EXPECT_GE(info.compute_capability, 70);
  EXPECT_GT(info.total_bytes, 0);
  EXPECT_GT(info.free_bytes, 0);
  EXPECT_LE(info.free_bytes, info.total_bytes);
}

TEST(GpuArenaTest, BytesAreCutIntoWholeBlocksWithATable) {
  KVSERVE_REQUIRE_GPU();
  DeviceArena arena;
  std::string error;
  // 1000-byte blocks round up to 1024; 1 MiB + 100 bytes hold 1024 of them.
  ASSERT_TRUE(DeviceArena::Create(ArenaSize{(1 << 20) + 100, 0.0}, 1000, &arena, &error)) << error;
  EXPECT_EQ(arena.block_bytes(), 1024);
  EXPECT_EQ(arena.num_blocks(), 1024);
  EXPECT_EQ(arena.bytes(), 1 << 20);
  std::vector<uint8_t*> table(static_cast<size_t>(arena.num_blocks()));
  ASSERT_EQ(cudaMemcpy(table.data(), arena.block_pointers(), table.size() * sizeof(uint8_t*),
                       cudaMemcpyDeviceToHost),
            cudaSuccess);
  for (size_t b = 0; b < table.size(); ++b) {
    ASSERT_EQ(table[b], arena.base() + b * 1024) << "block " << b;
  }
  // Moving keeps one owner.
  DeviceArena moved = std::move(arena);
  EXPECT_EQ(arena.base(), nullptr);
  EXPECT_EQ(moved.num_blocks(), 1024);
}

TEST(GpuArenaTest, FractionOfFreeMemory) {
  KVSERVE_REQUIRE_GPU();
  DeviceInfo info;
  std::string error;
  ASSERT_TRUE(QueryDevice(0, &info, &error)) << error;
  DeviceArena arena;
  ASSERT_TRUE(DeviceArena::Create(ArenaSize{0, 0.01}, 1 << 20, &arena, &error)) << error;
  // 1% of what was free, in whole MiB blocks (free memory moves a little between the calls).
  EXPECT_NEAR(static_cast<double>(arena.bytes()), 0.01 * static_cast<double>(info.free_bytes),
              0.001 * static_cast<double>(info.free_bytes) + (1 << 20));
}

TEST(GpuArenaTest, InvalidSizesAreClearErrors) {
  KVSERVE_REQUIRE_GPU();
  DeviceArena arena;
  std::string error;
  EXPECT_FALSE(DeviceArena::Create(ArenaSize{1 << 20, 0.0}, 0, &arena, &error));
  EXPECT_NE(error.find("block size"), std::string::npos) << error;
  EXPECT_FALSE(DeviceArena::Create(ArenaSize{0, 1.5}, 4096, &arena, &error));
  EXPECT_NE(error.find("fraction"), std::string::npos) << error;
  EXPECT_FALSE(DeviceArena::Create(ArenaSize{100, 0.0}, 4096, &arena, &error));
  EXPECT_NE(error.find("hold no block"), std::string::npos) << error;
  EXPECT_FALSE(DeviceArena::Create(ArenaSize{int64_t{1} << 50, 0.0}, 1 << 20, &arena, &error));
  EXPECT_NE(error.find("cudaMalloc"), std::string::npos) << error;
  EXPECT_EQ(arena.base(), nullptr);
}

}  // namespace
}  // namespace kvserve::kernels::cuda
