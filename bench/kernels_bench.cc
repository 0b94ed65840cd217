// Micro-benchmarks of the CPU kernels.
//
//   kernels_bench --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
//
// MatMul at the stories260K projection shapes and at 768 x 768; paged-attention decode at
// head_dim 128 (8 KV heads, 32 query heads) over 4K and 32K tokens in each KV format, reporting
// the K/V bytes read per second (scales included) and the time relative to FP16 (x_fp16, FP16
// timed in the same iterations) next to this machine's memory bandwidth (memcpy and a read-only
// sweep); encoding a block into each format; and the kernel work of one stories260K decode step.
#include <benchmark/benchmark.h>
#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <numeric>
#include <random>
#include <vector>

#include "kernels/cpu/kv_quantize.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/paged_attention.h"
#include "kernels/cpu/thread_pool.h"
#include "kernels/dtype.h"
#include "kernels/kv_format.h"

namespace kvserve::kernels::cpu {
namespace {

std::vector<float> RandomFloats(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = dist(rng);
  return v;
}

ThreadPool* Pool(int threads) {
  static ThreadPool* pools[3] = {nullptr, new ThreadPool(1), new ThreadPool(2)};
  return pools[std::clamp(threads, 1, 2)];
}

// A weight matrix in F32 or F16.
struct Weights {
  std::vector<float> f32;
  std::vector<uint16_t> f16;
  WeightView view;

  Weights(DType dtype, int64_t rows, int64_t cols, uint32_t seed) {
    f32 = RandomFloats(rows * cols, seed);
    if (dtype != DType::kF32) {
      f16.resize(f32.size());
      for (size_t i = 0; i < f32.size(); ++i) {
        f16[i] = dtype == DType::kF16 ? FloatToFp16(f32[i]) : FloatToBf16(f32[i]);
      }
    }
    view =
        WeightView{dtype, dtype == DType::kF32 ? static_cast<const void*>(f32.data()) : f16.data(),
                   rows, cols};
  }
};

// Args: rows, cols, n, dtype, threads. BM_MatMul runs the row-major paths, BM_MatMulPanels the
// panel layout the model packs its weights into (PackWeightPanels).
void RunMatMul(benchmark::State& state, bool panels) {
  const int64_t rows = state.range(0);
  const int64_t cols = state.range(1);
  const int64_t n = state.range(2);
  const auto dtype = static_cast<DType>(state.range(3));
  ThreadPool* pool = Pool(static_cast<int>(state.range(4)));
  const Weights w(dtype, rows, cols, 1);
  WeightView view = w.view;
  std::vector<float> packed;
  if (panels) {
    packed.resize(WeightPanelBytes(view) / sizeof(float) + 1);
    PackWeightPanels(view, packed.data());
    view.panels = packed.data();
  }
  const std::vector<float> x = RandomFloats(n * cols, 2);
  std::vector<float> y(static_cast<size_t>(n * rows));
  for (auto _ : state) {
    MatMul(x.data(), n, view, y.data(), pool);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(state.iterations() * n * rows * cols);  // multiply-adds
  state.SetBytesProcessed(state.iterations() * rows * cols * DTypeBytes(dtype));
  state.SetLabel(std::string(DTypeName(dtype)));
}
void BM_MatMul(benchmark::State& state) { RunMatMul(state, false); }
void BM_MatMulPanels(benchmark::State& state) { RunMatMul(state, true); }
void MatMulShapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"rows", "cols", "n", "dtype", "threads"})
      ->Args({64, 64, 1, 0, 1})
      ->Args({172, 64, 1, 0, 1})
      ->Args({64, 172, 1, 0, 1})
      ->Args({512, 64, 1, 0, 1})
      ->Args({64, 64, 16, 0, 1})  // n = 16: one thread's half of a 32-sequence step
      ->Args({172, 64, 16, 0, 1})
      ->Args({64, 172, 16, 0, 1})
      ->Args({64, 64, 32, 0, 1})
      ->Args({64, 64, 32, 0, 2})
      ->Args({172, 64, 32, 0, 1})
      ->Args({172, 64, 32, 0, 2})
      ->Args({64, 172, 32, 0, 2})
      ->Args({512, 64, 32, 0, 2})
      ->Args({768, 768, 1, 0, 1})
      ->Args({768, 768, 1, 0, 2})
      ->Args({768, 768, 1, 1, 1})
      ->Args({768, 768, 1, 1, 2})
      ->Args({768, 768, 1, 2, 2})
      ->Args({768, 768, 32, 0, 1})
      ->Args({768, 768, 32, 0, 2})
      ->Args({768, 768, 32, 1, 2})
      ->Args({768, 768, 32, 1, 1})
      ->Args({2048, 768, 1, 1, 2})
      ->Args({2048, 768, 32, 1, 2})
      ->Args({2048, 2048, 1, 1, 2});
}
BENCHMARK(BM_MatMul)->Apply(MatMulShapes);
BENCHMARK(BM_MatMulPanels)->Apply(MatMulShapes);

constexpr int64_t kHugePage = int64_t{2} << 20;

// A paged KV cache for one layer holding `seqs` sequences of `ctx` tokens in one format, its
// blocks in shuffled order within one arena.
struct BenchCache {
  KvRegionShape shape;
  KvLayerRegion region;
  std::unique_ptr<uint8_t, decltype(&std::free)> arena{nullptr, &std::free};
  std::vector<uint8_t*> block_ptrs;
  std::vector<uint16_t> layouts;
  std::vector<std::vector<int32_t>> tables;
  std::vector<const int32_t*> table_ptrs;
  int64_t kv_bytes_per_token = 0;  // K and V bytes of one token over all KV heads

  BenchCache(KvFormat format, int block_size, int kv_heads, int head_dim, int seqs, int ctx) {
    shape = KvRegionShape{block_size, kv_heads, head_dim};
    region.format = format;
    region.k_offset = 0;
    region.v_offset = static_cast<uint32_t>(KvRegionBytes(format, KvRole::kKey, shape));
    const int64_t block_bytes = KvLayerBytes(format, shape);
    const int blocks_per_seq = (ctx + block_size - 1) / block_size;
    const int64_t num_blocks = static_cast<int64_t>(blocks_per_seq) * seqs;
    // A block pool would ask for huge pages the same way: 4 KiB pages put a TLB miss on nearly
    // every block of a long context.
    const size_t arena_bytes = AlignUp(num_blocks * block_bytes, kHugePage);
    arena.reset(static_cast<uint8_t*>(std::aligned_alloc(kHugePage, arena_bytes)));
    madvise(arena.get(), arena_bytes, MADV_HUGEPAGE);
    for (int64_t b = 0; b < num_blocks; ++b) block_ptrs.push_back(arena.get() + b * block_bytes);
    layouts.assign(num_blocks, 0);
    std::vector<int32_t> ids(num_blocks);
    std::iota(ids.begin(), ids.end(), 0);
    std::shuffle(ids.begin(), ids.end(), std::mt19937(5));
    tables.resize(seqs);
    for (int s = 0; s < seqs; ++s) {
      tables[s].assign(ids.begin() + static_cast<int64_t>(s) * blocks_per_seq,
                       ids.begin() + static_cast<int64_t>(s + 1) * blocks_per_seq);
      table_ptrs.push_back(tables[s].data());
    }
    kv_bytes_per_token = KvLayerBytes(format, shape) / block_size;  // scales included
    // Fill through WriteKv, one block-sized batch of tokens at a time (formats that encode
    // whole blocks: through QuantizeKvRegion).
    const std::vector<float> k =
        RandomFloats(static_cast<int64_t>(block_size) * kv_heads * head_dim, 3);
    std::vector<int32_t> slot_block(block_size), slot_off(block_size);
    for (int64_t b = 0; !KvFormatTokenWritable(format) && b < num_blocks; ++b) {
      QuantizeKvRegion(format, KvRole::kKey, k.data(), shape, block_size, block_ptrs[b]);
      QuantizeKvRegion(format, KvRole::kValue, k.data(), shape, block_size,
                       block_ptrs[b] + region.v_offset);
    }
    for (int64_t b = 0; KvFormatTokenWritable(format) && b < num_blocks; ++b) {
      for (int i = 0; i < block_size; ++i) {
        slot_block[i] = static_cast<int32_t>(b);
        slot_off[i] = i;
      }
      WriteKv(k.data(), k.data(), block_size, slot_block.data(), slot_off.data(), view());
    }
  }

  PagedKvLayerView view() const {
    PagedKvLayerView v;
    v.block_data = block_ptrs.data();
    v.block_layout = layouts.data();
    v.regions = &region;
    v.shape = shape;
    return v;
  }
};

void RunDecode(benchmark::State& state, KvFormat format, int block_size, int kv_heads, int heads,
               int head_dim, int seqs, int ctx, int threads) {
  const BenchCache cache(format, block_size, kv_heads, head_dim, seqs, ctx);
  const std::vector<float> q = RandomFloats(static_cast<int64_t>(seqs) * heads * head_dim, 4);
  std::vector<float> out(q.size());
  std::vector<int32_t> token_seq(seqs), kv_len(seqs, ctx);
  std::iota(token_seq.begin(), token_seq.end(), 0);
  AttentionBatch batch;
  batch.num_tokens = seqs;
  batch.num_heads = heads;
  batch.q = q.data();
  batch.out = out.data();
  batch.token_seq = token_seq.data();
  batch.token_kv_len = kv_len.data();
  batch.seq_block_tables = cache.table_ptrs.data();
  batch.scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  ThreadPool* pool = Pool(threads);
  // FP16 at the same shape runs after each iteration, outside the measured time, so that the
  // ratio x_fp16 compares the two under the same machine load (a shared machine drifts).
  std::unique_ptr<BenchCache> fp16;
  if (format != KvFormat::kFp16 && head_dim == 128) {
    fp16 = std::make_unique<BenchCache>(KvFormat::kFp16, block_size, kv_heads, head_dim, seqs, ctx);
  }
  AttentionBatch fp16_batch = batch;
  if (fp16) fp16_batch.seq_block_tables = fp16->table_ptrs.data();
  double seconds = 0.0, fp16_seconds = 0.0;
  auto timed = [&](const AttentionBatch& b, const BenchCache& c) {
    const auto start = std::chrono::steady_clock::now();
    PagedAttention(b, c.view(), pool);
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };
  for (auto _ : state) {
    seconds += timed(batch, cache);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
    if (fp16) {
      state.PauseTiming();
      fp16_seconds += timed(fp16_batch, *fp16);
      state.ResumeTiming();
    }
  }
  state.SetBytesProcessed(state.iterations() * seqs * static_cast<int64_t>(ctx) *
                          cache.kv_bytes_per_token);
  state.SetItemsProcessed(state.iterations() * seqs);  // decoded tokens
  state.SetLabel(std::string(KvFormatName(format)));
  if (fp16) state.counters["x_fp16"] = seconds / fp16_seconds;
}

// Args: context, format, threads. head_dim 128, 8 KV heads, 32 query heads, one sequence.
void BM_AttentionDecode(benchmark::State& state) {
  RunDecode(state, static_cast<KvFormat>(state.range(1)), 16, 8, 32, 128, 1,
            static_cast<int>(state.range(0)), static_cast<int>(state.range(2)));
}
BENCHMARK(BM_AttentionDecode)
    ->ArgNames({"ctx", "fmt", "threads"})
    ->ArgsProduct({{4096, 32768}, {0, 1, 2, 3, 4, 5, 6, 7}, {2}})
    ->ArgsProduct({{64, 512}, {0, 1, 2}, {1}})
    ->Args({32768, 0, 1})
    ->Args({32768, 1, 1})
    ->UseRealTime();

// Encoding one block of K and V (16 tokens, 8 KV heads, head_dim 128) into each format: WriteKv
// token by token for the token-writable formats, QuantizeKvRegion of the whole block (what
// demotion does) for the others. Arg: format.
void BM_KvEncodeBlock(benchmark::State& state) {
  const auto format = static_cast<KvFormat>(state.range(0));
  const KvRegionShape shape{16, 8, 128};
  const int64_t floats = int64_t{16} * 8 * 128;
  std::vector<float> k = RandomFloats(floats, 6), v = RandomFloats(floats, 7);
  for (int64_t i = 0; i < floats; ++i) k[i] += static_cast<float>(i % 128) * 0.05f;
  std::vector<uint8_t> block(KvLayerBytes(format, shape));
  uint8_t* block_ptr = block.data();
  const uint16_t layout = 0;
  const KvLayerRegion region{format, 0,
                             static_cast<uint32_t>(KvRegionBytes(format, KvRole::kKey, shape))};
  PagedKvLayerView view;
  view.block_data = &block_ptr;
  view.block_layout = &layout;
  view.regions = &region;
  view.shape = shape;
  std::vector<int32_t> slot_block(16, 0), slot_off(16);
  std::iota(slot_off.begin(), slot_off.end(), 0);
  for (auto _ : state) {
    if (KvFormatTokenWritable(format)) {
      for (int t = 0; t < 16; ++t) {
        WriteKv(k.data() + t * 8 * 128, v.data() + t * 8 * 128, 1, &slot_block[t], &slot_off[t],
                view);
      }
    } else {
      QuantizeKvRegion(format, KvRole::kKey, k.data(), shape, 16, block.data());
      QuantizeKvRegion(format, KvRole::kValue, v.data(), shape, 16, block.data() + region.v_offset);
    }
    benchmark::DoNotOptimize(block.data());
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(state.iterations() * 16);              // tokens
  state.SetBytesProcessed(state.iterations() * 2 * floats * 4);  // float input
  state.SetLabel(std::string(KvFormatName(format)));
}
BENCHMARK(BM_KvEncodeBlock)->ArgName("fmt")->DenseRange(0, static_cast<int>(KvFormat::kInt2));

// stories260K shape (head_dim 8, 4 KV heads, 8 query heads); Args: seqs, ctx, threads.
void BM_AttentionDecodeStories(benchmark::State& state) {
  RunDecode(state, KvFormat::kFp32, 16, 4, 8, 8, static_cast<int>(state.range(0)),
            static_cast<int>(state.range(1)), static_cast<int>(state.range(2)));
}
BENCHMARK(BM_AttentionDecodeStories)
    ->ArgNames({"seqs", "ctx", "threads"})
    ->Args({1, 256, 1})
    ->Args({1, 512, 1})
    ->Args({32, 256, 1})
    ->Args({32, 256, 2})
    ->UseRealTime();

// Cost of one ParallelFor hand-off with (almost) no work: the fixed price a kernel pays to use
// the pool. Arg: threads.
void BM_ThreadPoolHandoff(benchmark::State& state) {
  ThreadPool* pool = Pool(static_cast<int>(state.range(0)));
  std::atomic<int64_t> sink{0};
  for (auto _ : state) {
    pool->ParallelFor(2, 1, [s = &sink](int64_t b, int64_t e) {
      s->fetch_add(e - b, std::memory_order_relaxed);
    });
  }
  benchmark::DoNotOptimize(sink.load());
}
BENCHMARK(BM_ThreadPoolHandoff)->Arg(1)->Arg(2)->UseRealTime();

constexpr int64_t kStreamBytes = int64_t{512} << 20;  // far beyond the 32 MiB L3

void BM_Memcpy(benchmark::State& state) {
  std::vector<uint8_t> src(kStreamBytes, 1), dst(kStreamBytes, 0);
  for (auto _ : state) {
    std::memcpy(dst.data(), src.data(), kStreamBytes);
    benchmark::ClobberMemory();
  }
  // Bytes copied; the memory traffic is twice that (read + write).
  state.SetBytesProcessed(state.iterations() * kStreamBytes);
}
BENCHMARK(BM_Memcpy)->UseRealTime()->MinTime(1.0);

// Read-only sweep over the same size (what attention does to the KV cache), on 1 or 2 threads.
void BM_ReadBandwidth(benchmark::State& state) {
  const int threads = static_cast<int>(state.range(0));
  std::vector<float> buf(kStreamBytes / sizeof(float), 1.0f);
  ThreadPool* pool = Pool(threads);
  struct Args {
    const float* data;
    float sums[2][16];
  } args{buf.data(), {}};
  const int64_t n = static_cast<int64_t>(buf.size());
  for (auto _ : state) {
    pool->ParallelFor(threads, 1, [a = &args, n, threads](int64_t b, int64_t) {
      float acc[16] = {};
      const int64_t begin = n / threads * b;
      const int64_t end = b + 1 == threads ? n : n / threads * (b + 1);
      for (int64_t i = begin; i + 16 <= end; i += 16) {
        for (int k = 0; k < 16; ++k) acc[k] += a->data[i + k];
      }
      std::memcpy(a->sums[b], acc, sizeof(acc));
    });
    benchmark::DoNotOptimize(args.sums);
  }
  state.SetBytesProcessed(state.iterations() * kStreamBytes);
}
BENCHMARK(BM_ReadBandwidth)->Arg(1)->Arg(2)->UseRealTime()->MinTime(1.0);

// The same read-only sweep done as fast as this machine reads: 2 MiB-aligned memory advised as
// huge pages, four independent 16-float accumulators (no add chain limits the loads) and a
// software prefetch 16 KiB ahead of every 64 bytes read (as the quantized weight kernels do).
// The reference for "fraction of the read bandwidth" figures: the larger of the two sweeps.
void BM_ReadBandwidthPrefetched(benchmark::State& state) {
  const int threads = static_cast<int>(state.range(0));
  constexpr size_t kHuge = size_t{2} << 20;
  auto* data = static_cast<float*>(std::aligned_alloc(kHuge, kStreamBytes));
  madvise(data, kStreamBytes, MADV_HUGEPAGE);
  const int64_t n = kStreamBytes / static_cast<int64_t>(sizeof(float));
  std::fill(data, data + n, 1.0f);
  ThreadPool* pool = Pool(threads);
  struct Args {
    const float* data;
    float sums[2][16];
  } args{data, {}};
  for (auto _ : state) {
    pool->ParallelFor(threads, 1, [a = &args, n, threads](int64_t b, int64_t) {
      float acc[4][16] = {};
      const int64_t begin = n / threads * b;
      const int64_t end = b + 1 == threads ? n : n / threads * (b + 1);
      for (int64_t i = begin; i + 64 <= end; i += 64) {
#if defined(__x86_64__)
        for (int k = 0; k < 4; ++k) {
          __builtin_prefetch(a->data + i + 16 * k + 4096, 0, 2);
        }
#endif
        for (int r = 0; r < 4; ++r) {
          for (int k = 0; k < 16; ++k) acc[r][k] += a->data[i + 16 * r + k];
        }
      }
      for (int k = 0; k < 16; ++k) a->sums[b][k] = acc[0][k] + acc[1][k] + acc[2][k] + acc[3][k];
    });
    benchmark::DoNotOptimize(args.sums);
  }
  std::free(data);
  state.SetBytesProcessed(state.iterations() * kStreamBytes);
}
BENCHMARK(BM_ReadBandwidthPrefetched)->Arg(1)->Arg(2)->UseRealTime()->MinTime(1.0);

// FP16 decode attention's KV read rate against the machine's memory bandwidth, measured side by
// side in every iteration: one PagedAttention call over `ctx` tokens (head_dim 128, 8 KV heads,
// 32 query heads, one sequence) on `threads` threads, one 512 MiB memcpy (bytes copied per
// second) and one read-only sweep of 512 MiB on the same threads. Counters (bytes per second):
// attn_Bps, memcpy_Bps, read_Bps, and the ratios attn_vs_memcpy and attn_vs_read. Only the
// attention call is timed by the framework, so each iteration costs ~10x its reported time.
// Args: context, threads.
void BM_Fp16AttentionVsBandwidth(benchmark::State& state) {
  const int ctx = static_cast<int>(state.range(0));
  const int threads = static_cast<int>(state.range(1));
  const BenchCache cache(KvFormat::kFp16, 16, 8, 128, 1, ctx);
  const std::vector<float> q = RandomFloats(32 * 128, 4);
  std::vector<float> out(q.size());
  int32_t token_seq = 0, kv_len = ctx;
  AttentionBatch batch;
  batch.num_tokens = 1;
  batch.num_heads = 32;
  batch.q = q.data();
  batch.out = out.data();
  batch.token_seq = &token_seq;
  batch.token_kv_len = &kv_len;
  batch.seq_block_tables = cache.table_ptrs.data();
  batch.scale = 1.0f / std::sqrt(128.0f);
  ThreadPool* pool = Pool(threads);
  std::vector<uint8_t> src(kStreamBytes, 1), dst(kStreamBytes, 0);
  const float* data = reinterpret_cast<const float*>(src.data());
  const int64_t n = kStreamBytes / static_cast<int64_t>(sizeof(float));
  float sums[2][16] = {};
  using Clock = std::chrono::steady_clock;
  auto since = [](Clock::time_point t) {
    return std::chrono::duration<double>(Clock::now() - t).count();
  };
  double attn_s = 0, copy_s = 0, read_s = 0;
  for (auto _ : state) {
    auto t0 = Clock::now();
    PagedAttention(batch, cache.view(), pool);
    attn_s += since(t0);
    benchmark::DoNotOptimize(out.data());
    state.PauseTiming();
    t0 = Clock::now();
    std::memcpy(dst.data(), src.data(), kStreamBytes);
    benchmark::ClobberMemory();
    copy_s += since(t0);
    t0 = Clock::now();
    pool->ParallelFor(threads, 1, [&](int64_t b, int64_t) {
      float acc[16] = {};
      const int64_t begin = n / threads * b;
      const int64_t end = b + 1 == threads ? n : n / threads * (b + 1);
      for (int64_t i = begin; i + 16 <= end; i += 16) {
        for (int k = 0; k < 16; ++k) acc[k] += data[i + k];
      }
      std::memcpy(sums[b], acc, sizeof(acc));
    });
    benchmark::DoNotOptimize(sums);
    read_s += since(t0);
    state.ResumeTiming();
  }
  const double iters = static_cast<double>(state.iterations());
  const double attn_bytes = static_cast<double>(ctx) * cache.kv_bytes_per_token * iters;
  const double stream_bytes = static_cast<double>(kStreamBytes) * iters;
  state.counters["attn_Bps"] = attn_bytes / attn_s;
  state.counters["memcpy_Bps"] = stream_bytes / copy_s;
  state.counters["read_Bps"] = stream_bytes / read_s;
  state.counters["attn_vs_memcpy"] = (attn_bytes / attn_s) / (stream_bytes / copy_s);
  state.counters["attn_vs_read"] = (attn_bytes / attn_s) / (stream_bytes / read_s);
}
BENCHMARK(BM_Fp16AttentionVsBandwidth)
    ->ArgNames({"ctx", "threads"})
    ->Args({32768, 1})
    ->Args({32768, 2})
    ->UseRealTime()
    ->MinTime(0.5);

// Every kernel call of one stories260K decode step (5 layers, context 256, one sequence), as the
// forward pass issues them: the kernel floor of single-sequence decode.
void BM_Stories260KDecodeStep(benchmark::State& state) {
  constexpr int kDim = 64, kHidden = 172, kLayers = 5, kHeads = 8, kKvHeads = 4, kHeadDim = 8;
  constexpr int kVocab = 512, kCtx = 256;
  const Weights wq(DType::kF32, kDim, kDim, 1), wk(DType::kF32, kKvHeads * kHeadDim, kDim, 2),
      wv(DType::kF32, kKvHeads * kHeadDim, kDim, 3), wo(DType::kF32, kDim, kDim, 4),
      w1(DType::kF32, kHidden, kDim, 5), w2(DType::kF32, kDim, kHidden, 6),
      w3(DType::kF32, kHidden, kDim, 7), emb(DType::kF32, kVocab, kDim, 8);
  const std::vector<float> norm(kDim, 1.0f);
  const BenchCache cache(KvFormat::kFp32, 16, kKvHeads, kHeadDim, 1, kCtx);
  std::vector<float> x(kDim), xb(kDim), q(kDim), k(kKvHeads * kHeadDim), v(kKvHeads * kHeadDim),
      att(kDim), hb(kHidden), hb2(kHidden), logits(kVocab);
  int32_t token = 5, pos = kCtx - 1, seq = 0, kv_len = kCtx;
  const int32_t slot_block = cache.tables[0].back(), slot_off = (kCtx - 1) % 16;
  AttentionBatch batch;
  batch.num_tokens = 1;
  batch.num_heads = kHeads;
  batch.q = q.data();
  batch.out = att.data();
  batch.token_seq = &seq;
  batch.token_kv_len = &kv_len;
  batch.seq_block_tables = cache.table_ptrs.data();
  batch.scale = 1.0f / std::sqrt(static_cast<float>(kHeadDim));
  ThreadPool* pool = Pool(static_cast<int>(state.range(0)));
  for (auto _ : state) {
    EmbeddingGather(emb.view, &token, 1, x.data());
    for (int l = 0; l < kLayers; ++l) {
      RmsNorm(x.data(), norm.data(), 1, kDim, 1e-5f, xb.data());
      MatMul(xb.data(), 1, wq.view, q.data(), pool);
      MatMul(xb.data(), 1, wk.view, k.data(), pool);
      MatMul(xb.data(), 1, wv.view, v.data(), pool);
      RopeAdjacentPairs(q.data(), &pos, 1, kHeads, kHeadDim, 10000.0f);
      RopeAdjacentPairs(k.data(), &pos, 1, kKvHeads, kHeadDim, 10000.0f);
      WriteKv(k.data(), v.data(), 1, &slot_block, &slot_off, cache.view());
      PagedAttention(batch, cache.view(), pool);
      MatMul(att.data(), 1, wo.view, xb.data(), pool);
      AddInPlace(x.data(), xb.data(), kDim);
      RmsNorm(x.data(), norm.data(), 1, kDim, 1e-5f, xb.data());
      MatMul(xb.data(), 1, w1.view, hb.data(), pool);
      MatMul(xb.data(), 1, w3.view, hb2.data(), pool);
      SwiGlu(hb.data(), hb2.data(), kHidden, hb.data());
      MatMul(hb.data(), 1, w2.view, xb.data(), pool);
      AddInPlace(x.data(), xb.data(), kDim);
    }
    RmsNorm(x.data(), norm.data(), 1, kDim, 1e-5f, x.data());
    MatMul(x.data(), 1, emb.view, logits.data(), pool);
    benchmark::DoNotOptimize(logits.data());
  }
  state.SetItemsProcessed(state.iterations());  // tokens
}
BENCHMARK(BM_Stories260KDecodeStep)->Arg(1)->Arg(2);

// Cost of accumulating attention scores for token eviction (AttentionBatch::seq_scores): the
// same decode attention timed with and without the score output, alternately in each iteration
// so both see the same machine load; x_plain = time with scores / time without.
// Args: shape (0: stories260K, head_dim 8, 4 KV / 8 query heads, 32 sequences; 1: head_dim 128,
// 8 KV / 32 query heads, 1 sequence), ctx, threads.
void BM_AttentionScoresOverhead(benchmark::State& state) {
  const bool big = state.range(0) == 1;
  const int kv_heads = big ? 8 : 4;
  const int heads = big ? 32 : 8, head_dim = big ? 128 : 8;
  const int seqs = big ? 1 : 32;
  const int ctx = static_cast<int>(state.range(1));
  const BenchCache cache(KvFormat::kFp16, 16, kv_heads, head_dim, seqs, ctx);
  const std::vector<float> q = RandomFloats(static_cast<int64_t>(seqs) * heads * head_dim, 4);
  std::vector<float> out(q.size());
  std::vector<int32_t> token_seq(seqs), kv_len(seqs, ctx);
  std::iota(token_seq.begin(), token_seq.end(), 0);
  std::vector<std::vector<float>> scores(seqs, std::vector<float>(ctx, 0.0f));
  std::vector<float*> score_ptrs;
  for (auto& v : scores) score_ptrs.push_back(v.data());
  AttentionBatch batch;
  batch.num_tokens = seqs;
  batch.num_heads = heads;
  batch.q = q.data();
  batch.out = out.data();
  batch.token_seq = token_seq.data();
  batch.token_kv_len = kv_len.data();
  batch.seq_block_tables = cache.table_ptrs.data();
  batch.scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  AttentionBatch scored = batch;
  scored.seq_scores = score_ptrs.data();
  ThreadPool* pool = Pool(static_cast<int>(state.range(2)));
  double with = 0.0, without = 0.0;
  auto timed = [&](const AttentionBatch& b) {
    const auto start = std::chrono::steady_clock::now();
    PagedAttention(b, cache.view(), pool);
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };
  for (auto _ : state) {
    with += timed(scored);
    benchmark::DoNotOptimize(out.data());
    state.PauseTiming();
    without += timed(batch);
    state.ResumeTiming();
  }
  state.SetItemsProcessed(state.iterations() * seqs);
  state.counters["x_plain"] = with / without;
}
BENCHMARK(BM_AttentionScoresOverhead)
    ->ArgNames({"shape", "ctx", "threads"})
    ->Args({0, 128, 1})
    ->Args({0, 512, 1})
    ->Args({1, 4096, 1})
    ->UseRealTime();

}  // namespace
}  // namespace kvserve::kernels::cpu

BENCHMARK_MAIN();
