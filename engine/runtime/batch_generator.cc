#include "engine/runtime/batch_generator.h"

#include <limits>
#include <memory>
#include <utility>

#include "absl/strings/str_format.h"
#include "engine/common/status_macros.h"
#include "engine/serving/scheduler.h"

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

BatchGenerator::BatchGenerator(LlamaModel* model, BlockPool* pool, const KvCachePolicy* kv_policy,
                               const Tokenizer* tokenizer, Options options,
                               PrefixIndex* prefix_index, std::string model_identity)
    : model_(model),
      pool_(pool),
      kv_policy_(kv_policy),
      tokenizer_(tokenizer),
      options_(options),
      prefix_index_(prefix_index),
      model_identity_(std::move(model_identity)) {}

namespace {

// InvalidArgument naming the request (by index) and what is wrong with it.
absl::Status ValidateRequests(const std::vector<GenerationRequest>& requests,
                              const ModelConfig& config) {
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
            "request %d: token id %d is outside the vocabulary [0, %d)", i, t, config.vocab_size));
      }
    }
    if (r.max_tokens < 1) {
      return absl::InvalidArgumentError(
          absl::StrFormat("request %d: max_tokens must be >= 1, got %d", i, r.max_tokens));
    }
    if (r.logprobs < -1 || r.logprobs > kMaxTopLogprobs) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "request %d: logprobs must be in [-1, %d], got %d", i, kMaxTopLogprobs, r.logprobs));
    }
    KVSERVE_RETURN_IF_ERROR(r.sampling.Validate());
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::vector<GenerationResult>> BatchGenerator::Run(
    const std::vector<GenerationRequest>& requests, const TokenCallback& on_token) {
  KVSERVE_RETURN_IF_ERROR(ValidateRequests(requests, model_->config()));

  KvCacheManagerOptions ko;
  ko.prefix_index = prefix_index_;
  ko.model_identity = model_identity_;
  KvCacheManager kv(pool_, kv_policy_, ko);
  LlamaModelRunner runner(model_, pool_);
  SchedulerOptions so;
  so.max_running = static_cast<int32_t>(std::max<size_t>(1, requests.size()));
  so.max_batch_tokens = options_.max_batch_tokens;
  so.end = EndRulesOf(*model_);
  Scheduler scheduler(&kv, &runner, tokenizer_, so);
  std::vector<std::shared_ptr<RequestStream>> streams;
  const absl::Time start = absl::Now();
  for (size_t i = 0; i < requests.size(); ++i) {
    streams.push_back(std::make_shared<RequestStream>("", std::numeric_limits<int64_t>::max()));
    scheduler.Add(requests[i], streams.back(), start);
  }
  std::vector<GenerationResult> results(requests.size());
  std::vector<StreamEvent> events;
  absl::Status failure;
  while (!scheduler.idle()) {
    scheduler.Step(absl::Now());
    for (size_t i = 0; i < streams.size(); ++i) {
      events.clear();
      streams[i]->Take(&events);
      for (StreamEvent& e : events) {
        GenerationResult& r = results[i];
        for (int32_t t : e.token_ids) {
          r.tokens.push_back(t);
          if (on_token) on_token(static_cast<int>(i), t);
        }
        for (TokenLogprob& l : e.logprobs) r.logprobs.push_back(std::move(l));
        r.text += e.text;
        if (e.final) {
          r.finish_reason = e.finish_reason;
          r.peak_kv_blocks = e.kv.peak_blocks;
          r.preemptions = e.preemptions;
          if (!e.status.ok() && failure.ok()) failure = e.status;
        }
      }
    }
  }
  steps_ = scheduler.counters().steps;
  preemptions_ = scheduler.counters().preemptions;
  cached_prompt_tokens_ = scheduler.counters().cached_prompt_tokens;
  step_time_ = scheduler.counters().step_time;
  demotion_time_ = kv.counters().demotion_time;
  if (!failure.ok()) return failure;
  return results;
}

}  // namespace kvserve::engine
