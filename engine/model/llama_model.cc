#include "engine/model/llama_model.h"

#include <cmath>

#include "absl/strings/str_format.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/paged_attention.h"

namespace kvserve::engine {

namespace cpu = kernels::cpu;

LlamaModel::LlamaModel(const LoadedModel& model, kernels::ThreadPool* pool)
    : model_(model), pool_(pool) {}

KvGeometry LlamaModel::KvGeometryFor(int block_size) const {
  const ModelConfig& c = model_.config();
  return KvGeometry{c.num_layers, c.num_kv_heads, c.head_dim, block_size};
}

void LlamaModel::EnsureScratch(int64_t n) {
  if (n <= capacity_) return;
  const ModelConfig& c = model_.config();
  capacity_ = std::max<int64_t>(n, capacity_ * 2);
  const int64_t q_dim = static_cast<int64_t>(c.num_heads) * c.head_dim;
  x_.resize(capacity_ * c.dim);
  xb_.resize(capacity_ * std::max<int64_t>(c.dim, q_dim));
  q_.resize(capacity_ * q_dim);
  k_.resize(capacity_ * c.kv_dim());
  v_.resize(capacity_ * c.kv_dim());
  att_.resize(capacity_ * q_dim);
  gate_.resize(capacity_ * c.hidden_dim);
  up_.resize(capacity_ * c.hidden_dim);
  slot_block_.resize(capacity_);
  slot_offset_.resize(capacity_);
  kv_len_.resize(capacity_);
}

absl::Status LlamaModel::Forward(const ForwardBatch& batch, const BlockPool& kv, float* logits) {
  const ModelConfig& c = model_.config();
  const ModelWeights& w = model_.weights();
  const int64_t n = batch.num_tokens();
  if (n == 0) return absl::OkStatus();
  if (static_cast<int64_t>(batch.positions.size()) != n ||
      static_cast<int64_t>(batch.seq.size()) != n ||
      static_cast<int64_t>(batch.kv_slot.size()) != n) {
    return absl::InvalidArgumentError("forward batch: per-token vectors differ in length");
  }
  const int block_size = kv.geometry().block_size;
  EnsureScratch(n);
  for (int64_t t = 0; t < n; ++t) {
    const int32_t id = batch.tokens[t];
    if (id < 0 || id >= c.vocab_size) {
      return absl::InvalidArgumentError(
          absl::StrFormat("token id %d at batch index %d is outside the vocabulary [0, %d)", id, t,
                          c.vocab_size));
    }
    const int32_t s = batch.seq[t];
    if (s < 0 || s >= static_cast<int32_t>(batch.block_tables.size())) {
      return absl::InvalidArgumentError(absl::StrFormat("batch token %d: bad sequence %d", t, s));
    }
    const int32_t slot = batch.kv_slot[t];
    if (slot < 0) return absl::InvalidArgumentError("negative kv slot");
    slot_block_[t] = batch.block_tables[s][slot / block_size];
    slot_offset_[t] = slot % block_size;
    kv_len_[t] = slot + 1;
  }

  const int64_t dim = c.dim;
  const int64_t hidden = c.hidden_dim;
  float* x = x_.data();
  cpu::EmbeddingGather(w.token_embedding, batch.tokens.data(), n, x);

  cpu::AttentionBatch ab;
  ab.num_tokens = n;
  ab.num_heads = c.num_heads;
  ab.q = q_.data();
  ab.out = att_.data();
  ab.token_seq = batch.seq.data();
  ab.token_kv_len = kv_len_.data();
  ab.seq_block_tables = batch.block_tables.data();
  ab.scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  if (!batch.seq_scores.empty()) {
    if (batch.seq_scores.size() != batch.block_tables.size()) {
      return absl::InvalidArgumentError(
          "forward batch: seq_scores must have one entry per sequence");
    }
    const size_t ns = batch.seq_scores.size();
    if ((!batch.seq_score_layer_stride.empty() && batch.seq_score_layer_stride.size() != ns) ||
        (!batch.seq_score_head_stride.empty() && batch.seq_score_head_stride.size() != ns)) {
      return absl::InvalidArgumentError(
          "forward batch: score strides must have one entry per sequence");
    }
    if (!batch.seq_score_head_stride.empty()) {
      ab.seq_score_head_stride = batch.seq_score_head_stride.data();
    }
    layer_scores_.assign(batch.seq_scores.begin(), batch.seq_scores.end());
    ab.seq_scores = layer_scores_.data();
  }

  for (int l = 0; l < c.num_layers; ++l) {
    const LayerWeights& lw = w.layers[l];
    const kernels::PagedKvLayerView view = kv.LayerView(l);
    // Attention block.
    cpu::RmsNorm(x, lw.attn_norm, n, dim, c.rms_norm_eps, xb_.data());
    cpu::MatMul(xb_.data(), n, lw.wq, q_.data(), pool_);
    cpu::MatMul(xb_.data(), n, lw.wk, k_.data(), pool_);
    cpu::MatMul(xb_.data(), n, lw.wv, v_.data(), pool_);
    cpu::RopeAdjacentPairs(q_.data(), batch.positions.data(), n, c.num_heads, c.head_dim,
                           c.rope_freq_base);
    cpu::RopeAdjacentPairs(k_.data(), batch.positions.data(), n, c.num_kv_heads, c.head_dim,
                           c.rope_freq_base);
    if (!cpu::WriteKv(k_.data(), v_.data(), n, slot_block_.data(), slot_offset_.data(), view)) {
      return absl::InternalError(
          absl::StrFormat("non-finite or out-of-range K/V values in layer %d", l));
    }
    if (!batch.seq_score_layer_stride.empty()) {
      for (size_t s = 0; s < layer_scores_.size(); ++s) {
        if (batch.seq_scores[s] != nullptr) {
          layer_scores_[s] = batch.seq_scores[s] + l * batch.seq_score_layer_stride[s];
        }
      }
    }
    cpu::PagedAttention(ab, view, pool_);
    cpu::MatMul(att_.data(), n, lw.wo, xb_.data(), pool_);
    cpu::AddInPlace(x, xb_.data(), n * dim);
    // Feed-forward block.
    cpu::RmsNorm(x, lw.ffn_norm, n, dim, c.rms_norm_eps, xb_.data());
    cpu::MatMul(xb_.data(), n, lw.w_gate, gate_.data(), pool_);
    cpu::MatMul(xb_.data(), n, lw.w_up, up_.data(), pool_);
    cpu::SwiGlu(gate_.data(), up_.data(), n * hidden, gate_.data());
    cpu::MatMul(gate_.data(), n, lw.w_down, xb_.data(), pool_);
    cpu::AddInPlace(x, xb_.data(), n * dim);
  }

  // Classifier for the requested rows only.
  const int64_t rows = static_cast<int64_t>(batch.logits_rows.size());
  if (rows == 0) return absl::OkStatus();
  for (int64_t r = 0; r < rows; ++r) {
    const int32_t t = batch.logits_rows[r];
    if (t < 0 || t >= n) return absl::InvalidArgumentError("logits row outside the batch");
    cpu::RmsNorm(x + t * dim, w.final_norm, 1, dim, c.rms_norm_eps, xb_.data() + r * dim);
  }
  cpu::MatMul(xb_.data(), rows, w.output, logits, pool_);
  return absl::OkStatus();
}

}  // namespace kvserve::engine
