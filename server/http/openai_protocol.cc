#include "server/http/openai_protocol.h"

#include <cmath>
#include <limits>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "nlohmann/json.hpp"

namespace kvserve::server {
namespace {

using nlohmann::json;
using Error = std::optional<OpenAiError>;

OpenAiError BadField(std::string_view field, std::string_view message) {
  OpenAiError e;
  e.message = std::string(field) + ": " + std::string(message);
  e.param = std::string(field);
  return e;
}

// A value as the client wrote it, shortened for an error message.
std::string Shown(const json& v) {
  std::string s = v.dump(-1, ' ', false, json::error_handler_t::replace);
  if (s.size() > 64) s = s.substr(0, 61) + "...";
  return s;
}

const char* TypeName(const json& v) {
  if (v.is_object()) return "an object";
  if (v.is_array()) return "an array";
  if (v.is_string()) return "a string";
  if (v.is_boolean()) return "a boolean";
  if (v.is_number()) return "a number";
  return "null";
}

// The field's value, or null when the body leaves it out or sets it to null.
const json* Field(const json& obj, const char* key) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return nullptr;
  return &*it;
}

Error GetBool(const json& obj, const char* key, std::optional<bool>* out) {
  const json* v = Field(obj, key);
  if (v == nullptr) return std::nullopt;
  if (!v->is_boolean()) return BadField(key, absl::StrCat("must be a boolean, got ", Shown(*v)));
  *out = v->get<bool>();
  return std::nullopt;
}

Error GetString(const json& obj, const char* key, std::optional<std::string>* out) {
  const json* v = Field(obj, key);
  if (v == nullptr) return std::nullopt;
  if (!v->is_string()) return BadField(key, absl::StrCat("must be a string, got ", Shown(*v)));
  *out = v->get<std::string>();
  return std::nullopt;
}

// An integer in [lo, hi].
Error GetInt(const json& obj, const char* key, int64_t lo, int64_t hi,
             std::optional<int64_t>* out) {
  const json* v = Field(obj, key);
  if (v == nullptr) return std::nullopt;
  const std::string range = absl::StrCat("must be an integer in [", lo, ", ", hi, "], got ");
  if (v->is_number_unsigned()) {
    const uint64_t u = v->get<uint64_t>();
    if (u > static_cast<uint64_t>(hi) || (lo > 0 && u < static_cast<uint64_t>(lo))) {
      return BadField(key, range + Shown(*v));
    }
    *out = static_cast<int64_t>(u);
    return std::nullopt;
  }
  if (!v->is_number_integer()) return BadField(key, range + Shown(*v));
  const int64_t i = v->get<int64_t>();
  if (i < lo || i > hi) return BadField(key, range + Shown(*v));
  *out = i;
  return std::nullopt;
}

// A finite number in the range; `lo_open` excludes lo.
Error GetNumber(const json& obj, const char* key, double lo, double hi, bool lo_open,
                std::optional<double>* out) {
  const json* v = Field(obj, key);
  if (v == nullptr) return std::nullopt;
  const std::string range =
      absl::StrCat("must be a number in ", lo_open ? "(" : "[", lo, ", ", hi, "], got ");
  if (!v->is_number()) return BadField(key, range + Shown(*v));
  const double d = v->get<double>();
  if (!std::isfinite(d) || d > hi || d < lo || (lo_open && d == lo)) {
    return BadField(key, range + Shown(*v));
  }
  *out = d;
  return std::nullopt;
}

// Fields every endpoint takes, and those of one endpoint.
constexpr std::string_view kCommonFields[] = {
    "model", "max_tokens", "temperature", "top_p", "n", "stream", "stream_options", "stop", "seed",
    "presence_penalty", "frequency_penalty", "logprobs", "logit_bias", "user", "store", "metadata",
    "service_tier",
    // kvserve's own
    "top_k", "min_p", "repetition_penalty", "ignore_eos", "priority", "cache_salt", "request_id",
    "retention", "token_eviction"};
constexpr std::string_view kCompletionFields[] = {"prompt", "echo", "suffix", "best_of"};
constexpr std::string_view kChatFields[] = {
    "messages",    "max_completion_tokens", "top_logprobs",          "response_format",     "tools",
    "tool_choice", "parallel_tool_calls",   "add_generation_prompt", "parse_special_tokens"};

template <size_t N>
bool In(std::string_view key, const std::string_view (&list)[N]) {
  for (std::string_view k : list) {
    if (k == key) return true;
  }
  return false;
}

Error CheckKnownFields(const json& body, OpenAiEndpoint endpoint) {
  for (auto it = body.begin(); it != body.end(); ++it) {
    const std::string& key = it.key();
    if (In(key, kCommonFields)) continue;
    if (endpoint == OpenAiEndpoint::kCompletions ? In(key, kCompletionFields)
                                                 : In(key, kChatFields)) {
      continue;
    }
    OpenAiError e;
    e.message = absl::StrCat("unknown field '", key, "'");
    if (key.size() > 64) e.message = absl::StrCat("unknown field '", key.substr(0, 61), "...'");
    e.param = e.message.substr(15, e.message.size() - 16);
    return e;
  }
  return std::nullopt;
}

// Fields the API defines that would change the output and that kvserve does not implement: only
// their neutral values are accepted.
Error CheckUnsupported(const json& body, OpenAiEndpoint endpoint) {
  if (const json* v = Field(body, "logit_bias"); v != nullptr && !(v->is_object() && v->empty())) {
    return BadField("logit_bias", "is not supported");
  }
  if (endpoint == OpenAiEndpoint::kCompletions) {
    if (const json* v = Field(body, "suffix"); v != nullptr && !(v->is_string() && v->empty())) {
      return BadField("suffix", "is not supported");
    }
    return std::nullopt;
  }
  if (const json* v = Field(body, "tools"); v != nullptr && !(v->is_array() && v->empty())) {
    return BadField("tools", "tool calls are not supported");
  }
  if (const json* v = Field(body, "tool_choice"); v != nullptr && *v != "none") {
    return BadField("tool_choice", "tool calls are not supported (only \"none\")");
  }
  if (const json* v = Field(body, "response_format"); v != nullptr) {
    if (!v->is_object() || v->value("type", json()) != "text") {
      return BadField("response_format", "only {\"type\": \"text\"} is supported");
    }
  }
  if (const json* v = Field(body, "parallel_tool_calls"); v != nullptr && !v->is_boolean()) {
    return BadField("parallel_tool_calls", "must be a boolean");
  }
  return std::nullopt;
}

// Fields that change nothing; type-checked only.
Error CheckInert(const json& body) {
  std::optional<std::string> user;
  if (Error e = GetString(body, "user", &user)) return e;
  std::optional<bool> store;
  if (Error e = GetBool(body, "store", &store)) return e;
  if (const json* v = Field(body, "metadata"); v != nullptr && !v->is_object()) {
    return BadField("metadata", "must be an object");
  }
  std::optional<std::string> tier;
  return GetString(body, "service_tier", &tier);
}

Error ParseStop(const json& body, v1::GenerateRequest* out) {
  const json* v = Field(body, "stop");
  if (v == nullptr) return std::nullopt;
  if (v->is_string()) {
    out->add_stop(v->get<std::string>());
    return std::nullopt;
  }
  if (!v->is_array()) {
    return BadField("stop",
                    absl::StrCat("must be a string or an array of strings, got ", Shown(*v)));
  }
  for (size_t i = 0; i < v->size(); ++i) {
    if (!(*v)[i].is_string()) {
      return BadField(absl::StrCat("stop[", i, "]"), "must be a string");
    }
    out->add_stop((*v)[i].get<std::string>());
  }
  return std::nullopt;
}

// temperature, top_p, penalties and kvserve's sampling extras into out->sampling.
Error ParseSampling(const json& body, v1::GenerateRequest* out) {
  v1::SamplingParams* s = out->mutable_sampling();
  std::optional<double> d;
  if (Error e = GetNumber(body, "temperature", 0, 2, false, &d)) return e;
  s->set_temperature(d ? static_cast<float>(*d) : 1.0f);
  d.reset();
  if (Error e = GetNumber(body, "top_p", 0, 1, true, &d)) return e;
  if (d) s->set_top_p(static_cast<float>(*d));
  d.reset();
  if (Error e = GetNumber(body, "min_p", 0, 1, false, &d)) return e;
  if (d) s->set_min_p(static_cast<float>(*d));
  d.reset();
  if (Error e = GetNumber(body, "repetition_penalty", 0, 1e6, true, &d)) return e;
  if (d) s->set_repetition_penalty(static_cast<float>(*d));
  std::optional<int64_t> i;
  // -1 means off, as in vLLM.
  if (Error e = GetInt(body, "top_k", -1, std::numeric_limits<int32_t>::max(), &i)) return e;
  if (i) s->set_top_k(*i < 0 ? 0 : static_cast<int32_t>(*i));
  d.reset();
  if (Error e = GetNumber(body, "presence_penalty", -2, 2, false, &d)) return e;
  if (d) s->set_presence_penalty(static_cast<float>(*d));
  d.reset();
  if (Error e = GetNumber(body, "frequency_penalty", -2, 2, false, &d)) return e;
  if (d) s->set_frequency_penalty(static_cast<float>(*d));
  return std::nullopt;
}

Error ParseRetention(const json& body, v1::GenerateRequest* out) {
  const json* v = Field(body, "retention");
  if (v == nullptr) return std::nullopt;
  if (!v->is_array()) return BadField("retention", "must be an array of objects");
  for (size_t i = 0; i < v->size(); ++i) {
    const json& h = (*v)[i];
    const std::string at = absl::StrCat("retention[", i, "]");
    if (!h.is_object()) return BadField(at, "must be an object");
    for (auto it = h.begin(); it != h.end(); ++it) {
      if (it.key() != "start_token" && it.key() != "end_token" && it.key() != "priority" &&
          it.key() != "duration_seconds") {
        return BadField(at, absl::StrCat("unknown field '", it.key().substr(0, 64), "'"));
      }
    }
    v1::RetentionHint* hint = out->add_retention();
    std::optional<int64_t> n;
    if (Error e = GetInt(h, "start_token", 0, std::numeric_limits<int32_t>::max(), &n)) {
      return BadField(at + ".start_token", e->message.substr(e->message.find(':') + 2));
    }
    if (n) hint->set_start_token(static_cast<int32_t>(*n));
    n.reset();
    if (Error e = GetInt(h, "end_token", 0, std::numeric_limits<int32_t>::max(), &n)) {
      return BadField(at + ".end_token", e->message.substr(e->message.find(':') + 2));
    }
    if (n) hint->set_end_token(static_cast<int32_t>(*n));
    n.reset();
    if (Error e = GetInt(h, "priority", 0, 100, &n)) {
      return BadField(at + ".priority", e->message.substr(e->message.find(':') + 2));
    }
    if (n) hint->set_priority(static_cast<int32_t>(*n));
    std::optional<double> seconds;
    if (Error e = GetNumber(h, "duration_seconds", 0, 1e9, false, &seconds)) {
      return BadField(at + ".duration_seconds", e->message.substr(e->message.find(':') + 2));
    }
    if (seconds) {
      const double whole = std::floor(*seconds);
      hint->mutable_duration()->set_seconds(static_cast<int64_t>(whole));
      hint->mutable_duration()->set_nanos(static_cast<int32_t>((*seconds - whole) * 1e9));
    }
  }
  return std::nullopt;
}

// kvserve's scheduling and KV fields.
Error ParseKvserveFields(const json& body, v1::GenerateRequest* out) {
  std::optional<bool> b;
  if (Error e = GetBool(body, "ignore_eos", &b)) return e;
  out->set_ignore_eos(b.value_or(false));
  std::optional<int64_t> i;
  if (Error e = GetInt(body, "priority", std::numeric_limits<int32_t>::min(),
                       std::numeric_limits<int32_t>::max(), &i)) {
    return e;
  }
  if (i) out->set_priority(static_cast<int32_t>(*i));
  std::optional<std::string> s;
  if (Error e = GetString(body, "cache_salt", &s)) return e;
  if (s) out->set_cache_salt(*s);
  s.reset();
  if (Error e = GetString(body, "request_id", &s)) return e;
  if (s) out->set_request_id(*s);
  if (Error e = ParseRetention(body, out)) return e;
  if (const json* v = Field(body, "token_eviction"); v != nullptr) {
    if (!v->is_object()) return BadField("token_eviction", "must be an object");
    for (auto it = v->begin(); it != v->end(); ++it) {
      if (it.key() != "policy" && it.key() != "budget_tokens") {
        return BadField("token_eviction",
                        absl::StrCat("unknown field '", it.key().substr(0, 64), "'"));
      }
    }
    s.reset();
    if (Error e = GetString(*v, "policy", &s))
      return BadField("token_eviction.policy", "must be a string");
    if (s) out->mutable_token_eviction()->set_policy(*s);
    i.reset();
    if (Error e = GetInt(*v, "budget_tokens", 0, std::numeric_limits<int32_t>::max(), &i)) {
      return BadField("token_eviction.budget_tokens", e->message.substr(e->message.find(':') + 2));
    }
    if (i) out->mutable_token_eviction()->set_budget_tokens(static_cast<int32_t>(*i));
  }
  return std::nullopt;
}

// Everything but the prompt, into `base`, and the request's own options into `out`.
Error ParseCommon(const json& body, OpenAiEndpoint endpoint, v1::GenerateRequest* base,
                  OpenAiRequest* out) {
  std::optional<std::string> model;
  if (Error e = GetString(body, "model", &model)) return e;
  out->model = model.value_or("");
  std::optional<int64_t> i;
  const char* max_key = "max_tokens";
  if (endpoint == OpenAiEndpoint::kChat && Field(body, "max_completion_tokens") != nullptr) {
    max_key = "max_completion_tokens";
  }
  if (Error e = GetInt(body, max_key, 1, std::numeric_limits<int32_t>::max(), &i)) return e;
  if (i) base->set_max_tokens(static_cast<int32_t>(*i));
  i.reset();
  if (Error e = GetInt(body, "n", 1, kMaxOpenAiChoices, &i)) return e;
  out->n = i ? static_cast<int32_t>(*i) : 1;
  std::optional<bool> b;
  if (Error e = GetBool(body, "stream", &b)) return e;
  out->stream = b.value_or(false);
  if (const json* v = Field(body, "stream_options"); v != nullptr) {
    if (!v->is_object()) return BadField("stream_options", "must be an object");
    if (!out->stream) return BadField("stream_options", "is allowed only with stream: true");
    b.reset();
    if (Error e = GetBool(*v, "include_usage", &b)) {
      return BadField("stream_options.include_usage", "must be a boolean");
    }
    out->include_usage = b.value_or(false);
  }
  // Seeds are 64-bit; negative ones (allowed by the API) are taken modulo 2^64.
  if (const json* v = Field(body, "seed"); v != nullptr) {
    if (v->is_number_unsigned()) {
      out->seed = v->get<uint64_t>();
    } else if (v->is_number_integer()) {
      out->seed = static_cast<uint64_t>(v->get<int64_t>());
    } else {
      return BadField("seed", absl::StrCat("must be an integer, got ", Shown(*v)));
    }
  }
  if (Error e = ParseStop(body, base)) return e;
  if (Error e = ParseSampling(body, base)) return e;
  return ParseKvserveFields(body, base);
}

Error ParseLogprobs(const json& body, OpenAiEndpoint endpoint, OpenAiRequest* out) {
  if (endpoint == OpenAiEndpoint::kCompletions) {
    std::optional<int64_t> n;
    if (Error e = GetInt(body, "logprobs", 0, kMaxTopLogprobs, &n)) return e;
    if (n) out->logprobs = static_cast<int32_t>(*n);
  } else {
    std::optional<bool> on;
    if (Error e = GetBool(body, "logprobs", &on)) return e;
    std::optional<int64_t> top;
    if (Error e = GetInt(body, "top_logprobs", 0, kMaxTopLogprobs, &top)) return e;
    if (top && !on.value_or(false)) {
      return BadField("top_logprobs", "requires logprobs: true");
    }
    if (on.value_or(false)) out->logprobs = static_cast<int32_t>(top.value_or(0));
  }
  return std::nullopt;
}

// A prompt of token ids: every element an integer that fits a token id (the vocabulary is
// checked later, by BuildEngineRequest).
Error ParseIds(const json& ids, const std::string& at, v1::GenerateRequest* out) {
  v1::TokenIds* dst = out->mutable_token_ids();
  for (size_t i = 0; i < ids.size(); ++i) {
    const json& t = ids[i];
    if (!t.is_number_integer() && !t.is_number_unsigned()) {
      return BadField(absl::StrCat(at, "[", i, "]"),
                      absl::StrCat("must be a token id, got ", Shown(t)));
    }
    if (t.is_number_unsigned()
            ? t.get<uint64_t>() > std::numeric_limits<int32_t>::max()
            : (t.get<int64_t>() < 0 || t.get<int64_t>() > std::numeric_limits<int32_t>::max())) {
      return BadField(absl::StrCat(at, "[", i, "]"),
                      absl::StrCat("token id ", Shown(t), " is out of range"));
    }
    dst->add_ids(static_cast<int32_t>(t.get<int64_t>()));
  }
  return std::nullopt;
}

// "prompt": a string, an array of token ids, an array of strings or an array of arrays of ids.
Error ParsePrompts(const json& body, const v1::GenerateRequest& base, OpenAiRequest* out) {
  const json* p = Field(body, "prompt");
  if (p == nullptr) return BadField("prompt", "is required");
  auto add = [&]() {
    out->prompts.push_back(base);
    return &out->prompts.back();
  };
  if (p->is_string()) {
    add()->set_text(p->get<std::string>());
    return std::nullopt;
  }
  if (!p->is_array()) {
    return BadField("prompt", absl::StrCat("must be a string or an array, got ", TypeName(*p)));
  }
  if (p->empty()) return BadField("prompt", "must not be empty");
  const json& first = (*p)[0];
  if (first.is_number()) return ParseIds(*p, "prompt", add());
  for (size_t i = 0; i < p->size(); ++i) {
    const json& item = (*p)[i];
    const std::string at = absl::StrCat("prompt[", i, "]");
    if (item.is_string() && first.is_string()) {
      add()->set_text(item.get<std::string>());
    } else if (item.is_array() && first.is_array()) {
      if (item.empty()) return BadField(at, "must not be empty");
      if (Error e = ParseIds(item, at, add())) return e;
    } else {
      return BadField(at, "the prompts of one request must all be strings or all arrays of ids");
    }
  }
  return std::nullopt;
}

Error ParseContent(const json& content, const std::string& at, std::string* out) {
  if (content.is_string()) {
    *out = content.get<std::string>();
    return std::nullopt;
  }
  if (!content.is_array()) {
    return BadField(
        at, absl::StrCat("must be a string or an array of text parts, got ", TypeName(content)));
  }
  for (size_t j = 0; j < content.size(); ++j) {
    const json& part = content[j];
    const std::string pat = absl::StrCat(at, "[", j, "]");
    if (!part.is_object() || part.value("type", json()) != "text") {
      return BadField(pat, "only parts of type \"text\" are supported");
    }
    const json* text = Field(part, "text");
    if (text == nullptr || !text->is_string()) return BadField(pat + ".text", "must be a string");
    out->append(text->get<std::string>());
  }
  return std::nullopt;
}

Error ParseMessages(const json& body, const v1::GenerateRequest& base, OpenAiRequest* out) {
  const json* m = Field(body, "messages");
  if (m == nullptr) return BadField("messages", "is required");
  if (!m->is_array() || m->empty()) return BadField("messages", "must be a non-empty array");
  v1::GenerateRequest request = base;
  v1::ChatPrompt* chat = request.mutable_chat();
  for (size_t i = 0; i < m->size(); ++i) {
    const json& msg = (*m)[i];
    const std::string at = absl::StrCat("messages[", i, "]");
    if (!msg.is_object()) return BadField(at, "must be an object");
    for (auto it = msg.begin(); it != msg.end(); ++it) {
      if (it.key() != "role" && it.key() != "content") {
        return BadField(absl::StrCat(at, ".", it.key().substr(0, 64)), "is not supported");
      }
    }
    const json* role = Field(msg, "role");
    if (role == nullptr || !role->is_string()) return BadField(at + ".role", "must be a string");
    v1::ChatMessage* dst = chat->add_messages();
    dst->set_role(role->get<std::string>());
    if (const json* content = Field(msg, "content"); content != nullptr) {
      if (Error e = ParseContent(*content, at + ".content", dst->mutable_content())) return e;
    }
  }
  std::optional<bool> b;
  if (Error e = GetBool(body, "add_generation_prompt", &b)) return e;
  if (b) chat->set_add_generation_prompt(*b);
  b.reset();
  if (Error e = GetBool(body, "parse_special_tokens", &b)) return e;
  if (b && *b) return BadField("parse_special_tokens", "is not supported over HTTP");
  out->prompts.push_back(std::move(request));
  return std::nullopt;
}

// The JSON field of a proto field path.
std::string JsonField(std::string_view proto, OpenAiEndpoint endpoint, int prompt_index,
                      int num_prompts) {
  absl::string_view rest(proto.data(), proto.size());
  if (absl::ConsumePrefix(&rest, "sampling.")) return std::string(rest);
  std::string prompt =
      num_prompts > 1 ? absl::StrCat("prompt[", prompt_index, "]") : std::string("prompt");
  if (absl::ConsumePrefix(&rest, "token_ids.ids")) return prompt + std::string(rest);
  if (rest == "token_ids" || rest == "text") return prompt;
  if (absl::ConsumePrefix(&rest, "chat.messages")) return "messages" + std::string(rest);
  if (rest == "chat") return "messages";
  if (rest == "max_tokens" && endpoint == OpenAiEndpoint::kChat) return "max_tokens";
  return std::string(proto);
}

// A token's raw bytes as the API's `bytes` list (its text may be part of a UTF-8 character).
std::vector<int> Bytes(const std::string& text) {
  std::vector<int> out;
  out.reserve(text.size());
  for (const char ch : text) out.push_back(static_cast<unsigned char>(ch));
  return out;
}

void AddLogprobsJson(OpenAiEndpoint endpoint, const ChoiceOutput& c, int32_t logprobs,
                     json* choice) {
  if (logprobs < 0 || c.token_logprobs.empty()) {
    (*choice)["logprobs"] = nullptr;
    return;
  }
  if (endpoint == OpenAiEndpoint::kCompletions) {
    json lp = {{"tokens", c.token_texts},
               {"token_logprobs", c.token_logprobs},
               {"text_offset", c.text_offsets}};
    json tops = json::array();
    for (const auto& alternatives : c.top_logprobs) {
      json t = json::object();
      for (const auto& [token, value] : alternatives) t[token] = value;
      tops.push_back(std::move(t));
    }
    lp["top_logprobs"] = std::move(tops);
    (*choice)["logprobs"] = std::move(lp);
    return;
  }
  json content = json::array();
  for (size_t i = 0; i < c.token_logprobs.size(); ++i) {
    json tops = json::array();
    if (i < c.top_logprobs.size()) {
      for (const auto& [token, value] : c.top_logprobs[i]) {
        tops.push_back({{"token", token}, {"logprob", value}, {"bytes", Bytes(token)}});
      }
    }
    const std::string token = i < c.token_texts.size() ? c.token_texts[i] : std::string();
    content.push_back({{"token", token},
                       {"logprob", c.token_logprobs[i]},
                       {"bytes", Bytes(token)},
                       {"top_logprobs", std::move(tops)}});
  }
  (*choice)["logprobs"] = {{"content", std::move(content)}};
}

json FinishJson(const ChoiceOutput& c) {
  if (!c.finished) return nullptr;
  const std::string_view r = OpenAiFinishReason(c.finish_reason);
  if (r.empty()) return nullptr;
  return std::string(r);
}

json UsageJson(const OpenAiUsage& usage) {
  return {{"prompt_tokens", usage.prompt_tokens},
          {"completion_tokens", usage.completion_tokens},
          {"total_tokens", usage.prompt_tokens + usage.completion_tokens},
          {"prompt_tokens_details", {{"cached_tokens", usage.cached_tokens}}}};
}

json Envelope(OpenAiEndpoint endpoint, const ResponseIdentity& identity, bool chunk) {
  const char* object = endpoint == OpenAiEndpoint::kCompletions
                           ? "text_completion"
                           : (chunk ? "chat.completion.chunk" : "chat.completion");
  return {{"id", identity.id},
          {"object", object},
          {"created", identity.created},
          {"model", identity.model},
          {"system_fingerprint", nullptr}};
}

// A JSON string literal of `text`.
std::string Quote(const std::string& text) {
  return json(text).dump(-1, ' ', false, json::error_handler_t::replace);
}

// ChunkEvent without log-probabilities: the event of nearly every streamed token, written
// directly (the same object as the general path builds, without building a JSON tree).
std::string PlainChunkEvent(OpenAiEndpoint endpoint, const ResponseIdentity& identity,
                            const ChoiceOutput& choice) {
  const bool completions = endpoint == OpenAiEndpoint::kCompletions;
  std::string out =
      absl::StrCat("data: {\"id\":", Quote(identity.id), ",\"object\":\"",
                   completions ? "text_completion" : "chat.completion.chunk",
                   "\",\"created\":", identity.created, ",\"model\":", Quote(identity.model),
                   ",\"system_fingerprint\":null,\"choices\":[{\"index\":", choice.index, ",");
  if (completions) {
    absl::StrAppend(&out, "\"text\":", Quote(choice.text));
  } else if (choice.text.empty()) {
    absl::StrAppend(&out, "\"delta\":{}");
  } else {
    absl::StrAppend(&out, "\"delta\":{\"content\":", Quote(choice.text), "}");
  }
  const std::string_view finish = choice.finished ? OpenAiFinishReason(choice.finish_reason) : "";
  absl::StrAppend(
      &out, ",\"logprobs\":null,\"finish_reason\":",
      finish.empty() ? std::string("null") : absl::StrCat("\"", std::string(finish), "\""),
      "}]}\n\n");
  return out;
}

std::string Dump(const json& j) {
  // Output text is valid UTF-8 (the engine emits whole characters only); replace guards the rest.
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

}  // namespace

std::optional<OpenAiError> ParseOpenAiRequest(std::string_view body, OpenAiEndpoint endpoint,
                                              OpenAiRequest* out) {
  *out = OpenAiRequest();
  out->endpoint = endpoint;
  json parsed = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (parsed.is_discarded()) {
    OpenAiError e;
    e.message = "the request body is not valid JSON";
    return e;
  }
  if (!parsed.is_object()) {
    OpenAiError e;
    e.message = "the request body must be a JSON object";
    return e;
  }
  if (Error e = CheckKnownFields(parsed, endpoint)) return e;
  if (Error e = CheckUnsupported(parsed, endpoint)) return e;
  if (Error e = CheckInert(parsed)) return e;
  v1::GenerateRequest base;
  if (Error e = ParseCommon(parsed, endpoint, &base, out)) return e;
  if (Error e = ParseLogprobs(parsed, endpoint, out)) return e;
  if (out->logprobs >= 0) base.set_logprobs(out->logprobs);
  if (endpoint == OpenAiEndpoint::kCompletions) {
    std::optional<bool> echo;
    if (Error e = GetBool(parsed, "echo", &echo)) return e;
    out->echo = echo.value_or(false);
    std::optional<int64_t> best_of;
    if (Error e = GetInt(parsed, "best_of", 1, kMaxOpenAiChoices, &best_of)) return e;
    if (best_of && *best_of != out->n) {
      return BadField("best_of", "only best_of equal to n is supported");
    }
    if (Error e = ParsePrompts(parsed, base, out)) return e;
  } else {
    if (Error e = ParseMessages(parsed, base, out)) return e;
  }
  if (static_cast<int64_t>(out->prompts.size()) * out->n > kMaxOpenAiChoices) {
    return BadField(
        endpoint == OpenAiEndpoint::kCompletions ? "prompt" : "n",
        absl::StrCat("at most ", kMaxOpenAiChoices, " choices (prompts x n) per request, got ",
                     out->prompts.size() * static_cast<size_t>(out->n)));
  }
  return std::nullopt;
}

OpenAiError InvalidRequestError(const absl::Status& status, OpenAiEndpoint endpoint,
                                int prompt_index, int num_prompts) {
  OpenAiError e;
  const std::string message(status.message());
  const size_t colon = message.find(": ");
  const std::string head = colon == std::string::npos ? "" : message.substr(0, colon);
  const bool is_field = !head.empty() && head.find(' ') == std::string::npos;
  if (!is_field) {
    e.message = std::string(message);
    return e;
  }
  e.param = JsonField(head, endpoint, prompt_index, num_prompts);
  e.message = e.param + message.substr(colon);
  return e;
}

OpenAiError ErrorFromStatus(const absl::Status& status, OpenAiEndpoint endpoint) {
  OpenAiError e;
  e.message = std::string(status.message());
  switch (status.code()) {
    case absl::StatusCode::kInvalidArgument:
      return InvalidRequestError(status, endpoint, 0, 1);
    case absl::StatusCode::kUnauthenticated:
      e.http_status = 401;
      e.type = "authentication_error";
      e.code = "invalid_api_key";
      return e;
    case absl::StatusCode::kNotFound:
      e.http_status = 404;
      e.code = "not_found";
      return e;
    case absl::StatusCode::kResourceExhausted:
      e.http_status = 429;
      e.type = "rate_limit_error";
      e.code = "queue_full";
      return e;
    case absl::StatusCode::kUnavailable:
      e.http_status = 503;
      e.type = "service_unavailable_error";
      e.code = "unavailable";
      return e;
    case absl::StatusCode::kDeadlineExceeded:
      e.http_status = 408;
      e.type = "timeout_error";
      e.code = "deadline_exceeded";
      return e;
    case absl::StatusCode::kCancelled:
      e.http_status = 499;
      e.type = "cancelled";
      e.code = "cancelled";
      return e;
    default:
      e.http_status = 500;
      e.type = "server_error";
      e.code = "internal_error";
      return e;
  }
}

std::string ErrorBody(const OpenAiError& error) {
  json e = {{"message", error.message},
            {"type", error.type},
            {"param", error.param.empty() ? json(nullptr) : json(error.param)},
            {"code", error.code.empty() ? json(nullptr) : json(error.code)}};
  return Dump(json{{"error", std::move(e)}});
}

std::string_view OpenAiFinishReason(engine::FinishReason reason) {
  switch (reason) {
    case engine::FinishReason::kEos:
    case engine::FinishReason::kStop:
      return "stop";
    case engine::FinishReason::kLength:
      return "length";
    default:
      return "";
  }
}

std::string CompletionBody(OpenAiEndpoint endpoint, const ResponseIdentity& identity,
                           const std::vector<ChoiceOutput>& choices, const OpenAiUsage& usage,
                           int32_t logprobs) {
  json body = Envelope(endpoint, identity, /*chunk=*/false);
  json list = json::array();
  for (const ChoiceOutput& c : choices) {
    json choice = {{"index", c.index}};
    if (endpoint == OpenAiEndpoint::kCompletions) {
      choice["text"] = c.text;
    } else {
      choice["message"] = {{"role", "assistant"}, {"content", c.text}};
    }
    AddLogprobsJson(endpoint, c, logprobs, &choice);
    choice["finish_reason"] = FinishJson(c);
    list.push_back(std::move(choice));
  }
  body["choices"] = std::move(list);
  body["usage"] = UsageJson(usage);
  return Dump(body);
}

std::string ChunkEvent(OpenAiEndpoint endpoint, const ResponseIdentity& identity,
                       const ChoiceOutput& choice, int32_t logprobs, bool role_only) {
  if (!role_only && (logprobs < 0 || choice.token_logprobs.empty())) {
    return PlainChunkEvent(endpoint, identity, choice);
  }
  json body = Envelope(endpoint, identity, /*chunk=*/true);
  json c = {{"index", choice.index}};
  if (endpoint == OpenAiEndpoint::kCompletions) {
    c["text"] = choice.text;
  } else if (role_only) {
    c["delta"] = {{"role", "assistant"}, {"content", ""}};
  } else if (choice.text.empty()) {
    c["delta"] = json::object();
  } else {
    c["delta"] = {{"content", choice.text}};
  }
  if (role_only) {
    c["logprobs"] = nullptr;
  } else {
    AddLogprobsJson(endpoint, choice, logprobs, &c);
  }
  c["finish_reason"] = role_only ? json(nullptr) : FinishJson(choice);
  body["choices"] = json::array({std::move(c)});
  return absl::StrCat("data: ", Dump(body), "\n\n");
}

std::string UsageChunkEvent(OpenAiEndpoint endpoint, const ResponseIdentity& identity,
                            const OpenAiUsage& usage) {
  json body = Envelope(endpoint, identity, /*chunk=*/true);
  body["choices"] = json::array();
  body["usage"] = UsageJson(usage);
  return absl::StrCat("data: ", Dump(body), "\n\n");
}

std::string ErrorEvent(const OpenAiError& error) {
  return absl::StrCat("data: ", ErrorBody(error), "\n\n");
}

}  // namespace kvserve::server
