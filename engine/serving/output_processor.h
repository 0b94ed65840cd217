// The output processor: turns a sequence's sampled token ids into what its client receives. It
// decides whether a token ends the generation (EOS, an end-of-generation token of the
// vocabulary, BOS for llama2.c stories), detokenizes incrementally (complete UTF-8 only), finds
// stop strings (the text is cut before one; a tail that could still grow into one is held back),
// and builds the deltas of stream events. It knows nothing of KV memory or scheduling.
//
// Thread-safety: none; the engine thread drives it. An OutputState belongs to one sequence.
#ifndef KVSERVE_ENGINE_SERVING_OUTPUT_PROCESSOR_H_
#define KVSERVE_ENGINE_SERVING_OUTPUT_PROCESSOR_H_

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "engine/serving/request.h"
#include "engine/tokenizer/tokenizer.h"

namespace kvserve::engine {

// The model's ids that end a generation, and its context length.
struct EndRules {
  int32_t eos_id = -1;
  int32_t bos_id = -1;
  int64_t context_length = std::numeric_limits<int64_t>::max();
};

// A sequence's output not yet sent.
struct OutputState {
  explicit OutputState(const Tokenizer& tokenizer) : detok(tokenizer) {}
  StreamingDetokenizer detok;
  std::string unsent_text;  // decoded, not sent yet
  std::vector<int32_t> unsent_ids;
  std::vector<TokenLogprob> unsent_logprobs;  // one per unsent id when the request asks for them
  size_t hold = 0;  // bytes at the end of unsent_text that may start a stop string
};

class OutputProcessor {
 public:
  // `tokenizer` must outlive the processor.
  OutputProcessor(const Tokenizer* tokenizer, EndRules rules)
      : tokenizer_(tokenizer), rules_(rules) {}

  const Tokenizer& tokenizer() const { return *tokenizer_; }
  const EndRules& rules() const { return rules_; }

  // Feeds the prompt to the detokenizer (its context: the leading-space rule after BOS).
  void StartSequence(OutputState* out, const std::vector<int32_t>& prompt) const;
  // True when `token` ends the request instead of being generated (never with ignore_eos).
  bool EndsGeneration(const EngineRequest& r, int32_t token) const;
  // Appends a generated token, and its log-probabilities when not null (given for every token
  // of a request that asks for them), to the unsent output. True when a stop string now appears
  // in it: the unsent text is cut where the stop string starts, and the request ends (kStop).
  bool Append(OutputState* out, const EngineRequest& r, int32_t token,
              const TokenLogprob* logprob = nullptr) const;
  // Moves the unsent ids, their log-probabilities and the text (less the held-back tail) into a
  // (non-final) event.
  void TakeDelta(OutputState* out, StreamEvent* e) const;
  // Fills a final event's ids, log-probabilities and text: everything unsent, and for an OK
  // ending other than a stop string whatever the detokenizer still holds; text is dropped on an
  // error.
  void TakeFinal(OutputState* out, FinishReason reason, bool ok, StreamEvent* e) const;

 private:
  const Tokenizer* tokenizer_;
  EndRules rules_;
};

}  // namespace kvserve::engine

#endif  // KVSERVE_ENGINE_SERVING_OUTPUT_PROCESSOR_H_
