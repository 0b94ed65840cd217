#include "engine/model/sequence_scoring.h"

#include <algorithm>
#include <cmath>
#include <memory>

#include "absl/strings/str_cat.h"
#include "engine/common/status_macros.h"
#include "engine/kv/block_pool.h"
#include "engine/model/forward_batch.h"
#include "engine/model/llama_model.h"
#include "kernels/kv_format.h"

namespace kvserve::engine {
namespace {

constexpr int kBlockSize = 16;

// A single sequence's KV: enough FP32 blocks for `tokens` tokens.
struct SequenceKv {
  std::unique_ptr<BlockPool> pool;
  std::vector<BlockId> table;
};

absl::StatusOr<SequenceKv> MakeKv(const LlamaModel& model, int64_t tokens) {
  const KvGeometry g = model.KvGeometryFor(kBlockSize);
  const int64_t blocks = (tokens + kBlockSize - 1) / kBlockSize;
  // FP32 K and V per layer and slot, with room for alignment.
  const int64_t block_bytes =
      int64_t{2} * g.num_layers * g.num_kv_heads * g.head_dim * kBlockSize * 4 + 4096;
  SequenceKv kv;
  kv.pool = std::make_unique<BlockPool>(g, (blocks + 1) * block_bytes * 2);
  KVSERVE_ASSIGN_OR_RETURN(const LayoutId layout,
                           kv.pool->RegisterUniformLayout(kernels::KvFormat::kFp32));
  for (int64_t b = 0; b < blocks; ++b) {
    KVSERVE_ASSIGN_OR_RETURN(const BlockId id, kv.pool->Allocate(layout));
    kv.table.push_back(id);
  }
  return kv;
}

absl::Status CheckIds(const LoadedModel& model, absl::Span<const int32_t> ids, int64_t total) {
  const ModelConfig& c = model.config();
  if (total > c.context_length) {
    return absl::InvalidArgumentError(absl::StrCat(
        "sequence of ", total, " tokens exceeds the model's context of ", c.context_length));
  }
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= c.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("token id ", ids[i], " at index ", i,
                                                     " is outside the vocabulary [0, ",
                                                     c.vocab_size, ")"));
    }
  }
  return absl::OkStatus();
}

// Argmax (lowest id on ties) and the gap to the second-best logit.
void Top2(const float* logits, int64_t n, int32_t* top, float* margin) {
  int64_t best = 0;
  for (int64_t v = 1; v < n; ++v) {
    if (logits[v] > logits[best]) best = v;
  }
  float second = -INFINITY;
  for (int64_t v = 0; v < n; ++v) {
    if (v != best) second = std::max(second, logits[v]);
  }
  *top = static_cast<int32_t>(best);
  *margin = logits[best] - second;
}

}  // namespace

absl::StatusOr<SequenceScores> ScoreSequence(const LoadedModel& model,
                                             absl::Span<const int32_t> ids,
                                             kernels::ThreadPool* pool, int chunk_tokens) {
  if (ids.empty()) return absl::InvalidArgumentError("nothing to score: no token ids");
  KVSERVE_RETURN_IF_ERROR(CheckIds(model, ids, static_cast<int64_t>(ids.size())));
  LlamaModel lm(model, pool);
  KVSERVE_ASSIGN_OR_RETURN(SequenceKv kv, MakeKv(lm, static_cast<int64_t>(ids.size())));
  const int64_t vocab = model.config().vocab_size;
  const int64_t n = static_cast<int64_t>(ids.size());
  chunk_tokens = std::max(1, chunk_tokens);
  SequenceScores out;
  std::vector<float> logits;
  ForwardBatch batch;
  for (int64_t t0 = 0; t0 < n; t0 += chunk_tokens) {
    const int64_t t1 = std::min(n, t0 + chunk_tokens);
    batch.Clear();
    batch.block_tables.push_back(kv.table.data());
    for (int64_t t = t0; t < t1; ++t) {
      batch.Add(ids[t], static_cast<int32_t>(t), 0, static_cast<int32_t>(t), t + 1 < n);
    }
    logits.resize(batch.logits_rows.size() * vocab);
    KVSERVE_RETURN_IF_ERROR(lm.Forward(batch, *kv.pool, logits.data()));
    for (size_t r = 0; r < batch.logits_rows.size(); ++r) {
      const int64_t t = t0 + batch.logits_rows[r];
      const float* row = logits.data() + r * vocab;
      int32_t top;
      float margin;
      Top2(row, vocab, &top, &margin);
      double sum = 0;
      for (int64_t v = 0; v < vocab; ++v) sum += std::exp(static_cast<double>(row[v] - row[top]));
      const double log_z = static_cast<double>(row[top]) + std::log(sum);
      out.nll.push_back(log_z - row[ids[t + 1]]);
      out.top1.push_back(top);
      out.top1_margin.push_back(margin);
    }
  }
  double total = 0;
  for (double v : out.nll) total += v;
  out.mean_nll = out.nll.empty() ? 0.0 : total / static_cast<double>(out.nll.size());
  return out;
}

absl::StatusOr<GreedyResult> GreedyContinue(const LoadedModel& model,
                                            absl::Span<const int32_t> prompt, int steps,
                                            kernels::ThreadPool* pool) {
  if (prompt.empty()) return absl::InvalidArgumentError("greedy continuation of an empty prompt");
  const int64_t total = static_cast<int64_t>(prompt.size()) + steps;
  KVSERVE_RETURN_IF_ERROR(CheckIds(model, prompt, total));
  LlamaModel lm(model, pool);
  KVSERVE_ASSIGN_OR_RETURN(SequenceKv kv, MakeKv(lm, total));
  const int64_t vocab = model.config().vocab_size;
  std::vector<float> logits(vocab);
  ForwardBatch batch;
  batch.block_tables.push_back(kv.table.data());
  for (size_t t = 0; t < prompt.size(); ++t) {
    batch.Add(prompt[t], static_cast<int32_t>(t), 0, static_cast<int32_t>(t),
              t + 1 == prompt.size());
  }
  GreedyResult out;
  for (int s = 0; s < steps; ++s) {
    KVSERVE_RETURN_IF_ERROR(lm.Forward(batch, *kv.pool, logits.data()));
    int32_t top;
    float margin;
    Top2(logits.data(), vocab, &top, &margin);
    out.tokens.push_back(top);
    out.top1_minus_top2.push_back(margin);
    const int32_t pos = static_cast<int32_t>(prompt.size()) + s;
    batch.Clear();
    batch.block_tables.push_back(kv.table.data());
    batch.Add(top, pos, 0, pos, true);
  }
  return out;
}

}  // namespace kvserve::engine
