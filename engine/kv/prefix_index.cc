#include "engine/kv/prefix_index.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "engine/common/status_macros.h"

namespace kvserve::engine {
namespace {

void AppendU32(uint32_t v, std::string* out) {
  for (int i = 0; i < 4; ++i) out->push_back(static_cast<char>(v >> (8 * i)));
}
void AppendU64(uint64_t v, std::string* out) {
  for (int i = 0; i < 8; ++i) out->push_back(static_cast<char>(v >> (8 * i)));
}

// Length-prefixed, so that no two different key sets serialize alike.
std::string SerializeKeys(const PrefixKeys& keys) {
  std::string s;
  s.reserve(24 + keys.cache_salt.size() + keys.model.size());
  AppendU64(keys.cache_salt.size(), &s);
  s.append(keys.cache_salt);
  AppendU32(keys.layout, &s);
  AppendU64(keys.model.size(), &s);
  s.append(keys.model);
  return s;
}

absl::Span<const uint8_t> AsBytes(const std::string& s) {
  return absl::Span<const uint8_t>(reinterpret_cast<const uint8_t*>(s.data()), s.size());
}

}  // namespace

absl::string_view PrefixEvictionReasonName(PrefixEvictionReason reason) {
  switch (reason) {
    case PrefixEvictionReason::kCapacity:
      return "capacity";
    case PrefixEvictionReason::kErase:
      return "erase";
    case PrefixEvictionReason::kClear:
      return "clear";
  }
  return "unknown";
}

absl::StatusOr<std::unique_ptr<PrefixIndex>> PrefixIndex::Create(
    PrefixIndexOptions options, std::unique_ptr<BlockEvictionPolicy> policy) {
  if (options.block_size < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("prefix index block_size must be positive, got ", options.block_size));
  }
  if (policy == nullptr) return absl::InvalidArgumentError("prefix index needs an eviction policy");
  return std::unique_ptr<PrefixIndex>(new PrefixIndex(std::move(options), std::move(policy)));
}

PrefixIndex::PrefixIndex(PrefixIndexOptions options, std::unique_ptr<BlockEvictionPolicy> policy)
    : block_size_(options.block_size),
      hash_(options.hash_function ? std::move(options.hash_function)
                                  : MakePrefixHashFunction(options.hash)),
      clock_(options.clock ? std::move(options.clock)
                           : std::function<absl::Time()>([] { return absl::Now(); })),
      policy_(std::move(policy)) {
  counters_.policy = std::string(policy_->name());
}

BlockHash PrefixIndex::HashBlock(const BlockHash& parent, const BlockHash& keys_digest,
                                 absl::Span<const int32_t> tokens) const {
  // parent hash (32 bytes) | keys digest (32 bytes) | token ids (4 bytes each), little endian.
  scratch_.clear();
  auto put64 = [this](uint64_t v) {
    for (int i = 0; i < 8; ++i) scratch_.push_back(static_cast<uint8_t>(v >> (8 * i)));
  };
  for (uint64_t w : parent.words) put64(w);
  for (uint64_t w : keys_digest.words) put64(w);
  for (int32_t t : tokens) {
    const auto u = static_cast<uint32_t>(t);
    for (int i = 0; i < 4; ++i) scratch_.push_back(static_cast<uint8_t>(u >> (8 * i)));
  }
  return hash_(scratch_);
}

absl::Span<const int32_t> PrefixIndex::TokensOf(BlockId block) const {
  return absl::Span<const int32_t>(tokens_.data() + static_cast<size_t>(block) * block_size_,
                                   block_size_);
}

BlockId PrefixIndex::FindVerified(const BlockHash& hash, BlockId parent, uint32_t keys_id,
                                  absl::Span<const int32_t> tokens, int64_t* collisions) const {
  auto it = by_hash_.find(hash);
  if (it == by_hash_.end()) return kNoBlock;
  for (BlockId b = it->second; b != kNoBlock; b = entries_[b].next_same_hash) {
    const Entry& e = entries_[b];
    if (e.parent == parent && e.keys_id == keys_id && TokensOf(b) == tokens) return b;
    ++*collisions;
  }
  return kNoBlock;
}

std::optional<uint32_t> PrefixIndex::FindKeys(const std::string& bytes) const {
  auto it = keys_by_bytes_.find(bytes);
  if (it == keys_by_bytes_.end()) return std::nullopt;
  return it->second;
}

uint32_t PrefixIndex::InternKeys(const std::string& bytes) {
  if (auto id = FindKeys(bytes)) {
    ++keys_[*id].entries;
    return *id;
  }
  uint32_t id;
  if (!free_keys_.empty()) {
    id = free_keys_.back();
    free_keys_.pop_back();
  } else {
    id = static_cast<uint32_t>(keys_.size());
    keys_.emplace_back();
  }
  keys_[id] = KeysRecord{bytes, hash_(AsBytes(bytes)), 1};
  keys_by_bytes_.emplace(bytes, id);
  return id;
}

void PrefixIndex::UnrefKeys(uint32_t keys_id) {
  KeysRecord& r = keys_[keys_id];
  if (--r.entries > 0) return;
  keys_by_bytes_.erase(r.bytes);
  r = KeysRecord{};
  free_keys_.push_back(keys_id);
}

PrefixMatch PrefixIndex::MatchImpl(absl::Span<const int32_t> tokens, const PrefixKeys& keys,
                                   int64_t* collisions) const {
  PrefixMatch match;
  const std::optional<uint32_t> keys_id = FindKeys(SerializeKeys(keys));
  if (!keys_id) return match;  // nothing cached under these keys
  const BlockHash& keys_digest = keys_[*keys_id].digest;
  BlockHash parent_hash;
  BlockId parent = kNoBlock;
  for (size_t start = 0; start + block_size_ <= tokens.size(); start += block_size_) {
    const absl::Span<const int32_t> block_tokens = tokens.subspan(start, block_size_);
    const BlockHash hash = HashBlock(parent_hash, keys_digest, block_tokens);
    const BlockId found = FindVerified(hash, parent, *keys_id, block_tokens, collisions);
    if (found == kNoBlock) break;
    match.blocks.push_back(found);
    parent = found;
    parent_hash = hash;
  }
  match.matched_tokens = static_cast<int64_t>(match.blocks.size()) * block_size_;
  return match;
}

PrefixMatch PrefixIndex::Match(absl::Span<const int32_t> tokens, const PrefixKeys& keys) const {
  int64_t collisions = 0;
  return MatchImpl(tokens, keys, &collisions);
}

PrefixMatch PrefixIndex::Lookup(absl::Span<const int32_t> tokens, const PrefixKeys& keys) {
  int64_t collisions = 0;
  PrefixMatch match = MatchImpl(tokens, keys, &collisions);
  counters_.hash_collisions += collisions;
  ++counters_.queries;
  counters_.query_tokens += static_cast<int64_t>(tokens.size());
  counters_.hit_tokens += match.matched_tokens;
  counters_.hit_blocks += static_cast<int64_t>(match.blocks.size());
  const absl::Time now = Now();
  for (BlockId b : match.blocks) {
    Entry& e = entries_[b];
    ++e.hit_count;
    if (e.users++ == 0) {
      ++in_use_blocks_;
      in_use_bytes_ += e.bytes;
    }
    e.last_use = now;
    UpdateEvictable(b, now);
  }
  return match;
}

absl::StatusOr<PrefixIndex::InsertResult> PrefixIndex::Insert(BlockId block, BlockId parent,
                                                              absl::Span<const int32_t> tokens,
                                                              const PrefixKeys& keys,
                                                              const BlockRetention& retention,
                                                              int64_t bytes) {
  if (static_cast<int64_t>(tokens.size()) != block_size_) {
    return absl::InvalidArgumentError(absl::StrCat("only full blocks are cached: got ",
                                                   tokens.size(), " tokens, block_size is ",
                                                   block_size_));
  }
  if (block < 0 || parent < kNoBlock || block == parent) {
    return absl::InvalidArgumentError(absl::StrCat("bad block ", block, " / parent ", parent));
  }
  if (retention.priority < kMinRetentionPriority || retention.priority > kMaxRetentionPriority ||
      retention.duration < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("retention priority must be in [0, 100], duration >= 0");
  }
  if (Contains(block)) {
    return absl::FailedPreconditionError(absl::StrCat("block ", block, " is already cached"));
  }
  const std::string key_bytes = SerializeKeys(keys);
  BlockHash parent_hash;
  if (parent != kNoBlock) {
    if (!Contains(parent)) {
      return absl::FailedPreconditionError(absl::StrCat("parent block ", parent, " is not cached"));
    }
    if (keys_[entries_[parent].keys_id].bytes != key_bytes) {
      return absl::InvalidArgumentError("a block's keys differ from its parent's");
    }
    parent_hash = entries_[parent].hash;
  }
  const absl::Time now = Now();
  const std::optional<uint32_t> known_keys = FindKeys(key_bytes);
  const BlockHash keys_digest = known_keys ? keys_[*known_keys].digest : hash_(AsBytes(key_bytes));
  const BlockHash hash = HashBlock(parent_hash, keys_digest, tokens);
  if (known_keys) {
    int64_t collisions = 0;
    const BlockId existing = FindVerified(hash, parent, *known_keys, tokens, &collisions);
    counters_.hash_collisions += collisions;
    if (existing != kNoBlock) {
      Entry& e = entries_[existing];
      if (e.users++ == 0) {
        ++in_use_blocks_;
        in_use_bytes_ += e.bytes;
      }
      ++e.hit_count;
      e.last_use = now;
      UpdateEvictable(existing, now);
      ++counters_.dedupes;
      return InsertResult{existing, false};
    }
  }

  if (static_cast<size_t>(block) >= entries_.size()) {
    entries_.resize(static_cast<size_t>(block) + 1);
    tokens_.resize(entries_.size() * block_size_);
  }
  Entry& e = entries_[block];
  e = Entry{};
  e.cached = true;
  e.parent = parent;
  e.keys_id = InternKeys(key_bytes);
  e.users = 1;
  e.bytes = bytes;
  ++in_use_blocks_;
  in_use_bytes_ += bytes;
  cached_bytes_ += bytes;
  e.last_use = now;
  e.retention = retention;
  e.hash = hash;
  std::copy(tokens.begin(), tokens.end(),
            tokens_.begin() + static_cast<ptrdiff_t>(block) * block_size_);
  auto [head, fresh] = by_hash_.emplace(hash, block);
  if (!fresh) {
    e.next_same_hash = head->second;
    head->second = block;
  }
  ++cached_blocks_;
  ++counters_.insertions;
  if (parent != kNoBlock) {
    entries_[parent].children.push_back(block);
    UpdateEvictable(parent, now);
  }
  return InsertResult{block, true};
}

bool PrefixIndex::Acquire(BlockId block) {
  if (!Contains(block)) return false;
  const absl::Time now = Now();
  Entry& e = entries_[block];
  if (e.users++ == 0) {
    ++in_use_blocks_;
    in_use_bytes_ += e.bytes;
  }
  e.last_use = now;
  UpdateEvictable(block, now);
  return true;
}

bool PrefixIndex::Release(BlockId block) {
  if (!Contains(block)) return false;
  const absl::Time now = Now();
  Entry& e = entries_[block];
  KVSERVE_CHECK(e.users > 0) << "release of cached block " << block << " that has no users";
  if (--e.users == 0) {
    --in_use_blocks_;
    in_use_bytes_ -= e.bytes;
  }
  e.last_use = now;
  UpdateEvictable(block, now);
  return true;
}

absl::Status PrefixIndex::SetRetention(BlockId block, const BlockRetention& retention) {
  if (!Contains(block)) return absl::NotFoundError(absl::StrCat("block ", block, " not cached"));
  if (retention.priority < kMinRetentionPriority || retention.priority > kMaxRetentionPriority ||
      retention.duration < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("retention priority must be in [0, 100], duration >= 0");
  }
  Entry& e = entries_[block];
  e.retention = retention;
  if (e.evictable) {  // re-rank under the new hint
    const absl::Time now = Now();
    policy_->OnNotEvictable(block);
    policy_->OnEvictable(block, InfoOf(e), now);
  }
  return absl::OkStatus();
}

EvictableBlockInfo PrefixIndex::InfoOf(const Entry& e) const {
  EvictableBlockInfo info;
  info.last_use = e.last_use;
  info.hit_count = e.hit_count;
  info.priority = e.retention.priority;
  // The hint's window starts when the last user released the block.
  info.priority_expiry = e.retention.priority == kDefaultRetentionPriority
                             ? absl::InfiniteFuture()
                             : e.last_use + e.retention.duration;
  return info;
}

void PrefixIndex::UpdateEvictable(BlockId block, absl::Time now) {
  Entry& e = entries_[block];
  const bool evictable = e.cached && e.users == 0 && e.children.empty();
  if (evictable == e.evictable) return;
  e.evictable = evictable;
  if (evictable) {
    ++evictable_blocks_;
    policy_->OnEvictable(block, InfoOf(e), now);
  } else {
    --evictable_blocks_;
    policy_->OnNotEvictable(block);
  }
}

void PrefixIndex::RemoveLeaf(BlockId block, bool update_parent, absl::Time now) {
  Entry& e = entries_[block];
  KVSERVE_CHECK(e.cached && e.children.empty() && !e.evictable) << "block " << block;
  auto head = by_hash_.find(e.hash);
  KVSERVE_CHECK(head != by_hash_.end()) << "block " << block << " missing from the hash table";
  if (head->second == block) {
    if (e.next_same_hash == kNoBlock) {
      by_hash_.erase(head);
    } else {
      head->second = e.next_same_hash;
    }
  } else {
    BlockId prev = head->second;
    while (entries_[prev].next_same_hash != block) prev = entries_[prev].next_same_hash;
    entries_[prev].next_same_hash = e.next_same_hash;
  }
  const BlockId parent = e.parent;
  if (parent != kNoBlock) {
    std::vector<BlockId>& siblings = entries_[parent].children;
    siblings.erase(std::find(siblings.begin(), siblings.end(), block));
  }
  UnrefKeys(e.keys_id);
  if (e.users > 0) {
    --in_use_blocks_;
    in_use_bytes_ -= e.bytes;
  }
  cached_bytes_ -= e.bytes;
  e = Entry{};
  --cached_blocks_;
  if (update_parent && parent != kNoBlock) UpdateEvictable(parent, now);
}

std::optional<BlockId> PrefixIndex::EvictOne() {
  const absl::Time now = Now();
  const std::optional<BlockId> victim = policy_->PickVictim(now);
  if (!victim) return std::nullopt;
  KVSERVE_CHECK(Contains(*victim) && entries_[*victim].evictable)
      << "policy " << policy_->name() << " picked block " << *victim << ", which is not evictable";
  entries_[*victim].evictable = false;
  --evictable_blocks_;
  RemoveLeaf(*victim, /*update_parent=*/true, now);
  ++counters_.evictions[static_cast<int>(PrefixEvictionReason::kCapacity)];
  return victim;
}

std::vector<BlockId> PrefixIndex::Clear() {
  std::vector<BlockId> freed;
  const absl::Time now = Now();
  while (const std::optional<BlockId> victim = policy_->PickVictim(now)) {
    KVSERVE_CHECK(Contains(*victim) && entries_[*victim].evictable) << "block " << *victim;
    entries_[*victim].evictable = false;
    --evictable_blocks_;
    RemoveLeaf(*victim, /*update_parent=*/true, now);
    freed.push_back(*victim);
  }
  counters_.evictions[static_cast<int>(PrefixEvictionReason::kClear)] +=
      static_cast<int64_t>(freed.size());
  return freed;
}

std::vector<BlockId> PrefixIndex::Erase(BlockId block) {
  std::vector<BlockId> removed;
  if (!Contains(block)) return removed;
  // Post-order walk of the subtree: children before their parent.
  std::vector<std::pair<BlockId, size_t>> stack = {{block, 0}};
  while (!stack.empty()) {
    const BlockId b = stack.back().first;
    const size_t next = stack.back().second;
    if (next < entries_[b].children.size()) {
      ++stack.back().second;
      stack.emplace_back(entries_[b].children[next], 0);
    } else {
      removed.push_back(b);
      stack.pop_back();
    }
  }
  const absl::Time now = Now();
  for (BlockId b : removed) {
    Entry& e = entries_[b];
    if (e.evictable) {
      policy_->OnNotEvictable(b);
      e.evictable = false;
      --evictable_blocks_;
    }
    RemoveLeaf(b, /*update_parent=*/b == block, now);
  }
  counters_.evictions[static_cast<int>(PrefixEvictionReason::kErase)] +=
      static_cast<int64_t>(removed.size());
  return removed;
}

bool PrefixIndex::Contains(BlockId block) const {
  return block >= 0 && static_cast<size_t>(block) < entries_.size() && entries_[block].cached;
}

bool PrefixIndex::IsEvictable(BlockId block) const {
  return Contains(block) && entries_[block].evictable;
}

std::optional<PrefixEntryInfo> PrefixIndex::Find(BlockId block) const {
  if (!Contains(block)) return std::nullopt;
  const Entry& e = entries_[block];
  PrefixEntryInfo info;
  info.parent = e.parent;
  info.hash = e.hash;
  info.num_children = static_cast<int32_t>(e.children.size());
  info.users = e.users;
  info.evictable = e.evictable;
  info.last_use = e.last_use;
  info.hit_count = e.hit_count;
  info.retention = e.retention;
  return info;
}

}  // namespace kvserve::engine
