#include "kernels/cpu/cpu_backend.h"

#include <cstring>
#include <new>
#include <vector>

#include "kernels/cpu/kv_quantize.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/paged_attention.h"

namespace kvserve::kernels::cpu {

namespace {
constexpr std::align_val_t kAlign{64};
}  // namespace

void* CpuBackend::Alloc(int64_t bytes) {
  return ::operator new(static_cast<size_t>(bytes > 0 ? bytes : 1), kAlign, std::nothrow);
}

void CpuBackend::Free(void* p) {
  if (p != nullptr) ::operator delete(p, kAlign);
}

void CpuBackend::CopyIn(void* dst, const void* host_src, int64_t bytes) {
  if (bytes > 0) std::memcpy(dst, host_src, static_cast<size_t>(bytes));
}

void CpuBackend::CopyOut(void* host_dst, const void* src, int64_t bytes) {
  if (bytes > 0) std::memcpy(host_dst, src, static_cast<size_t>(bytes));
}

int64_t CpuBackend::PreparedWeightBytes(const WeightView& w) const {
  return IsQuantized(w.dtype) ? 0 : WeightPanelBytes(w);
}

void CpuBackend::PrepareWeight(WeightView* w, void* storage) const {
  // Quantized matrices are used in place: their MatMul is batch-invariant without panels.
  if (IsQuantized(w->dtype)) return;
  PackWeightPanels(*w, storage);
  w->panels = storage;
}

void CpuBackend::MatMul(const float* x, int64_t n, const WeightView& w, float* y,
                        const ExecContext& ctx) {
  cpu::MatMul(x, n, w, y, ctx.pool);
}

void CpuBackend::EmbeddingGather(const WeightView& table, const int32_t* ids, int64_t n, float* out,
                                 const ExecContext& ctx) {
  cpu::EmbeddingGather(table, ids, n, out);
}

void CpuBackend::RmsNorm(const float* x, const float* weight, int64_t n, int64_t dim, float eps,
                         float* out, const ExecContext& ctx) {
  cpu::RmsNorm(x, weight, n, dim, eps, out);
}

void CpuBackend::RopeTable(const int32_t* positions, int64_t n, const RopeParams& rope,
                           float* cos_sin, const ExecContext& ctx) {
  cpu::RopeTable(positions, n, rope.head_dim, rope.freq_base, cos_sin, rope.freq_scale,
                 rope.freq_factors, rope.attn_factor);
}

void CpuBackend::Rope(float* x, const float* cos_sin, int64_t n, int num_heads, int head_dim,
                      RopeStyle style, const ExecContext& ctx) {
  if (style == RopeStyle::kNeox) {
    cpu::RopeNeoxTable(x, cos_sin, n, num_heads, head_dim);
  } else {
    cpu::RopeAdjacentPairsTable(x, cos_sin, n, num_heads, head_dim);
  }
}

void CpuBackend::SwiGlu(const float* gate, const float* up, int64_t n, float* out,
                        const ExecContext& ctx) {
  cpu::SwiGlu(gate, up, n, out);
}

void CpuBackend::Add(float* x, const float* y, int64_t n, const ExecContext& ctx) {
  cpu::AddInPlace(x, y, n);
}

void CpuBackend::AddBias(float* x, const float* bias, int64_t n, int64_t cols,
                         const ExecContext& ctx) {
  for (int64_t t = 0; t < n; ++t) cpu::AddInPlace(x + t * cols, bias, cols);
}

bool CpuBackend::WriteKv(const KvWrite& w, const PagedKvLayerView& cache, const ExecContext& ctx) {
  return cpu::WriteKv(w, cache);
}

void CpuBackend::PagedAttention(const AttentionBatch& batch, const PagedKvLayerView& cache,
                                const ExecContext& ctx) {
  cpu::PagedAttention(batch, cache, ctx.pool);
}

bool CpuBackend::ConvertKvRegions(KvFormat src_format, const uint8_t* const* src,
                                  KvFormat dst_format, uint8_t* const* dst, KvRole role,
                                  const KvRegionShape& shape, int tokens, int64_t count,
                                  const ExecContext& ctx) {
  if (!KvFormatTokenWritable(src_format) || dst_format == KvFormat::kLowrank) return false;
  std::vector<float> floats(static_cast<size_t>(shape.num_kv_heads) * shape.block_size *
                            shape.head_dim);
  bool ok = true;
  for (int64_t r = 0; r < count; ++r) {
    DequantizeKvRegion(src_format, role, src[r], shape, tokens, floats.data());
    ok &= QuantizeKvRegion(dst_format, role, floats.data(), shape, tokens, dst[r]);
  }
  return ok;
}

}  // namespace kvserve::kernels::cpu
