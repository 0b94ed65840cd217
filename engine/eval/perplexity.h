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
#include "engine/generation/local_model.h"

namespace kvserve::engine {

struct PerplexityOptions {
  std::string separator = "<|endoftext|>";
  int32_t max_tokens = 0;    // per document, BOS included; 0 = the model's context length
  int32_t chunk_tokens = 0;  // tokens per forward step; 0 = the KV block size
  int32_t max_documents = 0;  // 0 = all
};

struct PerplexityResult {
  int64_t documents = 0;
  int64_t predicted_tokens = 0;
  double total_nll = 0;  // nats
  double mean_nll() const { return predicted_tokens ? total_nll / predicted_tokens : 0; }
  double perplexity() const;
  std::vector<double> document_nll;  // mean NLL per document
};

// Splits, strips and drops empty documents (see above).
std::vector<std::string_view> SplitDocuments(std::string_view text, std::string_view separator);

absl::StatusOr<PerplexityResult> EvaluatePerplexity(LocalModel& model, std::string_view text,
                                                    const PerplexityOptions& options);

}  // namespace kvserve::engine

#endif  // KVSERVE_ENGINE_EVAL_PERPLEXITY_H_
