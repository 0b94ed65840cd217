#include "server/grpc/request_validation.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "server/grpc/proto_codec.h"

namespace kvserve::server {
namespace {

absl::Status Invalid(absl::string_view field, absl::string_view message) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", message));
}

std::string Num(double v) {
  if (std::isnan(v)) return "NaN";
  return absl::StrCat(v);
}

absl::Status CheckRequestId(const std::string& id) {
  if (id.empty()) return absl::OkStatus();
  if (id.size() > static_cast<size_t>(kMaxRequestIdBytes)) {
    return Invalid("request_id",
                   absl::StrCat("must be at most ", kMaxRequestIdBytes, " bytes, got ", id.size()));
  }
  for (char c : id) {
    if (c <= ' ' || c > '~') {
      return Invalid("request_id", "must be printable ASCII without spaces");
    }
  }
  return absl::OkStatus();
}

absl::Status FillSampling(const v1::SamplingParams& in, uint64_t random_seed,
                          engine::SamplingParams* out) {
  out->temperature = in.has_temperature() ? in.temperature() : 1.0f;
  out->top_k = in.has_top_k() ? in.top_k() : 0;
  out->top_p = in.has_top_p() ? in.top_p() : 1.0f;
  out->min_p = in.has_min_p() ? in.min_p() : 0.0f;
  out->repetition_penalty = in.has_repetition_penalty() ? in.repetition_penalty() : 1.0f;
  out->presence_penalty = in.has_presence_penalty() ? in.presence_penalty() : 0.0f;
  out->frequency_penalty = in.has_frequency_penalty() ? in.frequency_penalty() : 0.0f;
  out->seed = in.has_seed() ? in.seed() : random_seed;
  // Written so that NaN fails every check.
  if (!(out->temperature >= 0.0f) || std::isinf(out->temperature)) {
    return Invalid("sampling.temperature",
                   absl::StrCat("must be a finite number >= 0, got ", Num(out->temperature)));
  }
  if (out->top_k < 0) {
    return Invalid("sampling.top_k", absl::StrCat("must be >= 0, got ", out->top_k));
  }
  if (!(out->top_p > 0.0f && out->top_p <= 1.0f)) {
    return Invalid("sampling.top_p", absl::StrCat("must be in (0, 1], got ", Num(out->top_p)));
  }
  if (!(out->min_p >= 0.0f && out->min_p < 1.0f)) {
    return Invalid("sampling.min_p", absl::StrCat("must be in [0, 1), got ", Num(out->min_p)));
  }
  if (!(out->repetition_penalty > 0.0f) || std::isinf(out->repetition_penalty)) {
    return Invalid("sampling.repetition_penalty",
                   absl::StrCat("must be a finite number > 0, got ", Num(out->repetition_penalty)));
  }
  for (const auto& [field, value] :
       {std::pair<const char*, float>{"sampling.presence_penalty", out->presence_penalty},
        std::pair<const char*, float>{"sampling.frequency_penalty", out->frequency_penalty}}) {
    if (!(value >= -2.0f && value <= 2.0f)) {
      return Invalid(field, absl::StrCat("must be in [-2, 2], got ", Num(value)));
    }
  }
  // Anything the engine's own check adds is reported under the sampling message.
  if (absl::Status s = out->Validate(); !s.ok()) {
    return Invalid("sampling", s.message());
  }
  return absl::OkStatus();
}

// Renders and tokenizes a chat prompt.
absl::Status FillChatPrompt(const v1::ChatPrompt& in, const engine::Tokenizer& tokenizer,
                            const RequestLimits& limits, const ChatSettings* chat,
                            std::vector<int32_t>* prompt) {
  if (chat == nullptr || chat->chat_template == nullptr) {
    return Invalid("chat",
                   "the model has no chat template (tokenizer.chat_template) and the "
                   "server sets none (model.chat_template)");
  }
  if (in.messages().empty()) return Invalid("chat.messages", "must not be empty");
  if (in.messages_size() > kMaxChatMessages) {
    return Invalid("chat.messages",
                   absl::StrCat("at most ", kMaxChatMessages, " messages are accepted, got ",
                                in.messages_size()));
  }
  const int64_t max_bytes = limits.max_prompt_bytes > 0
                                ? limits.max_prompt_bytes
                                : DefaultMaxPromptBytes(limits.max_prompt_tokens, tokenizer);
  int64_t bytes = 0;
  std::vector<engine::chat::ChatMessage> messages;
  messages.reserve(in.messages_size());
  for (int i = 0; i < in.messages_size(); ++i) {
    const v1::ChatMessage& m = in.messages(i);
    if (m.role().empty() || m.role().size() > static_cast<size_t>(kMaxChatRoleBytes)) {
      return Invalid(
          absl::StrCat("chat.messages[", i, "].role"),
          absl::StrCat("must be 1 to ", kMaxChatRoleBytes, " bytes, got ", m.role().size()));
    }
    for (const std::string* text : {&m.role(), &m.content()}) {
      if (const size_t bad = FindInvalidUtf8(*text); bad != std::string_view::npos) {
        return Invalid(
            absl::StrCat("chat.messages[", i, "].", text == &m.role() ? "role" : "content"),
            absl::StrCat("not valid UTF-8 (byte ", bad, ")"));
      }
    }
    bytes += static_cast<int64_t>(m.role().size() + m.content().size());
    if (bytes > max_bytes) {
      return Invalid("chat.messages",
                     absl::StrCat("the messages hold more than ", max_bytes, " bytes; at most ",
                                  max_bytes, " are accepted (limits.max_prompt_bytes)"));
    }
    engine::chat::ChatMessage message;
    message.role = m.role();
    message.content = engine::chat::Value::String(m.content());
    messages.push_back(std::move(message));
  }
  engine::chat::RenderOptions options;
  options.add_generation_prompt = !in.has_add_generation_prompt() || in.add_generation_prompt();
  options.bos_token = chat->bos_token;
  options.eos_token = chat->eos_token;
  options.content_is_inert = !in.parse_special_in_content();
  absl::StatusOr<engine::chat::RenderedPrompt> rendered =
      chat->chat_template->Render(messages, options);
  if (!rendered.ok()) {
    // The template refused the conversation (raise_exception: roles out of order, a system
    // message it does not take ...) or cannot render it: the caller learns why.
    return absl::Status(rendered.status().code(),
                        absl::StrCat("chat: ", rendered.status().message()));
  }
  // The template's own text adds to the messages' bytes; bound the tokenizer's work by it too.
  int64_t rendered_bytes = 0;
  std::vector<engine::Tokenizer::TextPart> parts;
  for (const engine::chat::PromptSegment& segment : rendered->segments) {
    rendered_bytes += static_cast<int64_t>(segment.text.size());
    parts.push_back({segment.text, segment.from_template});
  }
  const int64_t max_tokens = limits.max_prompt_tokens;
  if (rendered_bytes > max_tokens * static_cast<int64_t>(tokenizer.max_token_bytes())) {
    return Invalid("chat", absl::StrCat("the rendered prompt has more than ", max_tokens,
                                        " tokens; at most ", max_tokens, " are accepted"));
  }
  *prompt = tokenizer.EncodeParts(parts);
  if (prompt->empty()) return Invalid("chat", "the rendered prompt gives no tokens");
  return absl::OkStatus();
}

absl::Status FillPrompt(const v1::GenerateRequest& in, const engine::Tokenizer& tokenizer,
                        const RequestLimits& limits, const ChatSettings* chat,
                        std::vector<int32_t>* prompt) {
  std::string field;
  switch (in.prompt_case()) {
    case v1::GenerateRequest::kText: {
      field = "text";
      if (in.text().empty()) return Invalid(field, "must not be empty");
      const int64_t max_bytes = limits.max_prompt_bytes > 0
                                    ? limits.max_prompt_bytes
                                    : DefaultMaxPromptBytes(limits.max_prompt_tokens, tokenizer);
      if (static_cast<int64_t>(in.text().size()) > max_bytes) {
        return Invalid(field, absl::StrCat("the prompt has ", in.text().size(), " bytes; at most ",
                                           max_bytes, " are accepted (limits.max_prompt_bytes)"));
      }
      // Parsing already rejects non-UTF-8; this keeps the check when a caller builds the message
      // in process.
      if (const size_t bad = FindInvalidUtf8(in.text()); bad != std::string_view::npos) {
        return Invalid(field, absl::StrCat("not valid UTF-8 (byte ", bad, ")"));
      }
      std::optional<std::vector<int32_t>> tokens = tokenizer.EncodeAtMost(
          in.text(), tokenizer.vocab().add_bos, static_cast<size_t>(limits.max_prompt_tokens));
      if (!tokens) {
        return Invalid(
            field, absl::StrCat("the prompt has more than ", limits.max_prompt_tokens,
                                " tokens; at most ", limits.max_prompt_tokens, " are accepted"));
      }
      *prompt = *std::move(tokens);
      if (prompt->empty()) return Invalid(field, "the text gives no tokens");
      break;
    }
    case v1::GenerateRequest::kTokenIds: {
      field = "token_ids.ids";
      const auto& ids = in.token_ids().ids();
      if (ids.empty()) return Invalid(field, "must not be empty");
      for (int i = 0; i < ids.size(); ++i) {
        if (!tokenizer.IsValidId(ids[i])) {
          return Invalid(absl::StrCat(field, "[", i, "]"),
                         absl::StrCat("token id ", ids[i], " is outside the vocabulary [0, ",
                                      tokenizer.vocab_size(), ")"));
        }
      }
      prompt->assign(ids.begin(), ids.end());
      break;
    }
    case v1::GenerateRequest::kChat: {
      field = "chat";
      if (absl::Status s = FillChatPrompt(in.chat(), tokenizer, limits, chat, prompt); !s.ok()) {
        return s;
      }
      break;
    }
    case v1::GenerateRequest::PROMPT_NOT_SET:
      return Invalid("prompt", "set one of text, token_ids or chat");
  }
  if (static_cast<int64_t>(prompt->size()) > limits.max_prompt_tokens) {
    return Invalid(field, absl::StrCat("the prompt has ", prompt->size(), " tokens; at most ",
                                       limits.max_prompt_tokens, " are accepted"));
  }
  return absl::OkStatus();
}

absl::Status FillRetention(const v1::GenerateRequest& in, std::vector<engine::RetentionHint>* out) {
  if (in.retention_size() > kMaxRetentionHints) {
    return Invalid("retention", absl::StrCat("at most ", kMaxRetentionHints,
                                             " hints are accepted, got ", in.retention_size()));
  }
  for (int i = 0; i < in.retention_size(); ++i) {
    const v1::RetentionHint& h = in.retention(i);
    const std::string at = absl::StrCat("retention[", i, "].");
    engine::RetentionHint hint;
    if (h.start_token() < 0) {
      return Invalid(at + "start_token", absl::StrCat("must be >= 0, got ", h.start_token()));
    }
    hint.start_token = h.start_token();
    if (h.has_end_token()) {
      if (h.end_token() <= h.start_token()) {
        return Invalid(at + "end_token", absl::StrCat("must be > start_token (", h.start_token(),
                                                      "), got ", h.end_token()));
      }
      hint.end_token = h.end_token();
    }
    hint.priority = h.has_priority() ? h.priority() : kDefaultRetentionPriority;
    if (hint.priority < 0 || hint.priority > 100) {
      return Invalid(at + "priority", absl::StrCat("must be in [0, 100], got ", hint.priority));
    }
    if (h.has_duration()) {
      if (h.duration().seconds() < 0 || h.duration().nanos() < 0 ||
          h.duration().nanos() > 999999999) {
        return Invalid(at + "duration", "must be a valid duration >= 0");
      }
      hint.duration = FromProtoDuration(h.duration());
    }
    out->push_back(hint);
  }
  return absl::OkStatus();
}

}  // namespace

int64_t DefaultMaxPromptBytes(int32_t max_prompt_tokens, const engine::Tokenizer& tokenizer) {
  return static_cast<int64_t>(std::max<int32_t>(max_prompt_tokens, 1)) *
         static_cast<int64_t>(tokenizer.max_token_bytes());
}

int64_t DefaultMaxRequestBytes(const RequestLimits& limits) {
  constexpr int64_t kMaxIdBytes = 5;  // a varint of a non-negative int32
  const int64_t ids = std::max<int64_t>({limits.max_prompt_tokens, limits.max_tokens_limit, 1});
  const int64_t bytes = limits.max_prompt_bytes + kMaxIdBytes * ids + kRequestFieldsBytes;
  return std::min<int64_t>(bytes, std::numeric_limits<int32_t>::max());
}

absl::StatusOr<engine::EngineRequest> BuildEngineRequest(const v1::GenerateRequest& request,
                                                         const engine::Tokenizer& tokenizer,
                                                         const RequestLimits& limits,
                                                         uint64_t random_seed, absl::Time deadline,
                                                         const ChatSettings* chat) {
  engine::EngineRequest out;
  if (absl::Status s = CheckRequestId(request.request_id()); !s.ok()) return s;
  out.id = request.request_id();
  if (absl::Status s = FillPrompt(request, tokenizer, limits, chat, &out.prompt); !s.ok()) {
    return s;
  }
  if (absl::Status s = FillSampling(request.sampling(), random_seed, &out.sampling); !s.ok()) {
    return s;
  }

  if (request.has_max_tokens()) {
    if (request.max_tokens() < 1) {
      return Invalid("max_tokens", absl::StrCat("must be >= 1, got ", request.max_tokens()));
    }
    if (request.max_tokens() > limits.max_tokens_limit) {
      return Invalid("max_tokens", absl::StrCat("must be at most ", limits.max_tokens_limit,
                                                ", got ", request.max_tokens()));
    }
    out.max_tokens = request.max_tokens();
  } else {
    out.max_tokens = std::min(limits.default_max_tokens, limits.max_tokens_limit);
  }

  if (request.stop_size() > kMaxStopStrings) {
    return Invalid("stop", absl::StrCat("at most ", kMaxStopStrings, " stop strings, got ",
                                        request.stop_size()));
  }
  for (int i = 0; i < request.stop_size(); ++i) {
    const std::string& stop = request.stop(i);
    if (stop.empty() || stop.size() > static_cast<size_t>(kMaxStopBytes)) {
      return Invalid(absl::StrCat("stop[", i, "]"),
                     absl::StrCat("must be 1 to ", kMaxStopBytes, " bytes, got ", stop.size()));
    }
    out.stop.push_back(stop);
  }

  if (request.cache_salt().size() > static_cast<size_t>(kMaxCacheSaltBytes)) {
    return Invalid("cache_salt", absl::StrCat("must be at most ", kMaxCacheSaltBytes,
                                              " bytes, got ", request.cache_salt().size()));
  }
  out.cache_salt = request.cache_salt();
  out.priority = request.priority();
  out.ignore_eos = request.ignore_eos();
  if (absl::Status s = FillRetention(request, &out.retention); !s.ok()) return s;
  // Policy names and budget limits are checked by the engine against the server's config.
  if (request.token_eviction().policy().size() > 64) {
    return Invalid("token_eviction.policy", absl::StrCat("must be at most 64 bytes, got ",
                                                         request.token_eviction().policy().size()));
  }
  out.token_eviction.policy = request.token_eviction().policy();
  out.token_eviction.budget_tokens = request.token_eviction().budget_tokens();
  if (request.has_logprobs()) {
    if (request.logprobs() < 0 || request.logprobs() > engine::kMaxTopLogprobs) {
      return Invalid("logprobs", absl::StrCat("must be in [0, ", engine::kMaxTopLogprobs, "], got ",
                                              request.logprobs()));
    }
    out.logprobs = request.logprobs();
  }
  out.deadline = deadline;
  return out;
}

}  // namespace kvserve::server
