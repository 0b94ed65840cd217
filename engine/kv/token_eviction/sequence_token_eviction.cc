#include "engine/kv/token_eviction/sequence_token_eviction.h"

#include <algorithm>
#include <limits>
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

int64_t FirstChangedBlock(absl::Span<const std::vector<int32_t>> keeps, int block_size) {
  int64_t first = std::numeric_limits<int64_t>::max();
  for (const std::vector<int32_t>& keep : keeps) {
    first = std::min(first, FirstChangedBlock(keep, block_size));
  }
  return keeps.empty() ? 0 : first;
}

absl::StatusOr<KvCompactionStats> CompactSequenceKv(BlockPool& pool, SequenceKv& seq,
                                                    int64_t num_slots,
                                                    absl::Span<const int32_t> keep,
                                                    LayoutId write_layout,
                                                    const BlockAllocator& allocate) {
  const std::vector<int32_t> one(keep.begin(), keep.end());
  return CompactSequenceKv(pool, seq, num_slots, absl::MakeConstSpan(&one, 1), write_layout,
                           allocate);
}

absl::StatusOr<KvCompactionStats> CompactSequenceKv(BlockPool& pool, SequenceKv& seq,
                                                    int64_t num_slots,
                                                    absl::Span<const std::vector<int32_t>> keeps,
                                                    LayoutId write_layout,
                                                    const BlockAllocator& allocate) {
  const KvGeometry& g = pool.geometry();
  const int bs = g.block_size;
  const int64_t units = static_cast<int64_t>(keeps.size());
  KVSERVE_CHECK(units == 1 || units == g.num_layers ||
                units == static_cast<int64_t>(g.num_layers) * g.num_kv_heads)
      << "compaction plan with " << units << " units";
  const int64_t new_len = static_cast<int64_t>(keeps[0].size());
  const int64_t old_blocks = static_cast<int64_t>(seq.block_table().size());
  for (const std::vector<int32_t>& keep : keeps) {
    KVSERVE_CHECK(num_slots <= seq.capacity_slots() &&
                  static_cast<int64_t>(keep.size()) == new_len && new_len <= num_slots &&
                  (keep.empty() || keep.back() < num_slots))
        << "compaction plan outside the sequence";
  }
  // The plan of (layer l, KV head h): one for all, one per layer, or one per layer and head.
  auto unit_keep = [&](int l, int h) -> const std::vector<int32_t>& {
    if (units == 1) return keeps[0];
    if (units == g.num_layers) return keeps[l];
    return keeps[static_cast<int64_t>(l) * g.num_kv_heads + h];
  };
  const int64_t new_blocks = (new_len + bs - 1) / bs;
  const int64_t first = FirstChangedBlock(keeps, bs);
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
    const uint8_t* base = pool.mutable_block_data(id);
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
      for (size_t part = 0; part < 2 * static_cast<size_t>(g.num_layers); ++part) {
        for (int h = 0; h < g.num_kv_heads; ++h) {
          const int32_t src = unit_keep(static_cast<int>(part / 2), h)[b * bs + r];
          const float* from = source(src / bs);
          const int so = src % bs;
          const float* in = from + part * region + (static_cast<size_t>(h) * bs + so) * g.head_dim;
          std::copy(in, in + g.head_dim,
                    stage.data() + part * region + (static_cast<size_t>(h) * bs + r) * g.head_dim);
        }
      }
    }
    // Later dest blocks read only source blocks at or after their first kept slot.
    int64_t next_min = old_blocks;
    if ((b + 1) * bs < new_len) {
      for (const std::vector<int32_t>& keep : keeps) {
        next_min = std::min<int64_t>(next_min, keep[(b + 1) * bs] / bs);
      }
    }
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
    uint8_t* base = pool.mutable_block_data(id);
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

SequenceTokenEviction::SequenceTokenEviction(const TokenEvictionPolicy* policy,
                                             int32_t budget_tokens, int num_layers,
                                             int num_kv_heads)
    : policy_(policy), budget_(budget_tokens) {
  if (!wants_scores()) return;
  switch (policy_->options().granularity) {
    case TokenEvictionGranularity::kSequence:
      break;
    case TokenEvictionGranularity::kLayer:
      units_ = num_layers;
      layer_stride_ = budget_;
      break;
    case TokenEvictionGranularity::kHead:
      units_ = num_layers * num_kv_heads;
      layer_stride_ = static_cast<int64_t>(num_kv_heads) * budget_;
      head_stride_ = budget_;
      break;
  }
  KVSERVE_CHECK(units_ >= 1) << "token eviction over " << units_ << " score units";
}

int32_t SequenceTokenEviction::MaxAppend() const {
  if (!enabled()) return budget_;
  const TokenEvictionOptions& o = policy_->options();
  return std::max(1, budget_ - o.slack_tokens - o.sink_tokens - 1);
}

absl::StatusOr<SequenceEvictionPlan> SequenceTokenEviction::PlanRoom(int64_t num_slots,
                                                                     int64_t incoming) {
  if (!enabled() || num_slots + incoming <= budget_) return SequenceEvictionPlan{};
  const int64_t target_budget = budget_ - incoming;
  if (target_budget < 1) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "token eviction: %d tokens appended at once exceed the budget of %d", incoming, budget_));
  }
  SequenceEvictionPlan out;
  if (!wants_scores()) {
    KVSERVE_ASSIGN_OR_RETURN(
        TokenEvictionPlan plan,
        policy_->Plan(static_cast<int32_t>(num_slots), {}, static_cast<int32_t>(target_budget)));
    out.evict = plan.evict;
    if (plan.evict) out.keep.push_back(std::move(plan.keep));
    return out;
  }
  ScoresFor(num_slots);  // slots never scored (none yet) count as 0
  const bool by_age = policy_->options().score_normalization == TokenScoreNormalization::kAge;
  std::vector<float> unit(num_slots);
  for (int u = 0; u < units_; ++u) {
    const float* row = scores_.data() + static_cast<size_t>(u) * budget_;
    for (int64_t j = 0; j < num_slots; ++j) {
      const int32_t* pos = positions_.data() + static_cast<size_t>(u) * budget_;
      // Queries that have attended slot j so far: the tokens fed from its position on.
      const float queries = static_cast<float>(std::max<int64_t>(1, fed_ - pos[j]));
      unit[j] = by_age ? row[j] / queries : row[j];
    }
    KVSERVE_ASSIGN_OR_RETURN(
        TokenEvictionPlan plan,
        policy_->Plan(static_cast<int32_t>(num_slots), unit, static_cast<int32_t>(target_budget)));
    if (!plan.evict) return SequenceEvictionPlan{};
    out.keep.push_back(std::move(plan.keep));
  }
  out.evict = true;
  return out;
}

absl::StatusOr<int64_t> SequenceTokenEviction::Apply(const SequenceEvictionPlan& plan,
                                                     BlockPool& pool, SequenceKv& seq,
                                                     int64_t num_slots, LayoutId write_layout,
                                                     const BlockAllocator& allocate) {
  if (!plan.evict) return 0;
  KVSERVE_RETURN_IF_ERROR(
      CompactSequenceKv(pool, seq, num_slots, plan.keep, write_layout, allocate).status());
  const int64_t kept = static_cast<int64_t>(plan.keep[0].size());
  if (wants_scores()) {
    ScoresFor(num_slots);
    for (int u = 0; u < units_; ++u) {
      const std::vector<int32_t>& keep = plan.keep[plan.keep.size() == 1 ? 0 : u];
      float* row = scores_.data() + static_cast<size_t>(u) * budget_;
      int32_t* pos = positions_.data() + static_cast<size_t>(u) * budget_;
      for (size_t i = 0; i < keep.size(); ++i) {
        row[i] = row[keep[i]];
        pos[i] = pos[keep[i]];
      }
      std::fill(row + kept, row + budget_, 0.0f);
    }
    filled_ = kept;
  }
  const int64_t evicted = num_slots - kept;
  evicted_ += evicted;
  return evicted;
}

absl::StatusOr<int64_t> SequenceTokenEviction::MakeRoom(BlockPool& pool, SequenceKv& seq,
                                                        int64_t num_slots, int64_t incoming,
                                                        LayoutId write_layout,
                                                        const BlockAllocator& allocate) {
  KVSERVE_ASSIGN_OR_RETURN(SequenceEvictionPlan plan, PlanRoom(num_slots, incoming));
  return Apply(plan, pool, seq, num_slots, write_layout, allocate);
}

float* SequenceTokenEviction::ScoresFor(int64_t num_slots) {
  if (!wants_scores()) return nullptr;
  KVSERVE_CHECK(num_slots <= budget_) << "scores for " << num_slots << " slots, budget " << budget_;
  if (scores_.empty()) {
    scores_.assign(static_cast<size_t>(units_) * budget_, 0.0f);
    positions_.assign(static_cast<size_t>(units_) * budget_, 0);
  }
  if (num_slots > filled_) {
    // The step about to run feeds tokens at positions fed_, fed_ + 1, ... into the new slots.
    for (int u = 0; u < units_; ++u) {
      int32_t* pos = positions_.data() + static_cast<size_t>(u) * budget_;
      for (int64_t j = filled_; j < num_slots; ++j)
        pos[j] = static_cast<int32_t>(fed_ + j - filled_);
    }
    fed_ += num_slots - filled_;
    filled_ = num_slots;
  }
  return scores_.data();
}

std::vector<float> SequenceTokenEviction::scores() const {
  std::vector<float> out;
  for (int u = 0; u < units_ && !scores_.empty(); ++u) {
    const float* row = scores_.data() + static_cast<size_t>(u) * budget_;
    out.insert(out.end(), row, row + filled_);
  }
  return out;
}

void SequenceTokenEviction::Reset() {
  scores_.clear();
  positions_.clear();
  filled_ = 0;
  fed_ = 0;
}

}  // namespace kvserve::engine
