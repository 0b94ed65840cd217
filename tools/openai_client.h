// The OpenAI-compatible HTTP API as `kvserve bench --protocol openai` speaks it, to kvserve's own
// HTTP front end or to any server of that API (vLLM, llama.cpp's server): streamed completions
// and chat completions, the model list, and detokenization for chat prompts.
//
// A streamed request (POST /v1/completions or /v1/chat/completions, "stream": true, with
// "stream_options": {"include_usage": true}) answers `text/event-stream`: one `data: {json}`
// event per chunk, then `data: [DONE]`. Chunks carry choices[0].text (completions) or
// choices[0].delta.content (chat), a finish_reason on the last, and the last chunk the usage.
//
// Errors map HTTP statuses onto absl codes, so that a run's failures read the same over gRPC and
// HTTP (400 INVALID_ARGUMENT, 401 UNAUTHENTICATED, 403 PERMISSION_DENIED, 404 NOT_FOUND, 429
// RESOURCE_EXHAUSTED, 500 INTERNAL, 501 UNIMPLEMENTED, 503 UNAVAILABLE, 504 DEADLINE_EXCEEDED;
// the message keeps the HTTP status and the body's error.message).
//
// Thread-safety: as HttpClient (tools/http_client.h).
#ifndef KVSERVE_TOOLS_OPENAI_CLIENT_H_
#define KVSERVE_TOOLS_OPENAI_CLIENT_H_

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "tools/http_client.h"

namespace kvserve::tools {

enum class OpenAiEndpoint { kCompletions, kChat };

// "completions" or "chat"; InvalidArgument otherwise.
absl::StatusOr<OpenAiEndpoint> ParseOpenAiEndpoint(std::string_view name);
// "/v1/completions" or "/v1/chat/completions".
const char* OpenAiPath(OpenAiEndpoint endpoint);

struct OpenAiRequest {
  OpenAiEndpoint endpoint = OpenAiEndpoint::kCompletions;
  std::string model;
  std::vector<int32_t> prompt_ids;  // completions: sent as "prompt": [ids] when not empty
  std::string prompt_text;          // otherwise the prompt; chat: the one user message
  int32_t max_tokens = 0;           // 0 = not sent
  float temperature = 0;
  std::optional<uint64_t> seed;
  bool ignore_eos = false;  // "ignore_eos": true (kvserve, vLLM and llama.cpp accept it)
};

// The streaming JSON body of `request`. Invalid UTF-8 in the text is replaced (U+FFFD).
std::string OpenAiRequestBody(const OpenAiRequest& request);

struct OpenAiUsage {
  int32_t prompt_tokens = 0;
  int32_t completion_tokens = 0;
  int32_t cached_prompt_tokens = 0;  // usage.prompt_tokens_details.cached_tokens, when given
};

// One event of a streamed response.
struct OpenAiChunk {
  bool done = false;          // the closing "[DONE]"
  std::string text;           // the text it carries ("" for none)
  std::string finish_reason;  // "" while generating
  std::optional<OpenAiUsage> usage;
  std::optional<absl::Status> error;  // an {"error": {...}} event (a failure mid-stream)
};

// Parses one event's data (a chunk of either endpoint, "[DONE]" or an error object). DataLoss
// for data that is not such JSON.
absl::StatusOr<OpenAiChunk> ParseOpenAiChunk(std::string_view data);

// The status of a failed response: the code of `http_status`, and a message with the status and
// the body's error.message (or the start of the body).
absl::Status OpenAiHttpError(int http_status, std::string_view body);

// An entry of GET /v1/models, with what it tells of the model when the server says: the
// vocabulary ("vocab_size", llama.cpp's "meta.n_vocab") and the context the server accepts
// ("context_length", vLLM's "max_model_len"); 0 when not given.
struct OpenAiModelInfo {
  std::string id;
  int32_t vocab_size = 0;
  int32_t context_length = 0;
};
// DataLoss when `body` is not a model list.
absl::StatusOr<std::vector<OpenAiModelInfo>> ParseOpenAiModels(std::string_view body);

// Receives one streamed completion.
class OpenAiStreamHandler {
 public:
  using Clock = std::chrono::steady_clock;
  virtual ~OpenAiStreamHandler() = default;
  // Each event but "[DONE]", in order, with the time its bytes were read.
  virtual void OnChunk(const OpenAiChunk& chunk, Clock::time_point received) = 0;
  // Called once, last, at "[DONE]" or when the exchange ended. OK when the stream closed with
  // "[DONE]" or after a chunk with a finish_reason; the HTTP status's code for an error
  // response; the error event's code for an error event; DataLoss for a malformed or truncated
  // stream; otherwise the HttpClient's errors.
  virtual void OnDone(const absl::Status& status, Clock::time_point finished) = 0;
};

struct OpenAiClientOptions {
  std::string api_key;   // sent as "Authorization: Bearer KEY" when not empty
  std::string ca_file;   // https: the PEM CAs to trust (empty: the system's)
  double timeout_s = 0;  // deadline of each request; 0 = none (ListModels and Detokenize: 30 s)
  int threads = 1;
};

class OpenAiClient {
 public:
  // `url` is the server's base URL, "http(s)://host:port" with an optional path prefix; a
  // trailing "/v1" is accepted and dropped ("http://host:8000/v1" works as OpenAI clients take
  // it).
  static absl::StatusOr<std::unique_ptr<OpenAiClient>> Create(std::string_view url,
                                                              const OpenAiClientOptions& options);

  // GET /v1/models.
  absl::StatusOr<std::vector<OpenAiModelInfo>> ListModels();
  // POST /detokenize (vLLM and llama.cpp have it; the OpenAI API does not): the text of `ids`.
  absl::StatusOr<std::string> Detokenize(const std::string& model, const std::vector<int32_t>& ids);
  // Starts a streamed request; `handler` receives it on the client's threads.
  void Stream(const OpenAiRequest& request, std::shared_ptr<OpenAiStreamHandler> handler);

 private:
  OpenAiClient(std::unique_ptr<HttpClient> http, std::string prefix, OpenAiClientOptions options);
  HttpRequest Request(const std::string& method, const std::string& path, std::string body,
                      double timeout_s) const;

  std::unique_ptr<HttpClient> http_;
  std::string prefix_;  // the URL's path without "/v1"
  OpenAiClientOptions options_;
};

}  // namespace kvserve::tools

#endif  // KVSERVE_TOOLS_OPENAI_CLIENT_H_
