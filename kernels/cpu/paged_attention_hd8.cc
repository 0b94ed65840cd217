// Paged attention work items for head_dim 8 with AVX-512 (stories260K-sized heads).
//
// A tile of 16 tokens of one KV head is 8 registers of K, two rows each. The tile is transposed
// once (24 shuffles) into 8 registers that hold one dimension of all 16 tokens, so the scores of
// a query head are 8 FMAs against broadcast q elements, already one score per lane: no horizontal
// sums. An item runs in two passes: first the scores of every tile (kept in a per-thread buffer,
// with per-lane maxima), then, with each head's exact maximum known, the probabilities and the V
// accumulation (V is also two rows per register; each probability pair is broadcast into the two
// halves by a permute). No tile waits on a horizontal max or a branch on it, so consecutive tiles
// overlap in the pipeline. All query heads of a KV head share its loads and the transpose.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <vector>

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

// Calls fn(codec, region, nv, tile0) for each block of a token's KV slots in order, with the
// block's K (kKeys) or V region, its number of valid slots nv and the index of its first tile in
// the score rows (blocks take tiles_per_block consecutive tiles). The rows of KV heads [g0, g1)
// of the block kPrefetchBlocks further on are requested as each block is read.
template <bool kKeys, class Fn>
inline void ForEachRegion(const PagedKvLayerView& cache, const int32_t* table, int kv_len, int g0,
                          int g1, int tiles_per_block, Fn&& fn) {
  const int bs = cache.shape.block_size;
  const int num_blocks = (kv_len + bs - 1) / bs;
  constexpr KvRole kRole = kKeys ? KvRole::kKey : KvRole::kValue;
  auto prefetch = [&](int b) {
    const int32_t phys = table[b];
    const KvLayerRegion& region = cache.regions[cache.block_layout[phys]];
    const uint8_t* base = cache.block_data[phys] + (kKeys ? region.k_offset : region.v_offset);
    const int nv = std::min(bs, kv_len - b * bs);
    DispatchKvFormat(region.format, [&](auto codec) {
      using Codec = decltype(codec);
      for (int g = g0; g < g1; ++g) Codec::Prefetch(base, kRole, cache.shape, g, nv);
    });
  };
  for (int b = 0; b < kPrefetchBlocks && b < num_blocks; ++b) prefetch(b);
  for (int b = 0; b < num_blocks; ++b) {
    if (b + kPrefetchBlocks < num_blocks) prefetch(b + kPrefetchBlocks);
    const int32_t phys = table[b];
    const KvLayerRegion& region = cache.regions[cache.block_layout[phys]];
    const uint8_t* base = cache.block_data[phys] + (kKeys ? region.k_offset : region.v_offset);
    const int nv = std::min(bs, kv_len - b * bs);
    DispatchKvFormat(region.format, [&](auto codec) { fn(codec, base, nv, b * tiles_per_block); });
  }
}

// State of one pass: the per-lane running maxima and sums of its query heads, and their scores
// (then probabilities) for every tile, in the lanes' token order, in the participant's arena.
struct PassScratch {
  float* s = nullptr;  // [heads][tiles * kTile], 64-byte aligned
  __m512 vmax[kMaxItemHeads];
  __m512 acc[kMaxItemHeads];  // lanes 0..7: sum over even tokens, 8..15: over odd tokens
  float m[kMaxItemHeads];
};

// Floats per score row of a pass over kv_len slots: whole tiles of every block.
int64_t ScoreStride(int kv_len, int block_size) {
  const int tiles_per_block = (block_size + kTile - 1) / kTile;
  return static_cast<int64_t>((kv_len + block_size - 1) / block_size) * tiles_per_block * kTile;
}

// exp(x) for x <= 0 (x - max of the scores): V::Exp without its upper clamp. Lanes at -inf (no
// token) come out as exp(kExpLo) ~ 1e-38, not 0: they multiply V rows read as zeros, and add at
// most 16e-38 to a sum that is at least 1.
inline __m512 ExpNonPositive(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(simd::kExpLo));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(simd::kLog2e)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(simd::kLn2Hi), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(simd::kLn2Lo), r);
  __m512 p = _mm512_set1_ps(simd::kExpP0);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(simd::kExpP1));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(simd::kExpP2));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(simd::kExpP3));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(simd::kExpP4));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(simd::kExpP5));
  const __m512 y = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(y, n);
}

// Pass 1 on one tile: scores of heads [0, gh) (slots hb + h) against tokens [j0, j0 + nt) of K,
// stored to the score rows at float offset `at`, with invalid lanes at -inf.
template <class KRows>
KVSERVE_ALWAYS_INLINE void ScoreTile(const KRows& k, int j0, int nt, int gh, int hb,
                                     const float (*q)[kHeadDim], const Consts& cs, int64_t stride,
                                     int64_t at, PassScratch& sc) {
  __m512 kr[8], kt[8];
  for (int p = 0; p < 8; ++p) {
    const int n = std::clamp(nt - 2 * p, 0, 2) * kHeadDim;  // valid values of the row pair
    kr[p] = k.template LoadPacked<V>(j0 + 2 * p, n);
  }
  Transpose8(kr, kt);
  const __mmask16 valid = _mm512_cmplt_epi32_mask(cs.lane_token, _mm512_set1_epi32(nt));
  for (int h = 0; h < gh; ++h) {
    const float* qh = q[hb + h];
    __m512 s0 = _mm512_mul_ps(kt[0], _mm512_set1_ps(qh[0]));
    __m512 s1 = _mm512_mul_ps(kt[1], _mm512_set1_ps(qh[1]));
    for (int d = 2; d < kHeadDim; d += 2) {
      s0 = _mm512_fmadd_ps(kt[d], _mm512_set1_ps(qh[d]), s0);
      s1 = _mm512_fmadd_ps(kt[d + 1], _mm512_set1_ps(qh[d + 1]), s1);
    }
    const __m512 s = _mm512_mask_mov_ps(_mm512_set1_ps(kNegInf), valid, _mm512_add_ps(s0, s1));
    _mm512_store_ps(sc.s + (hb + h) * stride + at, s);
    sc.vmax[hb + h] = _mm512_max_ps(sc.vmax[hb + h], s);
  }
}

// Pass 3 on one tile: acc of heads [0, gh) (slots hb + h) += the tile's probabilities (from the
// score rows at float offset `at`) times V rows [j0, j0 + nt).
template <class VRows>
KVSERVE_ALWAYS_INLINE void ValueTile(const VRows& v, int j0, int nt, int gh, int hb,
                                     const Consts& cs, int64_t stride, int64_t at,
                                     PassScratch& sc) {
  __m512 vr[8];
  for (int p = 0; p < 8; ++p) {
    const int n = std::clamp(nt - 2 * p, 0, 2) * kHeadDim;
    vr[p] = v.template LoadPacked<V>(j0 + 2 * p, n);
  }
  for (int h = 0; h < gh; ++h) {
    const int slot = hb + h;
    const __m512 p = _mm512_load_ps(sc.s + slot * stride + at);
    __m512 a[4];
    for (int r = 0; r < 4; ++r) {
      a[r] = _mm512_mul_ps(_mm512_permutexvar_ps(cs.pair_index[r], p), vr[r]);
    }
    for (int r = 4; r < 8; ++r) {
      a[r - 4] = _mm512_fmadd_ps(_mm512_permutexvar_ps(cs.pair_index[r], p), vr[r], a[r - 4]);
    }
    sc.acc[slot] = _mm512_add_ps(
        sc.acc[slot], _mm512_add_ps(_mm512_add_ps(a[0], a[1]), _mm512_add_ps(a[2], a[3])));
  }
}

}  // namespace

bool HasHeadDim8Runner() { return true; }

size_t HeadDim8ArenaBytes(const Problem& pr, int heads, int kv_len) {
  return static_cast<size_t>(heads) * ScoreStride(kv_len, pr.cache->shape.block_size) *
         sizeof(float);
}

// Two passes per item: the scores of all its query heads over all slots (kept, with per-lane
// maxima), then, with each head's exact maximum known, exp and the V accumulation. Nothing in a
// tile waits on a horizontal reduction or a branch on the running max, so tiles overlap in the
// pipeline; the scores make one round trip through L1.
void RunItemHeadDim8(const Problem& pr, int64_t t, int g0, int g1, Arena& arena) {
  static const Consts cs;
  const AttentionBatch& b = *pr.batch;
  const PagedKvLayerView& cache = *pr.cache;
  const int32_t* table = b.seq_block_tables[b.token_seq[t]];
  const int group = pr.group;
  const int kv_len = b.token_kv_len[t];
  const int bs = cache.shape.block_size;
  const int tiles_per_block = (bs + kTile - 1) / kTile;
  const int64_t stride = ScoreStride(kv_len, bs);  // floats per row
  PassScratch sc;
  sc.s = reinterpret_cast<float*>(arena.data());
  alignas(64) float q[kMaxItemHeads][kHeadDim];
  // Passes over query heads [h_lo, h_hi) of the group of each KV head in [g0, g1).
  const bool one_pass = (g1 - g0) * group <= kMaxItemHeads;
  for (int h_lo = 0; h_lo < group; h_lo += kMaxItemHeads) {
    const int h_hi = one_pass ? group : std::min(group, h_lo + kMaxItemHeads);
    const int gh = h_hi - h_lo;
    const int heads = (g1 - g0) * gh;
    KVSERVE_KERNEL_CHECK(arena.capacity() >= HeadDim8ArenaBytes(pr, heads, kv_len),
                         "PagedAttention: arena too small");
    for (int g = g0; g < g1; ++g) {
      for (int h = 0; h < gh; ++h) {
        const int slot = (g - g0) * gh + h;
        const float* qh =
            b.q + (t * b.num_heads + static_cast<int64_t>(g) * group + h_lo + h) * kHeadDim;
        for (int d = 0; d < kHeadDim; ++d) q[slot][d] = qh[d] * b.scale;
        sc.vmax[slot] = _mm512_set1_ps(kNegInf);
        sc.acc[slot] = _mm512_setzero_ps();
      }
    }
    ForEachRegion<true>(cache, table, kv_len, g0, g1, tiles_per_block,
                        [&](auto codec, const uint8_t* region, int nv, int tile0) {
                          using Codec = decltype(codec);
                          KVSERVE_KERNEL_CHECK(!kIsLowrankCodec<Codec>,
                                               "PagedAttention: a lowrank block needs the key basis");
                          for (int g = g0; g < g1; ++g) {
                            const typename Codec::KeyRows k(region, cache.shape, g);
                            const int hb = (g - g0) * gh;
                            for (int j0 = 0, i = tile0; j0 < nv; j0 += kTile, ++i) {
                              ScoreTile(k, j0, std::min(kTile, nv - j0), gh, hb, q, cs, stride,
                                        int64_t{i} * kTile, sc);
                            }
                          }
                        });
    // Pass 2: each head's exact max (a valid lane is finite or +-inf; every head has one), then
    // p = exp(s - m) over its whole score row in place and the sum l. A plain loop of independent vectors.
    // Written tiles: all of every block but the last, whose tail tiles past kv_len are not.
    const int last_nv = kv_len - (kv_len - 1) / bs * bs;
    const int64_t used =
        (static_cast<int64_t>((kv_len - 1) / bs) * tiles_per_block + (last_nv + kTile - 1) / kTile) *
        kTile;
    float l[kMaxItemHeads];
    for (int h = 0; h < heads; ++h) {
      sc.m[h] = _mm512_reduce_max_ps(sc.vmax[h]);
      const __m512 m = _mm512_set1_ps(sc.m[h]);
      float* row = sc.s + h * stride;
      __m512 sum0 = _mm512_setzero_ps(), sum1 = _mm512_setzero_ps();
      int64_t i = 0;
      for (; i + 2 * kTile <= used; i += 2 * kTile) {
        const __m512 s0 = _mm512_load_ps(row + i), s1 = _mm512_load_ps(row + i + kTile);
        const __m512 p0 = ExpNonPositive(_mm512_sub_ps(s0, m));
        const __m512 p1 = ExpNonPositive(_mm512_sub_ps(s1, m));
        _mm512_store_ps(row + i, p0);
        _mm512_store_ps(row + i + kTile, p1);
        sum0 = _mm512_add_ps(sum0, p0);
        sum1 = _mm512_add_ps(sum1, p1);
      }
      for (; i < used; i += kTile) {
        const __m512 s0 = _mm512_load_ps(row + i);
        const __m512 p0 = ExpNonPositive(_mm512_sub_ps(s0, m));
        _mm512_store_ps(row + i, p0);
        sum0 = _mm512_add_ps(sum0, p0);
      }
      l[h] = _mm512_reduce_add_ps(_mm512_add_ps(sum0, sum1));
    }
    const ScoreRecorder rec(pr, t, heads, kv_len, g0, gh);
    if (rec.active()) {
      // Probabilities back in token order, for the recorder.
      for (int h = 0; h < heads; ++h) {
        const float* row = sc.s + h * stride;
        float* dst = rec.Row(h);
        for (int slot0 = 0, i = 0; slot0 < kv_len; slot0 += bs) {
          const int nv = std::min(bs, kv_len - slot0);
          for (int j0 = 0; j0 < tiles_per_block * kTile; j0 += kTile, i += kTile) {
            if (j0 >= nv) continue;
            const int nt = std::min(kTile, nv - j0);
            _mm512_mask_storeu_ps(dst + slot0 + j0, static_cast<__mmask16>((1u << nt) - 1),
                                  _mm512_permutexvar_ps(cs.token_lane, _mm512_loadu_ps(row + i)));
          }
        }
        rec.Span(h, 0, kv_len, sc.m[h]);
      }
      rec.Finish([&](int h) { return sc.m[h]; }, [&](int h) { return l[h]; });
    }
    // Pass 3: V.
    ForEachRegion<false>(cache, table, kv_len, g0, g1, tiles_per_block,
                         [&](auto codec, const uint8_t* region, int nv, int tile0) {
                           using Codec = decltype(codec);
                           for (int g = g0; g < g1; ++g) {
                             const typename Codec::ValueRows v(region, cache.shape, g);
                             const int hb = (g - g0) * gh;
                             for (int j0 = 0, i = tile0; j0 < nv; j0 += kTile, ++i) {
                               ValueTile(v, j0, std::min(kTile, nv - j0), gh, hb, cs, stride,
                                         int64_t{i} * kTile, sc);
                             }
                           }
                         });
    for (int g = g0; g < g1; ++g) {
      for (int h = 0; h < gh; ++h) {
        const int slot = (g - g0) * gh + h;
        const __m512 acc = sc.acc[slot];
        float* out =
            b.out + (t * b.num_heads + static_cast<int64_t>(g) * group + h_lo + h) * kHeadDim;
        const __m256 sum =
            _mm256_add_ps(_mm512_castps512_ps256(acc), _mm512_extractf32x8_ps(acc, 1));
        _mm256_storeu_ps(out, _mm256_mul_ps(sum, _mm256_set1_ps(l[slot] > 0 ? 1 / l[slot] : 0)));
      }
    }
    if (one_pass) break;
  }
}

#else  // !KVSERVE_SIMD_AVX512

bool HasHeadDim8Runner() { return false; }
void RunItemHeadDim8(const Problem& pr, int64_t t, int g0, int g1, Arena& arena) {
  RunItemNarrow(pr, t, g0, g1, arena);
}
size_t HeadDim8ArenaBytes(const Problem&, int, int) { return 0; }

#endif

}  // namespace kvserve::kernels::cpu::attention
