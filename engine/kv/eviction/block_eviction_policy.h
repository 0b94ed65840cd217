// Block eviction: which reusable cached KV block to drop when the pool needs memory.
//
// The prefix index owns the cached blocks and decides which are *evictable*: cached, used by no
// sequence, and a leaf of the prefix tree (no cached child), so that chains are evicted from
// their ends and no cached block outlives its parent. A policy sees only evictable blocks and
// orders them; it never sees a block in use, so every victim it returns can be freed at once.
//
// Events (one virtual call per block event, never per token or element):
//   OnEvictable(block, info, now)  the block became evictable (released by its last user, or
//                                  its last cached child was evicted). `info` is a snapshot.
//   OnNotEvictable(block)          an evictable block was claimed again, got a cached child, or
//                                  was erased from the index.
//   PickVictim(now)                chooses an evictable block, forgets it and returns it; nullopt
//                                  when none is evictable.
//
// Policies are created by name through the registry below (YAML selects the name). Implementing
// one: derive, keep per-block state keyed by BlockId, make PickVictim deterministic for equal
// inputs (tie-break by event order, never by pointer or hash-table order), and register a factory.
//
// Thread-safety: none; the engine thread drives a policy through its PrefixIndex.
#ifndef KVSERVE_ENGINE_KV_EVICTION_BLOCK_EVICTION_POLICY_H_
#define KVSERVE_ENGINE_KV_EVICTION_BLOCK_EVICTION_POLICY_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "engine/kv/block_pool.h"

namespace kvserve::engine {

// Retention priorities, as in TensorRT-LLM's KV cache retention API: 0 (evicted first) to 100
// (kept longest); blocks without a hint have the default.
inline constexpr int32_t kMinRetentionPriority = 0;
inline constexpr int32_t kMaxRetentionPriority = 100;
inline constexpr int32_t kDefaultRetentionPriority = 35;

// A block's retention hint: `priority` holds for `duration`, counted from the moment the block
// stops being used by any sequence; afterwards the block is treated as default priority.
struct BlockRetention {
  int32_t priority = kDefaultRetentionPriority;
  absl::Duration duration = absl::InfiniteDuration();
};

// What a policy may know about an evictable block (a snapshot taken when it became evictable).
struct EvictableBlockInfo {
  absl::Time last_use = absl::InfinitePast();  // last time a sequence released (or claimed) it
  int64_t hit_count = 0;                       // times it was reused since it was cached
  int32_t priority = kDefaultRetentionPriority;
  // When `priority` decays to kDefaultRetentionPriority; InfiniteFuture when it never does.
  absl::Time priority_expiry = absl::InfiniteFuture();
};

class BlockEvictionPolicy {
 public:
  virtual ~BlockEvictionPolicy() = default;

  // The registry name ("lru", "priority", "slru").
  virtual absl::string_view name() const = 0;

  // REQUIRES: `block` is not currently evictable in this policy.
  virtual void OnEvictable(BlockId block, const EvictableBlockInfo& info, absl::Time now) = 0;
  // REQUIRES: `block` is currently evictable in this policy.
  virtual void OnNotEvictable(BlockId block) = 0;
  // Chooses a victim among the evictable blocks and forgets it. nullopt when there is none.
  virtual std::optional<BlockId> PickVictim(absl::Time now) = 0;

  // Evictable blocks the policy tracks.
  virtual int64_t size() const = 0;
  virtual bool Contains(BlockId block) const = 0;
};

// Options of the built-in policies; each reads only its own fields.
struct BlockEvictionOptions {
  // slru: the protected segment holds at most this fraction of the evictable blocks (0, 1).
  double slru_protected_fraction = 0.8;
};

inline constexpr char kDefaultBlockEvictionPolicy[] = "lru";

using BlockEvictionPolicyFactory =
    std::function<absl::StatusOr<std::unique_ptr<BlockEvictionPolicy>>(
        const BlockEvictionOptions& options)>;

// Creates the policy registered under `name`. InvalidArgument listing the known names when
// `name` is unknown, or naming the option when `options` are invalid for that policy.
absl::StatusOr<std::unique_ptr<BlockEvictionPolicy>> CreateBlockEvictionPolicy(
    absl::string_view name, const BlockEvictionOptions& options = {});

// Registered names, sorted.
std::vector<std::string> BlockEvictionPolicyNames();

// Adds a policy to the registry (built-ins: lru, priority, slru). AlreadyExists for a taken name.
// Thread-safe.
absl::Status RegisterBlockEvictionPolicy(absl::string_view name,
                                         BlockEvictionPolicyFactory factory);

// Retention hint for the KV blocks of a token range of the prompt (used by the `priority` block
// eviction policy): keep them at `priority` (0..100, higher is kept longer) for `duration`, after
// which they fall back to the default priority. end_token < 0 means "to the end of the prompt".
struct RetentionHint {
  int32_t start_token = 0;
  int32_t end_token = -1;
  int32_t priority = 35;
  absl::Duration duration = absl::InfiniteDuration();
};

// The retention of the block that starts at token `block_index * block_size` of a prompt, from
// per-token-range hints (TensorRT-LLM's rule: a block takes the hint of the range that contains
// its first token; blocks outside every range get the default). `Hint` is any type with fields
// start_token, end_token (< 0: to the end), priority and duration, e.g. engine::RetentionHint.
// Priorities are clamped to [0, 100].
template <typename Hint>
BlockRetention RetentionForBlock(const std::vector<Hint>& hints, int64_t block_index,
                                 int32_t block_size) {
  const int64_t first = block_index * block_size;
  for (const Hint& h : hints) {
    if (first >= h.start_token && (h.end_token < 0 || first < h.end_token)) {
      BlockRetention r;
      r.priority = h.priority < kMinRetentionPriority   ? kMinRetentionPriority
                   : h.priority > kMaxRetentionPriority ? kMaxRetentionPriority
                                                        : h.priority;
      r.duration = h.duration;
      return r;
    }
  }
  return BlockRetention{};
}

}  // namespace kvserve::engine

#endif  // KVSERVE_ENGINE_KV_EVICTION_BLOCK_EVICTION_POLICY_H_
