// Token eviction applied to live sequences: compaction of paged blocks in every KV format
// (moved rows equal the originals, exactly for float formats and within the format's
// quantization error otherwise; shared blocks are copied, never written), and the real model
// under sliding_window and h2o against a plain reference that evicts by its own rules.
#include "engine/kv/token_eviction/sequence_token_eviction.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <memory>
#include <numeric>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "engine/eval/perplexity.h"
#include "engine/kv/block_pool.h"
#include "engine/kv/kv_cache_policy.h"
#include "engine/kv/sequence_kv.h"
#include "engine/runtime/local_model.h"
#include "gtest/gtest.h"
#include "kernels/cpu/kv_quantize.h"
#include "kernels/cpu/paged_attention.h"
#include "tests/engine/testing/reference_evicting_llama.h"

namespace kvserve::engine {
namespace {

using kernels::KvFormat;
using kernels::KvRole;

// Dequantized K and V of every filled slot: [slot][layer][K, V][head][dim].
std::vector<std::vector<float>> ReadSlots(const BlockPool& pool, const SequenceKv& seq,
                                          int64_t slots) {
  const KvGeometry& g = pool.geometry();
  const kernels::KvRegionShape shape = g.RegionShape();
  const size_t region = static_cast<size_t>(g.num_kv_heads) * g.block_size * g.head_dim;
  const size_t row = static_cast<size_t>(g.num_kv_heads) * g.head_dim;
  std::vector<std::vector<float>> out(slots, std::vector<float>(2 * g.num_layers * row));
  std::vector<float> buf(region);
  for (int64_t b = 0; b * g.block_size < slots; ++b) {
    const BlockId id = seq.block_table()[b];
    const BlockLayout& layout = pool.layout(pool.layout_of(id));
    const int rows = static_cast<int>(std::min<int64_t>(g.block_size, slots - b * g.block_size));
    for (int l = 0; l < g.num_layers; ++l) {
      for (int role = 0; role < 2; ++role) {
        const kernels::KvLayerRegion& r = layout.regions[l];
        kernels::cpu::DequantizeKvRegion(r.format, static_cast<KvRole>(role),
                                         pool.block_data(id) + (role ? r.v_offset : r.k_offset),
                                         shape, rows, buf.data(),
                                         role == 0 ? pool.key_basis(l) : nullptr);
        for (int j = 0; j < rows; ++j) {
          for (int h = 0; h < g.num_kv_heads; ++h) {
            std::copy_n(buf.data() + (static_cast<size_t>(h) * g.block_size + j) * g.head_dim,
                        g.head_dim,
                        out[b * g.block_size + j].data() + (2 * l + role) * row + h * g.head_dim);
          }
        }
      }
    }
  }
  return out;
}

// Fills `slots` slots with random K/V the way the engine does: written in the write layout and
// demoted when the policy says so.
void Fill(BlockPool& pool, const KvCachePolicy& policy, SequenceKv& seq, int64_t slots,
          std::mt19937& rng) {
  const KvGeometry& g = pool.geometry();
  ASSERT_TRUE(seq.Reserve(slots).ok());
  std::uniform_real_distribution<float> dist(-1.5f, 1.5f);
  const int64_t row = static_cast<int64_t>(g.num_kv_heads) * g.head_dim;
  for (int64_t s = 0; s < slots; ++s) {
    const int32_t block = seq.block_table()[s / g.block_size];
    const int32_t off = static_cast<int32_t>(s % g.block_size);
    for (int l = 0; l < g.num_layers; ++l) {
      std::vector<float> k(row), v(row);
      for (float& x : k) x = dist(rng);
      for (float& x : v) x = dist(rng);
      kernels::cpu::WriteKv(k.data(), v.data(), 1, &block, &off, pool.LayerView(l));
    }
    ASSERT_TRUE(policy.Demote(seq, s + 1).ok());
  }
}

// Largest error one re-encoding may add, relative to the largest magnitude in the data (1.5).
double Tolerance(KvFormat f) {
  switch (f) {
    case KvFormat::kFp32:
    case KvFormat::kFp16:
    case KvFormat::kBf16:
      return 0.0;  // a decoded float re-encodes to itself
    case KvFormat::kInt8:
      return 0.05;
    case KvFormat::kFp8:
      return 0.15;
    case KvFormat::kInt4:
    case KvFormat::kNvfp4:
      return 0.5;
    case KvFormat::kInt2:
      return 1.5;
    case KvFormat::kLowrank:
      return 0.05;  // values int8; key coefficients FP16, re-encoded onto the same basis
  }
  return 0.0;
}

struct CompactionCase {
  KvFormat format;
  int32_t recent_window;  // hot window of the mixed-precision policy (0: none)
};

TEST(KvCompactionTest, MovesKeptRowsInEveryFormatAndFreesTheTail) {
  std::mt19937 rng(11);
  for (int f = 0; f < kernels::kNumKvFormats; ++f) {
    for (int32_t window : {0, 8}) {
      const KvFormat format = static_cast<KvFormat>(f);
      SCOPED_TRACE(std::string(kernels::KvFormatName(format)) + " window " +
                   std::to_string(window));
      KvGeometry geometry{2, 2, 8, 4};
      if (format == KvFormat::kLowrank) geometry.key_rank = 8;
      BlockPool pool(geometry, 1 << 20);
      if (format == KvFormat::kLowrank) {
        // A full-rank basis (a signed permutation of the axes of every head of every layer):
        // rows leaving the fp32 window lose nothing to the projection, only FP16 rounding.
        std::vector<float> basis(2 * 2 * 8 * 8, 0.0f);
        for (int lh = 0; lh < 4; ++lh) {
          for (int r = 0; r < 8; ++r) basis[(lh * 8 + (r + lh) % 8) * 8 + r] = r % 2 ? -1.0f : 1.0f;
        }
        ASSERT_TRUE(pool.SetKeyBasis(std::move(basis)).ok());
      }
      KvCachePolicyConfig pc;
      pc.format = format;
      pc.recent_window = window;
      pc.window_format = KvFormat::kFp32;
      absl::StatusOr<KvCachePolicy> policy = KvCachePolicy::Create(&pool, pc);
      ASSERT_TRUE(policy.ok()) << policy.status();
      SequenceKv seq(&pool, policy->write_layout());
      const int64_t slots = 37;
      Fill(pool, *policy, seq, slots, rng);
      const std::vector<std::vector<float>> before = ReadSlots(pool, seq, slots);

      // Keep a random 19 slots, the first three in place.
      std::vector<int32_t> candidates(slots - 3);
      std::iota(candidates.begin(), candidates.end(), 3);
      std::shuffle(candidates.begin(), candidates.end(), rng);
      std::vector<int32_t> keep = {0, 1, 2};
      keep.insert(keep.end(), candidates.begin(), candidates.begin() + 16);
      std::sort(keep.begin(), keep.end());
      const int64_t used_before = pool.used_blocks();

      const BlockAllocator allocate = [&pool](LayoutId l) { return pool.Allocate(l); };
      absl::StatusOr<KvCompactionStats> st =
          CompactSequenceKv(pool, seq, slots, keep, policy->write_layout(), allocate);
      ASSERT_TRUE(st.ok()) << st.status();
      EXPECT_EQ(seq.block_table().size(), 5u);  // ceil(19 / 4)
      EXPECT_EQ(st->blocks_freed, 10 - 5);
      EXPECT_EQ(pool.used_blocks(), used_before - 5);
      // Every block holding a partial (last) block must take single-token writes.
      EXPECT_TRUE(kernels::KvFormatTokenWritable(
          pool.layout(pool.layout_of(seq.block_table().back())).layer_formats[0]));

      const std::vector<std::vector<float>> after = ReadSlots(pool, seq, 19);
      // A row may also move from the full-precision window (fp32) into a long-term block.
      const double window_rounding = window > 0 && format != KvFormat::kFp32 ? 1.5 / 128 : 0.0;
      const double tol = std::max(Tolerance(format) * 1.5, window_rounding) + 1e-6;
      for (size_t i = 0; i < keep.size(); ++i) {
        for (size_t e = 0; e < after[i].size(); ++e) {
          ASSERT_NEAR(after[i][e], before[keep[i]][e], tol) << "slot " << i << " elem " << e;
        }
      }
      // The policy can still demote what is now eligible, and the sequence keeps growing.
      EXPECT_TRUE(policy->Demote(seq, 19).ok());
      EXPECT_TRUE(seq.Reserve(25).ok());
    }
  }
}

TEST(KvCompactionTest, EachLayerAndHeadMovesByItsOwnPlan) {
  std::mt19937 rng(29);
  for (KvFormat format : {KvFormat::kFp32, KvFormat::kInt8, KvFormat::kInt4}) {
    for (int units : {2, 4}) {  // per layer, per layer and KV head (2 layers x 2 heads)
      SCOPED_TRACE(std::string(kernels::KvFormatName(format)) + " units " + std::to_string(units));
      const KvGeometry geometry{2, 2, 8, 4};
      BlockPool pool(geometry, 1 << 20);
      KvCachePolicyConfig pc;
      pc.format = format;
      absl::StatusOr<KvCachePolicy> policy = KvCachePolicy::Create(&pool, pc);
      ASSERT_TRUE(policy.ok()) << policy.status();
      SequenceKv seq(&pool, policy->write_layout());
      const int64_t slots = 37;
      Fill(pool, *policy, seq, slots, rng);
      const std::vector<std::vector<float>> before = ReadSlots(pool, seq, slots);
      // Each unit keeps its own random 19 slots; unit 1 keeps slots 0-5 in place, the others
      // only slot 0, so the first block changes for some units and not for others.
      std::vector<std::vector<int32_t>> keeps(units);
      for (int u = 0; u < units; ++u) {
        const int fixed = u == 1 ? 6 : 1;
        std::vector<int32_t> candidates(slots - fixed);
        std::iota(candidates.begin(), candidates.end(), fixed);
        std::shuffle(candidates.begin(), candidates.end(), rng);
        keeps[u].resize(fixed);
        std::iota(keeps[u].begin(), keeps[u].end(), 0);
        keeps[u].insert(keeps[u].end(), candidates.begin(), candidates.begin() + (19 - fixed));
        std::sort(keeps[u].begin(), keeps[u].end());
      }
      EXPECT_EQ(FirstChangedBlock(absl::MakeConstSpan(keeps), 4),
                std::min(FirstChangedBlock(keeps[0], 4), FirstChangedBlock(keeps[1], 4)));
      const BlockAllocator allocate = [&pool](LayoutId l) { return pool.Allocate(l); };
      absl::StatusOr<KvCompactionStats> st = CompactSequenceKv(
          pool, seq, slots, absl::MakeConstSpan(keeps), policy->write_layout(), allocate);
      ASSERT_TRUE(st.ok()) << st.status();
      EXPECT_EQ(seq.block_table().size(), 5u);
      const std::vector<std::vector<float>> after = ReadSlots(pool, seq, 19);
      const int hd = geometry.head_dim, heads = geometry.num_kv_heads;
      const double tol = Tolerance(format) * 1.5 + 1e-6;
      for (int l = 0; l < geometry.num_layers; ++l) {
        for (int h = 0; h < heads; ++h) {
          const std::vector<int32_t>& keep = keeps[units == 2 ? l : l * heads + h];
          for (int role = 0; role < 2; ++role) {
            const size_t at = (2 * l + role) * heads * hd + h * hd;
            for (size_t i = 0; i < keep.size(); ++i) {
              for (int d = 0; d < hd; ++d) {
                ASSERT_NEAR(after[i][at + d], before[keep[i]][at + d], tol)
                    << "layer " << l << " head " << h << " slot " << i;
              }
            }
          }
        }
      }
    }
  }
}

TEST(KvCompactionTest, SharedBlocksAreCopiedNotWritten) {
  std::mt19937 rng(5);
  const KvGeometry geometry{1, 1, 8, 4};
  BlockPool pool(geometry, 1 << 20);
  KvCachePolicyConfig pc;
  pc.format = KvFormat::kFp16;
  absl::StatusOr<KvCachePolicy> policy = KvCachePolicy::Create(&pool, pc);
  ASSERT_TRUE(policy.ok());
  SequenceKv seq(&pool, policy->write_layout());
  Fill(pool, *policy, seq, 16, rng);
  // Another holder (the prefix cache) shares blocks 1 and 2.
  const BlockId shared1 = seq.block_table()[1], shared2 = seq.block_table()[2];
  pool.AddRef(shared1);
  pool.AddRef(shared2);
  const std::vector<uint8_t> bytes1(pool.block_data(shared1),
                                    pool.block_data(shared1) + pool.layout(0).block_bytes);
  // Sliding window: keep slots 0..3 (block 0, untouched) and the last 6.
  std::vector<int32_t> keep = {0, 1, 2, 3, 10, 11, 12, 13, 14, 15};
  const std::vector<std::vector<float>> before = ReadSlots(pool, seq, 16);
  const BlockId block0 = seq.block_table()[0];
  const BlockAllocator allocate = [&pool](LayoutId l) { return pool.Allocate(l); };
  absl::StatusOr<KvCompactionStats> st =
      CompactSequenceKv(pool, seq, 16, keep, policy->write_layout(), allocate);
  ASSERT_TRUE(st.ok()) << st.status();
  EXPECT_EQ(seq.block_table()[0], block0);   // before the first change: untouched
  EXPECT_NE(seq.block_table()[1], shared1);  // copy-on-write
  EXPECT_EQ(st->blocks_replaced, 2);         // blocks 1 and 2 (slots 4..9) are rewritten
  EXPECT_EQ(st->blocks_freed, 1);
  EXPECT_EQ(pool.ref_count(shared1), 1);  // our reference dropped, the other kept
  EXPECT_EQ(pool.ref_count(shared2), 1);
  EXPECT_TRUE(std::equal(bytes1.begin(), bytes1.end(), pool.block_data(shared1)));
  const std::vector<std::vector<float>> after = ReadSlots(pool, seq, 10);
  for (size_t i = 0; i < keep.size(); ++i) EXPECT_EQ(after[i], before[keep[i]]) << i;
  pool.Release(shared1);
  pool.Release(shared2);
}

// ---- The real model against the reference -------------------------------------------------

std::unique_ptr<LocalModel> OpenStories(KvFormat format = KvFormat::kFp32, int block_size = 16) {
  LocalModelOptions o;
  o.model_path = std::string(KVSERVE_MODELS_DIR) + "/stories260K.bin";
  o.kv_format = format;
  o.block_size = block_size;
  o.num_threads = 2;
  o.prefix_cache = false;
  auto lm = LocalModel::Open(o);
  EXPECT_TRUE(lm.ok()) << lm.status();
  return lm.ok() ? std::move(*lm) : nullptr;
}

// The first n tokens of the held-out stories, each story BOS first.
std::vector<int32_t> StoryTokens(const LocalModel& lm, int n) {
  std::ifstream in(std::string(KVSERVE_EVAL_DIR) + "/tinystories_valid_a.txt");
  std::stringstream text;
  text << in.rdbuf();
  const std::string all = text.str();
  std::vector<int32_t> t;
  for (std::string_view doc : SplitDocuments(all, "<|endoftext|>")) {
    const std::vector<int32_t> d = lm.tokenizer().Encode(doc, /*add_bos=*/true);
    t.insert(t.end(), d.begin(), d.end());
    if (static_cast<int>(t.size()) >= n) break;
  }
  EXPECT_GE(static_cast<int>(t.size()), n);
  t.resize(n);
  return t;
}

struct EngineRun {
  std::vector<std::vector<float>> logits;        // [position][vocab]
  std::vector<std::vector<int32_t>> kept_after;  // original positions kept after each eviction
  // The same for every score unit (one, or one per layer and KV head): [eviction][unit][kept].
  std::vector<std::vector<std::vector<int32_t>>> unit_kept_after;
  int64_t max_slots = 0;
  int64_t max_blocks = 0;
  int64_t evicted = 0;
};

// Feeds tokens one at a time through LlamaModel with token eviction (the scheduler's decode
// path: evict before appending, scores from the kernel).
EngineRun RunEngine(LocalModel& lm, const TokenEvictionPolicy& policy, int32_t budget,
                    const std::vector<int32_t>& tokens) {
  EngineRun run;
  SequenceKv kv(&lm.kv_pool(), lm.kv_layout());
  SequenceTokenEviction te(&policy, budget, lm.config().num_layers,
                           lm.kv_pool().geometry().num_kv_heads);
  const BlockAllocator allocate = [&lm](LayoutId l) { return lm.kv_pool().Allocate(l); };
  std::vector<int32_t> positions;                    // original position of each slot
  std::vector<int32_t> all_positions;                // 0 .. p - 1
  std::vector<std::vector<int32_t>> unit_positions;  // per unit, after the first eviction
  const int vocab = lm.config().vocab_size;
  std::vector<float> logits(vocab);
  int64_t slots = 0;
  for (int32_t p = 0; p < static_cast<int32_t>(tokens.size()); ++p) {
    absl::StatusOr<SequenceEvictionPlan> plan = te.PlanRoom(slots, 1);
    EXPECT_TRUE(plan.ok()) << plan.status();
    if (plan->evict) {
      absl::StatusOr<int64_t> ev =
          te.Apply(*plan, lm.kv_pool(), kv, slots, lm.kv_layout(), allocate);
      EXPECT_TRUE(ev.ok()) << ev.status();
      CompactKept(absl::MakeConstSpan(plan->keep[0]), &positions);
      if (unit_positions.empty()) unit_positions.assign(plan->keep.size(), {});
      for (size_t u = 0; u < plan->keep.size(); ++u) {
        if (unit_positions[u].empty()) unit_positions[u] = all_positions;
        CompactKept(absl::MakeConstSpan(plan->keep[u]), &unit_positions[u]);
      }
      run.unit_kept_after.push_back(unit_positions);
      slots -= *ev;
      run.evicted += *ev;
      run.kept_after.push_back(positions);
    }
    EXPECT_TRUE(kv.Reserve(slots + 1).ok());
    ForwardBatch b;
    b.block_tables.push_back(kv.block_table().data());
    if (te.wants_scores()) {
      b.seq_scores.push_back(te.ScoresFor(slots + 1));
      b.seq_score_layer_stride.push_back(te.score_layer_stride());
      b.seq_score_head_stride.push_back(te.score_head_stride());
    }
    b.Add(tokens[p], p, 0, static_cast<int32_t>(slots), true);
    EXPECT_TRUE(lm.model().Forward(b, lm.kv_pool(), logits.data()).ok());
    EXPECT_TRUE(lm.kv_policy().Demote(kv, slots + 1).ok());
    positions.push_back(p);
    all_positions.push_back(p);
    for (std::vector<int32_t>& u : unit_positions) u.push_back(p);
    ++slots;
    run.logits.push_back(logits);
    run.max_slots = std::max(run.max_slots, slots);
    run.max_blocks = std::max<int64_t>(run.max_blocks, kv.block_table().size());
  }
  return run;
}

std::unique_ptr<TokenEvictionPolicy> Policy(
    const std::string& name, int32_t sinks, int32_t recent,
    TokenEvictionGranularity granularity = TokenEvictionGranularity::kSequence,
    TokenScoreNormalization normalization = TokenScoreNormalization::kNone) {
  TokenEvictionOptions o;
  o.sink_tokens = sinks;
  o.recent_window = recent;
  o.granularity = granularity;
  o.score_normalization = normalization;
  auto p = CreateTokenEvictionPolicy(name, o);
  EXPECT_TRUE(p.ok()) << p.status();
  return std::move(*p);
}

double MaxAbsDiff(const std::vector<float>& a, const std::vector<double>& b) {
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}

// Hand-worked: `attention` at sequence granularity, budget 4. A prefill of 3 tokens (positions
// 0-2), then one more token (position 3): slot j has been seen by 4 - j queries. With scores
// {4, 2, 1.5, 0.9} the plain sums keep slots 0, 1, 2; the means {1, 0.667, 0.75, 0.9} keep 0, 2, 3.
TEST(SequenceTokenEvictionTest, AgeNormalizationDividesByTheQueriesThatSawEachSlot) {
  for (TokenScoreNormalization norm :
       {TokenScoreNormalization::kNone, TokenScoreNormalization::kAge}) {
    TokenEvictionOptions o;
    o.granularity = TokenEvictionGranularity::kSequence;
    o.score_normalization = norm;
    auto policy = CreateTokenEvictionPolicy("attention", o);
    ASSERT_TRUE(policy.ok());
    SequenceTokenEviction te(policy->get(), 4, 5, 4);
    EXPECT_EQ(te.score_units(), 1);
    EXPECT_EQ(te.score_layer_stride(), 0);
    ASSERT_NE(te.ScoresFor(3), nullptr);  // the prefill step
    float* scores = te.ScoresFor(4);      // the next token's step
    const float step[] = {4.0f, 2.0f, 1.5f, 0.9f};
    std::copy(step, step + 4, scores);
    absl::StatusOr<SequenceEvictionPlan> plan = te.PlanRoom(4, 1);
    ASSERT_TRUE(plan.ok()) << plan.status();
    ASSERT_TRUE(plan->evict);
    ASSERT_EQ(plan->keep.size(), 1u);
    EXPECT_EQ(plan->keep[0], norm == TokenScoreNormalization::kAge
                                 ? (std::vector<int32_t>{0, 2, 3})
                                 : (std::vector<int32_t>{0, 1, 2}));
  }
}

TEST(SequenceTokenEvictionTest, ScoreRowsPerLayerAndHead) {
  TokenEvictionOptions o;
  o.sink_tokens = 1;
  o.recent_window = 2;
  o.granularity = TokenEvictionGranularity::kLayer;
  auto by_layer = CreateTokenEvictionPolicy("h2o", o);
  ASSERT_TRUE(by_layer.ok());
  SequenceTokenEviction tl(by_layer->get(), 6, 2, 3);
  EXPECT_EQ(tl.score_units(), 2);
  EXPECT_EQ(tl.score_layer_stride(), 6);
  EXPECT_EQ(tl.score_head_stride(), 0);
  o.granularity = TokenEvictionGranularity::kHead;
  auto policy = CreateTokenEvictionPolicy("h2o", o);
  ASSERT_TRUE(policy.ok());
  SequenceTokenEviction te(policy->get(), 6, 2, 3);
  EXPECT_EQ(te.score_units(), 6);
  EXPECT_EQ(te.score_layer_stride(), 18);  // 3 heads x budget 6
  EXPECT_EQ(te.score_head_stride(), 6);
  // 6 slots, one more token coming: each unit keeps 5 = sink 0, recent 4 and 5, and the 2 best
  // of slots 1..3 by its own row. Unit u gives slot 1 + u % 3 the top score and slot
  // 1 + (u + 1) % 3 the next.
  float* rows = te.ScoresFor(6);
  for (int u = 0; u < 6; ++u) {
    rows[u * 6 + 1 + u % 3] = 2.0f;
    rows[u * 6 + 1 + (u + 1) % 3] = 1.0f;
  }
  absl::StatusOr<SequenceEvictionPlan> plan = te.PlanRoom(6, 1);
  ASSERT_TRUE(plan.ok()) << plan.status();
  ASSERT_TRUE(plan->evict);
  ASSERT_EQ(plan->keep.size(), 6u);
  for (int u = 0; u < 6; ++u) {
    std::vector<int32_t> want = {0, 1 + u % 3, 1 + (u + 1) % 3, 4, 5};
    std::sort(want.begin(), want.end());
    EXPECT_EQ(plan->keep[u], want) << "unit " << u;
  }
}

TEST(ModelTokenEvictionTest, SlidingWindowMatchesReferenceAttentionOverSinksAndWindow) {
  auto lm = OpenStories();
  ASSERT_NE(lm, nullptr);
  const int32_t budget = 24, sinks = 4;
  const std::vector<int32_t> tokens = StoryTokens(*lm, 10 * budget);
  auto policy = Policy("sliding_window", sinks, -1);
  const EngineRun got = RunEngine(*lm, *policy, budget, tokens);
  // The reference rule, written out: the first `sinks` positions and the newest ones.
  const testing::ReferenceEvictionRun want = testing::ReferenceWithEviction(
      lm->loaded(), tokens, budget,
      [&](const std::vector<int32_t>& cached, const std::vector<double>&) {
        std::vector<int32_t> keep(cached.begin(), cached.begin() + sinks);
        keep.insert(keep.end(), cached.end() - (budget - 1 - sinks), cached.end());
        return keep;
      });
  ASSERT_EQ(got.logits.size(), want.logits.size());
  EXPECT_EQ(got.kept_after, want.kept_after);
  for (size_t p = 0; p < got.logits.size(); ++p) {
    ASSERT_LT(MaxAbsDiff(got.logits[p], want.logits[p]), 2e-3) << "position " << p;
  }
  EXPECT_EQ(got.max_slots, budget);
  EXPECT_EQ(got.evicted, static_cast<int64_t>(tokens.size()) - budget);
  // Eviction changed the output: without it the logits at the end differ.
  const std::vector<std::vector<double>> full = testing::ReferenceLogits(lm->loaded(), tokens);
  EXPECT_GT(MaxAbsDiff(got.logits.back(), full.back()), 1e-2);
}

TEST(ModelTokenEvictionTest, H2oKeepsTheHeaviestHittersOfAnIndependentReference) {
  auto lm = OpenStories();
  ASSERT_NE(lm, nullptr);
  const int32_t budget = 24, recent = 8;
  const std::vector<int32_t> tokens = StoryTokens(*lm, 10 * budget);
  auto policy = Policy("h2o", 0, recent);
  const EngineRun got = RunEngine(*lm, *policy, budget, tokens);
  // Reference rule: the `recent` newest positions, plus the older ones with the largest
  // accumulated attention (ties: the later position).
  const testing::ReferenceEvictionRun want = testing::ReferenceWithEviction(
      lm->loaded(), tokens, budget,
      [&](const std::vector<int32_t>& cached, const std::vector<double>& scores) {
        const int target = budget - 1;
        const int older = static_cast<int>(cached.size()) - recent;
        std::vector<int> idx(older);
        std::iota(idx.begin(), idx.end(), 0);
        std::sort(idx.begin(), idx.end(), [&](int a, int b) {
          return scores[a] != scores[b] ? scores[a] > scores[b] : a > b;
        });
        std::vector<int32_t> keep;
        for (int i = 0; i < target - recent; ++i) keep.push_back(cached[idx[i]]);
        keep.insert(keep.end(), cached.end() - recent, cached.end());
        return keep;
      });
  ASSERT_EQ(got.kept_after.size(), want.kept_after.size());
  // The first evictions must agree exactly; later ones may differ only where two scores are
  // within float rounding of each other, which would also change the logits noticeably, so
  // require agreement on nearly all of them and on the logits throughout.
  int agree = 0;
  for (size_t e = 0; e < got.kept_after.size(); ++e)
    agree += got.kept_after[e] == want.kept_after[e];
  EXPECT_EQ(got.kept_after.front(), want.kept_after.front());
  EXPECT_GE(agree, static_cast<int>(got.kept_after.size()) * 95 / 100)
      << agree << " of " << got.kept_after.size() << " evictions agree";
  // H2O keeps some old, heavily attended positions a sliding window would have dropped.
  std::set<int32_t> last(got.kept_after.back().begin(), got.kept_after.back().end());
  EXPECT_LT(*last.begin(), got.kept_after.back().back() - (budget - 1))
      << "no heavy hitter older than the window was kept";
  if (agree == static_cast<int>(got.kept_after.size())) {
    for (size_t p = 0; p < got.logits.size(); ++p) {
      ASSERT_LT(MaxAbsDiff(got.logits[p], want.logits[p]), 2e-3) << "position " << p;
    }
  }
  EXPECT_EQ(got.max_slots, budget);
}

TEST(ModelTokenEvictionTest, H2oPerHeadWithAgeNormalisationMatchesAnIndependentReference) {
  auto lm = OpenStories();
  ASSERT_NE(lm, nullptr);
  const int32_t budget = 24, sinks = 2, recent = 8;
  const std::vector<int32_t> tokens = StoryTokens(*lm, 10 * budget);
  auto policy =
      Policy("h2o", sinks, recent, TokenEvictionGranularity::kHead, TokenScoreNormalization::kAge);
  const EngineRun got = RunEngine(*lm, *policy, budget, tokens);
  // Reference rule, per (layer, KV head): the sinks, the `recent` newest positions, and of the
  // ones between, those with the largest mean attention: the accumulated score divided by the
  // number of queries that have seen the position (positions pos .. next - 1).
  const testing::ReferenceUnitEvictionRun want = testing::ReferenceWithUnitEviction(
      lm->loaded(), tokens, budget,
      [&](int, int next, const std::vector<int32_t>& cached, const std::vector<double>& scores) {
        const int target = budget - 1;
        const int n = static_cast<int>(cached.size());
        std::vector<double> mean(n);
        for (int i = 0; i < n; ++i) mean[i] = scores[i] / (next - cached[i]);
        std::vector<int> idx;
        for (int i = sinks; i < n - recent; ++i) idx.push_back(i);
        std::sort(idx.begin(), idx.end(),
                  [&](int a, int b) { return mean[a] != mean[b] ? mean[a] > mean[b] : a > b; });
        std::vector<int32_t> keep(cached.begin(), cached.begin() + sinks);
        for (int i = 0; i < target - sinks - recent; ++i) keep.push_back(cached[idx[i]]);
        keep.insert(keep.end(), cached.end() - recent, cached.end());
        return keep;
      });
  const int units = lm->config().num_layers * lm->config().num_kv_heads;
  ASSERT_EQ(got.unit_kept_after.size(), want.kept_after.size());
  ASSERT_EQ(static_cast<int>(got.unit_kept_after.front().size()), units);
  EXPECT_EQ(got.unit_kept_after.front(), want.kept_after.front());
  // Later choices may differ where two scores are within float rounding; require nearly all
  // (eviction, unit) choices to agree, and the logits throughout when all do.
  int agree = 0, total = 0, differ_between_units = 0;
  for (size_t e = 0; e < got.unit_kept_after.size(); ++e) {
    for (int u = 0; u < units; ++u) {
      agree += got.unit_kept_after[e][u] == want.kept_after[e][u];
      differ_between_units += got.unit_kept_after[e][u] != got.unit_kept_after[e][0];
      ++total;
    }
  }
  EXPECT_GE(agree, total * 95 / 100) << agree << " of " << total << " choices agree";
  EXPECT_GT(differ_between_units, 0) << "every head kept the same tokens";
  if (agree == total) {
    for (size_t p = 0; p < got.logits.size(); ++p) {
      ASSERT_LT(MaxAbsDiff(got.logits[p], want.logits[p]), 2e-3) << "position " << p;
    }
  }
  EXPECT_EQ(got.max_slots, budget);
}

TEST(ModelTokenEvictionTest, MemoryStaysWithinBudgetInEveryFormatAndPolicy) {
  for (KvFormat format : {KvFormat::kFp32, KvFormat::kFp16, KvFormat::kInt8, KvFormat::kFp8,
                          KvFormat::kInt4, KvFormat::kNvfp4}) {
    for (const char* name : {"sliding_window", "h2o", "attention"}) {
      SCOPED_TRACE(std::string(kernels::KvFormatName(format)) + " " + name);
      auto lm = OpenStories(format, 8);
      ASSERT_NE(lm, nullptr);
      const int32_t budget = 32;
      const std::vector<int32_t> tokens = StoryTokens(*lm, 10 * budget);
      // Scored policies choose per layer and KV head (the shipped default): every layer's and
      // head's rows move by their own plan, in every format.
      auto policy =
          Policy(name, 4, -1, TokenEvictionGranularity::kHead, TokenScoreNormalization::kAge);
      const int64_t used_before = lm->kv_pool().used_bytes();
      const EngineRun got = RunEngine(*lm, *policy, budget, tokens);
      EXPECT_EQ(got.max_slots, budget);
      EXPECT_LE(got.max_blocks, budget / 8);
      EXPECT_EQ(got.evicted, 10 * budget - budget);
      EXPECT_EQ(lm->kv_pool().used_bytes(), used_before);  // all released at the end
      // Outputs stay finite and the model keeps predicting story text: the mean NLL of the
      // fed tokens stays far below uniform (ln 512 = 6.2).
      double nll = 0;
      for (size_t p = 0; p + 1 < tokens.size(); ++p) {
        const std::vector<float>& row = got.logits[p];
        const float mx = *std::max_element(row.begin(), row.end());
        double sum = 0;
        for (float x : row) {
          ASSERT_TRUE(std::isfinite(x));
          sum += std::exp(static_cast<double>(x - mx));
        }
        nll += -(row[tokens[p + 1]] - mx - std::log(sum));
      }
      EXPECT_LT(nll / (tokens.size() - 1), 4.0);
    }
  }
}

}  // namespace
}  // namespace kvserve::engine
