// A loaded decoder-only transformer of the Llama family: hyper-parameters, weight views and
// vocabulary. One description covers every architecture served (GGUF general.architecture
// `llama`, `qwen2`, `qwen3`, `phi3`): they differ only in the optional parts below (q/k/v
// biases, per-head q/k norms, the rope pairing, rope frequency factors); fused tensors (Phi-3's
// attn_qkv and gate+up ffn_up) are split into row ranges at load, without copying.
//
// Weights are views into a memory-mapped file: F32, F16, BF16 and the block-quantized types of
// kernels/weight_formats.h are used in place (norm vectors of other types are converted to F32). A
// LoadedModel is immutable after loading and safe to share between threads.
#ifndef KVSERVE_ENGINE_MODEL_MODEL_H_
#define KVSERVE_ENGINE_MODEL_MODEL_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "engine/tokenizer/vocabulary.h"
#include "kernels/backend.h"
#include "kernels/dtype.h"
#include "kernels/rope_style.h"

namespace kvserve::engine {

struct ModelConfig {
  std::string architecture = "llama";
  std::string name;    // general.name, or the file's stem
  int dim = 0;         // embedding width
  int hidden_dim = 0;  // feed-forward width
  int num_layers = 0;
  int num_heads = 0;     // query heads
  int num_kv_heads = 0;  // key/value heads (GQA when < num_heads)
  int head_dim = 0;      // dim / num_heads
  int vocab_size = 0;
  int context_length = 0;  // tokens the model was trained for (or the file declares)
  float rms_norm_eps = 1e-5f;
  float rope_freq_base = 10000.0f;
  float rope_freq_scale = 1.0f;   // linear rope scaling: 1 / rope.scaling.factor
  float rope_attn_factor = 1.0f;  // cos and sin scaled by this (Phi-3 LongRoPE)
  kernels::RopeStyle rope_style = kernels::RopeStyle::kAdjacentPairs;
  bool tied_classifier = false;  // output projection shares the token embedding

  int kv_dim() const { return num_kv_heads * head_dim; }
};

struct LayerWeights {
  const float* attn_norm = nullptr;  // [dim]
  kernels::WeightView wq;            // [num_heads * head_dim, dim]
  kernels::WeightView wk;            // [num_kv_heads * head_dim, dim]
  kernels::WeightView wv;            // [num_kv_heads * head_dim, dim]
  kernels::WeightView wo;            // [dim, num_heads * head_dim]
  const float* ffn_norm = nullptr;   // [dim]
  kernels::WeightView w_gate;        // [hidden_dim, dim]   (llama2.c w1)
  kernels::WeightView w_down;        // [dim, hidden_dim]   (llama2.c w2)
  kernels::WeightView w_up;          // [hidden_dim, dim]   (llama2.c w3)
  // Optional (null when the architecture has none):
  const float* bq = nullptr;      // [num_heads * head_dim] query bias (Qwen2)
  const float* bk = nullptr;      // [kv_dim] key bias
  const float* bv = nullptr;      // [kv_dim] value bias
  const float* q_norm = nullptr;  // [head_dim] RMSNorm of each query head (Qwen3)
  const float* k_norm = nullptr;  // [head_dim] RMSNorm of each key head
};

struct ModelWeights {
  kernels::WeightView token_embedding;  // [vocab_size, dim]
  std::vector<LayerWeights> layers;     // [num_layers]
  const float* final_norm = nullptr;    // [dim]
  kernels::WeightView output;           // [vocab_size, dim] (== token_embedding when tied)
  // [head_dim / 2] (rope_freqs.weight, or Phi-3's rope_factors_short/long), or none.
  const float* rope_freq_factors = nullptr;
};

class LoadedModel {
 public:
  virtual ~LoadedModel();
  const ModelConfig& config() const { return config_; }
  // The weight views. After PreparedWeights for a host-memory backend, each dense matrix that
  // backend repacked has `panels` set to the repacked copy and `data` null: the file's copy was
  // released (see PreparedWeights).
  const ModelWeights& weights() const { return weights_; }

  // The weights with every matrix prepared by `backend` (Backend::PrepareWeight: the CPU packs
  // dense matrices into MatMul panels; quantized ones are used in place), prepared on the first
  // call and shared by every later caller whose backend has the same prepared_weight_layout().
  // For a host-memory backend the file's copy of each repacked matrix is then released, so that
  // the weights are held once (the embedding table, when tied to the classifier, is gathered
  // from the panels); a later call for another layout is then a fatal error (load the model
  // again). Device backends: every tensor (matrices, norms, biases, rope factors) is uploaded into
  // one allocation of that backend's memory, freed through it when the model is destroyed; such a
  // backend must outlive the model, and the host copy stays. Thread-safe; call it before
  // sharing weights() between threads.
  std::shared_ptr<const ModelWeights> PreparedWeights(kernels::Backend* backend) const;
  // Blocks until the weights prepared so far are in huge pages: PreparedWeights collapses them
  // in the background (engine/common/huge_pages.h). For benchmarks that time decode.
  void WaitForHugePages() const;
  const Vocabulary& vocab() const { return vocab_; }
  const std::string& path() const { return path_; }
  // "gguf" or "llama2c".
  const std::string& file_format() const { return file_format_; }

 protected:
  LoadedModel() = default;
  // Returns the memory of [p, p + n) (whole pages inside it) when it is part of a file this model
  // read and owns; the bytes read as zeros afterwards. Default: nothing.
  virtual int64_t ReleaseFileBytes(const void* p, int64_t n) const { return 0; }
  // Starts collapsing the file this model read into huge pages (MappedFile::StartHugePages),
  // once its weights are prepared and the repacked ranges released. Default: nothing.
  virtual void StartFileHugePages() const {}
  virtual void WaitForFileHugePages() const {}

  ModelConfig config_;
  mutable ModelWeights weights_;  // views updated once by PreparedWeights (see weights())
  Vocabulary vocab_;
  std::string path_;
  std::string file_format_;

 private:
  struct Prepared;
  // PreparedWeights for a device backend: every tensor copied into one allocation of its memory.
  void UploadToDevice(kernels::Backend* backend, Prepared& prepared) const;
  mutable absl::Mutex prepared_mu_;
  mutable std::vector<std::shared_ptr<Prepared>> prepared_ ABSL_GUARDED_BY(prepared_mu_);
  mutable bool sources_released_ ABSL_GUARDED_BY(prepared_mu_) = false;
};

// Loads a model file, detecting the format by its contents:
//  * GGUF v3 (magic "GGUF"), architecture `llama`, `qwen2`, `qwen3` or `phi3`, tensors F32 / F16 /
//  BF16 / Q4_0 / Q4_1 / Q5_0 /
//    Q5_1 / Q8_0 / Q2_K..Q6_K, vocabulary from tokenizer.ggml.* (model "llama"); `tokenizer_path`
//    must be empty or is ignored with a warning. With `ids_only_vocabulary`, a vocabulary whose
//    tokenizer model is not supported still loads (its token strings, no merges or scores) so that
//    the model can score and generate token ids; the tokenizer built from it is not usable.
//  * llama2.c checkpoint (.bin, 7 int32 header); vocabulary from `tokenizer_path`, or when empty
//    from tok<vocab_size>.bin or tokenizer.bin in the model's directory.
// Errors are InvalidArgument / NotFound naming the file and the tensor, key or byte offset.
absl::StatusOr<std::unique_ptr<LoadedModel>> LoadModel(const std::string& model_path,
                                                       const std::string& tokenizer_path = "",
                                                       bool ids_only_vocabulary = false);

}  // namespace kvserve::engine

#endif  // KVSERVE_ENGINE_MODEL_MODEL_H_
