#include "engine/runtime/local_model.h"

#include <fstream>
#include <sstream>
#include <vector>

#include "absl/strings/str_format.h"
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

}  // namespace

absl::StatusOr<std::unique_ptr<LocalModel>> LocalModel::Open(const LocalModelOptions& options) {
  if (options.block_size < 1 || options.block_size > 1024) {
    return absl::InvalidArgumentError(
        absl::StrFormat("block_size must be in [1, 1024], got %d", options.block_size));
  }
  if (options.kv_budget_bytes <= 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("KV budget must be positive, got %d bytes", options.kv_budget_bytes));
  }
  if (options.max_batch_tokens < 1) {
    return absl::InvalidArgumentError("max_batch_tokens must be >= 1");
  }
  auto lm = std::unique_ptr<LocalModel>(new LocalModel());
  lm->options_ = options;
  KVSERVE_ASSIGN_OR_RETURN(lm->loaded_, LoadModel(options.model_path, options.tokenizer_path));
  KVSERVE_ASSIGN_OR_RETURN(Tokenizer tokenizer, Tokenizer::Create(lm->loaded_->vocab()));
  lm->tokenizer_ = std::make_unique<Tokenizer>(std::move(tokenizer));
  lm->threads_ = std::make_unique<kernels::ThreadPool>(options.num_threads);
  lm->model_ = std::make_unique<LlamaModel>(*lm->loaded_, lm->threads_.get());
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
  lm->kv_pool_ = std::make_unique<BlockPool>(geometry, options.kv_budget_bytes);
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
