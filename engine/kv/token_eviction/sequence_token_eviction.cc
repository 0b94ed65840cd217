#include "engine/kv/token_eviction/sequence_token_eviction.h"

#include <algorithm>
#include <map>

#include "absl/strings/str_format.h"
#include "engine/common/status_macros.h"
#include "kernels/cpu/kv_quantize.h"

namespace kvserve::engine {

int64_t FirstChangedBlock(absl::Span<const int32_t> keep, int block_size) {
  size_t i = 0;
  while (i < keep.size() && keep[i] == static_cast<int32_t>(i)) ++i;
  return static_cast<int64_t>(i) / block_size;
}

absl::StatusOr<KvCompactionStats> CompactSequenceKv(BlockPool& pool, SequenceKv& seq,
                                                    int64_t num_slots,
                                                    absl::Span<const int32_t> keep,
                                                    LayoutId write_layout,
                                                    const BlockAllocator& allocate) {
  const KvGeometry& g = pool.geometry();
  const int bs = g.block_size;
  const int64_t new_len = static_cast<int64_t>(keep.size());
  const int64_t old_blocks = static_cast<int64_t>(seq.block_table().size());
  KVSERVE_CHECK(num_slots <= seq.capacity_slots() && new_len <= num_slots &&
                (keep.empty() || keep.back() < num_slots))
      << "compaction plan outside the sequence";
  const int64_t new_blocks = (new_len + bs - 1) / bs;
  const int64_t first = FirstChangedBlock(keep, bs);
  const kernels::KvRegionShape shape = g.RegionShape();  // key_rank for lowrank keys
  const size_t region = static_cast<size_t>(g.num_kv_heads) * bs * g.head_dim;
  const size_t block_floats = 2 * static_cast<size_t>(g.num_layers) * region;
  KvCompactionStats stats;

  // Source blocks decoded once each: [layer][K, V][head][slot][dim].
  std::map<int64_t, std::vector<float>> decoded;
  auto source = [&](int64_t b) -> const float* {
    auto it = decoded.find(b);
    if (it != decoded.end()) return it->second.data();
    std::vector<float>& out = decoded[b];
    out.assign(block_floats, 0.0f);
    const BlockId id = seq.block_table()[b];
    const BlockLayout& layout = pool.layout(pool.layout_of(id));
    const uint8_t* base = pool.block_data(id);
    const int rows = static_cast<int>(std::min<int64_t>(bs, num_slots - b * bs));
    for (int l = 0; l < g.num_layers; ++l) {
      const kernels::KvLayerRegion& r = layout.regions[l];
      kernels::cpu::DequantizeKvRegion(r.format, kernels::KvRole::kKey, base + r.k_offset, shape,
                                       rows, out.data() + (2 * l) * region, pool.key_basis(l));
      kernels::cpu::DequantizeKvRegion(r.format, kernels::KvRole::kValue, base + r.v_offset, shape,
                                       rows, out.data() + (2 * l + 1) * region);
    }
    return out.data();
  };

  std::vector<float> stage(block_floats);
  for (int64_t b = first; b < new_blocks; ++b) {
    const int rows = static_cast<int>(std::min<int64_t>(bs, new_len - b * bs));
    std::fill(stage.begin(), stage.end(), 0.0f);
    for (int r = 0; r < rows; ++r) {
      const int32_t src = keep[b * bs + r];
      const float* from = source(src / bs);
      const int so = src % bs;
      for (size_t part = 0; part < 2 * static_cast<size_t>(g.num_layers); ++part) {
        for (int h = 0; h < g.num_kv_heads; ++h) {
          const float* in = from + part * region + (static_cast<size_t>(h) * bs + so) * g.head_dim;
          std::copy(in, in + g.head_dim,
                    stage.data() + part * region + (static_cast<size_t>(h) * bs + r) * g.head_dim);
        }
      }
    }
    // Later dest blocks read only source blocks at or after their first kept slot.
    const int64_t next_min = (b + 1) * bs < new_len ? keep[(b + 1) * bs] / bs : old_blocks;
    decoded.erase(decoded.begin(), decoded.lower_bound(next_min));
    if (b == new_blocks - 1) {
      // Every source row is decoded: free the tail before any allocation below.
      stats.blocks_freed = old_blocks - new_blocks;
      seq.Truncate(new_blocks);
      decoded.clear();
    }

    BlockId id = seq.block_table()[b];
    const LayoutId layout = pool.layout_of(id);
    const bool shared = pool.ref_count(id) > 1;
    const bool relayout = layout != write_layout && rows < bs;
    if (shared || relayout) {
      const LayoutId target = relayout ? write_layout : layout;
      absl::StatusOr<BlockId> fresh = allocate(target);
      if (!fresh.ok() && !shared) {
        pool.Release(id);  // ours alone: free it, then its bytes serve the new block
        fresh = allocate(target);
        if (!fresh.ok()) {
          seq.ForgetReleased(b);
          return fresh.status();
        }
      } else if (!fresh.ok()) {
        return fresh.status();
      } else if (!shared) {
        pool.Release(id);
      }
      if (shared) {
        seq.SetBlock(b, *fresh);  // drops our reference to the shared block
      } else {
        seq.AssignReleased(b, *fresh);
      }
      id = *fresh;
      ++stats.blocks_replaced;
      if (target == write_layout) seq.set_demoted_blocks(std::min(seq.demoted_blocks(), b));
    }
    const BlockLayout& out_layout = pool.layout(pool.layout_of(id));
    uint8_t* base = pool.block_data(id);
    for (int l = 0; l < g.num_layers; ++l) {
      const kernels::KvLayerRegion& r = out_layout.regions[l];
      if (!kernels::cpu::QuantizeKvRegion(r.format, kernels::KvRole::kKey,
                                          stage.data() + (2 * l) * region, shape, rows,
                                          base + r.k_offset, pool.key_basis(l)) ||
          !kernels::cpu::QuantizeKvRegion(r.format, kernels::KvRole::kValue,
                                          stage.data() + (2 * l + 1) * region, shape, rows,
                                          base + r.v_offset)) {
        return absl::InternalError(absl::StrFormat(
            "token eviction: non-finite K/V in layer %d while compacting block %d", l, b));
      }
    }
    ++stats.blocks_rewritten;
  }
  if (new_blocks <= first) {
    stats.blocks_freed = old_blocks - new_blocks;
    seq.Truncate(new_blocks);
  }
  return stats;
}

int32_t SequenceTokenEviction::MaxAppend() const {
  if (!enabled()) return budget_;
  const TokenEvictionOptions& o = policy_->options();
  return std::max(1, budget_ - o.slack_tokens - o.sink_tokens - 1);
}

absl::StatusOr<TokenEvictionPlan> SequenceTokenEviction::PlanRoom(int64_t num_slots,
                                                                  int64_t incoming) {
  if (!enabled() || num_slots + incoming <= budget_) return TokenEvictionPlan{};
  const int64_t target_budget = budget_ - incoming;
  if (target_budget < 1) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "token eviction: %d tokens appended at once exceed the budget of %d", incoming, budget_));
  }
  if (wants_scores()) scores_.resize(num_slots, 0.0f);
  return policy_->Plan(
      static_cast<int32_t>(num_slots),
      wants_scores() ? absl::MakeConstSpan(scores_.data(), num_slots) : absl::Span<const float>(),
      static_cast<int32_t>(target_budget));
}

absl::StatusOr<int64_t> SequenceTokenEviction::Apply(const TokenEvictionPlan& plan, BlockPool& pool,
                                                     SequenceKv& seq, int64_t num_slots,
                                                     LayoutId write_layout,
                                                     const BlockAllocator& allocate) {
  if (!plan.evict) return 0;
  KVSERVE_RETURN_IF_ERROR(
      CompactSequenceKv(pool, seq, num_slots, plan.keep, write_layout, allocate).status());
  if (wants_scores()) {
    scores_.resize(num_slots);
    CompactKept(absl::MakeConstSpan(plan.keep), &scores_);
  }
  const int64_t evicted = num_slots - static_cast<int64_t>(plan.keep.size());
  evicted_ += evicted;
  return evicted;
}

absl::StatusOr<int64_t> SequenceTokenEviction::MakeRoom(BlockPool& pool, SequenceKv& seq,
                                                        int64_t num_slots, int64_t incoming,
                                                        LayoutId write_layout,
                                                        const BlockAllocator& allocate) {
  KVSERVE_ASSIGN_OR_RETURN(TokenEvictionPlan plan, PlanRoom(num_slots, incoming));
  return Apply(plan, pool, seq, num_slots, write_layout, allocate);
}

float* SequenceTokenEviction::ScoresFor(int64_t num_slots) {
  if (!wants_scores()) return nullptr;
  if (static_cast<int64_t>(scores_.size()) < num_slots) scores_.resize(num_slots, 0.0f);
  return scores_.data();
}

}  // namespace kvserve::engine
