// Paged attention on the CPU.
//
// Work item = (query token, KV head). An item walks the token's blocks in order and, for all
// query heads of its KV-head group at once (up to kMaxHeadsPerPass per pass), keeps a running
// max m, running sum l and output accumulator acc (online softmax). Per span of up to kSpan
// tokens of one block:
//   1. scores s[h][j] = (q_h * scale) . K_j: one partial-sum register per token over the head
//      dims, then TransposeReduce turns kLanes of them into one register of kLanes scores;
//   2. softmax update of m, l, acc (the correction exp() runs only when the max grows);
//   3. acc[h] += sum_j p[h][j] * V_j, with every loaded V vector feeding all heads of the group.
// K and V are read in place in each block's own format and widened in registers (kv_codec.h).
// Head dims <= 8 use the 8-lane backend so that one row fills one register exactly.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <limits>

#include "kernels/cpu/check.h"
#include "kernels/cpu/kv_codec.h"
#include "kernels/cpu/paged_attention.h"
#include "kernels/cpu/simd.h"

namespace kvserve::kernels::cpu {
namespace {

constexpr int kMaxHeadDim = 256;
constexpr int kMaxHeadsPerPass = 8;
constexpr int kSpan = 64;  // tokens per softmax update; a multiple of every backend's lanes
// Multiply-adds (kv slots * query heads * head_dim) below which attention stays on one thread.
constexpr int64_t kMinParallelWork = int64_t{1} << 16;
constexpr int kPrefetchBlocks = 1;  // blocks requested ahead of the one being read
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

struct Problem {
  const AttentionBatch* batch;
  const PagedKvLayerView* cache;
  int head_dim;
  int num_kv_heads;
  int group;  // query heads per KV head
};

// Per-item working set; lives on the stack of the thread running the item.
template <class V>
struct Scratch {
  alignas(64) float q[kMaxHeadsPerPass][kMaxHeadDim];    // q * scale, zero padded
  alignas(64) float acc[kMaxHeadsPerPass][kMaxHeadDim];  // unnormalised output
  alignas(64) float p[kMaxHeadsPerPass][kSpan];          // scores, then probabilities
  float m[kMaxHeadsPerPass];                             // running max
  float l[kMaxHeadsPerPass];                             // running sum of exp
  typename V::Reg part[V::kLanes];                       // per-token partial dot products
};

// Step 1: sc.p[h][0, ns) = q_h . K_{j0 + j}.
template <class V, class Rows>
void Scores(const Rows& k, int j0, int ns, int gh, int head_dim, Scratch<V>& sc) {
  using Reg = typename V::Reg;
  constexpr int kL = V::kLanes;
  const int full = head_dim / kL;
  const int tail = head_dim % kL;
  for (int jt = 0; jt < ns; jt += kL) {
    const int nt = std::min(kL, ns - jt);
    for (int h = 0; h < gh; ++h) {
      const float* q = sc.q[h];
      for (int j = 0; j < kL; ++j) {
        Reg a = V::Zero();
        if (j < nt) {
          const int token = j0 + jt + j;
          for (int c = 0; c < full; ++c) a = V::Fma(V::Load(q + c * kL), k.template Load<V>(token, c * kL), a);
          if (tail != 0) {
            a = V::Fma(V::Load(q + full * kL), k.template LoadN<V>(token, full * kL, tail), a);
          }
        }
        sc.part[j] = a;
      }
      V::Store(sc.p[h] + jt, V::TransposeReduce(sc.part));
    }
  }
}

// Step 2: online-softmax update of heads [0, gh) with the scores of this span; leaves the
// probabilities exp(s - m) in sc.p.
template <class V>
void SoftmaxUpdate(int ns, int gh, int head_dim, Scratch<V>& sc) {
  using W = simd::VecWide;
  using Reg = W::Reg;
  constexpr int kL = W::kLanes;
  for (int h = 0; h < gh; ++h) {
    float* s = sc.p[h];
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

// Step 3 for heads [h0, h0 + kG): acc[h] += sum_j p[h][j] * V_{j0 + j}. kU independent
// accumulator sets keep the FMA chains short when the group is small.
template <class V, int kG, class Rows>
void AccumulateV(const Rows& v, int j0, int ns, int h0, int head_dim, Scratch<V>& sc) {
  using Reg = typename V::Reg;
  constexpr int kL = V::kLanes;
  constexpr int kU = kG >= 4 ? 1 : 4 / kG;
  for (int d = 0; d < head_dim; d += kL) {
    const int n = std::min(kL, head_dim - d);
    Reg a[kU][kG];
    for (int h = 0; h < kG; ++h) {
      a[0][h] = V::Load(sc.acc[h0 + h] + d);
      for (int u = 1; u < kU; ++u) a[u][h] = V::Zero();
    }
    int j = 0;
    for (; j + kU <= ns; j += kU) {
      for (int u = 0; u < kU; ++u) {
        const int token = j0 + j + u;
        const Reg vv = n == kL ? v.template Load<V>(token, d) : v.template LoadN<V>(token, d, n);
        for (int h = 0; h < kG; ++h) a[u][h] = V::Fma(V::Set1(sc.p[h0 + h][j + u]), vv, a[u][h]);
      }
    }
    for (; j < ns; ++j) {
      const int token = j0 + j;
      const Reg vv = n == kL ? v.template Load<V>(token, d) : v.template LoadN<V>(token, d, n);
      for (int h = 0; h < kG; ++h) a[0][h] = V::Fma(V::Set1(sc.p[h0 + h][j]), vv, a[0][h]);
    }
    for (int h = 0; h < kG; ++h) {
      for (int u = 1; u < kU; ++u) a[0][h] = V::Add(a[0][h], a[u][h]);
      V::Store(sc.acc[h0 + h] + d, a[0][h]);
    }
  }
}

template <class V, class Rows>
void ProcessSpan(const Rows& k, const Rows& v, int j0, int ns, int gh, int head_dim,
                 Scratch<V>& sc) {
  Scores<V>(k, j0, ns, gh, head_dim, sc);
  SoftmaxUpdate<V>(ns, gh, head_dim, sc);
  int h = 0;
  for (; h + 8 <= gh; h += 8) AccumulateV<V, 8>(v, j0, ns, h, head_dim, sc);
  for (; h + 4 <= gh; h += 4) AccumulateV<V, 4>(v, j0, ns, h, head_dim, sc);
  for (; h + 2 <= gh; h += 2) AccumulateV<V, 2>(v, j0, ns, h, head_dim, sc);
  for (; h < gh; ++h) AccumulateV<V, 1>(v, j0, ns, h, head_dim, sc);
}

// Prefetches the K and V rows of KV head g in the first `tokens` slots of block `phys`.
void PrefetchBlock(const PagedKvLayerView& cache, int32_t phys, int g, int tokens) {
  const KvLayerRegion& region = cache.regions[cache.block_layout[phys]];
  const uint8_t* base = cache.block_data[phys];
  DispatchKvFormat(region.format, [&](auto codec) {
    using Codec = decltype(codec);
    Codec::Prefetch(base + region.k_offset, cache.shape, g, tokens);
    Codec::Prefetch(base + region.v_offset, cache.shape, g, tokens);
  });
}

// Attention of query token t over KV head g for all query heads of its group.
template <class V>
void RunItem(const Problem& pr, int64_t t, int g) {
  constexpr int kL = V::kLanes;
  const AttentionBatch& b = *pr.batch;
  const PagedKvLayerView& cache = *pr.cache;
  const int hd = pr.head_dim;
  const int hd_pad = (hd + kL - 1) / kL * kL;
  const int bs = cache.shape.block_size;
  const int kv_len = b.token_kv_len[t];
  const int32_t* table = b.seq_block_tables[b.token_seq[t]];
  Scratch<V> sc;

  for (int hp = 0; hp < pr.group; hp += kMaxHeadsPerPass) {
    const int gh = std::min(kMaxHeadsPerPass, pr.group - hp);
    const int64_t head0 = static_cast<int64_t>(g) * pr.group + hp;
    const float* q = b.q + (t * b.num_heads + head0) * hd;
    for (int h = 0; h < gh; ++h) {
      for (int d = 0; d < hd; ++d) sc.q[h][d] = q[h * hd + d] * b.scale;
      for (int d = hd; d < hd_pad; ++d) sc.q[h][d] = 0.0f;
      std::fill(sc.acc[h], sc.acc[h] + hd_pad, 0.0f);
      sc.m[h] = kNegInf;
      sc.l[h] = 0.0f;
    }
    const int num_blocks = static_cast<int>((kv_len + bs - 1) / bs);
    for (int blk = 0; blk < kPrefetchBlocks && blk < num_blocks; ++blk) {
      PrefetchBlock(cache, table[blk], g, std::min(bs, kv_len - blk * bs));
    }
    for (int blk = 0; blk < num_blocks; ++blk) {
      // Blocks sit anywhere in the pool, beyond the reach of the hardware prefetcher.
      if (blk + kPrefetchBlocks < num_blocks) {
        const int ahead = blk + kPrefetchBlocks;
        PrefetchBlock(cache, table[ahead], g, std::min(bs, kv_len - ahead * bs));
      }
      const int32_t phys = table[blk];
      const int nv = std::min(bs, kv_len - blk * bs);
      const KvLayerRegion& region = cache.regions[cache.block_layout[phys]];
      const uint8_t* base = cache.block_data[phys];
      DispatchKvFormat(region.format, [&](auto codec) {
        using Rows = typename decltype(codec)::Rows;
        const Rows k(base + region.k_offset, cache.shape, g);
        const Rows v(base + region.v_offset, cache.shape, g);
        for (int j0 = 0; j0 < nv; j0 += kSpan) {
          ProcessSpan<V>(k, v, j0, std::min(kSpan, nv - j0), gh, hd, sc);
        }
      });
    }
    float* out = b.out + (t * b.num_heads + head0) * hd;
    for (int h = 0; h < gh; ++h) {
      const float inv = sc.l[h] > 0.0f ? 1.0f / sc.l[h] : 0.0f;
      for (int d = 0; d < hd; ++d) out[h * hd + d] = sc.acc[h][d] * inv;
    }
  }
}

template <class V>
void RunAll(const Problem& pr, ThreadPool* pool) {
  const AttentionBatch& b = *pr.batch;
  const int64_t items = b.num_tokens * pr.num_kv_heads;
  int64_t kv_slots = 0;
  for (int64_t t = 0; t < b.num_tokens; ++t) kv_slots += b.token_kv_len[t];
  const int64_t work = kv_slots * b.num_heads * pr.head_dim;
  if (pool == nullptr || pool->num_threads() == 1 || items == 1 || work < kMinParallelWork) {
    for (int64_t i = 0; i < items; ++i) {
      RunItem<V>(pr, i / pr.num_kv_heads, static_cast<int>(i % pr.num_kv_heads));
    }
    return;
  }
  // Items differ in length (prefill tokens see growing prefixes), so threads take them one by one.
  struct Shared {
    const Problem* pr;
    int64_t items;
    std::atomic<int64_t> next{0};
  } shared{&pr, items};
  pool->ParallelFor(pool->num_threads(), 1, [s = &shared](int64_t, int64_t) {
    for (;;) {
      const int64_t i = s->next.fetch_add(1, std::memory_order_relaxed);
      if (i >= s->items) return;
      RunItem<V>(*s->pr, i / s->pr->num_kv_heads, static_cast<int>(i % s->pr->num_kv_heads));
    }
  });
}

}  // namespace

void WriteKv(const float* k, const float* v, int64_t num_tokens, const int32_t* slot_block,
             const int32_t* slot_offset, const PagedKvLayerView& cache) {
  const KvRegionShape& shape = cache.shape;
  const int64_t row = static_cast<int64_t>(shape.num_kv_heads) * shape.head_dim;
  for (int64_t t = 0; t < num_tokens; ++t) {
    const int32_t phys = slot_block[t];
    const int off = slot_offset[t];
    KVSERVE_KERNEL_CHECK(off >= 0 && off < shape.block_size, "WriteKv: slot offset out of range");
    const KvLayerRegion& region = cache.regions[cache.block_layout[phys]];
    uint8_t* base = cache.block_data[phys];
    DispatchKvFormat(region.format, [&](auto codec) {
      using Codec = decltype(codec);
      for (int g = 0; g < shape.num_kv_heads; ++g) {
        Codec::WriteRow(base + region.k_offset, shape, g, off, k + t * row + g * shape.head_dim);
        Codec::WriteRow(base + region.v_offset, shape, g, off, v + t * row + g * shape.head_dim);
      }
    });
  }
}

void PagedAttention(const AttentionBatch& batch, const PagedKvLayerView& cache, ThreadPool* pool) {
  if (batch.num_tokens <= 0) return;
  const KvRegionShape& shape = cache.shape;
  KVSERVE_KERNEL_CHECK(shape.head_dim > 0 && shape.head_dim <= kMaxHeadDim,
                       "PagedAttention: head_dim must be in [1, 256]");
  KVSERVE_KERNEL_CHECK(shape.num_kv_heads > 0 && batch.num_heads % shape.num_kv_heads == 0,
                       "PagedAttention: num_heads must be a multiple of num_kv_heads");
  const Problem pr{&batch, &cache, shape.head_dim, shape.num_kv_heads,
                   batch.num_heads / shape.num_kv_heads};
  if (shape.head_dim <= simd::VecNarrow::kLanes) {
    RunAll<simd::VecNarrow>(pr, pool);
  } else {
    RunAll<simd::VecWide>(pr, pool);
  }
}

}  // namespace kvserve::kernels::cpu
