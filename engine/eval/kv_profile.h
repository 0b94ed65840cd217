// KV memory profiling: what a model shape's KV cache costs per format, from the one definition
// of the block layouts (kernels/kv_format.h), and what the real pool holds while a model
// generates.
#ifndef KVSERVE_ENGINE_EVAL_KV_PROFILE_H_
#define KVSERVE_ENGINE_EVAL_KV_PROFILE_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/runtime/local_model.h"
#include "kernels/kv_format.h"

namespace kvserve::engine {

struct KvShape {
  std::string name;
  int num_layers = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  int key_rank = 0;  // coefficients per key of the lowrank format (0: lowrank not sized)
};

// llama-7b (32 layers, 32 KV heads, head_dim 128), llama-13b (40, 40, 128),
// llama-70b (80 layers, 8 KV heads, 128). NotFound for other names (the message lists them).
absl::StatusOr<KvShape> NamedKvShape(std::string_view name);
std::vector<std::string> NamedKvShapes();

// Bytes one block of `block_size` tokens takes with every layer in `format` (scales and region
// padding included).
int64_t KvBlockBytes(const KvShape& shape, kernels::KvFormat format, int block_size);
// Bytes the pool holds for `tokens` tokens of one sequence (whole blocks).
int64_t KvSequenceBytes(const KvShape& shape, kernels::KvFormat format, int block_size,
                        int64_t tokens);
// Stored bits per K/V element, scales and padding included.
double KvBitsPerElement(const KvShape& shape, kernels::KvFormat format, int block_size);

// Generates `tokens` tokens (ignoring EOS) from `prompt` with the model's pool and records
// the pool's used bytes after every step: pairs (tokens whose K/V are cached, used bytes).
absl::StatusOr<std::vector<std::pair<int64_t, int64_t>>> MeasureKvGrowth(LocalModel& model,
                                                                         std::string_view prompt,
                                                                         int32_t tokens);

}  // namespace kvserve::engine

#endif  // KVSERVE_ENGINE_EVAL_KV_PROFILE_H_
