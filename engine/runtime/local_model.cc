#include "engine/runtime/local_model.h"

#include <algorithm>
#include <fstream>
#include <sstream>
#include <vector>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "engine/common/status_macros.h"
#include "engine/runtime/lowrank_calibration.h"

namespace kvserve::engine {
namespace {

absl::StatusOr<std::vector<float>> LowrankBasis(const LocalModelOptions& options, LlamaModel& model,
                                                const Tokenizer& tokenizer) {
  const int head_dim = model.config().head_dim;
  if (options.kv_lowrank_rank < 1 || options.kv_lowrank_rank > head_dim) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "kv_cache.lowrank_rank: must be in [1, head_dim = %d] for the lowrank format "
        "(kv_cache.format, kv_cache.layer_formats), got %d",
        head_dim, options.kv_lowrank_rank));
  }
  if (options.kv_lowrank_text.empty()) {
    return absl::InvalidArgumentError(
        "kv_cache.lowrank_text: the lowrank format needs a calibration text file");
  }
  std::ifstream in(options.kv_lowrank_text, std::ios::binary);
  if (!in) {
    return absl::InvalidArgumentError(
        absl::StrFormat("kv_cache.lowrank_text: cannot read '%s'", options.kv_lowrank_text));
  }
  std::stringstream text;
  text << in.rdbuf();
  LowrankCalibrationOptions lo;
  lo.rank = options.kv_lowrank_rank;
  lo.block_size = options.block_size;
  return ComputeLowrankKeyBasis(model, tokenizer, text.str(), lo);
}

// The device backend named by engine.device ("cpu": none).
absl::StatusOr<std::unique_ptr<kernels::Backend>> OpenDevice(const std::string& name) {
  if (name == "cpu") return std::unique_ptr<kernels::Backend>();
  const std::vector<std::string> names = kernels::BackendNames();
  if (std::find(names.begin(), names.end(), name) == names.end()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "engine.device: unknown device \"%s\"; this build runs on: %s%s", name,
        absl::StrJoin(names, ", "),
        name == "cuda" ? " (it was built without CUDA: nvcc was not found at build time)" : ""));
  }
  std::string why;
  std::unique_ptr<kernels::Backend> backend = kernels::CreateBackend(name, &why);
  if (backend == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrFormat("engine.device: \"%s\" cannot run here: %s", name, why));
  }
  return backend;
}

// What a device backend cannot do yet, as errors naming the model's tensor type or the config
// key at fault.
absl::Status CheckDeviceSupport(const LocalModelOptions& options, const LoadedModel& model,
                                const kernels::Backend& device) {
  const std::string dev(device.name());
  const ModelWeights& w = model.weights();
  auto check_weight = [&](const kernels::WeightView& m, const std::string& what) -> absl::Status {
    if (device.SupportsWeight(m.dtype)) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrFormat(
        "engine.device: \"%s\" has no matrix kernels for %s weights (%s of %s); use an "
        "F16/BF16/F32 file or engine.device: cpu",
        dev, kernels::DTypeName(m.dtype), what, model.path()));
  };
  KVSERVE_RETURN_IF_ERROR(check_weight(w.token_embedding, "the token embedding"));
  KVSERVE_RETURN_IF_ERROR(check_weight(w.output, "the classifier"));
  for (size_t l = 0; l < w.layers.size(); ++l) {
    const LayerWeights& lw = w.layers[l];
    for (const kernels::WeightView* m :
         {&lw.wq, &lw.wk, &lw.wv, &lw.wo, &lw.w_gate, &lw.w_down, &lw.w_up}) {
      KVSERVE_RETURN_IF_ERROR(check_weight(*m, absl::StrFormat("a matrix of layer %d", l)));
    }
  }
  auto check_format = [&](kernels::KvFormat f, const std::string& key) -> absl::Status {
    if (device.SupportsKvRead(f) && (device.SupportsKvWrite(f) || device.SupportsKvConvert(f))) {
      return absl::OkStatus();
    }
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: engine.device \"%s\" cannot store %s blocks; use another format or engine.device: "
        "cpu",
        key, dev, kernels::KvFormatName(f)));
  };
  KVSERVE_RETURN_IF_ERROR(check_format(options.kv_format, "kv_cache.format"));
  for (const auto& [layer, format] : options.kv_layer_formats) {
    KVSERVE_RETURN_IF_ERROR(
        check_format(format, absl::StrFormat("kv_cache.layer_formats (layer %d)", layer)));
  }
  if (options.kv_recent_window > 0 || options.kv_sink_tokens > 0) {
    KVSERVE_RETURN_IF_ERROR(check_format(options.kv_window_format, "kv_cache.window_format"));
  }
  return absl::OkStatus();
}

// kv_cache.budget_mb 0 on a device: a share of its free memory (the weights already uploaded).
absl::StatusOr<int64_t> DeviceKvBudget(const kernels::Backend& device, double fraction) {
  const int64_t free_bytes = device.FreeMemoryBytes();
  if (free_bytes <= 0) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "engine.device: \"%s\" does not report its free memory; set kv_cache.budget_mb",
        device.name()));
  }
  const auto budget = static_cast<int64_t>(static_cast<double>(free_bytes) * fraction);
  if (budget <= 0) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "engine.device: \"%s\" has no free memory left for the KV pool after the weights",
        device.name()));
  }
  return budget;
}

}  // namespace

absl::StatusOr<std::unique_ptr<LocalModel>> LocalModel::Open(const LocalModelOptions& options) {
  if (options.block_size < 1 || options.block_size > 1024) {
    return absl::InvalidArgumentError(
        absl::StrFormat("block_size must be in [1, 1024], got %d", options.block_size));
  }
  if (options.kv_budget_bytes < 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("KV budget must be positive, got %d bytes", options.kv_budget_bytes));
  }
  if (options.max_batch_tokens < 1) {
    return absl::InvalidArgumentError("max_batch_tokens must be >= 1");
  }
  if (!(options.device_memory_fraction > 0 && options.device_memory_fraction <= 1)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("engine.device_memory_fraction: must be in (0, 1], got %g",
                        options.device_memory_fraction));
  }
  auto lm = std::unique_ptr<LocalModel>(new LocalModel());
  lm->options_ = options;
  KVSERVE_ASSIGN_OR_RETURN(lm->device_, OpenDevice(options.device));
  if (options.kv_budget_bytes == 0 && lm->device_ == nullptr) {
    return absl::InvalidArgumentError(
        "KV budget must be positive (0 = a share of free memory applies to devices only)");
  }
  KVSERVE_ASSIGN_OR_RETURN(lm->loaded_, LoadModel(options.model_path, options.tokenizer_path));
  if (lm->device_ != nullptr) {
    KVSERVE_RETURN_IF_ERROR(CheckDeviceSupport(options, *lm->loaded_, *lm->device_));
  }
  KVSERVE_ASSIGN_OR_RETURN(Tokenizer tokenizer, Tokenizer::Create(lm->loaded_->vocab()));
  lm->tokenizer_ = std::make_unique<Tokenizer>(std::move(tokenizer));
  lm->threads_ = std::make_unique<kernels::ThreadPool>(options.num_threads);
  lm->model_ = std::make_unique<LlamaModel>(*lm->loaded_, lm->threads_.get(), lm->device_.get());
  KvGeometry geometry = lm->model_->KvGeometryFor(options.block_size);
  bool lowrank = options.kv_format == kernels::KvFormat::kLowrank;
  for (const auto& [layer, format] : options.kv_layer_formats) {
    lowrank |= format == kernels::KvFormat::kLowrank;
  }
  std::vector<float> key_basis;
  if (lowrank) {
    KVSERVE_ASSIGN_OR_RETURN(key_basis, LowrankBasis(options, *lm->model_, *lm->tokenizer_));
    geometry.key_rank = options.kv_lowrank_rank;
  }
  int64_t budget = options.kv_budget_bytes;
  if (lm->device_ != nullptr && budget == 0) {
    KVSERVE_ASSIGN_OR_RETURN(budget, DeviceKvBudget(*lm->device_, options.device_memory_fraction));
  }
  lm->kv_pool_ = std::make_unique<BlockPool>(geometry, budget, lm->device_.get());
  if (lowrank) KVSERVE_RETURN_IF_ERROR(lm->kv_pool_->SetKeyBasis(std::move(key_basis)));
  KvCachePolicyConfig policy;
  policy.format = options.kv_format;
  policy.layer_formats = options.kv_layer_formats;
  policy.recent_window = options.kv_recent_window;
  policy.sink_tokens = options.kv_sink_tokens;
  policy.window_format = options.kv_window_format;
  KVSERVE_ASSIGN_OR_RETURN(lm->kv_policy_, KvCachePolicy::Create(lm->kv_pool_.get(), policy));
  lm->model_identity_ = options.model_path + "|" + lm->loaded_->config().name;
  if (options.prefix_cache) {
    KVSERVE_ASSIGN_OR_RETURN(PrefixHashAlgorithm hash,
                             ParsePrefixHashAlgorithm(options.prefix_hash));
    KVSERVE_ASSIGN_OR_RETURN(std::unique_ptr<BlockEvictionPolicy> eviction,
                             CreateBlockEvictionPolicy(options.block_eviction));
    PrefixIndexOptions po;
    po.block_size = options.block_size;
    po.hash = hash;
    KVSERVE_ASSIGN_OR_RETURN(lm->prefix_index_, PrefixIndex::Create(po, std::move(eviction)));
  }
  BatchGenerator::Options gen_options;
  gen_options.max_batch_tokens = options.max_batch_tokens;
  lm->generator_ = std::make_unique<BatchGenerator>(
      lm->model_.get(), lm->kv_pool_.get(), &lm->kv_policy_, lm->tokenizer_.get(), gen_options,
      lm->prefix_index_.get(), lm->model_identity_);
  return lm;
}

}  // namespace kvserve::engine
