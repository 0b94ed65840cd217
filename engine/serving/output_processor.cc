#include "engine/serving/output_processor.h"

#include <algorithm>
#include <utility>

namespace kvserve::engine {

void OutputProcessor::StartSequence(OutputState* out, const std::vector<int32_t>& prompt) const {
  for (int32_t t : prompt) out->detok.Feed(t);
}

bool OutputProcessor::EndsGeneration(const EngineRequest& r, int32_t token) const {
  // EOS and every end-of-turn token of the vocabulary (<|eot_id|>, <|im_end|>, ...) end it.
  return !r.ignore_eos && (token == rules_.eos_id || tokenizer_->IsEndOfGeneration(token) ||
                           (r.stop_at_bos && token == rules_.bos_id));
}

bool OutputProcessor::Append(OutputState* out, const EngineRequest& r, int32_t token,
                             const TokenLogprob* logprob) const {
  out->unsent_ids.push_back(token);
  if (logprob != nullptr) out->unsent_logprobs.push_back(*logprob);
  out->unsent_text += out->detok.Feed(token);
  out->hold = 0;
  if (r.stop.empty()) return false;
  std::string& text = out->unsent_text;
  // A stop string anywhere in the unsent text ends the request there.
  size_t cut = std::string::npos;
  for (const std::string& stop : r.stop) {
    if (stop.empty()) continue;
    const size_t at = text.find(stop);
    if (at != std::string::npos) cut = std::min(cut, at);
  }
  if (cut != std::string::npos) {
    text.resize(cut);
    return true;
  }
  // Hold back the longest tail that could still grow into a stop string.
  for (const std::string& stop : r.stop) {
    for (size_t n = std::min(stop.size() - 1, text.size()); n > out->hold; --n) {
      if (text.compare(text.size() - n, n, stop, 0, n) == 0) {
        out->hold = n;
        break;
      }
    }
  }
  return false;
}

void OutputProcessor::TakeDelta(OutputState* out, StreamEvent* e) const {
  e->token_ids.assign(out->unsent_ids.begin(), out->unsent_ids.end());
  out->unsent_ids.clear();
  e->logprobs.swap(out->unsent_logprobs);
  out->unsent_logprobs.clear();
  e->text = out->unsent_text.substr(0, out->unsent_text.size() - out->hold);
  out->unsent_text.erase(0, out->unsent_text.size() - out->hold);
}

void OutputProcessor::TakeFinal(OutputState* out, FinishReason reason, bool ok,
                                StreamEvent* e) const {
  e->token_ids.assign(out->unsent_ids.begin(), out->unsent_ids.end());
  out->unsent_ids.clear();
  e->logprobs.swap(out->unsent_logprobs);
  out->unsent_logprobs.clear();
  if (ok) {
    e->text = std::move(out->unsent_text);
    if (reason != FinishReason::kStop) e->text += out->detok.Flush();
  }
  out->unsent_text.clear();
}

}  // namespace kvserve::engine
