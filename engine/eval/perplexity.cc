#include "engine/eval/perplexity.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_format.h"
#include "engine/common/status_macros.h"
#include "engine/kv/sequence_kv.h"

namespace kvserve::engine {

double PerplexityResult::perplexity() const { return std::exp(mean_nll()); }

std::vector<std::string_view> SplitDocuments(std::string_view text, std::string_view separator) {
  std::vector<std::string_view> docs;
  size_t start = 0;
  while (start <= text.size()) {
    size_t end = separator.empty() ? std::string_view::npos : text.find(separator, start);
    if (end == std::string_view::npos) end = text.size();
    std::string_view doc = text.substr(start, end - start);
    while (!doc.empty() && (doc.front() == ' ' || doc.front() == '\n' || doc.front() == '\r')) {
      doc.remove_prefix(1);
    }
    if (!doc.empty()) docs.push_back(doc);
    if (end == text.size()) break;
    start = end + separator.size();
  }
  return docs;
}

absl::StatusOr<PerplexityResult> EvaluatePerplexity(LocalModel& lm, std::string_view text,
                                                    const PerplexityOptions& options) {
  const ModelConfig& c = lm.config();
  const int32_t cap = options.max_tokens > 0 ? std::min(options.max_tokens, c.context_length)
                                             : c.context_length;
  const int32_t chunk =
      options.chunk_tokens > 0 ? options.chunk_tokens : lm.kv_pool().geometry().block_size;
  const int32_t vocab = c.vocab_size;
  PerplexityResult result;
  std::vector<float> logits;
  ForwardBatch batch;
  for (std::string_view doc : SplitDocuments(text, options.separator)) {
    if (options.max_documents > 0 && result.documents >= options.max_documents) break;
    std::vector<int32_t> tokens = lm.tokenizer().Encode(doc, /*add_bos=*/true);
    if (static_cast<int32_t>(tokens.size()) > cap) tokens.resize(cap);
    if (tokens.size() < 2) continue;
    SequenceKv kv(&lm.kv_pool(), lm.kv_layout());
    KVSERVE_RETURN_IF_ERROR(kv.Reserve(static_cast<int64_t>(tokens.size())));
    double doc_nll = 0;
    const int64_t n = static_cast<int64_t>(tokens.size());
    for (int64_t begin = 0; begin < n - 1; begin += chunk) {
      // Positions [begin, end) are fed; each predicts the token after it.
      const int64_t end = std::min<int64_t>(begin + chunk, n - 1);
      batch.Clear();
      batch.block_tables.push_back(kv.block_table().data());
      for (int64_t p = begin; p < end; ++p) {
        batch.Add(tokens[p], static_cast<int32_t>(p), 0, static_cast<int32_t>(p), true);
      }
      logits.resize(static_cast<size_t>(end - begin) * vocab);
      KVSERVE_RETURN_IF_ERROR(lm.model().Forward(batch, lm.kv_pool(), logits.data()));
      // Decode-time KV policy: blocks that left the recent window are demoted before the next
      // chunk attends to them.
      KVSERVE_RETURN_IF_ERROR(lm.kv_policy().Demote(kv, end));
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
