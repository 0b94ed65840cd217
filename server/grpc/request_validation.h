// Turns a kvserve.v1.GenerateRequest into an engine::EngineRequest, checking every field first.
//
// Each error is INVALID_ARGUMENT and starts with the proto field path at fault, e.g.
// "sampling.top_p: must be in (0, 1], got 1.5" or "token_ids.ids[2]: token id 900 is outside the
// vocabulary [0, 512)". The engine checks again on Submit; checking here gives the client the
// proto names and keeps bad requests off the engine thread.
//
// Thread-safety: stateless; safe from any thread.
#ifndef KVSERVE_SERVER_GRPC_REQUEST_VALIDATION_H_
#define KVSERVE_SERVER_GRPC_REQUEST_VALIDATION_H_

#include <cstdint>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "engine/chat/chat_template.h"
#include "engine/serving/request.h"
#include "engine/tokenizer/tokenizer.h"
#include "kvserve/v1/generation.pb.h"

namespace kvserve::server {

// Limits a request is checked against (from the engine and the server config).
struct RequestLimits {
  int32_t max_prompt_tokens = 0;   // longest prompt, tokens
  int32_t max_tokens_limit = 0;    // largest max_tokens
  int32_t default_max_tokens = 0;  // max_tokens when unset (capped at max_tokens_limit)
  // Longest text prompt, bytes, checked before tokenizing (limits.max_prompt_bytes). 0 = derived:
  // max_prompt_tokens x the tokenizer's max_token_bytes() (see DefaultMaxPromptBytes).
  int64_t max_prompt_bytes = 0;
};

// How a `chat` prompt is rendered: the chat template (null when the model has none and
// model.chat_template is unset: chat prompts are then refused naming that key) and the texts of
// the BOS and EOS tokens, which templates write themselves.
struct ChatSettings {
  const engine::chat::ChatTemplate* chat_template = nullptr;
  std::string bos_token;
  std::string eos_token;
};

// Bounds on a chat prompt's messages.
inline constexpr int kMaxChatMessages = 4096;
inline constexpr int kMaxChatRoleBytes = 64;

// The byte bound no text of at most `max_prompt_tokens` tokens can exceed.
int64_t DefaultMaxPromptBytes(int32_t max_prompt_tokens, const engine::Tokenizer& tokenizer);

// The largest request message gRPC needs to accept under `limits` (server.max_request_bytes = 0):
// the longest text prompt (limits.max_prompt_bytes) plus the longest list of token ids a request
// may carry (max(max_prompt_tokens, max_tokens_limit) ids of at most 5 bytes each: a prompt of
// ids, or a Detokenize call on a whole output) plus kRequestFieldsBytes for the other fields
// (request id, stop strings, cache salt, retention hints, sampling, framing). At most 2^31 - 1.
int64_t DefaultMaxRequestBytes(const RequestLimits& limits);
inline constexpr int64_t kRequestFieldsBytes = 16 << 10;

// Bounds on the sizes of a request's lists and strings.
inline constexpr int kMaxStopStrings = 16;
inline constexpr int kMaxStopBytes = 256;
inline constexpr int kMaxRequestIdBytes = 128;
inline constexpr int kMaxCacheSaltBytes = 256;
inline constexpr int kMaxRetentionHints = 16;

// Default retention priority of a hint that does not set one.
inline constexpr int32_t kDefaultRetentionPriority = 35;

// Validates `request` and builds the engine request: a text prompt longer than
// limits.max_prompt_bytes is refused before tokenizing, and tokenizing stops once the prompt is
// known to exceed limits.max_prompt_tokens, so the work is bounded by the limits, not by the
// request; the text prompt is tokenized with `tokenizer` (BOS first when the vocabulary asks for
// it); unset sampling fields take the defaults documented in generation.proto (an unset seed
// becomes `random_seed`); `deadline` is the call's deadline (InfiniteFuture() for none). A `chat`
// prompt is rendered with `chat` (its messages' text, up to limits.max_prompt_bytes in all, never
// parsed as control tokens unless the request asks for it: Tokenizer::EncodeParts) and tokenized
// without BOS (the template writes it).
absl::StatusOr<engine::EngineRequest> BuildEngineRequest(const v1::GenerateRequest& request,
                                                         const engine::Tokenizer& tokenizer,
                                                         const RequestLimits& limits,
                                                         uint64_t random_seed, absl::Time deadline,
                                                         const ChatSettings* chat = nullptr);

}  // namespace kvserve::server

#endif  // KVSERVE_SERVER_GRPC_REQUEST_VALIDATION_H_
