// GPU kernel benchmark: paged decode attention (head_dim 128, 8 KV heads, 32 query heads,
// batch 64, contexts 8K and 32K) in fp16 / int8 / int4 (and fp8 / nvfp4), quantize-on-write of
// fp16 blocks into the quantized formats, and a device-to-device copy that measures the memory
// bandwidth of the same device in the same run. Timed with CUDA events; prints the median of the
// repetitions and the bandwidth as a share of the copy's.
//
// Usage: gpu_kernels_bench [--quick]   (--quick: batch 8, fewer repetitions; a smoke run)
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/kv_quantize.h"
#include "kernels/cuda/kv_quantize.h"
#include "kernels/cuda/paged_attention.h"
#include "kernels/cuda/runtime.h"
#include "kernels/kv_format.h"

namespace {

using namespace kvserve::kernels;  // NOLINT: a benchmark's main file

#define CHECK_CUDA(expr)                                                                          \
  do {                                                                                            \
    const cudaError_t e_ = (expr);                                                                \
    if (e_ != cudaSuccess) {                                                                      \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #expr, cudaGetErrorString(e_)); \
      std::exit(1);                                                                               \
    }                                                                                             \
  } while (0)

struct Options {
  int batch = 64;
  int reps = 10;
};

// Median milliseconds of `reps` runs of fn (after two warm-up runs), timed with CUDA events.
template <class Fn>
double MedianMs(int reps, Fn&& fn) {
  cudaEvent_t start, stop;
  CHECK_CUDA(cudaEventCreate(&start));
  CHECK_CUDA(cudaEventCreate(&stop));
  for (int i = 0; i < 2; ++i) fn();
  CHECK_CUDA(cudaDeviceSynchronize());
  std::vector<double> ms;
  for (int i = 0; i < reps; ++i) {
    CHECK_CUDA(cudaEventRecord(start));
    fn();
    CHECK_CUDA(cudaEventRecord(stop));
    CHECK_CUDA(cudaEventSynchronize(stop));
    float t = 0.0f;
    CHECK_CUDA(cudaEventElapsedTime(&t, start, stop));
    ms.push_back(t);
  }
  CHECK_CUDA(cudaEventDestroy(start));
  CHECK_CUDA(cudaEventDestroy(stop));
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

struct Row {
  std::string kernel, format, shape;
  double ms, bytes;
};
std::vector<Row> rows;

double CopyBandwidth(const Options& o) {
  const size_t bytes = size_t{2} << 30;  // 2 GiB each way
  void *a, *b;
  CHECK_CUDA(cudaMalloc(&a, bytes));
  CHECK_CUDA(cudaMalloc(&b, bytes));
  CHECK_CUDA(cudaMemset(a, 1, bytes));
  const double ms =
      MedianMs(o.reps, [&] { CHECK_CUDA(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice)); });
  CHECK_CUDA(cudaFree(a));
  CHECK_CUDA(cudaFree(b));
  rows.push_back({"d2d copy", "-", "2 GiB", ms, 2.0 * bytes});  // read + write
  return 2.0 * bytes / (ms * 1e6);
}

constexpr int kBlock = 16, kKvHeads = 8, kHeadDim = 128, kHeads = 32;

// Host bytes of `distinct` blocks in format f (K then V), encoded by the CPU from random data.
std::vector<uint8_t> SampleBlocks(KvFormat f, int distinct, int64_t block_bytes,
                                  KvLayerRegion* region) {
  const KvRegionShape s{kBlock, kKvHeads, kHeadDim};
  region->format = f;
  region->k_offset = 0;
  region->v_offset = static_cast<uint32_t>(KvRegionBytes(f, KvRole::kKey, s));
  std::vector<uint8_t> out(static_cast<size_t>(distinct * block_bytes), 0);
  std::mt19937 rng(7);
  std::normal_distribution<float> n01(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(kBlock) * kKvHeads * kHeadDim);
  for (int b = 0; b < distinct; ++b) {
    for (int role = 0; role < 2; ++role) {
      for (float& v : x) v = n01(rng);
      const uint32_t off = role == 0 ? region->k_offset : region->v_offset;
      if (!cpu::QuantizeKvRegion(f, role == 0 ? KvRole::kKey : KvRole::kValue, x.data(), s, kBlock,
                                 out.data() + b * block_bytes + off)) {
        std::fprintf(stderr, "encoding the sample blocks failed\n");
        std::exit(1);
      }
    }
  }
  return out;
}

void DecodeAttention(const Options& o, KvFormat f, int context) {
  const KvRegionShape s{kBlock, kKvHeads, kHeadDim};
  const int64_t block_bytes = KvLayerBytes(f, s);
  const int blocks_per_seq = context / kBlock;
  const int64_t num_blocks = int64_t{o.batch} * blocks_per_seq;
  KvLayerRegion region;
  const int distinct = 64;
  const std::vector<uint8_t> sample = SampleBlocks(f, distinct, block_bytes, &region);
  uint8_t* pool;
  CHECK_CUDA(cudaMalloc(&pool, num_blocks * block_bytes));
  for (int64_t b = 0; b < num_blocks; b += distinct) {
    const int64_t n = std::min<int64_t>(distinct, num_blocks - b);
    CHECK_CUDA(
        cudaMemcpy(pool + b * block_bytes, sample.data(), n * block_bytes, cudaMemcpyHostToDevice));
  }
  std::vector<uint8_t*> ptrs(num_blocks);
  for (int64_t b = 0; b < num_blocks; ++b) ptrs[b] = pool + b * block_bytes;
  // Sequences own scattered blocks, as a pool does after a while.
  std::vector<int32_t> ids(num_blocks);
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), std::mt19937(3));
  std::vector<uint16_t> layout(num_blocks, 0);
  uint8_t** d_ptrs;
  uint16_t* d_layout;
  KvLayerRegion* d_region;
  int32_t* d_ids;
  const int32_t** d_tables;
  CHECK_CUDA(cudaMalloc(&d_ptrs, num_blocks * sizeof(uint8_t*)));
  CHECK_CUDA(cudaMalloc(&d_layout, num_blocks * sizeof(uint16_t)));
  CHECK_CUDA(cudaMalloc(&d_region, sizeof(KvLayerRegion)));
  CHECK_CUDA(cudaMalloc(&d_ids, num_blocks * sizeof(int32_t)));
  CHECK_CUDA(cudaMalloc(&d_tables, o.batch * sizeof(int32_t*)));
  CHECK_CUDA(
      cudaMemcpy(d_ptrs, ptrs.data(), num_blocks * sizeof(uint8_t*), cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(d_layout, layout.data(), num_blocks * 2, cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(d_region, &region, sizeof(region), cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(d_ids, ids.data(), num_blocks * 4, cudaMemcpyHostToDevice));
  std::vector<const int32_t*> tables(o.batch);
  for (int i = 0; i < o.batch; ++i) tables[i] = d_ids + int64_t{i} * blocks_per_seq;
  CHECK_CUDA(
      cudaMemcpy(d_tables, tables.data(), o.batch * sizeof(int32_t*), cudaMemcpyHostToDevice));
  std::vector<int32_t> seq(o.batch), len(o.batch, context);
  std::iota(seq.begin(), seq.end(), 0);
  int32_t *d_seq, *d_len;
  float *d_q, *d_out;
  CHECK_CUDA(cudaMalloc(&d_seq, o.batch * 4));
  CHECK_CUDA(cudaMalloc(&d_len, o.batch * 4));
  CHECK_CUDA(cudaMemcpy(d_seq, seq.data(), o.batch * 4, cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(d_len, len.data(), o.batch * 4, cudaMemcpyHostToDevice));
  const size_t qn = size_t{1} * o.batch * kHeads * kHeadDim;
  std::vector<float> q(qn);
  std::mt19937 rng(5);
  std::normal_distribution<float> n01(0.0f, 1.0f);
  for (float& v : q) v = n01(rng);
  CHECK_CUDA(cudaMalloc(&d_q, qn * 4));
  CHECK_CUDA(cudaMalloc(&d_out, qn * 4));
  CHECK_CUDA(cudaMemcpy(d_q, q.data(), qn * 4, cudaMemcpyHostToDevice));
  cuda::AttentionBatch batch;
  batch.num_tokens = o.batch;
  batch.num_heads = kHeads;
  batch.q = d_q;
  batch.out = d_out;
  batch.token_seq = d_seq;
  batch.token_kv_len = d_len;
  batch.seq_block_tables = d_tables;
  batch.scale = 1.0f / std::sqrt(static_cast<float>(kHeadDim));
  batch.max_kv_len = context;
  batch.workspace_bytes =
      cuda::PagedAttentionWorkspaceBytes(o.batch, kHeads, kHeadDim, kBlock, context);
  CHECK_CUDA(cudaMalloc(&batch.workspace, std::max<int64_t>(batch.workspace_bytes, 1)));
  const PagedKvLayerView view{d_ptrs, d_layout, d_region, s};
  const double ms = MedianMs(o.reps, [&] { cuda::PagedAttention(batch, view, nullptr); });
  std::vector<float> out(qn);
  CHECK_CUDA(cudaMemcpy(out.data(), d_out, qn * 4, cudaMemcpyDeviceToHost));
  for (float v : out) {
    if (!std::isfinite(v)) {
      std::fprintf(stderr, "decode attention produced a non-finite output\n");
      std::exit(1);
    }
  }
  // Bytes that must be read: every block once (the head tiles of a KV head share it via L2).
  const double bytes = static_cast<double>(num_blocks) * block_bytes + 2.0 * qn * 4;
  char shape[64];
  std::snprintf(shape, sizeof(shape), "b%d ctx %dK", o.batch, context / 1024);
  rows.push_back({"decode attention", std::string(KvFormatName(f)), shape, ms, bytes});
  for (void* p :
       {static_cast<void*>(pool), static_cast<void*>(d_ptrs), static_cast<void*>(d_layout),
        static_cast<void*>(d_region), static_cast<void*>(d_ids), static_cast<void*>(d_tables),
        static_cast<void*>(d_seq), static_cast<void*>(d_len), static_cast<void*>(d_q),
        static_cast<void*>(d_out), batch.workspace}) {
    CHECK_CUDA(cudaFree(p));
  }
}

// fp16 regions (hd 128, 8 KV heads, block 16) re-encoded into format f: bytes read + written.
void QuantizeOnWrite(const Options& o, KvFormat f) {
  const KvRegionShape s{kBlock, kKvHeads, kHeadDim};
  const int64_t count = int64_t{o.batch} * 512;  // 32768 regions (1 GiB of fp16) at batch 64
  const int64_t src_bytes = KvRegionBytes(KvFormat::kFp16, KvRole::kValue, s);
  const int64_t dst_bytes = KvRegionBytes(f, KvRole::kValue, s);
  std::vector<uint8_t> sample(static_cast<size_t>(64 * src_bytes));
  std::mt19937 rng(9);
  std::normal_distribution<float> n01(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(kBlock) * kKvHeads * kHeadDim);
  for (int r = 0; r < 64; ++r) {
    for (float& v : x) v = n01(rng);
    cpu::QuantizeKvRegion(KvFormat::kFp16, KvRole::kValue, x.data(), s, kBlock,
                          sample.data() + r * src_bytes);
  }
  uint8_t *src, *dst, *ok;
  int32_t* tokens;
  CHECK_CUDA(cudaMalloc(&src, count * src_bytes));
  CHECK_CUDA(cudaMalloc(&dst, count * dst_bytes));
  CHECK_CUDA(cudaMalloc(&ok, count));
  CHECK_CUDA(cudaMalloc(&tokens, count * 4));
  for (int64_t r = 0; r < count; r += 64) {
    CHECK_CUDA(
        cudaMemcpy(src + r * src_bytes, sample.data(), 64 * src_bytes, cudaMemcpyHostToDevice));
  }
  std::vector<int32_t> tok(count, kBlock);
  CHECK_CUDA(cudaMemcpy(tokens, tok.data(), count * 4, cudaMemcpyHostToDevice));
  cuda::KvRegionRefs in, out;
  in.base = src;
  in.stride = src_bytes;
  out.base = dst;
  out.stride = dst_bytes;
  for (KvRole role : {KvRole::kKey, KvRole::kValue}) {
    const double ms = MedianMs(o.reps, [&] {
      cuda::ConvertKvRegions(KvFormat::kFp16, in, f, role, s, tokens, out, count, ok, nullptr);
    });
    std::vector<uint8_t> okh(count);
    CHECK_CUDA(cudaMemcpy(okh.data(), ok, count, cudaMemcpyDeviceToHost));
    if (std::count(okh.begin(), okh.end(), 1) != count) {
      std::fprintf(stderr, "quantize-on-write refused a region\n");
      std::exit(1);
    }
    rows.push_back({std::string("quantize-on-write ") + (role == KvRole::kKey ? "K" : "V"),
                    "fp16->" + std::string(KvFormatName(f)), std::to_string(count) + " regions", ms,
                    static_cast<double>(count) * static_cast<double>(src_bytes + dst_bytes)});
  }
  for (void* p : {static_cast<void*>(src), static_cast<void*>(dst), static_cast<void*>(ok),
                  static_cast<void*>(tokens)}) {
    CHECK_CUDA(cudaFree(p));
  }
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--quick") == 0) {
      o.batch = 8;
      o.reps = 3;
    } else {
      std::fprintf(stderr, "usage: %s [--quick]\n", argv[0]);
      return 2;
    }
  }
  std::string no_device;
  if (cuda::DeviceCount(&no_device) == 0) {
    std::printf("%s: nothing to measure\n", no_device.c_str());
    return 0;
  }
  cuda::DeviceInfo info;
  std::string error;
  if (!cuda::QueryDevice(0, &info, &error)) {
    std::fprintf(stderr, "%s\n", error.c_str());
    return 1;
  }
  std::printf("device: %s (sm_%d, %d SMs, %.1f GiB)\n", info.name.c_str(), info.compute_capability,
              info.multiprocessors, info.total_bytes / 1073741824.0);
  const double copy_gbs = CopyBandwidth(o);
  for (int context : {8192, 32768}) {
    for (KvFormat f :
         {KvFormat::kFp16, KvFormat::kInt8, KvFormat::kInt4, KvFormat::kFp8, KvFormat::kNvfp4}) {
      DecodeAttention(o, f, context);
    }
  }
  for (KvFormat f : {KvFormat::kInt8, KvFormat::kInt4, KvFormat::kFp8, KvFormat::kNvfp4}) {
    QuantizeOnWrite(o, f);
  }
  std::printf("\n%-22s %-12s %-16s %10s %10s %8s\n", "kernel", "format", "shape", "median ms",
              "GB/s", "of copy");
  double fp16_32k = 0.0, int4_32k = 0.0;
  for (const Row& r : rows) {
    const double gbs = r.bytes / (r.ms * 1e6);
    std::printf("%-22s %-12s %-16s %10.3f %10.1f %7.1f%%\n", r.kernel.c_str(), r.format.c_str(),
                r.shape.c_str(), r.ms, gbs, 100.0 * gbs / copy_gbs);
    if (r.kernel == "decode attention" && r.shape.find("32K") != std::string::npos) {
      if (r.format == "fp16") fp16_32k = r.ms;
      if (r.format == "int4") int4_32k = r.ms;
    }
  }
  if (int4_32k > 0.0) {
    std::printf("\nint4 vs fp16 decode attention at 32K: %.2fx faster\n", fp16_32k / int4_32k);
  }
  return 0;
}
