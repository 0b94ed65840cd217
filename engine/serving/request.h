// What a client asks the serving engine for, and what it gets back, in engine terms (no gRPC).
#ifndef KVSERVE_ENGINE_SERVING_REQUEST_H_
#define KVSERVE_ENGINE_SERVING_REQUEST_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/inlined_vector.h"
#include "absl/status/status.h"
#include "absl/time/time.h"
#include "engine/kv/eviction/block_eviction_policy.h"  // RetentionHint
#include "engine/sampling/logprobs.h"
#include "engine/sampling/sampler.h"

namespace kvserve::engine {

enum class FinishReason { kNone, kLength, kEos, kStop, kCancelled };
std::string_view FinishReasonName(FinishReason r);

// Per-request token eviction (bounds the sequence's KV to a token budget; lossy). An empty
// policy and a zero budget take the server's configured defaults; both are checked against the
// configured limits (engine/kv/token_eviction/token_eviction_settings.h).
struct TokenEvictionRequest {
  std::string policy;         // none, sliding_window, h2o, attention; "" = server default
  int32_t budget_tokens = 0;  // KV slots the sequence may hold; 0 = server default
};

struct EngineRequest {
  std::string id;               // unique per live request; generated when empty
  std::vector<int32_t> prompt;  // token ids, BOS included when wanted
  SamplingParams sampling;
  int32_t max_tokens = 256;       // generated tokens at most
  std::vector<std::string> stop;  // stop strings (not included in the output)
  bool ignore_eos = false;
  bool stop_at_bos = true;  // llama2.c models end a story with BOS
  int32_t priority = 0;     // scheduling priority; higher runs first under `priority`
  std::string cache_salt;   // requests with different salts never share KV blocks
  std::vector<RetentionHint> retention;
  TokenEvictionRequest token_eviction;
  absl::Time deadline = absl::InfiniteFuture();
  // Log-probabilities of the generated tokens (engine/sampling/logprobs.h: of the raw model
  // output, before penalties and temperature): -1 = none; 0 = each generated token's own; N in
  // [1, kMaxTopLogprobs] = also the N most probable tokens of each step. Computed only for
  // requests that ask.
  int32_t logprobs = -1;
};

struct RequestUsage {
  int32_t prompt_tokens = 0;
  int32_t cached_prompt_tokens = 0;  // prompt tokens served from the prefix cache
  int32_t completion_tokens = 0;
};

struct RequestTimings {
  absl::Duration queued;               // arrival -> first scheduled
  absl::Duration time_to_first_token;  // arrival -> first generated token
  absl::Duration total;                // arrival -> finished
};

struct RequestKvUsage {
  int64_t peak_blocks = 0;
  int64_t peak_bytes = 0;
  int64_t evicted_tokens = 0;  // dropped by token eviction (recomputation included)
};

// One message on a request's stream. Every stream ends with exactly one event with final = true,
// which carries the finish reason (or a non-OK status: DEADLINE_EXCEEDED, CANCELLED,
// UNAVAILABLE on shutdown, INTERNAL), usage, timings and KV usage.
struct StreamEvent {
  // Tokens generated since the previous event: one or a few, held inline.
  absl::InlinedVector<int32_t, 6> token_ids;
  std::string text;  // their text: complete UTF-8 only, stop strings removed
  // With EngineRequest::logprobs >= 0: one entry per token of token_ids, in the same order
  // (logprobs[i].token_id == token_ids[i]); otherwise empty.
  std::vector<TokenLogprob> logprobs;
  bool final = false;
  FinishReason finish_reason = FinishReason::kNone;
  absl::Status status;
  RequestUsage usage;
  RequestTimings timings;
  RequestKvUsage kv;
  int32_t preemptions = 0;  // times this request was preempted and recomputed
};

}  // namespace kvserve::engine

#endif  // KVSERVE_ENGINE_SERVING_REQUEST_H_
