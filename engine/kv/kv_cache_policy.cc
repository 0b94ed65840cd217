#include "engine/kv/kv_cache_policy.h"

#include <algorithm>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "engine/common/status_macros.h"
#include "kernels/backend.h"
#include "kernels/cpu/kv_quantize.h"

namespace kvserve::engine {
namespace {

std::string KvFormatList() {
  std::string out;
  for (int i = 0; i < kernels::kNumKvFormats; ++i) {
    if (i) out += ", ";
    out += std::string(kernels::KvFormatName(static_cast<kernels::KvFormat>(i)));
  }
  return out;
}

}  // namespace

absl::StatusOr<std::map<int, kernels::KvFormat>> ParseLayerFormats(std::string_view text) {
  std::map<int, kernels::KvFormat> out;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find(',', start);
    if (end == std::string_view::npos) end = text.size();
    const std::string item(text.substr(start, end - start));
    const size_t colon = item.find(':');
    int layer = -1;
    std::optional<kernels::KvFormat> format;
    if (colon != std::string::npos && colon > 0 && item.find_first_not_of("0123456789") == colon &&
        colon <= 6) {
      layer = std::stoi(item.substr(0, colon));
      format = kernels::ParseKvFormat(std::string_view(item).substr(colon + 1));
    }
    if (layer < 0 || !format) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "'%s' is not LAYER:FORMAT (e.g. 0:int8; formats: %s)", item, KvFormatList()));
    }
    if (!out.emplace(layer, *format).second) {
      return absl::InvalidArgumentError(absl::StrFormat("layer %d is listed twice", layer));
    }
    start = end + 1;
  }
  return out;
}

std::string FormatLayerFormats(const std::map<int, kernels::KvFormat>& layers) {
  std::string out;
  for (const auto& [layer, format] : layers) {
    if (!out.empty()) out += ",";
    out += absl::StrFormat("%d:%s", layer, kernels::KvFormatName(format));
  }
  return out;
}

absl::StatusOr<KvCachePolicy> KvCachePolicy::Create(BlockPool* pool,
                                                    const KvCachePolicyConfig& config) {
  const KvGeometry& g = pool->geometry();
  if (config.recent_window < 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("kv_cache.recent_window must be >= 0, got %d", config.recent_window));
  }
  if (config.sink_tokens < 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("kv_cache.sink_tokens must be >= 0, got %d", config.sink_tokens));
  }
  std::vector<kernels::KvFormat> cold(g.num_layers, config.format);
  for (const auto& [layer, format] : config.layer_formats) {
    if (layer < 0 || layer >= g.num_layers) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "kv_cache.layer_formats: layer %d does not exist (the model has layers 0..%d)", layer,
          g.num_layers - 1));
    }
    cold[layer] = format;
  }
  const kernels::KvRegionShape shape = g.RegionShape();
  for (int l = 0; l < g.num_layers; ++l) {
    // The key that chose this layer's format, for the messages.
    const char* key =
        config.layer_formats.count(l) > 0 ? "kv_cache.layer_formats" : "kv_cache.format";
    if (cold[l] == kernels::KvFormat::kLowrank &&
        (g.key_rank < 1 || g.key_rank > g.head_dim || pool->key_basis(l) == nullptr)) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "%s: format lowrank (layer %d) needs kv_cache.lowrank_rank in [1, head_dim = %d] "
          "and a key basis from kv_cache.lowrank_text",
          key, l, g.head_dim));
    }
    if (!kernels::KvFormatSupports(cold[l], shape)) {
      return absl::InvalidArgumentError(
          absl::StrFormat("%s: format %s cannot store layer %d (head_dim %d, block_size %d)", key,
                          kernels::KvFormatName(cold[l]), l, g.head_dim, g.block_size));
    }
  }
  bool needs_hot = config.recent_window > 0 || config.sink_tokens > 0;
  for (kernels::KvFormat f : cold) needs_hot |= !kernels::KvFormatTokenWritable(f);
  if (needs_hot && !kernels::KvFormatTokenWritable(config.window_format)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "kv_cache.window_format: %s cannot be written token by token, and the window "
        "(kv_cache.recent_window, kv_cache.sink_tokens) and the blocks being filled are kept in "
        "it: use fp32, fp16 or bf16",
        kernels::KvFormatName(config.window_format)));
  }
  KvCachePolicy p;
  p.pool_ = pool;
  p.config_ = config;
  KVSERVE_ASSIGN_OR_RETURN(p.cold_layout_, pool->RegisterLayout(cold));
  if (needs_hot) {
    KVSERVE_ASSIGN_OR_RETURN(p.write_layout_, pool->RegisterUniformLayout(config.window_format));
    if (pool->layout(p.write_layout_).block_bytes < pool->layout(p.cold_layout_).block_bytes) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "kv_cache.window_format: %s takes less memory than the long-term formats; the window "
          "must be at least as precise",
          kernels::KvFormatName(config.window_format)));
    }
  } else {
    p.write_layout_ = p.cold_layout_;
  }
  return p;
}

bool KvCachePolicy::ColdEligible(int64_t index, int64_t tokens) const {
  const int64_t bs = pool_->geometry().block_size;
  const int64_t begin = index * bs, end = begin + bs;
  return end <= tokens && begin >= config_.sink_tokens && end <= tokens - config_.recent_window;
}

int64_t KvCachePolicy::NextDemotionPoint(int64_t tokens) const {
  const int64_t bs = pool_->geometry().block_size;
  const int64_t w = config_.recent_window;
  // Block b becomes eligible at (b + 1) * bs + w, for b from the first block with no sink token.
  const int64_t first = (config_.sink_tokens + bs - 1) / bs;
  const int64_t b = tokens >= w ? std::max(first, (tokens - w) / bs) : first;
  return (b + 1) * bs + w;
}

bool KvCachePolicy::WrittenWhole(LayoutId layout) const {
  for (kernels::KvFormat f : pool_->layout(layout).layer_formats) {
    if (!kernels::KvFormatTokenWritable(f)) return true;
  }
  return false;
}

int64_t KvCachePolicy::NextToDemote(SequenceKv& seq, int64_t tokens) const {
  const std::vector<BlockId>& table = seq.block_table();
  for (int64_t b = seq.demoted_blocks(); b < static_cast<int64_t>(table.size()); ++b) {
    // Blocks already cold, and sink blocks (hot for good), are passed for good; a block not yet
    // eligible stops the walk (later blocks may become eligible as the sequence grows).
    if (pool_->layout_of(table[b]) == write_layout_) {
      if (ColdEligible(b, tokens)) return b;
      if (b * pool_->geometry().block_size >= config_.sink_tokens) return -1;
    }
    seq.set_demoted_blocks(b + 1);
  }
  return -1;
}

absl::Status KvCachePolicy::Demote(SequenceKv& seq, int64_t tokens) const {
  if (!demotes()) return absl::OkStatus();
  if (!pool_->host_memory()) return DemoteOnDevice(seq, tokens);
  const KvGeometry& g = pool_->geometry();
  const kernels::KvRegionShape shape = g.RegionShape();
  const BlockLayout& hot = pool_->layout(write_layout_);
  const BlockLayout& cold = pool_->layout(cold_layout_);
  std::vector<float> k, v;  // one layer's K and V of one block
  const size_t region_floats = static_cast<size_t>(g.num_kv_heads) * g.block_size * g.head_dim;
  std::vector<float> block;  // every layer's K and V of one block
  const std::vector<BlockId>& table = seq.block_table();
  for (int64_t b = NextToDemote(seq, tokens); b >= 0; b = NextToDemote(seq, tokens)) {
    // Read the whole block, free it, then write the cold copy (so the budget needs no room for
    // both at once).
    block.resize(2 * g.num_layers * region_floats);
    const uint8_t* src = pool_->block_data(table[b]);
    for (int l = 0; l < g.num_layers; ++l) {
      const kernels::KvLayerRegion& r = hot.regions[l];
      kernels::cpu::DequantizeKvRegion(r.format, kernels::KvRole::kKey, src + r.k_offset, shape,
                                       g.block_size, block.data() + (2 * l) * region_floats,
                                       pool_->key_basis(l));
      kernels::cpu::DequantizeKvRegion(r.format, kernels::KvRole::kValue, src + r.v_offset, shape,
                                       g.block_size, block.data() + (2 * l + 1) * region_floats);
    }
    KVSERVE_ASSIGN_OR_RETURN(BlockId fresh, seq.ReplaceBlock(b, cold_layout_));
    uint8_t* dst = pool_->mutable_block_data(fresh);
    for (int l = 0; l < g.num_layers; ++l) {
      const kernels::KvLayerRegion& r = cold.regions[l];
      if (!kernels::cpu::QuantizeKvRegion(r.format, kernels::KvRole::kKey,
                                          block.data() + (2 * l) * region_floats, shape,
                                          g.block_size, dst + r.k_offset, pool_->key_basis(l)) ||
          !kernels::cpu::QuantizeKvRegion(r.format, kernels::KvRole::kValue,
                                          block.data() + (2 * l + 1) * region_floats, shape,
                                          g.block_size, dst + r.v_offset)) {
        return absl::InternalError(
            absl::StrFormat("non-finite K/V values in layer %d of block %d", l, b));
      }
    }
    seq.set_demoted_blocks(b + 1);
  }
  return absl::OkStatus();
}

namespace {

// One group of ConvertKvRegions calls: regions of one role with the same source and destination
// formats.
struct ConvertGroup {
  kernels::KvFormat from, to;
  kernels::KvRole role;
  std::vector<const uint8_t*> src;
  std::vector<uint8_t*> dst;
};

// Adds region (src -> dst) to the group of its formats and role.
void AddRegion(std::vector<ConvertGroup>& groups, kernels::KvFormat from, kernels::KvFormat to,
               kernels::KvRole role, const uint8_t* src, uint8_t* dst) {
  for (ConvertGroup& g : groups) {
    if (g.from == from && g.to == to && g.role == role) {
      g.src.push_back(src);
      g.dst.push_back(dst);
      return;
    }
  }
  groups.push_back(ConvertGroup{from, to, role, {src}, {dst}});
}

bool RunGroups(kernels::Backend& device, const std::vector<ConvertGroup>& groups,
               const kernels::KvRegionShape& shape) {
  bool ok = true;
  for (const ConvertGroup& g : groups) {
    ok &= device.ConvertKvRegions(
        g.from, g.src.data(), g.to, const_cast<uint8_t* const*>(g.dst.data()), g.role, shape,
        shape.block_size, static_cast<int64_t>(g.src.size()), kernels::ExecContext{});
  }
  return ok;
}

}  // namespace

absl::Status KvCachePolicy::DemoteOnDevice(SequenceKv& seq, int64_t tokens) const {
  kernels::Backend& device = *pool_->device();
  const KvGeometry& g = pool_->geometry();
  const kernels::KvRegionShape shape = g.RegionShape();
  const BlockLayout& hot = pool_->layout(write_layout_);
  const BlockLayout& cold = pool_->layout(cold_layout_);
  // Every layer's K and V of one block as fp32 regions, in device memory (outside the budget, as
  // the host's float copy is).
  const int64_t region_bytes =
      kernels::KvRegionBytes(kernels::KvFormat::kFp32, kernels::KvRole::kKey, shape);
  uint8_t* floats = nullptr;
  const std::vector<BlockId>& table = seq.block_table();
  for (int64_t b = NextToDemote(seq, tokens); b >= 0; b = NextToDemote(seq, tokens)) {
    if (floats == nullptr) {
      floats = static_cast<uint8_t*>(device.Alloc(2 * g.num_layers * region_bytes));
      if (floats == nullptr) {
        return absl::ResourceExhaustedError(absl::StrFormat(
            "backend \"%s\": out of memory for a block's floats while demoting", device.name()));
      }
    }
    // Read the whole block into floats, free it, then write the cold copy (so the budget needs
    // no room for both at once).
    std::vector<ConvertGroup> read, write;
    const uint8_t* src = pool_->block_data(table[b]);
    for (int l = 0; l < g.num_layers; ++l) {
      const kernels::KvLayerRegion& r = hot.regions[l];
      uint8_t* k = floats + (2 * l) * region_bytes;
      AddRegion(read, r.format, kernels::KvFormat::kFp32, kernels::KvRole::kKey, src + r.k_offset,
                k);
      AddRegion(read, r.format, kernels::KvFormat::kFp32, kernels::KvRole::kValue, src + r.v_offset,
                k + region_bytes);
    }
    bool ok = RunGroups(device, read, shape);
    absl::StatusOr<BlockId> fresh = ok ? seq.ReplaceBlock(b, cold_layout_) : BlockId{0};
    if (!fresh.ok()) {
      device.Free(floats);
      return fresh.status();
    }
    if (ok) {
      uint8_t* dst = pool_->mutable_block_data(*fresh);
      for (int l = 0; l < g.num_layers; ++l) {
        const kernels::KvLayerRegion& r = cold.regions[l];
        const uint8_t* k = floats + (2 * l) * region_bytes;
        AddRegion(write, kernels::KvFormat::kFp32, r.format, kernels::KvRole::kKey, k,
                  dst + r.k_offset);
        AddRegion(write, kernels::KvFormat::kFp32, r.format, kernels::KvRole::kValue,
                  k + region_bytes, dst + r.v_offset);
      }
      ok = RunGroups(device, write, shape);
    }
    if (!ok) {
      device.Free(floats);
      return absl::InternalError(
          absl::StrFormat("non-finite K/V values in block %d (demotion on %s)", b, device.name()));
    }
    seq.set_demoted_blocks(b + 1);
  }
  device.Free(floats);
  return absl::OkStatus();
}

}  // namespace kvserve::engine
