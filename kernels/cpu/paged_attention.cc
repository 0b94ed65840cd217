// Paged attention on the CPU: checks, the choice of item runner and the split of work items over
// the pool (see paged_attention_internal.h for the runners), and WriteKv.
#include "kernels/cpu/paged_attention.h"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <vector>

#include "kernels/cpu/check.h"
#include "kernels/cpu/kv_codec.h"
#include "kernels/cpu/kv_quantize.h"
#include "kernels/cpu/paged_attention_internal.h"

namespace kvserve::kernels::cpu {
namespace {

using attention::Arena;
using attention::Problem;

// Multiply-adds (kv slots * query heads * head_dim) below which attention stays on one thread.
constexpr int64_t kMinParallelWork = int64_t{1} << 15;

using ItemRunner = void (*)(const Problem&, int64_t, int, int, Arena&);

// KV heads per work item: as many as a runner pass holds (long sequential reads), but few enough
// that every thread gets an item.
int KvHeadsPerItem(const Problem& pr, int64_t num_tokens, int threads) {
  const int hkv = pr.num_kv_heads;
  int heads = std::clamp(attention::kMaxItemHeads / pr.group, 1, hkv);
  while (heads > 1 && num_tokens * ((hkv + heads - 1) / heads) < threads) heads = (heads + 1) / 2;
  return heads;
}

// True when two work items running at once may add to the same sequence's scores: more than
// one item for some sequence that wants scores.
bool SharedScores(const AttentionBatch& b, int items_per_token) {
  if (b.seq_scores == nullptr) return false;
  int32_t max_seq = 0;
  for (int64_t t = 0; t < b.num_tokens; ++t) max_seq = std::max(max_seq, b.token_seq[t]);
  std::vector<uint8_t> seen(static_cast<size_t>(max_seq) + 1, 0);
  for (int64_t t = 0; t < b.num_tokens; ++t) {
    const int32_t s = b.token_seq[t];
    if (b.seq_scores[s] == nullptr) continue;
    if (seen[s] || items_per_token > 1) return true;
    seen[s] = 1;
  }
  return false;
}

using TokensRunner = void (*)(const Problem&, int64_t, int64_t, int, int, Arena&);

// The runners of one call and the arena bytes they need: item_bytes(pr, kv_len) for items over up
// to kv_len slots (nullptr: none), tokens_bytes(pr, tokens) for runs of up to `tokens` tokens.
struct Runners {
  ItemRunner item;
  size_t (*item_bytes)(const Problem&, int);
  TokensRunner tokens;  // nullptr: every item is one token
  size_t (*tokens_bytes)(const Problem&, int);
};

// The arenas of the participants of the calls made from this thread.
std::vector<Arena>& CallerArenas() {
  thread_local std::vector<Arena> arenas;
  return arenas;
}

// Tokens of one sequence that share decoded blocks in one work item (prefill chunks).
constexpr int kRunTokens = 16;

// Work items are (run of tokens, KV heads): a run is one token, or up to kRunTokens consecutive
// tokens of one sequence when `run_tokens` can take them (then each block is decoded once per run).
void RunItems(Problem pr, const Runners& runners, ThreadPool* pool) {
  const AttentionBatch& b = *pr.batch;
  int64_t kv_slots = 0;
  int max_kv_len = 0;
  for (int64_t t = 0; t < b.num_tokens; ++t) {
    kv_slots += b.token_kv_len[t];
    max_kv_len = std::max(max_kv_len, b.token_kv_len[t]);
  }
  const int64_t work = kv_slots * b.num_heads * pr.head_dim;
  const bool parallel = pool != nullptr && pool->num_threads() > 1 && work >= kMinParallelWork;
  // runs[r] .. runs[r + 1]: the tokens of run r.
  thread_local std::vector<int64_t> runs;
  runs.clear();
  const bool group_runs = runners.tokens != nullptr && pr.cache->key_basis == nullptr &&
                          pr.group <= attention::kMaxItemHeads;
  int64_t max_run = 1;
  for (int64_t t = 0; t < b.num_tokens; ++t) {
    const int32_t s = b.token_seq[t];
    const bool joins = group_runs && t > 0 && b.token_seq[t - 1] == s &&
                       t - runs.back() < kRunTokens &&
                       (b.seq_scores == nullptr || b.seq_scores[s] == nullptr);
    if (!joins) runs.push_back(t);
    max_run = std::max(max_run, t + 1 - runs.back());
  }
  runs.push_back(b.num_tokens);
  const int64_t num_runs = static_cast<int64_t>(runs.size()) - 1;
  const int participants = parallel ? pool->num_threads() : 1;
  const int per_item = KvHeadsPerItem(pr, num_runs, participants);
  const int items_per_token = (pr.num_kv_heads + per_item - 1) / per_item;
  const int64_t items = num_runs * items_per_token;
  pr.shared_scores = parallel && items > 1 && SharedScores(b, items_per_token);

  // Every participant's arena holds the largest item or run of this call before any starts.
  size_t arena_bytes = 0;
  if (runners.item_bytes != nullptr) arena_bytes = runners.item_bytes(pr, max_kv_len);
  if (max_run > 1) {
    arena_bytes = std::max(arena_bytes, runners.tokens_bytes(pr, static_cast<int>(max_run)));
  }
  std::vector<Arena>& arenas = CallerArenas();
  if (static_cast<int>(arenas.size()) < participants) arenas.resize(participants);
  for (int i = 0; i < participants; ++i) arenas[i].Reserve(arena_bytes);

  struct Shared {
    const Problem* pr;
    const Runners* runners;
    const int64_t* runs;
    Arena* arenas;
    int per_item;
    int items_per_token;
    int64_t items;
    std::atomic<int64_t> next{0};

    void Run(int64_t i, Arena& arena) const {
      const int g0 = static_cast<int>(i % items_per_token) * per_item;
      const int g1 = std::min(pr->num_kv_heads, g0 + per_item);
      const int64_t r = i / items_per_token;
      if (runs[r + 1] - runs[r] == 1) {
        runners->item(*pr, runs[r], g0, g1, arena);
      } else {
        runners->tokens(*pr, runs[r], runs[r + 1], g0, g1, arena);
      }
    }
  } shared{&pr, &runners, runs.data(), arenas.data(), per_item, items_per_token, items};
  if (!parallel || items == 1) {
    for (int64_t i = 0; i < items; ++i) shared.Run(i, arenas[0]);
    return;
  }
  // Items differ in length (prefill tokens see growing prefixes), so threads take them one at a
  // time from a shared counter. Chunks of the ParallelFor are the participants: chunk c, and no
  // other chunk running at the same time, works in arena c.
  pool->ParallelFor(participants, 1, [s = &shared](int64_t c, int64_t) {
    Arena& arena = s->arenas[c];
    for (;;) {
      const int64_t i = s->next.fetch_add(1, std::memory_order_relaxed);
      if (i >= s->items) return;
      s->Run(i, arena);
    }
  });
}

}  // namespace

bool WriteKv(const float* k, const float* v, int64_t num_tokens, const int32_t* slot_block,
             const int32_t* slot_offset, const PagedKvLayerView& cache) {
  const KvRegionShape& shape = cache.shape;
  const int64_t row = static_cast<int64_t>(shape.num_kv_heads) * shape.head_dim;
  bool ok = true;
  for (int64_t t = 0; t < num_tokens; ++t) {
    const int32_t phys = slot_block[t];
    const int off = slot_offset[t];
    KVSERVE_KERNEL_CHECK(off >= 0 && off < shape.block_size, "WriteKv: slot offset out of range");
    const KvLayerRegion& region = cache.regions[cache.block_layout[phys]];
    uint8_t* base = cache.block_data[phys];
    if (!KvFormatTokenWritable(region.format)) {
      // A whole block in one run: gather it as [num_kv_heads][block_size][head_dim] and encode.
      const int bs = shape.block_size;
      KVSERVE_KERNEL_CHECK(off == 0 && t + bs <= num_tokens,
                           "WriteKv: a block in a whole-block format must be written whole");
      for (int j = 1; j < bs; ++j) {
        KVSERVE_KERNEL_CHECK(slot_block[t + j] == phys && slot_offset[t + j] == j,
                             "WriteKv: a block in a whole-block format must be written whole");
      }
      thread_local std::vector<float> gk, gv;
      gk.resize(static_cast<size_t>(bs) * row);
      gv.resize(gk.size());
      for (int g = 0; g < shape.num_kv_heads; ++g) {
        for (int j = 0; j < bs; ++j) {
          const int64_t src = (t + j) * row + static_cast<int64_t>(g) * shape.head_dim;
          const size_t dst = (static_cast<size_t>(g) * bs + j) * shape.head_dim;
          std::copy(k + src, k + src + shape.head_dim, gk.data() + dst);
          std::copy(v + src, v + src + shape.head_dim, gv.data() + dst);
        }
      }
      ok &= QuantizeKvRegion(region.format, KvRole::kKey, gk.data(), shape, bs,
                             base + region.k_offset, cache.key_basis);
      ok &= QuantizeKvRegion(region.format, KvRole::kValue, gv.data(), shape, bs,
                             base + region.v_offset);
      t += bs - 1;
      continue;
    }
    DispatchKvFormat(region.format, [&](auto codec) {
      using Codec = decltype(codec);
      for (int g = 0; g < shape.num_kv_heads; ++g) {
        Codec::WriteRow(base + region.k_offset, shape, g, off, k + t * row + g * shape.head_dim);
        Codec::WriteRow(base + region.v_offset, shape, g, off, v + t * row + g * shape.head_dim);
      }
    });
  }
  return ok;
}

void PagedAttention(const AttentionBatch& batch, const PagedKvLayerView& cache, ThreadPool* pool) {
  if (batch.num_tokens <= 0) return;
  const KvRegionShape& shape = cache.shape;
  KVSERVE_KERNEL_CHECK(shape.head_dim > 0 && shape.head_dim <= attention::kMaxHeadDim,
                       "PagedAttention: head_dim must be in [1, 256]");
  KVSERVE_KERNEL_CHECK(shape.num_kv_heads > 0 && batch.num_heads % shape.num_kv_heads == 0,
                       "PagedAttention: num_heads must be a multiple of num_kv_heads");
  const Problem pr{&batch, &cache, shape.head_dim, shape.num_kv_heads,
                   batch.num_heads / shape.num_kv_heads};
  Runners runners{attention::RunItemWide, nullptr, attention::RunTokensWide,
                  attention::RunTokensArenaBytes};
  // The head_dim 8 runner has no projected-query path: views with lowrank blocks use the others.
  if (shape.head_dim == 8 && attention::HasHeadDim8Runner() && cache.key_basis == nullptr) {
    runners = Runners{attention::RunItemHeadDim8, attention::HeadDim8ArenaBytes, nullptr, nullptr};
  } else if (shape.head_dim <= simd::VecNarrow::kLanes) {
    runners.item = attention::RunItemNarrow;
    runners.tokens = attention::RunTokensNarrow;
  }
  RunItems(pr, runners, pool);
}

}  // namespace kvserve::kernels::cpu
