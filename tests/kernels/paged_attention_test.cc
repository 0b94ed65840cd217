#include "kernels/cpu/paged_attention.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/thread_pool.h"
#include "kernels/dtype.h"
#include "kernels/kv_format.h"
#include "tests/kernels/kernel_test_util.h"

namespace kvserve::kernels::cpu {
namespace {

constexpr double kUnit = 1.0 / (1 << 24);
constexpr uint8_t kPoison = 0xFF;  // all-ones bytes read as NaN in every float format
// fp32, fp16, bf16: the formats stored element by element (the quantized formats are covered by
// kv_quant_attention_test.cc).
constexpr int kFloatFormats = 3;

int ElementBytes(KvFormat f) { return f == KvFormat::kFp32 ? 4 : 2; }

// Relative rounding error of storing a value of magnitude <= 1 in a format (half an ulp), and
// the absolute floor below which FP16 goes subnormal.
double FormatUnit(KvFormat f) {
  switch (f) {
    case KvFormat::kFp32:
      return kUnit;
    case KvFormat::kFp16:
      return 1.0 / (1 << 11);
    case KvFormat::kBf16:
      return 1.0 / (1 << 8);
    default:
      break;
  }
  return 1.0;
}

// Element value of the stored bits at `p` (no kernel code involved).
float Decode(KvFormat f, const uint8_t* p) {
  switch (f) {
    case KvFormat::kFp32: {
      float v;
      std::memcpy(&v, p, 4);
      return v;
    }
    case KvFormat::kFp16:
    case KvFormat::kBf16: {
      uint16_t h;
      std::memcpy(&h, p, 2);
      return f == KvFormat::kFp16 ? Fp16ToFloat(h) : Bf16ToFloat(h);
    }
    default:
      break;
  }
  return 0.0f;
}

void Encode(KvFormat f, float v, uint8_t* p) {
  if (f == KvFormat::kFp32) {
    std::memcpy(p, &v, 4);
  } else {
    const uint16_t h = f == KvFormat::kFp16 ? FloatToFp16(v) : FloatToBf16(v);
    std::memcpy(p, &h, 2);
  }
}

// A pool of blocks for one layer with several layouts: layout i < kFloatFormats stores format i;
// the last layout is FP16 with the regions placed further into the block (as for a later layer).
class TestCache {
 public:
  TestCache(int num_blocks, KvRegionShape shape) : shape_(shape) {
    int64_t bytes = 0;
    for (int i = 0; i <= kFloatFormats; ++i) {
      const KvFormat f = i < kFloatFormats ? static_cast<KvFormat>(i) : KvFormat::kFp16;
      const int64_t start = i < kFloatFormats ? kKvRegionAlign * i : 4096;
      KvLayerRegion r;
      r.format = f;
      r.k_offset = static_cast<uint32_t>(start);
      const int64_t region_bytes = KvRegionBytes(f, KvRole::kKey, shape);
      r.v_offset = static_cast<uint32_t>(start + region_bytes + kKvRegionAlign);
      regions_.push_back(r);
      bytes = std::max<int64_t>(bytes, r.v_offset + region_bytes + kKvRegionAlign);
    }
    bytes_ = bytes;
    storage_.assign(num_blocks, std::vector<uint8_t>(bytes, kPoison));
    for (auto& b : storage_) ptrs_.push_back(b.data());
    layout_.assign(num_blocks, 0);
  }

  int num_layouts() const { return static_cast<int>(regions_.size()); }
  void set_layout(int block, int layout) { layout_[block] = static_cast<uint16_t>(layout); }
  const KvRegionShape& shape() const { return shape_; }
  int64_t block_bytes() const { return bytes_; }
  const std::vector<uint8_t>& bytes(int block) const { return storage_[block]; }

  PagedKvLayerView view() const {
    PagedKvLayerView v;
    v.block_data = ptrs_.data();
    v.block_layout = layout_.data();
    v.regions = regions_.data();
    v.shape = shape_;
    return v;
  }

  // Byte offset of element d of (head, slot) in the K (or V) region of `block`.
  int64_t ElementOffset(int block, bool is_v, int head, int slot, int d) const {
    const KvLayerRegion& r = regions_[layout_[block]];
    const int64_t elem =
        (static_cast<int64_t>(head) * shape_.block_size + slot) * shape_.head_dim + d;
    return (is_v ? r.v_offset : r.k_offset) + elem * ElementBytes(r.format);
  }
  KvFormat format(int block) const { return regions_[layout_[block]].format; }
  float Read(int block, bool is_v, int head, int slot, int d) const {
    return Decode(format(block),
                  storage_[block].data() + ElementOffset(block, is_v, head, slot, d));
  }

 private:
  KvRegionShape shape_;
  std::vector<KvLayerRegion> regions_;
  std::vector<std::vector<uint8_t>> storage_;
  std::vector<uint8_t*> ptrs_;
  std::vector<uint16_t> layout_;
  int64_t bytes_ = 0;
};

struct Config {
  int block_size = 16;
  int num_kv_heads = 2;
  int group = 2;
  int head_dim = 8;
  int layout = -1;  // every block in this layout; -1: a random layout per block
  int num_seqs = 3;
  int max_len = 100;
  bool share_prefix = true;
  float q_scale = 1.0f;

  std::string Name() const {
    return "bs=" + std::to_string(block_size) + " kv=" + std::to_string(num_kv_heads) +
           " G=" + std::to_string(group) + " hd=" + std::to_string(head_dim) +
           " layout=" + std::to_string(layout) + " seqs=" + std::to_string(num_seqs);
  }
};

// Builds a cache and a batch for `cfg`, runs PagedAttention and checks every output against a
// double-precision reference over (a) the stored, dequantized K/V and (b) the original floats.
void RunAndCheck(const Config& cfg, std::mt19937& rng, ThreadPool* pool) {
  SCOPED_TRACE(cfg.Name());
  const int bs = cfg.block_size;
  const int hkv = cfg.num_kv_heads;
  const int hd = cfg.head_dim;
  const int heads = hkv * cfg.group;
  std::uniform_int_distribution<int> len_dist(1, cfg.max_len);

  // Sequence lengths; sequence 1 shares sequence 0's first full blocks when asked.
  std::vector<int> lens(cfg.num_seqs);
  for (int& l : lens) l = len_dist(rng);
  int shared_blocks = 0;
  if (cfg.share_prefix && cfg.num_seqs >= 2) {
    shared_blocks = std::min(lens[0], lens[1]) / bs;
  }
  int total_blocks = 0;
  for (int l : lens) total_blocks += (l + bs - 1) / bs;
  const int capacity = total_blocks + 7;
  std::vector<int32_t> ids(capacity);
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), rng);

  TestCache cache(capacity, KvRegionShape{bs, hkv, hd});
  std::uniform_int_distribution<int> layout_dist(0, cache.num_layouts() - 1);
  for (int b = 0; b < capacity; ++b)
    cache.set_layout(b, cfg.layout >= 0 ? cfg.layout : layout_dist(rng));

  std::vector<std::vector<int32_t>> tables(cfg.num_seqs);
  size_t next_id = 0;
  for (int s = 0; s < cfg.num_seqs; ++s) {
    const int nblocks = (lens[s] + bs - 1) / bs;
    for (int i = 0; i < nblocks; ++i) {
      if (s == 1 && i < shared_blocks) {
        tables[s].push_back(tables[0][i]);
      } else {
        tables[s].push_back(ids[next_id++]);
      }
    }
  }

  // Original K/V per (block, slot): written once per physical slot.
  const int64_t row = static_cast<int64_t>(hkv) * hd;
  std::vector<std::vector<float>> k_raw(capacity), v_raw(capacity);
  std::vector<int32_t> w_block, w_off;
  std::vector<float> w_k, w_v;
  for (int s = 0; s < cfg.num_seqs; ++s) {
    for (int slot = 0; slot < lens[s]; ++slot) {
      const int32_t b = tables[s][slot / bs];
      if (k_raw[b].empty()) {
        k_raw[b].assign(static_cast<size_t>(bs * row), std::nanf(""));
        v_raw[b].assign(static_cast<size_t>(bs * row), std::nanf(""));
      }
      const int off = slot % bs;
      if (!std::isnan(k_raw[b][off * row])) continue;  // a shared slot, already written
      const std::vector<float> k = testing::RandomFloats(rng, row);
      const std::vector<float> v = testing::RandomFloats(rng, row);
      std::copy(k.begin(), k.end(), k_raw[b].begin() + off * row);
      std::copy(v.begin(), v.end(), v_raw[b].begin() + off * row);
      w_block.push_back(b);
      w_off.push_back(off);
      w_k.insert(w_k.end(), k.begin(), k.end());
      w_v.insert(w_v.end(), v.begin(), v.end());
    }
  }
  WriteKv(w_k.data(), w_v.data(), static_cast<int64_t>(w_block.size()), w_block.data(),
          w_off.data(), cache.view());

  // Query tokens: each sequence's decode token plus a few prefill positions, shuffled together.
  std::vector<int32_t> token_seq, token_kv_len;
  for (int s = 0; s < cfg.num_seqs; ++s) {
    token_seq.push_back(s);
    token_kv_len.push_back(lens[s]);
    std::uniform_int_distribution<int> kv_dist(1, lens[s]);
    for (int i = 0; i < 3; ++i) {
      token_seq.push_back(s);
      token_kv_len.push_back(kv_dist(rng));
    }
  }
  std::vector<int> order(token_seq.size());
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), rng);
  std::vector<int32_t> seq_of(order.size()), kv_of(order.size());
  for (size_t i = 0; i < order.size(); ++i) {
    seq_of[i] = token_seq[order[i]];
    kv_of[i] = token_kv_len[order[i]];
  }
  const int64_t num_tokens = static_cast<int64_t>(order.size());
  const std::vector<float> q =
      testing::RandomFloats(rng, num_tokens * heads * hd, -cfg.q_scale, cfg.q_scale);
  std::vector<float> out(static_cast<size_t>(num_tokens * heads * hd), std::nanf(""));
  std::vector<const int32_t*> table_ptrs;
  for (const auto& t : tables) table_ptrs.push_back(t.data());

  AttentionBatch batch;
  batch.num_tokens = num_tokens;
  batch.num_heads = heads;
  batch.q = q.data();
  batch.out = out.data();
  batch.token_seq = seq_of.data();
  batch.token_kv_len = kv_of.data();
  batch.seq_block_tables = table_ptrs.data();
  batch.scale = 1.0f / std::sqrt(static_cast<float>(hd));
  PagedAttention(batch, cache.view(), pool);

  // References.
  std::vector<double> s_deq, s_raw;
  for (int64_t t = 0; t < num_tokens; ++t) {
    const int kv_len = kv_of[t];
    const std::vector<int32_t>& table = tables[seq_of[t]];
    for (int h = 0; h < heads; ++h) {
      const int g = h / cfg.group;
      const float* qh = q.data() + (t * heads + h) * hd;
      s_deq.assign(kv_len, 0.0);
      s_raw.assign(kv_len, 0.0);
      double mag = 0.0;  // max_j scale * sum_d |q_d k_jd|
      double vmax = 0.0;
      double unit_f = 0.0;  // coarsest format among the blocks read
      for (int j = 0; j < kv_len; ++j) {
        const int b = table[j / bs];
        const int off = j % bs;
        unit_f = std::max(unit_f, FormatUnit(cache.format(b)));
        double m = 0.0;
        for (int d = 0; d < hd; ++d) {
          const double kd = cache.Read(b, false, g, off, d);
          s_deq[j] += qh[d] * kd;
          s_raw[j] += qh[d] * static_cast<double>(k_raw[b][off * row + g * hd + d]);
          m += std::fabs(qh[d] * kd);
          vmax = std::max(vmax, std::fabs(static_cast<double>(cache.Read(b, true, g, off, d))));
        }
        s_deq[j] *= batch.scale;
        s_raw[j] *= batch.scale;
        mag = std::max(mag, m * batch.scale);
      }
      const double mx_deq = *std::max_element(s_deq.begin(), s_deq.end());
      const double mx_raw = *std::max_element(s_raw.begin(), s_raw.end());
      double l_deq = 0.0, l_raw = 0.0;
      for (int j = 0; j < kv_len; ++j) {
        s_deq[j] = std::exp(s_deq[j] - mx_deq);
        s_raw[j] = std::exp(s_raw[j] - mx_raw);
        l_deq += s_deq[j];
        l_raw += s_raw[j];
      }
      // Float evaluation: scores within (hd + 4) u mag; a score error e moves normalised weights
      // by at most a factor exp(2e), i.e. the output by 2 vmax (exp(2e) - 1); exp() itself, the
      // running rescales and the kv_len-term sums add a few u per term.
      const double e_s = (hd + 4) * kUnit * mag;
      const double tol = vmax * (2.0 * std::expm1(2.0 * e_s) + (2.0 * kv_len + 64) * kUnit) + 1e-7;
      // Storing K and V in the format: K rounding moves scores by unit_f * mag, V rounding the
      // output by unit_f * vmax (plus FP16's subnormal floor).
      const double e_f = unit_f * mag;
      const double tol_raw = tol + vmax * (unit_f + 2.0 * std::expm1(2.0 * e_f)) * 1.01 + 1e-7;
      for (int d = 0; d < hd; ++d) {
        double ref_deq = 0.0, ref_raw = 0.0;
        for (int j = 0; j < kv_len; ++j) {
          const int b = table[j / bs];
          const int off = j % bs;
          ref_deq += s_deq[j] * cache.Read(b, true, g, off, d);
          ref_raw += s_raw[j] * static_cast<double>(v_raw[b][off * row + g * hd + d]);
        }
        ref_deq /= l_deq;
        ref_raw /= l_raw;
        const float got = out[(t * heads + h) * hd + d];
        ASSERT_NEAR(got, ref_deq, tol)
            << "t=" << t << " h=" << h << " d=" << d << " kv_len=" << kv_len;
        ASSERT_NEAR(got, ref_raw, tol_raw) << "t=" << t << " h=" << h << " d=" << d;
      }
    }
  }
}

TEST(PagedAttentionTest, HeadDimAndGroupSweepPerFormat) {
  std::mt19937 rng(100);
  for (int layout = 0; layout < kFloatFormats + 1; ++layout) {
    for (int hd : {1, 3, 8, 12, 17, 64, 128, 256}) {
      for (int group : {1, 2, 4, 8}) {
        Config cfg;
        cfg.layout = layout;
        cfg.head_dim = hd;
        cfg.group = group;
        cfg.num_kv_heads = hd >= 128 ? 1 : 2;
        cfg.max_len = hd >= 128 ? 60 : 100;
        RunAndCheck(cfg, rng, nullptr);
      }
    }
  }
}

TEST(PagedAttentionTest, BlockSizesAndOddGroups) {
  std::mt19937 rng(101);
  for (int bs : {1, 3, 16, 32, 100}) {
    for (int group : {3, 5, 16}) {
      Config cfg;
      cfg.block_size = bs;
      cfg.group = group;
      cfg.num_kv_heads = 2;
      cfg.head_dim = bs % 2 == 0 ? 8 : 20;
      cfg.max_len = 220;
      RunAndCheck(cfg, rng, nullptr);
    }
  }
}

TEST(PagedAttentionTest, MixedFormatsRandomShapes) {
  std::mt19937 rng(102);
  std::uniform_int_distribution<int> bs_dist(1, 40), kv_dist(1, 4), g_dist(1, 8), hd_dist(1, 140);
  for (int iter = 0; iter < 60; ++iter) {
    Config cfg;
    cfg.block_size = bs_dist(rng);
    cfg.num_kv_heads = kv_dist(rng);
    cfg.group = g_dist(rng);
    cfg.head_dim = hd_dist(rng);
    cfg.num_seqs = 1 + iter % 5;
    cfg.max_len = 150;
    cfg.q_scale = iter % 3 == 0 ? 6.0f : 1.0f;  // peaked softmax: the max moves between blocks
    RunAndCheck(cfg, rng, nullptr);
  }
}

TEST(PagedAttentionTest, ParallelMatchesReference) {
  std::mt19937 rng(103);
  for (int threads : {2, 3}) {
    ThreadPool pool(threads);
    for (int hd : {8, 64, 128}) {
      for (int layout : {-1, 0, 1, 2}) {
        Config cfg;
        cfg.head_dim = hd;
        cfg.layout = layout;
        cfg.num_kv_heads = 4;
        cfg.group = 2;
        cfg.num_seqs = 5;
        cfg.max_len = 300;
        RunAndCheck(cfg, rng, &pool);
      }
    }
  }
}

TEST(PagedAttentionTest, LargeScoresStayFinite) {
  std::mt19937 rng(104);
  Config cfg;
  cfg.q_scale = 200.0f;  // scores in the hundreds: exp() must never see them unshifted
  cfg.head_dim = 16;
  cfg.max_len = 200;
  RunAndCheck(cfg, rng, nullptr);
}

// WriteKv must change exactly the target slots: every other byte keeps its poison.
TEST(WriteKvTest, WritesExactlyTheTargetSlots) {
  std::mt19937 rng(105);
  for (int layout = 0; layout < kFloatFormats + 1; ++layout) {
    for (int hd : {1, 7, 8, 12, 64, 129}) {
      for (int bs : {1, 5, 16}) {
        const int hkv = 3;
        const int capacity = 6;
        TestCache cache(capacity, KvRegionShape{bs, hkv, hd});
        for (int b = 0; b < capacity; ++b) cache.set_layout(b, (layout + b) % cache.num_layouts());
        // Distinct random (block, slot) targets, half of all slots.
        std::vector<std::pair<int, int>> slots;
        for (int b = 0; b < capacity; ++b) {
          for (int s = 0; s < bs; ++s) slots.emplace_back(b, s);
        }
        std::shuffle(slots.begin(), slots.end(), rng);
        slots.resize(std::max<size_t>(1, slots.size() / 2));
        const int64_t n = static_cast<int64_t>(slots.size());
        std::vector<int32_t> blk(n), off(n);
        for (int64_t i = 0; i < n; ++i) {
          blk[i] = slots[i].first;
          off[i] = slots[i].second;
        }
        const std::vector<float> k = testing::RandomFloats(rng, n * hkv * hd, -3.0f, 3.0f);
        const std::vector<float> v = testing::RandomFloats(rng, n * hkv * hd, -3.0f, 3.0f);
        WriteKv(k.data(), v.data(), n, blk.data(), off.data(), cache.view());

        std::vector<std::vector<uint8_t>> expected(
            capacity, std::vector<uint8_t>(cache.block_bytes(), kPoison));
        for (int64_t i = 0; i < n; ++i) {
          for (int g = 0; g < hkv; ++g) {
            for (int d = 0; d < hd; ++d) {
              const int64_t src = (i * hkv + g) * hd + d;
              const KvFormat f = cache.format(blk[i]);
              Encode(f, k[src],
                     expected[blk[i]].data() + cache.ElementOffset(blk[i], false, g, off[i], d));
              Encode(f, v[src],
                     expected[blk[i]].data() + cache.ElementOffset(blk[i], true, g, off[i], d));
            }
          }
        }
        for (int b = 0; b < capacity; ++b) {
          ASSERT_EQ(cache.bytes(b), expected[b])
              << "layout=" << layout << " hd=" << hd << " bs=" << bs << " block=" << b;
        }
      }
    }
  }
}

}  // namespace
}  // namespace kvserve::kernels::cpu
