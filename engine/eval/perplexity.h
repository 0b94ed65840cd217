// Perplexity of a model on a text, through the real paged KV cache (so the KV format and its
// policies affect the score exactly as they affect generation).
//
// The text is split into documents on `separator` (default "<|endoftext|>"); each document has
// leading spaces and newlines stripped, is encoded with BOS first and the dummy-prefix space,
// capped at `max_tokens` tokens (BOS included), and every next token is scored. Documents are
// processed on their own (a fresh KV cache each), in chunks of `chunk_tokens` tokens, which is
// how decode-time KV policies (a full-precision recent window, demotion of older blocks) see
// the sequence.
#ifndef KVSERVE_ENGINE_EVAL_PERPLEXITY_H_
#define KVSERVE_ENGINE_EVAL_PERPLEXITY_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/common/documents.h"
#include "engine/kv/token_eviction/token_eviction_policy.h"
#include "engine/runtime/local_model.h"

namespace kvserve::engine {

// Token eviction during scoring: each document's KV is bounded to `budget_tokens` slots by the
// named policy (see engine/kv/token_eviction/), exactly as a served sequence would be: before a
// chunk is fed, the cache is compacted so that it and the chunk fit the budget; policies that
// read attention get it accumulated by the attention kernel. Chunks are capped at what the
// budget leaves after slack and sinks.
struct PerplexityTokenEviction {
  std::string policy = "none";
  int32_t budget_tokens = 0;  // required (> 0) unless policy is none
  TokenEvictionOptions options;
};

struct PerplexityOptions {
  std::string separator = "<|endoftext|>";
  int32_t max_tokens = 0;     // per document, BOS included; 0 = the model's context length
  int32_t chunk_tokens = 0;   // tokens per forward step; 0 = the KV block size
  int32_t max_documents = 0;  // 0 = all
  // Which documents to score, by their 0-based index in the text: all, the even-numbered ones
  // (0, 2, 4, ...) or the odd-numbered ones; lets a setting be chosen on one half and reported
  // on the other.
  enum class Subset { kAll, kEven, kOdd };
  Subset subset = Subset::kAll;
  PerplexityTokenEviction token_eviction;
};

struct PerplexityResult {
  int64_t documents = 0;
  int64_t predicted_tokens = 0;
  double total_nll = 0;  // nats
  double mean_nll() const { return predicted_tokens ? total_nll / predicted_tokens : 0; }
  double perplexity() const;
  std::vector<double> document_nll;  // mean NLL per document
  int64_t evicted_tokens = 0;        // by token eviction, over all documents
  int64_t peak_kv_slots = 0;         // most KV slots one document held at once
};

// SplitDocuments (engine/common/documents.h) splits, strips and drops empty documents.

absl::StatusOr<PerplexityResult> EvaluatePerplexity(LocalModel& model, std::string_view text,
                                                    const PerplexityOptions& options);

}  // namespace kvserve::engine

#endif  // KVSERVE_ENGINE_EVAL_PERPLEXITY_H_
