// Policy-specific behaviour of the block eviction policies, and their registry.
#include "engine/kv/eviction/block_eviction_policy.h"

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "engine/kv/eviction/lru_policy.h"
#include "engine/kv/eviction/priority_policy.h"
#include "engine/kv/eviction/slru_policy.h"
#include "engine/kv/prefix_index.h"
#include "engine/serving/request.h"
#include "gtest/gtest.h"
#include "tests/engine/kv/eviction_test_util.h"

namespace kvserve::engine {
namespace {

using testing::At;
using testing::ManualClock;

EvictableBlockInfo UsedAt(int64_t seconds, int64_t hits = 0) {
  EvictableBlockInfo info;
  info.last_use = At(seconds);
  info.hit_count = hits;
  return info;
}

TEST(BlockEvictionRegistryTest, UnknownNameListsTheKnownOnes) {
  auto p = CreateBlockEvictionPolicy("fifo");
  ASSERT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(p.status().message().find("fifo"), std::string::npos);
  EXPECT_NE(p.status().message().find("lru, priority, slru"), std::string::npos)
      << p.status().message();
  EXPECT_EQ((*CreateBlockEvictionPolicy(kDefaultBlockEvictionPolicy))->name(), "lru");
}

TEST(BlockEvictionRegistryTest, ValidatesOptionsAndRegistersNewPolicies) {
  BlockEvictionOptions bad;
  bad.slru_protected_fraction = 1.0;
  auto p = CreateBlockEvictionPolicy("slru", bad);
  EXPECT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(p.status().message().find("slru_protected_fraction"), std::string::npos);

  auto factory =
      [](const BlockEvictionOptions&) -> absl::StatusOr<std::unique_ptr<BlockEvictionPolicy>> {
    return std::make_unique<LruEvictionPolicy>();
  };
  EXPECT_TRUE(RegisterBlockEvictionPolicy("test_lru_alias", factory).ok());
  EXPECT_EQ(RegisterBlockEvictionPolicy("lru", factory).code(), absl::StatusCode::kAlreadyExists);
  EXPECT_TRUE(CreateBlockEvictionPolicy("test_lru_alias").ok());
}

TEST(LruEvictionTest, EvictsInOrderOfLastUse) {
  LruEvictionPolicy lru;
  lru.OnEvictable(1, UsedAt(10), At(20));
  lru.OnEvictable(2, UsedAt(30), At(30));
  lru.OnEvictable(3, UsedAt(20), At(30));  // became evictable late, but used before block 2
  lru.OnEvictable(4, UsedAt(20), At(31));  // same last use as 3: the earlier event goes first
  lru.OnNotEvictable(1);                   // claimed again
  lru.OnEvictable(1, UsedAt(40), At(40));  // and released later: now the most recent
  EXPECT_EQ(lru.PickVictim(At(50)), 3);
  EXPECT_EQ(lru.PickVictim(At(50)), 4);
  EXPECT_EQ(lru.PickVictim(At(50)), 2);
  EXPECT_EQ(lru.PickVictim(At(50)), 1);
  EXPECT_EQ(lru.PickVictim(At(50)), std::nullopt);
}

// A small cache driven like the engine does: single-block prompts, cached then released.
class IndexHarness {
 public:
  IndexHarness(const std::string& policy, int capacity) : capacity_(capacity) {
    PrefixIndexOptions options;
    options.block_size = 2;
    options.clock = clock_.AsFunction();
    index_ = *PrefixIndex::Create(options, *CreateBlockEvictionPolicy(policy));
  }
  ManualClock& clock() { return clock_; }
  PrefixIndex& index() { return *index_; }

  // Caches the one-block prompt {t, t} as block `id` (evicting first when full), used by one
  // sequence that releases it at once. Returns the victims it took.
  std::vector<BlockId> Cache(BlockId id, int32_t t, BlockRetention retention = {}) {
    std::vector<BlockId> victims;
    while (index_->cached_blocks() >= capacity_) victims.push_back(*index_->EvictOne());
    auto r = index_->Insert(id, kNoBlock, std::vector<int32_t>{t, t}, PrefixKeys{}, retention);
    EXPECT_TRUE(r.ok() && r->inserted);
    index_->Release(id);
    return victims;
  }
  // A later request reuses the prompt {t, t}: a hit, then released.
  bool Reuse(int32_t t) {
    PrefixMatch m = index_->Lookup(std::vector<int32_t>{t, t}, PrefixKeys{});
    for (BlockId b : m.blocks) index_->Release(b);
    return m.blocks.size() == 1;
  }

 private:
  int capacity_;
  ManualClock clock_;
  std::unique_ptr<PrefixIndex> index_;
};

// Block 1 carries priority 80 for 10 s; blocks 2 and 3 have the default. While the hint lasts,
// the defaults go first (LRU among them) even though block 1 is the oldest; once the duration
// has run out (10 s after its release), block 1 is an ordinary default block and, being the least
// recently used, goes first.
TEST(PriorityEvictionTest, HighPriorityRangeIsProtectedUntilItsDurationEnds) {
  IndexHarness h("priority", /*capacity=*/3);
  h.clock().Set(At(0));
  h.Cache(1, 101, BlockRetention{80, absl::Seconds(10)});  // released at t=0, expires at t=10
  h.clock().Set(At(1));
  h.Cache(2, 102);
  h.clock().Set(At(2));
  h.Cache(3, 103);
  h.clock().Set(At(5));
  EXPECT_EQ(h.Cache(4, 104), (std::vector<BlockId>{2}));  // not block 1, the oldest
  h.clock().Set(At(9));
  EXPECT_EQ(h.Cache(5, 105), (std::vector<BlockId>{3}));
  h.clock().Set(At(10));  // the hint has expired: block 1 (last used at 0) is now LRU default
  EXPECT_EQ(h.Cache(6, 106), (std::vector<BlockId>{1}));
  EXPECT_EQ(h.Cache(7, 107), (std::vector<BlockId>{4}));  // then the defaults by last use
  EXPECT_FALSE(h.Reuse(101));
  EXPECT_TRUE(h.Reuse(105));
}

TEST(PriorityEvictionTest, LowestPriorityFirstThenLeastRecentlyUsed) {
  PriorityEvictionPolicy p;
  auto info = [](int64_t used, int32_t priority) {
    EvictableBlockInfo i = UsedAt(used);
    i.priority = priority;
    return i;
  };
  p.OnEvictable(1, info(1, 35), At(10));
  p.OnEvictable(2, info(9, 10), At(10));  // newest, but low priority
  p.OnEvictable(3, info(2, 90), At(10));
  p.OnEvictable(4, info(3, 35), At(10));
  p.OnEvictable(5, info(0, 90), At(10));
  EXPECT_EQ(p.PickVictim(At(10)), 2);
  EXPECT_EQ(p.PickVictim(At(10)), 1);
  EXPECT_EQ(p.PickVictim(At(10)), 4);
  EXPECT_EQ(p.PickVictim(At(10)), 5);
  EXPECT_EQ(p.PickVictim(At(10)), 3);
}

TEST(PriorityEvictionTest, ExpiredHintsDecayToTheDefaultPriority) {
  PriorityEvictionPolicy p;
  EvictableBlockInfo low = UsedAt(0);
  low.priority = 5;
  low.priority_expiry = At(4);
  EvictableBlockInfo high = UsedAt(0);
  high.priority = 95;
  high.priority_expiry = At(6);
  EvictableBlockInfo already = UsedAt(0);
  already.priority = 100;
  already.priority_expiry = At(1);  // expired before it became evictable
  p.OnEvictable(1, low, At(2));
  p.OnEvictable(2, high, At(2));
  p.OnEvictable(3, already, At(2));
  EXPECT_EQ(p.RankedPriority(1), 5);
  EXPECT_EQ(p.RankedPriority(2), 95);
  EXPECT_EQ(p.RankedPriority(3), kDefaultRetentionPriority);
  p.OnEvictable(4, UsedAt(1), At(7));
  EXPECT_EQ(p.PickVictim(At(7)), 1);  // decayed from 5 to 35; last used at 0, before block 4
  EXPECT_EQ(p.RankedPriority(2), kDefaultRetentionPriority);
  EXPECT_EQ(p.PickVictim(At(7)), 2);  // tie with 3 on (35, t=0): became evictable first
  EXPECT_EQ(p.PickVictim(At(7)), 3);
  EXPECT_EQ(p.PickVictim(At(7)), 4);
}

// TensorRT-LLM's rule: a block takes the hint of the range holding its first token.
TEST(PriorityEvictionTest, MapsTokenRangeHintsToBlocks) {
  std::vector<RetentionHint> hints = {{0, 63, 80, absl::Seconds(5)}, {63, 127, 30}};
  std::vector<int32_t> got;
  for (int b = 0; b < 4; ++b) got.push_back(RetentionForBlock(hints, b, 32).priority);
  EXPECT_EQ(got, (std::vector<int32_t>{80, 80, 30, 30}));  // block 1 starts at 32 < 63
  EXPECT_EQ(RetentionForBlock(hints, 0, 32).duration, absl::Seconds(5));
  EXPECT_EQ(RetentionForBlock(hints, 4, 32).priority, kDefaultRetentionPriority);  // 128 >= 127

  hints = {{0, 1, 80}, {1, 2, 5}};
  got.clear();
  for (int b = 0; b < 3; ++b) got.push_back(RetentionForBlock(hints, b, 32).priority);
  EXPECT_EQ(got, (std::vector<int32_t>{80, 35, 35}));

  hints = {{16, -1, 120}};  // open-ended range, priority clamped
  EXPECT_EQ(RetentionForBlock(hints, 0, 16).priority, kDefaultRetentionPriority);
  EXPECT_EQ(RetentionForBlock(hints, 7, 16).priority, kMaxRetentionPriority);
}

// A hot block (reused once) survives a scan of 20 one-off prompts through a 4-block cache under
// SLRU; under LRU the same scan pushes it out.
TEST(SlruEvictionTest, KeepsAHotBlockThroughALongScan) {
  for (const std::string policy : {"slru", "lru"}) {
    SCOPED_TRACE(policy);
    IndexHarness h(policy, /*capacity=*/4);
    h.Cache(0, 7);
    h.clock().Advance(absl::Seconds(1));
    ASSERT_TRUE(h.Reuse(7));
    std::vector<BlockId> victims;
    for (int i = 1; i <= 20; ++i) {
      h.clock().Advance(absl::Seconds(1));
      for (BlockId v : h.Cache(i, 100 + i)) victims.push_back(v);
    }
    EXPECT_EQ(victims.size(), 17u);
    const bool hot_evicted = std::find(victims.begin(), victims.end(), 0) != victims.end();
    if (policy == "slru") {
      EXPECT_FALSE(hot_evicted);
      EXPECT_TRUE(h.Reuse(7));
    } else {
      EXPECT_TRUE(hot_evicted);
      EXPECT_FALSE(h.Reuse(7));
    }
  }
}

TEST(SlruEvictionTest, ReusedBlocksArePromotedAndTheProtectedSegmentIsBounded) {
  SlruEvictionPolicy p(/*protected_fraction=*/0.5);
  p.OnEvictable(1, UsedAt(1, /*hits=*/0), At(1));
  EXPECT_FALSE(p.IsProtected(1));
  p.OnEvictable(2, UsedAt(2, 1), At(2));
  EXPECT_TRUE(p.IsProtected(2));  // capacity max(1, floor(0.5 * 2)) = 1
  p.OnEvictable(3, UsedAt(3, 2), At(3));
  // Capacity floor(0.5 * 3) = 1: block 2, the older protected one, is demoted.
  EXPECT_FALSE(p.IsProtected(2));
  EXPECT_TRUE(p.IsProtected(3));
  EXPECT_EQ(p.protected_size(), 1);
  // Victims: the probationary segment first (1, then the demoted 2), then the protected one.
  EXPECT_EQ(p.PickVictim(At(4)), 1);
  EXPECT_EQ(p.PickVictim(At(4)), 2);
  EXPECT_EQ(p.PickVictim(At(4)), 3);
  EXPECT_EQ(p.PickVictim(At(4)), std::nullopt);
}

}  // namespace
}  // namespace kvserve::engine
