// Paged attention work items for head_dim 8 with AVX-512 (stories260K-sized heads).
//
// A tile of 16 tokens of one KV head is 8 registers of K, two rows each. The tile is transposed
// once (24 shuffles) into 8 registers that hold one dimension of all 16 tokens, so the scores of
// a query head are 8 FMAs against broadcast q elements, already one score per lane: no horizontal
// sums. An item runs KV head by KV head, in passes of up to kPassHeads of its query heads, whose
// number is a template argument, so that their running maxima and V accumulators stay in
// registers across tiles. A pass runs in two walks over the blocks: first the scores of every
// tile (kept in the participant's arena, with per-lane maxima), then, with each head's exact
// maximum known, the probabilities and the V accumulation (V is also two rows per register; each
// probability pair is broadcast into the two halves by a permute). No tile waits on a horizontal
// max or a branch on it, so consecutive tiles overlap in the pipeline. All query heads of a pass
// share the K loads and the transpose. The blocks' region pointers are looked up once per item.
//
// Each query head's arithmetic (the order of every FMA, max, exp and sum) depends only on the
// head, its token and its KV slots, never on which other heads share its item or pass, so the
// output of a token is bitwise the same in any batch and on any number of threads.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <type_traits>
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
KVSERVE_ALWAYS_INLINE void Transpose8(const __m512 r[8], __m512 t[8]) {
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

constexpr int kPassHeads = 8;  // query heads whose state a pass keeps in registers

// Where the K and V rows of one block of the item's sequence are, and how they are encoded.
struct BlockRef {
  const uint8_t* k;
  const uint8_t* v;
  KvFormat format;
  int nv;  // valid slots
};

// Floats per score row of a pass over kv_len slots: whole tiles of every block.
int64_t ScoreStride(int kv_len, int block_size) {
  const int tiles_per_block = (block_size + kTile - 1) / kTile;
  return static_cast<int64_t>((kv_len + block_size - 1) / block_size) * tiles_per_block * kTile;
}

// exp(x) for x <= 0 (x - max of the scores): V::Exp without its upper clamp. Lanes at -inf (no
// token) come out as exp(kExpLo) ~ 1e-38, not 0: they multiply V rows read as zeros, and add at
// most 16e-38 to a sum that is at least 1.
KVSERVE_ALWAYS_INLINE __m512 ExpNonPositive(__m512 x) {
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

// Pass 1 on one tile: scores of the GH query heads (q: scaled, one row each) against tokens
// [j0, j0 + nt) of K, stored to the score rows (s[h * stride + at]), with invalid lanes at -inf.
// kFull: nt == kTile (no masked loads, no invalid lanes).
template <int GH, bool kFull, class KRows>
KVSERVE_ALWAYS_INLINE void ScoreTile(const KRows& k, int j0, int nt, const float (*q)[kHeadDim],
                                     const Consts& cs, float* s, int64_t stride, int64_t at,
                                     __m512 (&vmax)[GH]) {
  __m512 kr[8], kt[8];
  for (int p = 0; p < 8; ++p) {
    // Valid values of the row pair 2p, 2p + 1.
    const int n = kFull ? 2 * kHeadDim : std::clamp(nt - 2 * p, 0, 2) * kHeadDim;
    kr[p] = k.template LoadPacked<V>(j0 + 2 * p, n);
  }
  Transpose8(kr, kt);
  const __mmask16 valid =
      kFull ? __mmask16{0xffff} : _mm512_cmplt_epi32_mask(cs.lane_token, _mm512_set1_epi32(nt));
  for (int h = 0; h < GH; ++h) {
    const float* qh = q[h];
    __m512 s0 = _mm512_mul_ps(kt[0], _mm512_set1_ps(qh[0]));
    __m512 s1 = _mm512_mul_ps(kt[1], _mm512_set1_ps(qh[1]));
    for (int d = 2; d < kHeadDim; d += 2) {
      s0 = _mm512_fmadd_ps(kt[d], _mm512_set1_ps(qh[d]), s0);
      s1 = _mm512_fmadd_ps(kt[d + 1], _mm512_set1_ps(qh[d + 1]), s1);
    }
    const __m512 sum = _mm512_add_ps(s0, s1);
    const __m512 sc = kFull ? sum : _mm512_mask_mov_ps(_mm512_set1_ps(kNegInf), valid, sum);
    _mm512_store_ps(s + h * stride + at, sc);
    vmax[h] = _mm512_max_ps(vmax[h], sc);
  }
}

// Pass 3 on one tile: acc[h] += the tile's probabilities of head h (from the score rows at float
// offset `at`) times V rows [j0, j0 + nt).
template <int GH, bool kFull, class VRows>
KVSERVE_ALWAYS_INLINE void ValueTile(const VRows& v, int j0, int nt, const Consts& cs,
                                     const float* s, int64_t stride, int64_t at,
                                     __m512 (&acc)[GH]) {
  __m512 vr[8];
  for (int p = 0; p < 8; ++p) {
    const int n = kFull ? 2 * kHeadDim : std::clamp(nt - 2 * p, 0, 2) * kHeadDim;
    vr[p] = v.template LoadPacked<V>(j0 + 2 * p, n);
  }
  for (int h = 0; h < GH; ++h) {
    const __m512 p = _mm512_load_ps(s + h * stride + at);
    __m512 a[4];
    for (int r = 0; r < 4; ++r) {
      a[r] = _mm512_mul_ps(_mm512_permutexvar_ps(cs.pair_index[r], p), vr[r]);
    }
    for (int r = 4; r < 8; ++r) {
      a[r - 4] = _mm512_fmadd_ps(_mm512_permutexvar_ps(cs.pair_index[r], p), vr[r], a[r - 4]);
    }
    acc[h] =
        _mm512_add_ps(acc[h], _mm512_add_ps(_mm512_add_ps(a[0], a[1]), _mm512_add_ps(a[2], a[3])));
  }
}

// Walks blocks [b0, b1), which share Codec's format, tile by tile (block b's first tile is tile
// b * tiles_per_block of the score rows). kKeys: pass 1, the scores of every tile into the score
// rows and the per-lane maxima into `state` (q: the scaled query rows); otherwise pass 3, the
// probabilities times V added to the accumulators in `state`. The state is copied into locals for
// the walk, so that it stays in registers.
template <bool kKeys, int GH, class Codec>
void WalkSpan(const BlockRef* blocks, int b0, int b1, const KvRegionShape& shape, int g,
              int tiles_per_block, const float (*q)[kHeadDim], const Consts& cs, float* s,
              int64_t stride, __m512 (&state_io)[GH]) {
  using Rows = std::conditional_t<kKeys, typename Codec::KeyRows, typename Codec::ValueRows>;
  __m512 state[GH];
  for (int h = 0; h < GH; ++h) state[h] = state_io[h];
  // full: std::true_type for a whole tile (nt == kTile), std::false_type for a block's tail.
  auto tile = [&](auto full, const Rows& rows, int j0, int nt, int64_t at) {
    if constexpr (kKeys) {
      ScoreTile<GH, decltype(full)::value>(rows, j0, nt, q, cs, s, stride, at, state);
    } else {
      ValueTile<GH, decltype(full)::value>(rows, j0, nt, cs, s, stride, at, state);
    }
  };
  for (int b = b0; b < b1; ++b) {
    const Rows rows(kKeys ? blocks[b].k : blocks[b].v, shape, g);
    const int nv = blocks[b].nv;
    int64_t at = int64_t{b} * tiles_per_block * kTile;
    int j0 = 0;
    for (; j0 + kTile <= nv; j0 += kTile, at += kTile) tile(std::true_type{}, rows, j0, kTile, at);
    if (j0 < nv) tile(std::false_type{}, rows, j0, nv - j0, at);
  }
  for (int h = 0; h < GH; ++h) state_io[h] = state[h];
}

// Calls fn(codec, b0, b1) for each maximal run [b0, b1) of blocks of one format, in order.
template <class Fn>
KVSERVE_ALWAYS_INLINE void ForEachSpan(const BlockRef* blocks, int num_blocks, Fn&& fn) {
  for (int b0 = 0; b0 < num_blocks;) {
    int b1 = b0 + 1;
    while (b1 < num_blocks && blocks[b1].format == blocks[b0].format) ++b1;
    DispatchKvFormat(blocks[b0].format, [&](auto codec) { fn(codec, b0, b1); });
    b0 = b1;
  }
}

// One pass: query heads [h0, h0 + GH) of KV head g for token t, over the item's blocks.
template <int GH>
void RunPass(const Problem& pr, int64_t t, int g, int h0, const BlockRef* blocks, int num_blocks,
             float* s, int64_t stride) {
  static const Consts cs;
  const AttentionBatch& b = *pr.batch;
  const KvRegionShape& shape = pr.cache->shape;
  const int kv_len = b.token_kv_len[t];
  const int bs = shape.block_size;
  const int tiles_per_block = (bs + kTile - 1) / kTile;
  const int64_t head0 = t * b.num_heads + static_cast<int64_t>(g) * pr.group + h0;
  alignas(64) float q[GH][kHeadDim];
  __m512 vmax[GH], acc[GH];
  for (int h = 0; h < GH; ++h) {
    const float* qh = b.q + (head0 + h) * kHeadDim;
    for (int d = 0; d < kHeadDim; ++d) q[h][d] = qh[d] * b.scale;
    vmax[h] = _mm512_set1_ps(kNegInf);
    acc[h] = _mm512_setzero_ps();
  }
  ForEachSpan(blocks, num_blocks, [&](auto codec, int b0, int b1) {
    WalkSpan<true, GH, decltype(codec)>(blocks, b0, b1, shape, g, tiles_per_block, q, cs, s, stride,
                                        vmax);
  });
  // Pass 2: each head's exact max (a valid lane is finite or +-inf; every head has one), then
  // p = exp(s - m) over its whole score row in place and the sum l. A plain loop of independent
  // vectors. Written tiles: all of every block but the last, whose tail tiles past kv_len are
  // not.
  const int last_nv = kv_len - (kv_len - 1) / bs * bs;
  const int64_t used =
      (static_cast<int64_t>((kv_len - 1) / bs) * tiles_per_block + (last_nv + kTile - 1) / kTile) *
      kTile;
  float m[GH], l[GH];
  for (int h = 0; h < GH; ++h) {
    m[h] = _mm512_reduce_max_ps(vmax[h]);
    const __m512 mh = _mm512_set1_ps(m[h]);
    float* row = s + h * stride;
    __m512 sum0 = _mm512_setzero_ps(), sum1 = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 2 * kTile <= used; i += 2 * kTile) {
      const __m512 s0 = _mm512_load_ps(row + i), s1 = _mm512_load_ps(row + i + kTile);
      const __m512 p0 = ExpNonPositive(_mm512_sub_ps(s0, mh));
      const __m512 p1 = ExpNonPositive(_mm512_sub_ps(s1, mh));
      _mm512_store_ps(row + i, p0);
      _mm512_store_ps(row + i + kTile, p1);
      sum0 = _mm512_add_ps(sum0, p0);
      sum1 = _mm512_add_ps(sum1, p1);
    }
    for (; i < used; i += kTile) {
      const __m512 s0 = _mm512_load_ps(row + i);
      const __m512 p0 = ExpNonPositive(_mm512_sub_ps(s0, mh));
      _mm512_store_ps(row + i, p0);
      sum0 = _mm512_add_ps(sum0, p0);
    }
    l[h] = _mm512_reduce_add_ps(_mm512_add_ps(sum0, sum1));
  }
  const ScoreRecorder rec(pr, t, GH, kv_len, g, GH);
  if (rec.active()) {
    // Probabilities back in token order, for the recorder.
    for (int h = 0; h < GH; ++h) {
      const float* row = s + h * stride;
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
      rec.Span(h, 0, kv_len, m[h]);
    }
    rec.Finish([&](int h) { return m[h]; }, [&](int h) { return l[h]; });
  }
  // Pass 3: V.
  ForEachSpan(blocks, num_blocks, [&](auto codec, int b0, int b1) {
    WalkSpan<false, GH, decltype(codec)>(blocks, b0, b1, shape, g, tiles_per_block, nullptr, cs, s,
                                         stride, acc);
  });
  for (int h = 0; h < GH; ++h) {
    float* out = b.out + (head0 + h) * kHeadDim;
    const __m256 sum =
        _mm256_add_ps(_mm512_castps512_ps256(acc[h]), _mm512_extractf32x8_ps(acc[h], 1));
    _mm256_storeu_ps(out, _mm256_mul_ps(sum, _mm256_set1_ps(l[h] > 0 ? 1 / l[h] : 0)));
  }
}

// Arena of an item over kv_len slots: the score rows of one pass, then the block references.
size_t ScoreRowsBytes(const Problem& pr, int kv_len) {
  return Arena::RoundUp(static_cast<size_t>(std::min(pr.group, kPassHeads)) *
                        ScoreStride(kv_len, pr.cache->shape.block_size) * sizeof(float));
}

using PassFn = void (*)(const Problem&, int64_t, int, int, const BlockRef*, int, float*, int64_t);
constexpr PassFn kPasses[kPassHeads + 1] = {nullptr,    RunPass<1>, RunPass<2>,
                                            RunPass<3>, RunPass<4>, RunPass<5>,
                                            RunPass<6>, RunPass<7>, RunPass<8>};

}  // namespace

bool HasHeadDim8Runner() { return true; }

size_t HeadDim8ArenaBytes(const Problem& pr, int kv_len) {
  const int num_blocks = (kv_len + pr.cache->shape.block_size - 1) / pr.cache->shape.block_size;
  return ScoreRowsBytes(pr, kv_len) + static_cast<size_t>(num_blocks) * sizeof(BlockRef);
}

void RunItemHeadDim8(const Problem& pr, int64_t t, int g0, int g1, Arena& arena) {
  const AttentionBatch& b = *pr.batch;
  const PagedKvLayerView& cache = *pr.cache;
  const int32_t* table = b.seq_block_tables[b.token_seq[t]];
  const int kv_len = b.token_kv_len[t];
  const int bs = cache.shape.block_size;
  const int num_blocks = (kv_len + bs - 1) / bs;
  KVSERVE_KERNEL_CHECK(arena.capacity() >= HeadDim8ArenaBytes(pr, kv_len),
                       "PagedAttention: arena too small");
  float* s = reinterpret_cast<float*>(arena.data());
  auto* blocks = reinterpret_cast<BlockRef*>(arena.data() + ScoreRowsBytes(pr, kv_len));
  for (int i = 0; i < num_blocks; ++i) {
    const int32_t phys = table[i];
    const KvLayerRegion& region = cache.regions[cache.block_layout[phys]];
    KVSERVE_KERNEL_CHECK(region.format != KvFormat::kLowrank,
                         "PagedAttention: a lowrank block needs the key basis");
    const uint8_t* base = cache.block_data[phys];
    blocks[i] = {base + region.k_offset, base + region.v_offset, region.format,
                 std::min(bs, kv_len - i * bs)};
  }
  const int64_t stride = ScoreStride(kv_len, bs);  // floats per score row
  for (int g = g0; g < g1; ++g) {
    for (int h0 = 0; h0 < pr.group; h0 += kPassHeads) {
      const int gh = std::min(kPassHeads, pr.group - h0);
      kPasses[gh](pr, t, g, h0, blocks, num_blocks, s, stride);
    }
  }
}

#else  // !KVSERVE_SIMD_AVX512

bool HasHeadDim8Runner() { return false; }
void RunItemHeadDim8(const Problem& pr, int64_t t, int g0, int g1, Arena& arena) {
  RunItemNarrow(pr, t, g0, g1, arena);
}
size_t HeadDim8ArenaBytes(const Problem&, int) { return 0; }

#endif

}  // namespace kvserve::kernels::cpu::attention
