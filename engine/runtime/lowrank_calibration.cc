#include "engine/runtime/lowrank_calibration.h"

#include <algorithm>

#include "absl/strings/str_format.h"
#include "engine/common/documents.h"
#include "engine/common/status_macros.h"
#include "engine/kv/block_pool.h"
#include "engine/kv/lowrank_basis.h"
#include "engine/kv/sequence_kv.h"
#include "kernels/cpu/kv_quantize.h"

namespace kvserve::engine {

absl::StatusOr<std::vector<float>> ComputeLowrankKeyBasis(
    LlamaModel& model, const Tokenizer& tokenizer, std::string_view text,
    const LowrankCalibrationOptions& options) {
  const ModelConfig& c = model.config();
  if (options.rank < 1 || options.rank > c.head_dim) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "kv_cache.lowrank_rank must be in [1, head_dim = %d], got %d", c.head_dim, options.rank));
  }
  const KvGeometry geometry = model.KvGeometryFor(options.block_size);
  const int32_t cap = std::min(options.max_tokens, c.context_length);
  // A private FP32 pool sized for one document.
  const int64_t blocks = (cap + options.block_size - 1) / options.block_size;
  BlockPool pool(geometry,
                 blocks * kernels::KvLayerBytes(kernels::KvFormat::kFp32, geometry.RegionShape()) *
                     geometry.num_layers);
  KVSERVE_ASSIGN_OR_RETURN(LayoutId layout, pool.RegisterUniformLayout(kernels::KvFormat::kFp32));
  KeyCovariance covariance(c.num_layers, c.num_kv_heads, c.head_dim);
  const kernels::KvRegionShape shape = geometry.RegionShape();
  std::vector<float> keys(static_cast<size_t>(shape.num_kv_heads) * shape.block_size *
                          shape.head_dim);
  ForwardBatch batch;
  int64_t documents = 0;
  for (std::string_view doc : SplitDocuments(text, options.separator)) {
    std::vector<int32_t> tokens = tokenizer.Encode(doc, /*add_bos=*/true);
    if (static_cast<int32_t>(tokens.size()) > cap) tokens.resize(cap);
    if (tokens.size() < 2) continue;
    const int64_t n = static_cast<int64_t>(tokens.size());
    SequenceKv kv(&pool, layout);
    KVSERVE_RETURN_IF_ERROR(kv.Reserve(n));
    batch.Clear();
    batch.block_tables.push_back(kv.block_table().data());
    for (int64_t p = 0; p < n; ++p) {
      batch.Add(tokens[p], static_cast<int32_t>(p), 0, static_cast<int32_t>(p), false);
    }
    KVSERVE_RETURN_IF_ERROR(model.Forward(batch, pool, nullptr));
    for (int64_t b = 0; b * shape.block_size < n; ++b) {
      const int valid =
          static_cast<int>(std::min<int64_t>(shape.block_size, n - b * shape.block_size));
      const uint8_t* data = pool.block_data(kv.block_table()[b]);
      for (int l = 0; l < c.num_layers; ++l) {
        const kernels::KvLayerRegion& r = pool.layout(layout).regions[l];
        kernels::cpu::DequantizeKvRegion(kernels::KvFormat::kFp32, kernels::KvRole::kKey,
                                         data + r.k_offset, shape, valid, keys.data());
        for (int h = 0; h < shape.num_kv_heads; ++h) {
          for (int t = 0; t < valid; ++t) {
            covariance.Add(
                l, h,
                keys.data() + (static_cast<int64_t>(h) * shape.block_size + t) * shape.head_dim);
          }
        }
      }
    }
    ++documents;
  }
  if (documents == 0) {
    return absl::InvalidArgumentError(
        "kv_cache.lowrank_text holds no document with at least 2 tokens");
  }
  return covariance.Basis(options.rank);
}

}  // namespace kvserve::engine
