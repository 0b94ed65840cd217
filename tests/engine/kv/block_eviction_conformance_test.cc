// The conformance suite every block eviction policy passes (typed tests over the registry names).
#include <algorithm>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "engine/kv/eviction/block_eviction_policy.h"
#include "engine/kv/eviction/lru_policy.h"
#include "engine/kv/eviction/priority_policy.h"
#include "engine/kv/eviction/slru_policy.h"
#include "engine/kv/prefix_index.h"
#include "gtest/gtest.h"
#include "tests/engine/kv/eviction_test_util.h"

namespace kvserve::engine {
namespace {

using testing::At;
using testing::ManualClock;

template <typename Policy>
struct PolicyName;
template <>
struct PolicyName<LruEvictionPolicy> {
  static constexpr char kName[] = "lru";
};
template <>
struct PolicyName<PriorityEvictionPolicy> {
  static constexpr char kName[] = "priority";
};
template <>
struct PolicyName<SlruEvictionPolicy> {
  static constexpr char kName[] = "slru";
};

template <typename Policy>
class BlockEvictionConformanceTest : public ::testing::Test {
 protected:
  static std::string Name() { return PolicyName<Policy>::kName; }
  static std::unique_ptr<BlockEvictionPolicy> NewPolicy() {
    auto p = CreateBlockEvictionPolicy(Name());
    EXPECT_TRUE(p.ok()) << p.status();
    EXPECT_NE(dynamic_cast<Policy*>(p->get()), nullptr);
    return std::move(*p);
  }
};

using PolicyTypes = ::testing::Types<LruEvictionPolicy, PriorityEvictionPolicy, SlruEvictionPolicy>;
TYPED_TEST_SUITE(BlockEvictionConformanceTest, PolicyTypes);

TYPED_TEST(BlockEvictionConformanceTest, RegistryCreatesItByName) {
  auto p = TestFixture::NewPolicy();
  EXPECT_EQ(p->name(), TestFixture::Name());
  EXPECT_EQ(p->size(), 0);
  EXPECT_EQ(p->PickVictim(At(0)), std::nullopt);
}

// Driven directly with random events: a victim is always one of the blocks currently evictable,
// each at most once, and nullopt comes only when none is.
TYPED_TEST(BlockEvictionConformanceTest, NeverPicksABlockThatIsNotEvictable) {
  auto policy = TestFixture::NewPolicy();
  std::mt19937 rng(7);
  std::set<BlockId> evictable;
  for (int step = 0; step < 5000; ++step) {
    const absl::Time now = At(step);
    const int op = std::uniform_int_distribution<int>(0, 2)(rng);
    const BlockId b = std::uniform_int_distribution<BlockId>(0, 63)(rng);
    if (op == 0 && !evictable.count(b)) {
      EvictableBlockInfo info;
      info.last_use = At(step - std::uniform_int_distribution<int>(0, 20)(rng));
      info.hit_count = std::uniform_int_distribution<int>(0, 2)(rng);
      info.priority = std::uniform_int_distribution<int>(0, 100)(rng);
      info.priority_expiry =
          info.last_use + absl::Seconds(std::uniform_int_distribution<int>(0, 30)(rng));
      policy->OnEvictable(b, info, now);
      evictable.insert(b);
    } else if (op == 1 && evictable.count(b)) {
      policy->OnNotEvictable(b);
      evictable.erase(b);
    } else if (op == 2) {
      const std::optional<BlockId> victim = policy->PickVictim(now);
      if (evictable.empty()) {
        EXPECT_EQ(victim, std::nullopt);
      } else {
        ASSERT_TRUE(victim.has_value());
        EXPECT_TRUE(evictable.count(*victim)) << "picked " << *victim;
        evictable.erase(*victim);
      }
    }
    ASSERT_EQ(policy->size(), static_cast<int64_t>(evictable.size()));
    for (BlockId id = 0; id < 64; id += 9) ASSERT_EQ(policy->Contains(id), evictable.count(id) > 0);
  }
}

// Through the prefix index, chains go from their leaves: whatever the priorities, hit counts
// and ages, a block is never evicted before its cached children.
TYPED_TEST(BlockEvictionConformanceTest, EvictsLeavesFirstThroughThePrefixIndex) {
  ManualClock clock;
  PrefixIndexOptions options;
  options.block_size = 2;
  options.clock = clock.AsFunction();
  auto index = *PrefixIndex::Create(options, TestFixture::NewPolicy());
  const PrefixKeys keys;
  // Chain 0 -> 1 -> 2 -> 3, with the root at the lowest priority and the leaf at the highest,
  // then 0 -> 4 (a branch). Block 1 is reused (hit) so frequency-aware policies favour it.
  const std::vector<int32_t> tokens = {1, 2, 3, 4, 5, 6, 7, 8};
  const int priorities[] = {0, 50, 80, 100};
  for (int i = 0; i < 4; ++i) {
    auto r =
        index->Insert(i, i == 0 ? kNoBlock : i - 1, absl::MakeConstSpan(tokens).subspan(2 * i, 2),
                      keys, BlockRetention{priorities[i], absl::InfiniteDuration()});
    ASSERT_TRUE(r.ok() && r->inserted);
  }
  ASSERT_TRUE(index->Insert(4, 0, std::vector<int32_t>{9, 9}, keys).ok());
  clock.Advance(absl::Seconds(1));
  for (BlockId b : {4, 3, 2, 1, 0}) index->Release(b);
  clock.Advance(absl::Seconds(1));
  const PrefixMatch again = index->Lookup({1, 2, 3, 4}, keys);  // hits blocks 0 and 1
  ASSERT_EQ(again.blocks, (std::vector<BlockId>{0, 1}));
  clock.Advance(absl::Seconds(1));
  for (BlockId b : again.blocks) index->Release(b);

  EXPECT_TRUE(index->IsEvictable(3));
  EXPECT_TRUE(index->IsEvictable(4));
  EXPECT_FALSE(index->IsEvictable(0));
  std::vector<BlockId> order;
  while (auto victim = index->EvictOne()) order.push_back(*victim);
  ASSERT_EQ(order.size(), 5u);
  auto pos = [&order](BlockId b) {
    return std::find(order.begin(), order.end(), b) - order.begin();
  };
  EXPECT_LT(pos(3), pos(2));
  EXPECT_LT(pos(2), pos(1));
  EXPECT_LT(pos(1), pos(0));
  EXPECT_LT(pos(4), pos(0));
  EXPECT_EQ(order.back(), 0);
  EXPECT_EQ(index->counters().evicted(PrefixEvictionReason::kCapacity), 5);
}

// A random multi-request workload on a small pool: every victim is evictable by an independent
// model, the pool never exceeds its capacity and references add up (checked inside).
TYPED_TEST(BlockEvictionConformanceTest, RespectsCapacityUnderRandomWorkloads) {
  for (uint32_t seed : {1u, 2u, 3u}) {
    SCOPED_TRACE(seed);
    const testing::WorkloadResult r =
        testing::RunRandomWorkload(TestFixture::Name(), seed, /*steps=*/600);
    EXPECT_GT(r.admitted, 100);
    EXPECT_FALSE(r.victims.empty());
    EXPECT_GT(r.counters.hit_tokens, 0);
    EXPECT_EQ(r.counters.policy, TestFixture::Name());
    EXPECT_EQ(r.counters.evicted(PrefixEvictionReason::kCapacity),
              static_cast<int64_t>(r.victims.size()));
  }
}

TYPED_TEST(BlockEvictionConformanceTest, IsDeterministicUnderAnInjectedClock) {
  const testing::WorkloadResult a = testing::RunRandomWorkload(TestFixture::Name(), 11, 400);
  const testing::WorkloadResult b = testing::RunRandomWorkload(TestFixture::Name(), 11, 400);
  EXPECT_EQ(a.victims, b.victims);
  EXPECT_EQ(a.counters.hit_tokens, b.counters.hit_tokens);
  EXPECT_EQ(a.counters.insertions, b.counters.insertions);
}

}  // namespace
}  // namespace kvserve::engine
