// A plain, obviously-correct Llama forward pass for tests: double precision, one sequence,
// contiguous KV, no paging, no batching, no vectorisation. Independent of the engine's kernels.
#ifndef KVSERVE_TESTS_ENGINE_TESTING_REFERENCE_LLAMA_H_
#define KVSERVE_TESTS_ENGINE_TESTING_REFERENCE_LLAMA_H_

#include <cmath>
#include <cstdint>
#include <vector>

#include "engine/model/model.h"
#include "kernels/cpu/ops.h"
#include "kernels/dtype.h"
#include "kernels/weight_formats.h"

namespace kvserve::testing {

inline double WeightAt(const kernels::WeightView& w, int64_t r, int64_t c) {
  if (w.data == nullptr) {
    // Only the prepared copy is left (LoadedModel::PreparedWeights released the file's): read it
    // from the panels of cpu::PackWeightPanels.
    constexpr int64_t kP = kernels::cpu::kWeightPanelRows;
    const int64_t i = r / kP * w.cols * kP + c * kP + r % kP;
    switch (w.dtype) {
      case kernels::DType::kF32:
        return static_cast<const float*>(w.panels)[i];
      case kernels::DType::kF16:
        return kernels::Fp16ToFloat(static_cast<const uint16_t*>(w.panels)[i]);
      default:
        return kernels::Bf16ToFloat(static_cast<const uint16_t*>(w.panels)[i]);
    }
  }
  const int64_t i = r * w.cols + c;
  switch (w.dtype) {
    case kernels::DType::kF32:
      return static_cast<const float*>(w.data)[i];
    case kernels::DType::kF16:
      return kernels::Fp16ToFloat(static_cast<const uint16_t*>(w.data)[i]);
    case kernels::DType::kBF16:
      return kernels::Bf16ToFloat(static_cast<const uint16_t*>(w.data)[i]);
    default: {  // block-quantized: the reference dequantization of the element's block
      const int64_t bs = kernels::DTypeBlockSize(w.dtype);
      float block[kernels::kQK_K];
      kernels::DequantizeRow(w.dtype,
                             static_cast<const uint8_t*>(w.data) +
                                 r * kernels::WeightRowBytes(w.dtype, w.cols) +
                                 c / bs * kernels::DTypeBlockBytes(w.dtype),
                             bs, block);
      return block[c % bs];
    }
  }
}

// y = W x, in double precision.
inline std::vector<double> RefMatVec(const kernels::WeightView& m, const std::vector<double>& x) {
  std::vector<double> y(m.rows, 0.0);
  for (int64_t r = 0; r < m.rows; ++r) {
    double s = 0;
    for (int64_t k = 0; k < m.cols; ++k) s += WeightAt(m, r, k) * x[k];
    y[r] = s;
  }
  return y;
}

inline std::vector<double> RefRmsNorm(const std::vector<double>& x, const float* g, double eps) {
  double ss = 0;
  for (double v : x) ss += v * v;
  const double inv = 1.0 / std::sqrt(ss / x.size() + eps);
  std::vector<double> y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = x[i] * inv * g[i];
  return y;
}

// RoPE on adjacent pairs of each of `heads` heads of `v`, at position `pos`.
inline void RefRope(std::vector<double>& v, int heads, int hd, int pos, double freq_base) {
  for (int h = 0; h < heads; ++h) {
    for (int i = 0; i < hd; i += 2) {
      const double freq = std::pow(freq_base, -static_cast<double>(i) / hd);
      const double a = pos * freq;
      const double x0 = v[h * hd + i], x1 = v[h * hd + i + 1];
      v[h * hd + i] = x0 * std::cos(a) - x1 * std::sin(a);
      v[h * hd + i + 1] = x0 * std::sin(a) + x1 * std::cos(a);
    }
  }
}

// The residual feed-forward block of a layer (norm, SwiGLU, down projection) added onto x.
inline void RefFeedForward(const engine::LayerWeights& lw, double eps, std::vector<double>& x) {
  const std::vector<double> xb = RefRmsNorm(x, lw.ffn_norm, eps);
  std::vector<double> g = RefMatVec(lw.w_gate, xb);
  const std::vector<double> u = RefMatVec(lw.w_up, xb);
  for (size_t i = 0; i < g.size(); ++i) g[i] = g[i] / (1.0 + std::exp(-g[i])) * u[i];
  const std::vector<double> d = RefMatVec(lw.w_down, g);
  for (size_t i = 0; i < x.size(); ++i) x[i] += d[i];
}

// Returns the logits [tokens.size()][vocab] of every position.
inline std::vector<std::vector<double>> ReferenceLogits(const engine::LoadedModel& model,
                                                        const std::vector<int32_t>& tokens) {
  const engine::ModelConfig& c = model.config();
  const engine::ModelWeights& w = model.weights();
  const int dim = c.dim, hd = c.head_dim, nh = c.num_heads, nkv = c.num_kv_heads;
  const int n = static_cast<int>(tokens.size());
  auto matvec = RefMatVec;
  auto rmsnorm = [&](const std::vector<double>& x, const float* g) {
    return RefRmsNorm(x, g, c.rms_norm_eps);
  };
  auto rope = [&](std::vector<double>& v, int heads, int pos) {
    RefRope(v, heads, hd, pos, c.rope_freq_base);
  };
  // keys[layer][pos] = kv_dim vector
  std::vector<std::vector<std::vector<double>>> keys(c.num_layers), values(c.num_layers);
  std::vector<std::vector<double>> out;
  for (int p = 0; p < n; ++p) {
    std::vector<double> x(dim);
    for (int i = 0; i < dim; ++i) x[i] = WeightAt(w.token_embedding, tokens[p], i);
    for (int l = 0; l < c.num_layers; ++l) {
      const engine::LayerWeights& lw = w.layers[l];
      auto xb = rmsnorm(x, lw.attn_norm);
      auto q = matvec(lw.wq, xb);
      auto k = matvec(lw.wk, xb);
      auto v = matvec(lw.wv, xb);
      rope(q, nh, p);
      rope(k, nkv, p);
      keys[l].push_back(k);
      values[l].push_back(v);
      std::vector<double> att(nh * hd, 0.0);
      for (int h = 0; h < nh; ++h) {
        const int kh = h / (nh / nkv);
        std::vector<double> s(p + 1);
        double mx = -1e300;
        for (int t = 0; t <= p; ++t) {
          double d = 0;
          for (int i = 0; i < hd; ++i) d += q[h * hd + i] * keys[l][t][kh * hd + i];
          s[t] = d / std::sqrt(static_cast<double>(hd));
          mx = std::max(mx, s[t]);
        }
        double sum = 0;
        for (double& e : s) sum += (e = std::exp(e - mx));
        for (int t = 0; t <= p; ++t) {
          for (int i = 0; i < hd; ++i) att[h * hd + i] += s[t] / sum * values[l][t][kh * hd + i];
        }
      }
      auto o = matvec(lw.wo, att);
      for (int i = 0; i < dim; ++i) x[i] += o[i];
      RefFeedForward(lw, c.rms_norm_eps, x);
    }
    out.push_back(matvec(w.output, rmsnorm(x, w.final_norm)));
  }
  return out;
}

}  // namespace kvserve::testing

#endif  // KVSERVE_TESTS_ENGINE_TESTING_REFERENCE_LLAMA_H_
