// The OpenAI API's JSON at the HTTP edge: request bodies of /v1/completions and
// /v1/chat/completions turned into kvserve.v1.GenerateRequest messages (so that the HTTP face runs
// the very validation the gRPC one does: BuildEngineRequest), and engine events turned into the
// API's response objects, streaming chunks and error objects.
//
// Parsing is strict. A field of the wrong type or out of range is a 400 naming the field
// ("top_p: must be a number in (0, 1], got 1.5"); a field the API defines that kvserve does not
// implement is refused when it would change the output (`logit_bias`, `suffix`, `tools`, a
// `response_format` other than text), never silently dropped; a field neither the API nor kvserve
// knows is refused naming it. Fields that change nothing (`user`, `store`, `metadata`,
// `service_tier`) are accepted.
//
// Defaults follow the OpenAI API where kvserve's gRPC defaults differ: `temperature` 1 (the gRPC
// default is greedy), `n` 1. `max_tokens` (or `max_completion_tokens`) left out takes the
// server's limits.default_max_tokens, as over gRPC.
//
// kvserve's own request fields, as extra body fields (vLLM accepts its own the same way):
// `top_k`, `min_p`, `repetition_penalty`, `ignore_eos`, `priority`, `cache_salt`, `request_id`,
// `retention` (a list of {start_token, end_token, priority, duration_seconds}), `token_eviction`
// ({policy, budget_tokens}) and, for chat, `add_generation_prompt` and `parse_special_tokens`.
//
// Thread-safety: stateless functions; safe from any thread.
#ifndef KVSERVE_SERVER_HTTP_OPENAI_PROTOCOL_H_
#define KVSERVE_SERVER_HTTP_OPENAI_PROTOCOL_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "engine/serving/request.h"
#include "kvserve/v1/generation.pb.h"

namespace kvserve::server {

enum class OpenAiEndpoint { kCompletions, kChat };

// The most choices one request may ask for (n x the prompts of a completions request).
inline constexpr int kMaxOpenAiChoices = 64;
// The most top log-probabilities one token may carry.
inline constexpr int kMaxTopLogprobs = 20;

// An error as the API reports it: the HTTP status and {"error": {message, type, param, code}}.
struct OpenAiError {
  int http_status = 400;
  std::string message;
  std::string type = "invalid_request_error";
  std::string param;  // the request field at fault; "" = null
  std::string code;   // "" = null
};

// A parsed request. Each prompt of `prompts` (one for chat; one or more for completions) runs
// `n` times: choice i*n + j is prompt i's j-th sample, with seed `seed + j` when a seed is given.
struct OpenAiRequest {
  OpenAiEndpoint endpoint = OpenAiEndpoint::kCompletions;
  std::string model;  // "" when the body names none
  // One GenerateRequest per prompt, every other field already filled in.
  std::vector<v1::GenerateRequest> prompts;
  int32_t n = 1;
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  bool echo = false;           // completions: the prompt's text before the completion
  // Log-probabilities: -1 off; else the number of top alternatives per token (0 = only the
  // sampled token's). Completions: `logprobs: N`; chat: `logprobs: true` with `top_logprobs: N`.
  int32_t logprobs = -1;
  std::optional<uint64_t> seed;
};

// Parses a request body of `endpoint`. Nothing is tokenized here. The error is a 400 naming the
// field (or saying that the body is not a JSON object).
std::optional<OpenAiError> ParseOpenAiRequest(std::string_view body, OpenAiEndpoint endpoint,
                                              OpenAiRequest* out);

// Maps a validation error of BuildEngineRequest or Engine::Submit ("sampling.top_p: must be ...",
// "token_ids.ids[2]: ...") onto the request's JSON field names ("top_p: must be ...",
// "prompt[2]: ..."), with `param` set to the field. `prompt_index` of `num_prompts` is the
// completions prompt the status is about (prompt[i] when there are several).
OpenAiError InvalidRequestError(const absl::Status& status, OpenAiEndpoint endpoint,
                                int prompt_index, int num_prompts);

// The HTTP status and error object of an engine or server status: InvalidArgument 400,
// Unauthenticated 401, NotFound 404, ResourceExhausted 429, Unavailable 503, DeadlineExceeded
// 408, Cancelled 499, anything else 500.
OpenAiError ErrorFromStatus(const absl::Status& status, OpenAiEndpoint endpoint);

// {"error": {...}} as JSON text.
std::string ErrorBody(const OpenAiError& error);

// "stop" for EOS and stop strings, "length" for max_tokens and the context limit, "" (null) for
// none.
std::string_view OpenAiFinishReason(engine::FinishReason reason);

// One choice's output so far, as the response builders take it.
struct ChoiceOutput {
  int32_t index = 0;
  std::string text;                // the new text (streaming) or all of it
  std::vector<int32_t> token_ids;  // the tokens of `text`
  engine::FinishReason finish_reason = engine::FinishReason::kNone;
  bool finished = false;
  // Per token when logprobs were asked for (aligned with token_ids), else empty.
  std::vector<std::string> token_texts;
  std::vector<float> token_logprobs;
  std::vector<std::vector<std::pair<std::string, float>>> top_logprobs;
  std::vector<int32_t> text_offsets;  // completions: byte offset of each token in the text
};

struct OpenAiUsage {
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
  int64_t cached_tokens = 0;
};

// The identity every object of one response carries.
struct ResponseIdentity {
  std::string id;       // "cmpl-..." or "chatcmpl-..."
  int64_t created = 0;  // Unix seconds
  std::string model;
};

// A whole (non-streaming) response: "text_completion" or "chat.completion".
std::string CompletionBody(OpenAiEndpoint endpoint, const ResponseIdentity& identity,
                           const std::vector<ChoiceOutput>& choices, const OpenAiUsage& usage,
                           int32_t logprobs);

// One streaming chunk ("text_completion" or "chat.completion.chunk") with one choice, as an SSE
// event ("data: {...}\n\n"). For chat, `role_only` makes the first chunk ({"role": "assistant",
// "content": ""}); `usage` makes the final chunk with no choices (include_usage).
std::string ChunkEvent(OpenAiEndpoint endpoint, const ResponseIdentity& identity,
                       const ChoiceOutput& choice, int32_t logprobs, bool role_only = false);
std::string UsageChunkEvent(OpenAiEndpoint endpoint, const ResponseIdentity& identity,
                            const OpenAiUsage& usage);
// An error in the middle of a stream: data: {"error": {...}}.
std::string ErrorEvent(const OpenAiError& error);
inline constexpr std::string_view kDoneEvent = "data: [DONE]\n\n";

}  // namespace kvserve::server

#endif  // KVSERVE_SERVER_HTTP_OPENAI_PROTOCOL_H_
