#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/kv_quantize.h"
#include "kernels/cuda/ops.h"
#include "kernels/cuda/paged_attention.h"
#include "kernels/cuda/runtime.h"

namespace kvserve::kernels::cuda {
namespace {

constexpr int kThreads = 256;
// Largest head_dim of the rope table (as on the CPU).
constexpr int kMaxRopeHeadDim = 1024;

unsigned GridFor(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(std::min<int64_t>(blocks, 65535 * 16));
}

// cos_sin[t][i] = (cos, sin) of positions[t] * inv_freq[i], computed in double as on the CPU.
struct RopeFreqs {
  double inv_freq[kMaxRopeHeadDim / 2];
};

__global__ void RopeTableKernel(const int32_t* positions, int64_t n, int pairs,
                                const RopeFreqs* freqs, const float* freq_factors,
                                float attn_factor, float* cos_sin) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n * pairs;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = i / pairs;
    const int p = static_cast<int>(i % pairs);
    double inv = freqs->inv_freq[p];
    if (freq_factors != nullptr) inv /= freq_factors[p];
    const double angle = static_cast<double>(positions[t]) * inv;
    cos_sin[2 * i] = static_cast<float>(cos(angle) * attn_factor);
    cos_sin[2 * i + 1] = static_cast<float>(sin(angle) * attn_factor);
  }
}

// x [n, num_heads, head_dim] rotated by the table: one thread per (token, head, pair). Pair p
// is (2p, 2p + 1), or (p, p + head_dim / 2) with `neox`.
__global__ void RopeApplyKernel(float* x, const float* cos_sin, int64_t n, int num_heads,
                                int head_dim, bool neox) {
  const int pairs = head_dim / 2;
  const int64_t total = n * num_heads * pairs;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int p = static_cast<int>(i % pairs);
    const int64_t th = i / pairs;  // token * num_heads + head
    const int64_t t = th / num_heads;
    const float c = cos_sin[(t * pairs + p) * 2];
    const float s = cos_sin[(t * pairs + p) * 2 + 1];
    float* xh = x + th * head_dim;
    const int i0 = neox ? p : 2 * p;
    const int i1 = neox ? p + pairs : 2 * p + 1;
    const float a = xh[i0], b = xh[i1];
    // Products rounded before the sum, as the CPU op computes them.
    xh[i0] = __fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s));
    xh[i1] = __fadd_rn(__fmul_rn(a, s), __fmul_rn(b, c));
  }
}

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(Gemm gemm) : gemm_(std::move(gemm)) {
    // Allocations come from the device's stream-ordered memory pool, which keeps freed memory
    // for reuse (release threshold: never): a KV block allocated in a step, or a scratch buffer
    // regrown, costs no cudaMalloc and no device synchronization once the pool has grown.
    int device = 0;
    cudaMemPool_t pool = nullptr;
    if (cudaGetDevice(&device) == cudaSuccess &&
        cudaDeviceGetDefaultMemPool(&pool, device) == cudaSuccess) {
      uint64_t keep = UINT64_MAX;
      cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep);
      pooled_ = true;
    }
  }
  ~CudaBackend() override {
    if (workspace_ != nullptr) cudaFree(workspace_);
    if (convert_ != nullptr) cudaFree(convert_);
    if (freqs_ != nullptr) cudaFree(freqs_);
  }

  std::string_view name() const override { return "cuda"; }

  bool host_memory() const override { return false; }
  void* Alloc(int64_t bytes) override {
    void* p = nullptr;
    const size_t size = static_cast<size_t>(std::max<int64_t>(bytes, 1));
    // Ordered on the legacy default stream, which every op and copy here uses.
    const cudaError_t err = pooled_ ? cudaMallocAsync(&p, size, nullptr) : cudaMalloc(&p, size);
    if (err != cudaSuccess) {
      cudaGetLastError();  // an out-of-memory result is the caller's to report, not sticky
      return nullptr;
    }
    return p;
  }
  void Free(void* p) override {
    if (p == nullptr) return;
    if (pooled_) {
      cudaFreeAsync(p, nullptr);
    } else {
      cudaFree(p);
    }
  }
  void CopyIn(void* dst, const void* host_src, int64_t bytes) override {
    if (bytes > 0) {
      KVSERVE_CUDA_CHECK(
          cudaMemcpy(dst, host_src, static_cast<size_t>(bytes), cudaMemcpyHostToDevice));
    }
  }
  void CopyOut(void* host_dst, const void* src, int64_t bytes) override {
    if (bytes > 0) {
      KVSERVE_CUDA_CHECK(
          cudaMemcpy(host_dst, src, static_cast<size_t>(bytes), cudaMemcpyDeviceToHost));
    }
  }
  bool Synchronize(std::string* error) override { return cuda::Synchronize(nullptr, error); }
  int64_t FreeMemoryBytes() const override {
    size_t free_bytes = 0, total_bytes = 0;
    if (cudaMemGetInfo(&free_bytes, &total_bytes) != cudaSuccess) return -1;
    return static_cast<int64_t>(free_bytes);
  }

  bool SupportsWeight(DType t) const override { return !IsQuantized(t); }
  bool SupportsKvRead(KvFormat f) const override { return f != KvFormat::kLowrank; }
  bool SupportsKvWrite(KvFormat f) const override { return KvFormatTokenWritable(f); }

  int64_t PreparedWeightBytes(const WeightView& w) const override { return 0; }
  void PrepareWeight(WeightView* w, void* storage) const override {}

  void MatMul(const float* x, int64_t n, const WeightView& w, float* y,
              const ExecContext& ctx) override {
    gemm_.MatMul(x, n, w, y, StreamOf(ctx));
  }
  void EmbeddingGather(const WeightView& table, const int32_t* ids, int64_t n, float* out,
                       const ExecContext& ctx) override {
    cuda::EmbeddingGather(table, ids, n, out, StreamOf(ctx));
  }
  void RmsNorm(const float* x, const float* weight, int64_t n, int64_t dim, float eps, float* out,
               const ExecContext& ctx) override {
    cuda::RmsNorm(x, weight, n, dim, eps, out, StreamOf(ctx));
  }
  void RopeTable(const int32_t* positions, int64_t n, const RopeParams& rope, float* cos_sin,
                 const ExecContext& ctx) override {
    if (n <= 0) return;
    KVSERVE_CUDA_REQUIRE(rope.head_dim > 0 && rope.head_dim <= kMaxRopeHeadDim,
                         "cuda RopeTable: head_dim out of range");
    const int pairs = rope.head_dim / 2;
    // The frequencies exactly as the CPU computes them (host double math), uploaded once per
    // call: a few KiB.
    RopeFreqs host;
    const double log_base = std::log(static_cast<double>(rope.freq_base));
    for (int i = 0; i < pairs; ++i) {
      host.inv_freq[i] = std::exp(-log_base * (2.0 * i) / rope.head_dim);
      if (rope.freq_scale != 1.0f) host.inv_freq[i] *= rope.freq_scale;
    }
    const cudaStream_t stream = StreamOf(ctx);
    if (freqs_ == nullptr) KVSERVE_CUDA_CHECK(cudaMalloc(&freqs_, sizeof(RopeFreqs)));
    // Synchronous with respect to earlier work on the stream that may still read freqs_.
    KVSERVE_CUDA_CHECK(cudaStreamSynchronize(stream));
    KVSERVE_CUDA_CHECK(cudaMemcpy(freqs_, &host, sizeof(double) * pairs, cudaMemcpyHostToDevice));
    RopeTableKernel<<<GridFor(n * pairs), kThreads, 0, stream>>>(
        positions, n, pairs, freqs_, rope.freq_factors, rope.attn_factor, cos_sin);
    KVSERVE_CUDA_CHECK(cudaGetLastError());
  }
  void Rope(float* x, const float* cos_sin, int64_t n, int num_heads, int head_dim, RopeStyle style,
            const ExecContext& ctx) override {
    const int64_t total = n * num_heads * (head_dim / 2);
    if (total <= 0) return;
    RopeApplyKernel<<<GridFor(total), kThreads, 0, StreamOf(ctx)>>>(
        x, cos_sin, n, num_heads, head_dim, style == RopeStyle::kNeox);
    KVSERVE_CUDA_CHECK(cudaGetLastError());
  }
  void SwiGlu(const float* gate, const float* up, int64_t n, float* out,
              const ExecContext& ctx) override {
    cuda::SwiGlu(gate, up, n, out, StreamOf(ctx));
  }
  void Add(float* x, const float* y, int64_t n, const ExecContext& ctx) override {
    cuda::AddInPlace(x, y, n, StreamOf(ctx));
  }
  void AddBias(float* x, const float* bias, int64_t n, int64_t cols,
               const ExecContext& ctx) override {
    cuda::AddBias(x, bias, n, cols, StreamOf(ctx));
  }
  bool WriteKv(const KvWrite& w, const PagedKvLayerView& cache, const ExecContext& ctx) override {
    cuda::WriteKv(w, cache, StreamOf(ctx));
    return true;
  }
  bool SupportsKvConvert(KvFormat dst) const override { return dst != KvFormat::kLowrank; }
  bool ConvertKvRegions(KvFormat src_format, const uint8_t* const* src, KvFormat dst_format,
                        uint8_t* const* dst, KvRole role, const KvRegionShape& shape, int tokens,
                        int64_t count, const ExecContext& ctx) override {
    if (count <= 0) return true;
    if (!KvFormatTokenWritable(src_format) || dst_format == KvFormat::kLowrank ||
        !KvFormatSupports(dst_format, shape) ||
        int64_t{shape.block_size} * shape.head_dim > kQuantizeMaxHeadElems) {
      return false;
    }
    // One upload of [src pointers][dst pointers][tokens][ok], one launch, one copy of ok back.
    const int64_t ptr_bytes = count * static_cast<int64_t>(sizeof(uint8_t*));
    const int64_t need = 2 * ptr_bytes + count * 4 + count;
    const cudaStream_t stream = StreamOf(ctx);
    Grow(&convert_, &convert_bytes_, need, stream);
    std::vector<uint8_t> host(static_cast<size_t>(need - count), 0);
    std::memcpy(host.data(), src, static_cast<size_t>(ptr_bytes));
    std::memcpy(host.data() + ptr_bytes, dst, static_cast<size_t>(ptr_bytes));
    for (int64_t r = 0; r < count; ++r) {
      std::memcpy(host.data() + 2 * ptr_bytes + 4 * r, &tokens, 4);
    }
    auto* base = static_cast<uint8_t*>(convert_);
    KVSERVE_CUDA_CHECK(
        cudaMemcpyAsync(base, host.data(), host.size(), cudaMemcpyHostToDevice, stream));
    KvRegionRefs s, d;
    s.ptrs = reinterpret_cast<const uint8_t* const*>(base);
    d.ptrs = reinterpret_cast<const uint8_t* const*>(base + ptr_bytes);
    uint8_t* ok = base + 2 * ptr_bytes + 4 * count;
    cuda::ConvertKvRegions(src_format, s, dst_format, role, shape,
                           reinterpret_cast<const int32_t*>(base + 2 * ptr_bytes), d, count, ok,
                           stream);
    std::vector<uint8_t> oks(static_cast<size_t>(count), 0);
    KVSERVE_CUDA_CHECK(cudaMemcpyAsync(oks.data(), ok, oks.size(), cudaMemcpyDeviceToHost, stream));
    KVSERVE_CUDA_CHECK(cudaStreamSynchronize(stream));
    for (uint8_t v : oks) {
      if (v != 1) return false;
    }
    return true;
  }

  void PagedAttention(const AttentionBatch& batch, const PagedKvLayerView& cache,
                      const ExecContext& ctx) override {
    if (batch.num_tokens <= 0) return;
    AttentionBatch b = batch;
    const cudaStream_t stream = StreamOf(ctx);
    if (b.workspace == nullptr) {
      const int64_t need = PagedAttentionWorkspaceBytes(
          b.num_tokens, b.num_heads, cache.shape.head_dim, cache.shape.block_size, b.max_kv_len,
          b.seq_scores != nullptr);
      Grow(&workspace_, &workspace_bytes_, need, stream);
      b.workspace = workspace_;
      b.workspace_bytes = workspace_bytes_;
    }
    cuda::PagedAttention(b, cache, stream);
  }

 private:
  // *p holds at least `need` bytes afterwards (contents not kept): freed once the stream's work
  // that may read it is done, then allocated again.
  static void Grow(void** p, int64_t* bytes, int64_t need, cudaStream_t stream) {
    if (need <= *bytes) return;
    if (*p != nullptr) {
      KVSERVE_CUDA_CHECK(cudaStreamSynchronize(stream));
      KVSERVE_CUDA_CHECK(cudaFree(*p));
      *p = nullptr;
    }
    KVSERVE_CUDA_CHECK(cudaMalloc(p, static_cast<size_t>(need)));
    *bytes = need;
  }
  static cudaStream_t StreamOf(const ExecContext& ctx) {
    return static_cast<cudaStream_t>(ctx.stream);
  }

  Gemm gemm_;
  bool pooled_ = false;      // Alloc/Free through the default memory pool
  void* convert_ = nullptr;  // ConvertKvRegions' pointer, token and flag arrays
  int64_t convert_bytes_ = 0;
  void* workspace_ = nullptr;
  int64_t workspace_bytes_ = 0;
  RopeFreqs* freqs_ = nullptr;
};

}  // namespace

std::unique_ptr<Backend> CreateCudaBackend(std::string* error) {
  std::string none;
  if (DeviceCount(&none) == 0) {
    if (error != nullptr) *error = none;
    return nullptr;
  }
  Gemm gemm;
  std::string why;
  if (!Gemm::Create(&gemm, &why)) {
    if (error != nullptr) *error = why;
    return nullptr;
  }
  return std::make_unique<CudaBackend>(std::move(gemm));
}

void RegisterCudaBackend() {
  static const bool registered = RegisterBackend("cuda", CreateCudaBackend);
  (void)registered;
}

}  // namespace kvserve::kernels::cuda
