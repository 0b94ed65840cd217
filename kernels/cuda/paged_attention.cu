// Paged attention over blocks of any format, and token writes into float-format blocks.
//
// Partition kernel: one thread block of 128 threads per (query token, KV head, tile of up to
// kHeadTile query heads of that KV head, partition of kAttentionPartitionBlocks KV blocks). The
// block's *lane groups* (8, 16 or 32 lanes by head_dim) take whole KV blocks of the partition in
// turn; inside a block a group walks the rows one by one, lane i owning dims [i kC, (i + 1) kC):
// it loads the next row's codes before dequantizing the current one (in registers), reduces the
// q.K dot products over its lanes with shuffles and keeps an online softmax (running max m, sum l
// and unnormalised output acc, base 2) per query head. The group states are then merged (shuffles
// inside a warp, shared memory across warps). A token whose KV fits one partition is written to
// `out` directly; otherwise each partition stores (m, l, acc) in the workspace and the combine
// kernel merges them (flash-decoding). With h2o slot scores on, the partitions also keep each
// logit and a third kernel adds the normalised probabilities into the per-slot scores.
#include <algorithm>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/kv_codes.cuh"
#include "kernels/cuda/paged_attention.h"

namespace kvserve::kernels::cuda {
namespace {

using device::kNegInf;

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kHeadTile = 4;  // query heads per thread block
constexpr float kLog2e = 1.4426950408889634f;

struct PartitionParams {
  AttentionBatch b;
  PagedKvLayerView cache;
  int group;       // query heads per KV head
  int tiles;       // head tiles per KV head
  int max_splits;  // partitions of the longest token (grid.y)
  float* ws_acc;   // [num_tokens][num_heads][max_splits][head_dim]
  float* ws_ml;    // [num_tokens][num_heads][max_splits][2]: m (base 2), l
  // With slot scores only:
  float* ws_logits;  // [num_tokens][num_heads][max_kv_len]: q.K scaled, base 2
  float* ws_final;   // [num_tokens][num_heads][2]: the softmax's max (base 2) and sum
};

// Lane groups: kLanes lanes read one row, lane i owning dims [i kC, (i + 1) kC).
template <int kLanes>
constexpr int kGroups = kThreads / kLanes;  // lane groups per thread block

template <int kC>
struct State {
  float q[kHeadTile][kC];  // q * scale * log2(e)
  float m[kHeadTile];
  float l[kHeadTile];
  float acc[kHeadTile][kC];
};

template <int kLanes>
__device__ __forceinline__ float GroupSum(float v, unsigned mask) {
#pragma unroll
  for (int o = kLanes / 2; o > 0; o /= 2) v += __shfl_xor_sync(mask, v, o, kLanes);
  return v;
}

// Rows [0, nv) of KV head `head` of one block, format F.
template <KvFormat F, int kLanes, int kC>
__device__ __forceinline__ void ProcessBlock(const uint8_t* kreg, const uint8_t* vreg,
                                             const KvRegionShape& shape, int head, int nv, int d0,
                                             unsigned mask, State<kC>& st, float* logits,
                                             int64_t logit_stride, int nh) {
  using device::Dequant;
  using device::LoadCodes;
  const device::RegionGeo gk = device::GeoOf<F, KvRole::kKey>(shape);
  const device::RegionGeo gv = device::GeoOf<F, KvRole::kValue>(shape);
  auto kc = LoadCodes<F, KvRole::kKey, kC>(kreg, gk, head, 0, d0);
  auto vc = LoadCodes<F, KvRole::kValue, kC>(vreg, gv, head, 0, d0);
  for (int j = 0; j < nv; ++j) {
    const auto kcur = kc;
    const auto vcur = vc;
    if (j + 1 < nv) {  // the next row's loads fly while this one is computed
      kc = LoadCodes<F, KvRole::kKey, kC>(kreg, gk, head, j + 1, d0);
      vc = LoadCodes<F, KvRole::kValue, kC>(vreg, gv, head, j + 1, d0);
    }
    float x[kC];
    Dequant<F, KvRole::kKey, kC>(kcur, kreg, gk, head, j, d0, x);
    float s[kHeadTile];
#pragma unroll
    for (int i = 0; i < kHeadTile; ++i) {
      float dot = 0.0f;
#pragma unroll
      for (int c = 0; c < kC; ++c) dot = fmaf(st.q[i][c], x[c], dot);
      s[i] = GroupSum<kLanes>(dot, mask);
    }
    if (logits != nullptr && d0 == 0) {  // h2o scores: keep the logits for the score pass
#pragma unroll
      for (int i = 0; i < kHeadTile; ++i) {
        if (i < nh) logits[i * logit_stride + j] = s[i];
      }
    }
    Dequant<F, KvRole::kValue, kC>(vcur, vreg, gv, head, j, d0, x);
#pragma unroll
    for (int i = 0; i < kHeadTile; ++i) {
      const float mn = fmaxf(st.m[i], s[i]);
      const float corr = exp2f(st.m[i] - mn);  // 0 while m is -inf
      const float p = exp2f(s[i] - mn);
      st.l[i] = fmaf(st.l[i], corr, p);
#pragma unroll
      for (int c = 0; c < kC; ++c) st.acc[i][c] = fmaf(st.acc[i][c], corr, p * x[c]);
      st.m[i] = mn;
    }
  }
}

// Merges state (m2, l2, acc2) into (m, l, acc); either may be empty (m == -inf).
__device__ __forceinline__ void MergeWeights(float m, float m2, float* w1, float* w2, float* mn) {
  *mn = fmaxf(m, m2);
  *w1 = m == kNegInf ? 0.0f : exp2f(m - *mn);
  *w2 = m2 == kNegInf ? 0.0f : exp2f(m2 - *mn);
}

// At least 3 resident thread blocks per SM (<= 168 registers per thread): enough loads in
// flight to stream the KV at memory bandwidth.
template <int kLanes, int kC>
__global__ void __launch_bounds__(kThreads, 3) PartitionKernel(const PartitionParams p) {
  const AttentionBatch& b = p.b;
  const KvRegionShape shape = p.cache.shape;
  const int hkv = shape.num_kv_heads, hd = shape.head_dim, bs = shape.block_size;
  const int64_t item = blockIdx.x;
  const int tile = static_cast<int>(item % p.tiles);
  const int g = static_cast<int>((item / p.tiles) % hkv);
  const int64_t t = item / p.tiles / hkv;
  const int split = blockIdx.y;
  const int kv_len = b.token_kv_len[t];
  const int nblocks = (kv_len + bs - 1) / bs;
  const int b0 = split * kAttentionPartitionBlocks;
  if (b0 >= nblocks) return;  // uniform over the thread block
  const int b1 = min(nblocks, b0 + kAttentionPartitionBlocks);
  const int nsplits = (nblocks + kAttentionPartitionBlocks - 1) / kAttentionPartitionBlocks;
  const int32_t* table = b.seq_block_tables[b.token_seq[t]];

  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int sub = lane % kLanes;
  const int grp = threadIdx.x / kLanes;
  const unsigned mask =
      kLanes == 32 ? 0xffffffffu : ((1u << (kLanes % 32)) - 1u) << (lane / kLanes * kLanes);
  const int d0 = sub * kC;
  const int h_base = g * p.group + tile * kHeadTile;
  const int nh = min(kHeadTile, p.group - tile * kHeadTile);

  State<kC> st;
  const float qs = b.scale * kLog2e;
#pragma unroll
  for (int i = 0; i < kHeadTile; ++i) {
    st.m[i] = kNegInf;
    st.l[i] = 0.0f;
#pragma unroll
    for (int c = 0; c < kC; ++c) {
      const int d = d0 + c;
      st.q[i][c] = i < nh && d < hd ? b.q[(t * b.num_heads + h_base + i) * hd + d] * qs : 0.0f;
      st.acc[i][c] = 0.0f;
    }
  }

  for (int blk = b0 + grp; blk < b1; blk += kGroups<kLanes>) {
    const int32_t phys = table[blk];
    const KvLayerRegion reg = p.cache.regions[p.cache.block_layout[phys]];
    const uint8_t* base = p.cache.block_data[phys];
    const int nv = min(bs, kv_len - blk * bs);
    float* logits =
        p.ws_logits == nullptr
            ? nullptr
            : p.ws_logits + (t * b.num_heads + h_base) * int64_t{b.max_kv_len} + blk * bs;
    device::DispatchFormat(reg.format, [&](auto fc) {
      ProcessBlock<decltype(fc)::value, kLanes, kC>(base + reg.k_offset, base + reg.v_offset, shape,
                                                    g, nv, d0, mask, st, logits, b.max_kv_len, nh);
    });
  }

  // Merge the groups of each warp (lanes with the same `sub` hold the same dims).
#pragma unroll
  for (int off = kLanes; off < 32; off *= 2) {
#pragma unroll
    for (int i = 0; i < kHeadTile; ++i) {
      const float m2 = __shfl_xor_sync(0xffffffffu, st.m[i], off);
      const float l2 = __shfl_xor_sync(0xffffffffu, st.l[i], off);
      float w1, w2, mn;
      MergeWeights(st.m[i], m2, &w1, &w2, &mn);
      st.l[i] = st.l[i] * w1 + l2 * w2;
#pragma unroll
      for (int c = 0; c < kC; ++c) {
        const float a2 = __shfl_xor_sync(0xffffffffu, st.acc[i][c], off);
        st.acc[i][c] = st.acc[i][c] * w1 + a2 * w2;
      }
      st.m[i] = mn;
    }
  }
  __shared__ float s_m[kWarps][kHeadTile];
  __shared__ float s_l[kWarps][kHeadTile];
  __shared__ float s_acc[kWarps][kHeadTile][kAttentionMaxHeadDim];
  if (lane < kLanes) {
#pragma unroll
    for (int i = 0; i < kHeadTile; ++i) {
      if (lane == 0) {
        s_m[warp][i] = st.m[i];
        s_l[warp][i] = st.l[i];
      }
#pragma unroll
      for (int c = 0; c < kC; ++c) {
        if (d0 + c < hd) s_acc[warp][i][d0 + c] = st.acc[i][c];
      }
    }
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < nh * hd; idx += kThreads) {
    const int i = idx / hd, d = idx % hd;
    float mx = kNegInf;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) mx = fmaxf(mx, s_m[w][i]);
    float l = 0.0f, a = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      const float wt = s_m[w][i] == kNegInf ? 0.0f : exp2f(s_m[w][i] - mx);
      l += s_l[w][i] * wt;
      a += s_acc[w][i][d] * wt;
    }
    const int64_t th = t * b.num_heads + h_base + i;
    if (nsplits == 1) {
      b.out[th * hd + d] = a / l;
      if (p.ws_final != nullptr && d == 0) {
        p.ws_final[2 * th] = mx;
        p.ws_final[2 * th + 1] = l;
      }
    } else {
      const int64_t slot = th * p.max_splits + split;
      p.ws_acc[slot * hd + d] = a;
      if (d == 0) {
        p.ws_ml[2 * slot] = mx;
        p.ws_ml[2 * slot + 1] = l;
      }
    }
  }
}

// out[t, h] = the merge of the partitions of tokens that had more than one.
__global__ void __launch_bounds__(kThreads) CombineKernel(const PartitionParams p) {
  const AttentionBatch& b = p.b;
  const int hd = p.cache.shape.head_dim, bs = p.cache.shape.block_size;
  const int64_t th = blockIdx.x;
  const int64_t t = th / b.num_heads;
  const int nblocks = (b.token_kv_len[t] + bs - 1) / bs;
  const int nsplits = (nblocks + kAttentionPartitionBlocks - 1) / kAttentionPartitionBlocks;
  if (nsplits <= 1) return;
  const float* ml = p.ws_ml + th * p.max_splits * 2;
  float mx = kNegInf;
  for (int s = 0; s < nsplits; ++s) mx = fmaxf(mx, ml[2 * s]);
  float l = 0.0f;
  for (int s = 0; s < nsplits; ++s) l += ml[2 * s + 1] * exp2f(ml[2 * s] - mx);
  const float inv = 1.0f / l;
  if (p.ws_final != nullptr && threadIdx.x == 0) {
    p.ws_final[2 * th] = mx;
    p.ws_final[2 * th + 1] = l;
  }
  for (int d = threadIdx.x; d < hd; d += kThreads) {
    float a = 0.0f;
    for (int s = 0; s < nsplits; ++s) {
      a += p.ws_acc[(th * p.max_splits + s) * hd + d] * exp2f(ml[2 * s] - mx);
    }
    b.out[th * hd + d] = a * inv;
  }
}

// Per token t of a sequence s with seq_scores[s] set: seq_scores[s][g * stride + j] += the sum,
// over the query heads of KV head g, of exp2(logit - max) / sum, for slots j < kv_len; with a
// head stride of 0 (or none) every query head adds to row 0.
__global__ void __launch_bounds__(kThreads) ScoreKernel(const PartitionParams p) {
  const AttentionBatch& b = p.b;
  const int64_t t = blockIdx.x;
  const int32_t seq = b.token_seq[t];
  float* const row = b.seq_scores[seq];
  if (row == nullptr) return;  // uniform over the thread block
  const int64_t head_stride = b.seq_score_head_stride != nullptr ? b.seq_score_head_stride[seq] : 0;
  const int rows = head_stride > 0 ? p.cache.shape.num_kv_heads : 1;
  const int heads_per_row = b.num_heads / rows;
  const int kv_len = b.token_kv_len[t];
  for (int r = 0; r < rows; ++r) {
    float* out = row + r * head_stride;
    for (int s = blockIdx.y * kThreads + threadIdx.x; s < kv_len; s += gridDim.y * kThreads) {
      float sum = 0.0f;
      for (int h = r * heads_per_row; h < (r + 1) * heads_per_row; ++h) {
        const int64_t th = t * b.num_heads + h;
        sum +=
            exp2f(p.ws_logits[th * b.max_kv_len + s] - p.ws_final[2 * th]) / p.ws_final[2 * th + 1];
      }
      atomicAdd(out + s, sum);
    }
  }
}

int MaxSplits(int block_size, int max_kv_len) {
  const int nblocks = (max_kv_len + block_size - 1) / block_size;
  return std::max(1, (nblocks + kAttentionPartitionBlocks - 1) / kAttentionPartitionBlocks);
}

// Token-writable formats: row `off` of every KV head, converted from floats.
__global__ void WriteKvKernel(const float* k, const float* v, const int32_t* slot_block,
                              const int32_t* slot_offset, const PagedKvLayerView cache) {
  const int64_t t = blockIdx.x;
  const KvRegionShape s = cache.shape;
  const int32_t phys = slot_block[t];
  const int off = slot_offset[t];
  if (off < 0 || off >= s.block_size) return;
  const KvLayerRegion reg = cache.regions[cache.block_layout[phys]];
  uint8_t* base = cache.block_data[phys];
  const int64_t row = static_cast<int64_t>(s.num_kv_heads) * s.head_dim;
  for (int64_t e = threadIdx.x; e < 2 * row; e += blockDim.x) {
    const bool is_v = e >= row;
    const int64_t i = is_v ? e - row : e;
    const int h = static_cast<int>(i / s.head_dim), d = static_cast<int>(i % s.head_dim);
    const float x = (is_v ? v : k)[t * row + i];
    const int64_t idx = (static_cast<int64_t>(h) * s.block_size + off) * s.head_dim + d;
    uint8_t* region = base + (is_v ? reg.v_offset : reg.k_offset);
    switch (reg.format) {
      case KvFormat::kFp32:
        reinterpret_cast<float*>(region)[idx] = x;
        break;
      case KvFormat::kFp16:
        reinterpret_cast<uint16_t*>(region)[idx] = device::FloatToFp16Bits(x);
        break;
      case KvFormat::kBf16:
        reinterpret_cast<uint16_t*>(region)[idx] = device::FloatToBf16Bits(x);
        break;
      default:
        break;  // not token-writable: encoded whole by QuantizeKvRegions
    }
  }
}

}  // namespace

int64_t PagedAttentionWorkspaceBytes(int64_t num_tokens, int num_heads, int head_dim,
                                     int block_size, int max_kv_len, bool with_scores) {
  const int splits = MaxSplits(block_size, max_kv_len);
  const int64_t partials = splits <= 1 ? 0 : int64_t{splits} * (head_dim + 2);
  const int64_t scores = with_scores ? int64_t{max_kv_len} + 2 : 0;
  return num_tokens * num_heads * (partials + scores) * static_cast<int64_t>(sizeof(float));
}

void PagedAttention(const AttentionBatch& batch, const PagedKvLayerView& cache, Stream stream) {
  if (batch.num_tokens <= 0) return;
  const KvRegionShape& s = cache.shape;
  KVSERVE_CUDA_REQUIRE(s.head_dim > 0 && s.head_dim <= kAttentionMaxHeadDim,
                       "cuda::PagedAttention: head_dim must be in [1, 256]");
  KVSERVE_CUDA_REQUIRE(s.num_kv_heads > 0 && batch.num_heads % s.num_kv_heads == 0,
                       "cuda::PagedAttention: num_heads must be a multiple of num_kv_heads");
  KVSERVE_CUDA_REQUIRE(batch.max_kv_len >= 1, "cuda::PagedAttention: max_kv_len must be >= 1");
  KVSERVE_CUDA_REQUIRE(
      cache.key_basis == nullptr,
      "cuda::PagedAttention: lowrank key blocks are CPU-only (a key basis was given)");
  const int splits = MaxSplits(s.block_size, batch.max_kv_len);
  KVSERVE_CUDA_REQUIRE(splits <= 65535, "cuda::PagedAttention: context too long");
  const bool scores = batch.seq_scores != nullptr;
  const int64_t need = PagedAttentionWorkspaceBytes(batch.num_tokens, batch.num_heads, s.head_dim,
                                                    s.block_size, batch.max_kv_len, scores);
  KVSERVE_CUDA_REQUIRE(batch.workspace_bytes >= need && (need == 0 || batch.workspace != nullptr),
                       "cuda::PagedAttention: workspace too small");
  PartitionParams p;
  p.b = batch;
  p.cache = cache;
  p.group = batch.num_heads / s.num_kv_heads;
  p.tiles = (p.group + kHeadTile - 1) / kHeadTile;
  p.max_splits = splits;
  const int64_t th = batch.num_tokens * batch.num_heads;
  p.ws_acc = static_cast<float*>(batch.workspace);
  p.ws_ml = p.ws_acc + (splits > 1 ? th * splits * int64_t{s.head_dim} : 0);
  p.ws_logits = nullptr;
  p.ws_final = nullptr;
  if (scores) {
    p.ws_logits = p.ws_ml + (splits > 1 ? th * splits * 2 : 0);
    p.ws_final = p.ws_logits + th * batch.max_kv_len;
  }
  const int64_t items = batch.num_tokens * s.num_kv_heads * p.tiles;
  KVSERVE_CUDA_REQUIRE(items < (int64_t{1} << 31), "cuda::PagedAttention: batch too large");
  const dim3 grid(static_cast<unsigned>(items), static_cast<unsigned>(splits));
  // Lanes per row and dims per lane: 8 x 1, 8 x 4, 16 x 8 or 32 x 8.
  if (s.head_dim <= 8) {
    PartitionKernel<8, 1><<<grid, kThreads, 0, stream>>>(p);
  } else if (s.head_dim <= 32) {
    PartitionKernel<8, 4><<<grid, kThreads, 0, stream>>>(p);
  } else if (s.head_dim <= 128) {
    PartitionKernel<16, 8><<<grid, kThreads, 0, stream>>>(p);
  } else {
    PartitionKernel<32, 8><<<grid, kThreads, 0, stream>>>(p);
  }
  KVSERVE_CUDA_CHECK(cudaGetLastError());
  if (splits > 1) {
    CombineKernel<<<static_cast<unsigned>(batch.num_tokens * batch.num_heads), kThreads, 0,
                    stream>>>(p);
    KVSERVE_CUDA_CHECK(cudaGetLastError());
  }
  if (scores) {
    const dim3 score_grid(
        static_cast<unsigned>(batch.num_tokens),
        static_cast<unsigned>(std::min(64, (batch.max_kv_len + kThreads - 1) / kThreads)));
    ScoreKernel<<<score_grid, kThreads, 0, stream>>>(p);
    KVSERVE_CUDA_CHECK(cudaGetLastError());
  }
}

void WriteKv(const float* k, const float* v, int64_t num_tokens, const int32_t* slot_block,
             const int32_t* slot_offset, const PagedKvLayerView& cache, Stream stream) {
  if (num_tokens <= 0) return;
  KVSERVE_CUDA_REQUIRE(num_tokens < (int64_t{1} << 31), "cuda::WriteKv: too many tokens");
  WriteKvKernel<<<static_cast<unsigned>(num_tokens), 256, 0, stream>>>(k, v, slot_block,
                                                                       slot_offset, cache);
  KVSERVE_CUDA_CHECK(cudaGetLastError());
}

}  // namespace kvserve::kernels::cuda
