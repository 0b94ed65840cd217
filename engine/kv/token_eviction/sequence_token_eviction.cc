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

namespace {

// One compaction of a sequence's KV in place: source blocks are decoded to floats once each,
// kept rows are gathered into a staging block, and each destination block from the first
// changed one on is re-quantized (into a fresh block when the old one is shared or must change
// layout).
class KvCompactor {
 public:
  KvCompactor(BlockPool& pool, SequenceKv& seq, int64_t num_slots,
              absl::Span<const std::vector<int32_t>> keeps, LayoutId write_layout,
              const BlockAllocator& allocate)
      : pool_(pool),
        seq_(seq),
        g_(pool.geometry()),
        bs_(g_.block_size),
        num_slots_(num_slots),
        keeps_(keeps),
        write_layout_(write_layout),
        allocate_(allocate),
        units_(static_cast<int64_t>(keeps.size())),
        shape_(g_.RegionShape()),  // key_rank for lowrank keys
        region_(static_cast<size_t>(g_.num_kv_heads) * bs_ * g_.head_dim),
        block_floats_(2 * static_cast<size_t>(g_.num_layers) * region_) {}

  // Checks the plan (CHECK-fails on a malformed one) and runs the compaction.
  absl::StatusOr<KvCompactionStats> Run() {
    CheckPlan();
    const int64_t new_len = static_cast<int64_t>(keeps_[0].size());
    const int64_t old_blocks = static_cast<int64_t>(seq_.block_table().size());
    const int64_t new_blocks = (new_len + bs_ - 1) / bs_;
    const int64_t first = FirstChangedBlock(keeps_, bs_);
    KvCompactionStats stats;
    std::vector<float> stage(block_floats_);
    for (int64_t b = first; b < new_blocks; ++b) {
      const int rows = static_cast<int>(std::min<int64_t>(bs_, new_len - b * bs_));
      GatherRows(b, rows, stage);
      DropDecodedBefore(NextMinSourceBlock(b, new_len, old_blocks));
      if (b == new_blocks - 1) {
        // Every source row is decoded: free the tail before any allocation below.
        stats.blocks_freed = old_blocks - new_blocks;
        seq_.Truncate(new_blocks);
        decoded_.clear();
      }
      KVSERVE_ASSIGN_OR_RETURN(const BlockId id, WritableBlock(b, rows, stats));
      KVSERVE_RETURN_IF_ERROR(WriteBlock(id, b, rows, stage));
      ++stats.blocks_rewritten;
    }
    if (new_blocks <= first) {
      stats.blocks_freed = old_blocks - new_blocks;
      seq_.Truncate(new_blocks);
    }
    return stats;
  }

 private:
  // Every unit holds one plan per layer/head split and every plan keeps the same number of
  // slots, in range of the sequence.
  void CheckPlan() const {
    KVSERVE_CHECK(units_ == 1 || units_ == g_.num_layers ||
                  units_ == static_cast<int64_t>(g_.num_layers) * g_.num_kv_heads)
        << "compaction plan with " << units_ << " units";
    const int64_t new_len = static_cast<int64_t>(keeps_[0].size());
    for (const std::vector<int32_t>& keep : keeps_) {
      KVSERVE_CHECK(num_slots_ <= seq_.capacity_slots() &&
                    static_cast<int64_t>(keep.size()) == new_len && new_len <= num_slots_ &&
                    (keep.empty() || keep.back() < num_slots_))
          << "compaction plan outside the sequence";
    }
  }

  // The plan of (layer l, KV head h): one for all, one per layer, or one per layer and head.
  const std::vector<int32_t>& UnitKeep(int l, int h) const {
    if (units_ == 1) return keeps_[0];
    if (units_ == g_.num_layers) return keeps_[l];
    return keeps_[static_cast<int64_t>(l) * g_.num_kv_heads + h];
  }

  // Source block b decoded (once) to floats: [layer][K, V][head][slot][dim].
  const float* Source(int64_t b) {
    auto it = decoded_.find(b);
    if (it != decoded_.end()) return it->second.data();
    std::vector<float>& out = decoded_[b];
    out.assign(block_floats_, 0.0f);
    const BlockId id = seq_.block_table()[b];
    const BlockLayout& layout = pool_.layout(pool_.layout_of(id));
    const uint8_t* base = pool_.mutable_block_data(id);
    const int rows = static_cast<int>(std::min<int64_t>(bs_, num_slots_ - b * bs_));
    for (int l = 0; l < g_.num_layers; ++l) {
      const kernels::KvLayerRegion& r = layout.regions[l];
      kernels::cpu::DequantizeKvRegion(r.format, kernels::KvRole::kKey, base + r.k_offset, shape_,
                                       rows, out.data() + (2 * l) * region_, pool_.key_basis(l));
      kernels::cpu::DequantizeKvRegion(r.format, kernels::KvRole::kValue, base + r.v_offset, shape_,
                                       rows, out.data() + (2 * l + 1) * region_);
    }
    return out.data();
  }

  // Fills `stage` (zeroed first) with the kept rows of destination block b.
  void GatherRows(int64_t b, int rows, std::vector<float>& stage) {
    std::fill(stage.begin(), stage.end(), 0.0f);
    for (int r = 0; r < rows; ++r) {
      for (size_t part = 0; part < 2 * static_cast<size_t>(g_.num_layers); ++part) {
        for (int h = 0; h < g_.num_kv_heads; ++h) {
          const int32_t src = UnitKeep(static_cast<int>(part / 2), h)[b * bs_ + r];
          const float* from = Source(src / bs_);
          const int so = src % bs_;
          const float* in =
              from + part * region_ + (static_cast<size_t>(h) * bs_ + so) * g_.head_dim;
          std::copy(
              in, in + g_.head_dim,
              stage.data() + part * region_ + (static_cast<size_t>(h) * bs_ + r) * g_.head_dim);
        }
      }
    }
  }

  // Later dest blocks read only source blocks at or after their first kept slot: the lowest
  // source block that destination blocks after b read (old_blocks when b is the last).
  int64_t NextMinSourceBlock(int64_t b, int64_t new_len, int64_t old_blocks) const {
    int64_t next_min = old_blocks;
    if ((b + 1) * bs_ < new_len) {
      for (const std::vector<int32_t>& keep : keeps_) {
        next_min = std::min<int64_t>(next_min, keep[(b + 1) * bs_] / bs_);
      }
    }
    return next_min;
  }

  void DropDecodedBefore(int64_t block) {
    decoded_.erase(decoded_.begin(), decoded_.lower_bound(block));
  }

  // The block that destination block b is written into: the current one, or a fresh one
  // (counted in stats.blocks_replaced) when the current one is shared or a partial block must
  // change to write_layout. On allocation failure the sequence stays consistent.
  absl::StatusOr<BlockId> WritableBlock(int64_t b, int rows, KvCompactionStats& stats) {
    const BlockId id = seq_.block_table()[b];
    const LayoutId layout = pool_.layout_of(id);
    const bool shared = pool_.ref_count(id) > 1;
    const bool relayout = layout != write_layout_ && rows < bs_;
    if (!shared && !relayout) return id;
    const LayoutId target = relayout ? write_layout_ : layout;
    absl::StatusOr<BlockId> fresh = allocate_(target);
    if (!fresh.ok() && !shared) {
      pool_.Release(id);  // ours alone: free it, then its bytes serve the new block
      fresh = allocate_(target);
      if (!fresh.ok()) {
        seq_.ForgetReleased(b);
        return fresh.status();
      }
    } else if (!fresh.ok()) {
      return fresh.status();
    } else if (!shared) {
      pool_.Release(id);
    }
    if (shared) {
      seq_.SetBlock(b, *fresh);  // drops our reference to the shared block
    } else {
      seq_.AssignReleased(b, *fresh);
    }
    ++stats.blocks_replaced;
    if (target == write_layout_) seq_.set_demoted_blocks(std::min(seq_.demoted_blocks(), b));
    return *fresh;
  }

  // Quantizes `stage` (rows of destination block b) into block id, layer by layer.
  absl::Status WriteBlock(BlockId id, int64_t b, int rows, const std::vector<float>& stage) {
    const BlockLayout& out_layout = pool_.layout(pool_.layout_of(id));
    uint8_t* base = pool_.mutable_block_data(id);
    for (int l = 0; l < g_.num_layers; ++l) {
      const kernels::KvLayerRegion& r = out_layout.regions[l];
      if (!kernels::cpu::QuantizeKvRegion(r.format, kernels::KvRole::kKey,
                                          stage.data() + (2 * l) * region_, shape_, rows,
                                          base + r.k_offset, pool_.key_basis(l)) ||
          !kernels::cpu::QuantizeKvRegion(r.format, kernels::KvRole::kValue,
                                          stage.data() + (2 * l + 1) * region_, shape_, rows,
                                          base + r.v_offset)) {
        return absl::InternalError(absl::StrFormat(
            "token eviction: non-finite K/V in layer %d while compacting block %d", l, b));
      }
    }
    return absl::OkStatus();
  }

  BlockPool& pool_;
  SequenceKv& seq_;
  const KvGeometry& g_;
  const int bs_;
  const int64_t num_slots_;
  const absl::Span<const std::vector<int32_t>> keeps_;
  const LayoutId write_layout_;
  const BlockAllocator& allocate_;
  const int64_t units_;
  const kernels::KvRegionShape shape_;
  const size_t region_;
  const size_t block_floats_;
  std::map<int64_t, std::vector<float>> decoded_;
};

}  // namespace

absl::StatusOr<KvCompactionStats> CompactSequenceKv(BlockPool& pool, SequenceKv& seq,
                                                    int64_t num_slots,
                                                    absl::Span<const std::vector<int32_t>> keeps,
                                                    LayoutId write_layout,
                                                    const BlockAllocator& allocate) {
  return KvCompactor(pool, seq, num_slots, keeps, write_layout, allocate).Run();
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
