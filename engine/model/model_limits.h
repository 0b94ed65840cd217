// Upper bounds on model hyper-parameters accepted by the loaders. Far above any Llama-family model
// this server targets; they exist so that a corrupt header is rejected before it can drive size
// arithmetic or allocations.
#ifndef KVSERVE_ENGINE_MODEL_MODEL_LIMITS_H_
#define KVSERVE_ENGINE_MODEL_MODEL_LIMITS_H_

#include <cstdint>

namespace kvserve::engine {

inline constexpr int64_t kMaxModelDim = int64_t{1} << 16;   // embedding width
inline constexpr int64_t kMaxHiddenDim = int64_t{1} << 18;  // feed-forward width
inline constexpr int64_t kMaxLayers = 1024;
inline constexpr int64_t kMaxHeads = 1024;                // query or key/value heads
inline constexpr int64_t kMaxContext = int64_t{1} << 24;  // tokens
inline constexpr int64_t kMaxVocab = int64_t{1} << 22;    // tokens

}  // namespace kvserve::engine

#endif  // KVSERVE_ENGINE_MODEL_MODEL_LIMITS_H_
