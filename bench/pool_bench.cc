// KV pool and prefix cache micro-benchmarks (Google Benchmark): the cost per operation of block
// allocate and free (per format), cached-block eviction (per policy), and prefix insert and
// lookup (per hash). The geometry is the 110m shape's (12 layers, 12 KV heads, head_dim 64,
// 16-token blocks). Items/s in the output are operations (blocks) per second.
//
//   build/bench/pool_bench --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
#include <memory>
#include <string>
#include <vector>

#include "benchmark/benchmark.h"
#include "engine/kv/block_pool.h"
#include "engine/kv/eviction/block_eviction_policy.h"
#include "engine/kv/prefix_index.h"
#include "kernels/kv_format.h"

namespace kvserve::engine {
namespace {

constexpr int kBlockSize = 16;
constexpr int kBatch = 1024;  // blocks per timed batch

KvGeometry Geometry() { return KvGeometry{12, 12, 64, kBlockSize}; }

kernels::KvFormat FormatArg(int64_t i) { return static_cast<kernels::KvFormat>(i); }

// A pool with room for kBatch blocks of `format` whose bytes are already allocated once (the
// steady state of a server: freed blocks keep their bytes for reuse).
struct WarmPool {
  explicit WarmPool(kernels::KvFormat format) {
    KvGeometry g = Geometry();
    auto probe = std::make_unique<BlockPool>(g, int64_t{1} << 40);
    const int64_t block_bytes = probe->layout(*probe->RegisterUniformLayout(format)).block_bytes;
    pool = std::make_unique<BlockPool>(g, block_bytes * kBatch);
    layout = *pool->RegisterUniformLayout(format);
    ids.resize(kBatch);
    for (BlockId& id : ids) id = *pool->Allocate(layout);
    for (BlockId id : ids) pool->Release(id);
  }
  std::unique_ptr<BlockPool> pool;
  LayoutId layout = 0;
  std::vector<BlockId> ids;
};

void BM_BlockAllocate(benchmark::State& state) {
  const kernels::KvFormat format = FormatArg(state.range(0));
  WarmPool w(format);
  for (auto _ : state) {
    for (BlockId& id : w.ids) id = *w.pool->Allocate(w.layout);
    state.PauseTiming();
    for (BlockId id : w.ids) w.pool->Release(id);
    state.ResumeTiming();
  }
  state.SetItemsProcessed(state.iterations() * kBatch);
  state.SetLabel(std::string(kernels::KvFormatName(format)));
}

void BM_BlockFree(benchmark::State& state) {
  const kernels::KvFormat format = FormatArg(state.range(0));
  WarmPool w(format);
  for (auto _ : state) {
    state.PauseTiming();
    for (BlockId& id : w.ids) id = *w.pool->Allocate(w.layout);
    state.ResumeTiming();
    for (BlockId id : w.ids) w.pool->Release(id);
  }
  state.SetItemsProcessed(state.iterations() * kBatch);
  state.SetLabel(std::string(kernels::KvFormatName(format)));
}

void FormatArgs(benchmark::internal::Benchmark* b) {
  for (kernels::KvFormat f : {kernels::KvFormat::kFp32, kernels::KvFormat::kFp16,
                              kernels::KvFormat::kInt8, kernels::KvFormat::kInt4}) {
    b->Arg(static_cast<int64_t>(f));
  }
}
BENCHMARK(BM_BlockAllocate)->Apply(FormatArgs);
BENCHMARK(BM_BlockFree)->Apply(FormatArgs);

std::vector<int32_t> Tokens(int64_t n, int32_t salt) {
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) t[i] = static_cast<int32_t>((i * 7919 + salt * 104729) % 32000);
  return t;
}

std::unique_ptr<PrefixIndex> NewIndex(const std::string& policy, PrefixHashAlgorithm hash) {
  PrefixIndexOptions options;
  options.block_size = kBlockSize;
  options.hash = hash;
  return *PrefixIndex::Create(options, *CreateBlockEvictionPolicy(policy));
}

// Caches `blocks` blocks as `chains` chains (sequences) of equal length, ids from 0; releases the
// sequences' use so that leaves are evictable when `release` is set.
void Fill(PrefixIndex& index, int chains, int blocks_per_chain, bool release) {
  BlockId next = 0;
  for (int c = 0; c < chains; ++c) {
    const std::vector<int32_t> tokens = Tokens(int64_t{blocks_per_chain} * kBlockSize, c);
    BlockId parent = kNoBlock;
    std::vector<BlockId> used;
    for (int b = 0; b < blocks_per_chain; ++b) {
      auto r = index.Insert(next++, parent,
                            absl::MakeConstSpan(tokens).subspan(b * kBlockSize, kBlockSize), {});
      parent = r->block;
      used.push_back(r->block);
    }
    if (release) {
      for (BlockId id : used) index.Release(id);
    }
  }
}

PrefixHashAlgorithm HashArg(int64_t i) { return static_cast<PrefixHashAlgorithm>(i); }
std::string HashName(int64_t i) { return std::string(PrefixHashAlgorithmName(HashArg(i))); }

void BM_PrefixInsert(benchmark::State& state) {
  for (auto _ : state) {
    state.PauseTiming();
    auto index = NewIndex("lru", HashArg(state.range(0)));
    state.ResumeTiming();
    Fill(*index, kBatch / 64, 64, false);  // 16 sequences of 64 blocks (1,024 tokens)
    state.PauseTiming();
    index.reset();
    state.ResumeTiming();
  }
  state.SetItemsProcessed(state.iterations() * kBatch);
  state.SetLabel(HashName(state.range(0)));
}

// Lookup of a 1,024-token prompt whose 64 blocks are all cached (plus release of the claim).
void BM_PrefixLookupHit(benchmark::State& state) {
  auto index = NewIndex("lru", HashArg(state.range(0)));
  Fill(*index, 16, 64, true);
  const std::vector<int32_t> prompt = Tokens(64 * kBlockSize, 5);
  for (auto _ : state) {
    PrefixMatch m = index->Lookup(prompt, {});
    for (BlockId id : m.blocks) index->Release(id);
    benchmark::DoNotOptimize(m.matched_tokens);
  }
  state.SetItemsProcessed(state.iterations() * 64);
  state.SetLabel(HashName(state.range(0)));
}

// Lookup of a prompt that misses at its first block (one hash, one probe).
void BM_PrefixLookupMiss(benchmark::State& state) {
  auto index = NewIndex("lru", HashArg(state.range(0)));
  Fill(*index, 16, 64, true);
  const std::vector<int32_t> prompt = Tokens(64 * kBlockSize, 999);
  for (auto _ : state) {
    PrefixMatch m = index->Lookup(prompt, {});
    benchmark::DoNotOptimize(m.matched_tokens);
  }
  state.SetItemsProcessed(state.iterations());
  state.SetLabel(HashName(state.range(0)));
}

void HashArgs(benchmark::internal::Benchmark* b) {
  for (PrefixHashAlgorithm h : {PrefixHashAlgorithm::kXxh3_128, PrefixHashAlgorithm::kXxh64,
                                PrefixHashAlgorithm::kSha256}) {
    b->Arg(static_cast<int64_t>(h));
  }
}
BENCHMARK(BM_PrefixInsert)->Apply(HashArgs);
BENCHMARK(BM_PrefixLookupHit)->Apply(HashArgs);
BENCHMARK(BM_PrefixLookupMiss)->Apply(HashArgs);

// EvictOne on an index of 1,024 idle cached blocks (64 chains of 16), until empty.
void BM_BlockEvict(benchmark::State& state, const std::string& policy) {
  for (auto _ : state) {
    state.PauseTiming();
    auto index = NewIndex(policy, PrefixHashAlgorithm::kXxh3_128);
    Fill(*index, kBatch / 16, 16, true);
    state.ResumeTiming();
    int64_t evicted = 0;
    while (index->EvictOne().has_value()) ++evicted;
    state.PauseTiming();
    if (evicted != kBatch) state.SkipWithError("did not evict every block");
    index.reset();
    state.ResumeTiming();
  }
  state.SetItemsProcessed(state.iterations() * kBatch);
}
BENCHMARK_CAPTURE(BM_BlockEvict, lru, std::string("lru"));
BENCHMARK_CAPTURE(BM_BlockEvict, slru, std::string("slru"));
BENCHMARK_CAPTURE(BM_BlockEvict, priority, std::string("priority"));

}  // namespace
}  // namespace kvserve::engine

BENCHMARK_MAIN();
