// Paged attention work items for head_dim 8 with AVX-512 (stories260K-sized heads).
//
// A tile of 16 tokens of one KV head is 8 registers of K, two rows each. The tile is transposed
// once (24 shuffles) into 8 registers that hold one dimension of all 16 tokens, so the scores of
// a query head are 8 FMAs against broadcast q elements, already one score per lane: no horizontal
// sums. Softmax runs on that register directly, and V (also two rows per register) is
// accumulated with each probability pair broadcast into the two halves by a permute. All query
// heads of a KV head share its loads and the transpose.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "kernels/cpu/paged_attention_internal.h"
#include "kernels/cpu/simd.h"

namespace kvserve::kernels::cpu::attention {

#if defined(KVSERVE_SIMD_AVX512)

namespace {

using V = simd::VecAvx512;
constexpr int kHeadDim = 8;
constexpr int kTile = 16;  // tokens per tile
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Token (within the tile) whose score Transpose8 leaves in each lane, and the inverse map.
constexpr int kLaneToken[kTile] = {0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15};
constexpr int TokenLane(int token) {
  for (int i = 0; i < kTile; ++i) {
    if (kLaneToken[i] == token) return i;
  }
  return -1;
}

// In: r[k] = rows 2k and 2k + 1 of a 16 x 8 tile. Out: t[d] = element d of the 16 rows, row
// kLaneToken[i] in lane i.
inline void Transpose8(const __m512 r[8], __m512 t[8]) {
  __m512 a[4], b[4];
  for (int k = 0; k < 4; ++k) {
    a[k] = _mm512_unpacklo_ps(r[2 * k], r[2 * k + 1]);
    b[k] = _mm512_unpackhi_ps(r[2 * k], r[2 * k + 1]);
  }
  // 4 x 4 transposes inside each 128-bit block: x for rows 0..7, y for rows 8..15.
  __m512 x[4], y[4];
  x[0] = _mm512_shuffle_ps(a[0], a[1], 0x44);
  x[1] = _mm512_shuffle_ps(a[0], a[1], 0xee);
  x[2] = _mm512_shuffle_ps(b[0], b[1], 0x44);
  x[3] = _mm512_shuffle_ps(b[0], b[1], 0xee);
  y[0] = _mm512_shuffle_ps(a[2], a[3], 0x44);
  y[1] = _mm512_shuffle_ps(a[2], a[3], 0xee);
  y[2] = _mm512_shuffle_ps(b[2], b[3], 0x44);
  y[3] = _mm512_shuffle_ps(b[2], b[3], 0xee);
  for (int o = 0; o < 4; ++o) {
    t[o] = _mm512_shuffle_f32x4(x[o], y[o], 0x88);      // dims 0..3: blocks 0 and 2
    t[4 + o] = _mm512_shuffle_f32x4(x[o], y[o], 0xdd);  // dims 4..7: blocks 1 and 3
  }
}

struct Consts {
  __m512i lane_token;     // kLaneToken as int32 lanes
  __m512i pair_index[8];  // lanes of tokens 2k (low half) and 2k + 1 (high half)
  __m512i token_lane;     // lane of each token: permutes a score register into token order
  Consts() {
    alignas(64) int32_t buf[kTile];
    for (int i = 0; i < kTile; ++i) buf[i] = kLaneToken[i];
    lane_token = _mm512_load_si512(buf);
    for (int i = 0; i < kTile; ++i) buf[i] = TokenLane(i);
    token_lane = _mm512_load_si512(buf);
    for (int k = 0; k < 8; ++k) {
      for (int i = 0; i < kTile; ++i) buf[i] = TokenLane(2 * k + (i < 8 ? 0 : 1));
      pair_index[k] = _mm512_load_si512(buf);
    }
  }
};

struct HeadState {
  __m512 acc;  // lanes 0..7: sum over even tokens, 8..15: over odd tokens
  __m512 l;    // running sum of exp, per lane
  float m;     // running max
};

// rec (when active): numerators of heads [hb, hb + gh) of the recorder go to slots
// [slot0 + j0, slot0 + j0 + nt).
template <class KRows, class VRows>
inline void ProcessTile(const KRows& k, const VRows& v, int j0, int nt, int gh,
                        const float (*q)[kHeadDim], const Consts& cs, HeadState* st,
                        const ScoreRecorder& rec, int hb, int slot0) {
  __m512 kr[8], vr[8], kt[8];
  for (int p = 0; p < 8; ++p) {
    const int n = std::clamp(nt - 2 * p, 0, 2) * kHeadDim;  // valid values of the row pair
    kr[p] = k.template LoadPacked<V>(j0 + 2 * p, n);
    vr[p] = v.template LoadPacked<V>(j0 + 2 * p, n);
  }
  Transpose8(kr, kt);
  const __mmask16 valid = _mm512_cmplt_epi32_mask(cs.lane_token, _mm512_set1_epi32(nt));
  for (int h = 0; h < gh; ++h) {
    __m512 s0 = _mm512_mul_ps(kt[0], _mm512_set1_ps(q[h][0]));
    __m512 s1 = _mm512_mul_ps(kt[1], _mm512_set1_ps(q[h][1]));
    for (int d = 2; d < kHeadDim; d += 2) {
      s0 = _mm512_fmadd_ps(kt[d], _mm512_set1_ps(q[h][d]), s0);
      s1 = _mm512_fmadd_ps(kt[d + 1], _mm512_set1_ps(q[h][d + 1]), s1);
    }
    const __m512 s = _mm512_mask_mov_ps(_mm512_set1_ps(kNegInf), valid, _mm512_add_ps(s0, s1));
    HeadState& hs = st[h];
    const float tile_max = _mm512_reduce_max_ps(s);
    if (tile_max > hs.m) {
      if (hs.m != kNegInf) {
        const __m512 corr = _mm512_set1_ps(std::exp(hs.m - tile_max));
        hs.acc = _mm512_mul_ps(hs.acc, corr);
        hs.l = _mm512_mul_ps(hs.l, corr);
      }
      hs.m = tile_max;
    }
    const __m512 p = _mm512_maskz_mov_ps(valid, V::Exp(_mm512_sub_ps(s, _mm512_set1_ps(hs.m))));
    hs.l = _mm512_add_ps(hs.l, p);
    if (rec.active()) {
      _mm512_mask_storeu_ps(rec.Row(hb + h) + slot0 + j0, static_cast<__mmask16>((1u << nt) - 1),
                            _mm512_permutexvar_ps(cs.token_lane, p));
      rec.Span(hb + h, slot0 + j0, nt, hs.m);
    }
    __m512 a0 = hs.acc;
    __m512 a1 = _mm512_setzero_ps();
    for (int r = 0; r < 8; r += 2) {
      a0 = _mm512_fmadd_ps(_mm512_permutexvar_ps(cs.pair_index[r], p), vr[r], a0);
      a1 = _mm512_fmadd_ps(_mm512_permutexvar_ps(cs.pair_index[r + 1], p), vr[r + 1], a1);
    }
    hs.acc = _mm512_add_ps(a0, a1);
  }
}

}  // namespace

bool HasHeadDim8Runner() { return true; }

void RunItemHeadDim8(const Problem& pr, int64_t t, int g0, int g1) {
  static const Consts cs;
  const AttentionBatch& b = *pr.batch;
  const PagedKvLayerView& cache = *pr.cache;
  const int32_t* table = b.seq_block_tables[b.token_seq[t]];
  const int group = pr.group;
  alignas(64) float q[kMaxItemHeads][kHeadDim];
  HeadState st[kMaxItemHeads];
  // Passes over query heads [h_lo, h_hi) of the group of each KV head in [g0, g1).
  const bool one_pass = (g1 - g0) * group <= kMaxItemHeads;
  for (int h_lo = 0; h_lo < group; h_lo += kMaxItemHeads) {
    const int h_hi = one_pass ? group : std::min(group, h_lo + kMaxItemHeads);
    const int gh = h_hi - h_lo;
    for (int g = g0; g < g1; ++g) {
      for (int h = 0; h < gh; ++h) {
        const int slot = (g - g0) * gh + h;
        const float* qh =
            b.q + (t * b.num_heads + static_cast<int64_t>(g) * group + h_lo + h) * kHeadDim;
        for (int d = 0; d < kHeadDim; ++d) q[slot][d] = qh[d] * b.scale;
        st[slot] = HeadState{_mm512_setzero_ps(), _mm512_setzero_ps(), kNegInf};
      }
    }
    const ScoreRecorder rec(pr, t, (g1 - g0) * gh, b.token_kv_len[t], g0, gh);
    ForEachBlock(cache, table, b.token_kv_len[t], g0, g1,
                 [&](auto codec, const uint8_t* k_region, const uint8_t* v_region, int nv,
                     const BlockAhead& ahead, int first_slot) {
                   using Codec = decltype(codec);
                   KVSERVE_KERNEL_CHECK(!kIsLowrankCodec<Codec>,
                                        "PagedAttention: a lowrank block needs the key basis");
                   for (int g = g0; g < g1; ++g) {
                     ahead.Prefetch(g);
                     const typename Codec::KeyRows k(k_region, cache.shape, g);
                     const typename Codec::ValueRows v(v_region, cache.shape, g);
                     const int hb = (g - g0) * gh;
                     for (int j0 = 0; j0 < nv; j0 += kTile) {
                       ProcessTile(k, v, j0, std::min(kTile, nv - j0), gh, q + hb, cs, st + hb, rec,
                                   hb, first_slot);
                     }
                   }
                 });
    rec.Finish([&](int h) { return st[h].m; },
               [&](int h) { return _mm512_reduce_add_ps(st[h].l); });
    for (int g = g0; g < g1; ++g) {
      for (int h = 0; h < gh; ++h) {
        const HeadState& hs = st[(g - g0) * gh + h];
        float* out =
            b.out + (t * b.num_heads + static_cast<int64_t>(g) * group + h_lo + h) * kHeadDim;
        const float l = _mm512_reduce_add_ps(hs.l);
        const __m256 sum =
            _mm256_add_ps(_mm512_castps512_ps256(hs.acc), _mm512_extractf32x8_ps(hs.acc, 1));
        _mm256_storeu_ps(out, _mm256_mul_ps(sum, _mm256_set1_ps(l > 0 ? 1 / l : 0)));
      }
    }
    if (one_pass) break;
  }
}

#else  // !KVSERVE_SIMD_AVX512

bool HasHeadDim8Runner() { return false; }
void RunItemHeadDim8(const Problem& pr, int64_t t, int g0, int g1) { RunItemNarrow(pr, t, g0, g1); }

#endif

}  // namespace kvserve::kernels::cpu::attention
