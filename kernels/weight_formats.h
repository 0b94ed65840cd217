// Byte layouts of ggml's block-quantized weight types, defined once for every kernel, with a
// plain reference dequantizer and a simple quantizer per type.
//
// A quantized matrix [rows, cols] stores each row as cols / block_size consecutive blocks (cols a
// multiple of the block size); a row takes WeightRowBytes(type, cols) bytes. Scales `d`/`dmin`/`m`
// are IEEE half floats (bit patterns). The layouts and the dequantization formulas are ggml's
// (ggml-common.h block_* structs, ggml-quants.c dequantize_row_*), so GGUF tensors of these types
// are used in place.
//
//   type  block  bytes  bits/weight  value of element j
//   Q4_0    32     18     4.5        d * (nibble_j - 8)
//   Q4_1    32     20     5.0        d * nibble_j + m
//   Q5_0    32     22     5.5        d * (5-bit_j - 16)
//   Q5_1    32     24     6.0        d * 5-bit_j + m
//   Q8_0    32     34     8.5        d * q_j
//   Q2_K   256     84     2.625      d * sc_s * 2-bit_j - dmin * m_s     (16 sub-blocks of 16)
//   Q3_K   256    110     3.4375     d * (sc_s - 32) * (3-bit_j - 4)     (16 sub-blocks of 16)
//   Q4_K   256    144     4.5        d * sc_s * nibble_j - dmin * m_s    (8 sub-blocks of 32)
//   Q5_K   256    176     5.5        d * sc_s * 5-bit_j - dmin * m_s     (8 sub-blocks of 32)
//   Q6_K   256    210     6.5625     d * sc_s * (6-bit_j - 32)           (16 sub-blocks of 16)
#ifndef KVSERVE_KERNELS_WEIGHT_FORMATS_H_
#define KVSERVE_KERNELS_WEIGHT_FORMATS_H_

#include <cstdint>

#include "kernels/dtype.h"

namespace kvserve::kernels {

inline constexpr int kQK = 32;     // elements of a Q4_0 / Q4_1 / Q5_0 / Q5_1 / Q8_0 block
inline constexpr int kQK_K = 256;  // elements of a K-type super-block

struct BlockQ4_0 {
  uint16_t d;
  uint8_t qs[kQK / 2];  // element j in the low nibble of qs[j], element j + 16 in the high one
};
struct BlockQ4_1 {
  uint16_t d;
  uint16_t m;
  uint8_t qs[kQK / 2];
};
struct BlockQ5_0 {
  uint16_t d;
  uint8_t qh[4];  // bit j (little-endian u32): the fifth bit of element j
  uint8_t qs[kQK / 2];
};
struct BlockQ5_1 {
  uint16_t d;
  uint16_t m;
  uint8_t qh[4];
  uint8_t qs[kQK / 2];
};
struct BlockQ8_0 {
  uint16_t d;
  int8_t qs[kQK];
};
struct BlockQ2_K {
  uint8_t scales[kQK_K / 16];  // low nibble: scale, high nibble: min, per 16 elements
  uint8_t qs[kQK_K / 4];
  uint16_t d;
  uint16_t dmin;
};
struct BlockQ3_K {
  uint8_t hmask[kQK_K / 8];
  uint8_t qs[kQK_K / 4];
  uint8_t scales[12];  // 16 six-bit scales, packed
  uint16_t d;
};
struct BlockQ4_K {
  uint16_t d;
  uint16_t dmin;
  uint8_t scales[12];  // 8 six-bit scales and 8 six-bit mins, packed
  uint8_t qs[kQK_K / 2];
};
struct BlockQ5_K {
  uint16_t d;
  uint16_t dmin;
  uint8_t scales[12];
  uint8_t qh[kQK_K / 8];
  uint8_t qs[kQK_K / 2];
};
struct BlockQ6_K {
  uint8_t ql[kQK_K / 2];
  uint8_t qh[kQK_K / 4];
  int8_t scales[kQK_K / 16];
  uint16_t d;
};

static_assert(sizeof(BlockQ4_0) == 18);
static_assert(sizeof(BlockQ4_1) == 20);
static_assert(sizeof(BlockQ5_0) == 22);
static_assert(sizeof(BlockQ5_1) == 24);
static_assert(sizeof(BlockQ8_0) == 34);
static_assert(sizeof(BlockQ2_K) == 84);
static_assert(sizeof(BlockQ3_K) == 110);
static_assert(sizeof(BlockQ4_K) == 144);
static_assert(sizeof(BlockQ5_K) == 176);
static_assert(sizeof(BlockQ6_K) == 210);

// Elements per block (1 for dense types).
int64_t DTypeBlockSize(DType t);
// Bytes per block (the element size for dense types).
int64_t DTypeBlockBytes(DType t);
// Bytes of one row of `cols` elements (cols a multiple of the block size).
inline int64_t WeightRowBytes(DType t, int64_t cols) {
  return cols / DTypeBlockSize(t) * DTypeBlockBytes(t);
}

// The 6-bit scale and min of sub-block j (0..7) of a Q4_K / Q5_K block's packed `scales`.
inline void ScaleMinK4(int j, const uint8_t* q, uint8_t* sc, uint8_t* m) {
  if (j < 4) {
    *sc = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *sc = static_cast<uint8_t>((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
    *m = static_cast<uint8_t>((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
  }
}
// The 16 signed scales (already minus 32) of a Q3_K block's packed `scales`.
void Q3KScales(const uint8_t* packed, int8_t* scales);

// Reference dequantization of `n` elements (a multiple of the block size) of any DType.
void DequantizeRow(DType t, const void* src, int64_t n, float* out);

// A simple round-to-nearest quantizer of `n` elements (a multiple of the block size) into `t`
// (any quantized type): scales from each block's range, no search. For tests and model files
// we write; llama.cpp's quantizer chooses scales more carefully.
void QuantizeRow(DType t, const float* src, int64_t n, void* out);

}  // namespace kvserve::kernels

#endif  // KVSERVE_KERNELS_WEIGHT_FORMATS_H_
