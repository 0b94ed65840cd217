// The lowrank key format: layout, round trip against a float64 projection, refusal of
// non-finite input, and paged attention over lowrank blocks (mixed with fp16 blocks) against a
// float64 reference reading the stored coefficients and int8 values independently.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "kernels/cpu/kv_quantize.h"
#include "kernels/cpu/paged_attention.h"
#include "kernels/cpu/thread_pool.h"
#include "kernels/dtype.h"
#include "kernels/kv_format.h"
#include "tests/kernels/kv_quant_reference.h"

namespace kvserve::kernels::cpu {
namespace {

// Random orthonormal bases [heads][hd][rank] (Gram-Schmidt in double).
std::vector<float> RandomBasis(std::mt19937& rng, int heads, int hd, int rank) {
  std::normal_distribution<double> nd;
  std::vector<float> out(static_cast<size_t>(heads) * hd * rank);
  for (int h = 0; h < heads; ++h) {
    std::vector<std::vector<double>> cols;
    while (static_cast<int>(cols.size()) < rank) {
      std::vector<double> v(hd);
      for (double& x : v) x = nd(rng);
      for (const auto& c : cols) {
        double dot = 0;
        for (int d = 0; d < hd; ++d) dot += c[d] * v[d];
        for (int d = 0; d < hd; ++d) v[d] -= dot * c[d];
      }
      double norm = 0;
      for (double x : v) norm += x * x;
      norm = std::sqrt(norm);
      if (norm < 1e-6) continue;
      for (double& x : v) x /= norm;
      cols.push_back(v);
    }
    for (int d = 0; d < hd; ++d) {
      for (int i = 0; i < rank; ++i) {
        out[(static_cast<size_t>(h) * hd + d) * rank + i] = static_cast<float>(cols[i][d]);
      }
    }
  }
  return out;
}

double Coefficient(const uint8_t* k_region, const KvRegionShape& s, int h, int t, int i) {
  uint16_t bits;
  std::memcpy(&bits, k_region + ((static_cast<int64_t>(h) * s.block_size + t) * s.key_rank + i) * 2,
              2);
  return Fp16ToFloat(bits);
}

TEST(KvLowrankTest, LayoutWorkedByHand) {
  // Keys: 16 tokens x 2 heads x rank 5 FP16 = 320 bytes (a multiple of 64); values as int8.
  const KvRegionShape s{16, 2, 12, 5};
  EXPECT_EQ(KvRegionBytes(KvFormat::kLowrank, KvRole::kKey, s), 320);
  EXPECT_EQ(KvRegionScaleBytes(KvFormat::kLowrank, KvRole::kKey, s), 0);
  EXPECT_EQ(KvRegionBytes(KvFormat::kLowrank, KvRole::kValue, s),
            KvRegionBytes(KvFormat::kInt8, KvRole::kValue, s));
  EXPECT_FALSE(KvFormatTokenWritable(KvFormat::kLowrank));
  EXPECT_TRUE(KvFormatSupports(KvFormat::kLowrank, s));
  EXPECT_FALSE(KvFormatSupports(KvFormat::kLowrank, KvRegionShape{16, 2, 12, 0}));
  EXPECT_FALSE(KvFormatSupports(KvFormat::kLowrank, KvRegionShape{16, 2, 12, 13}));
  EXPECT_EQ(KvFormatName(KvFormat::kLowrank), "lowrank");
  EXPECT_EQ(ParseKvFormat("lowrank"), KvFormat::kLowrank);
}

TEST(KvLowrankTest, RoundTripIsTheProjectionOnTheBasis) {
  std::mt19937 rng(11);
  std::normal_distribution<float> nd;
  for (const KvRegionShape s :
       {KvRegionShape{16, 2, 12, 5}, KvRegionShape{16, 4, 8, 8}, KvRegionShape{8, 1, 128, 32}}) {
    SCOPED_TRACE(s.head_dim);
    const std::vector<float> basis = RandomBasis(rng, s.num_kv_heads, s.head_dim, s.key_rank);
    const size_t n = static_cast<size_t>(s.num_kv_heads) * s.block_size * s.head_dim;
    std::vector<float> k(n);
    for (float& x : k) x = 3.0f * nd(rng);
    std::vector<uint8_t> region(KvRegionBytes(KvFormat::kLowrank, KvRole::kKey, s));
    ASSERT_TRUE(QuantizeKvRegion(KvFormat::kLowrank, KvRole::kKey, k.data(), s, s.block_size,
                                 region.data(), basis.data()));
    std::vector<float> back(n, 0.0f);
    DequantizeKvRegion(KvFormat::kLowrank, KvRole::kKey, region.data(), s, s.block_size,
                       back.data(), basis.data());
    for (int h = 0; h < s.num_kv_heads; ++h) {
      const float* b = basis.data() + static_cast<size_t>(h) * s.head_dim * s.key_rank;
      for (int t = 0; t < s.block_size; ++t) {
        const float* kt = k.data() + (static_cast<size_t>(h) * s.block_size + t) * s.head_dim;
        double norm = 0;
        std::vector<double> c(s.key_rank, 0.0);
        for (int d = 0; d < s.head_dim; ++d) {
          norm += double{kt[d]} * kt[d];
          for (int i = 0; i < s.key_rank; ++i) c[i] += double{b[d * s.key_rank + i]} * kt[d];
        }
        // FP16 coefficients: relative error 2^-11 each, on a vector of norm <= |k|.
        const double tol = 1e-3 * std::sqrt(norm) + 1e-6;
        for (int i = 0; i < s.key_rank; ++i) {
          EXPECT_NEAR(Coefficient(region.data(), s, h, t, i), c[i], tol);
        }
        for (int d = 0; d < s.head_dim; ++d) {
          double proj = 0;
          for (int i = 0; i < s.key_rank; ++i) proj += double{b[d * s.key_rank + i]} * c[i];
          EXPECT_NEAR(back[(static_cast<size_t>(h) * s.block_size + t) * s.head_dim + d], proj,
                      tol);
          // At full rank the projection is the key itself.
          if (s.key_rank == s.head_dim) {
            EXPECT_NEAR(proj, kt[d], 1e-4 * std::sqrt(norm));
          }
        }
      }
    }
    // Non-finite keys and coefficients beyond FP16 are refused.
    k[3] = std::nanf("");
    EXPECT_FALSE(QuantizeKvRegion(KvFormat::kLowrank, KvRole::kKey, k.data(), s, s.block_size,
                                  region.data(), basis.data()));
    std::fill(k.begin(), k.end(), 1e6f);
    EXPECT_FALSE(QuantizeKvRegion(KvFormat::kLowrank, KvRole::kKey, k.data(), s, s.block_size,
                                  region.data(), basis.data()));
  }
}

// Attention over a sequence whose blocks alternate between fp16 and lowrank equals, in float64,
// attention over keys B c (c: the stored FP16 coefficients) and the stored int8 values.
TEST(KvLowrankTest, AttentionEqualsTheReferenceOverStoredCoefficients) {
  ThreadPool pool(2);
  std::mt19937 rng(17);
  std::normal_distribution<float> nd;
  struct Case {
    int kv_heads, group, hd, rank, len;
  };
  for (const Case c : {Case{4, 2, 8, 4, 70}, Case{2, 3, 12, 5, 41}, Case{2, 4, 64, 16, 100},
                       Case{1, 2, 128, 32, 33}}) {
    SCOPED_TRACE(c.hd);
    const int bs = 16, heads = c.kv_heads * c.group;
    const KvRegionShape s{bs, c.kv_heads, c.hd, c.rank};
    const std::vector<float> basis = RandomBasis(rng, c.kv_heads, c.hd, c.rank);
    const KvFormat formats[2] = {KvFormat::kFp16, KvFormat::kLowrank};
    KvLayerRegion regions[2];
    int64_t block_bytes = 0;
    for (int i = 0; i < 2; ++i) {
      regions[i].format = formats[i];
      regions[i].k_offset = 0;
      regions[i].v_offset = static_cast<uint32_t>(KvRegionBytes(formats[i], KvRole::kKey, s));
      block_bytes = std::max(block_bytes, KvLayerBytes(formats[i], s));
    }
    const int blocks = (c.len + bs - 1) / bs;
    std::vector<std::vector<uint8_t>> storage(blocks, std::vector<uint8_t>(block_bytes));
    std::vector<uint8_t*> ptrs;
    std::vector<uint16_t> layout(blocks);
    const size_t n = static_cast<size_t>(c.kv_heads) * bs * c.hd;
    for (int b = 0; b < blocks; ++b) {
      ptrs.push_back(storage[b].data());
      layout[b] = static_cast<uint16_t>(b % 2);
      std::vector<float> k(n), v(n);
      for (float& x : k) x = nd(rng);
      for (float& x : v) x = nd(rng);
      const KvLayerRegion& r = regions[layout[b]];
      ASSERT_TRUE(QuantizeKvRegion(r.format, KvRole::kKey, k.data(), s, bs,
                                   storage[b].data() + r.k_offset, basis.data()));
      ASSERT_TRUE(QuantizeKvRegion(r.format, KvRole::kValue, v.data(), s, bs,
                                   storage[b].data() + r.v_offset));
    }
    std::vector<int32_t> table(blocks);
    std::iota(table.begin(), table.end(), 0);
    const int32_t* tables[1] = {table.data()};
    PagedKvLayerView view;
    view.block_data = ptrs.data();
    view.block_layout = layout.data();
    view.regions = regions;
    view.shape = s;
    view.key_basis = basis.data();
    // Two query tokens: the whole sequence and a prefix.
    const int32_t seq[2] = {0, 0};
    const int32_t kv_len[2] = {c.len, c.len / 2 + 1};
    std::vector<float> q(2 * heads * c.hd), out(q.size());
    for (float& x : q) x = nd(rng);
    AttentionBatch batch;
    batch.num_tokens = 2;
    batch.num_heads = heads;
    batch.q = q.data();
    batch.out = out.data();
    batch.token_seq = seq;
    batch.token_kv_len = kv_len;
    batch.seq_block_tables = tables;
    batch.scale = 1.0f / std::sqrt(static_cast<float>(c.hd));
    PagedAttention(batch, view, &pool);

    for (int t = 0; t < 2; ++t) {
      for (int h = 0; h < heads; ++h) {
        const int g = h / c.group;
        const float* qh = q.data() + (t * heads + h) * c.hd;
        const float* bg = basis.data() + static_cast<size_t>(g) * c.hd * c.rank;
        std::vector<double> score(kv_len[t]);
        std::vector<std::vector<double>> value(kv_len[t], std::vector<double>(c.hd));
        for (int j = 0; j < kv_len[t]; ++j) {
          const int b = j / bs, slot = j % bs;
          const KvLayerRegion& r = regions[layout[b]];
          const uint8_t* kr = storage[b].data() + r.k_offset;
          double dot = 0;
          for (int d = 0; d < c.hd; ++d) {
            double kd;
            if (r.format == KvFormat::kLowrank) {
              kd = 0;
              for (int i = 0; i < c.rank; ++i) {
                kd += double{bg[d * c.rank + i]} * Coefficient(kr, s, g, slot, i);
              }
            } else {
              kd = testing::RefRegion(KvFormat::kFp16, KvRole::kKey, kr, s).Value(g, slot, d);
            }
            dot += qh[d] * kd;
          }
          score[j] = dot * batch.scale;
          // lowrank values are stored exactly as int8 values.
          const testing::RefRegion vr(
              r.format == KvFormat::kLowrank ? KvFormat::kInt8 : KvFormat::kFp16, KvRole::kValue,
              storage[b].data() + r.v_offset, s);
          for (int d = 0; d < c.hd; ++d) value[j][d] = vr.Value(g, slot, d);
        }
        const double mx = *std::max_element(score.begin(), score.end());
        double l = 0;
        std::vector<double> want(c.hd, 0.0);
        for (int j = 0; j < kv_len[t]; ++j) {
          const double p = std::exp(score[j] - mx);
          l += p;
          for (int d = 0; d < c.hd; ++d) want[d] += p * value[j][d];
        }
        for (int d = 0; d < c.hd; ++d) {
          EXPECT_NEAR(out[(t * heads + h) * c.hd + d], want[d] / l, 2e-4)
              << "t " << t << " h " << h << " d " << d;
        }
      }
    }
  }
}

}  // namespace
}  // namespace kvserve::kernels::cpu
