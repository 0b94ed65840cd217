// A plain double-precision Llama forward pass, one token at a time, over a KV cache that keeps
// only a chosen set of earlier positions: the reference for token eviction. Keys are cached after
// RoPE at their original position (as the engine does); a query at position p attends to the
// kept positions plus p itself. The attention weights each cached position receives (summed
// over layers and query heads) are accumulated, so a test can run its own eviction rule on them.
// Independent of the engine's kernels, pool and policies.
#ifndef KVSERVE_TESTS_ENGINE_TESTING_REFERENCE_EVICTING_LLAMA_H_
#define KVSERVE_TESTS_ENGINE_TESTING_REFERENCE_EVICTING_LLAMA_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <vector>

#include "engine/model/model.h"
#include "tests/engine/testing/reference_llama.h"

namespace kvserve::testing {

// Chooses the positions to keep (any order) from `cached` (ascending original positions) with
// their accumulated attention `scores` (same order), before one more token is appended.
using ReferenceEvictionRule = std::function<std::vector<int32_t>(
    const std::vector<int32_t>& cached, const std::vector<double>& scores)>;

struct ReferenceEvictionRun {
  std::vector<std::vector<double>> logits;       // [position][vocab]
  std::vector<std::vector<int32_t>> kept_after;  // cached positions after each eviction
};

// Feeds tokens[0..n) one by one. Before appending token p, when the cache holds `budget`
// positions (or more), `rule` picks what stays.
inline ReferenceEvictionRun ReferenceWithEviction(const engine::LoadedModel& model,
                                                  const std::vector<int32_t>& tokens, int budget,
                                                  const ReferenceEvictionRule& rule) {
  const engine::ModelConfig& c = model.config();
  const engine::ModelWeights& w = model.weights();
  const int dim = c.dim, hd = c.head_dim, nh = c.num_heads, nkv = c.num_kv_heads;
  auto matvec = RefMatVec;
  auto rmsnorm = [&](const std::vector<double>& x, const float* g) {
    return RefRmsNorm(x, g, c.rms_norm_eps);
  };
  auto rope = [&](std::vector<double>& v, int heads, int pos) {
    RefRope(v, heads, hd, pos, c.rope_freq_base);
  };
  // The cache: original positions (ascending), their K/V per layer and accumulated scores.
  std::vector<int32_t> pos;
  std::vector<std::vector<std::vector<double>>> keys(c.num_layers), values(c.num_layers);
  std::vector<double> scores;
  ReferenceEvictionRun run;
  for (int p = 0; p < static_cast<int>(tokens.size()); ++p) {
    if (static_cast<int>(pos.size()) + 1 > budget) {
      std::vector<int32_t> keep = rule(pos, scores);
      std::sort(keep.begin(), keep.end());
      std::vector<size_t> idx;
      for (int32_t k : keep) idx.push_back(std::find(pos.begin(), pos.end(), k) - pos.begin());
      auto filter = [&idx](auto& v) {
        std::remove_reference_t<decltype(v)> out;
        for (size_t i : idx) out.push_back(v[i]);
        v = std::move(out);
      };
      filter(pos);
      filter(scores);
      for (int l = 0; l < c.num_layers; ++l) {
        filter(keys[l]);
        filter(values[l]);
      }
      run.kept_after.push_back(pos);
    }
    pos.push_back(p);
    scores.push_back(0.0);
    std::vector<double> x(dim);
    for (int i = 0; i < dim; ++i) x[i] = WeightAt(w.token_embedding, tokens[p], i);
    const int n = static_cast<int>(pos.size());
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
        std::vector<double> s(n);
        double mx = -1e300;
        for (int t = 0; t < n; ++t) {
          double d = 0;
          for (int i = 0; i < hd; ++i) d += q[h * hd + i] * keys[l][t][kh * hd + i];
          s[t] = d / std::sqrt(static_cast<double>(hd));
          mx = std::max(mx, s[t]);
        }
        double sum = 0;
        for (double& e : s) sum += (e = std::exp(e - mx));
        for (int t = 0; t < n; ++t) {
          scores[t] += s[t] / sum;
          for (int i = 0; i < hd; ++i) att[h * hd + i] += s[t] / sum * values[l][t][kh * hd + i];
        }
      }
      auto o = matvec(lw.wo, att);
      for (int i = 0; i < dim; ++i) x[i] += o[i];
      RefFeedForward(lw, c.rms_norm_eps, x);
    }
    run.logits.push_back(matvec(w.output, rmsnorm(x, w.final_norm)));
  }
  return run;
}

// Eviction per layer and KV head (H2O's granularity): before appending token p, when the caches
// hold `budget` positions, `rule` is asked once for each (layer l, KV head g), unit
// l * num_kv_heads + g, with that unit's cached positions and its scores (the attention weights
// its positions received, summed over the query heads of the group), and each unit keeps its
// own positions (K and V rows of that head only). kept_after[e][unit]: positions after eviction e.
using ReferenceUnitEvictionRule = std::function<std::vector<int32_t>(
    int unit, int next_position, const std::vector<int32_t>& cached,
    const std::vector<double>& scores)>;

struct ReferenceUnitEvictionRun {
  std::vector<std::vector<double>> logits;                    // [position][vocab]
  std::vector<std::vector<std::vector<int32_t>>> kept_after;  // [eviction][unit][kept]
};

inline ReferenceUnitEvictionRun ReferenceWithUnitEviction(const engine::LoadedModel& model,
                                                          const std::vector<int32_t>& tokens,
                                                          int budget,
                                                          const ReferenceUnitEvictionRule& rule) {
  const engine::ModelConfig& c = model.config();
  const engine::ModelWeights& w = model.weights();
  const int dim = c.dim, hd = c.head_dim, nh = c.num_heads, nkv = c.num_kv_heads;
  const int units = c.num_layers * nkv;
  auto matvec = RefMatVec;
  auto rmsnorm = [&](const std::vector<double>& x, const float* g) {
    return RefRmsNorm(x, g, c.rms_norm_eps);
  };
  auto rope = [&](std::vector<double>& v, int heads, int pos) {
    RefRope(v, heads, hd, pos, c.rope_freq_base);
  };
  // Per unit: original positions (ascending), the head's K and V rows, accumulated scores.
  std::vector<std::vector<int32_t>> pos(units);
  std::vector<std::vector<std::vector<double>>> keys(units), values(units);
  std::vector<std::vector<double>> scores(units);
  ReferenceUnitEvictionRun run;
  for (int p = 0; p < static_cast<int>(tokens.size()); ++p) {
    if (static_cast<int>(pos[0].size()) + 1 > budget) {
      std::vector<std::vector<int32_t>> kept(units);
      for (int u = 0; u < units; ++u) {
        std::vector<int32_t> keep = rule(u, p, pos[u], scores[u]);
        std::sort(keep.begin(), keep.end());
        std::vector<size_t> idx;
        for (int32_t k : keep) {
          idx.push_back(std::find(pos[u].begin(), pos[u].end(), k) - pos[u].begin());
        }
        auto filter = [&idx](auto& v) {
          std::remove_reference_t<decltype(v)> out;
          for (size_t i : idx) out.push_back(v[i]);
          v = std::move(out);
        };
        filter(pos[u]);
        filter(scores[u]);
        filter(keys[u]);
        filter(values[u]);
        kept[u] = pos[u];
      }
      run.kept_after.push_back(std::move(kept));
    }
    for (int u = 0; u < units; ++u) {
      pos[u].push_back(p);
      scores[u].push_back(0.0);
    }
    std::vector<double> x(dim);
    for (int i = 0; i < dim; ++i) x[i] = WeightAt(w.token_embedding, tokens[p], i);
    const int n = static_cast<int>(pos[0].size());
    for (int l = 0; l < c.num_layers; ++l) {
      const engine::LayerWeights& lw = w.layers[l];
      auto xb = rmsnorm(x, lw.attn_norm);
      auto q = matvec(lw.wq, xb);
      auto k = matvec(lw.wk, xb);
      auto v = matvec(lw.wv, xb);
      rope(q, nh, p);
      rope(k, nkv, p);
      for (int g = 0; g < nkv; ++g) {
        keys[l * nkv + g].emplace_back(k.begin() + g * hd, k.begin() + (g + 1) * hd);
        values[l * nkv + g].emplace_back(v.begin() + g * hd, v.begin() + (g + 1) * hd);
      }
      std::vector<double> att(nh * hd, 0.0);
      for (int h = 0; h < nh; ++h) {
        const int u = l * nkv + h / (nh / nkv);
        std::vector<double> s(n);
        double mx = -1e300;
        for (int t = 0; t < n; ++t) {
          double d = 0;
          for (int i = 0; i < hd; ++i) d += q[h * hd + i] * keys[u][t][i];
          s[t] = d / std::sqrt(static_cast<double>(hd));
          mx = std::max(mx, s[t]);
        }
        double sum = 0;
        for (double& e : s) sum += (e = std::exp(e - mx));
        for (int t = 0; t < n; ++t) {
          scores[u][t] += s[t] / sum;
          for (int i = 0; i < hd; ++i) att[h * hd + i] += s[t] / sum * values[u][t][i];
        }
      }
      auto o = matvec(lw.wo, att);
      for (int i = 0; i < dim; ++i) x[i] += o[i];
      RefFeedForward(lw, c.rms_norm_eps, x);
    }
    run.logits.push_back(matvec(w.output, rmsnorm(x, w.final_norm)));
  }
  return run;
}

}  // namespace kvserve::testing

#endif  // KVSERVE_TESTS_ENGINE_TESTING_REFERENCE_EVICTING_LLAMA_H_
