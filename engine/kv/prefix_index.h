// The prefix index: which full KV blocks are cached for reuse across requests, found by a chained
// hash of their content, and which of them may be evicted.
//
// A block's identity is hash(parent block's hash, the block's token ids, extra keys), where the
// extra keys are the cache salt, the KV layout/format id and the model identity. Only FULL blocks
// (block_size tokens) are cached. Because the parent's hash is part of the key, one block matches
// only after the same whole prefix. Every hit is verified against the stored token ids, keys and
// parent entry, so a hash collision yields a miss, never a wrong block.
//
// Each cached block mirrors how many sequences use it (`users`). A block is *evictable* when it
// is cached, used by no sequence and a leaf (no cached child): chains are evicted from their
// ends, and no cached block outlives its parent. The index tells its BlockEvictionPolicy about
// every change of evictability and asks it for victims (EvictOne).
//
// Ownership and integration with the BlockPool (the index never touches the pool):
//   - The index holds one pool reference of its own on every cached block. After an Insert that
//     returned inserted = true, the caller AddRef()s the block for the index; whenever the index
//     hands a block back (EvictOne, Erase, Clear), the caller Release()s that reference, which
//     frees the block once no sequence holds it.
//   - Sequences keep their own pool references as today. Every time a sequence starts using a
//     cached block (Lookup, Insert, Acquire) or stops (Release), the caller tells the index too.
//     A pool ref count of exactly 1 on a cached block therefore means "cached, reusable".
//   - Pool exhausted: call EvictOne() and release the returned block, repeat until the
//     allocation fits or EvictOne returns nullopt (then preempt a sequence).
//   - Cache a block only once its bytes are final: in the layout it will keep (after any
//     hot-to-cold demotion; keys.layout names that layout), and never a block of a sequence
//     whose tokens were evicted (its slots no longer hold a plain prefix).
//
// Units: token counts are tokens; block counts are blocks. Times come from the injected clock.
// Thread-safety: not thread-safe; owned and driven by the engine thread.
#ifndef KVSERVE_ENGINE_KV_PREFIX_INDEX_H_
#define KVSERVE_ENGINE_KV_PREFIX_INDEX_H_

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "engine/kv/block_pool.h"
#include "engine/kv/eviction/block_eviction_policy.h"
#include "engine/kv/prefix_hash.h"

namespace kvserve::engine {

inline constexpr BlockId kNoBlock = -1;

// Everything besides the tokens that decides whether two blocks hold the same KV.
struct PrefixKeys {
  std::string cache_salt;  // requests with different salts never share blocks
  uint32_t layout = 0;     // KV layout / format id of the blocks (a LayoutId)
  std::string model;       // model identity: name plus weights revision or digest
};

struct PrefixIndexOptions {
  int32_t block_size = 16;  // tokens per block; must match the pool's geometry
  PrefixHashAlgorithm hash = PrefixHashAlgorithm::kXxh3_128;
  PrefixHashFunction hash_function;   // when set, used instead of `hash` (tests inject weak ones)
  std::function<absl::Time()> clock;  // when unset, absl::Now; tests inject a manual one
};

// The longest cached chain for a prompt, root first.
struct PrefixMatch {
  std::vector<BlockId> blocks;
  int64_t matched_tokens = 0;  // blocks.size() * block_size
};

enum class PrefixEvictionReason { kCapacity = 0, kErase = 1, kClear = 2 };
inline constexpr int kNumPrefixEvictionReasons = 3;
absl::string_view PrefixEvictionReasonName(PrefixEvictionReason reason);  // "capacity", ...

// Counters since the index was created.
struct PrefixIndexCounters {
  std::string policy;        // name of the block eviction policy choosing capacity victims
  int64_t queries = 0;       // Lookup calls
  int64_t query_tokens = 0;  // tokens passed to Lookup
  int64_t hit_tokens = 0;    // of which served from the cache
  int64_t hit_blocks = 0;
  int64_t insertions = 0;       // blocks newly cached
  int64_t dedupes = 0;          // Inserts that found an identical cached block
  int64_t hash_collisions = 0;  // equal hashes with different content (verification caught)
  std::array<int64_t, kNumPrefixEvictionReasons> evictions{};  // blocks removed, by reason

  double hit_rate() const {
    return query_tokens > 0 ? static_cast<double>(hit_tokens) / query_tokens : 0.0;
  }
  int64_t evicted(PrefixEvictionReason r) const { return evictions[static_cast<int>(r)]; }
};

// A snapshot of one cached block (introspection and tests).
struct PrefixEntryInfo {
  BlockId parent = kNoBlock;
  BlockHash hash;
  int32_t num_children = 0;  // cached children
  int32_t users = 0;         // sequences using the block
  bool evictable = false;
  absl::Time last_use;
  int64_t hit_count = 0;
  BlockRetention retention;
};

class PrefixIndex {
 public:
  // InvalidArgument when block_size < 1 or `policy` is null.
  static absl::StatusOr<std::unique_ptr<PrefixIndex>> Create(
      PrefixIndexOptions options, std::unique_ptr<BlockEvictionPolicy> policy);
  PrefixIndex(const PrefixIndex&) = delete;
  PrefixIndex& operator=(const PrefixIndex&) = delete;

  struct InsertResult {
    BlockId block = kNoBlock;  // the cached block the sequence now uses
    bool inserted = false;     // false: an identical block was cached already (`block` is it)
  };
  // Caches `block`, a full block (tokens.size() == block_size) just written by one sequence,
  // whose preceding block in that sequence is `parent` (kNoBlock for the first block). The
  // sequence counts as a user of the returned block.
  // On a duplicate (inserted = false) the caller switches the sequence to the returned block
  // (pool AddRef) and frees its own copy; the existing block's hit count grows by one.
  // `bytes` is the block's size, summed in idle_bytes() while no sequence uses it.
  // Errors: InvalidArgument (wrong token count, negative id, parent with other keys),
  // FailedPrecondition (`block` already cached, `parent` not cached: keep the block private).
  absl::StatusOr<InsertResult> Insert(BlockId block, BlockId parent,
                                      absl::Span<const int32_t> tokens, const PrefixKeys& keys,
                                      const BlockRetention& retention = {}, int64_t bytes = 0);

  // The longest cached chain for `tokens` (full blocks only). No side effects: for planning
  // (e.g. admission: how many blocks must still be allocated).
  PrefixMatch Match(absl::Span<const int32_t> tokens, const PrefixKeys& keys) const;
  // Match, then claims every matched block for the calling sequence (users + 1, so none of them
  // can be evicted while the rest of the sequence is allocated), counts the query and its hits,
  // and adds one to each matched block's hit count. The caller AddRef()s each block in the pool.
  // A caller that needs the logits of the last prompt token passes the prompt without it.
  PrefixMatch Lookup(absl::Span<const int32_t> tokens, const PrefixKeys& keys);

  // A sequence starts (Acquire) or stops (Release) using a cached block, e.g. on fork or finish.
  // Both return false, and do nothing, when `block` is not cached (Release of an erased block).
  // REQUIRES for Release: the block has users.
  bool Acquire(BlockId block);
  bool Release(BlockId block);

  // Replaces a cached block's retention hint (a later request's hint wins). NotFound when the
  // block is not cached.
  absl::Status SetRetention(BlockId block, const BlockRetention& retention);

  // Asks the policy for a victim, removes it from the index and returns it; the caller releases
  // the index's pool reference. Its parent may become evictable. nullopt when nothing is.
  std::optional<BlockId> EvictOne();
  // Removes `block` and every cached descendant, evictable or not (sequences using them keep
  // them as private blocks). Returns the removed blocks, descendants before ancestors; empty
  // when `block` is not cached. The caller releases the index's reference on each.
  std::vector<BlockId> Erase(BlockId block);
  // Flushes the cache: evicts every block that is or becomes evictable, and returns them. Blocks
  // in use stay cached.
  std::vector<BlockId> Clear();

  bool Contains(BlockId block) const;
  bool IsEvictable(BlockId block) const;
  std::optional<PrefixEntryInfo> Find(BlockId block) const;
  int64_t cached_blocks() const { return cached_blocks_; }
  int64_t evictable_blocks() const { return evictable_blocks_; }
  // Cached blocks no sequence uses: the "cached, reusable" role of the memory accounting.
  int64_t idle_blocks() const { return cached_blocks_ - in_use_blocks_; }
  // Their bytes: the sum of the `bytes` each was inserted with.
  int64_t idle_bytes() const { return cached_bytes_ - in_use_bytes_; }
  int32_t block_size() const { return block_size_; }
  const PrefixIndexCounters& counters() const { return counters_; }
  const BlockEvictionPolicy& policy() const { return *policy_; }

 private:
  struct Entry {
    bool cached = false;
    bool evictable = false;
    BlockId parent = kNoBlock;
    BlockId next_same_hash = kNoBlock;  // collision chain of by_hash_
    uint32_t keys_id = 0;
    int32_t users = 0;
    int64_t bytes = 0;  // as given to Insert
    int64_t hit_count = 0;
    absl::Time last_use;
    BlockRetention retention;
    BlockHash hash;
    std::vector<BlockId> children;
  };
  struct KeysRecord {
    std::string bytes;  // serialized PrefixKeys
    BlockHash digest;   // hash of `bytes`, fed into every block hash
    int64_t entries = 0;
  };

  PrefixIndex(PrefixIndexOptions options, std::unique_ptr<BlockEvictionPolicy> policy);

  absl::Time Now() const { return clock_(); }
  BlockHash HashBlock(const BlockHash& parent, const BlockHash& keys_digest,
                      absl::Span<const int32_t> tokens) const;
  // The cached block with this content, or kNoBlock; counts rejected candidates in *collisions.
  BlockId FindVerified(const BlockHash& hash, BlockId parent, uint32_t keys_id,
                       absl::Span<const int32_t> tokens, int64_t* collisions) const;
  PrefixMatch MatchImpl(absl::Span<const int32_t> tokens, const PrefixKeys& keys,
                        int64_t* collisions) const;
  std::optional<uint32_t> FindKeys(const std::string& bytes) const;
  uint32_t InternKeys(const std::string& bytes);
  void UnrefKeys(uint32_t keys_id);
  absl::Span<const int32_t> TokensOf(BlockId block) const;
  EvictableBlockInfo InfoOf(const Entry& e) const;
  void UpdateEvictable(BlockId block, absl::Time now);
  // Unlinks a cached leaf. The policy must already have forgotten it (not evictable).
  void RemoveLeaf(BlockId block, bool update_parent, absl::Time now);

  int32_t block_size_;
  PrefixHashFunction hash_;
  std::function<absl::Time()> clock_;
  std::unique_ptr<BlockEvictionPolicy> policy_;

  std::vector<Entry> entries_;                                       // [BlockId]
  std::vector<int32_t> tokens_;                                      // [BlockId * block_size + i]
  std::unordered_map<BlockHash, BlockId, BlockHashHasher> by_hash_;  // head of collision chain
  std::vector<KeysRecord> keys_;                                     // [keys_id]
  std::unordered_map<std::string, uint32_t> keys_by_bytes_;
  std::vector<uint32_t> free_keys_;
  mutable std::vector<uint8_t> scratch_;  // hash input

  int64_t cached_blocks_ = 0;
  int64_t evictable_blocks_ = 0;
  int64_t in_use_blocks_ = 0;  // cached blocks with users > 0
  int64_t cached_bytes_ = 0;   // bytes of the cached blocks
  int64_t in_use_bytes_ = 0;   // of which in blocks with users > 0
  PrefixIndexCounters counters_;
};

}  // namespace kvserve::engine

#endif  // KVSERVE_ENGINE_KV_PREFIX_INDEX_H_
