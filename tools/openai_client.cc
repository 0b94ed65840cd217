#include "tools/openai_client.h"

#include <limits>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "tools/sse_parser.h"

namespace kvserve::tools {
namespace {

using Json = nlohmann::json;

constexpr double kControlTimeoutS = 30;  // ListModels and Detokenize without --timeout

std::string Dump(const Json& j) { return j.dump(-1, ' ', false, Json::error_handler_t::replace); }

std::string Excerpt(std::string_view text) {
  constexpr size_t kMax = 200;
  return text.size() <= kMax ? std::string(text) : std::string(text.substr(0, kMax)) + "...";
}

// The integer at `j[key]` when it is one in [0, int32 max]; 0 otherwise.
int32_t Int32At(const Json& j, const char* key) {
  if (!j.is_object()) return 0;
  auto it = j.find(key);
  if (it == j.end() || !it->is_number_integer()) return 0;
  const int64_t v = it->get<int64_t>();
  return v >= 0 && v <= std::numeric_limits<int32_t>::max() ? static_cast<int32_t>(v) : 0;
}

// The string at `j[key]`, or "" when there is none.
std::string StringAt(const Json& j, const char* key) {
  if (!j.is_object()) return "";
  auto it = j.find(key);
  return it != j.end() && it->is_string() ? it->get<std::string>() : "";
}

const Json* ObjectAt(const Json& j, const char* key) {
  if (!j.is_object()) return nullptr;
  auto it = j.find(key);
  return it != j.end() && it->is_object() ? &*it : nullptr;
}

absl::StatusCode CodeOfHttpStatus(int status) {
  switch (status) {
    case 400:
    case 413:
    case 422:
      return absl::StatusCode::kInvalidArgument;
    case 401:
      return absl::StatusCode::kUnauthenticated;
    case 403:
      return absl::StatusCode::kPermissionDenied;
    case 404:
      return absl::StatusCode::kNotFound;
    case 408:
    case 504:
      return absl::StatusCode::kDeadlineExceeded;
    case 409:
      return absl::StatusCode::kAborted;
    case 429:
      return absl::StatusCode::kResourceExhausted;
    case 499:
      return absl::StatusCode::kCancelled;
    case 501:
      return absl::StatusCode::kUnimplemented;
    case 502:
    case 503:
      return absl::StatusCode::kUnavailable;
    default:
      if (status >= 400 && status < 500) return absl::StatusCode::kFailedPrecondition;
      if (status >= 500) return absl::StatusCode::kInternal;
      return absl::StatusCode::kUnknown;  // 1xx, 2xx other than 200, 3xx (not followed)
  }
}

// The message of an {"error": {"message": ...}} object (or {"error": "text"}), else "".
std::string ErrorMessageOf(const Json& j) {
  if (!j.is_object()) return "";
  auto it = j.find("error");
  if (it == j.end()) return "";
  if (it->is_string()) return it->get<std::string>();
  if (std::string m = StringAt(*it, "message"); !m.empty()) return m;
  return Dump(*it);
}

// Turns the SSE stream of one request into chunks for an OpenAiStreamHandler.
class ChunkStream : public HttpStreamHandler {
 public:
  explicit ChunkStream(std::shared_ptr<OpenAiStreamHandler> handler)
      : handler_(std::move(handler)) {}

  void OnHeaders(int status, std::string_view content_type) override {
    status_ = status;
    content_type_ = std::string(content_type);
    event_stream_ = absl::StartsWithIgnoreCase(content_type_, "text/event-stream");
  }

  bool OnBody(std::string_view bytes, Clock::time_point received) override {
    if (status_ != 200 || !event_stream_) {
      if (body_.size() < 4096) body_.append(bytes);  // for the error message
      return true;
    }
    events_.clear();
    parser_.Feed(bytes, &events_);
    for (const SseEvent& event : events_) {
      absl::StatusOr<OpenAiChunk> chunk = ParseOpenAiChunk(event.data);
      if (!chunk.ok()) {
        result_ = chunk.status();
      } else if (chunk->done) {
        result_ = absl::OkStatus();
      } else if (chunk->error.has_value()) {
        result_ = *chunk->error;
      } else {
        if (!chunk->finish_reason.empty()) finished_ = true;
        handler_->OnChunk(*chunk, received);
        continue;
      }
      return false;  // the stream is over: [DONE] or a failure
    }
    return true;
  }

  void OnDone(const absl::Status& status, Clock::time_point finished) override {
    absl::Status result;
    if (result_.has_value()) {
      result = *result_;
    } else if (!status.ok()) {
      result = status;
    } else if (status_ != 200) {
      result = OpenAiHttpError(status_, body_);
    } else if (!event_stream_) {
      result = absl::UnimplementedError(
          absl::StrCat("HTTP 200 with content type '", content_type_,
                       "', not text/event-stream (does the server stream?): ", Excerpt(body_)));
    } else if (!finished_) {
      result = absl::DataLossError("the event stream ended before [DONE] or a finish_reason");
    }
    handler_->OnDone(result, finished);
  }

 private:
  std::shared_ptr<OpenAiStreamHandler> handler_;
  int status_ = 0;
  bool event_stream_ = false;
  std::string content_type_;
  std::string body_;
  SseParser parser_;
  std::vector<SseEvent> events_;
  bool finished_ = false;               // a chunk carried a finish_reason
  std::optional<absl::Status> result_;  // set when the stream ended early
};

}  // namespace

absl::StatusOr<OpenAiEndpoint> ParseOpenAiEndpoint(std::string_view name) {
  if (name == "completions") return OpenAiEndpoint::kCompletions;
  if (name == "chat") return OpenAiEndpoint::kChat;
  return absl::InvalidArgumentError(
      absl::StrCat("--endpoint: '", std::string(name), "' is not completions or chat"));
}

const char* OpenAiPath(OpenAiEndpoint endpoint) {
  return endpoint == OpenAiEndpoint::kChat ? "/v1/chat/completions" : "/v1/completions";
}

std::string OpenAiRequestBody(const OpenAiRequest& r) {
  Json j = Json::object();
  if (!r.model.empty()) j["model"] = r.model;
  if (r.endpoint == OpenAiEndpoint::kChat) {
    j["messages"] = Json::array({Json{{"role", "user"}, {"content", r.prompt_text}}});
  } else if (!r.prompt_ids.empty()) {
    j["prompt"] = r.prompt_ids;
  } else {
    j["prompt"] = r.prompt_text;
  }
  if (r.max_tokens > 0) j["max_tokens"] = r.max_tokens;
  j["temperature"] = r.temperature;
  if (r.seed.has_value()) j["seed"] = *r.seed;
  if (r.ignore_eos) j["ignore_eos"] = true;
  j["stream"] = true;
  j["stream_options"] = Json{{"include_usage", true}};
  return Dump(j);
}

absl::StatusOr<OpenAiChunk> ParseOpenAiChunk(std::string_view data) {
  OpenAiChunk chunk;
  if (data == "[DONE]") {
    chunk.done = true;
    return chunk;
  }
  const Json j = Json::parse(data, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::DataLossError(absl::StrCat("an event is not a JSON object: ", Excerpt(data)));
  }
  if (j.contains("error")) {
    const Json* error = ObjectAt(j, "error");
    const int code = error != nullptr ? Int32At(*error, "code") : 0;
    chunk.error = absl::Status(code > 0 ? CodeOfHttpStatus(code) : absl::StatusCode::kInternal,
                               absl::StrCat("error event: ", ErrorMessageOf(j)));
    return chunk;
  }
  if (auto it = j.find("choices"); it != j.end() && it->is_array() && !it->empty()) {
    const Json& choice = (*it)[0];
    chunk.text = StringAt(choice, "text");
    if (const Json* delta = ObjectAt(choice, "delta"); delta != nullptr) {
      chunk.text += StringAt(*delta, "content");
    }
    chunk.finish_reason = StringAt(choice, "finish_reason");
  }
  if (const Json* usage = ObjectAt(j, "usage"); usage != nullptr) {
    OpenAiUsage u;
    u.prompt_tokens = Int32At(*usage, "prompt_tokens");
    u.completion_tokens = Int32At(*usage, "completion_tokens");
    if (const Json* details = ObjectAt(*usage, "prompt_tokens_details"); details != nullptr) {
      u.cached_prompt_tokens = Int32At(*details, "cached_tokens");
    }
    chunk.usage = u;
  }
  return chunk;
}

absl::Status OpenAiHttpError(int http_status, std::string_view body) {
  const Json j = Json::parse(body, nullptr, /*allow_exceptions=*/false);
  std::string message = j.is_discarded() ? "" : ErrorMessageOf(j);
  if (message.empty()) message = Excerpt(body);
  return absl::Status(CodeOfHttpStatus(http_status),
                      absl::StrCat("HTTP ", http_status, ": ", message));
}

absl::StatusOr<std::vector<OpenAiModelInfo>> ParseOpenAiModels(std::string_view body) {
  const Json j = Json::parse(body, nullptr, /*allow_exceptions=*/false);
  auto data = j.is_object() ? j.find("data") : j.end();
  if (j.is_discarded() || !j.is_object() || data == j.end() || !data->is_array()) {
    return absl::DataLossError(
        absl::StrCat("GET /v1/models: expected {\"data\": [...]}, got ", Excerpt(body)));
  }
  std::vector<OpenAiModelInfo> models;
  for (const Json& m : *data) {
    OpenAiModelInfo info;
    info.id = StringAt(m, "id");
    if (info.id.empty()) continue;
    info.vocab_size = Int32At(m, "vocab_size");
    if (const Json* meta = ObjectAt(m, "meta"); meta != nullptr && info.vocab_size == 0) {
      info.vocab_size = Int32At(*meta, "n_vocab");
    }
    info.context_length = Int32At(m, "context_length");
    if (info.context_length == 0) info.context_length = Int32At(m, "max_model_len");
    models.push_back(std::move(info));
  }
  return models;
}

absl::StatusOr<std::unique_ptr<OpenAiClient>> OpenAiClient::Create(
    std::string_view url, const OpenAiClientOptions& options) {
  absl::StatusOr<HttpUrl> parsed = ParseHttpUrl(url);
  if (!parsed.ok()) return parsed.status();
  std::string prefix = parsed->path;
  if (absl::EndsWith(prefix, "/v1")) prefix.resize(prefix.size() - 3);
  HttpClientOptions http_options;
  http_options.ca_file = options.ca_file;
  http_options.threads = options.threads;
  absl::StatusOr<std::unique_ptr<HttpClient>> http = HttpClient::Create(*parsed, http_options);
  if (!http.ok()) return http.status();
  return std::unique_ptr<OpenAiClient>(
      new OpenAiClient(std::move(*http), std::move(prefix), options));
}

OpenAiClient::OpenAiClient(std::unique_ptr<HttpClient> http, std::string prefix,
                           OpenAiClientOptions options)
    : http_(std::move(http)), prefix_(std::move(prefix)), options_(std::move(options)) {}

HttpRequest OpenAiClient::Request(const std::string& method, const std::string& path,
                                  std::string body, double timeout_s) const {
  HttpRequest r;
  r.method = method;
  r.target = prefix_ + path;
  if (!options_.api_key.empty())
    r.headers.emplace_back("Authorization", "Bearer " + options_.api_key);
  if (!body.empty()) r.headers.emplace_back("Content-Type", "application/json");
  r.body = std::move(body);
  r.timeout_s = timeout_s;
  return r;
}

absl::StatusOr<std::vector<OpenAiModelInfo>> OpenAiClient::ListModels() {
  const double timeout = options_.timeout_s > 0 ? options_.timeout_s : kControlTimeoutS;
  absl::StatusOr<HttpResponse> response = http_->Fetch(Request("GET", "/v1/models", "", timeout));
  if (!response.ok()) {
    return absl::Status(response.status().code(),
                        absl::StrCat("GET /v1/models: ", response.status().message()));
  }
  if (response->status != 200) {
    const absl::Status s = OpenAiHttpError(response->status, response->body);
    return absl::Status(s.code(), absl::StrCat("GET /v1/models: ", s.message()));
  }
  return ParseOpenAiModels(response->body);
}

absl::StatusOr<std::string> OpenAiClient::Detokenize(const std::string& model,
                                                     const std::vector<int32_t>& ids) {
  Json body = Json{{"tokens", ids}};
  if (!model.empty()) body["model"] = model;
  const double timeout = options_.timeout_s > 0 ? options_.timeout_s : kControlTimeoutS;
  absl::StatusOr<HttpResponse> response =
      http_->Fetch(Request("POST", "/detokenize", Dump(body), timeout));
  if (!response.ok()) {
    return absl::Status(response.status().code(),
                        absl::StrCat("POST /detokenize: ", response.status().message()));
  }
  if (response->status != 200) {
    const absl::Status s = OpenAiHttpError(response->status, response->body);
    return absl::Status(s.code(), absl::StrCat("POST /detokenize: ", s.message()));
  }
  const Json j = Json::parse(response->body, nullptr, /*allow_exceptions=*/false);
  for (const char* key : {"prompt", "content"}) {  // vLLM, llama.cpp
    if (j.is_object() && j.contains(key) && j[key].is_string()) return j[key].get<std::string>();
  }
  return absl::DataLossError(
      absl::StrCat("POST /detokenize: expected {\"prompt\": ...} or {\"content\": ...}, got ",
                   Excerpt(response->body)));
}

void OpenAiClient::Stream(const OpenAiRequest& request,
                          std::shared_ptr<OpenAiStreamHandler> handler) {
  HttpRequest r =
      Request("POST", OpenAiPath(request.endpoint), OpenAiRequestBody(request), options_.timeout_s);
  r.headers.emplace_back("Accept", "text/event-stream");
  http_->Stream(r, std::make_shared<ChunkStream>(std::move(handler)));
}

}  // namespace kvserve::tools
