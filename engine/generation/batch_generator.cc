#include "engine/generation/batch_generator.h"

#include <algorithm>
#include <memory>

#include "absl/strings/str_format.h"
#include "engine/common/status_macros.h"
#include "engine/kv/sequence_kv.h"

namespace kvserve::engine {

std::string_view FinishReasonName(FinishReason r) {
  switch (r) {
    case FinishReason::kNone:
      return "none";
    case FinishReason::kLength:
      return "length";
    case FinishReason::kEos:
      return "eos";
    case FinishReason::kStop:
      return "stop";
    case FinishReason::kCancelled:
      return "cancelled";
  }
  return "?";
}

BatchGenerator::BatchGenerator(LlamaModel* model, BlockPool* pool, LayoutId layout,
                               Options options)
    : model_(model), pool_(pool), layout_(layout), options_(options) {}

namespace {

struct LiveSequence {
  const GenerationRequest* request;
  std::unique_ptr<SequenceKv> kv;
  std::vector<int32_t> tokens;  // prompt + generated
  int64_t processed = 0;        // tokens whose K/V are in the cache
  std::unique_ptr<Sampler> sampler;
  GenerationResult result;
  bool done = false;
};

}  // namespace

absl::StatusOr<std::vector<GenerationResult>> BatchGenerator::Run(
    const std::vector<GenerationRequest>& requests, const TokenCallback& on_token) {
  const ModelConfig& config = model_->config();
  steps_ = 0;
  std::vector<LiveSequence> seqs(requests.size());
  for (size_t i = 0; i < requests.size(); ++i) {
    const GenerationRequest& r = requests[i];
    if (r.prompt.empty()) {
      return absl::InvalidArgumentError(absl::StrFormat("request %d: empty prompt", i));
    }
    if (static_cast<int64_t>(r.prompt.size()) >= config.context_length) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "request %d: prompt of %d tokens does not fit the model's context of %d tokens", i,
          r.prompt.size(), config.context_length));
    }
    for (int32_t t : r.prompt) {
      if (t < 0 || t >= config.vocab_size) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "request %d: token id %d is outside the vocabulary [0, %d)", i, t,
            config.vocab_size));
      }
    }
    if (r.max_tokens < 1) {
      return absl::InvalidArgumentError(
          absl::StrFormat("request %d: max_tokens must be >= 1, got %d", i, r.max_tokens));
    }
    KVSERVE_RETURN_IF_ERROR(r.sampling.Validate());
    LiveSequence& s = seqs[i];
    s.request = &r;
    s.kv = std::make_unique<SequenceKv>(pool_, layout_);
    s.tokens = r.prompt;
    s.sampler = std::make_unique<Sampler>(r.sampling);
  }

  const int32_t vocab = config.vocab_size;
  ForwardBatch batch;
  std::vector<int> row_seq;  // logits row -> sequence
  std::vector<float> logits;
  size_t remaining = seqs.size();
  while (remaining > 0) {
    batch.Clear();
    row_seq.clear();
    int64_t budget = options_.max_batch_tokens;
    // Decodes first (one token each), then prefill chunks with what is left of the budget.
    for (int pass = 0; pass < 2 && budget > 0; ++pass) {
      for (size_t i = 0; i < seqs.size() && budget > 0; ++i) {
        LiveSequence& s = seqs[i];
        if (s.done) continue;
        const int64_t pending = static_cast<int64_t>(s.tokens.size()) - s.processed;
        const bool decoding = pending == 1;
        if ((pass == 0) != decoding) continue;
        const int64_t take = std::min(pending, budget);
        KVSERVE_RETURN_IF_ERROR(s.kv->Reserve(s.processed + take));
        s.result.peak_kv_blocks =
            std::max<int64_t>(s.result.peak_kv_blocks, s.kv->block_table().size());
        const int32_t seq_index = static_cast<int32_t>(batch.block_tables.size());
        batch.block_tables.push_back(s.kv->block_table().data());
        for (int64_t j = 0; j < take; ++j) {
          const int64_t pos = s.processed + j;
          const bool last = pos + 1 == static_cast<int64_t>(s.tokens.size());
          batch.Add(s.tokens[pos], static_cast<int32_t>(pos), seq_index,
                    static_cast<int32_t>(pos), last);
          if (last) row_seq.push_back(static_cast<int>(i));
        }
        s.processed += take;
        budget -= take;
      }
    }
    logits.resize(row_seq.size() * vocab);
    KVSERVE_RETURN_IF_ERROR(model_->Forward(batch, *pool_, logits.data()));
    ++steps_;
    for (size_t r = 0; r < row_seq.size(); ++r) {
      LiveSequence& s = seqs[row_seq[r]];
      const int32_t next = s.sampler->Sample(
          absl::MakeSpan(logits.data() + r * vocab, vocab), s.tokens);
      FinishReason reason = FinishReason::kNone;
      if (!s.request->ignore_eos &&
          (next == model_->eos_id() || (s.request->stop_at_bos && next == model_->bos_id()))) {
        reason = FinishReason::kEos;
      } else {
        s.tokens.push_back(next);
        s.result.tokens.push_back(next);
        if (on_token) on_token(row_seq[r], next);
        if (static_cast<int32_t>(s.result.tokens.size()) >= s.request->max_tokens ||
            static_cast<int64_t>(s.tokens.size()) >= config.context_length) {
          reason = FinishReason::kLength;
        }
      }
      if (reason != FinishReason::kNone) {
        s.result.finish_reason = reason;
        s.done = true;
        s.kv->Release();
        --remaining;
      }
    }
  }
  std::vector<GenerationResult> results;
  results.reserve(seqs.size());
  for (auto& s : seqs) results.push_back(std::move(s.result));
  return results;
}

}  // namespace kvserve::engine
