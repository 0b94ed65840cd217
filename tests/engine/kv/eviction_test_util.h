// Test helpers for the prefix index and block eviction: a manual clock and a simulated block pool
// driven through a PrefixIndex exactly as the engine integration does, with an independent model
// of which cached blocks are evictable.
#ifndef KVSERVE_TESTS_ENGINE_KV_EVICTION_TEST_UTIL_H_
#define KVSERVE_TESTS_ENGINE_KV_EVICTION_TEST_UTIL_H_

#include <algorithm>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "engine/kv/prefix_index.h"
#include "gtest/gtest.h"

namespace kvserve::engine::testing {

// Time moves only when a test says so.
class ManualClock {
 public:
  absl::Time Now() const { return now_; }
  void Advance(absl::Duration d) { now_ += d; }
  void Set(absl::Time t) { now_ = t; }
  std::function<absl::Time()> AsFunction() {
    return [this] { return now_; };
  }

 private:
  absl::Time now_ = absl::FromUnixSeconds(1000);
};

inline absl::Time At(int64_t seconds) { return absl::FromUnixSeconds(1000 + seconds); }

// A block pool of `capacity` blocks with reference counts (the real BlockPool's contract, minus
// the bytes), so that the simulation can check that no block leaks or is freed while used.
class FakePool {
 public:
  explicit FakePool(int capacity) : refs_(capacity, 0) {}
  std::optional<BlockId> Allocate() {
    for (BlockId id = 0; id < static_cast<BlockId>(refs_.size()); ++id) {
      if (refs_[id] == 0) {
        refs_[id] = 1;
        return id;
      }
    }
    return std::nullopt;
  }
  void AddRef(BlockId id) {
    EXPECT_GT(refs_[id], 0) << "AddRef on free block " << id;
    ++refs_[id];
  }
  void Release(BlockId id) {
    ASSERT_GT(refs_[id], 0) << "Release of free block " << id;
    --refs_[id];
  }
  int refs(BlockId id) const { return refs_[id]; }
  int used() const {
    int n = 0;
    for (int r : refs_) n += r > 0;
    return n;
  }
  int capacity() const { return static_cast<int>(refs_.size()); }

 private:
  std::vector<int> refs_;
};

struct WorkloadResult {
  std::vector<BlockId> victims;  // in eviction order
  PrefixIndexCounters counters;
  int64_t admitted = 0;
  int64_t refused = 0;  // requests that did not fit even after evicting everything evictable
};

// Random requests sharing a few prefixes, admitted and finished in random order through a
// PrefixIndex using the policy `policy_name`, on a pool of `capacity` blocks of `block_size`
// tokens. Checks after every step that every victim was evictable by an independent model,
// that the index agrees with that model, and that pool references add up.
inline WorkloadResult RunRandomWorkload(const std::string& policy_name, uint32_t seed, int steps,
                                        int capacity = 16, int block_size = 4) {
  WorkloadResult result;
  ManualClock clock;
  PrefixIndexOptions options;
  options.block_size = block_size;
  options.clock = clock.AsFunction();
  auto policy = CreateBlockEvictionPolicy(policy_name);
  EXPECT_TRUE(policy.ok()) << policy.status();
  auto created = PrefixIndex::Create(options, std::move(*policy));
  EXPECT_TRUE(created.ok()) << created.status();
  PrefixIndex& index = **created;
  FakePool pool(capacity);
  std::mt19937 rng(seed);
  auto uniform = [&rng](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };

  std::vector<std::vector<int32_t>> prefixes(4);
  for (auto& p : prefixes) {
    for (int i = 0; i < 2 * block_size; ++i) p.push_back(uniform(1, 50));
  }
  const std::vector<PrefixKeys> keys = {{"", 0, "m"}, {"tenant-b", 0, "m"}};

  // The independent model: cached blocks and their parents, and the live sequences' tables.
  std::map<BlockId, BlockId> cached_parent;
  std::vector<std::vector<BlockId>> live;
  std::vector<BlockId> pending;  // the table of the request being admitted
  auto users_of = [&](BlockId b) {
    int n = static_cast<int>(std::count(pending.begin(), pending.end(), b));
    for (const auto& table : live) n += static_cast<int>(std::count(table.begin(), table.end(), b));
    return n;
  };
  auto model_evictable = [&](BlockId b) {
    if (!cached_parent.count(b) || users_of(b) > 0) return false;
    for (const auto& [child, parent] : cached_parent) {
      if (parent == b) return false;
    }
    return true;
  };
  auto evict_one = [&]() -> bool {
    std::set<BlockId> expected;
    for (const auto& [b, parent] : cached_parent) {
      if (model_evictable(b)) expected.insert(b);
    }
    const std::optional<BlockId> victim = index.EvictOne();
    if (!victim) {
      EXPECT_TRUE(expected.empty())
          << "nothing evicted while " << expected.size() << " blocks were evictable";
      return false;
    }
    EXPECT_TRUE(expected.count(*victim)) << policy_name << " evicted non-evictable " << *victim;
    cached_parent.erase(*victim);
    pool.Release(*victim);  // the index's reference
    result.victims.push_back(*victim);
    return true;
  };

  for (int step = 0; step < steps; ++step) {
    clock.Advance(absl::Seconds(uniform(0, 2)));
    if (live.size() < 4 && (live.empty() || uniform(0, 1) == 0)) {
      std::vector<int32_t> prompt = prefixes[uniform(0, 3)];
      const int suffix = uniform(0, 3 * block_size);
      for (int i = 0; i < suffix; ++i) prompt.push_back(uniform(1, 50));
      const PrefixKeys& k = keys[uniform(0, 1)];
      const int64_t num_blocks =
          (static_cast<int64_t>(prompt.size()) + block_size - 1) / block_size;
      PrefixMatch match = index.Lookup(prompt, k);
      std::vector<BlockId>& table = pending;
      table = match.blocks;
      for (BlockId b : table) pool.AddRef(b);
      bool fits = true;
      while (static_cast<int64_t>(table.size()) < num_blocks) {
        std::optional<BlockId> b = pool.Allocate();
        if (!b && evict_one()) continue;
        if (!b) {
          fits = false;
          break;
        }
        table.push_back(*b);
      }
      if (!fits) {  // roll back: release what this request holds
        for (BlockId b : table) {
          index.Release(b);
          pool.Release(b);
        }
        table.clear();
        ++result.refused;
        continue;
      }
      // Cache the new full blocks, chained to their predecessors.
      const int64_t full = static_cast<int64_t>(prompt.size()) / block_size;
      for (int64_t i = static_cast<int64_t>(match.blocks.size()); i < full; ++i) {
        const BlockId parent = i == 0 ? kNoBlock : table[i - 1];
        BlockRetention retention;
        retention.priority = uniform(0, 100);
        retention.duration = absl::Seconds(uniform(0, 10));
        auto inserted = index.Insert(
            table[i], parent, absl::MakeConstSpan(prompt).subspan(i * block_size, block_size), k,
            retention);
        EXPECT_TRUE(inserted.ok()) << inserted.status();
        if (!inserted.ok()) break;
        if (inserted->inserted) {
          pool.AddRef(table[i]);  // the index's reference
          cached_parent[table[i]] = parent;
        } else {
          pool.AddRef(inserted->block);
          pool.Release(table[i]);
          table[i] = inserted->block;
        }
      }
      live.push_back(std::move(table));
      table.clear();
      ++result.admitted;
    } else {
      const size_t which = static_cast<size_t>(uniform(0, static_cast<int>(live.size()) - 1));
      for (BlockId b : live[which]) {
        index.Release(b);
        pool.Release(b);
      }
      live.erase(live.begin() + static_cast<ptrdiff_t>(which));
    }
    // Invariants after every step.
    EXPECT_LE(pool.used(), pool.capacity());
    EXPECT_EQ(index.cached_blocks(), static_cast<int64_t>(cached_parent.size()));
    int64_t evictable = 0;
    for (const auto& [b, parent] : cached_parent) {
      EXPECT_EQ(index.IsEvictable(b), model_evictable(b)) << "block " << b;
      EXPECT_EQ(pool.refs(b), 1 + users_of(b)) << "block " << b;
      evictable += model_evictable(b);
    }
    EXPECT_EQ(index.evictable_blocks(), evictable);
    EXPECT_EQ(index.policy().size(), evictable);
  }
  // Finish everything and flush: every block goes back to the pool.
  for (const auto& table : live) {
    for (BlockId b : table) {
      index.Release(b);
      pool.Release(b);
    }
  }
  live.clear();
  for (BlockId b : index.Clear()) pool.Release(b);
  EXPECT_EQ(index.cached_blocks(), 0);
  EXPECT_EQ(pool.used(), 0);
  result.counters = index.counters();
  return result;
}

}  // namespace kvserve::engine::testing

#endif  // KVSERVE_TESTS_ENGINE_KV_EVICTION_TEST_UTIL_H_
