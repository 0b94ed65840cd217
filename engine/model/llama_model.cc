#include "engine/model/llama_model.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <string>

#include "absl/strings/str_format.h"
#include "engine/common/status_macros.h"

namespace kvserve::engine {

LlamaModel::LlamaModel(const LoadedModel& model, kernels::ThreadPool* pool,
                       kernels::Backend* backend)
    : model_(model),
      pool_(pool),
      backend_(backend != nullptr ? backend : kernels::DefaultCpuBackend()),
      prepared_(model.PreparedWeights(backend_)),
      weights_(*prepared_) {}

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
  rope_.resize(capacity_ * (c.head_dim / 2 * 2));
}

absl::Status LlamaModel::RunLayers(const StepBuffers& b, const ForwardBatch& batch, int64_t t0,
                                   int64_t t1, kernels::ThreadPool* pool) {
  const ModelConfig& c = model_.config();
  const ModelWeights& w = weights_;
  const int64_t n = t1 - t0;
  const int64_t dim = c.dim;
  const int64_t hidden = c.hidden_dim;
  const int64_t q_dim = static_cast<int64_t>(c.num_heads) * c.head_dim;
  const int64_t kv_dim = c.kv_dim();
  float* x = b.x + t0 * dim;
  float* xb = b.xb + t0 * std::max(dim, q_dim);
  float* q = b.q + t0 * q_dim;
  float* k = b.k + t0 * kv_dim;
  float* v = b.v + t0 * kv_dim;
  float* att = b.att + t0 * q_dim;
  float* gate = b.gate + t0 * hidden;
  float* up = b.up + t0 * hidden;
  const int32_t* positions = b.positions + t0;
  const int32_t* slot_block = b.slot_block + t0;
  const int32_t* slot_offset = b.slot_offset + t0;
  float* rope = b.rope + t0 * (c.head_dim / 2 * 2);
  kernels::Backend& be = *backend_;
  const kernels::ExecContext ctx{pool};
  be.RopeTable(positions, n,
               kernels::RopeParams{c.head_dim, c.rope_freq_base, c.rope_freq_scale,
                                   w.rope_freq_factors, c.rope_attn_factor},
               rope, ctx);
  be.EmbeddingGather(w.token_embedding, b.tokens + t0, n, x, ctx);

  kernels::AttentionBatch ab;
  ab.num_tokens = n;
  ab.num_heads = c.num_heads;
  ab.q = q;
  ab.out = att;
  ab.token_seq = b.seq + t0;
  ab.token_kv_len = b.kv_len + t0;
  ab.seq_block_tables = b.block_tables;
  ab.scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  ab.max_kv_len = b.max_kv_len;
  if (b.scores) {
    // layer_scores_ holds one pointer per sequence; a range writes only its own sequences'.
    ab.seq_scores = layer_scores_.data();
    if (!batch.seq_score_head_stride.empty()) {
      ab.seq_score_head_stride = batch.seq_score_head_stride.data();
    }
  }
  const kernels::KvWrite kv_write{k, v, n, slot_block, slot_offset};

  for (int l = 0; l < c.num_layers; ++l) {
    const LayerWeights& lw = w.layers[l];
    const kernels::PagedKvLayerView& view = b.views[l];
    // Attention block.
    be.RmsNorm(x, lw.attn_norm, n, dim, c.rms_norm_eps, xb, ctx);
    ProjectQkv(lw, xb, n, rope, q, k, v, ctx);
    if (!be.WriteKv(kv_write, view, ctx)) {
      return absl::InternalError(
          absl::StrFormat("non-finite or out-of-range K/V values in layer %d", l));
    }
    if (b.whole_blocks) KVSERVE_RETURN_IF_ERROR(WriteWholeBlocks(l, k, v, ctx));
    if (b.scores) PointLayerScores(batch, l, t0, t1);
    be.PagedAttention(ab, view, ctx);
    be.MatMul(att, n, lw.wo, xb, ctx);
    be.Add(x, xb, n * dim, ctx);
    // Feed-forward block.
    be.RmsNorm(x, lw.ffn_norm, n, dim, c.rms_norm_eps, xb, ctx);
    be.MatMul(xb, n, lw.w_gate, gate, ctx);
    be.MatMul(xb, n, lw.w_up, up, ctx);
    be.SwiGlu(gate, up, n * hidden, gate, ctx);
    be.MatMul(gate, n, lw.w_down, xb, ctx);
    be.Add(x, xb, n * dim, ctx);
  }
  return absl::OkStatus();
}

void LlamaModel::ProjectQkv(const LayerWeights& lw, const float* xb, int64_t n, const float* rope,
                            float* q, float* k, float* v, const kernels::ExecContext& ctx) {
  const ModelConfig& c = model_.config();
  kernels::Backend& be = *backend_;
  be.MatMul(xb, n, lw.wq, q, ctx);
  be.MatMul(xb, n, lw.wk, k, ctx);
  be.MatMul(xb, n, lw.wv, v, ctx);
  if (lw.bq != nullptr) be.AddBias(q, lw.bq, n, int64_t{c.num_heads} * c.head_dim, ctx);
  if (lw.bk != nullptr) be.AddBias(k, lw.bk, n, c.kv_dim(), ctx);
  if (lw.bv != nullptr) be.AddBias(v, lw.bv, n, c.kv_dim(), ctx);
  if (lw.q_norm != nullptr) {
    be.RmsNorm(q, lw.q_norm, n * c.num_heads, c.head_dim, c.rms_norm_eps, q, ctx);
  }
  if (lw.k_norm != nullptr) {
    be.RmsNorm(k, lw.k_norm, n * c.num_kv_heads, c.head_dim, c.rms_norm_eps, k, ctx);
  }
  be.Rope(q, rope, n, c.num_heads, c.head_dim, c.rope_style, ctx);
  be.Rope(k, rope, n, c.num_kv_heads, c.head_dim, c.rope_style, ctx);
}

void LlamaModel::PointLayerScores(const ForwardBatch& batch, int layer, int64_t t0, int64_t t1) {
  if (batch.seq_scores.empty() || batch.seq_score_layer_stride.empty()) return;
  // Scores per layer: this layer's rows of each of the range's sequences.
  for (int64_t t = t0; t < t1; ++t) {
    const int32_t s = batch.seq[t];
    if (batch.seq_scores[s] != nullptr) {
      layer_scores_[s] = batch.seq_scores[s] + layer * batch.seq_score_layer_stride[s];
    }
  }
}

absl::Status LlamaModel::MapBatch(const ForwardBatch& batch, const BlockPool& kv) {
  const ModelConfig& c = model_.config();
  const int64_t n = batch.num_tokens();
  const int block_size = kv.geometry().block_size;
  EnsureScratch(n);
  max_kv_len_ = 0;
  for (int64_t t = 0; t < n; ++t) {
    const int32_t id = batch.tokens[t];
    if (id < 0 || id >= c.vocab_size) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "token id %d at batch index %d is outside the vocabulary [0, %d)", id, t, c.vocab_size));
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
    max_kv_len_ = std::max(max_kv_len_, slot + 1);
  }

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
    layer_scores_.assign(batch.seq_scores.begin(), batch.seq_scores.end());
  }
  return absl::OkStatus();
}

LlamaModel::StepBuffers LlamaModel::HostStepBuffers(const ForwardBatch& batch, BlockPool& kv) {
  const int num_layers = model_.config().num_layers;
  StepBuffers b;
  b.x = x_.data();
  b.xb = xb_.data();
  b.q = q_.data();
  b.k = k_.data();
  b.v = v_.data();
  b.att = att_.data();
  b.gate = gate_.data();
  b.up = up_.data();
  b.rope = rope_.data();
  b.tokens = batch.tokens.data();
  b.positions = batch.positions.data();
  b.seq = batch.seq.data();
  b.slot_block = slot_block_.data();
  b.slot_offset = slot_offset_.data();
  b.kv_len = kv_len_.data();
  b.block_tables = batch.block_tables.data();
  b.max_kv_len = max_kv_len_;
  b.scores = !batch.seq_scores.empty();
  views_.resize(num_layers);
  for (int l = 0; l < num_layers; ++l) views_[l] = kv.LayerView(l);
  b.views = views_.data();
  return b;
}

absl::Status LlamaModel::Forward(const ForwardBatch& batch, BlockPool& kv, float* logits) {
  const ModelConfig& c = model_.config();
  const int64_t n = batch.num_tokens();
  if (n == 0) return absl::OkStatus();
  if (static_cast<int64_t>(batch.positions.size()) != n ||
      static_cast<int64_t>(batch.seq.size()) != n ||
      static_cast<int64_t>(batch.kv_slot.size()) != n) {
    return absl::InvalidArgumentError("forward batch: per-token vectors differ in length");
  }
  if (kv.host_memory() != backend_->host_memory()) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "the KV pool's blocks are %s memory but backend \"%s\" %s",
        kv.host_memory() ? "host" : "device", std::string(backend_->name()),
        backend_->host_memory() ? "reads host memory" : "reads its own device memory"));
  }
  if (absl::Status st = MapBatch(batch, kv); !st.ok()) return st;
  if (!backend_->host_memory()) return ForwardOnDevice(batch, kv, logits);
  const StepBuffers b = HostStepBuffers(batch, kv);

  // Logits rows are checked before anything runs. When they ascend (the usual order), each range
  // of sequences computes its own rows' logits.
  const int64_t rows = static_cast<int64_t>(batch.logits_rows.size());
  bool ascending = true;
  for (int64_t r = 0; r < rows; ++r) {
    const int32_t t = batch.logits_rows[r];
    if (t < 0 || t >= n) return absl::InvalidArgumentError("logits row outside the batch");
    if (r > 0 && t <= batch.logits_rows[r - 1]) ascending = false;
  }
  if (static_cast<int64_t>(final_.size()) < rows * c.dim) final_.resize(rows * c.dim);

  // Tokens [t0, t1) through every layer; sequences never straddle two such ranges that run at
  // once, so a range reads only KV it writes itself (or blocks nobody writes this step).
  auto run_layers = [&](int64_t t0, int64_t t1, kernels::ThreadPool* pool) {
    return RunLayers(b, batch, t0, t1, pool);
  };
  // The final norm and the classifier for logits rows [r0, r1).
  auto classify = [&](int64_t r0, int64_t r1, kernels::ThreadPool* pool) {
    if (r1 <= r0) return;
    const ModelWeights& w = weights_;
    const int64_t dim = c.dim;
    const kernels::ExecContext ctx{pool};
    for (int64_t r = r0; r < r1; ++r) {
      backend_->RmsNorm(x_.data() + batch.logits_rows[r] * dim, w.final_norm, 1, dim,
                        c.rms_norm_eps, final_.data() + r * dim, ctx);
    }
    backend_->MatMul(final_.data() + r0 * dim, r1 - r0, w.output, logits + r0 * w.output.rows, ctx);
  };
  int64_t cuts[kMaxParts + 1];
  const int parts = SplitBySequence(batch, cuts);
  if (parts <= 1) {
    if (absl::Status st = run_layers(0, n, pool_); !st.ok()) return st;
    classify(0, rows, pool_);
    return absl::OkStatus();
  }
  // Logits rows of each range (ascending rows only).
  int64_t row_cuts[kMaxParts + 1];
  for (int p = 0; ascending && p <= parts; ++p) {
    row_cuts[p] = std::lower_bound(batch.logits_rows.begin(), batch.logits_rows.end(), cuts[p]) -
                  batch.logits_rows.begin();
  }
  // One hand-off for the whole step instead of one per kernel: each thread runs its sequences
  // through all layers (and their logits) with single-threaded kernels.
  absl::Status part_status[kMaxParts];
  pool_->ParallelFor(parts, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      part_status[p] = run_layers(cuts[p], cuts[p + 1], nullptr);
      if (part_status[p].ok() && ascending) classify(row_cuts[p], row_cuts[p + 1], nullptr);
    }
  });
  for (int p = 0; p < parts; ++p) {
    if (!part_status[p].ok()) return part_status[p];
  }
  if (!ascending) classify(0, rows, pool_);
  return absl::OkStatus();
}

int LlamaModel::SplitBySequence(const ForwardBatch& batch, int64_t* cuts) {
  const int64_t n = batch.num_tokens();
  const int threads = pool_ == nullptr ? 1 : pool_->num_threads();
  const int parts = std::min({threads, kMaxParts, static_cast<int>(n / kMinTokensPerPart)});
  if (parts <= 1) return 1;
  const ModelConfig& c = model_.config();
  // Relative cost of a token: its weight multiply-adds plus its attention, per slot attended
  // 2 * num_heads * head_dim multiply-adds per layer, weighted 3x (attention reaches about a
  // third of the matmul's multiply-add rate).
  const int64_t dim = c.dim;
  const int64_t q_dim = static_cast<int64_t>(c.num_heads) * c.head_dim;
  const int64_t weight_macs =
      c.num_layers * (dim * (2 * q_dim + 2 * c.kv_dim()) + 3 * dim * c.hidden_dim);
  const int64_t slot_macs = int64_t{3} * 2 * q_dim * c.num_layers;
  // cut_ok[t]: no sequence has tokens both before t and at or after t.
  last_token_.assign(batch.block_tables.size(), -1);
  for (int64_t t = 0; t < n; ++t) last_token_[batch.seq[t]] = static_cast<int32_t>(t);
  cost_.resize(n + 1);
  cut_ok_.resize(n + 1);
  cost_[0] = 0;
  int64_t reach = -1;  // last token of any sequence seen so far
  for (int64_t t = 0; t < n; ++t) {
    cut_ok_[t] = reach < t;
    reach = std::max<int64_t>(reach, last_token_[batch.seq[t]]);
    cost_[t + 1] = cost_[t] + weight_macs + slot_macs * (batch.kv_slot[t] + 1);
  }
  const int64_t total = cost_[n];
  cuts[0] = 0;
  cuts[parts] = n;
  for (int p = 1; p < parts; ++p) {
    // The allowed cut nearest to an equal share, past the previous cut.
    const int64_t target = total / parts * p;
    int64_t best = -1;
    for (int64_t t = cuts[p - 1] + 1; t < n; ++t) {
      if (!cut_ok_[t]) continue;
      if (best < 0 || std::llabs(cost_[t] - target) < std::llabs(cost_[best] - target)) best = t;
      if (cost_[t] >= target) break;
    }
    if (best < 0) return 1;
    cuts[p] = best;
  }
  // A lopsided split (one long prompt) leaves a thread idle: split the kernels instead.
  for (int p = 0; p < parts; ++p) {
    if ((cost_[cuts[p + 1]] - cost_[cuts[p]]) * parts > total * 5 / 4) return 1;
  }
  return parts;
}

}  // namespace kvserve::engine

namespace kvserve::engine {

LlamaModel::DeviceBuffer::~DeviceBuffer() {
  if (backend != nullptr) backend->Free(data);
}

bool LlamaModel::DeviceBuffer::Reserve(kernels::Backend* be, int64_t need) {
  backend = be;
  if (need <= bytes) return true;
  backend->Free(data);
  bytes = std::max(need, bytes * 2);
  data = backend->Alloc(bytes);
  if (data == nullptr) bytes = 0;
  return data != nullptr;
}

absl::Status LlamaModel::UploadPoolViews(BlockPool& kv) {
  const int num_layers = model_.config().num_layers;
  const kernels::PagedKvLayerView host0 = kv.LayerView(0);
  const int64_t ids = kv.num_block_ids();
  const int layouts = kv.num_layouts();
  const bool fresh = views_uploaded_ && uploaded_view_version_ == kv.view_version() &&
                     uploaded_ids_ == ids && uploaded_layouts_ == layouts;
  if (!fresh) {
    // [block pointers][block layouts][regions, layer-major], each part 256-byte aligned.
    auto round = [](int64_t v) { return (v + 255) / 256 * 256; };
    const int64_t ptr_bytes = round(std::max<int64_t>(ids, 1) * sizeof(uint8_t*));
    const int64_t layout_bytes = round(std::max<int64_t>(ids, 1) * sizeof(uint16_t));
    const int64_t region_bytes =
        round(int64_t{num_layers} * layouts * static_cast<int64_t>(sizeof(kernels::KvLayerRegion)));
    if (!device_views_.Reserve(backend_, ptr_bytes + layout_bytes + region_bytes)) {
      return absl::ResourceExhaustedError(absl::StrFormat(
          "backend \"%s\": out of memory for the KV pool's block arrays", backend_->name()));
    }
    auto* base = static_cast<uint8_t*>(device_views_.data);
    if (ids > 0) {
      backend_->CopyIn(base, host0.block_data, ids * static_cast<int64_t>(sizeof(uint8_t*)));
      backend_->CopyIn(base + ptr_bytes, host0.block_layout,
                       ids * static_cast<int64_t>(sizeof(uint16_t)));
    }
    for (int l = 0; l < num_layers; ++l) {
      const kernels::PagedKvLayerView view = kv.LayerView(l);
      backend_->CopyIn(
          base + ptr_bytes + layout_bytes +
              int64_t{l} * layouts * static_cast<int64_t>(sizeof(kernels::KvLayerRegion)),
          view.regions, layouts * static_cast<int64_t>(sizeof(kernels::KvLayerRegion)));
    }
    views_.resize(num_layers);
    for (int l = 0; l < num_layers; ++l) {
      kernels::PagedKvLayerView& v = views_[l];
      v.block_data = reinterpret_cast<uint8_t* const*>(base);
      v.block_layout = reinterpret_cast<const uint16_t*>(base + ptr_bytes);
      v.regions = reinterpret_cast<const kernels::KvLayerRegion*>(base + ptr_bytes + layout_bytes) +
                  int64_t{l} * layouts;
      v.shape = host0.shape;
      v.key_basis = nullptr;
    }
    views_uploaded_ = true;
    uploaded_view_version_ = kv.view_version();
    uploaded_ids_ = ids;
    uploaded_layouts_ = layouts;
  }
  return absl::OkStatus();
}

void LlamaModel::FillStaging(const ForwardBatch& batch, const BlockPool& kv) {
  const int64_t n = batch.num_tokens();
  // Per-token integers and the block tables: one host staging array, one upload.
  const int block_size = kv.geometry().block_size;
  const int64_t num_seqs = static_cast<int64_t>(batch.block_tables.size());
  table_len_.assign(num_seqs, 0);
  for (int64_t t = 0; t < n; ++t) {
    const int32_t s = batch.seq[t];
    table_len_[s] = std::max(table_len_[s], batch.kv_slot[t] / block_size + 1);
  }
  staging_.clear();
  auto append = [&](const int32_t* p, int64_t count) {
    staging_.insert(staging_.end(), p, p + count);
  };
  append(batch.tokens.data(), n);
  append(batch.positions.data(), n);
  append(batch.seq.data(), n);
  append(slot_block_.data(), n);
  append(slot_offset_.data(), n);
  append(kv_len_.data(), n);
  table_at_.resize(num_seqs);
  for (int64_t s = 0; s < num_seqs; ++s) {
    table_at_[s] = static_cast<int64_t>(staging_.size());
    append(batch.block_tables[s], table_len_[s]);
  }
}

absl::StatusOr<LlamaModel::StepBuffers> LlamaModel::StageOnDevice(const ForwardBatch& batch,
                                                                  const BlockPool& kv) {
  const ModelConfig& c = model_.config();
  const int64_t n = batch.num_tokens();
  const int64_t rows = static_cast<int64_t>(batch.logits_rows.size());

  FillStaging(batch, kv);
  KVSERVE_RETURN_IF_ERROR(PlanWholeBlocks(kv, n));
  const int64_t num_seqs = static_cast<int64_t>(batch.block_tables.size());
  const int64_t int_bytes = (static_cast<int64_t>(staging_.size()) * 4 + 255) / 256 * 256;
  const int64_t ptr_bytes = (std::max<int64_t>(num_seqs, 1) * 8 + 255) / 256 * 256;

  // Float scratch: the host path's buffers for n tokens, the final-normed rows and the logits.
  const int64_t dim = c.dim;
  const int64_t q_dim = static_cast<int64_t>(c.num_heads) * c.head_dim;
  const int64_t widths[] = {dim,          std::max(dim, q_dim), q_dim,
                            c.kv_dim(),   c.kv_dim(),           q_dim,
                            c.hidden_dim, c.hidden_dim,         c.head_dim / 2 * 2};
  int64_t floats = 0;
  int64_t float_at[9];
  for (int i = 0; i < 9; ++i) {
    float_at[i] = floats;
    floats += (n * widths[i] + 63) / 64 * 64;
  }
  const int64_t final_at = floats;
  floats += (rows * dim + 63) / 64 * 64;
  const int64_t logits_at = floats;
  floats += rows * weights_.output.rows;
  if (!device_scratch_.Reserve(backend_, int_bytes + ptr_bytes + floats * 4)) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "backend \"%s\": out of memory for a %d-token step's activations", backend_->name(), n));
  }
  auto* base = static_cast<uint8_t*>(device_scratch_.data);
  auto* ints = reinterpret_cast<int32_t*>(base);
  auto* tables = reinterpret_cast<const int32_t**>(base + int_bytes);
  auto* f = reinterpret_cast<float*>(base + int_bytes + ptr_bytes);
  backend_->CopyIn(ints, staging_.data(), static_cast<int64_t>(staging_.size()) * 4);
  table_ptrs_.resize(std::max<int64_t>(num_seqs, 1));
  for (int64_t s = 0; s < num_seqs; ++s) table_ptrs_[s] = ints + table_at_[s];
  backend_->CopyIn(tables, table_ptrs_.data(), num_seqs * 8);

  StepBuffers b;
  b.x = f + float_at[0];
  b.xb = f + float_at[1];
  b.q = f + float_at[2];
  b.k = f + float_at[3];
  b.v = f + float_at[4];
  b.att = f + float_at[5];
  b.gate = f + float_at[6];
  b.up = f + float_at[7];
  b.rope = f + float_at[8];
  b.tokens = ints;
  b.positions = ints + n;
  b.seq = ints + 2 * n;
  b.slot_block = ints + 3 * n;
  b.slot_offset = ints + 4 * n;
  b.kv_len = ints + 5 * n;
  b.block_tables = tables;
  b.max_kv_len = max_kv_len_;
  b.views = views_.data();
  b.final_rows = f + final_at;
  b.logits = f + logits_at;
  b.whole_blocks = !whole_.block.empty();
  if (b.whole_blocks && !PlaceWholeBlocks(ints + whole_at_)) {
    return absl::ResourceExhaustedError(
        absl::StrFormat("backend \"%s\": out of memory staging %d whole KV blocks",
                        backend_->name(), whole_.block.size()));
  }
  return b;
}

absl::Status LlamaModel::PlanWholeBlocks(const BlockPool& kv, int64_t n) {
  whole_.first_token.clear();
  whole_.block.clear();
  const int bs = kv.geometry().block_size;
  auto written_whole = [&](BlockId id) {
    for (const kernels::KvLayerRegion& r : kv.layout(kv.layout_of(id)).regions) {
      if (!kernels::KvFormatTokenWritable(r.format)) return true;
    }
    return false;
  };
  for (int64_t t = 0; t < n;) {
    const BlockId id = slot_block_[t];
    if (!written_whole(id)) {
      ++t;
      continue;
    }
    // A whole-block format is written as one run: block_size tokens, offsets 0 .. block_size - 1.
    bool whole = t + bs <= n;
    for (int i = 0; whole && i < bs; ++i) {
      whole = slot_block_[t + i] == id && slot_offset_[t + i] == i;
    }
    if (!whole) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "batch token %d: KV block %d is in a format written whole, but the batch does not "
          "write its %d slots in one run",
          t, id, bs));
    }
    whole_.first_token.push_back(t);
    whole_.block.push_back(id);
    t += bs;
  }
  whole_at_ = static_cast<int64_t>(staging_.size());
  for (size_t j = 0; j < whole_.block.size(); ++j) {
    for (int i = 0; i < bs; ++i) staging_.push_back(static_cast<int32_t>(j));
  }
  for (size_t j = 0; j < whole_.block.size(); ++j) {
    for (int i = 0; i < bs; ++i) staging_.push_back(i);
  }
  return absl::OkStatus();
}

bool LlamaModel::PlaceWholeBlocks(const int32_t* slots) {
  const kernels::KvRegionShape shape = views_.front().shape;
  const int64_t runs = static_cast<int64_t>(whole_.block.size());
  whole_.slot_block = slots;
  whole_.slot_offset = slots + runs * shape.block_size;
  whole_.region_bytes =
      kernels::KvRegionBytes(kernels::KvFormat::kFp32, kernels::KvRole::kKey, shape);
  // [staging blocks: K then V region each][block pointers][layouts (zeros)][the fp32 region]
  const int64_t blocks_bytes = runs * 2 * whole_.region_bytes;
  const int64_t ptr_at = blocks_bytes;
  const int64_t layout_at = ptr_at + (runs * 8 + 255) / 256 * 256;
  const int64_t region_at = layout_at + (runs * 2 + 255) / 256 * 256;
  const int64_t need = region_at + static_cast<int64_t>(sizeof(kernels::KvLayerRegion));
  if (!device_whole_.Reserve(backend_, need)) return false;
  auto* base = static_cast<uint8_t*>(device_whole_.data);
  std::vector<uint8_t*> ptrs(static_cast<size_t>(runs));
  for (int64_t j = 0; j < runs; ++j) ptrs[j] = base + j * 2 * whole_.region_bytes;
  const std::vector<uint16_t> layouts(static_cast<size_t>(runs), 0);
  kernels::KvLayerRegion region;
  region.format = kernels::KvFormat::kFp32;
  region.k_offset = 0;
  region.v_offset = static_cast<uint32_t>(whole_.region_bytes);
  backend_->CopyIn(base + ptr_at, ptrs.data(), runs * 8);
  backend_->CopyIn(base + layout_at, layouts.data(), runs * 2);
  backend_->CopyIn(base + region_at, &region, sizeof(region));
  whole_.staging.block_data = reinterpret_cast<uint8_t* const*>(base + ptr_at);
  whole_.staging.block_layout = reinterpret_cast<const uint16_t*>(base + layout_at);
  whole_.staging.regions = reinterpret_cast<const kernels::KvLayerRegion*>(base + region_at);
  whole_.staging.shape = shape;
  whole_.staging.key_basis = nullptr;
  return true;
}

namespace {

// The staging regions of one layer whose blocks store it in `format`, and where they go.
struct FormatRegions {
  kernels::KvFormat format;
  std::vector<const uint8_t*> k_src, v_src;
  std::vector<uint8_t*> k_dst, v_dst;
};

}  // namespace

absl::Status LlamaModel::WriteWholeBlocks(int layer, const float* k, const float* v,
                                          const kernels::ExecContext& ctx) {
  const ModelConfig& c = model_.config();
  const BlockPool& kv = *step_pool_;
  const int bs = kv.geometry().block_size;
  const int64_t kv_dim = c.kv_dim();
  const int64_t runs = static_cast<int64_t>(whole_.block.size());
  auto* staging = static_cast<uint8_t*>(device_whole_.data);
  const std::string error =
      absl::StrFormat("non-finite or out-of-range K/V values in layer %d", layer);
  // Each run's rows of this layer into its fp32 staging block (token by token: fp32 is
  // token-writable), then, per format, every run's staging regions encoded into its block.
  std::vector<FormatRegions> groups;
  for (int64_t j = 0; j < runs; ++j) {
    const int64_t t = whole_.first_token[j];
    const kernels::KvWrite w{k + t * kv_dim, v + t * kv_dim, bs, whole_.slot_block + j * bs,
                             whole_.slot_offset + j * bs};
    if (!backend_->WriteKv(w, whole_.staging, ctx)) return absl::InternalError(error);
    const BlockId id = whole_.block[j];
    const kernels::KvLayerRegion& r = kv.layout(kv.layout_of(id)).regions[layer];
    if (kernels::KvFormatTokenWritable(r.format)) continue;  // WriteKv wrote it
    auto it = std::find_if(groups.begin(), groups.end(),
                           [&](const FormatRegions& g) { return g.format == r.format; });
    if (it == groups.end())
      it = groups.insert(groups.end(), FormatRegions{r.format, {}, {}, {}, {}});
    uint8_t* block = const_cast<uint8_t*>(kv.block_data(id));
    const uint8_t* src = staging + j * 2 * whole_.region_bytes;
    it->k_src.push_back(src);
    it->k_dst.push_back(block + r.k_offset);
    it->v_src.push_back(src + whole_.region_bytes);
    it->v_dst.push_back(block + r.v_offset);
  }
  const kernels::KvRegionShape shape = whole_.staging.shape;
  for (const FormatRegions& g : groups) {
    const auto count = static_cast<int64_t>(g.k_src.size());
    if (!backend_->ConvertKvRegions(kernels::KvFormat::kFp32, g.k_src.data(), g.format,
                                    g.k_dst.data(), kernels::KvRole::kKey, shape, bs, count, ctx) ||
        !backend_->ConvertKvRegions(kernels::KvFormat::kFp32, g.v_src.data(), g.format,
                                    g.v_dst.data(), kernels::KvRole::kValue, shape, bs, count,
                                    ctx)) {
      return absl::InternalError(error);
    }
  }
  return absl::OkStatus();
}

absl::Status LlamaModel::ForwardOnDevice(const ForwardBatch& batch, BlockPool& kv, float* logits) {
  const ModelConfig& c = model_.config();
  const std::string name(backend_->name());
  if (std::any_of(batch.seq_scores.begin(), batch.seq_scores.end(),
                  [](const float* p) { return p != nullptr; })) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "backend \"%s\" does not accumulate attention scores (token eviction); run token "
        "eviction on the cpu device",
        name));
  }
  for (int l = 0; l < c.num_layers; ++l) {
    if (kv.key_basis(l) != nullptr) {
      return absl::FailedPreconditionError(
          absl::StrFormat("backend \"%s\" does not read lowrank KV blocks", name));
    }
  }
  const int64_t n = batch.num_tokens();
  const int64_t rows = static_cast<int64_t>(batch.logits_rows.size());
  for (int64_t r = 0; r < rows; ++r) {
    const int32_t t = batch.logits_rows[r];
    if (t < 0 || t >= n) return absl::InvalidArgumentError("logits row outside the batch");
  }
  KVSERVE_RETURN_IF_ERROR(UploadPoolViews(kv));
  step_pool_ = &kv;
  KVSERVE_ASSIGN_OR_RETURN(const StepBuffers b, StageOnDevice(batch, kv));
  KVSERVE_RETURN_IF_ERROR(RunLayers(b, batch, 0, n, nullptr));
  const kernels::ExecContext ctx{nullptr};
  const int64_t dim = c.dim;
  float* final_rows = b.final_rows;
  float* device_logits = b.logits;
  for (int64_t r = 0; r < rows; ++r) {
    backend_->RmsNorm(b.x + batch.logits_rows[r] * dim, weights_.final_norm, 1, dim, c.rms_norm_eps,
                      final_rows + r * dim, ctx);
  }
  if (rows > 0) {
    backend_->MatMul(final_rows, rows, weights_.output, device_logits, ctx);
    backend_->CopyOut(logits, device_logits, rows * weights_.output.rows * 4);
  }
  std::string error;
  if (!backend_->Synchronize(&error)) {
    return absl::InternalError(
        absl::StrFormat("backend \"%s\": the forward step failed: %s", name, error));
  }
  return absl::OkStatus();
}

}  // namespace kvserve::engine
