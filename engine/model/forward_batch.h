// One forward step's input: tokens from several sequences of different lengths (mixed prefill
// and decode), as continuous batching produces them.
#ifndef KVSERVE_ENGINE_MODEL_FORWARD_BATCH_H_
#define KVSERVE_ENGINE_MODEL_FORWARD_BATCH_H_

#include <cstdint>
#include <vector>

#include "engine/kv/block_pool.h"

namespace kvserve::engine {

struct ForwardBatch {
  // Per token [num_tokens]:
  std::vector<int32_t> tokens;     // token ids
  std::vector<int32_t> positions;  // RoPE positions
  std::vector<int32_t> seq;        // index into block_tables
  std::vector<int32_t> kv_slot;    // slot this token's K/V is written to (also: it attends to
                                   // slots [0, kv_slot] of its sequence)
  // Per sequence: its block table. Must cover every slot written in this step.
  std::vector<const BlockId*> block_tables;
  // Per sequence, optional (empty, or one entry per sequence): where the attention kernel adds
  // each slot's softmax weight, summed over layers, query heads and this step's tokens of the
  // sequence (token eviction by accumulated attention); null for a sequence that needs none.
  // An array must cover every slot the sequence's tokens attend to.
  std::vector<float*> seq_scores;
  // Optional (empty: all 0), one entry per sequence when set, in floats: layer l adds to
  // seq_scores[s] + l * seq_score_layer_stride[s] (0: every layer adds to the same row), and
  // with seq_score_head_stride[s] > 0 each KV head g to its own row g * stride within the layer's
  // rows (summed over the query heads of its group) instead of one row summed over all heads.
  std::vector<int64_t> seq_score_layer_stride;
  std::vector<int64_t> seq_score_head_stride;
  // Tokens whose logits are wanted, in output row order (usually each sequence's last token).
  std::vector<int32_t> logits_rows;

  void Clear() {
    tokens.clear();
    positions.clear();
    seq.clear();
    kv_slot.clear();
    block_tables.clear();
    seq_scores.clear();
    seq_score_layer_stride.clear();
    seq_score_head_stride.clear();
    logits_rows.clear();
  }
  // Appends one token; returns its index.
  int32_t Add(int32_t token, int32_t position, int32_t seq_index, int32_t slot, bool want_logits) {
    const int32_t i = static_cast<int32_t>(tokens.size());
    tokens.push_back(token);
    positions.push_back(position);
    seq.push_back(seq_index);
    kv_slot.push_back(slot);
    if (want_logits) logits_rows.push_back(i);
    return i;
  }
  int64_t num_tokens() const { return static_cast<int64_t>(tokens.size()); }
};

}  // namespace kvserve::engine

#endif  // KVSERVE_ENGINE_MODEL_FORWARD_BATCH_H_
