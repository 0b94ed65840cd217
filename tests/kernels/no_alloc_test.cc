// The kernels must not allocate on the hot path. This binary's global operator new counts calls.
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <new>
#include <random>
#include <vector>

#include "kernels/cpu/ops.h"
#include "kernels/cpu/paged_attention.h"
#include "kernels/cpu/thread_pool.h"
#include "tests/kernels/kernel_test_util.h"

namespace {
std::atomic<int64_t> g_allocations{0};
}  // namespace

void* operator new(std::size_t n) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(n == 0 ? 1 : n)) return p;
  std::abort();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }

namespace kvserve::kernels::cpu {
namespace {

TEST(NoAllocTest, KernelsDoNotAllocate) {
  const int64_t probe = g_allocations.load();
  ::operator delete(::operator new(4));
  ASSERT_EQ(g_allocations.load() - probe, 1) << "the allocation counter is not in effect";
  std::mt19937 rng(9);
  ThreadPool pool(2);
  const testing::TestMatrix w = testing::RandomMatrix(rng, DType::kF16, 256, 512);
  const std::vector<float> x = testing::RandomFloats(rng, 32 * 512);
  std::vector<float> y(32 * 256);

  // One KV block of 64 slots, 4 KV heads, head_dim 8 and 64 in turn.
  for (int hd : {8, 64}) {
    const KvRegionShape shape{64, 4, hd};
    const KvLayerRegion region{
        KvFormat::kFp16, 0,
        static_cast<uint32_t>(KvRegionBytes(KvFormat::kFp16, KvRole::kKey, shape))};
    std::vector<uint8_t> block(KvLayerBytes(KvFormat::kFp16, shape));
    uint8_t* block_ptr = block.data();
    const uint16_t layout = 0;
    PagedKvLayerView view;
    view.block_data = &block_ptr;
    view.block_layout = &layout;
    view.regions = &region;
    view.shape = shape;
    const std::vector<float> kv = testing::RandomFloats(rng, 64 * 4 * hd);
    std::vector<int32_t> slot_block(64, 0), slot_off(64);
    for (int i = 0; i < 64; ++i) slot_off[i] = i;
    const std::vector<float> q = testing::RandomFloats(rng, 64 * 8 * hd);
    std::vector<float> out(q.size());
    std::vector<int32_t> seq(64, 0), kv_len(64);
    for (int i = 0; i < 64; ++i) kv_len[i] = i + 1;
    const int32_t table = 0;
    const int32_t* tables = &table;
    AttentionBatch batch;
    batch.num_tokens = 64;
    batch.num_heads = 8;
    batch.q = q.data();
    batch.out = out.data();
    batch.token_seq = seq.data();
    batch.token_kv_len = kv_len.data();
    batch.seq_block_tables = &tables;
    batch.scale = 0.3f;

    for (int round = 0; round < 2; ++round) {  // the first round may initialise statics
      const int64_t before = g_allocations.load();
      WriteKv(kv.data(), kv.data(), 64, slot_block.data(), slot_off.data(), view);
      PagedAttention(batch, view, &pool);
      PagedAttention(batch, view, nullptr);
      MatMul(x.data(), 1, w.view(), y.data(), &pool);
      MatMul(x.data(), 32, w.view(), y.data(), &pool);
      MatMul(x.data(), 3, w.view(), y.data(), nullptr);
      RmsNorm(x.data(), x.data(), 4, 512, 1e-5f, y.data());
      SwiGlu(x.data(), x.data(), 512, y.data());
      SoftmaxInPlace(y.data(), 512);
      if (round == 1) {
        EXPECT_EQ(g_allocations.load() - before, 0) << "hd=" << hd;
      }
    }
    for (float v : out) ASSERT_TRUE(std::isfinite(v));
  }
}

}  // namespace
}  // namespace kvserve::kernels::cpu
