// LoadModel: detects the file format and hands the mapped file to the matching loader.

#include <cstdint>
#include <cstring>
#include <memory>
#include <set>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/common/mapped_file.h"
#include "engine/common/status_macros.h"
#include "engine/model/gguf.h"
#include "engine/model/gguf_model.h"
#include "engine/model/llama2c_model.h"
#include "engine/model/model.h"
#include "spdlog/spdlog.h"

namespace kvserve::engine {
namespace {

// A llama2.c header is 7 small int32 values; anything beyond this magnitude (above every field's
// limit in model_limits.h) is not one. The loader then checks each field against its own limit.
constexpr int64_t kLlama2cPlausibleMagnitude = int64_t{1} << 25;

bool LooksLikeLlama2c(const MappedFile& file) {
  int32_t header[7];
  std::memcpy(header, file.data(), sizeof(header));
  for (const int32_t v : header) {
    const int64_t magnitude = v < 0 ? -int64_t{v} : int64_t{v};
    if (magnitude >= kLlama2cPlausibleMagnitude) return false;
  }
  return true;
}

// "F32", or "F16+F32" when matrices differ.
std::string WeightTypes(const LoadedModel& model) {
  std::set<std::string> names;
  const ModelWeights& w = model.weights();
  names.insert(std::string(kernels::DTypeName(w.token_embedding.dtype)));
  names.insert(std::string(kernels::DTypeName(w.output.dtype)));
  for (const LayerWeights& l : w.layers) {
    for (const kernels::WeightView* v :
         {&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_down, &l.w_up}) {
      names.insert(std::string(kernels::DTypeName(v->dtype)));
    }
  }
  return absl::StrJoin(names, "+");
}

}  // namespace

absl::StatusOr<std::unique_ptr<LoadedModel>> LoadModel(const std::string& model_path,
                                                       const std::string& tokenizer_path,
                                                       bool ids_only_vocabulary) {
  KVSERVE_ASSIGN_OR_RETURN(MappedFile file, MappedFile::Open(model_path));
  if (file.size() < kLlama2cHeaderBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        model_path, ": ", file.size(), " bytes is too small for a model file (a GGUF file or a ",
        "llama2.c checkpoint takes at least ", kLlama2cHeaderBytes, " bytes)"));
  }
  std::unique_ptr<LoadedModel> model;
  if (std::memcmp(file.data(), "GGUF", 4) == 0) {
    if (!tokenizer_path.empty()) {
      spdlog::warn("{}: a GGUF file carries its own vocabulary; ignoring the tokenizer {}",
                   model_path, tokenizer_path);
    }
    KVSERVE_ASSIGN_OR_RETURN(GgufFile gguf, GgufFile::Parse(std::move(file)));
    KVSERVE_ASSIGN_OR_RETURN(model, LoadGgufModel(std::move(gguf), ids_only_vocabulary));
  } else if (LooksLikeLlama2c(file)) {
    KVSERVE_ASSIGN_OR_RETURN(model, LoadLlama2cModel(std::move(file), tokenizer_path));
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        model_path, ": unknown model format: not GGUF (the file does not start with \"GGUF\") ",
        "and not a llama2.c checkpoint (its first 28 bytes are not 7 plausible int32 header ",
        "values)"));
  }
  const ModelConfig& c = model->config();
  spdlog::info(
      "loaded {} model '{}' from {}: {}, dim {}, hidden {}, {} layers, {} heads ({} KV, head_dim "
      "{}), vocab {}, context {}, {} classifier, weights {}",
      model->file_format(), c.name, model_path, c.architecture, c.dim, c.hidden_dim, c.num_layers,
      c.num_heads, c.num_kv_heads, c.head_dim, c.vocab_size, c.context_length,
      c.tied_classifier ? "tied" : "separate", WeightTypes(*model));
  return model;
}

}  // namespace kvserve::engine
