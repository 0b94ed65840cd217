// cuda::ConvertKvRegions writes the same bytes as cpu::QuantizeKvRegion: every format and role,
// head_dim 8 to 256, block sizes 8 to 64, full and partial blocks, regions scattered through a
// pointer table, sources in fp32 / fp16 / bf16; refused inputs (NaN, infinity, too large,
// token counts out of range) report ok = 0.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/kv_quantize.h"
#include "kernels/cuda/kv_quantize.h"
#include "kernels/kv_format.h"
#include "tests/gpu/gpu_test_util.h"

namespace kvserve::kernels::cuda {
namespace {

using testing::DeviceBuffer;

constexpr KvFormat kAll[] = {KvFormat::kFp32, KvFormat::kFp16, KvFormat::kBf16,  KvFormat::kFp8,
                             KvFormat::kInt8, KvFormat::kInt4, KvFormat::kNvfp4, KvFormat::kInt2};

// Random rows with per-channel offsets and scales (keys have them), a few exact zeros and
// values of both signs.
std::vector<float> Rows(std::mt19937& rng, const KvRegionShape& s) {
  std::normal_distribution<float> n01(0.0f, 1.0f);
  std::vector<float> ch(static_cast<size_t>(s.num_kv_heads) * s.head_dim);
  for (float& c : ch) c = 3.0f * n01(rng);
  std::vector<float> x(static_cast<size_t>(s.num_kv_heads) * s.block_size * s.head_dim);
  for (size_t i = 0; i < x.size(); ++i) {
    const size_t h = i / (static_cast<size_t>(s.block_size) * s.head_dim);
    const size_t d = i % s.head_dim;
    x[i] = n01(rng) * (1.0f + std::fabs(ch[h * s.head_dim + d])) + ch[h * s.head_dim + d];
    if (i % 97 == 5) x[i] = 0.0f;
  }
  return x;
}

// Encodes `count` regions with random token counts on both sides and compares every byte.
void CompareFormat(KvFormat src_format, KvFormat f, KvRole role, const KvRegionShape& s,
                   std::mt19937& rng) {
  SCOPED_TRACE(std::string(KvFormatName(src_format)) + " -> " + std::string(KvFormatName(f)) +
               (role == KvRole::kKey ? " K" : " V") + " bs=" + std::to_string(s.block_size) +
               " heads=" + std::to_string(s.num_kv_heads) + " hd=" + std::to_string(s.head_dim));
  const int count = 5;
  const int64_t src_bytes = KvRegionBytes(src_format, role, s);
  const int64_t dst_bytes = KvRegionBytes(f, role, s);
  const int64_t stride = dst_bytes + 192;  // regions apart, gaps between them stay untouched
  std::vector<uint8_t> src(static_cast<size_t>(count * src_bytes), 0);
  std::vector<uint8_t> expect(static_cast<size_t>(count * stride + 64), 0xCD);
  std::vector<int32_t> tokens(count);
  std::uniform_int_distribution<int> tok(1, s.block_size);
  for (int r = 0; r < count; ++r) {
    tokens[r] = r == 0 ? s.block_size : tok(rng);
    const std::vector<float> x = Rows(rng, s);
    uint8_t* sr = src.data() + r * src_bytes;
    ASSERT_TRUE(cpu::QuantizeKvRegion(src_format, role, x.data(), s, s.block_size, sr));
    // The CPU expectation reads what the source region stores.
    std::vector<float> stored(x.size(), 0.0f);
    cpu::DequantizeKvRegion(src_format, role, sr, s, s.block_size, stored.data());
    ASSERT_TRUE(cpu::QuantizeKvRegion(f, role, stored.data(), s, tokens[r],
                                      expect.data() + (count - 1 - r) * stride + 64));
  }
  // Destination r sits at slot count - 1 - r: the table is not in address order.
  DeviceBuffer<uint8_t> d_src(src);
  std::vector<uint8_t> init(expect.size(), 0xCD);
  DeviceBuffer<uint8_t> d_dst(init);
  std::vector<const uint8_t*> dptrs(count);
  for (int r = 0; r < count; ++r) dptrs[r] = d_dst.get() + (count - 1 - r) * stride + 64;
  DeviceBuffer<const uint8_t*> d_ptrs(dptrs);
  DeviceBuffer<int32_t> d_tokens(tokens);
  DeviceBuffer<uint8_t> d_ok(count);
  d_ok.Fill(0x77);
  KvRegionRefs in;
  in.base = d_src.get();
  in.stride = src_bytes;
  KvRegionRefs out;
  out.ptrs = d_ptrs.get();
  ConvertKvRegions(src_format, in, f, role, s, d_tokens.get(), out, count, d_ok.get(), nullptr);
  const std::vector<uint8_t> got = d_dst.Download();
  const std::vector<uint8_t> ok = d_ok.Download();
  for (int r = 0; r < count; ++r) EXPECT_EQ(ok[r], 1) << "region " << r;
  ASSERT_EQ(got.size(), expect.size());
  size_t first = got.size();
  for (size_t i = 0; i < got.size(); ++i) {
    if (got[i] != expect[i]) {
      first = i;
      break;
    }
  }
  EXPECT_EQ(first, got.size()) << "first differing byte " << first << ": got "
                               << int{got[first < got.size() ? first : 0]} << ", expected "
                               << int{expect[first < got.size() ? first : 0]};
}

TEST(GpuQuantizeTest, SameBytesAsCpuEveryFormatAndShape) {
  KVSERVE_REQUIRE_GPU();
  std::mt19937 rng(21);
  const KvRegionShape shapes[] = {{16, 4, 8},   {16, 8, 128}, {8, 2, 12}, {32, 2, 64},
                                  {16, 1, 256}, {64, 2, 96},  {16, 3, 80}};
  for (const KvRegionShape& s : shapes) {
    for (KvFormat f : kAll) {
      if (!KvFormatSupports(f, s)) continue;
      for (KvRole role : {KvRole::kKey, KvRole::kValue})
        CompareFormat(KvFormat::kFp32, f, role, s, rng);
    }
  }
}

TEST(GpuQuantizeTest, SameBytesAsCpuFromHalfPrecisionSources) {
  KVSERVE_REQUIRE_GPU();
  std::mt19937 rng(22);
  const KvRegionShape s{16, 8, 128};
  for (KvFormat src : {KvFormat::kFp16, KvFormat::kBf16}) {
    for (KvFormat f : kAll) {
      for (KvRole role : {KvRole::kKey, KvRole::kValue}) CompareFormat(src, f, role, s, rng);
    }
  }
}

TEST(GpuQuantizeTest, RefusedInputsReportNotOk) {
  KVSERVE_REQUIRE_GPU();
  const KvRegionShape s{16, 2, 64};
  const int64_t elems = int64_t{2} * 16 * 64;
  std::vector<float> in(static_cast<size_t>(6 * elems), 0.5f);
  in[0 * elems + 3] = std::numeric_limits<float>::quiet_NaN();
  in[1 * elems + 16 * 64 + 5] = std::numeric_limits<float>::infinity();  // head 1, row 0
  in[2 * elems + 7] = 2.0f * kKvQuantMaxAbs;                             // too large to quantize
  in[3 * elems + 15 * 64] = std::numeric_limits<float>::quiet_NaN();     // row 15: not read
  const std::vector<int32_t> tokens = {16, 16, 16, 15, 0, 17};
  std::vector<uint8_t> src(reinterpret_cast<uint8_t*>(in.data()),
                           reinterpret_cast<uint8_t*>(in.data()) + in.size() * 4);
  for (KvFormat f : {KvFormat::kInt4, KvFormat::kFp16}) {
    SCOPED_TRACE(std::string(KvFormatName(f)));
    DeviceBuffer<uint8_t> d_src(src);
    const int64_t dst_bytes = KvRegionBytes(f, KvRole::kKey, s);
    DeviceBuffer<uint8_t> d_dst(static_cast<size_t>(6 * dst_bytes));
    DeviceBuffer<int32_t> d_tokens(tokens);
    DeviceBuffer<uint8_t> d_ok(6);
    d_ok.Fill(0x77);
    KvRegionRefs in_refs, out_refs;
    in_refs.base = d_src.get();
    in_refs.stride = elems * 4;
    out_refs.base = d_dst.get();
    out_refs.stride = dst_bytes;
    ConvertKvRegions(KvFormat::kFp32, in_refs, f, KvRole::kKey, s, d_tokens.get(), out_refs, 6,
                     d_ok.get(), nullptr);
    const std::vector<uint8_t> ok = d_ok.Download();
    EXPECT_EQ(ok[0], 0);
    EXPECT_EQ(ok[1], 0);
    EXPECT_EQ(ok[2], f == KvFormat::kFp16 ? 1 : 0);  // float formats take any finite value
    EXPECT_EQ(ok[3], 1);
    EXPECT_EQ(ok[4], 0);
    EXPECT_EQ(ok[5], 0);
  }
}

}  // namespace
}  // namespace kvserve::kernels::cuda
