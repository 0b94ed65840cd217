// Element-wise and row-wise operators of the forward pass (MatMul is in matmul.cc).
#include "kernels/cpu/ops.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "kernels/cpu/check.h"
#include "kernels/cpu/simd.h"
#include "kernels/weight_formats.h"

namespace kvserve::kernels::cpu {
namespace {

using V = simd::VecWide;
using Reg = V::Reg;
constexpr int kL = V::kLanes;

// Largest head_dim RoPE handles (its per-call angle table lives on the stack).
constexpr int kMaxRopeHeadDim = 1024;

template <class T>
void GatherRows(const T* table, int64_t vocab, int64_t dim, const int32_t* ids, int64_t n,
                float* out) {
  for (int64_t t = 0; t < n; ++t) {
    KVSERVE_KERNEL_CHECK(ids[t] >= 0 && ids[t] < vocab, "EmbeddingGather: id out of range");
    simd::ConvertRow<V>(table + static_cast<int64_t>(ids[t]) * dim, dim, out + t * dim);
  }
}

// Rows of a matrix packed by PackWeightPanels: element (r, c) is at
// panels[(r / P) * cols * P + c * P + r % P], P = kWeightPanelRows.
template <class T>
void GatherPanelRows(const T* panels, int64_t vocab, int64_t dim, const int32_t* ids, int64_t n,
                     float* out) {
  for (int64_t t = 0; t < n; ++t) {
    KVSERVE_KERNEL_CHECK(ids[t] >= 0 && ids[t] < vocab, "EmbeddingGather: id out of range");
    const int64_t r = ids[t];
    const T* base = panels + r / kWeightPanelRows * dim * kWeightPanelRows + r % kWeightPanelRows;
    float* o = out + t * dim;
    for (int64_t c = 0; c < dim; ++c) {
      if constexpr (std::is_same_v<T, float>) {
        o[c] = base[c * kWeightPanelRows];
      } else if constexpr (std::is_same_v<T, simd::Fp16>) {
        o[c] = Fp16ToFloat(base[c * kWeightPanelRows].bits);
      } else {
        o[c] = Bf16ToFloat(base[c * kWeightPanelRows].bits);
      }
    }
  }
}

}  // namespace

void RmsNorm(const float* x, const float* weight, int64_t n, int64_t dim, float eps, float* out) {
  for (int64_t t = 0; t < n; ++t) {
    const float* xr = x + t * dim;
    float* yr = out + t * dim;
    Reg s0 = V::Zero();
    Reg s1 = V::Zero();
    int64_t i = 0;
    for (; i + 2 * kL <= dim; i += 2 * kL) {
      const Reg a = V::Load(xr + i);
      const Reg b = V::Load(xr + i + kL);
      s0 = V::Fma(a, a, s0);
      s1 = V::Fma(b, b, s1);
    }
    for (; i < dim; i += kL) {
      const Reg a = V::LoadN(xr + i, static_cast<int>(std::min<int64_t>(kL, dim - i)));
      s0 = V::Fma(a, a, s0);
    }
    const float ss = V::ReduceAdd(V::Add(s0, s1));
    const Reg inv = V::Set1(1.0f / std::sqrt(ss / static_cast<float>(dim) + eps));
    i = 0;
    for (; i + kL <= dim; i += kL) {
      V::Store(yr + i, V::Mul(V::Mul(V::Load(xr + i), inv), V::Load(weight + i)));
    }
    if (i < dim) {
      const int m = static_cast<int>(dim - i);
      V::StoreN(yr + i, V::Mul(V::Mul(V::LoadN(xr + i, m), inv), V::LoadN(weight + i, m)), m);
    }
  }
}

int64_t ArgMax(const float* x, int64_t n) {
#if defined(KVSERVE_SIMD_AVX512)
  if (n >= 16 && !std::isnan(x[0])) {
    // The max over the non-NaN values (vmaxps returns its second operand when the first is NaN),
    // then the first index holding it: the same index the scalar scan below picks.
    __m512 m = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) m = _mm512_max_ps(_mm512_loadu_ps(x + i), m);
    float best = _mm512_reduce_max_ps(m);
    for (; i < n; ++i) best = x[i] > best ? x[i] : best;
    const __m512 b = _mm512_set1_ps(best);
    for (i = 0; i + 16 <= n; i += 16) {
      const __mmask16 eq = _mm512_cmp_ps_mask(_mm512_loadu_ps(x + i), b, _CMP_EQ_OQ);
      if (eq != 0) return i + __builtin_ctz(eq);
    }
    for (; i < n; ++i) {
      if (x[i] == best) return i;
    }
  }
#endif
  int64_t best = 0;
  for (int64_t i = 1; i < n; ++i) {
    if (x[i] > x[best]) best = i;
  }
  return best;
}

void RopeTable(const int32_t* positions, int64_t n, int head_dim, float freq_base, float* cos_sin,
               float freq_scale, const float* freq_factors, float attn_factor) {
  KVSERVE_KERNEL_CHECK(head_dim <= kMaxRopeHeadDim, "RopeTable: head_dim too large");
  const int pairs = head_dim / 2;
  double inv_freq[kMaxRopeHeadDim / 2];
  const double log_base = std::log(static_cast<double>(freq_base));
  for (int i = 0; i < pairs; ++i) {
    inv_freq[i] = std::exp(-log_base * (2.0 * i) / head_dim);
    if (freq_scale != 1.0f) inv_freq[i] *= freq_scale;
    if (freq_factors != nullptr) inv_freq[i] /= freq_factors[i];
  }
  for (int64_t t = 0; t < n; ++t) {
    const double pos = positions[t];
    float* cs = cos_sin + t * 2 * pairs;
    for (int i = 0; i < pairs; ++i) {
      const double angle = pos * inv_freq[i];
      cs[2 * i] = static_cast<float>(std::cos(angle) * attn_factor);
      cs[2 * i + 1] = static_cast<float>(std::sin(angle) * attn_factor);
    }
  }
}

namespace {

// Pair i of each head is elements (i * kStride, i * kStride + offset): adjacent pairs with
// kStride 2 and offset 1, NeoX halves with kStride 1 and offset head_dim / 2.
template <int kStride>
void RopeTableApply(float* x, const float* cos_sin, int64_t n, int num_heads, int head_dim) {
  const int pairs = head_dim / 2;
  const int offset = kStride == 2 ? 1 : pairs;
  const int64_t row = static_cast<int64_t>(num_heads) * head_dim;
  for (int64_t t = 0; t < n; ++t) {
    const float* cs = cos_sin + t * 2 * pairs;
    float* xt = x + t * row;
    for (int h = 0; h < num_heads; ++h) {
      float* xh = xt + static_cast<int64_t>(h) * head_dim;
      for (int i = 0; i < pairs; ++i) {
        const float c = cs[2 * i];
        const float s = cs[2 * i + 1];
        float* p0 = xh + kStride * i;
        const float a = p0[0];
        const float b = p0[offset];
        p0[0] = a * c - b * s;
        p0[offset] = a * s + b * c;
      }
    }
  }
}

}  // namespace

void RopeAdjacentPairsTable(float* x, const float* cos_sin, int64_t n, int num_heads,
                            int head_dim) {
  RopeTableApply<2>(x, cos_sin, n, num_heads, head_dim);
}

void RopeNeoxTable(float* x, const float* cos_sin, int64_t n, int num_heads, int head_dim) {
  RopeTableApply<1>(x, cos_sin, n, num_heads, head_dim);
}

void RopeAdjacentPairs(float* x, const int32_t* positions, int64_t n, int num_heads, int head_dim,
                       float freq_base) {
  KVSERVE_KERNEL_CHECK(head_dim <= kMaxRopeHeadDim, "RopeAdjacentPairs: head_dim too large");
  const int pairs = head_dim / 2;
  double inv_freq[kMaxRopeHeadDim / 2];
  const double log_base = std::log(static_cast<double>(freq_base));
  for (int i = 0; i < pairs; ++i) {
    inv_freq[i] = std::exp(-log_base * (2.0 * i) / head_dim);
  }
  float cos_sin[kMaxRopeHeadDim];  // [pairs][2]
  const int64_t row = static_cast<int64_t>(num_heads) * head_dim;
  for (int64_t t = 0; t < n; ++t) {
    const double pos = positions[t];
    for (int i = 0; i < pairs; ++i) {
      const double angle = pos * inv_freq[i];
      cos_sin[2 * i] = static_cast<float>(std::cos(angle));
      cos_sin[2 * i + 1] = static_cast<float>(std::sin(angle));
    }
    RopeAdjacentPairsTable(x + t * row, cos_sin, 1, num_heads, head_dim);
  }
}

void SwiGlu(const float* gate, const float* up, int64_t n, float* out) {
  const Reg one = V::Set1(1.0f);
  const Reg zero = V::Zero();
  int64_t i = 0;
  for (; i < n; i += kL) {
    const int m = static_cast<int>(std::min<int64_t>(kL, n - i));
    const Reg g = m == kL ? V::Load(gate + i) : V::LoadN(gate + i, m);
    const Reg u = m == kL ? V::Load(up + i) : V::LoadN(up + i, m);
    const Reg silu = V::Div(g, V::Add(one, V::Exp(V::Sub(zero, g))));
    const Reg r = V::Mul(silu, u);
    if (m == kL) {
      V::Store(out + i, r);
    } else {
      V::StoreN(out + i, r, m);
    }
  }
}

void AddInPlace(float* x, const float* y, int64_t n) {
  int64_t i = 0;
  for (; i + kL <= n; i += kL) V::Store(x + i, V::Add(V::Load(x + i), V::Load(y + i)));
  if (i < n) {
    const int m = static_cast<int>(n - i);
    V::StoreN(x + i, V::Add(V::LoadN(x + i, m), V::LoadN(y + i, m)), m);
  }
}

void EmbeddingGather(const WeightView& table, const int32_t* ids, int64_t n, float* out) {
  if (table.panels != nullptr && !IsQuantized(table.dtype)) {
    switch (table.dtype) {
      case DType::kF32:
        GatherPanelRows(static_cast<const float*>(table.panels), table.rows, table.cols, ids, n,
                        out);
        return;
      case DType::kF16:
        GatherPanelRows(static_cast<const simd::Fp16*>(table.panels), table.rows, table.cols, ids,
                        n, out);
        return;
      default:
        GatherPanelRows(static_cast<const simd::Bf16*>(table.panels), table.rows, table.cols, ids,
                        n, out);
        return;
    }
  }
  switch (table.dtype) {
    case DType::kF32:
      GatherRows(static_cast<const float*>(table.data), table.rows, table.cols, ids, n, out);
      return;
    case DType::kF16:
      GatherRows(static_cast<const simd::Fp16*>(table.data), table.rows, table.cols, ids, n, out);
      return;
    case DType::kBF16:
      GatherRows(static_cast<const simd::Bf16*>(table.data), table.rows, table.cols, ids, n, out);
      return;
    default: {
      const int64_t row_bytes = WeightRowBytes(table.dtype, table.cols);
      for (int64_t t = 0; t < n; ++t) {
        KVSERVE_KERNEL_CHECK(ids[t] >= 0 && ids[t] < table.rows,
                             "EmbeddingGather: id out of range");
        DequantizeRow(table.dtype, static_cast<const uint8_t*>(table.data) + ids[t] * row_bytes,
                      table.cols, out + t * table.cols);
      }
      return;
    }
  }
  KVSERVE_KERNEL_CHECK(false, "EmbeddingGather: unknown dtype");
}

void SoftmaxInPlace(float* x, int64_t n) {
  if (n <= 0) return;
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  Reg vmax = V::Set1(kNegInf);
  int64_t i = 0;
  for (; i + kL <= n; i += kL) vmax = V::Max(vmax, V::Load(x + i));
  if (i < n) {
    const int m = static_cast<int>(n - i);
    vmax = V::Max(vmax, V::FillFrom(V::LoadN(x + i, m), m, kNegInf));
  }
  const Reg mx = V::Set1(V::ReduceMax(vmax));
  Reg vsum = V::Zero();
  for (i = 0; i + kL <= n; i += kL) {
    const Reg e = V::Exp(V::Sub(V::Load(x + i), mx));
    vsum = V::Add(vsum, e);
    V::Store(x + i, e);
  }
  if (i < n) {
    const int m = static_cast<int>(n - i);
    const Reg e = V::ZeroFrom(V::Exp(V::Sub(V::LoadN(x + i, m), mx)), m);
    vsum = V::Add(vsum, e);
    V::StoreN(x + i, e, m);
  }
  const Reg inv = V::Set1(1.0f / V::ReduceAdd(vsum));
  for (i = 0; i + kL <= n; i += kL) V::Store(x + i, V::Mul(V::Load(x + i), inv));
  if (i < n) {
    const int m = static_cast<int>(n - i);
    V::StoreN(x + i, V::Mul(V::LoadN(x + i, m), inv), m);
  }
}

}  // namespace kvserve::kernels::cpu
