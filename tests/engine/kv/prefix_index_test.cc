// The prefix index: chained hashes, verified hits, deduplication, leaf-only eviction, counters.
#include "engine/kv/prefix_index.h"

#include <memory>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

#include "engine/kv/eviction/block_eviction_policy.h"
#include "gtest/gtest.h"
#include "tests/engine/kv/eviction_test_util.h"

namespace kvserve::engine {
namespace {

using testing::ManualClock;

constexpr int kBlock = 4;

std::vector<int32_t> Range(int32_t first, int32_t count) {
  std::vector<int32_t> v(count);
  std::iota(v.begin(), v.end(), first);
  return v;
}

absl::Span<const int32_t> BlockOf(const std::vector<int32_t>& tokens, int i) {
  return absl::MakeConstSpan(tokens).subspan(i * kBlock, kBlock);
}

class PrefixIndexTest : public ::testing::Test {
 protected:
  void SetUp() override { Reset(PrefixHashFunction()); }

  void Reset(PrefixHashFunction hash, PrefixHashAlgorithm algorithm = {}) {
    PrefixIndexOptions options;
    options.block_size = kBlock;
    options.hash = algorithm;
    options.hash_function = std::move(hash);
    options.clock = clock_.AsFunction();
    index_ = *PrefixIndex::Create(options, *CreateBlockEvictionPolicy("lru"));
  }

  // Caches the full blocks of `tokens` as ids first_id, first_id + 1, ... (one sequence using
  // them), chained from `parent`. Returns the ids the sequence ends up using.
  std::vector<BlockId> CacheChain(const std::vector<int32_t>& tokens, BlockId first_id,
                                  const PrefixKeys& keys = {}, BlockId parent = kNoBlock) {
    std::vector<BlockId> ids;
    for (int i = 0; (i + 1) * kBlock <= static_cast<int>(tokens.size()); ++i) {
      auto r = index_->Insert(first_id + i, parent, BlockOf(tokens, i), keys);
      EXPECT_TRUE(r.ok()) << r.status();
      if (!r.ok()) break;
      ids.push_back(r->block);
      parent = r->block;
    }
    return ids;
  }
  void ReleaseAll(const std::vector<BlockId>& ids) {
    for (BlockId b : ids) EXPECT_TRUE(index_->Release(b));
  }

  ManualClock clock_;
  std::unique_ptr<PrefixIndex> index_;
};

TEST_F(PrefixIndexTest, LookupReturnsTheLongestCachedChainOfFullBlocks) {
  const std::vector<int32_t> prompt = Range(1, 12);  // three full blocks
  const std::vector<BlockId> ids = CacheChain(prompt, 10);
  ASSERT_EQ(ids, (std::vector<BlockId>{10, 11, 12}));
  ReleaseAll(ids);

  std::vector<int32_t> longer = Range(1, 14);  // 3 full blocks + 2 tokens
  PrefixMatch m = index_->Lookup(longer, {});
  EXPECT_EQ(m.blocks, (std::vector<BlockId>{10, 11, 12}));
  EXPECT_EQ(m.matched_tokens, 12);
  ReleaseAll(m.blocks);

  std::vector<int32_t> diverging = Range(1, 12);
  diverging[9] = 99;  // inside the third block
  EXPECT_EQ(index_->Match(diverging, {}).blocks, (std::vector<BlockId>{10, 11}));
  diverging[0] = 99;  // the first block differs: nothing matches after it
  EXPECT_TRUE(index_->Match(diverging, {}).blocks.empty());
  EXPECT_TRUE(index_->Match(Range(1, 3), {}).blocks.empty());  // no full block
  // The second block's tokens alone are not a prefix of anything cached.
  EXPECT_TRUE(index_->Match(Range(5, 4), {}).blocks.empty());
}

TEST_F(PrefixIndexTest, SameTokensUnderAnotherParentSaltLayoutOrModelAreDifferentEntries) {
  const std::vector<int32_t> a = {1, 2, 3, 4, 5, 6, 7, 8};
  const std::vector<int32_t> b = {9, 9, 9, 9, 5, 6, 7, 8};  // same second block, other parent
  const std::vector<BlockId> ca = CacheChain(a, 0);
  const std::vector<BlockId> cb = CacheChain(b, 2);
  ASSERT_EQ(cb, (std::vector<BlockId>{2, 3}));  // not deduplicated against block 1
  EXPECT_NE(index_->Find(1)->hash, index_->Find(3)->hash);

  const PrefixKeys salted{"alice", 0, ""};
  const PrefixKeys other_layout{"", 1, ""};
  const PrefixKeys other_model{"", 0, "llama-7b@rev2"};
  EXPECT_EQ(CacheChain(a, 4, salted), (std::vector<BlockId>{4, 5}));
  EXPECT_EQ(CacheChain(a, 6, other_layout), (std::vector<BlockId>{6, 7}));
  EXPECT_EQ(CacheChain(a, 8, other_model), (std::vector<BlockId>{8, 9}));
  EXPECT_EQ(index_->cached_blocks(), 10);
  for (BlockId x : {4, 6, 8}) EXPECT_NE(index_->Find(0)->hash, index_->Find(x)->hash);

  EXPECT_EQ(index_->Match(a, {}).blocks, ca);
  EXPECT_EQ(index_->Match(a, salted).blocks, (std::vector<BlockId>{4, 5}));
  EXPECT_EQ(index_->Match(a, other_layout).blocks, (std::vector<BlockId>{6, 7}));
  EXPECT_EQ(index_->Match(a, other_model).blocks, (std::vector<BlockId>{8, 9}));
  EXPECT_TRUE(index_->Match(a, PrefixKeys{"bob", 0, ""}).blocks.empty());
  // A chain's keys are fixed: a child with other keys than its parent is refused.
  EXPECT_EQ(index_->Insert(20, 0, BlockOf(a, 1), salted).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// With a hash that maps every block to the same value, every lookup meets colliding candidates;
// verification against tokens, keys and parent still returns only the right blocks.
TEST_F(PrefixIndexTest, HashCollisionsNeverReturnAWrongBlock) {
  Reset([](absl::Span<const uint8_t>) { return BlockHash{{42, 0, 0, 0}}; });
  const std::vector<int32_t> a = {1, 2, 3, 4, 7, 7, 7, 7};
  const std::vector<int32_t> b = {5, 6, 7, 8, 7, 7, 7, 7};
  EXPECT_EQ(CacheChain(a, 0), (std::vector<BlockId>{0, 1}));
  EXPECT_EQ(CacheChain(b, 2), (std::vector<BlockId>{2, 3}));
  EXPECT_EQ(CacheChain(a, 4, PrefixKeys{"s", 0, ""}), (std::vector<BlockId>{4, 5}));
  for (BlockId x = 1; x < 6; ++x) EXPECT_EQ(index_->Find(0)->hash, index_->Find(x)->hash);

  EXPECT_EQ(index_->Lookup(b, {}).blocks, (std::vector<BlockId>{2, 3}));
  EXPECT_EQ(index_->Lookup(a, {}).blocks, (std::vector<BlockId>{0, 1}));
  EXPECT_EQ(index_->Lookup(a, PrefixKeys{"s", 0, ""}).blocks, (std::vector<BlockId>{4, 5}));
  EXPECT_TRUE(index_->Lookup({7, 7, 7, 7}, {}).blocks.empty());  // only cached under parents
  EXPECT_TRUE(index_->Lookup({1, 2, 3, 5}, {}).blocks.empty());
  EXPECT_GT(index_->counters().hash_collisions, 0);
  // Dedupe still finds the identical block among the colliding ones.
  auto dup = index_->Insert(9, kNoBlock, BlockOf(b, 0), {});
  ASSERT_TRUE(dup.ok());
  EXPECT_EQ(dup->block, 2);
  EXPECT_FALSE(dup->inserted);
  // Removing entries from the middle of the collision chain keeps the others reachable.
  EXPECT_EQ(index_->Erase(0), (std::vector<BlockId>{1, 0}));
  EXPECT_EQ(index_->Match(b, {}).blocks, (std::vector<BlockId>{2, 3}));
  EXPECT_EQ(index_->Match(a, PrefixKeys{"s", 0, ""}).blocks, (std::vector<BlockId>{4, 5}));
  EXPECT_TRUE(index_->Match(a, {}).blocks.empty());
}

TEST_F(PrefixIndexTest, InsertOfAnIdenticalBlockReportsTheCachedOne) {
  const std::vector<int32_t> p = Range(1, 8);
  EXPECT_EQ(CacheChain(p, 10), (std::vector<BlockId>{10, 11}));  // sequence 1
  // Sequence 2 computed the same prompt in its own blocks 20, 21 before seeing the cache.
  auto first = index_->Insert(20, kNoBlock, BlockOf(p, 0), {});
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(first->block, 10);
  EXPECT_FALSE(first->inserted);
  auto second = index_->Insert(21, first->block, BlockOf(p, 1), {});
  EXPECT_EQ(second->block, 11);
  EXPECT_FALSE(second->inserted);
  EXPECT_FALSE(index_->Contains(20));
  EXPECT_EQ(index_->Find(10)->users, 2);
  EXPECT_EQ(index_->Find(11)->hit_count, 1);
  EXPECT_EQ(index_->counters().dedupes, 2);
  EXPECT_EQ(index_->counters().insertions, 2);
}

TEST_F(PrefixIndexTest, OnlyUnusedLeavesAreEvictableAndEvictionWalksUpTheChain) {
  // 10 -> 11 -> 12 and a branch 10 -> 13.
  const std::vector<BlockId> chain = CacheChain(Range(1, 12), 10);
  const std::vector<BlockId> branch = CacheChain({50, 51, 52, 53}, 13, {}, 10);
  EXPECT_EQ(index_->evictable_blocks(), 0);  // all in use
  EXPECT_EQ(index_->EvictOne(), std::nullopt);
  clock_.Advance(absl::Seconds(1));
  ReleaseAll(branch);
  clock_.Advance(absl::Seconds(1));
  ReleaseAll(chain);
  EXPECT_TRUE(index_->IsEvictable(12));
  EXPECT_TRUE(index_->IsEvictable(13));
  EXPECT_FALSE(index_->IsEvictable(11));  // has a cached child
  EXPECT_FALSE(index_->IsEvictable(10));
  EXPECT_EQ(index_->evictable_blocks(), 2);
  // LRU: 13 was released first; then 12; which leaves 11 a leaf; then 10.
  EXPECT_EQ(index_->EvictOne(), 13);
  EXPECT_FALSE(index_->IsEvictable(10));
  EXPECT_EQ(index_->EvictOne(), 12);
  EXPECT_TRUE(index_->IsEvictable(11));
  EXPECT_EQ(index_->EvictOne(), 11);
  EXPECT_EQ(index_->EvictOne(), 10);
  EXPECT_EQ(index_->EvictOne(), std::nullopt);
  EXPECT_EQ(index_->cached_blocks(), 0);
}

TEST_F(PrefixIndexTest, LookupClaimsTheMatchedBlocksSoTheyCannotBeEvicted) {
  ReleaseAll(CacheChain(Range(1, 8), 0));
  EXPECT_EQ(index_->evictable_blocks(), 1);
  PrefixMatch m = index_->Lookup(Range(1, 8), {});
  EXPECT_EQ(index_->evictable_blocks(), 0);
  EXPECT_EQ(index_->EvictOne(), std::nullopt);
  EXPECT_TRUE(index_->Acquire(1));  // a second sequence (fork)
  ReleaseAll(m.blocks);
  EXPECT_FALSE(index_->IsEvictable(1));
  EXPECT_TRUE(index_->Release(1));
  EXPECT_TRUE(index_->IsEvictable(1));
  EXPECT_FALSE(index_->Acquire(77));  // not cached
  EXPECT_FALSE(index_->Release(77));
}

TEST_F(PrefixIndexTest, CountsQueriesAndHitsInTokensAndEvictionsByReason) {
  const std::vector<int32_t> prompt = Range(1, 10);  // 2 full blocks + 2 tokens
  PrefixMatch miss = index_->Lookup(prompt, {});
  EXPECT_TRUE(miss.blocks.empty());
  ReleaseAll(CacheChain(prompt, 0));
  PrefixMatch hit = index_->Lookup(prompt, {});
  EXPECT_EQ(hit.matched_tokens, 8);
  ReleaseAll(hit.blocks);
  const PrefixIndexCounters& c = index_->counters();
  EXPECT_EQ(c.policy, "lru");
  EXPECT_EQ(c.queries, 2);
  EXPECT_EQ(c.query_tokens, 20);
  EXPECT_EQ(c.hit_tokens, 8);
  EXPECT_EQ(c.hit_blocks, 2);
  EXPECT_DOUBLE_EQ(c.hit_rate(), 0.4);
  EXPECT_EQ(c.insertions, 2);
  EXPECT_EQ(index_->Find(0)->hit_count, 1);

  ReleaseAll(CacheChain(Range(100, 4), 5));
  ReleaseAll(CacheChain(Range(200, 8), 6));
  // Every release happened at the same instant: LRU ties go by when blocks became evictable
  // (1, then 5, then 7; block 0 only once 1 is gone).
  EXPECT_EQ(index_->EvictOne(), 1);
  EXPECT_EQ(index_->Erase(6), (std::vector<BlockId>{7, 6}));  // a block and its descendant
  EXPECT_EQ(index_->Clear(), (std::vector<BlockId>{5, 0}));
  EXPECT_EQ(c.evicted(PrefixEvictionReason::kCapacity), 1);
  EXPECT_EQ(c.evicted(PrefixEvictionReason::kErase), 2);
  EXPECT_EQ(c.evicted(PrefixEvictionReason::kClear), 2);
  EXPECT_EQ(PrefixEvictionReasonName(PrefixEvictionReason::kErase), "erase");
}

TEST_F(PrefixIndexTest, EraseRemovesDescendantsAndUsersKeepTheirBlocks) {
  const std::vector<BlockId> chain = CacheChain(Range(1, 12), 10);
  EXPECT_EQ(index_->Erase(11), (std::vector<BlockId>{12, 11}));
  EXPECT_TRUE(index_->Contains(10));
  EXPECT_FALSE(index_->Contains(11));
  EXPECT_EQ(index_->Match(Range(1, 12), {}).blocks, (std::vector<BlockId>{10}));
  // The sequence still holds 11 and 12 as private blocks: its releases are no-ops here.
  EXPECT_TRUE(index_->Release(10));
  EXPECT_FALSE(index_->Release(11));
  EXPECT_FALSE(index_->Release(12));
  EXPECT_TRUE(index_->IsEvictable(10));  // lost its only child
  EXPECT_TRUE(index_->Erase(99).empty());
}

TEST_F(PrefixIndexTest, ClearFlushesWhatIsNotInUse) {
  ReleaseAll(CacheChain(Range(1, 8), 0));                         // 0 -> 1, unused
  const std::vector<BlockId> used = CacheChain(Range(50, 4), 2);  // in use
  EXPECT_EQ(index_->Clear(), (std::vector<BlockId>{1, 0}));
  EXPECT_TRUE(index_->Contains(2));
  EXPECT_EQ(index_->cached_blocks(), 1);
  ReleaseAll(used);
  EXPECT_EQ(index_->Clear(), (std::vector<BlockId>{2}));
}

TEST_F(PrefixIndexTest, RejectsPartialBlocksUnknownParentsAndDoubleInserts) {
  EXPECT_EQ(index_->Insert(0, kNoBlock, Range(1, 3), {}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(index_->Insert(0, 5, Range(1, 4), {}).status().code(),
            absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(index_->Insert(0, kNoBlock, Range(1, 4), {}).ok());
  EXPECT_EQ(index_->Insert(0, kNoBlock, Range(9, 4), {}).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(index_->Insert(1, kNoBlock, Range(9, 4), {}, BlockRetention{101}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(index_->SetRetention(7, {}).code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(index_->SetRetention(0, BlockRetention{90, absl::Seconds(3)}).ok());
  EXPECT_EQ(index_->Find(0)->retention.priority, 90);
  PrefixIndexOptions bad;
  bad.block_size = 0;
  EXPECT_FALSE(PrefixIndex::Create(bad, *CreateBlockEvictionPolicy("lru")).ok());
  EXPECT_FALSE(PrefixIndex::Create(PrefixIndexOptions{}, nullptr).ok());
}

TEST_F(PrefixIndexTest, EveryHashAlgorithmGivesTheSameCacheBehaviour) {
  for (PrefixHashAlgorithm algorithm : {PrefixHashAlgorithm::kXxh3_128, PrefixHashAlgorithm::kXxh64,
                                        PrefixHashAlgorithm::kSha256}) {
    SCOPED_TRACE(PrefixHashAlgorithmName(algorithm));
    Reset(PrefixHashFunction(), algorithm);
    ReleaseAll(CacheChain(Range(1, 8), 0));
    ReleaseAll(CacheChain({1, 2, 3, 4, 9, 9, 9, 9}, 2, {}, kNoBlock));  // dedupes block 0
    EXPECT_EQ(index_->cached_blocks(), 3);
    PrefixMatch m = index_->Lookup({1, 2, 3, 4, 9, 9, 9, 9, 1}, {});
    EXPECT_EQ(m.blocks, (std::vector<BlockId>{0, 3}));
    ReleaseAll(m.blocks);
    EXPECT_EQ(index_->counters().hash_collisions, 0);
  }
}

}  // namespace
}  // namespace kvserve::engine
