// Internals of the CPU paged attention shared by its translation units. Not a public contract.
//
// Work item = (query token t, KV heads [g0, g1)): attention of every query head of those KV
// heads for token t over the token's KV slots. Consecutive tokens of one sequence (a prefill
// chunk) form one item of up to 16 tokens with the Wide/Narrow runners (RunTokens*): each block
// is decoded once for all of them, and each token's arithmetic is that of its own item. A
// Wide/Narrow item walks the token's blocks once and, inside each block, reads the rows of its KV
// heads one after another: the heads of a region are adjacent, so a wide item turns the
// scattered blocks into long sequential runs (and prefetching them ahead works). Runners differ
// by head_dim:
//   RunItemHeadDim8     AVX-512 only: head_dim == 8, two rows per register, tiles of 16 tokens
//                       transposed once and shared by all query heads of a KV head; walks the
//                       blocks once per KV head, with no software prefetch (at 512 bytes per
//                       head and block the hardware prefetcher does better).
//   RunItemWide/Narrow  any head_dim: register-tiled dot products and V accumulation with the
//                       16-lane (Wide) or 8-lane (Narrow, head_dim <= 8) backend.
// A runner keeps the state of at most kMaxItemHeads query heads; an item with more (one KV head
// of a very large group) is run in passes over its query heads.
#ifndef KVSERVE_KERNELS_CPU_PAGED_ATTENTION_INTERNAL_H_
#define KVSERVE_KERNELS_CPU_PAGED_ATTENTION_INTERNAL_H_

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "kernels/cpu/kv_codec.h"
#include "kernels/cpu/paged_attention.h"

namespace kvserve::kernels::cpu::attention {

inline constexpr int kMaxHeadDim = 256;
inline constexpr int kMaxItemHeads = 32;   // query heads whose state one runner pass keeps
inline constexpr int kPrefetchBlocks = 2;  // blocks requested ahead of the one being read

struct Problem {
  const AttentionBatch* batch;
  const PagedKvLayerView* cache;
  int head_dim;
  int num_kv_heads;
  int group;  // query heads per KV head
  // Whether several work items may add to one sequence's scores at the same time (then the adds
  // are atomic; otherwise plain).
  bool shared_scores = false;
};

// Memory one participant of a PagedAttention call works in (score rows, decoded blocks, the states
// of a run of tokens). The caller grows every participant's arena to what the call needs before it
// dispatches work, so workers never allocate and an arena only grows when a call needs more than
// any call before it; participants index the arenas by their ParallelFor chunk.
class Arena {
 public:
  static constexpr size_t kAlign = 64;
  static constexpr size_t RoundUp(size_t bytes) { return (bytes + kAlign - 1) / kAlign * kAlign; }

  // Grows geometrically, so a context that grows a block at a time reallocates rarely; the
  // memory is left uninitialised (the runners write before they read).
  void Reserve(size_t bytes) {
    if (bytes <= capacity_) return;
    bytes = std::max(bytes, 2 * capacity_);
    storage_.reset(new std::byte[bytes + kAlign]);
    const auto addr = reinterpret_cast<uintptr_t>(storage_.get());
    base_ = storage_.get() + (kAlign - addr % kAlign) % kAlign;
    capacity_ = bytes;
  }
  size_t capacity() const { return capacity_; }
  // 64-byte aligned.
  std::byte* data() const { return base_; }

 private:
  std::unique_ptr<std::byte[]> storage_;
  std::byte* base_ = nullptr;
  size_t capacity_ = 0;
};

// A block that will be read later: Prefetch(g) requests its K and V rows of KV head g into L2.
// The pool scatters blocks beyond the reach of the hardware prefetcher; requesting one head at a
// time spreads the requests over the work instead of flooding the miss buffers.
class BlockAhead {
 public:
  BlockAhead() = default;
  BlockAhead(const PagedKvLayerView* cache, int32_t phys, int tokens)
      : cache_(cache), phys_(phys), tokens_(tokens) {}

  void Prefetch(int g) const {
    if (cache_ == nullptr) return;
    const KvLayerRegion& region = cache_->regions[cache_->block_layout[phys_]];
    const uint8_t* base = cache_->block_data[phys_];
    DispatchKvFormat(region.format, [&](auto codec) {
      using Codec = decltype(codec);
      Codec::Prefetch(base + region.k_offset, KvRole::kKey, cache_->shape, g, tokens_);
      Codec::Prefetch(base + region.v_offset, KvRole::kValue, cache_->shape, g, tokens_);
    });
  }

 private:
  const PagedKvLayerView* cache_ = nullptr;  // null: nothing ahead
  int32_t phys_ = 0;
  int tokens_ = 0;
};

// Calls fn(codec, k_region, v_region, nv, ahead, first_slot) for each block of a token's KV slots
// in order: codec is the block's KvCodec, the regions are this layer's K and V regions in the
// block, nv the number of valid slots, first_slot the sequence slot of its row 0, and `ahead` the
// block kPrefetchBlocks further on, whose rows fn requests head by head as it goes. The first
// blocks are requested here.
template <class Fn>
inline void ForEachBlock(const PagedKvLayerView& cache, const int32_t* table, int kv_len, int g0,
                         int g1, Fn&& fn) {
  const int bs = cache.shape.block_size;
  const int num_blocks = (kv_len + bs - 1) / bs;
  for (int b = 0; b < kPrefetchBlocks && b < num_blocks; ++b) {
    const BlockAhead first(&cache, table[b], std::min(bs, kv_len - b * bs));
    for (int g = g0; g < g1; ++g) first.Prefetch(g);
  }
  for (int b = 0; b < num_blocks; ++b) {
    const int a = b + kPrefetchBlocks;
    const BlockAhead ahead =
        a < num_blocks ? BlockAhead(&cache, table[a], std::min(bs, kv_len - a * bs)) : BlockAhead();
    const int32_t phys = table[b];
    const KvLayerRegion& region = cache.regions[cache.block_layout[phys]];
    const uint8_t* base = cache.block_data[phys];
    const int nv = std::min(bs, kv_len - b * bs);
    DispatchKvFormat(region.format, [&](auto codec) {
      fn(codec, base + region.k_offset, base + region.v_offset, nv, ahead, b * bs);
    });
  }
}

// Records, for one pass of a work item, the softmax numerators p = exp(s - m_span) of every
// (query head, slot) and the running max m_span each span of slots was exponentiated with; at
// the end, Finish() turns them into probabilities p * exp(m_span - m_final) / l_final, sums
// them over the heads and adds the sums to the sequence's score array (atomically). Costs one
// store per (head, slot), one exp per (head, span) and one atomic add per slot: small next to
// the head_dim multiply-adds per (head, slot) of attention itself. Inactive (every call a no-op
// but the checks of active()) when the sequence wants no scores.
class ScoreRecorder {
 public:
  // heads: query heads of the pass, `per_kv` of them for each KV head from g0 on (recorder head
  // h belongs to KV head g0 + h / per_kv); kv_len: slots the token attends to.
  ScoreRecorder(const Problem& pr, int64_t t, int heads, int kv_len, int g0, int per_kv)
      : out_(pr.batch->seq_scores != nullptr ? pr.batch->seq_scores[pr.batch->token_seq[t]]
                                             : nullptr),
        atomic_(pr.shared_scores),
        heads_(heads),
        kv_len_(kv_len),
        g0_(g0),
        per_kv_(per_kv) {
    if (out_ == nullptr) return;
    if (pr.batch->seq_score_head_stride != nullptr) {
      head_stride_ = pr.batch->seq_score_head_stride[pr.batch->token_seq[t]];
    }
    Buffers& buf = GetBuffers();
    buf.p.resize(static_cast<size_t>(heads) * kv_len);
    buf.spans.resize(heads);
    for (auto& s : buf.spans) s.clear();
    buf_ = &buf;
  }
  bool active() const { return out_ != nullptr; }
  // Row of head h's numerators, indexed by slot.
  float* Row(int h) const { return buf_->p.data() + static_cast<size_t>(h) * kv_len_; }
  // Slots [start, start + len) of head h were exponentiated against max m.
  void Span(int h, int start, int len, float m) const { buf_->spans[h].push_back({start, len, m}); }
  // m[h], l[h]: the final running max and sum of head h.
  template <class GetM, class GetL>
  void Finish(GetM&& final_m, GetL&& final_l) const {
    if (out_ == nullptr) return;
    // One row for every head (head_stride_ 0), or one row per KV head.
    const int rows = head_stride_ > 0 ? heads_ / per_kv_ : 1;
    const int heads_per_row = head_stride_ > 0 ? per_kv_ : heads_;
    std::vector<float>& sum = buf_->sum;
    for (int row = 0; row < rows; ++row) {
      sum.assign(kv_len_, 0.0f);
      for (int h = row * heads_per_row; h < (row + 1) * heads_per_row; ++h) {
        const float l = final_l(h);
        if (!(l > 0.0f)) continue;
        const float m = final_m(h);
        const float inv_l = 1.0f / l;
        const float* p = Row(h);
        for (const SpanRec& s : buf_->spans[h]) {
          // Once the running max has settled (most spans) no exp is needed.
          const float f = s.m == m ? inv_l : std::exp(s.m - m) * inv_l;
          for (int j = s.start; j < s.start + s.len; ++j) sum[j] += p[j] * f;
        }
      }
      float* out = head_stride_ > 0 ? out_ + (g0_ + row) * head_stride_ : out_;
      if (atomic_) {
        for (int j = 0; j < kv_len_; ++j) {
          std::atomic_ref<float>(out[j]).fetch_add(sum[j], std::memory_order_relaxed);
        }
      } else {
        for (int j = 0; j < kv_len_; ++j) out[j] += sum[j];
      }
    }
  }

 private:
  struct SpanRec {
    int start;
    int len;
    float m;
  };
  struct Buffers {
    std::vector<float> p;                     // [heads][kv_len]
    std::vector<std::vector<SpanRec>> spans;  // [heads]
    std::vector<float> sum;                   // [kv_len]
  };
  static Buffers& GetBuffers() {
    thread_local Buffers buffers;
    return buffers;
  }

  float* out_;
  bool atomic_;
  int heads_;
  int kv_len_;
  int g0_;
  int per_kv_;
  int64_t head_stride_ = 0;
  Buffers* buf_ = nullptr;
};

// Runners of item (t, [g0, g1)). REQUIRES: (g1 - g0) * group <= kMaxItemHeads or g1 == g0 + 1.
void RunItemWide(const Problem& pr, int64_t t, int g0, int g1, Arena& arena);
void RunItemNarrow(const Problem& pr, int64_t t, int g0, int g1, Arena& arena);
// Runners of the tokens [t0, t1) of one sequence at once, KV heads [g0, g1): each block is decoded
// once for all of them (prefill chunks). REQUIRES: no score recording for the sequence, no
// lowrank blocks, (g1 - g0) * group <= kMaxItemHeads. Bitwise the same outputs as RunItem*.
void RunTokensWide(const Problem& pr, int64_t t0, int64_t t1, int g0, int g1, Arena& arena);
void RunTokensNarrow(const Problem& pr, int64_t t0, int64_t t1, int g0, int g1, Arena& arena);
// Arena bytes RunTokens* needs for runs of up to `tokens` tokens.
size_t RunTokensArenaBytes(const Problem& pr, int tokens);
// True when this build has the head_dim 8 runner.
bool HasHeadDim8Runner();
void RunItemHeadDim8(const Problem& pr, int64_t t, int g0, int g1, Arena& arena);
// Arena bytes RunItemHeadDim8 needs for items over up to `kv_len` slots.
size_t HeadDim8ArenaBytes(const Problem& pr, int kv_len);

}  // namespace kvserve::kernels::cpu::attention

#endif  // KVSERVE_KERNELS_CPU_PAGED_ATTENTION_INTERNAL_H_
