#include "engine/kv/block_pool.h"

#include <random>
#include <set>

#include "engine/kv/sequence_kv.h"
#include "gtest/gtest.h"

namespace kvserve::engine {
namespace {

using kernels::KvFormat;

// stories260K-like geometry: 5 layers, 4 KV heads, head_dim 8, 16-token blocks.
// FP32 block: 5 layers * 2 (K, V) * 16 * 4 * 8 * 4 bytes = 20480 bytes; FP16 block: 10240.
constexpr KvGeometry kGeom{5, 4, 8, 16};

TEST(BlockPoolTest, BlockBytesFollowTheFormat) {
  BlockPool pool(kGeom, 1 << 20);
  auto f32 = pool.RegisterUniformLayout(KvFormat::kFp32);
  auto f16 = pool.RegisterUniformLayout(KvFormat::kFp16);
  ASSERT_TRUE(f32.ok() && f16.ok());
  EXPECT_EQ(pool.layout(*f32).block_bytes, 20480);
  EXPECT_EQ(pool.layout(*f16).block_bytes, 10240);
  EXPECT_EQ(pool.layout(*f32).scale_bytes, 0);
  // Same formats -> same layout id.
  EXPECT_EQ(*pool.RegisterUniformLayout(KvFormat::kFp32), *f32);
  // An FP16 region is 16 tokens * 4 heads * 8 dims * 2 bytes = 1024 bytes; layer 2's K region
  // starts after the K and V regions of layers 0 and 1.
  EXPECT_EQ(pool.layout(*f16).regions[2].k_offset, 4u * 1024);
  EXPECT_EQ(pool.layout(*f16).regions[2].v_offset, 5u * 1024);
}

TEST(BlockPoolTest, BudgetIsInBytesAndExhaustionIsAnError) {
  BlockPool pool(kGeom, 100000);  // 4 FP32 blocks (81920 bytes), or 9 FP16 blocks
  const LayoutId f32 = *pool.RegisterUniformLayout(KvFormat::kFp32);
  const LayoutId f16 = *pool.RegisterUniformLayout(KvFormat::kFp16);
  EXPECT_EQ(pool.AvailableBlocks(f32), 4);
  EXPECT_EQ(pool.AvailableBlocks(f16), 9);
  std::vector<BlockId> ids;
  for (int i = 0; i < 4; ++i) ids.push_back(*pool.Allocate(f32));
  auto fail = pool.Allocate(f32);
  EXPECT_EQ(fail.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(pool.allocated_bytes(), 4 * 20480);
  EXPECT_EQ(pool.used_bytes(), 4 * 20480);
  // Freed FP32 bytes are reclaimed for FP16 blocks when needed.
  for (BlockId id : ids) pool.Release(id);
  EXPECT_EQ(pool.used_blocks(), 0);
  EXPECT_EQ(pool.allocated_bytes(), 4 * 20480);  // kept for reuse
  std::vector<BlockId> h;
  for (int i = 0; i < 9; ++i) {
    auto id = pool.Allocate(f16);
    ASSERT_TRUE(id.ok()) << i << " " << id.status();
    h.push_back(*id);
  }
  EXPECT_FALSE(pool.Allocate(f16).ok());
  EXPECT_LE(pool.allocated_bytes(), pool.budget_bytes());
  EXPECT_EQ(pool.used_bytes(), 9 * 10240);
}

TEST(BlockPoolTest, RefCountsShareBlocks) {
  BlockPool pool(kGeom, 1 << 20);
  const LayoutId f32 = *pool.RegisterUniformLayout(KvFormat::kFp32);
  const BlockId id = *pool.Allocate(f32);
  pool.AddRef(id);
  EXPECT_EQ(pool.ref_count(id), 2);
  pool.Release(id);
  EXPECT_EQ(pool.used_blocks(), 1);
  pool.Release(id);
  EXPECT_EQ(pool.used_blocks(), 0);
}

TEST(BlockPoolTest, OneBlockLargerThanTheBudgetIsRefused) {
  BlockPool pool(kGeom, 1000);
  auto l = pool.RegisterUniformLayout(KvFormat::kFp32);
  EXPECT_EQ(l.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(l.status().message().find("budget"), std::string::npos);
}

TEST(BlockPoolTest, RandomWorkloadKeepsAccountingExact) {
  BlockPool pool(kGeom, 50 * 20480);
  const LayoutId f32 = *pool.RegisterUniformLayout(KvFormat::kFp32);
  const LayoutId f16 = *pool.RegisterUniformLayout(KvFormat::kFp16);
  std::mt19937 rng(1);
  std::vector<std::unique_ptr<SequenceKv>> seqs;
  for (int step = 0; step < 3000; ++step) {
    const int op = rng() % 3;
    if (op == 0 || seqs.empty()) {
      seqs.push_back(std::make_unique<SequenceKv>(&pool, rng() % 2 ? f32 : f16));
    } else if (op == 1) {
      auto& s = seqs[rng() % seqs.size()];
      const absl::Status st = s->Reserve(s->capacity_slots() + 1 + rng() % 40);
      if (!st.ok()) EXPECT_EQ(st.code(), absl::StatusCode::kResourceExhausted);
    } else {
      seqs.erase(seqs.begin() + rng() % seqs.size());
    }
    int64_t held = 0, blocks = 0;
    std::set<BlockId> distinct;
    for (auto& s : seqs) {
      held += s->bytes();
      blocks += s->block_table().size();
      distinct.insert(s->block_table().begin(), s->block_table().end());
    }
    ASSERT_EQ(pool.used_bytes(), held);
    ASSERT_EQ(pool.used_blocks(), blocks);
    ASSERT_EQ(static_cast<int64_t>(distinct.size()), blocks) << "a block handed out twice";
    ASSERT_LE(pool.allocated_bytes(), pool.budget_bytes());
    ASSERT_GE(pool.allocated_bytes(), pool.used_bytes());
  }
  seqs.clear();
  EXPECT_EQ(pool.used_bytes(), 0);
}

TEST(SequenceKvTest, FailedReserveKeepsNothing) {
  BlockPool pool(kGeom, 3 * 20480);
  const LayoutId f32 = *pool.RegisterUniformLayout(KvFormat::kFp32);
  SequenceKv a(&pool, f32);
  ASSERT_TRUE(a.Reserve(17).ok());  // 2 blocks
  EXPECT_EQ(a.block_table().size(), 2u);
  SequenceKv b(&pool, f32);
  EXPECT_EQ(b.Reserve(40).code(), absl::StatusCode::kResourceExhausted);  // needs 3, 1 left
  EXPECT_TRUE(b.block_table().empty());
  EXPECT_EQ(pool.used_blocks(), 2);
}

}  // namespace
}  // namespace kvserve::engine

namespace kvserve::engine {
namespace {

TEST(BlockPoolStatsTest, ByFormatSumsEqualTheAllocations) {
  BlockPool pool(kGeom, 1 << 20);
  const LayoutId f32 = *pool.RegisterUniformLayout(KvFormat::kFp32);
  const LayoutId mixed = *pool.RegisterLayout(
      {KvFormat::kFp32, KvFormat::kFp16, KvFormat::kFp16, KvFormat::kBf16, KvFormat::kFp32});
  std::vector<BlockId> ids;
  for (int i = 0; i < 3; ++i) ids.push_back(*pool.Allocate(f32));
  for (int i = 0; i < 2; ++i) ids.push_back(*pool.Allocate(mixed));
  pool.Release(ids[0]);
  const KvPoolStats s = pool.Stats();
  // 2 FP32 blocks (20480 bytes) + 2 mixed blocks (2 FP32 layers * 4096 + 3 half layers * 2048).
  const int64_t mixed_bytes = 2 * 4096 + 3 * 2048;
  EXPECT_EQ(pool.layout(mixed).block_bytes, mixed_bytes);
  EXPECT_EQ(s.used_bytes, 2 * 20480 + 2 * mixed_bytes);
  EXPECT_EQ(s.allocated_bytes, 3 * 20480 + 2 * mixed_bytes);
  EXPECT_EQ(s.free_bytes, 20480);
  EXPECT_EQ(s.free_blocks, 1);
  int64_t sum = 0;
  for (const auto& u : s.used_by_format) sum += u.total();
  EXPECT_EQ(sum, s.used_bytes);
  // FP32 regions: 2 blocks * 5 layers * 2 + 2 blocks * 2 layers * 2 = 28 regions of 2048 bytes.
  EXPECT_EQ(s.used_by_format[static_cast<int>(KvFormat::kFp32)].regions, 28);
  EXPECT_EQ(s.used_by_format[static_cast<int>(KvFormat::kFp32)].value_bytes, 28 * 2048);
  EXPECT_EQ(s.used_by_format[static_cast<int>(KvFormat::kFp16)].value_bytes, 2 * 2 * 2 * 1024);
  EXPECT_EQ(s.used_by_format[static_cast<int>(KvFormat::kBf16)].value_bytes, 2 * 2 * 1024);
  // FP16 equivalent of 4 used blocks: 4 * 10240; ratio against the real bytes.
  EXPECT_EQ(s.fp16_equivalent_bytes, 4 * 10240);
  EXPECT_DOUBLE_EQ(s.compression_ratio(), 40960.0 / (2 * 20480 + 2 * mixed_bytes));
}

}  // namespace
}  // namespace kvserve::engine
