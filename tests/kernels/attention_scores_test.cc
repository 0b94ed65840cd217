// Accumulated attention scores from PagedAttention (AttentionBatch::seq_scores): for every
// format, head_dim runner and thread count, the scores added per slot equal the softmax weights
// of a plain double-precision reference over the stored (dequantized) keys, summed over query
// heads and query tokens; sequences without a score array are untouched and the attention output
// does not change when scores are requested.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/kv_quantize.h"
#include "kernels/cpu/paged_attention.h"
#include "kernels/kv_format.h"
#include "tests/kernels/kernel_test_util.h"

namespace kvserve::kernels::cpu {
namespace {

struct Case {
  KvFormat format;
  int block_size;
  int num_kv_heads;
  int group;
  int head_dim;
  int threads;
  // Scores per KV head (AttentionBatch::seq_score_head_stride): row g at g * (len + 3), the
  // padding between rows untouched.
  bool per_head = false;
};

std::string Name(const Case& c) {
  return std::string(KvFormatName(c.format)) + " bs=" + std::to_string(c.block_size) +
         " kv=" + std::to_string(c.num_kv_heads) + " G=" + std::to_string(c.group) +
         " hd=" + std::to_string(c.head_dim) + " threads=" + std::to_string(c.threads) +
         (c.per_head ? " per-head" : "");
}

void RunCase(const Case& c, std::mt19937& rng) {
  SCOPED_TRACE(Name(c));
  KvRegionShape shape{c.block_size, c.num_kv_heads, c.head_dim};
  // lowrank keys: rank head_dim / 2 on the even coordinate axes of every head.
  std::vector<float> basis;
  if (c.format == KvFormat::kLowrank) {
    shape.key_rank = std::max(1, c.head_dim / 2);
    basis.assign(static_cast<size_t>(c.num_kv_heads) * c.head_dim * shape.key_rank, 0.0f);
    for (int h = 0; h < c.num_kv_heads; ++h) {
      for (int r = 0; r < shape.key_rank; ++r) {
        basis[(static_cast<size_t>(h) * c.head_dim + 2 * r) * shape.key_rank + r] = 1.0f;
      }
    }
  }
  const float* key_basis = basis.empty() ? nullptr : basis.data();
  ASSERT_TRUE(KvFormatSupports(c.format, shape));
  const int heads = c.num_kv_heads * c.group;
  const int hd = c.head_dim;
  const int bs = c.block_size;
  const int64_t k_bytes = KvRegionBytes(c.format, KvRole::kKey, shape);
  const int64_t v_bytes = KvRegionBytes(c.format, KvRole::kValue, shape);
  KvLayerRegion region{c.format, 0, static_cast<uint32_t>(k_bytes)};

  // Three sequences: 0 and 2 want scores, 1 does not.
  const std::vector<int> lens = {1 + static_cast<int>(rng() % 70), 37,
                                 1 + static_cast<int>(rng() % 90)};
  std::vector<std::vector<int32_t>> tables(lens.size());
  int num_blocks = 0;
  for (size_t s = 0; s < lens.size(); ++s) {
    for (int b = 0; b < (lens[s] + bs - 1) / bs; ++b) tables[s].push_back(num_blocks++);
  }
  // Blocks in shuffled physical order.
  std::vector<int32_t> perm(num_blocks);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  for (auto& t : tables) {
    for (int32_t& b : t) b = perm[b];
  }
  std::vector<std::vector<uint8_t>> storage(num_blocks, std::vector<uint8_t>(k_bytes + v_bytes));
  std::vector<uint8_t*> ptrs;
  for (auto& s : storage) ptrs.push_back(s.data());
  std::vector<uint16_t> layouts(num_blocks, 0);
  // Keys as stored (dequantized), per physical block: [heads][bs][hd].
  const size_t region_floats = static_cast<size_t>(c.num_kv_heads) * bs * hd;
  std::vector<std::vector<float>> keys(num_blocks, std::vector<float>(region_floats, 0.0f));
  for (int b = 0; b < num_blocks; ++b) {
    std::vector<float> k = testing::RandomFloats(rng, region_floats, -2.0f, 2.0f);
    std::vector<float> v = testing::RandomFloats(rng, region_floats);
    ASSERT_TRUE(QuantizeKvRegion(c.format, KvRole::kKey, k.data(), shape, bs, ptrs[b], key_basis));
    ASSERT_TRUE(QuantizeKvRegion(c.format, KvRole::kValue, v.data(), shape, bs, ptrs[b] + k_bytes));
    DequantizeKvRegion(c.format, KvRole::kKey, ptrs[b], shape, bs, keys[b].data(), key_basis);
  }
  PagedKvLayerView view;
  view.block_data = ptrs.data();
  view.block_layout = layouts.data();
  view.regions = &region;
  view.shape = shape;
  view.key_basis = key_basis;

  // Query tokens: a few prefill positions and the decode token of each sequence.
  std::vector<int32_t> token_seq, token_kv_len;
  for (size_t s = 0; s < lens.size(); ++s) {
    for (int i = 0; i < 3; ++i) {
      token_seq.push_back(static_cast<int32_t>(s));
      token_kv_len.push_back(1 + static_cast<int32_t>(rng() % lens[s]));
    }
    token_seq.push_back(static_cast<int32_t>(s));
    token_kv_len.push_back(lens[s]);
  }
  const int64_t n = static_cast<int64_t>(token_seq.size());
  const std::vector<float> q = testing::RandomFloats(rng, n * heads * hd, -2.0f, 2.0f);
  std::vector<const int32_t*> table_ptrs;
  for (const auto& t : tables) table_ptrs.push_back(t.data());

  AttentionBatch batch;
  batch.num_tokens = n;
  batch.num_heads = heads;
  batch.q = q.data();
  batch.token_seq = token_seq.data();
  batch.token_kv_len = token_kv_len.data();
  batch.seq_block_tables = table_ptrs.data();
  batch.scale = 1.0f / std::sqrt(static_cast<float>(hd));

  ThreadPool pool(c.threads);
  std::vector<float> out_plain(n * heads * hd), out_scored(n * heads * hd);
  batch.out = out_plain.data();
  PagedAttention(batch, view, &pool);

  // Scores start from a non-zero base: the kernel adds, it does not overwrite.
  const int rows = c.per_head ? c.num_kv_heads : 1;
  std::vector<int64_t> strides(lens.size(), 0);
  for (size_t s = 0; s < lens.size(); ++s) strides[s] = c.per_head ? lens[s] + 3 : lens[s];
  std::vector<std::vector<float>> scores(lens.size());
  for (size_t s = 0; s < lens.size(); ++s) scores[s].assign(rows * strides[s], 0.5f);
  std::vector<float*> score_ptrs = {scores[0].data(), nullptr, scores[2].data()};
  batch.seq_scores = score_ptrs.data();
  std::vector<int64_t> head_strides(lens.size(), 0);
  if (c.per_head) {
    head_strides = strides;
    batch.seq_score_head_stride = head_strides.data();
  }
  batch.out = out_scored.data();
  PagedAttention(batch, view, &pool);
  EXPECT_EQ(out_plain, out_scored);

  std::vector<std::vector<double>> want(lens.size());
  for (size_t s = 0; s < lens.size(); ++s) want[s].assign(rows * strides[s], 0.5);
  for (int64_t t = 0; t < n; ++t) {
    const int s = token_seq[t];
    const int kv_len = token_kv_len[t];
    for (int h = 0; h < heads; ++h) {
      const int g = h / c.group;
      std::vector<double> logit(kv_len);
      for (int j = 0; j < kv_len; ++j) {
        const float* k =
            keys[tables[s][j / bs]].data() + (static_cast<size_t>(g) * bs + j % bs) * hd;
        double dot = 0;
        for (int d = 0; d < hd; ++d) dot += static_cast<double>(q[(t * heads + h) * hd + d]) * k[d];
        logit[j] = dot * batch.scale;
      }
      const double mx = *std::max_element(logit.begin(), logit.end());
      double sum = 0;
      for (double& x : logit) sum += (x = std::exp(x - mx));
      const int64_t row = c.per_head ? g * strides[s] : 0;
      for (int j = 0; j < kv_len; ++j) want[s][row + j] += logit[j] / sum;
    }
  }
  for (size_t s = 0; s < lens.size(); ++s) {
    for (int64_t j = 0; j < rows * strides[s]; ++j) {
      if (s == 1) {
        EXPECT_EQ(scores[s][j], 0.5f) << "sequence without scores touched at slot " << j;
      } else {
        // Each weight is within a few float ulps of the reference; the sum over heads and
        // tokens adds at most heads * tokens such errors.
        EXPECT_NEAR(scores[s][j], want[s][j], 2e-5 * (1.0 + want[s][j]))
            << "seq " << s << " slot " << j;
      }
    }
  }
  // The weights of one query and head sum to 1: total added = heads * query tokens.
  for (size_t s : {0u, 2u}) {
    double total = 0;
    for (float x : scores[s]) total += x - 0.5;
    EXPECT_NEAR(total, 4.0 * heads, 1e-3);
  }
}

TEST(AttentionScoresTest, MatchReferenceForEveryFormatAndRunner) {
  std::mt19937 rng(20260127);
  for (int f = 0; f < kNumKvFormats; ++f) {
    const KvFormat format = static_cast<KvFormat>(f);
    for (int hd : {8, 16, 64}) {
      for (int group : {1, 4}) {
        for (int threads : {1, 3}) {
          RunCase(Case{format, 16, 2, group, hd, threads}, rng);
        }
      }
    }
  }
}

TEST(AttentionScoresTest, PerKvHeadRowsMatchReferenceForEveryFormat) {
  std::mt19937 rng(20261127);
  for (int f = 0; f < kNumKvFormats; ++f) {
    const KvFormat format = static_cast<KvFormat>(f);
    for (int hd : {8, 16}) {
      for (int group : {1, 4}) {
        for (int threads : {1, 3}) {
          RunCase(Case{format, 16, 3, group, hd, threads, /*per_head=*/true}, rng);
        }
      }
    }
  }
  RunCase(Case{KvFormat::kFp32, 8, 2, 40, 8, 2, /*per_head=*/true}, rng);  // split groups
}

TEST(AttentionScoresTest, OddBlockSizesAndLargeGroups) {
  std::mt19937 rng(7);
  RunCase(Case{KvFormat::kFp32, 8, 1, 40, 8, 2}, rng);   // more heads than one runner pass
  RunCase(Case{KvFormat::kFp16, 32, 3, 2, 12, 1}, rng);  // head_dim with a tail
  RunCase(Case{KvFormat::kInt8, 16, 4, 1, 8, 4}, rng);
}

}  // namespace
}  // namespace kvserve::kernels::cpu
