// Paged attention over quantized blocks equals attention, in float64, over the values the blocks
// store (read back by the independent reader of kv_quant_reference.h): every format, mixed
// formats within a sequence, random block tables, GQA, head_dim 8 / 12 / 64 / 128.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/kv_quantize.h"
#include "kernels/cpu/paged_attention.h"
#include "kernels/cpu/thread_pool.h"
#include "kernels/kv_format.h"
#include "tests/kernels/kv_quant_reference.h"

namespace kvserve::kernels::cpu {
namespace {

constexpr double kUnit = 1.0 / (1 << 24);

// One layer's blocks; layout i stores formats[i] (K at a 64-byte offset, V after it).
class QuantCache {
 public:
  QuantCache(int num_blocks, KvRegionShape shape, std::vector<KvFormat> formats)
      : shape_(shape), formats_(std::move(formats)) {
    int64_t bytes = 0;
    for (KvFormat f : formats_) {
      KvLayerRegion r;
      r.format = f;
      r.k_offset = kKvRegionAlign;
      r.v_offset = static_cast<uint32_t>(r.k_offset + KvRegionBytes(f, KvRole::kKey, shape));
      regions_.push_back(r);
      bytes = std::max<int64_t>(bytes, r.v_offset + KvRegionBytes(f, KvRole::kValue, shape));
    }
    storage_.assign(num_blocks, std::vector<uint8_t>(bytes, 0xFF));
    for (auto& b : storage_) ptrs_.push_back(b.data());
    layout_.assign(num_blocks, 0);
  }

  void set_layout(int block, int layout) { layout_[block] = static_cast<uint16_t>(layout); }
  int num_layouts() const { return static_cast<int>(formats_.size()); }
  const KvLayerRegion& region(int block) const { return regions_[layout_[block]]; }
  uint8_t* data(int block) { return storage_[block].data(); }

  testing::RefRegion Ref(int block, KvRole role) const {
    const KvLayerRegion& r = region(block);
    return testing::RefRegion(
        r.format, role, storage_[block].data() + (role == KvRole::kKey ? r.k_offset : r.v_offset),
        shape_);
  }

  PagedKvLayerView view() const {
    PagedKvLayerView v;
    v.block_data = ptrs_.data();
    v.block_layout = layout_.data();
    v.regions = regions_.data();
    v.shape = shape_;
    return v;
  }

 private:
  KvRegionShape shape_;
  std::vector<KvFormat> formats_;
  std::vector<KvLayerRegion> regions_;
  std::vector<std::vector<uint8_t>> storage_;
  std::vector<uint8_t*> ptrs_;
  std::vector<uint16_t> layout_;
};

struct Config {
  int block_size = 16;
  int num_kv_heads = 2;
  int group = 2;
  int head_dim = 8;
  std::vector<KvFormat> formats;  // a random one per block
  int num_seqs = 3;
  int max_len = 100;
  float q_scale = 1.0f;

  std::string Name() const {
    std::string f;
    for (KvFormat x : formats) f += std::string(KvFormatName(x)) + ",";
    return "bs=" + std::to_string(block_size) + " kv=" + std::to_string(num_kv_heads) +
           " G=" + std::to_string(group) + " hd=" + std::to_string(head_dim) + " formats=" + f;
  }
};

void RunAndCheck(const Config& cfg, std::mt19937& rng, ThreadPool* pool) {
  SCOPED_TRACE(cfg.Name());
  const int bs = cfg.block_size, hkv = cfg.num_kv_heads, hd = cfg.head_dim;
  const int heads = hkv * cfg.group;
  const KvRegionShape shape{bs, hkv, hd};
  std::uniform_int_distribution<int> len_dist(1, cfg.max_len);
  std::vector<int> lens(cfg.num_seqs);
  for (int& l : lens) l = len_dist(rng);
  const int shared = cfg.num_seqs >= 2 ? std::min(lens[0], lens[1]) / bs : 0;
  int total = 0;
  for (int l : lens) total += (l + bs - 1) / bs;
  const int capacity = total + 5;
  std::vector<int32_t> ids(capacity);
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), rng);
  QuantCache cache(capacity, shape, cfg.formats);
  std::uniform_int_distribution<int> layout_dist(0, cache.num_layouts() - 1);

  // Every block gets key-like K (per-channel offsets) and random V, encoded whole.
  std::normal_distribution<float> n01(0.0f, 1.0f);
  const size_t region_floats = static_cast<size_t>(hkv) * bs * hd;
  for (int b = 0; b < capacity; ++b) {
    cache.set_layout(b, layout_dist(rng));
    std::vector<float> k(region_floats), v(region_floats);
    std::vector<float> offset(static_cast<size_t>(hkv) * hd);
    for (float& o : offset) o = 2.0f * n01(rng);
    for (size_t i = 0; i < region_floats; ++i) {
      k[i] = n01(rng) + offset[(i / (static_cast<size_t>(bs) * hd)) * hd + i % hd];
      v[i] = n01(rng);
    }
    const KvLayerRegion& r = cache.region(b);
    ASSERT_TRUE(
        QuantizeKvRegion(r.format, KvRole::kKey, k.data(), shape, bs, cache.data(b) + r.k_offset));
    ASSERT_TRUE(QuantizeKvRegion(r.format, KvRole::kValue, v.data(), shape, bs,
                                 cache.data(b) + r.v_offset));
  }
  std::vector<std::vector<int32_t>> tables(cfg.num_seqs);
  size_t next = 0;
  for (int s = 0; s < cfg.num_seqs; ++s) {
    for (int i = 0; i < (lens[s] + bs - 1) / bs; ++i) {
      tables[s].push_back(s == 1 && i < shared ? tables[0][i] : ids[next++]);
    }
  }

  // A decode token per sequence plus a few prefill positions, shuffled.
  std::vector<int32_t> seq_of, kv_of;
  for (int s = 0; s < cfg.num_seqs; ++s) {
    seq_of.push_back(s);
    kv_of.push_back(lens[s]);
    std::uniform_int_distribution<int> kv_dist(1, lens[s]);
    for (int i = 0; i < 2; ++i) {
      seq_of.push_back(s);
      kv_of.push_back(kv_dist(rng));
    }
  }
  const int64_t num_tokens = static_cast<int64_t>(seq_of.size());
  std::uniform_real_distribution<float> qd(-cfg.q_scale, cfg.q_scale);
  std::vector<float> q(static_cast<size_t>(num_tokens) * heads * hd);
  for (float& x : q) x = qd(rng);
  std::vector<float> out(q.size(), std::nanf(""));
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

  // The tokens of a sequence are adjacent in the batch, so they run together and share each
  // block's decoding: every token's output must be bitwise what it gets alone.
  for (int64_t t = 0; t < num_tokens; ++t) {
    std::vector<float> alone(static_cast<size_t>(heads) * hd, std::nanf(""));
    AttentionBatch one = batch;
    one.num_tokens = 1;
    one.q = q.data() + t * heads * hd;
    one.out = alone.data();
    one.token_seq = seq_of.data() + t;
    one.token_kv_len = kv_of.data() + t;
    PagedAttention(one, cache.view(), nullptr);
    for (int e = 0; e < heads * hd; ++e) {
      ASSERT_EQ(alone[e], out[t * heads * hd + e]) << "token " << t << " element " << e;
    }
  }

  for (int64_t t = 0; t < num_tokens; ++t) {
    const int kv_len = kv_of[t];
    const std::vector<int32_t>& table = tables[seq_of[t]];
    for (int h = 0; h < heads; ++h) {
      const int g = h / cfg.group;
      const float* qh = q.data() + (t * heads + h) * hd;
      std::vector<double> s(kv_len, 0.0);
      double mag = 0.0, vmag = 0.0;
      for (int j = 0; j < kv_len; ++j) {
        const int b = table[j / bs], slot = j % bs;
        const testing::RefRegion kr = cache.Ref(b, KvRole::kKey);
        const testing::RefRegion vr = cache.Ref(b, KvRole::kValue);
        double m = 0.0;
        for (int d = 0; d < hd; ++d) {
          const double kd = kr.Value(g, slot, d);
          s[j] += qh[d] * kd;
          // What the kernel's float decode may round: the value and its parts.
          m += std::fabs(qh[d]) *
               (std::fabs(kd) + 40 * std::fabs(kr.Step(g, slot, d)) + std::fabs(kr.Center(g, d)));
          vmag =
              std::max(vmag, std::fabs(vr.Value(g, slot, d)) + 40 * std::fabs(vr.Step(g, slot, d)));
        }
        s[j] *= batch.scale;
        mag = std::max(mag, m * batch.scale);
      }
      const double mx = *std::max_element(s.begin(), s.end());
      double l = 0.0;
      for (double& x : s) {
        x = std::exp(x - mx);
        l += x;
      }
      // Scores within (hd + 8) u mag; a score error e moves the output by at most
      // 2 vmag (exp(2e) - 1); exp(), rescales and the kv_len-term sums add a few u per term.
      const double e_s = (hd + 8) * kUnit * mag;
      const double tol = vmag * (2.0 * std::expm1(2.0 * e_s) + (2.0 * kv_len + 64) * kUnit) + 1e-7;
      for (int d = 0; d < hd; ++d) {
        double ref = 0.0;
        for (int j = 0; j < kv_len; ++j) {
          ref += s[j] * cache.Ref(table[j / bs], KvRole::kValue).Value(g, j % bs, d);
        }
        ref /= l;
        ASSERT_NEAR(out[(t * heads + h) * hd + d], ref, tol)
            << "t=" << t << " h=" << h << " d=" << d << " kv_len=" << kv_len;
      }
    }
  }
}

const std::vector<KvFormat> kEachQuantized[] = {
    {KvFormat::kFp8}, {KvFormat::kInt8}, {KvFormat::kInt4}, {KvFormat::kNvfp4}, {KvFormat::kInt2}};
const std::vector<KvFormat> kMixed = {KvFormat::kFp16, KvFormat::kFp8,   KvFormat::kInt8,
                                      KvFormat::kInt4, KvFormat::kNvfp4, KvFormat::kInt2,
                                      KvFormat::kFp32};

TEST(QuantizedAttentionTest, EveryFormatHeadDimAndGroup) {
  std::mt19937 rng(300);
  for (const auto& formats : kEachQuantized) {
    for (int hd : {8, 12, 64, 128}) {
      for (int group : {1, 2, 4}) {
        Config cfg;
        cfg.formats = formats;
        cfg.head_dim = hd;
        cfg.group = group;
        cfg.num_kv_heads = hd >= 128 ? 1 : 2;
        cfg.max_len = hd >= 64 ? 70 : 120;
        RunAndCheck(cfg, rng, nullptr);
        if (::testing::Test::HasFatalFailure()) return;
      }
    }
  }
}

TEST(QuantizedAttentionTest, MixedFormatsRandomShapes) {
  std::mt19937 rng(301);
  std::uniform_int_distribution<int> bs_dist(1, 40), kv_dist(1, 4), g_dist(1, 8), hd_idx(0, 6);
  const int hds[] = {5, 8, 12, 16, 33, 64, 128};  // 5: the 8-lane runner
  for (int iter = 0; iter < 30; ++iter) {
    Config cfg;
    cfg.formats = kMixed;
    cfg.block_size = iter % 3 == 0 ? 16 : bs_dist(rng);
    cfg.num_kv_heads = kv_dist(rng);
    cfg.group = g_dist(rng);
    cfg.head_dim = hds[hd_idx(rng)];
    cfg.num_seqs = 1 + iter % 4;
    cfg.max_len = 150;
    cfg.q_scale = iter % 3 == 0 ? 4.0f : 1.0f;  // peaked softmax
    RunAndCheck(cfg, rng, nullptr);
    if (::testing::Test::HasFatalFailure()) return;
  }
}

TEST(QuantizedAttentionTest, ParallelMatchesReference) {
  std::mt19937 rng(302);
  ThreadPool pool(2);
  for (int hd : {8, 128}) {
    Config cfg;
    cfg.formats = kMixed;
    cfg.head_dim = hd;
    cfg.num_kv_heads = 4;
    cfg.group = 4;
    cfg.num_seqs = 4;
    cfg.max_len = 200;
    RunAndCheck(cfg, rng, &pool);
  }
}

// WriteKv encodes a block in a whole-block format from its block_size tokens (one run of the
// batch, tokens in [num_tokens, num_kv_heads, head_dim] order) to exactly the bytes that
// QuantizeKvRegion gives for the same rows gathered per head; a token-writable block written in
// the same call is unaffected. A non-finite value is refused (false).
TEST(WriteKvWholeBlockTest, MatchesQuantizeKvRegion) {
  std::mt19937 rng(7);
  for (KvFormat f :
       {KvFormat::kFp8, KvFormat::kInt8, KvFormat::kInt4, KvFormat::kNvfp4, KvFormat::kInt2}) {
    for (int hd : {8, 64}) {
      const KvRegionShape shape{16, 3, hd};
      if (!KvFormatSupports(f, shape)) continue;
      const int bs = shape.block_size, hkv = shape.num_kv_heads;
      QuantCache cache(2, shape, {f, KvFormat::kFp32});
      cache.set_layout(0, 0);
      cache.set_layout(1, 1);
      // Block 0 whole (tokens 0..15), then 3 tokens into block 1.
      const int n = bs + 3;
      std::vector<int32_t> blk(n), off(n);
      for (int t = 0; t < n; ++t) {
        blk[t] = t < bs ? 0 : 1;
        off[t] = t < bs ? t : t - bs;
      }
      std::uniform_real_distribution<float> u(-3.0f, 3.0f);
      std::vector<float> k(static_cast<size_t>(n) * hkv * hd), v(k.size());
      for (float& x : k) x = u(rng);
      for (float& x : v) x = u(rng);
      ASSERT_TRUE(WriteKv(k.data(), v.data(), n, blk.data(), off.data(), cache.view()));

      std::vector<float> gk(static_cast<size_t>(hkv) * bs * hd), gv(gk.size());
      for (int g = 0; g < hkv; ++g) {
        for (int t = 0; t < bs; ++t) {
          for (int d = 0; d < hd; ++d) {
            gk[(static_cast<size_t>(g) * bs + t) * hd + d] =
                k[(static_cast<size_t>(t) * hkv + g) * hd + d];
            gv[(static_cast<size_t>(g) * bs + t) * hd + d] =
                v[(static_cast<size_t>(t) * hkv + g) * hd + d];
          }
        }
      }
      std::vector<uint8_t> ek(KvRegionBytes(f, KvRole::kKey, shape)),
          ev(KvRegionBytes(f, KvRole::kValue, shape));
      ASSERT_TRUE(QuantizeKvRegion(f, KvRole::kKey, gk.data(), shape, bs, ek.data()));
      ASSERT_TRUE(QuantizeKvRegion(f, KvRole::kValue, gv.data(), shape, bs, ev.data()));
      const KvLayerRegion& r = cache.region(0);
      const int64_t kv_bytes = KvRegionLayoutOf(f, KvRole::kKey, shape).token_param_offset +
                               static_cast<int64_t>(hkv) * bs *
                                   KvRegionLayoutOf(f, KvRole::kKey, shape).groups *
                                   KvSchemeOf(f, KvRole::kKey).token_param_bytes;
      const int64_t vv_bytes = KvRegionLayoutOf(f, KvRole::kValue, shape).token_param_offset +
                               static_cast<int64_t>(hkv) * bs *
                                   KvRegionLayoutOf(f, KvRole::kValue, shape).groups *
                                   KvSchemeOf(f, KvRole::kValue).token_param_bytes;
      EXPECT_EQ(0, std::memcmp(cache.data(0) + r.k_offset, ek.data(), kv_bytes))
          << KvFormatName(f) << " hd " << hd;
      EXPECT_EQ(0, std::memcmp(cache.data(0) + r.v_offset, ev.data(), vv_bytes))
          << KvFormatName(f) << " hd " << hd;
      // The fp32 block got its 3 rows.
      const KvLayerRegion& r1 = cache.region(1);
      for (int g = 0; g < hkv; ++g) {
        for (int t = 0; t < 3; ++t) {
          float x;
          std::memcpy(&x, cache.data(1) + r1.k_offset + ((g * bs + t) * hd) * sizeof(float),
                      sizeof(float));
          EXPECT_EQ(x, k[(static_cast<size_t>(bs + t) * hkv + g) * hd]);
        }
      }
      // A NaN is refused.
      k[5] = std::nanf("");
      EXPECT_FALSE(WriteKv(k.data(), v.data(), bs, blk.data(), off.data(), cache.view()));
    }
  }
}

}  // namespace
}  // namespace kvserve::kernels::cpu
