// Start-up calibration of the lowrank key format: runs the model over a calibration text with an
// FP32 KV cache of its own and derives each layer's and KV head's key basis from the keys the
// cache then holds (engine/kv/lowrank_basis.h).
//
// The basis is computed when the engine starts (kv_cache.lowrank_text names the text; nothing
// is stored in the repository or written beside the model), which costs one forward pass over
// the text: a few seconds for a few hundred short documents on a small model.
#ifndef KVSERVE_ENGINE_RUNTIME_LOWRANK_CALIBRATION_H_
#define KVSERVE_ENGINE_RUNTIME_LOWRANK_CALIBRATION_H_

#include <cstdint>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model/llama_model.h"
#include "engine/tokenizer/tokenizer.h"

namespace kvserve::engine {

struct LowrankCalibrationOptions {
  int rank = 0;                                  // coefficients per key, in [1, head_dim]
  std::string_view separator = "<|endoftext|>";  // documents of the text
  int32_t max_tokens = 512;                      // per document, BOS included
  int block_size = 16;
};

// Bases [num_layers][num_kv_heads][head_dim][rank] (BlockPool::SetKeyBasis). InvalidArgument
// for a rank outside [1, head_dim] or a text with no document of 2 tokens or more.
absl::StatusOr<std::vector<float>> ComputeLowrankKeyBasis(LlamaModel& model,
                                                          const Tokenizer& tokenizer,
                                                          std::string_view text,
                                                          const LowrankCalibrationOptions& options);

}  // namespace kvserve::engine

#endif  // KVSERVE_ENGINE_RUNTIME_LOWRANK_CALIBRATION_H_
