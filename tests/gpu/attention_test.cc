// cuda::PagedAttention and cuda::WriteKv against their CPU twins: every format alone and mixed
// within a sequence; head_dim 8 to 256; GQA groups of 1, 3 and 8 (partial head tiles);
// scattered block tables with unused blocks (holes) full of NaN, blocks shared by two
// sequences, partial last blocks whose unused rows are NaN; mixed prefill and decode tokens;
// contexts long enough to be split across partitions; h2o slot scores. Outputs are poisoned (NaN)
// first.
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
#include "kernels/cuda/paged_attention.h"
#include "kernels/kv_format.h"
#include "tests/gpu/gpu_test_util.h"

namespace kvserve::kernels::cuda {
namespace {

using testing::DeviceBuffer;

constexpr KvFormat kAll[] = {KvFormat::kFp32, KvFormat::kFp16, KvFormat::kBf16,  KvFormat::kFp8,
                             KvFormat::kInt8, KvFormat::kInt4, KvFormat::kNvfp4, KvFormat::kInt2};

// A layer's blocks in one host buffer (block b at b * block_bytes), layout i = formats[i], and
// the same bytes on the device.
struct Pool {
  KvRegionShape shape;
  int64_t block_bytes = 0;
  std::vector<KvLayerRegion> regions;
  std::vector<uint16_t> layout;
  std::vector<uint8_t> bytes;
  std::vector<uint8_t*> host_ptrs;

  Pool(int capacity, KvRegionShape s, const std::vector<KvFormat>& formats) : shape(s) {
    for (KvFormat f : formats) {
      KvLayerRegion r;
      r.format = f;
      r.k_offset = 0;
      r.v_offset = static_cast<uint32_t>(KvRegionBytes(f, KvRole::kKey, s));
      regions.push_back(r);
      block_bytes =
          std::max<int64_t>(block_bytes, r.v_offset + KvRegionBytes(f, KvRole::kValue, s));
    }
    bytes.assign(static_cast<size_t>(capacity * block_bytes), 0xFF);  // NaN everywhere
    layout.assign(capacity, 0);
    for (int b = 0; b < capacity; ++b) host_ptrs.push_back(bytes.data() + b * block_bytes);
  }
  PagedKvLayerView HostView() const {
    return PagedKvLayerView{host_ptrs.data(), layout.data(), regions.data(), shape};
  }
};

struct Config {
  int block_size = 16;
  int num_kv_heads = 2;
  int group = 1;
  int head_dim = 8;
  std::vector<KvFormat> formats;
  int num_seqs = 3;
  int max_len = 100;

  std::string Name() const {
    std::string f;
    for (KvFormat x : formats) f += std::string(KvFormatName(x)) + ",";
    return "bs=" + std::to_string(block_size) + " kv=" + std::to_string(num_kv_heads) +
           " G=" + std::to_string(group) + " hd=" + std::to_string(head_dim) +
           " max_len=" + std::to_string(max_len) + " formats=" + f;
  }
};

void RunAndCompare(const Config& cfg, std::mt19937& rng) {
  SCOPED_TRACE(cfg.Name());
  const int bs = cfg.block_size, hkv = cfg.num_kv_heads, hd = cfg.head_dim;
  const int heads = hkv * cfg.group;
  const KvRegionShape shape{bs, hkv, hd};
  std::uniform_int_distribution<int> len_dist(std::max(1, cfg.max_len / 3), cfg.max_len);
  std::vector<int> lens(cfg.num_seqs);
  for (int& l : lens) l = len_dist(rng);
  if (cfg.num_seqs >= 2) lens[1] = std::max(lens[1], bs + 1);
  const int shared = cfg.num_seqs >= 2 ? std::min(lens[0], lens[1]) / bs : 0;  // full blocks
  int total = 0;
  for (int l : lens) total += (l + bs - 1) / bs;
  const int capacity = total + 7;  // 7 and more blocks are holes
  std::vector<int32_t> ids(capacity);
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), rng);
  Pool pool(capacity, shape, cfg.formats);
  std::uniform_int_distribution<int> layout_dist(0, static_cast<int>(cfg.formats.size()) - 1);

  // Block tables: sequence 1 starts with sequence 0's first `shared` blocks.
  std::vector<std::vector<int32_t>> tables(cfg.num_seqs);
  int next = 0;
  for (int s = 0; s < cfg.num_seqs; ++s) {
    const int nb = (lens[s] + bs - 1) / bs;
    for (int b = 0; b < nb; ++b) {
      tables[s].push_back(s == 1 && b < shared ? tables[0][b] : ids[next++]);
    }
  }
  // Encode every used block; unused rows of last blocks of float formats become NaN.
  std::normal_distribution<float> n01(0.0f, 1.0f);
  const size_t region_floats = static_cast<size_t>(hkv) * bs * hd;
  std::vector<bool> done(capacity, false);
  for (int s = 0; s < cfg.num_seqs; ++s) {
    for (size_t b = 0; b < tables[s].size(); ++b) {
      const int32_t phys = tables[s][b];
      if (done[phys]) continue;
      done[phys] = true;
      pool.layout[phys] = static_cast<uint16_t>(layout_dist(rng));
      const KvLayerRegion& r = pool.regions[pool.layout[phys]];
      std::vector<float> k(region_floats), v(region_floats), offset(static_cast<size_t>(hkv) * hd);
      for (float& o : offset) o = 2.0f * n01(rng);
      for (size_t i = 0; i < region_floats; ++i) {
        k[i] = n01(rng) + offset[(i / (static_cast<size_t>(bs) * hd)) * hd + i % hd];
        v[i] = n01(rng);
      }
      uint8_t* base = pool.host_ptrs[phys];
      ASSERT_TRUE(
          cpu::QuantizeKvRegion(r.format, KvRole::kKey, k.data(), shape, bs, base + r.k_offset));
      ASSERT_TRUE(
          cpu::QuantizeKvRegion(r.format, KvRole::kValue, v.data(), shape, bs, base + r.v_offset));
      const int nv = std::min(bs, lens[s] - static_cast<int>(b) * bs);
      if (nv < bs && KvFormatTokenWritable(r.format)) {
        const int64_t elem = KvRegionValueBytes(r.format, KvRole::kKey, shape) / region_floats;
        for (int h = 0; h < hkv; ++h) {
          for (int role = 0; role < 2; ++role) {
            uint8_t* reg = base + (role == 0 ? r.k_offset : r.v_offset);
            std::memset(reg + ((static_cast<int64_t>(h) * bs + nv) * hd) * elem, 0xFF,
                        static_cast<size_t>((bs - nv) * hd * elem));
          }
        }
      }
    }
  }
  // Query tokens: each sequence's last token (decode) and a few earlier ones (prefill).
  std::vector<int32_t> token_seq, token_kv_len;
  for (int s = 0; s < cfg.num_seqs; ++s) {
    token_seq.push_back(s);
    token_kv_len.push_back(lens[s]);
    std::uniform_int_distribution<int> pos(1, lens[s]);
    for (int i = 0; i < 3; ++i) {
      token_seq.push_back(s);
      token_kv_len.push_back(pos(rng));
    }
  }
  const int64_t n = static_cast<int64_t>(token_seq.size());
  std::vector<float> q(static_cast<size_t>(n * heads * hd));
  for (float& x : q) x = n01(rng);
  std::vector<const int32_t*> host_tables;
  for (auto& t : tables) host_tables.push_back(t.data());
  cpu::AttentionBatch cb;
  cb.num_tokens = n;
  cb.num_heads = heads;
  cb.q = q.data();
  std::vector<float> expect(q.size(), 0.0f);
  cb.out = expect.data();
  cb.token_seq = token_seq.data();
  cb.token_kv_len = token_kv_len.data();
  cb.seq_block_tables = host_tables.data();
  cb.scale = 1.0f / std::sqrt(static_cast<float>(hd));
  cpu::PagedAttention(cb, pool.HostView(), nullptr);

  // The same on the device.
  DeviceBuffer<uint8_t> d_bytes(pool.bytes);
  std::vector<uint8_t*> dptrs(capacity);
  for (int b = 0; b < capacity; ++b) dptrs[b] = d_bytes.get() + b * pool.block_bytes;
  DeviceBuffer<uint8_t*> d_ptrs(dptrs);
  DeviceBuffer<uint16_t> d_layout(pool.layout);
  DeviceBuffer<KvLayerRegion> d_regions(pool.regions);
  std::vector<int32_t> flat;
  std::vector<size_t> starts;
  for (auto& t : tables) {
    starts.push_back(flat.size());
    flat.insert(flat.end(), t.begin(), t.end());
  }
  DeviceBuffer<int32_t> d_flat(flat);
  std::vector<const int32_t*> dtables;
  for (size_t st : starts) dtables.push_back(d_flat.get() + st);
  DeviceBuffer<const int32_t*> d_tables(dtables);
  DeviceBuffer<float> d_q(q);
  DeviceBuffer<float> d_out(q.size());
  d_out.Fill(0xFF);
  DeviceBuffer<int32_t> d_seq(token_seq), d_len(token_kv_len);
  AttentionBatch b;
  b.num_tokens = n;
  b.num_heads = heads;
  b.q = d_q.get();
  b.out = d_out.get();
  b.token_seq = d_seq.get();
  b.token_kv_len = d_len.get();
  b.seq_block_tables = d_tables.get();
  b.scale = cb.scale;
  b.max_kv_len = *std::max_element(token_kv_len.begin(), token_kv_len.end());
  const int64_t ws_bytes = PagedAttentionWorkspaceBytes(n, heads, hd, bs, b.max_kv_len);
  DeviceBuffer<uint8_t> ws(static_cast<size_t>(std::max<int64_t>(ws_bytes, 1)));
  ws.Fill(0xFF);
  b.workspace = ws.get();
  b.workspace_bytes = ws_bytes;
  const PagedKvLayerView view{d_ptrs.get(), d_layout.get(), d_regions.get(), shape};
  PagedAttention(b, view, nullptr);
  const std::vector<float> got = d_out.Download();
  EXPECT_LE(testing::MaxRelDiff(got, expect), 2e-5);
}

TEST(GpuPagedAttentionTest, EveryFormatAloneAcrossShapes) {
  KVSERVE_REQUIRE_GPU();
  std::mt19937 rng(11);
  for (KvFormat f : kAll) {
    for (int hd : {8, 12, 32, 48, 64, 128, 256}) {
      for (int group : {1, 3, 8}) {
        Config cfg;
        cfg.head_dim = hd;
        cfg.group = group;
        cfg.formats = {f};
        cfg.max_len = 90;
        RunAndCompare(cfg, rng);
      }
    }
  }
}

TEST(GpuPagedAttentionTest, MixedFormatsWithinASequenceAndBlockSizes) {
  KVSERVE_REQUIRE_GPU();
  std::mt19937 rng(12);
  const std::vector<KvFormat> all(std::begin(kAll), std::end(kAll));
  for (int bs : {8, 16, 32}) {
    for (int hd : {8, 64, 128}) {
      Config cfg;
      cfg.block_size = bs;
      cfg.head_dim = hd;
      cfg.num_kv_heads = 4;
      cfg.group = 4;
      cfg.formats = all;
      cfg.num_seqs = 4;
      cfg.max_len = 300;
      RunAndCompare(cfg, rng);
    }
  }
}

// Contexts longer than one partition: split across thread blocks and combined.
TEST(GpuPagedAttentionTest, LongContextsSplitAcrossPartitions) {
  KVSERVE_REQUIRE_GPU();
  std::mt19937 rng(13);
  for (KvFormat f : {KvFormat::kFp16, KvFormat::kInt8, KvFormat::kInt4, KvFormat::kNvfp4}) {
    Config cfg;
    cfg.block_size = 16;
    cfg.head_dim = 128;
    cfg.num_kv_heads = 2;
    cfg.group = 4;
    cfg.formats = {f, KvFormat::kFp16};
    cfg.num_seqs = 2;
    cfg.max_len = 16 * kAttentionPartitionBlocks * 3 + 5;  // up to 4 partitions
    RunAndCompare(cfg, rng);
  }
}

// h2o slot scores: per slot, the softmax probabilities summed over query heads and tokens,
// against a float64 softmax over the values the blocks store (read back by the CPU decoder).
TEST(GpuPagedAttentionTest, AccumulatesSlotScores) {
  KVSERVE_REQUIRE_GPU();
  std::mt19937 rng(15);
  std::normal_distribution<float> n01(0.0f, 1.0f);
  const int bs = 16, hkv = 2, group = 3, hd = 64, heads = hkv * group;
  const KvRegionShape shape{bs, hkv, hd};
  const std::vector<int> lens = {40, 16 * kAttentionPartitionBlocks + 300};  // the second is split
  int total = 0;
  for (int l : lens) total += (l + bs - 1) / bs;
  Pool pool(total + 3, shape, {KvFormat::kInt4, KvFormat::kFp16, KvFormat::kFp8});
  std::vector<std::vector<int32_t>> tables(lens.size());
  std::vector<int32_t> ids(total + 3);
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), rng);
  const size_t region_floats = static_cast<size_t>(hkv) * bs * hd;
  // keys[seq][slot][kv head][d]: what the blocks store.
  std::vector<std::vector<float>> keys(lens.size());
  int next = 0;
  for (size_t sq = 0; sq < lens.size(); ++sq) {
    keys[sq].assign(static_cast<size_t>(lens[sq]) * hkv * hd, 0.0f);
    for (int b = 0; b * bs < lens[sq]; ++b) {
      const int32_t phys = ids[next++];
      tables[sq].push_back(phys);
      pool.layout[phys] = static_cast<uint16_t>(phys % 3);
      const KvLayerRegion& r = pool.regions[pool.layout[phys]];
      std::vector<float> k(region_floats), v(region_floats), back(region_floats);
      for (float& x : k) x = 2.0f * n01(rng);
      for (float& x : v) x = n01(rng);
      uint8_t* base = pool.host_ptrs[phys];
      ASSERT_TRUE(
          cpu::QuantizeKvRegion(r.format, KvRole::kKey, k.data(), shape, bs, base + r.k_offset));
      ASSERT_TRUE(
          cpu::QuantizeKvRegion(r.format, KvRole::kValue, v.data(), shape, bs, base + r.v_offset));
      cpu::DequantizeKvRegion(r.format, KvRole::kKey, base + r.k_offset, shape, bs, back.data());
      for (int j = 0; j < bs && b * bs + j < lens[sq]; ++j) {
        for (int g = 0; g < hkv; ++g) {
          for (int d = 0; d < hd; ++d) {
            keys[sq][((static_cast<size_t>(b) * bs + j) * hkv + g) * hd + d] =
                back[(static_cast<size_t>(g) * bs + j) * hd + d];
          }
        }
      }
    }
  }
  // Two decode tokens and one prefill token per sequence.
  std::vector<int32_t> token_seq = {0, 0, 1, 1, 1};
  std::vector<int32_t> token_kv_len = {lens[0], 17, lens[1], lens[1] - 1, 1000};
  const int64_t n = static_cast<int64_t>(token_seq.size());
  std::vector<float> q(static_cast<size_t>(n * heads * hd));
  for (float& x : q) x = n01(rng);
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  const int64_t stride = 4096;
  std::vector<double> expect(lens.size() * stride, 0.0);
  for (int64_t t = 0; t < n; ++t) {
    const int sq = token_seq[t];
    for (int h = 0; h < heads; ++h) {
      const int g = h / group;
      std::vector<double> logit(token_kv_len[t]);
      double mx = -1e300;
      for (int j = 0; j < token_kv_len[t]; ++j) {
        double dot = 0.0;
        for (int d = 0; d < hd; ++d) {
          dot += static_cast<double>(q[(t * heads + h) * hd + d]) *
                 keys[sq][(static_cast<size_t>(j) * hkv + g) * hd + d];
        }
        logit[j] = dot * scale;
        mx = std::max(mx, logit[j]);
      }
      double sum = 0.0;
      for (double& l : logit) sum += (l = std::exp(l - mx));
      for (int j = 0; j < token_kv_len[t]; ++j) expect[sq * stride + j] += logit[j] / sum;
    }
  }

  DeviceBuffer<uint8_t> d_bytes(pool.bytes);
  std::vector<uint8_t*> dptrs(pool.host_ptrs.size());
  for (size_t b = 0; b < dptrs.size(); ++b) dptrs[b] = d_bytes.get() + b * pool.block_bytes;
  DeviceBuffer<uint8_t*> d_ptrs(dptrs);
  DeviceBuffer<uint16_t> d_layout(pool.layout);
  DeviceBuffer<KvLayerRegion> d_regions(pool.regions);
  std::vector<int32_t> flat(tables[0]);
  flat.insert(flat.end(), tables[1].begin(), tables[1].end());
  DeviceBuffer<int32_t> d_flat(flat);
  DeviceBuffer<const int32_t*> d_tables(
      std::vector<const int32_t*>{d_flat.get(), d_flat.get() + tables[0].size()});
  DeviceBuffer<float> d_q(q), d_out(q.size());
  DeviceBuffer<int32_t> d_seq(token_seq), d_len(token_kv_len);
  DeviceBuffer<float> d_scores(std::vector<float>(expect.size(), 0.0f));
  AttentionBatch b;
  b.num_tokens = n;
  b.num_heads = heads;
  b.q = d_q.get();
  b.out = d_out.get();
  b.token_seq = d_seq.get();
  b.token_kv_len = d_len.get();
  b.seq_block_tables = d_tables.get();
  b.scale = scale;
  b.max_kv_len = lens[1];
  DeviceBuffer<float*> d_score_rows(std::vector<float*>{d_scores.get(), d_scores.get() + stride});
  b.seq_scores = d_score_rows.get();
  b.workspace_bytes = PagedAttentionWorkspaceBytes(n, heads, hd, bs, b.max_kv_len, true);
  DeviceBuffer<uint8_t> ws(static_cast<size_t>(b.workspace_bytes));
  ws.Fill(0xFF);
  b.workspace = ws.get();
  PagedAttention(b, PagedKvLayerView{d_ptrs.get(), d_layout.get(), d_regions.get(), shape},
                 nullptr);
  const std::vector<float> got = d_scores.Download();
  double worst = 0.0;
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_FALSE(std::isnan(got[i])) << "slot " << i;
    worst = std::max(worst, std::fabs(got[i] - expect[i]));
  }
  EXPECT_LE(worst, 1e-5);
}

// WriteKv converts rows into fp32 / fp16 / bf16 blocks exactly as the CPU op does, leaves other
// rows alone and leaves quantized blocks untouched.
TEST(GpuWriteKvTest, MatchesCpuBytes) {
  KVSERVE_REQUIRE_GPU();
  std::mt19937 rng(14);
  std::normal_distribution<float> n01(0.0f, 1.0f);
  for (int hd : {8, 64, 128}) {
    const KvRegionShape shape{16, 3, hd};
    Pool pool(12, shape, {KvFormat::kFp32, KvFormat::kFp16, KvFormat::kBf16, KvFormat::kInt4});
    for (int b = 0; b < 12; ++b) pool.layout[b] = static_cast<uint16_t>(b % 4);
    const int n = 20;
    std::vector<int32_t> slot_block(n), slot_offset(n);
    std::vector<float> k(static_cast<size_t>(n) * 3 * hd), v(k.size());
    for (float& x : k) x = n01(rng);
    for (float& x : v) x = n01(rng);
    for (int t = 0; t < n; ++t) {  // distinct slots
      slot_block[t] = (t * 5) % 12;
      slot_offset[t] = t % 16;
    }
    Pool expect = pool;
    expect.host_ptrs.clear();
    for (int b = 0; b < 12; ++b)
      expect.host_ptrs.push_back(expect.bytes.data() + b * pool.block_bytes);
    // The CPU op aborts on quantized blocks: give it only the token-writable slots.
    std::vector<int32_t> cb, co;
    std::vector<float> ck, cv;
    for (int t = 0; t < n; ++t) {
      if (slot_block[t] % 4 == 3) continue;
      cb.push_back(slot_block[t]);
      co.push_back(slot_offset[t]);
      ck.insert(ck.end(), k.begin() + t * 3 * hd, k.begin() + (t + 1) * 3 * hd);
      cv.insert(cv.end(), v.begin() + t * 3 * hd, v.begin() + (t + 1) * 3 * hd);
    }
    cpu::WriteKv(ck.data(), cv.data(), static_cast<int64_t>(cb.size()), cb.data(), co.data(),
                 expect.HostView());

    DeviceBuffer<uint8_t> d_bytes(pool.bytes);
    std::vector<uint8_t*> dptrs(12);
    for (int b = 0; b < 12; ++b) dptrs[b] = d_bytes.get() + b * pool.block_bytes;
    DeviceBuffer<uint8_t*> d_ptrs(dptrs);
    DeviceBuffer<uint16_t> d_layout(pool.layout);
    DeviceBuffer<KvLayerRegion> d_regions(pool.regions);
    DeviceBuffer<float> d_k(k), d_v(v);
    DeviceBuffer<int32_t> d_sb(slot_block), d_so(slot_offset);
    WriteKv(d_k.get(), d_v.get(), n, d_sb.get(), d_so.get(),
            PagedKvLayerView{d_ptrs.get(), d_layout.get(), d_regions.get(), shape}, nullptr);
    EXPECT_TRUE(d_bytes.Download() == expect.bytes) << "hd=" << hd;
  }
}

}  // namespace
}  // namespace kvserve::kernels::cuda
