// Everything needed to run a model in this process: the loaded weights, the tokenizer, a thread
// pool, the forward pass, a KV block pool and the batch generator. The offline commands
// (generate, perplexity, benchmarks) and the server's engine are built from one of these.
//
// Thread-safety: the tokenizer and the loaded model are immutable and may be used from any
// thread; the forward pass, block pool and generator belong to one thread at a time.
#ifndef KVSERVE_ENGINE_RUNTIME_LOCAL_MODEL_H_
#define KVSERVE_ENGINE_RUNTIME_LOCAL_MODEL_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "engine/kv/block_pool.h"
#include "engine/kv/kv_cache_policy.h"
#include "engine/kv/prefix_index.h"
#include "engine/model/llama_model.h"
#include "engine/model/model.h"
#include "engine/runtime/batch_generator.h"
#include "engine/tokenizer/tokenizer.h"
#include "kernels/cpu/thread_pool.h"
#include "kernels/kv_format.h"

namespace kvserve::engine {

struct LocalModelOptions {
  std::string model_path;
  std::string tokenizer_path;  // llama2.c checkpoints only; empty = look beside the model
  kernels::KvFormat kv_format = kernels::KvFormat::kFp32;  // long-term format of every layer
  std::map<int, kernels::KvFormat> kv_layer_formats;       // per-layer overrides
  int32_t kv_recent_window = 0;                            // newest tokens kept in window format
  int32_t kv_sink_tokens = 0;                              // first tokens kept in window format
  kernels::KvFormat kv_window_format = kernels::KvFormat::kFp16;
  // lowrank layers (experimental): coefficients per key, and the calibration text file whose
  // keys define each layer's and KV head's basis (computed at start-up; see
  // engine/runtime/lowrank_calibration.h). Required when any layer is lowrank.
  int32_t kv_lowrank_rank = 0;
  std::string kv_lowrank_text;
  int64_t kv_budget_bytes = 256ll << 20;
  int block_size = 16;             // tokens per KV block
  int num_threads = 0;             // 0 = all online CPUs
  int64_t max_batch_tokens = 512;  // per forward step
  // Prefix reuse across requests (full blocks, chained hashes, verified hits).
  bool prefix_cache = true;
  // Where the forward pass and the KV pool run (YAML engine.device): "cpu", or a registered
  // device backend ("cuda" in builds with CUDA). On a device, the weights are uploaded once and
  // the pool's blocks are device memory; the formats written whole are encoded there
  // (Backend::ConvertKvRegions, demotion included); what works on block bytes on the host
  // (lowrank keys, token eviction) and weight types the device has no kernels for are refused
  // with an error naming the key or type. kv_budget_bytes 0 on a device: device_memory_fraction
  // of the device's free memory after the weights are uploaded.
  std::string device = "cpu";
  double device_memory_fraction = 0.85;
  std::string prefix_hash = "xxh3_128";  // xxh3_128 | xxh64 | sha256
  std::string block_eviction = "lru";    // lru | priority | slru
};

class LocalModel {
 public:
  // Loads the model and builds the rest. Errors name the file or the option at fault.
  static absl::StatusOr<std::unique_ptr<LocalModel>> Open(const LocalModelOptions& options);

  const LoadedModel& loaded() const { return *loaded_; }
  const ModelConfig& config() const { return loaded_->config(); }
  const Tokenizer& tokenizer() const { return *tokenizer_; }
  LlamaModel& model() { return *model_; }
  BlockPool& kv_pool() { return *kv_pool_; }
  // Layout new blocks are written in (see KvCachePolicy).
  LayoutId kv_layout() const { return kv_policy_.write_layout(); }
  const KvCachePolicy& kv_policy() const { return kv_policy_; }
  // Null when the prefix cache is off. Holds one pool reference per cached block.
  PrefixIndex* prefix_index() { return prefix_index_.get(); }
  // What the prefix index keys blocks with besides their tokens (model identity).
  const std::string& model_identity() const { return model_identity_; }
  // Blocks held by live sequences: the pool's used blocks minus cached blocks nobody uses.
  int64_t ActiveKvBlocks() const {
    return kv_pool_->used_blocks() - (prefix_index_ ? prefix_index_->idle_blocks() : 0);
  }
  BatchGenerator& generator() { return *generator_; }
  kernels::ThreadPool& threads() { return *threads_; }
  const LocalModelOptions& options() const { return options_; }
  // The backend the forward pass runs on (kernels::DefaultCpuBackend() for device "cpu").
  kernels::Backend* backend() const { return model_->backend(); }

 private:
  LocalModelOptions options_;
  // A device backend (null for "cpu"); declared first so that it is destroyed last, after the
  // pool's blocks and the uploaded weights it holds.
  std::unique_ptr<kernels::Backend> device_;
  std::unique_ptr<LoadedModel> loaded_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::unique_ptr<kernels::ThreadPool> threads_;
  std::unique_ptr<LlamaModel> model_;
  std::unique_ptr<BlockPool> kv_pool_;
  KvCachePolicy kv_policy_;
  std::unique_ptr<PrefixIndex> prefix_index_;
  std::string model_identity_;
  std::unique_ptr<BatchGenerator> generator_;
};

}  // namespace kvserve::engine

#endif  // KVSERVE_ENGINE_RUNTIME_LOCAL_MODEL_H_
