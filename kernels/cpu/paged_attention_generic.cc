// Paged attention work items for any head_dim.
//
// An item keeps, for each of its query heads, a running max m, running sum l and unnormalised
// output acc (online softmax). Per KV head and span of up to kSpan tokens of a block:
//   1. scores s[h][j] = (q_h * scale) . K_j in register tiles of 4 heads (2 with AVX2 only) by
//      4 tokens: each loaded K vector serves every head of the tile, each q vector 4 tokens, and
//      4 horizontal sums finish together;
//   2. online-softmax update of m, l, acc (the correction exp() runs only when the max grows);
//   3. acc[h] += sum_j p[h][j] * V_j in tiles of heads x head-dim chunks held in registers, so a
//      loaded V vector feeds every head of the tile and a broadcast p feeds every chunk.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "kernels/cpu/paged_attention_internal.h"
#include "kernels/cpu/simd.h"

namespace kvserve::kernels::cpu::attention {
namespace {

constexpr int kSpan = 64;  // tokens per softmax update
constexpr float kNegInf = -std::numeric_limits<float>::infinity();
// Accumulator registers per tile and heads per score tile: AVX-512 has 32 vector registers,
// AVX2 16.
#if defined(KVSERVE_SIMD_AVX512)
constexpr int kTileRegs = 16;
constexpr int kScoreHeads = 4;
#else
constexpr int kTileRegs = 8;
constexpr int kScoreHeads = 2;
#endif

// State of the query heads of one pass, indexed by slot (KV head within the item, then query
// head within the group); `p` holds the scores of the KV head being processed only.
template <class V>
struct Scratch {
  alignas(64) float q[kMaxItemHeads][kMaxHeadDim];    // q * scale, zero padded
  alignas(64) float qp[kMaxItemHeads][kMaxHeadDim];   // lowrank: B^T (q * scale), zero padded
  alignas(64) float acc[kMaxItemHeads][kMaxHeadDim];  // unnormalised output, zero padded
  alignas(64) float p[kMaxItemHeads][kSpan];          // scores, then probabilities
  float m[kMaxItemHeads];
  float l[kMaxItemHeads];
};

// p[h0 + i][jout + r] = q[hb + h0 + i] . K[token0 + r] for i < kM, r < kN. kProj: the projected
// queries qp against lowrank coefficients (head_dim is then the rank).
template <class V, int kM, int kN, bool kProj, class Rows>
KVSERVE_ALWAYS_INLINE void ScoreTile(const Rows& k, int token0, int jout, int h0, int hb,
                                     int head_dim, Scratch<V>& sc) {
  using Reg = typename V::Reg;
  constexpr int kL = V::kLanes;
  const int full = head_dim / kL;
  const int tail = head_dim % kL;
  Reg acc[kM][kN];
  for (int i = 0; i < kM; ++i) {
    for (int r = 0; r < kN; ++r) acc[i][r] = V::Zero();
  }
  const float* q[kM];
  for (int i = 0; i < kM; ++i) q[i] = kProj ? sc.qp[hb + h0 + i] : sc.q[hb + h0 + i];
  for (int c = 0; c < full; ++c) {
    Reg qv[kM];
    for (int i = 0; i < kM; ++i) qv[i] = V::Load(q[i] + c * kL);
    for (int r = 0; r < kN; ++r) {
      const Reg kv = k.template Load<V>(token0 + r, c * kL);
      for (int i = 0; i < kM; ++i) acc[i][r] = V::Fma(qv[i], kv, acc[i][r]);
    }
  }
  if (tail != 0) {
    Reg qv[kM];
    for (int i = 0; i < kM; ++i) qv[i] = V::Load(q[i] + full * kL);  // zero padded
    for (int r = 0; r < kN; ++r) {
      const Reg kv = k.template LoadN<V>(token0 + r, full * kL, tail);
      for (int i = 0; i < kM; ++i) acc[i][r] = V::Fma(qv[i], kv, acc[i][r]);
    }
  }
  for (int i = 0; i < kM; ++i) {
    if constexpr (kN == 4) {
      V::Reduce4Store(acc[i][0], acc[i][1], acc[i][2], acc[i][3], sc.p[h0 + i] + jout);
    } else {
      for (int r = 0; r < kN; ++r) sc.p[h0 + i][jout + r] = V::ReduceAdd(acc[i][r]);
    }
  }
}

template <class V, int kM, bool kProj, class Rows>
void ScoreHeads(const Rows& k, int j0, int ns, int h0, int hb, int head_dim, Scratch<V>& sc) {
  int j = 0;
  for (; j + 4 <= ns; j += 4) ScoreTile<V, kM, 4, kProj>(k, j0 + j, j, h0, hb, head_dim, sc);
  for (; j < ns; ++j) ScoreTile<V, kM, 1, kProj>(k, j0 + j, j, h0, hb, head_dim, sc);
}

// Step 1 for heads [0, gh) (slots hb + h) and tokens [j0, j0 + ns) of the block.
template <class V, bool kProj, class Rows>
void Scores(const Rows& k, int j0, int ns, int gh, int hb, int head_dim, Scratch<V>& sc) {
  int h = 0;
  for (; h + kScoreHeads <= gh; h += kScoreHeads) {
    ScoreHeads<V, kScoreHeads, kProj>(k, j0, ns, h, hb, head_dim, sc);
  }
  const int rest = gh - h;  // < kScoreHeads
  if constexpr (kScoreHeads == 4) {
    if (rest == 3) ScoreHeads<V, 3, kProj>(k, j0, ns, h, hb, head_dim, sc);
    if (rest == 2) ScoreHeads<V, 2, kProj>(k, j0, ns, h, hb, head_dim, sc);
  }
  if (rest == 1) ScoreHeads<V, 1, kProj>(k, j0, ns, h, hb, head_dim, sc);
}

// Step 2: online-softmax update of heads [0, gh) (slots hb + h); leaves exp(s - m) in sc.p.
template <class V>
void SoftmaxUpdate(int ns, int gh, int hb, int head_dim, Scratch<V>& sc) {
  using W = simd::VecWide;
  using Reg = W::Reg;
  constexpr int kL = W::kLanes;
  for (int hh = 0; hh < gh; ++hh) {
    float* s = sc.p[hh];
    const int h = hb + hh;
    Reg vmax = W::Set1(kNegInf);
    for (int i = 0; i < ns; i += kL) {
      const int n = std::min(kL, ns - i);
      vmax = W::Max(vmax, n == kL ? W::Load(s + i) : W::FillFrom(W::LoadN(s + i, n), n, kNegInf));
    }
    const float m_new = std::max(sc.m[h], W::ReduceMax(vmax));
    if (m_new > sc.m[h]) {
      if (sc.m[h] != kNegInf) {  // rescale what was accumulated under the old max
        const float corr = std::exp(sc.m[h] - m_new);
        sc.l[h] *= corr;
        const Reg c = W::Set1(corr);
        for (int d = 0; d < head_dim; d += kL) {
          const int n = std::min(kL, head_dim - d);
          W::StoreN(sc.acc[h] + d, W::Mul(W::LoadN(sc.acc[h] + d, n), c), n);
        }
      }
      sc.m[h] = m_new;
    }
    const Reg mv = W::Set1(m_new);
    Reg sum = W::Zero();
    for (int i = 0; i < ns; i += kL) {
      const int n = std::min(kL, ns - i);
      if (n == kL) {
        const Reg e = W::Exp(W::Sub(W::Load(s + i), mv));
        W::Store(s + i, e);
        sum = W::Add(sum, e);
      } else {
        const Reg e = W::ZeroFrom(W::Exp(W::Sub(W::LoadN(s + i, n), mv)), n);
        W::StoreN(s + i, e, n);
        sum = W::Add(sum, e);
      }
    }
    sc.l[h] += W::ReduceAdd(sum);
  }
}

// acc[hb + h0 + i][chunk c0 + c] += sum_j p[h0 + i][j] * V[j0 + j][chunk c0 + c], i < kG,
// c < kC.
// The last chunk reads only `tail` dims when kTail. kU accumulator sets over alternate tokens
// keep the FMA chains short when the tile is small.
template <class V, int kG, int kC, bool kTail, class Rows>
KVSERVE_ALWAYS_INLINE void AccumulateTile(const Rows& v, int j0, int ns, int h0, int hb, int c0,
                                          int tail, Scratch<V>& sc) {
  using Reg = typename V::Reg;
  constexpr int kL = V::kLanes;
  constexpr int kU = kG * kC >= 4 ? 1 : 4 / (kG * kC);
  Reg a[kU][kG][kC];
  for (int i = 0; i < kG; ++i) {
    for (int c = 0; c < kC; ++c) {
      a[0][i][c] = V::Load(sc.acc[hb + h0 + i] + (c0 + c) * kL);
      for (int u = 1; u < kU; ++u) a[u][i][c] = V::Zero();
    }
  }
  auto step = [&](int u, int j) {
    Reg vv[kC];
    for (int c = 0; c < kC; ++c) {
      const int d = (c0 + c) * kL;
      vv[c] = (kTail && c == kC - 1) ? v.template LoadN<V>(j0 + j, d, tail)
                                     : v.template Load<V>(j0 + j, d);
    }
    for (int i = 0; i < kG; ++i) {
      const Reg pb = V::Set1(sc.p[h0 + i][j]);
      for (int c = 0; c < kC; ++c) a[u][i][c] = V::Fma(pb, vv[c], a[u][i][c]);
    }
  };
  int j = 0;
  for (; j + kU <= ns; j += kU) {
    for (int u = 0; u < kU; ++u) step(u, j + u);
  }
  for (; j < ns; ++j) step(0, j);
  for (int i = 0; i < kG; ++i) {
    for (int c = 0; c < kC; ++c) {
      for (int u = 1; u < kU; ++u) a[0][i][c] = V::Add(a[0][i][c], a[u][i][c]);
      V::Store(sc.acc[hb + h0 + i] + (c0 + c) * kL, a[0][i][c]);
    }
  }
}

template <class V, int kG, class Rows>
void AccumulateHeads(const Rows& v, int j0, int ns, int h0, int hb, int head_dim, Scratch<V>& sc) {
  constexpr int kL = V::kLanes;
  constexpr int kC = kTileRegs / kG > 0 ? kTileRegs / kG : 1;
  const int full = head_dim / kL;
  const int tail = head_dim % kL;
  int c = 0;
  for (; c + kC <= full; c += kC) AccumulateTile<V, kG, kC, false>(v, j0, ns, h0, hb, c, 0, sc);
  for (; c < full; ++c) AccumulateTile<V, kG, 1, false>(v, j0, ns, h0, hb, c, 0, sc);
  if (tail != 0) AccumulateTile<V, kG, 1, true>(v, j0, ns, h0, hb, full, tail, sc);
}

// Step 3 for heads [0, gh) (slots hb + h), in groups of 8, 4, 2 and 1.
template <class V, class Rows>
void AccumulateV(const Rows& v, int j0, int ns, int gh, int hb, int head_dim, Scratch<V>& sc) {
  int h = 0;
  for (; h + 8 <= gh; h += 8) AccumulateHeads<V, 8>(v, j0, ns, h, hb, head_dim, sc);
  for (; h + 4 <= gh; h += 4) AccumulateHeads<V, 4>(v, j0, ns, h, hb, head_dim, sc);
  for (; h + 2 <= gh; h += 2) AccumulateHeads<V, 2>(v, j0, ns, h, hb, head_dim, sc);
  for (; h < gh; ++h) AccumulateHeads<V, 1>(v, j0, ns, h, hb, head_dim, sc);
}

// Loads token t's queries (times the scale, zero padded) of query heads [h_lo, h_lo + gh) of
// each KV head in [g0, g1) into sc.q and clears their running state.
template <class V>
void InitSlots(const Problem& pr, int64_t t, int g0, int g1, int h_lo, int gh, Scratch<V>& sc) {
  constexpr int kL = V::kLanes;
  const AttentionBatch& b = *pr.batch;
  const int hd = pr.head_dim;
  const int hd_pad = (hd + kL - 1) / kL * kL;
  for (int g = g0; g < g1; ++g) {
    for (int h = 0; h < gh; ++h) {
      const int slot = (g - g0) * gh + h;
      const float* q = b.q + (t * b.num_heads + static_cast<int64_t>(g) * pr.group + h_lo + h) * hd;
      for (int d = 0; d < hd; ++d) sc.q[slot][d] = q[d] * b.scale;
      std::fill(sc.q[slot] + hd, sc.q[slot] + hd_pad, 0.0f);
      std::fill(sc.acc[slot], sc.acc[slot] + hd_pad, 0.0f);
      sc.m[slot] = kNegInf;
      sc.l[slot] = 0.0f;
    }
  }
}

// Writes token t's outputs acc / l of the slots InitSlots filled.
template <class V>
void StoreSlots(const Problem& pr, int64_t t, int g0, int g1, int h_lo, int gh,
                const Scratch<V>& sc) {
  const AttentionBatch& b = *pr.batch;
  const int hd = pr.head_dim;
  for (int g = g0; g < g1; ++g) {
    for (int h = 0; h < gh; ++h) {
      const int slot = (g - g0) * gh + h;
      float* out = b.out + (t * b.num_heads + static_cast<int64_t>(g) * pr.group + h_lo + h) * hd;
      const float inv = sc.l[slot] > 0.0f ? 1.0f / sc.l[slot] : 0.0f;
      for (int d = 0; d < hd; ++d) out[d] = sc.acc[slot][d] * inv;
    }
  }
}

// Query heads [h_lo, h_hi) of the group of every KV head in [g0, g1), for token t.
template <class V>
void RunPass(const Problem& pr, int64_t t, int g0, int g1, int h_lo, int h_hi, Scratch<V>& sc) {
  constexpr int kL = V::kLanes;
  const AttentionBatch& b = *pr.batch;
  const int hd = pr.head_dim;
  const int gh = h_hi - h_lo;
  InitSlots(pr, t, g0, g1, h_lo, gh, sc);
  const PagedKvLayerView& cache = *pr.cache;
  const int rank = cache.shape.key_rank;
  if (cache.key_basis != nullptr) {
    // Queries projected on each KV head's key basis, for the lowrank blocks: qp = B^T (q scale).
    const int rank_pad = (rank + kL - 1) / kL * kL;
    for (int g = g0; g < g1; ++g) {
      const float* basis = cache.key_basis + static_cast<int64_t>(g) * hd * rank;
      for (int h = 0; h < gh; ++h) {
        const int slot = (g - g0) * gh + h;
        std::fill(sc.qp[slot], sc.qp[slot] + rank_pad, 0.0f);
        for (int d = 0; d < hd; ++d) {
          const float qd = sc.q[slot][d];
          for (int i = 0; i < rank; ++i) sc.qp[slot][i] += basis[d * rank + i] * qd;
        }
      }
    }
  }
  const int32_t* table = b.seq_block_tables[b.token_seq[t]];
  const ScoreRecorder rec(pr, t, (g1 - g0) * gh, b.token_kv_len[t], g0, gh);
  ForEachBlock(cache, table, b.token_kv_len[t], g0, g1,
               [&](auto codec, const uint8_t* k_region, const uint8_t* v_region, int nv,
                   const BlockAhead& ahead, int first_slot) {
                 using Codec = decltype(codec);
                 if constexpr (kIsLowrankCodec<Codec>) {
                   KVSERVE_KERNEL_CHECK(cache.key_basis != nullptr,
                                        "PagedAttention: a lowrank block needs the key basis");
                 }
                 for (int g = g0; g < g1; ++g) {
                   ahead.Prefetch(g);
                   const typename Codec::KeyRows k(k_region, cache.shape, g);
                   const typename Codec::ValueRows v(v_region, cache.shape, g);
                   const int hb = (g - g0) * gh;
                   for (int j0 = 0; j0 < nv; j0 += kSpan) {
                     const int ns = std::min(kSpan, nv - j0);
                     if constexpr (kIsLowrankCodec<Codec>) {
                       Scores<V, true>(k, j0, ns, gh, hb, rank, sc);
                     } else {
                       Scores<V, false>(k, j0, ns, gh, hb, hd, sc);
                     }
                     SoftmaxUpdate<V>(ns, gh, hb, hd, sc);
                     if (rec.active()) {
                       for (int hh = 0; hh < gh; ++hh) {
                         std::copy(sc.p[hh], sc.p[hh] + ns, rec.Row(hb + hh) + first_slot + j0);
                         rec.Span(hb + hh, first_slot + j0, ns, sc.m[hb + hh]);
                       }
                     }
                     AccumulateV<V>(v, j0, ns, gh, hb, hd, sc);
                   }
                 }
               });
  rec.Finish([&](int h) { return sc.m[h]; }, [&](int h) { return sc.l[h]; });
  StoreSlots(pr, t, g0, g1, h_lo, gh, sc);
}

template <class V>
void RunItem(const Problem& pr, int64_t t, int g0, int g1, Arena& /*arena*/) {
  Scratch<V> sc;
  if ((g1 - g0) * pr.group <= kMaxItemHeads) {
    RunPass<V>(pr, t, g0, g1, 0, pr.group, sc);
    return;
  }
  for (int h = 0; h < pr.group; h += kMaxItemHeads) {  // one KV head, a very large group
    RunPass<V>(pr, t, g0, g0 + 1, h, std::min(pr.group, h + kMaxItemHeads), sc);
  }
}

// Rows of one KV head of one block decoded to floats: [tokens][stride], each row zero padded to
// whole registers. Load and LoadN return exactly what the codec's reader returned when the rows
// were decoded, so the attention math on them is the same, bit for bit, as on the block itself.
class DecodedRows {
 public:
  DecodedRows(const float* rows, int stride) : rows_(rows), stride_(stride) {}
  template <class V>
  typename V::Reg Load(int token, int d0) const {
    return V::Load(rows_ + static_cast<int64_t>(token) * stride_ + d0);
  }
  template <class V>
  typename V::Reg LoadN(int token, int d0, int n) const {
    return V::LoadN(rows_ + static_cast<int64_t>(token) * stride_ + d0, n);
  }

 private:
  const float* rows_;
  int stride_;
};

// Decodes rows [0, nv) of `rows` (head_dim values each) into out[nv][stride] through the same
// Load / LoadN calls the attention steps make.
template <class V, class Rows>
void DecodeRows(const Rows& rows, int nv, int head_dim, int stride, float* out) {
  constexpr int kL = V::kLanes;
  const int full = head_dim / kL;
  const int tail = head_dim % kL;
  for (int j = 0; j < nv; ++j) {
    float* dst = out + static_cast<int64_t>(j) * stride;
    for (int c = 0; c < full; ++c) V::Store(dst + c * kL, rows.template Load<V>(j, c * kL));
    if (tail != 0) V::Store(dst + full * kL, rows.template LoadN<V>(j, full * kL, tail));
  }
}

// Where RunTokens keeps its state in the arena: the tokens' Scratch, then one block of K rows and
// one of V rows of a KV head, decoded.
template <class V>
struct TokensArenaLayout {
  TokensArenaLayout(int tokens, int block_size, int head_dim) {
    const int hd_pad = (head_dim + V::kLanes - 1) / V::kLanes * V::kLanes;
    const size_t rows = static_cast<size_t>(block_size) * hd_pad * sizeof(float);
    kbuf = Arena::RoundUp(static_cast<size_t>(tokens) * sizeof(Scratch<V>));
    vbuf = kbuf + Arena::RoundUp(rows);
    bytes = vbuf + Arena::RoundUp(rows);
  }
  size_t kbuf;
  size_t vbuf;
  size_t bytes;
};

// Tokens [t0, t1) of one sequence (REQUIRES: same sequence, no score recording, no lowrank
// blocks, (g1 - g0) * group <= kMaxItemHeads): each block's K and V rows of a KV head are decoded
// once for all the tokens, then every token runs exactly the steps RunPass runs, in the same order
// (blocks in order, then KV heads, then spans of kSpan slots), on its own state. A prefill chunk
// of quantized blocks decodes each block once per run instead of once per token, and each token's
// output is bitwise what RunPass gives it.
template <class V>
void RunTokens(const Problem& pr, int64_t t0, int64_t t1, int g0, int g1, Arena& arena) {
  constexpr int kL = V::kLanes;
  const AttentionBatch& b = *pr.batch;
  const PagedKvLayerView& cache = *pr.cache;
  const int hd = pr.head_dim;
  const int hd_pad = (hd + kL - 1) / kL * kL;
  const int gh = pr.group;
  const int nt = static_cast<int>(t1 - t0);
  const int bs = cache.shape.block_size;
  const TokensArenaLayout<V> layout(nt, bs, hd);
  KVSERVE_KERNEL_CHECK(arena.capacity() >= layout.bytes, "PagedAttention: arena too small");
  Scratch<V>* const states = reinterpret_cast<Scratch<V>*>(arena.data());
  float* const kbuf = reinterpret_cast<float*>(arena.data() + layout.kbuf);
  float* const vbuf = reinterpret_cast<float*>(arena.data() + layout.vbuf);
  int max_len = 0;
  for (int i = 0; i < nt; ++i) {
    max_len = std::max(max_len, b.token_kv_len[t0 + i]);
    InitSlots(pr, t0 + i, g0, g1, 0, gh, states[i]);
  }
  const int32_t* table = b.seq_block_tables[b.token_seq[t0]];
  ForEachBlock(cache, table, max_len, g0, g1,
               [&](auto codec, const uint8_t* k_region, const uint8_t* v_region, int nv_max,
                   const BlockAhead& ahead, int first_slot) {
                 using Codec = decltype(codec);
                 if constexpr (kIsLowrankCodec<Codec>) {
                   KVSERVE_KERNEL_CHECK(false, "PagedAttention: lowrank blocks take RunPass");
                 } else {
                   for (int g = g0; g < g1; ++g) {
                     ahead.Prefetch(g);
                     DecodeRows<V>(typename Codec::KeyRows(k_region, cache.shape, g), nv_max, hd,
                                   hd_pad, kbuf);
                     DecodeRows<V>(typename Codec::ValueRows(v_region, cache.shape, g), nv_max, hd,
                                   hd_pad, vbuf);
                     const DecodedRows k(kbuf, hd_pad);
                     const DecodedRows v(vbuf, hd_pad);
                     const int hb = (g - g0) * gh;
                     for (int i = 0; i < nt; ++i) {
                       const int nv = std::min(nv_max, b.token_kv_len[t0 + i] - first_slot);
                       Scratch<V>& sc = states[i];
                       for (int j0 = 0; j0 < nv; j0 += kSpan) {
                         const int ns = std::min(kSpan, nv - j0);
                         Scores<V, false>(k, j0, ns, gh, hb, hd, sc);
                         SoftmaxUpdate<V>(ns, gh, hb, hd, sc);
                         AccumulateV<V>(v, j0, ns, gh, hb, hd, sc);
                       }
                     }
                   }
                 }
               });
  for (int i = 0; i < nt; ++i) StoreSlots(pr, t0 + i, g0, g1, 0, gh, states[i]);
}

}  // namespace

void RunItemWide(const Problem& pr, int64_t t, int g0, int g1, Arena& arena) {
  RunItem<simd::VecWide>(pr, t, g0, g1, arena);
}
void RunItemNarrow(const Problem& pr, int64_t t, int g0, int g1, Arena& arena) {
  RunItem<simd::VecNarrow>(pr, t, g0, g1, arena);
}
void RunTokensWide(const Problem& pr, int64_t t0, int64_t t1, int g0, int g1, Arena& arena) {
  RunTokens<simd::VecWide>(pr, t0, t1, g0, g1, arena);
}
void RunTokensNarrow(const Problem& pr, int64_t t0, int64_t t1, int g0, int g1, Arena& arena) {
  RunTokens<simd::VecNarrow>(pr, t0, t1, g0, g1, arena);
}
size_t RunTokensArenaBytes(const Problem& pr, int tokens) {
  const int bs = pr.cache->shape.block_size;
  return std::max(TokensArenaLayout<simd::VecWide>(tokens, bs, pr.head_dim).bytes,
                  TokensArenaLayout<simd::VecNarrow>(tokens, bs, pr.head_dim).bytes);
}

}  // namespace kvserve::kernels::cpu::attention
