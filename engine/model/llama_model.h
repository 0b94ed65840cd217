// The Llama-family forward pass over the paged KV cache, every op through a kernels::Backend
// (kernels/backend.h; the CPU backend by default).
//
// Forward() runs one step for a ForwardBatch: embeds the tokens, and for every layer computes
// RMSNorm -> Q/K/V projections (+ biases, then per-head Q/K RMSNorm where the model has them)
// -> RoPE (adjacent or NeoX pairs) -> K/V written into their paged slots (in each block's
// format) -> paged attention (GQA, causal by kv slot) -> output projection + residual ->
// RMSNorm -> SwiGLU feed-forward + residual; then the final norm and the classifier for the rows
// in logits_rows only.
//
// Threads: a batch of several sequences is split into ranges of whole sequences of about equal
// cost, and each thread of the pool runs its range through all layers with single-threaded
// kernels (one hand-off per step); a batch that cannot be split evenly (one sequence, one long
// prompt) runs its kernels on the pool instead. A range reads only the KV its own sequences
// write: a block written in a step belongs to one sequence (shared blocks are copy-on-write).
//
// Batch invariance: the matrices are packed once into panels (kernels::cpu::PackWeightPanels,
// through LoadedModel::PreparedWeights: shared by every runner of the model, the file's copy
// released),
// whose MatMul sums every output in one fixed order, and attention and the other operators
// compute each token from its own row and its sequence's KV only; so a token's logits are
// bitwise the same whatever else is in the batch and however its prompt was chunked.
//
// Backend: a host-memory backend (Backend::host_memory(), the CPU) runs on host scratch and a
// host pool, and may be called from several threads at once. A device backend runs the same layer
// loop on device scratch over a pool whose blocks are its memory (BlockPool with that backend):
// each step uploads the token data, block tables and (when they changed) the pool's arrays,
// and copies the logits back (ForwardOnDevice); attention scores (token eviction) and lowrank
// blocks are refused there. A pool whose memory does not match the backend's is refused with
// FailedPrecondition. The weights are prepared (Backend::PrepareWeight; for a device, uploaded)
// once per model and backend layout (LoadedModel::PreparedWeights), by the first runner
// constructed.
//
// Thread-safety: one Forward at a time per LlamaModel (it owns scratch buffers). The LoadedModel
// and the backend must outlive it. The pool is only read through layer views; the caller
// allocated the blocks.
#ifndef KVSERVE_ENGINE_MODEL_LLAMA_MODEL_H_
#define KVSERVE_ENGINE_MODEL_LLAMA_MODEL_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "engine/kv/block_pool.h"
#include "engine/model/forward_batch.h"
#include "engine/model/model.h"
#include "kernels/backend.h"
#include "kernels/cpu/thread_pool.h"

namespace kvserve::engine {

class LlamaModel {
 public:
  // `pool` may be null (single-threaded). `backend` null: kernels::DefaultCpuBackend().
  LlamaModel(const LoadedModel& model, kernels::ThreadPool* pool,
             kernels::Backend* backend = nullptr);
  LlamaModel(const LlamaModel&) = delete;
  LlamaModel& operator=(const LlamaModel&) = delete;

  const ModelConfig& config() const { return model_.config(); }
  const LoadedModel& loaded() const { return model_; }
  kernels::Backend* backend() const { return backend_; }
  int32_t bos_id() const { return model_.vocab().bos_id; }
  int32_t eos_id() const { return model_.vocab().eos_id; }

  // Geometry of the KV cache this model needs, for a given block size.
  KvGeometry KvGeometryFor(int block_size) const;

  // logits: [batch.logits_rows.size(), vocab_size], written row by row.
  // InvalidArgument for an out-of-range token id or an inconsistent batch.
  absl::Status Forward(const ForwardBatch& batch, BlockPool& kv, float* logits);

 private:
  // A step is split into at most this many ranges of whole sequences, one per thread.
  static constexpr int kMaxParts = 64;
  // Fewer tokens per range than this leave the matmuls too little reuse of each weight.
  static constexpr int64_t kMinTokensPerPart = 4;

  // Where a step's buffers are: the host scratch below, or the device scratch.
  struct StepBuffers {
    float* x = nullptr;  // [n, dim]
    float* xb = nullptr;
    float* q = nullptr;
    float* k = nullptr;
    float* v = nullptr;
    float* att = nullptr;
    float* gate = nullptr;
    float* up = nullptr;
    float* rope = nullptr;
    const int32_t* tokens = nullptr;  // [n] each
    const int32_t* positions = nullptr;
    const int32_t* seq = nullptr;
    const int32_t* slot_block = nullptr;
    const int32_t* slot_offset = nullptr;
    const int32_t* kv_len = nullptr;
    const int32_t* const* block_tables = nullptr;  // [sequences]
    int max_kv_len = 0;                            // host value
    bool scores = false;  // attention scores accumulated (host only: layer_scores_)
    const kernels::PagedKvLayerView* views = nullptr;  // [num_layers]
    float* final_rows = nullptr;  // device only: [logits rows, dim], then the logits
    float* logits = nullptr;
    bool whole_blocks = false;  // device only: whole_ holds blocks this step writes whole
  };
  // Device only: the blocks a step writes whole (their layout has a format that is not written
  // token by token). Their rows go to fp32 staging regions through WriteKv and are then encoded
  // into the block by Backend::ConvertKvRegions, layer by layer, as the host's WriteKv encodes a
  // whole block.
  struct WholeBlocks {
    std::vector<int64_t> first_token;      // [runs]: the run's first token in the batch
    std::vector<BlockId> block;            // [runs]
    const int32_t* slot_block = nullptr;   // device [runs * block_size]: the run's staging index
    const int32_t* slot_offset = nullptr;  // device [runs * block_size]: 0 .. block_size - 1
    kernels::PagedKvLayerView staging;     // device arrays: [runs] fp32 staging blocks
    int64_t region_bytes = 0;              // of one fp32 K or V region
  };
  // One allocation of the backend's memory, regrown (not preserved) on demand.
  struct DeviceBuffer {
    ~DeviceBuffer();
    // False when the backend cannot allocate `need` bytes.
    bool Reserve(kernels::Backend* be, int64_t need);
    kernels::Backend* backend = nullptr;
    void* data = nullptr;
    int64_t bytes = 0;
  };

  void EnsureScratch(int64_t n);
  // Forward for a device backend: uploads the step's integers, block tables and (when they
  // changed) the pool's block arrays, runs the layers and the classifier on the device and copies
  // the logits back.
  absl::Status ForwardOnDevice(const ForwardBatch& batch, BlockPool& kv, float* logits);
  absl::Status UploadPoolViews(BlockPool& kv);
  // The host path's buffers for the mapped batch (the pool's layer views included).
  StepBuffers HostStepBuffers(const ForwardBatch& batch, BlockPool& kv);
  // Uploads the step's integers and block tables into the device scratch (grown as needed) and
  // lays out its activations there.
  absl::StatusOr<StepBuffers> StageOnDevice(const ForwardBatch& batch, const BlockPool& kv);
  // Fills staging_ with the per-token integers and then each sequence's block table (the blocks
  // the step reads), table_at_ with where each table starts.
  void FillStaging(const ForwardBatch& batch, const BlockPool& kv);
  // Finds the runs of whole_ among the batch's n tokens (InvalidArgument when a block that must be
  // written whole is not) and appends their staging slots to staging_.
  absl::Status PlanWholeBlocks(const BlockPool& kv, int64_t n);
  // Points whole_'s arrays into the device scratch (the staging slots at `slots`, uploaded with
  // staging_) and uploads the staging view; false when the device is out of memory.
  bool PlaceWholeBlocks(const int32_t* slots);
  // After layer `layer`'s WriteKv: the whole blocks' rows of that layer through staging.
  absl::Status WriteWholeBlocks(int layer, const float* k, const float* v,
                                const kernels::ExecContext& ctx);
  // Checks the batch's token ids, sequences, slots and score tables, sizes the scratch for it and
  // fills the per-token KV slot mapping (slot_block_, slot_offset_, kv_len_) and layer_scores_.
  absl::Status MapBatch(const ForwardBatch& batch, const BlockPool& kv);
  // Points layer_scores_ of the sequences of tokens [t0, t1) at `layer`'s rows (when the batch
  // asks for per-layer scores).
  void PointLayerScores(const ForwardBatch& batch, int layer, int64_t t0, int64_t t1);
  // Tokens [t0, t1) of the batch through every layer (scratch rows [t0, t1)), kernels on `pool`.
  // InternalError when a K/V value cannot be stored (non-finite).
  absl::Status RunLayers(const StepBuffers& b, const ForwardBatch& batch, int64_t t0, int64_t t1,
                         kernels::ThreadPool* pool);
  // Q, K and V of n normed rows xb: projections, biases and per-head norms where the model has
  // them, and the rotary embedding of the step's table `rope`.
  void ProjectQkv(const LayerWeights& lw, const float* xb, int64_t n, const float* rope, float* q,
                  float* k, float* v, const kernels::ExecContext& ctx);
  // Splits the batch into ranges of whole sequences of about equal cost, one per thread:
  // returns the number of ranges P and cuts[0..P] (cuts[0] = 0, cuts[P] = n); 1 when the batch
  // is too small or cannot be split evenly (one long prompt), and then the kernels split.
  int SplitBySequence(const ForwardBatch& batch, int64_t* cuts);

  const LoadedModel& model_;
  kernels::ThreadPool* pool_;
  kernels::Backend* backend_;
  // The model's weights with every matrix prepared by the backend (the CPU: packed into MatMul
  // panels), so that each row of a batch is computed exactly as it would be alone.
  std::shared_ptr<const ModelWeights> prepared_;
  const ModelWeights& weights_;
  int64_t capacity_ = 0;
  // Scratch, [capacity_, width] each.
  std::vector<float> x_, xb_, q_, k_, v_, att_, gate_, up_;
  std::vector<float> final_;  // [logits rows, dim]: final-normed rows for the classifier
  std::vector<float> rope_;   // [capacity_, head_dim / 2, 2]: RopeTable of the step's positions
  std::vector<int32_t> slot_block_, slot_offset_, kv_len_;
  // SplitBySequence's scratch: last token of each sequence, prefix costs, allowed cuts.
  std::vector<int32_t> last_token_;
  std::vector<int64_t> cost_;
  std::vector<uint8_t> cut_ok_;
  std::vector<float*> layer_scores_;  // per sequence: where the current layer adds its scores
  int max_kv_len_ = 0;                // of the mapped batch
  std::vector<kernels::PagedKvLayerView> views_;  // [num_layers]: this step's (host or device)
  // Device backends only.
  DeviceBuffer device_scratch_;  // a step's integers, block-table pointers and activations
  DeviceBuffer device_views_;    // the pool's block pointers, layouts and regions
  bool views_uploaded_ = false;
  uint64_t uploaded_view_version_ = 0;
  int64_t uploaded_ids_ = -1;
  int uploaded_layouts_ = -1;
  std::vector<int32_t> staging_;            // host copy of what one step uploads
  std::vector<int32_t> table_len_;          // blocks of each sequence's table the step reads
  std::vector<const int32_t*> table_ptrs_;  // device addresses of the uploaded tables
  std::vector<int64_t> table_at_;           // where each table starts in staging_
  WholeBlocks whole_;
  int64_t whole_at_ = 0;                  // where whole_'s staging slots start in staging_
  DeviceBuffer device_whole_;             // fp32 staging blocks and the staging view's arrays
  const BlockPool* step_pool_ = nullptr;  // the pool of the step in flight (device path)
};

}  // namespace kvserve::engine

#endif  // KVSERVE_ENGINE_MODEL_LLAMA_MODEL_H_
