// The ops the forward pass needs, behind one interface, so that a model runner executes the same
// plan on the CPU or on a device. In the manner of ggml's backends: every op takes plain views
// (pointers, shapes, strides, block tables, formats: kernels/dtype.h, kernels/kv_format.h,
// kernels/attention_batch.h), never an engine type; each backend is checked op by op against the
// CPU backend (tests/kernels/backend_conformance_test.cc, docs/backends.md).
//
// Cost model: one virtual call per op per layer (an op covers a whole batch of tokens), never per
// element.
//
// Memory: the pointers an op takes live where the backend's memory is (host_memory() says
// whether that is ordinary host memory). Alloc / CopyIn / CopyOut move data there; a model runner
// on a device backend keeps its weights, scratch and KV pool there.
//
// Ordering and threads: ops may be asynchronous (enqueued in call order on the backend's queue);
// Synchronize waits for them. A backend says in its header whether ops may be called from several
// threads at once (the CPU backend is stateless: they may).
#ifndef KVSERVE_KERNELS_BACKEND_H_
#define KVSERVE_KERNELS_BACKEND_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "kernels/attention_batch.h"
#include "kernels/cpu/thread_pool.h"
#include "kernels/dtype.h"
#include "kernels/kv_format.h"
#include "kernels/rope_style.h"

namespace kvserve::kernels {

// Where an op runs. CPU backends split work over `pool` (null: the calling thread); device
// backends ignore it and use `stream` (an opaque queue handle, null: the default one).
struct ExecContext {
  ThreadPool* pool = nullptr;
  void* stream = nullptr;
};

// The rotary embedding: pair i of each head (i < head_dim / 2) is rotated by the angle
// position * freq_scale * freq_base^(-2i / head_dim), divided by freq_factors[i] when given
// (Llama 3.1's rope_freqs, Phi-3's rope_factors_short/long; linear scaling through freq_scale);
// cos and sin are multiplied by attn_factor (Phi-3 LongRoPE's magnitude scaling; 1 elsewhere).
struct RopeParams {
  int head_dim = 0;
  float freq_base = 10000.0f;
  float freq_scale = 1.0f;
  const float* freq_factors = nullptr;  // [head_dim / 2], or null
  float attn_factor = 1.0f;
};

class Backend {
 public:
  virtual ~Backend() = default;

  // The registry name ("cpu", "cuda").
  virtual std::string_view name() const = 0;

  // ---- Memory ----------------------------------------------------------------------------------
  // True when op pointers are ordinary host pointers (Alloc is then host memory).
  virtual bool host_memory() const = 0;
  // `bytes` of backend memory, aligned to at least 64 bytes; null on failure. Free(nullptr) is a
  // no-op.
  virtual void* Alloc(int64_t bytes) = 0;
  virtual void Free(void* p) = 0;
  // Host -> backend memory and back; synchronous.
  virtual void CopyIn(void* dst, const void* host_src, int64_t bytes) = 0;
  virtual void CopyOut(void* host_dst, const void* src, int64_t bytes) = 0;
  // Waits for the ops enqueued so far; false with `error` set when one failed.
  virtual bool Synchronize(std::string* error) = 0;
  // Bytes of this backend's memory free now (a device's free memory), or -1 when it does not
  // say (host memory).
  virtual int64_t FreeMemoryBytes() const { return -1; }

  // ---- What runs here ----------------------------------------------------------------------
  // MatMul and EmbeddingGather over weights of type `t`.
  virtual bool SupportsWeight(DType t) const = 0;
  // PagedAttention over blocks in format `f`.
  virtual bool SupportsKvRead(KvFormat f) const = 0;
  // WriteKv into blocks in format `f` (token by token for token-writable formats, whole blocks
  // for the others; see WriteKv).
  virtual bool SupportsKvWrite(KvFormat f) const = 0;

  // ---- Weights ----------------------------------------------------------------------------------
  // Bytes of backend memory PrepareWeight needs for `w` (a copy repacked for this backend's
  // MatMul); 0 when w is used as it is.
  virtual int64_t PreparedWeightBytes(const WeightView& w) const = 0;
  // Fills `storage` (PreparedWeightBytes(*w) bytes of this backend's memory) and points w at it
  // (WeightView::panels). The MatMul results of a prepared weight are the same float sequence
  // whatever the batch (batch invariance).
  virtual void PrepareWeight(WeightView* w, void* storage) const = 0;
  // Names what PrepareWeight writes and where: backends with the same layout share one prepared
  // copy of a model's weights (LoadedModel::PreparedWeights). Default: name().
  virtual std::string prepared_weight_layout() const { return std::string(name()); }

  // ---- Ops (shapes in comments; all matrices row-major) ---------------------------------------
  // y[n, w.rows] = x[n, w.cols] * W^T.
  virtual void MatMul(const float* x, int64_t n, const WeightView& w, float* y,
                      const ExecContext& ctx) = 0;
  // out[t, :] = table[ids[t], :] for a [vocab, dim] table (dequantized). ids in [0, vocab).
  // A table this backend prepared (`panels` set) may have no row-major `data` left (its file
  // copy released): host-memory backends then read the rows from the panels.
  virtual void EmbeddingGather(const WeightView& table, const int32_t* ids, int64_t n, float* out,
                               const ExecContext& ctx) = 0;
  // out[n, dim] = x / sqrt(mean(x^2) + eps) * weight[dim]. out may alias x.
  virtual void RmsNorm(const float* x, const float* weight, int64_t n, int64_t dim, float eps,
                       float* out, const ExecContext& ctx) = 0;
  // The rotation of each token, computed once per step and applied to the queries and keys of
  // every layer: cos_sin [n, head_dim / 2, 2] = (cos, sin) of each pair's angle.
  virtual void RopeTable(const int32_t* positions, int64_t n, const RopeParams& rope,
                         float* cos_sin, const ExecContext& ctx) = 0;
  // x [n, num_heads, head_dim] rotated in place by a RopeTable of the same n and head_dim, its
  // pairs formed as `style` says.
  virtual void Rope(float* x, const float* cos_sin, int64_t n, int num_heads, int head_dim,
                    RopeStyle style, const ExecContext& ctx) = 0;
  // out[i] = silu(gate[i]) * up[i], i < n. out may alias gate.
  virtual void SwiGlu(const float* gate, const float* up, int64_t n, float* out,
                      const ExecContext& ctx) = 0;
  // x[i] += y[i], i < n (the residual connection).
  virtual void Add(float* x, const float* y, int64_t n, const ExecContext& ctx) = 0;
  // x[t, c] += bias[c] for t < n, c < cols (a projection's bias, Qwen2's q/k/v).
  virtual void AddBias(float* x, const float* bias, int64_t n, int64_t cols,
                       const ExecContext& ctx) = 0;
  // Writes K and V into their slots in each block's format (quantize-on-write). Blocks in a
  // format that is not KvFormatTokenWritable are encoded whole: their block_size tokens come as
  // one run of consecutive tokens with offsets 0 .. block_size - 1. False when a value was
  // refused (not finite, or beyond a quantized format's range): that block's bytes are then
  // unspecified.
  virtual bool WriteKv(const KvWrite& w, const PagedKvLayerView& cache, const ExecContext& ctx) = 0;
  // out = softmax(q K^T * scale) V over the paged KV for every token and head of the batch
  // (grouped-query: query head h reads KV head h / (num_heads / num_kv_heads)), plus the
  // optional accumulated scores.
  virtual void PagedAttention(const AttentionBatch& batch, const PagedKvLayerView& cache,
                              const ExecContext& ctx) = 0;

  // ---- Whole-region KV encoding (what a device pool needs for the formats written whole) ------
  // True when ConvertKvRegions can encode into `dst`. Default: no.
  virtual bool SupportsKvConvert(KvFormat dst) const { return false; }
  // For r < count: reads rows [0, tokens) of every KV head of the `role` region src[r] (format
  // src_format: fp32, fp16 or bf16; an fp32 region is [num_kv_heads][block_size][head_dim]
  // floats) and encodes them into the region dst[r] in dst_format, exactly as
  // cpu::QuantizeKvRegion encodes the same floats. src and dst are HOST arrays of addresses in
  // this backend's memory; no source overlaps a destination. False when a value was refused (not
  // finite, or beyond a quantized format's range): those regions are then unspecified. Lowrank
  // is not a destination. Synchronous.
  virtual bool ConvertKvRegions(KvFormat src_format, const uint8_t* const* src, KvFormat dst_format,
                                uint8_t* const* dst, KvRole role, const KvRegionShape& shape,
                                int tokens, int64_t count, const ExecContext& ctx) {
    return false;
  }
};

// ---- Registry ---------------------------------------------------------------------------------
// Creates a backend; null with `error` set when it cannot run here (no device, no driver).
using BackendFactory = std::function<std::unique_ptr<Backend>(std::string* error)>;

// Registers a factory under `name`; false when the name is taken. "cpu" is always registered.
// Thread-safe.
bool RegisterBackend(std::string name, BackendFactory factory);
// Registers `name` as a backend that lives in a shared module (a backend whose libraries, such as
// the CUDA runtime and cuBLAS, should be loaded only when it is asked for): the first
// CreateBackend(name) loads `path` and calls its extern "C" function `symbol`, of type
// `Backend* (std::string* error)` (null with *error set when the backend cannot run). A module that
// cannot be loaded makes CreateBackend fail naming the path and the loader's error.
bool RegisterBackendModule(std::string name, std::string path, std::string symbol);
// Registers "cuda" as the module libkvserve_cuda.so (kernels/cuda/cuda_module.cc): the file named
// by $KVSERVE_CUDA_MODULE when set, else the one beside the running binary when there is one,
// else `fallback_path` (where the build wrote it).
void RegisterCudaModule(const std::string& fallback_path);
// Registered names, "cpu" first, then in registration order.
std::vector<std::string> BackendNames();
// A new backend by name; null with `error` set when the name is unknown or the backend cannot
// run here.
std::unique_ptr<Backend> CreateBackend(std::string_view name, std::string* error);

// The process-wide CPU backend (stateless, never destroyed): the default of model runners.
Backend* DefaultCpuBackend();

}  // namespace kvserve::kernels

#endif  // KVSERVE_KERNELS_BACKEND_H_
