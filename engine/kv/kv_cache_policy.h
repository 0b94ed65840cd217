// Which format each KV block is stored in over its life: mixed precision by policy.
//
//  * `format` is the long-term ("cold") format of every layer; `layer_formats` overrides it per
//    layer (for example sensitive layers at INT8, the rest at INT4).
//  * `sink_tokens` (the first tokens of a sequence, attention sinks) and the `recent_window`
//    newest tokens are kept in `window_format` ("hot"). A block is written hot and *demoted* to
//    the cold layout once it is full, holds no sink token and lies entirely outside the window.
//  * Formats whose encoding needs the whole block (keys quantized per channel across the block's
//    tokens) are always written hot and demoted when full, even with no window: at most
//    block_size - 1 tokens of a sequence are then at window precision.
//  * When nothing needs demotion (token-writable format, no window, no sinks) blocks are written
//    in their final format directly.
//  * A block that one forward step writes whole (a prefill chunk covering it) and that is already
//    eligible when the step ends is allocated cold and written cold directly (quantize-on-write of
//    the whole block), so a prefill never holds its prompt at window size; the scheduler ends
//    prefill chunks at block boundaries for that (Scheduler, FinalLayout, WrittenWhole).
//
// Demotion costs one block-sized conversion per block per sequence, done on the engine thread
// between steps; it frees the hot block and allocates a (smaller) cold one.
#ifndef KVSERVE_ENGINE_KV_KV_CACHE_POLICY_H_
#define KVSERVE_ENGINE_KV_KV_CACHE_POLICY_H_

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/kv/block_pool.h"
#include "engine/kv/sequence_kv.h"
#include "kernels/kv_format.h"

namespace kvserve::engine {

struct KvCachePolicyConfig {
  kernels::KvFormat format = kernels::KvFormat::kFp32;         // cold format of every layer
  std::map<int, kernels::KvFormat> layer_formats;              // per-layer overrides (layer index)
  int32_t recent_window = 0;                                   // newest tokens kept hot
  int32_t sink_tokens = 0;                                     // first tokens kept hot
  kernels::KvFormat window_format = kernels::KvFormat::kFp16;  // format of hot blocks
};

// Parses per-layer overrides written "LAYER:FORMAT[,LAYER:FORMAT...]" (e.g. "0:int8,4:fp16");
// "" is no override. InvalidArgument naming the bad item.
absl::StatusOr<std::map<int, kernels::KvFormat>> ParseLayerFormats(std::string_view text);
// The inverse, in layer order.
std::string FormatLayerFormats(const std::map<int, kernels::KvFormat>& layers);

class KvCachePolicy {
 public:
  // Registers the layouts in `pool`. InvalidArgument naming the setting for a layer index
  // outside the model, a negative window or sink count, or a format the model's head_dim cannot
  // use.
  static absl::StatusOr<KvCachePolicy> Create(BlockPool* pool, const KvCachePolicyConfig& config);

  const KvCachePolicyConfig& config() const { return config_; }
  // Layout new blocks are written in, and the long-term layout.
  LayoutId write_layout() const { return write_layout_; }
  LayoutId cold_layout() const { return cold_layout_; }
  bool demotes() const { return write_layout_ != cold_layout_; }

  // True when block `index` of a sequence with `tokens` cached tokens may be stored cold.
  bool ColdEligible(int64_t index, int64_t tokens) const;
  // The layout block `index` of a sequence has once `tokens` tokens are cached: cold when
  // ColdEligible, else the write layout. A block that a single forward step writes whole and that
  // is eligible when the step ends can be allocated in it directly (no demotion, and never its
  // size in the write layout); see Scheduler.
  LayoutId FinalLayout(int64_t index, int64_t tokens) const {
    return ColdEligible(index, tokens) ? cold_layout_ : write_layout_;
  }
  // The smallest token count above `tokens` at which some block becomes ColdEligible (the next
  // count after which Demote has work). A sequence that is fed tokens in chunks that never step
  // over such a count sees, at every token, the same blocks cold as one decoded token by token.
  int64_t NextDemotionPoint(int64_t tokens) const;
  // True when blocks of `layout` must be written whole, in one step (a layer's format is not
  // token-writable: kernels::cpu::WriteKv then encodes the block from its block_size tokens).
  bool WrittenWhole(LayoutId layout) const;

  // Demotes every eligible block of `seq` that is still in the write layout. `tokens` is the
  // number of tokens whose K/V are in the cache. ResourceExhausted leaves the rest for later;
  // Internal when the block holds non-finite values.
  absl::Status Demote(SequenceKv& seq, int64_t tokens) const;

 private:
  // Demote for a pool in device memory: the same blocks in the same order, each re-encoded by the
  // device (Backend::ConvertKvRegions) through a float copy in device memory, so the cold bytes
  // are those the host would write.
  absl::Status DemoteOnDevice(SequenceKv& seq, int64_t tokens) const;
  // The next block of `seq` to demote, or -1; moves seq's demoted_blocks past the blocks that
  // need no demotion (already cold, or sinks).
  int64_t NextToDemote(SequenceKv& seq, int64_t tokens) const;

  BlockPool* pool_ = nullptr;
  KvCachePolicyConfig config_;
  LayoutId write_layout_ = 0;
  LayoutId cold_layout_ = 0;
};

}  // namespace kvserve::engine

#endif  // KVSERVE_ENGINE_KV_KV_CACHE_POLICY_H_
