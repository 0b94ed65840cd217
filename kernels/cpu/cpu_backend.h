// The CPU backend: kernels/backend.h over the CPU kernels of kernels/cpu/, unchanged (every op
// forwards to its kernel, so results are bitwise what the kernels give when called directly).
//
// Memory is host memory (Alloc: 64-byte aligned operator new). Ops run synchronously on the
// calling thread, split over ExecContext::pool when one is given.
// Thread-safety: stateless; ops may be called from several threads at once (on disjoint outputs).
#ifndef KVSERVE_KERNELS_CPU_CPU_BACKEND_H_
#define KVSERVE_KERNELS_CPU_CPU_BACKEND_H_

#include "kernels/backend.h"

namespace kvserve::kernels::cpu {

class CpuBackend final : public Backend {
 public:
  std::string_view name() const override { return "cpu"; }

  bool host_memory() const override { return true; }
  void* Alloc(int64_t bytes) override;
  void Free(void* p) override;
  void CopyIn(void* dst, const void* host_src, int64_t bytes) override;
  void CopyOut(void* host_dst, const void* src, int64_t bytes) override;
  bool Synchronize(std::string* error) override { return true; }

  // Every weight type and KV format (lowrank needs the view's key_basis).
  bool SupportsWeight(DType t) const override { return true; }
  bool SupportsKvRead(KvFormat f) const override { return true; }
  bool SupportsKvWrite(KvFormat f) const override { return true; }

  // Dense weights are packed into MatMul panels (PackWeightPanels); quantized ones are used in
  // place (0 bytes).
  int64_t PreparedWeightBytes(const WeightView& w) const override;
  void PrepareWeight(WeightView* w, void* storage) const override;
  std::string prepared_weight_layout() const override { return "cpu-panels"; }

  void MatMul(const float* x, int64_t n, const WeightView& w, float* y,
              const ExecContext& ctx) override;
  void EmbeddingGather(const WeightView& table, const int32_t* ids, int64_t n, float* out,
                       const ExecContext& ctx) override;
  void RmsNorm(const float* x, const float* weight, int64_t n, int64_t dim, float eps, float* out,
               const ExecContext& ctx) override;
  void RopeTable(const int32_t* positions, int64_t n, const RopeParams& rope, float* cos_sin,
                 const ExecContext& ctx) override;
  void Rope(float* x, const float* cos_sin, int64_t n, int num_heads, int head_dim, RopeStyle style,
            const ExecContext& ctx) override;
  void SwiGlu(const float* gate, const float* up, int64_t n, float* out,
              const ExecContext& ctx) override;
  void Add(float* x, const float* y, int64_t n, const ExecContext& ctx) override;
  void AddBias(float* x, const float* bias, int64_t n, int64_t cols,
               const ExecContext& ctx) override;
  bool WriteKv(const KvWrite& w, const PagedKvLayerView& cache, const ExecContext& ctx) override;
  void PagedAttention(const AttentionBatch& batch, const PagedKvLayerView& cache,
                      const ExecContext& ctx) override;
  // Dequantize then QuantizeKvRegion, region by region (every format but lowrank).
  bool SupportsKvConvert(KvFormat dst) const override { return dst != KvFormat::kLowrank; }
  bool ConvertKvRegions(KvFormat src_format, const uint8_t* const* src, KvFormat dst_format,
                        uint8_t* const* dst, KvRole role, const KvRegionShape& shape, int tokens,
                        int64_t count, const ExecContext& ctx) override;
};

}  // namespace kvserve::kernels::cpu

#endif  // KVSERVE_KERNELS_CPU_CPU_BACKEND_H_
