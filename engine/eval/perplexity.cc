#include "engine/eval/perplexity.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_format.h"
#include "engine/common/status_macros.h"
#include "engine/kv/sequence_kv.h"
#include "engine/kv/token_eviction/sequence_token_eviction.h"

namespace kvserve::engine {

double PerplexityResult::perplexity() const { return std::exp(mean_nll()); }

absl::StatusOr<PerplexityResult> EvaluatePerplexity(LocalModel& lm, std::string_view text,
                                                    const PerplexityOptions& options) {
  const ModelConfig& c = lm.config();
  const int32_t cap = options.max_tokens > 0 ? std::min(options.max_tokens, c.context_length)
                                             : c.context_length;
  int32_t chunk =
      options.chunk_tokens > 0 ? options.chunk_tokens : lm.kv_pool().geometry().block_size;
  const PerplexityTokenEviction& te = options.token_eviction;
  KVSERVE_ASSIGN_OR_RETURN(std::unique_ptr<TokenEvictionPolicy> policy,
                           CreateTokenEvictionPolicy(te.policy, te.options));
  const bool evicting = te.policy != "none";
  if (evicting && te.budget_tokens < 1) {
    return absl::InvalidArgumentError(
        absl::StrFormat("token eviction policy %s needs a budget of at least 1 token, got %d",
                        te.policy, te.budget_tokens));
  }
  if (evicting) {
    const SequenceTokenEviction probe(policy.get(), te.budget_tokens, c.num_layers, c.num_kv_heads);
    chunk = std::min(chunk, probe.MaxAppend());
  }
  const BlockAllocator allocate = [&lm](LayoutId layout) { return lm.kv_pool().Allocate(layout); };
  const int32_t vocab = c.vocab_size;
  PerplexityResult result;
  std::vector<float> logits;
  ForwardBatch batch;
  int64_t index = -1;
  for (std::string_view doc : SplitDocuments(text, options.separator)) {
    ++index;
    if (options.subset != PerplexityOptions::Subset::kAll &&
        (index % 2 == 0) != (options.subset == PerplexityOptions::Subset::kEven)) {
      continue;
    }
    if (options.max_documents > 0 && result.documents >= options.max_documents) break;
    std::vector<int32_t> tokens = lm.tokenizer().Encode(doc, /*add_bos=*/true);
    if (static_cast<int32_t>(tokens.size()) > cap) tokens.resize(cap);
    if (tokens.size() < 2) continue;
    SequenceKv kv(&lm.kv_pool(), lm.kv_layout());
    SequenceTokenEviction eviction(evicting ? policy.get() : nullptr, te.budget_tokens,
                                   c.num_layers, lm.kv_pool().geometry().num_kv_heads);
    double doc_nll = 0;
    const int64_t n = static_cast<int64_t>(tokens.size());
    int64_t slots = 0;  // filled KV slots (== tokens fed, until something is evicted)
    for (int64_t begin = 0; begin < n - 1; begin += chunk) {
      // Positions [begin, end) are fed; each predicts the token after it.
      const int64_t end = std::min<int64_t>(begin + chunk, n - 1);
      KVSERVE_ASSIGN_OR_RETURN(
          const int64_t evicted,
          eviction.MakeRoom(lm.kv_pool(), kv, slots, end - begin, lm.kv_layout(), allocate));
      slots -= evicted;
      result.evicted_tokens += evicted;
      KVSERVE_RETURN_IF_ERROR(kv.Reserve(slots + end - begin));
      batch.Clear();
      batch.block_tables.push_back(kv.block_table().data());
      if (eviction.wants_scores()) {
        batch.seq_scores.push_back(eviction.ScoresFor(slots + end - begin));
        batch.seq_score_layer_stride.push_back(eviction.score_layer_stride());
        batch.seq_score_head_stride.push_back(eviction.score_head_stride());
      }
      for (int64_t p = begin; p < end; ++p) {
        batch.Add(tokens[p], static_cast<int32_t>(p), 0, static_cast<int32_t>(slots + p - begin),
                  true);
      }
      logits.resize(static_cast<size_t>(end - begin) * vocab);
      KVSERVE_RETURN_IF_ERROR(lm.model().Forward(batch, lm.kv_pool(), logits.data()));
      slots += end - begin;
      result.peak_kv_slots = std::max(result.peak_kv_slots, slots);
      // Decode-time KV policy: blocks that left the recent window are demoted before the next
      // chunk attends to them.
      KVSERVE_RETURN_IF_ERROR(lm.kv_policy().Demote(kv, slots));
      for (int64_t p = begin; p < end; ++p) {
        const float* row = logits.data() + (p - begin) * vocab;
        const float mx = *std::max_element(row, row + vocab);
        double sum = 0;
        for (int32_t v = 0; v < vocab; ++v) sum += std::exp(static_cast<double>(row[v] - mx));
        doc_nll += -(static_cast<double>(row[tokens[p + 1]] - mx) - std::log(sum));
      }
    }
    result.total_nll += doc_nll;
    result.predicted_tokens += n - 1;
    result.document_nll.push_back(doc_nll / static_cast<double>(n - 1));
    ++result.documents;
  }
  if (result.documents == 0) {
    return absl::InvalidArgumentError("the text holds no document with at least 2 tokens");
  }
  return result;
}

}  // namespace kvserve::engine
