#include "kernels/cpu/kv_quantize.h"

#include <algorithm>
#include <cmath>

#include "kernels/cpu/kv_codec.h"
#include "kernels/cpu/simd.h"

namespace kvserve::kernels::cpu {

void DequantizeKvRegion(KvFormat format, const uint8_t* region, const KvRegionShape& shape,
                        int tokens, float* out) {
  using V = simd::VecScalar;
  DispatchKvFormat(format, [&](auto codec) {
    using Codec = decltype(codec);
    for (int h = 0; h < shape.num_kv_heads; ++h) {
      typename Codec::Rows rows(region, shape, h);
      for (int t = 0; t < tokens; ++t) {
        float* dst = out + (static_cast<int64_t>(h) * shape.block_size + t) * shape.head_dim;
        for (int d0 = 0; d0 < shape.head_dim; d0 += V::kLanes) {
          const int n = std::min(V::kLanes, shape.head_dim - d0);
          V::StoreN(dst + d0, rows.template LoadN<V>(t, d0, n), n);
        }
      }
    }
  });
}

bool QuantizeKvRegion(KvFormat format, const float* in, const KvRegionShape& shape, int tokens,
                      uint8_t* region) {
  for (int h = 0; h < shape.num_kv_heads; ++h) {
    const float* base = in + static_cast<int64_t>(h) * shape.block_size * shape.head_dim;
    for (int64_t i = 0; i < static_cast<int64_t>(tokens) * shape.head_dim; ++i) {
      if (!std::isfinite(base[i])) return false;
    }
  }
  DispatchKvFormat(format, [&](auto codec) {
    using Codec = decltype(codec);
    for (int h = 0; h < shape.num_kv_heads; ++h) {
      for (int t = 0; t < tokens; ++t) {
        Codec::WriteRow(region, shape, h, t,
                        in + (static_cast<int64_t>(h) * shape.block_size + t) * shape.head_dim);
      }
    }
  });
  return true;
}

}  // namespace kvserve::kernels::cpu
