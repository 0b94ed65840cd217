#include "engine/eval/perplexity.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_format.h"
#include "engine/common/status_macros.h"
#include "engine/kv/sequence_kv.h"
#include "engine/kv/token_eviction/sequence_token_eviction.h"

namespace kvserve::engine {

double PerplexityResult::perplexity() const { return std::exp(mean_nll()); }

namespace {

// Whether the document at 0-based `index` in the text belongs to the requested subset.
bool InSubset(PerplexityOptions::Subset subset, int64_t index) {
  return subset == PerplexityOptions::Subset::kAll ||
         (index % 2 == 0) == (subset == PerplexityOptions::Subset::kEven);
}

// Negative log-likelihood (nats) of `target` under one row of `vocab` logits, computed in
// double after subtracting the row maximum.
double TokenNll(const float* row, int32_t vocab, int32_t target) {
  const float mx = *std::max_element(row, row + vocab);
  double sum = 0;
  for (int32_t v = 0; v < vocab; ++v) sum += std::exp(static_cast<double>(row[v] - mx));
  return -(static_cast<double>(row[target] - mx) - std::log(sum));
}

// Everything that stays fixed while documents are scored, plus the buffers reused between
// forward steps.
struct ScoringContext {
  LocalModel& lm;
  const PerplexityTokenEviction& te;
  TokenEvictionPolicy* policy = nullptr;  // null when no token eviction
  int64_t chunk = 0;                      // tokens per forward step
  BlockAllocator allocate;
  std::vector<float> logits;
  ForwardBatch batch;
};

// Resolves the chunk size: `chunk_tokens` (or the KV block size), capped at what the token
// eviction budget lets one append hold. Fails when an eviction policy has no budget.
absl::StatusOr<int32_t> ResolveChunk(LocalModel& lm, const PerplexityOptions& options,
                                     TokenEvictionPolicy* policy, bool evicting) {
  const ModelConfig& c = lm.config();
  const PerplexityTokenEviction& te = options.token_eviction;
  int32_t chunk =
      options.chunk_tokens > 0 ? options.chunk_tokens : lm.kv_pool().geometry().block_size;
  if (evicting && te.budget_tokens < 1) {
    return absl::InvalidArgumentError(
        absl::StrFormat("token eviction policy %s needs a budget of at least 1 token, got %d",
                        te.policy, te.budget_tokens));
  }
  if (evicting) {
    const SequenceTokenEviction probe(policy, te.budget_tokens, c.num_layers, c.num_kv_heads);
    chunk = std::min(chunk, probe.MaxAppend());
  }
  return chunk;
}

// Fills ctx.batch with positions [begin, end) of `tokens`, written to KV slots from `slots`
// on, with the eviction scores buffer when the policy reads attention.
void FillChunkBatch(ScoringContext& ctx, const SequenceKv& kv, SequenceTokenEviction& eviction,
                    const std::vector<int32_t>& tokens, int64_t begin, int64_t end, int64_t slots) {
  ForwardBatch& batch = ctx.batch;
  batch.Clear();
  batch.block_tables.push_back(kv.block_table().data());
  if (eviction.wants_scores()) {
    batch.seq_scores.push_back(eviction.ScoresFor(slots + end - begin));
    batch.seq_score_layer_stride.push_back(eviction.score_layer_stride());
    batch.seq_score_head_stride.push_back(eviction.score_head_stride());
  }
  for (int64_t p = begin; p < end; ++p) {
    batch.Add(tokens[p], static_cast<int32_t>(p), 0, static_cast<int32_t>(slots + p - begin), true);
  }
}

// Scores one document (at least 2 tokens) in a fresh KV cache, chunk by chunk; returns its
// summed NLL (added token by token, in order) and updates result.evicted_tokens and
// result.peak_kv_slots.
absl::StatusOr<double> ScoreDocument(ScoringContext& ctx, const std::vector<int32_t>& tokens,
                                     PerplexityResult& result) {
  LocalModel& lm = ctx.lm;
  const int32_t vocab = lm.config().vocab_size;
  SequenceKv kv(&lm.kv_pool(), lm.kv_layout());
  SequenceTokenEviction eviction(ctx.policy, ctx.te.budget_tokens, lm.config().num_layers,
                                 lm.kv_pool().geometry().num_kv_heads);
  double doc_nll = 0;
  const int64_t n = static_cast<int64_t>(tokens.size());
  int64_t slots = 0;  // filled KV slots (== tokens fed, until something is evicted)
  for (int64_t begin = 0; begin < n - 1; begin += ctx.chunk) {
    // Positions [begin, end) are fed; each predicts the token after it.
    const int64_t end = std::min<int64_t>(begin + ctx.chunk, n - 1);
    KVSERVE_ASSIGN_OR_RETURN(
        const int64_t evicted,
        eviction.MakeRoom(lm.kv_pool(), kv, slots, end - begin, lm.kv_layout(), ctx.allocate));
    slots -= evicted;
    result.evicted_tokens += evicted;
    KVSERVE_RETURN_IF_ERROR(kv.Reserve(slots + end - begin));
    FillChunkBatch(ctx, kv, eviction, tokens, begin, end, slots);
    ctx.logits.resize(static_cast<size_t>(end - begin) * vocab);
    KVSERVE_RETURN_IF_ERROR(lm.model().Forward(ctx.batch, lm.kv_pool(), ctx.logits.data()));
    slots += end - begin;
    result.peak_kv_slots = std::max(result.peak_kv_slots, slots);
    // Decode-time KV policy: blocks that left the recent window are demoted before the next
    // chunk attends to them.
    KVSERVE_RETURN_IF_ERROR(lm.kv_policy().Demote(kv, slots));
    for (int64_t p = begin; p < end; ++p) {
      doc_nll += TokenNll(ctx.logits.data() + (p - begin) * vocab, vocab, tokens[p + 1]);
    }
  }
  return doc_nll;
}

}  // namespace

absl::StatusOr<PerplexityResult> EvaluatePerplexity(LocalModel& lm, std::string_view text,
                                                    const PerplexityOptions& options) {
  const ModelConfig& c = lm.config();
  const int32_t cap =
      options.max_tokens > 0 ? std::min(options.max_tokens, c.context_length) : c.context_length;
  const PerplexityTokenEviction& te = options.token_eviction;
  KVSERVE_ASSIGN_OR_RETURN(std::unique_ptr<TokenEvictionPolicy> policy,
                           CreateTokenEvictionPolicy(te.policy, te.options));
  const bool evicting = te.policy != "none";
  KVSERVE_ASSIGN_OR_RETURN(const int32_t chunk, ResolveChunk(lm, options, policy.get(), evicting));
  ScoringContext ctx{.lm = lm,
                     .te = te,
                     .policy = evicting ? policy.get() : nullptr,
                     .chunk = chunk,
                     .allocate = [&lm](LayoutId layout) { return lm.kv_pool().Allocate(layout); },
                     .logits = {},
                     .batch = {}};
  PerplexityResult result;
  int64_t index = -1;
  for (std::string_view doc : SplitDocuments(text, options.separator)) {
    ++index;
    if (!InSubset(options.subset, index)) continue;
    if (options.max_documents > 0 && result.documents >= options.max_documents) break;
    std::vector<int32_t> tokens = lm.tokenizer().Encode(doc, /*add_bos=*/true);
    if (static_cast<int32_t>(tokens.size()) > cap) tokens.resize(cap);
    if (tokens.size() < 2) continue;
    KVSERVE_ASSIGN_OR_RETURN(const double doc_nll, ScoreDocument(ctx, tokens, result));
    const int64_t n = static_cast<int64_t>(tokens.size());
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
