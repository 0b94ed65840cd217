#include "kernels/weight_formats.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace kvserve::kernels {
namespace {

float H(uint16_t h) { return Fp16ToFloat(h); }

int Nearest(float x) { return static_cast<int>(std::lrintf(x)); }

template <class Block>
const Block* Blocks(const void* src) {
  return static_cast<const Block*>(src);
}

// ---- reference dequantizers (ggml's formulas) --------------------------------------------------

void DequantQ4_0(const BlockQ4_0* b, float* y) {
  const float d = H(b->d);
  for (int j = 0; j < kQK / 2; ++j) {
    y[j] = static_cast<float>((b->qs[j] & 0xF) - 8) * d;
    y[j + kQK / 2] = static_cast<float>((b->qs[j] >> 4) - 8) * d;
  }
}

void DequantQ4_1(const BlockQ4_1* b, float* y) {
  const float d = H(b->d);
  const float m = H(b->m);
  for (int j = 0; j < kQK / 2; ++j) {
    y[j] = static_cast<float>(b->qs[j] & 0xF) * d + m;
    y[j + kQK / 2] = static_cast<float>(b->qs[j] >> 4) * d + m;
  }
}

template <class Block>
void Dequant5Bit(const Block* b, float d, float m, int offset, float* y) {
  uint32_t qh;
  std::memcpy(&qh, b->qh, 4);
  for (int j = 0; j < kQK / 2; ++j) {
    const int h0 = ((qh >> j) << 4) & 0x10;
    const int h1 = (qh >> (j + 12)) & 0x10;
    y[j] = static_cast<float>(((b->qs[j] & 0xF) | h0) - offset) * d + m;
    y[j + kQK / 2] = static_cast<float>(((b->qs[j] >> 4) | h1) - offset) * d + m;
  }
}

void DequantQ8_0(const BlockQ8_0* b, float* y) {
  const float d = H(b->d);
  for (int j = 0; j < kQK; ++j) y[j] = static_cast<float>(b->qs[j]) * d;
}

void DequantQ2_K(const BlockQ2_K* b, float* y) {
  const float d = H(b->d);
  const float min = H(b->dmin);
  const uint8_t* q = b->qs;
  int is = 0;
  for (int n = 0; n < kQK_K; n += 128) {
    int shift = 0;
    for (int j = 0; j < 4; ++j) {
      for (int half = 0; half < 2; ++half) {
        const uint8_t sc = b->scales[is++];
        const float dl = d * static_cast<float>(sc & 0xF);
        const float ml = min * static_cast<float>(sc >> 4);
        for (int l = 0; l < 16; ++l) {
          *y++ = dl * static_cast<float>((q[l + 16 * half] >> shift) & 3) - ml;
        }
      }
      shift += 2;
    }
    q += 32;
  }
}

void DequantQ3_K(const BlockQ3_K* b, float* y) {
  const float d_all = H(b->d);
  int8_t scales[16];
  Q3KScales(b->scales, scales);
  const uint8_t* q = b->qs;
  const uint8_t* hm = b->hmask;
  uint8_t m = 1;
  int is = 0;
  for (int n = 0; n < kQK_K; n += 128) {
    int shift = 0;
    for (int j = 0; j < 4; ++j) {
      for (int half = 0; half < 2; ++half) {
        const float dl = d_all * static_cast<float>(scales[is++]);
        for (int l = 16 * half; l < 16 * half + 16; ++l) {
          const int v = ((q[l] >> shift) & 3) - ((hm[l] & m) ? 0 : 4);
          *y++ = dl * static_cast<float>(v);
        }
      }
      shift += 2;
      m = static_cast<uint8_t>(m << 1);
    }
    q += 32;
  }
}

void DequantQ4_K(const BlockQ4_K* b, float* y) {
  const float d = H(b->d);
  const float min = H(b->dmin);
  const uint8_t* q = b->qs;
  int is = 0;
  for (int j = 0; j < kQK_K; j += 64) {
    uint8_t sc, m;
    ScaleMinK4(is, b->scales, &sc, &m);
    const float d1 = d * sc, m1 = min * m;
    ScaleMinK4(is + 1, b->scales, &sc, &m);
    const float d2 = d * sc, m2 = min * m;
    for (int l = 0; l < 32; ++l) *y++ = d1 * static_cast<float>(q[l] & 0xF) - m1;
    for (int l = 0; l < 32; ++l) *y++ = d2 * static_cast<float>(q[l] >> 4) - m2;
    q += 32;
    is += 2;
  }
}

void DequantQ5_K(const BlockQ5_K* b, float* y) {
  const float d = H(b->d);
  const float min = H(b->dmin);
  const uint8_t* ql = b->qs;
  int is = 0;
  uint8_t u1 = 1, u2 = 2;
  for (int j = 0; j < kQK_K; j += 64) {
    uint8_t sc, m;
    ScaleMinK4(is, b->scales, &sc, &m);
    const float d1 = d * sc, m1 = min * m;
    ScaleMinK4(is + 1, b->scales, &sc, &m);
    const float d2 = d * sc, m2 = min * m;
    for (int l = 0; l < 32; ++l) {
      *y++ = d1 * static_cast<float>((ql[l] & 0xF) + ((b->qh[l] & u1) ? 16 : 0)) - m1;
    }
    for (int l = 0; l < 32; ++l) {
      *y++ = d2 * static_cast<float>((ql[l] >> 4) + ((b->qh[l] & u2) ? 16 : 0)) - m2;
    }
    ql += 32;
    is += 2;
    u1 = static_cast<uint8_t>(u1 << 2);
    u2 = static_cast<uint8_t>(u2 << 2);
  }
}

void DequantQ6_K(const BlockQ6_K* b, float* y) {
  const float d = H(b->d);
  const uint8_t* ql = b->ql;
  const uint8_t* qh = b->qh;
  const int8_t* sc = b->scales;
  for (int n = 0; n < kQK_K; n += 128) {
    for (int l = 0; l < 32; ++l) {
      const int is = l / 16;
      const int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
      const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
      const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
      const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
      y[l] = d * static_cast<float>(sc[is]) * static_cast<float>(q1);
      y[l + 32] = d * static_cast<float>(sc[is + 2]) * static_cast<float>(q2);
      y[l + 64] = d * static_cast<float>(sc[is + 4]) * static_cast<float>(q3);
      y[l + 96] = d * static_cast<float>(sc[is + 6]) * static_cast<float>(q4);
    }
    y += 128;
    ql += 64;
    qh += 32;
    sc += 8;
  }
}

// ---- simple quantizers --------------------------------------------------------------------------

// Largest-magnitude value with its sign (ggml's choice for symmetric blocks).
float SignedMax(const float* x, int n) {
  float amax = 0, max = 0;
  for (int j = 0; j < n; ++j) {
    if (std::fabs(x[j]) > amax) {
      amax = std::fabs(x[j]);
      max = x[j];
    }
  }
  return max;
}

void QuantQ4_0(const float* x, BlockQ4_0* b) {
  const float d = SignedMax(x, kQK) / -8;
  const float id = d ? 1.0f / d : 0.0f;
  b->d = FloatToFp16(d);
  for (int j = 0; j < kQK / 2; ++j) {
    const int q0 = std::min(15, std::max(0, Nearest(x[j] * id) + 8));
    const int q1 = std::min(15, std::max(0, Nearest(x[j + kQK / 2] * id) + 8));
    b->qs[j] = static_cast<uint8_t>(q0 | (q1 << 4));
  }
}

void MinMax(const float* x, int n, float* lo, float* hi) {
  *lo = *hi = x[0];
  for (int j = 1; j < n; ++j) {
    *lo = std::min(*lo, x[j]);
    *hi = std::max(*hi, x[j]);
  }
}

void QuantQ4_1(const float* x, BlockQ4_1* b) {
  float lo, hi;
  MinMax(x, kQK, &lo, &hi);
  const float d = (hi - lo) / 15;
  const float id = d ? 1.0f / d : 0.0f;
  b->d = FloatToFp16(d);
  b->m = FloatToFp16(lo);
  for (int j = 0; j < kQK / 2; ++j) {
    const int q0 = std::min(15, std::max(0, Nearest((x[j] - lo) * id)));
    const int q1 = std::min(15, std::max(0, Nearest((x[j + kQK / 2] - lo) * id)));
    b->qs[j] = static_cast<uint8_t>(q0 | (q1 << 4));
  }
}

template <class Block>
void Pack5Bit(const int* q, Block* b) {
  uint32_t qh = 0;
  for (int j = 0; j < kQK / 2; ++j) {
    b->qs[j] = static_cast<uint8_t>((q[j] & 0xF) | ((q[j + kQK / 2] & 0xF) << 4));
    qh |= static_cast<uint32_t>((q[j] >> 4) & 1) << j;
    qh |= static_cast<uint32_t>((q[j + kQK / 2] >> 4) & 1) << (j + kQK / 2);
  }
  std::memcpy(b->qh, &qh, 4);
}

void QuantQ5_0(const float* x, BlockQ5_0* b) {
  const float d = SignedMax(x, kQK) / -16;
  const float id = d ? 1.0f / d : 0.0f;
  b->d = FloatToFp16(d);
  int q[kQK];
  for (int j = 0; j < kQK; ++j) q[j] = std::min(31, std::max(0, Nearest(x[j] * id) + 16));
  Pack5Bit(q, b);
}

void QuantQ5_1(const float* x, BlockQ5_1* b) {
  float lo, hi;
  MinMax(x, kQK, &lo, &hi);
  const float d = (hi - lo) / 31;
  const float id = d ? 1.0f / d : 0.0f;
  b->d = FloatToFp16(d);
  b->m = FloatToFp16(lo);
  int q[kQK];
  for (int j = 0; j < kQK; ++j) q[j] = std::min(31, std::max(0, Nearest((x[j] - lo) * id)));
  Pack5Bit(q, b);
}

void QuantQ8_0(const float* x, BlockQ8_0* b) {
  float amax = 0;
  for (int j = 0; j < kQK; ++j) amax = std::max(amax, std::fabs(x[j]));
  const float d = amax / 127;
  const float id = d ? 1.0f / d : 0.0f;
  b->d = FloatToFp16(d);
  for (int j = 0; j < kQK; ++j) b->qs[j] = static_cast<int8_t>(Nearest(x[j] * id));
}

// Scales and mins of `subs` sub-blocks of `len` elements for codes 0..levels: sub-block s spans
// [-mins[s], -mins[s] + levels * scales[s]] (mins >= 0).
void AffineSubBlocks(const float* x, int subs, int len, int levels, float* scales, float* mins) {
  for (int s = 0; s < subs; ++s) {
    float lo, hi;
    MinMax(x + s * len, len, &lo, &hi);
    lo = std::min(lo, 0.0f);
    scales[s] = (hi - lo) / levels;
    mins[s] = -lo;
  }
}

// Quantizes a non-negative value v to 0..max_code with step d (0 when d is 0).
int Code(float v, float d, int max_code) {
  return d > 0 ? std::min(max_code, std::max(0, Nearest(v / d))) : 0;
}

// Q4_K / Q5_K: codes 0..levels with 6-bit scales and mins per 32 elements; returns the codes.
template <class Block>
void QuantK4Like(const float* x, int levels, Block* b, int* codes) {
  float scales[8], mins[8];
  AffineSubBlocks(x, 8, 32, levels, scales, mins);
  const float d = *std::max_element(scales, scales + 8) / 63;
  const float dmin = *std::max_element(mins, mins + 8) / 63;
  b->d = FloatToFp16(d);
  b->dmin = FloatToFp16(dmin);
  const float dq = Fp16ToFloat(b->d), mq = Fp16ToFloat(b->dmin);
  std::memset(b->scales, 0, 12);
  for (int j = 0; j < 8; ++j) {
    const int ls = Code(scales[j], dq, 63);
    const int lm = Code(mins[j], mq, 63);
    if (j < 4) {
      b->scales[j] = static_cast<uint8_t>(ls);
      b->scales[j + 4] = static_cast<uint8_t>(lm);
    } else {
      b->scales[j + 4] = static_cast<uint8_t>((ls & 0xF) | ((lm & 0xF) << 4));
      b->scales[j - 4] |= static_cast<uint8_t>((ls >> 4) << 6);
      b->scales[j] |= static_cast<uint8_t>((lm >> 4) << 6);
    }
  }
  for (int j = 0; j < 8; ++j) {
    uint8_t sc, m;
    ScaleMinK4(j, b->scales, &sc, &m);
    const float step = dq * sc;
    const float off = mq * m;
    for (int l = 0; l < 32; ++l) codes[32 * j + l] = Code(x[32 * j + l] + off, step, levels);
  }
}

void QuantQ4_K(const float* x, BlockQ4_K* b) {
  int q[kQK_K];
  QuantK4Like(x, 15, b, q);
  for (int j = 0; j < kQK_K; j += 64) {
    for (int l = 0; l < 32; ++l)
      b->qs[j / 2 + l] = static_cast<uint8_t>(q[j + l] | (q[j + l + 32] << 4));
  }
}

void QuantQ5_K(const float* x, BlockQ5_K* b) {
  int q[kQK_K];
  QuantK4Like(x, 31, b, q);
  std::memset(b->qh, 0, sizeof(b->qh));
  for (int j = 0; j < kQK_K; j += 64) {
    const int pair = j / 64;
    for (int l = 0; l < 32; ++l) {
      const int lo = q[j + l], hi = q[j + l + 32];
      b->qs[j / 2 + l] = static_cast<uint8_t>((lo & 0xF) | ((hi & 0xF) << 4));
      if (lo & 16) b->qh[l] |= static_cast<uint8_t>(1 << (2 * pair));
      if (hi & 16) b->qh[l] |= static_cast<uint8_t>(2 << (2 * pair));
    }
  }
}

// 2-bit codes of 256 elements into the Q2_K / Q3_K `qs` layout.
void Pack2Bit(const int* L, uint8_t* qs) {
  for (int j = 0; j < kQK_K; j += 128) {
    for (int l = 0; l < 32; ++l) {
      qs[j / 4 + l] = static_cast<uint8_t>(L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) |
                                           (L[j + l + 96] << 6));
    }
  }
}

void QuantQ2_K(const float* x, BlockQ2_K* b) {
  float scales[16], mins[16];
  AffineSubBlocks(x, 16, 16, 3, scales, mins);
  const float d = *std::max_element(scales, scales + 16) / 15;
  const float dmin = *std::max_element(mins, mins + 16) / 15;
  b->d = FloatToFp16(d);
  b->dmin = FloatToFp16(dmin);
  const float dq = Fp16ToFloat(b->d), mq = Fp16ToFloat(b->dmin);
  int L[kQK_K];
  for (int s = 0; s < 16; ++s) {
    const int ls = Code(scales[s], dq, 15);
    const int lm = Code(mins[s], mq, 15);
    b->scales[s] = static_cast<uint8_t>(ls | (lm << 4));
    for (int l = 0; l < 16; ++l) L[16 * s + l] = Code(x[16 * s + l] + mq * lm, dq * ls, 3);
  }
  Pack2Bit(L, b->qs);
}

void QuantQ3_K(const float* x, BlockQ3_K* b) {
  float scales[16];
  for (int s = 0; s < 16; ++s) scales[s] = SignedMax(x + 16 * s, 16) / -4;
  float amax = 0;
  for (float s : scales) amax = std::max(amax, std::fabs(s));
  const float d = amax / 31;
  b->d = FloatToFp16(d);
  const float dq = Fp16ToFloat(b->d);
  std::memset(b->scales, 0, 12);
  int L[kQK_K];
  for (int s = 0; s < 16; ++s) {
    const int ls = dq > 0 ? std::min(31, std::max(-32, Nearest(scales[s] / dq))) : 0;
    const int l = ls + 32;
    if (s < 8) {
      b->scales[s] = static_cast<uint8_t>(l & 0xF);
    } else {
      b->scales[s - 8] |= static_cast<uint8_t>((l & 0xF) << 4);
    }
    b->scales[s % 4 + 8] |= static_cast<uint8_t>((l >> 4) << (2 * (s / 4)));
    const float step = dq * ls;
    for (int i = 0; i < 16; ++i) {
      const int v = step != 0 ? std::min(3, std::max(-4, Nearest(x[16 * s + i] / step))) : 0;
      L[16 * s + i] = v + 4;
    }
  }
  std::memset(b->hmask, 0, sizeof(b->hmask));
  for (int j = 0; j < kQK_K; ++j) {
    if (L[j] > 3) {
      b->hmask[j % 32] |= static_cast<uint8_t>(1 << (j / 32));
      L[j] -= 4;
    }
  }
  Pack2Bit(L, b->qs);
}

void QuantQ6_K(const float* x, BlockQ6_K* b) {
  float scales[16];
  for (int s = 0; s < 16; ++s) scales[s] = SignedMax(x + 16 * s, 16) / -32;
  float amax = 0;
  for (float s : scales) amax = std::max(amax, std::fabs(s));
  const float d = amax / 127;
  b->d = FloatToFp16(d);
  const float dq = Fp16ToFloat(b->d);
  int L[kQK_K];
  for (int s = 0; s < 16; ++s) {
    const int ls = dq > 0 ? std::min(127, std::max(-128, Nearest(scales[s] / dq))) : 0;
    b->scales[s] = static_cast<int8_t>(ls);
    const float step = dq * ls;
    for (int i = 0; i < 16; ++i) {
      const int v = step != 0 ? std::min(31, std::max(-32, Nearest(x[16 * s + i] / step))) : 0;
      L[16 * s + i] = v + 32;
    }
  }
  for (int j = 0; j < kQK_K; j += 128) {
    for (int l = 0; l < 32; ++l) {
      const int q1 = L[j + l], q2 = L[j + l + 32], q3 = L[j + l + 64], q4 = L[j + l + 96];
      b->ql[j / 2 + l] = static_cast<uint8_t>((q1 & 0xF) | ((q3 & 0xF) << 4));
      b->ql[j / 2 + l + 32] = static_cast<uint8_t>((q2 & 0xF) | ((q4 & 0xF) << 4));
      b->qh[j / 4 + l] =
          static_cast<uint8_t>((q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6));
    }
  }
}

}  // namespace

void Q3KScales(const uint8_t* packed, int8_t* scales) {
  constexpr uint32_t kmask1 = 0x03030303, kmask2 = 0x0f0f0f0f;
  uint32_t aux[4];
  std::memcpy(aux, packed, 12);
  const uint32_t tmp = aux[2];
  aux[2] = ((aux[0] >> 4) & kmask2) | (((tmp >> 4) & kmask1) << 4);
  aux[3] = ((aux[1] >> 4) & kmask2) | (((tmp >> 6) & kmask1) << 4);
  aux[0] = (aux[0] & kmask2) | (((tmp >> 0) & kmask1) << 4);
  aux[1] = (aux[1] & kmask2) | (((tmp >> 2) & kmask1) << 4);
  std::memcpy(scales, aux, 16);
  for (int i = 0; i < 16; ++i) scales[i] = static_cast<int8_t>(scales[i] - 32);
}

int64_t DTypeBlockSize(DType t) {
  switch (t) {
    case DType::kF32:
    case DType::kF16:
    case DType::kBF16:
      return 1;
    case DType::kQ4_0:
    case DType::kQ4_1:
    case DType::kQ5_0:
    case DType::kQ5_1:
    case DType::kQ8_0:
      return kQK;
    case DType::kQ2_K:
    case DType::kQ3_K:
    case DType::kQ4_K:
    case DType::kQ5_K:
    case DType::kQ6_K:
      return kQK_K;
  }
  return 1;
}

int64_t DTypeBlockBytes(DType t) {
  switch (t) {
    case DType::kF32:
      return 4;
    case DType::kF16:
    case DType::kBF16:
      return 2;
    case DType::kQ4_0:
      return sizeof(BlockQ4_0);
    case DType::kQ4_1:
      return sizeof(BlockQ4_1);
    case DType::kQ5_0:
      return sizeof(BlockQ5_0);
    case DType::kQ5_1:
      return sizeof(BlockQ5_1);
    case DType::kQ8_0:
      return sizeof(BlockQ8_0);
    case DType::kQ2_K:
      return sizeof(BlockQ2_K);
    case DType::kQ3_K:
      return sizeof(BlockQ3_K);
    case DType::kQ4_K:
      return sizeof(BlockQ4_K);
    case DType::kQ5_K:
      return sizeof(BlockQ5_K);
    case DType::kQ6_K:
      return sizeof(BlockQ6_K);
  }
  return 1;
}

void DequantizeRow(DType t, const void* src, int64_t n, float* out) {
  const int64_t bs = DTypeBlockSize(t);
  const int64_t nb = n / bs;
  switch (t) {
    case DType::kF32:
      std::memcpy(out, src, static_cast<size_t>(n) * 4);
      return;
    case DType::kF16:
    case DType::kBF16: {
      const auto* h = static_cast<const uint16_t*>(src);
      for (int64_t i = 0; i < n; ++i) {
        out[i] = t == DType::kF16 ? Fp16ToFloat(h[i]) : Bf16ToFloat(h[i]);
      }
      return;
    }
    case DType::kQ4_0:
      for (int64_t i = 0; i < nb; ++i) DequantQ4_0(Blocks<BlockQ4_0>(src) + i, out + i * bs);
      return;
    case DType::kQ4_1:
      for (int64_t i = 0; i < nb; ++i) DequantQ4_1(Blocks<BlockQ4_1>(src) + i, out + i * bs);
      return;
    case DType::kQ5_0:
      for (int64_t i = 0; i < nb; ++i) {
        const BlockQ5_0* b = Blocks<BlockQ5_0>(src) + i;
        Dequant5Bit(b, H(b->d), 0.0f, 16, out + i * bs);
      }
      return;
    case DType::kQ5_1:
      for (int64_t i = 0; i < nb; ++i) {
        const BlockQ5_1* b = Blocks<BlockQ5_1>(src) + i;
        Dequant5Bit(b, H(b->d), H(b->m), 0, out + i * bs);
      }
      return;
    case DType::kQ8_0:
      for (int64_t i = 0; i < nb; ++i) DequantQ8_0(Blocks<BlockQ8_0>(src) + i, out + i * bs);
      return;
    case DType::kQ2_K:
      for (int64_t i = 0; i < nb; ++i) DequantQ2_K(Blocks<BlockQ2_K>(src) + i, out + i * bs);
      return;
    case DType::kQ3_K:
      for (int64_t i = 0; i < nb; ++i) DequantQ3_K(Blocks<BlockQ3_K>(src) + i, out + i * bs);
      return;
    case DType::kQ4_K:
      for (int64_t i = 0; i < nb; ++i) DequantQ4_K(Blocks<BlockQ4_K>(src) + i, out + i * bs);
      return;
    case DType::kQ5_K:
      for (int64_t i = 0; i < nb; ++i) DequantQ5_K(Blocks<BlockQ5_K>(src) + i, out + i * bs);
      return;
    case DType::kQ6_K:
      for (int64_t i = 0; i < nb; ++i) DequantQ6_K(Blocks<BlockQ6_K>(src) + i, out + i * bs);
      return;
  }
}

void QuantizeRow(DType t, const float* src, int64_t n, void* out) {
  const int64_t bs = DTypeBlockSize(t);
  const int64_t nb = n / bs;
  for (int64_t i = 0; i < nb; ++i) {
    const float* x = src + i * bs;
    auto* o = static_cast<uint8_t*>(out) + i * DTypeBlockBytes(t);
    switch (t) {
      case DType::kQ4_0:
        QuantQ4_0(x, reinterpret_cast<BlockQ4_0*>(o));
        break;
      case DType::kQ4_1:
        QuantQ4_1(x, reinterpret_cast<BlockQ4_1*>(o));
        break;
      case DType::kQ5_0:
        QuantQ5_0(x, reinterpret_cast<BlockQ5_0*>(o));
        break;
      case DType::kQ5_1:
        QuantQ5_1(x, reinterpret_cast<BlockQ5_1*>(o));
        break;
      case DType::kQ8_0:
        QuantQ8_0(x, reinterpret_cast<BlockQ8_0*>(o));
        break;
      case DType::kQ2_K:
        QuantQ2_K(x, reinterpret_cast<BlockQ2_K*>(o));
        break;
      case DType::kQ3_K:
        QuantQ3_K(x, reinterpret_cast<BlockQ3_K*>(o));
        break;
      case DType::kQ4_K:
        QuantQ4_K(x, reinterpret_cast<BlockQ4_K*>(o));
        break;
      case DType::kQ5_K:
        QuantQ5_K(x, reinterpret_cast<BlockQ5_K*>(o));
        break;
      case DType::kQ6_K:
        QuantQ6_K(x, reinterpret_cast<BlockQ6_K*>(o));
        break;
      case DType::kF32:
      case DType::kF16:
      case DType::kBF16:
        return;  // dense types are not block-quantized
    }
  }
}

}  // namespace kvserve::kernels
