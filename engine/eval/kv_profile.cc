#include "engine/eval/kv_profile.h"

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace kvserve::engine {
namespace {

const KvShape kNamed[] = {
    {"llama-7b", 32, 32, 128},
    {"llama-13b", 40, 40, 128},
    {"llama-70b", 80, 8, 128},
};

}  // namespace

absl::StatusOr<KvShape> NamedKvShape(std::string_view name) {
  for (const KvShape& s : kNamed) {
    if (s.name == name) return s;
  }
  return absl::NotFoundError(absl::StrFormat("unknown model shape '%s'; known: %s", name,
                                             absl::StrJoin(NamedKvShapes(), ", ")));
}

std::vector<std::string> NamedKvShapes() {
  std::vector<std::string> names;
  for (const KvShape& s : kNamed) names.push_back(s.name);
  return names;
}

int64_t KvBlockBytes(const KvShape& shape, kernels::KvFormat format, int block_size) {
  const kernels::KvRegionShape region{block_size, shape.num_kv_heads, shape.head_dim,
                                      shape.key_rank};
  return static_cast<int64_t>(shape.num_layers) * kernels::KvLayerBytes(format, region);
}

int64_t KvSequenceBytes(const KvShape& shape, kernels::KvFormat format, int block_size,
                        int64_t tokens) {
  const int64_t blocks = (tokens + block_size - 1) / block_size;
  return blocks * KvBlockBytes(shape, format, block_size);
}

double KvBitsPerElement(const KvShape& shape, kernels::KvFormat format, int block_size) {
  const double elements = 2.0 * shape.num_layers * block_size * shape.num_kv_heads * shape.head_dim;
  return 8.0 * static_cast<double>(KvBlockBytes(shape, format, block_size)) / elements;
}

absl::StatusOr<std::vector<std::pair<int64_t, int64_t>>> MeasureKvGrowth(LocalModel& model,
                                                                         std::string_view prompt,
                                                                         int32_t tokens) {
  GenerationRequest r;
  r.prompt = model.tokenizer().Encode(prompt, true);
  r.max_tokens = tokens;
  r.ignore_eos = true;
  std::vector<std::pair<int64_t, int64_t>> curve;
  int64_t length = static_cast<int64_t>(r.prompt.size());
  auto result = model.generator().Run({r}, [&](int, int32_t) {
    ++length;
    curve.emplace_back(length - 1, model.kv_pool().used_bytes());  // tokens cached
  });
  if (!result.ok()) return result.status();
  return curve;
}

}  // namespace kvserve::engine
