#include "server/http/http_server.h"

#include <atomic>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/strand.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "engine/tokenizer/tokenizer.h"
#include "nlohmann/json.hpp"
#include "server/grpc/generation_calls.h"
#include "server/grpc/sanitize.h"
#include "server/http/openai_protocol.h"
#include "server/metrics/server_metrics.h"
#include "spdlog/spdlog.h"

namespace kvserve::server {

namespace beast = boost::beast;
namespace http = boost::beast::http;
namespace net = boost::asio;
namespace ssl = boost::asio::ssl;
using tcp = boost::asio::ip::tcp;
using nlohmann::json;

namespace {

constexpr size_t kHeaderLimit = 16 << 10;
// While a response is in flight, bytes a client sends ahead (a pipelined request) are kept up to
// this much; beyond it the connection is not read until the response ends.
constexpr size_t kReadAheadLimit = 64 << 10;

std::string Hex(uint64_t v) { return absl::StrFormat("%016x", v); }

// host:port (or [v6]:port) into its parts.
bool SplitHostPort(const std::string& address, std::string* host, std::string* port) {
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos) return false;
  *host = address.substr(0, colon);
  *port = address.substr(colon + 1);
  if (host->size() >= 2 && host->front() == '[' && host->back() == ']') {
    *host = host->substr(1, host->size() - 2);
  }
  return true;
}

}  // namespace

// ---- the server's shared state ----------------------------------------------------------------

class SessionBase {
 public:
  virtual ~SessionBase() = default;
  // Cancels what the connection runs and closes it (posted to its strand).
  virtual void Close() = 0;
};

class HttpServer::Impl {
 public:
  Impl(const HttpServerOptions& options, engine::Engine* engine)
      : options_(options), engine_(engine), created_(absl::ToUnixSeconds(absl::Now())) {}

  absl::Status Listen();
  void Accept();
  void Stop();

  const HttpServerOptions& options() const { return options_; }
  engine::Engine* engine() const { return engine_; }
  bool draining() const { return draining_.load(std::memory_order_acquire); }
  void BeginDrain() { draining_.store(true, std::memory_order_release); }
  CallTracker& calls() { return calls_; }
  int64_t max_body_bytes() const { return max_body_bytes_; }
  int64_t created() const { return created_; }
  uint64_t NextSeed() { return options_.next_seed(); }
  std::string NextId(const char* prefix) { return absl::StrCat(prefix, Hex(NextSeed())); }
  void Unregister(uint64_t id) {
    absl::MutexLock lock(&mu_);
    sessions_.erase(id);
  }

  std::string bound_address_;
  int port_ = 0;

 private:
  template <class Stream>
  void StartSession(Stream stream);

  const HttpServerOptions options_;
  engine::Engine* const engine_;
  const int64_t created_;
  std::atomic<bool> draining_{false};
  CallTracker calls_;
  int64_t max_body_bytes_ = 0;

  absl::Mutex mu_;
  std::unordered_map<uint64_t, std::weak_ptr<SessionBase>> sessions_ ABSL_GUARDED_BY(mu_);
  uint64_t next_session_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;

  // Destroyed first (declared last): pending handlers hold sessions, which unregister above.
  net::io_context ioc_;
  std::optional<ssl::context> ssl_;
  std::optional<tcp::acceptor> acceptor_;
  std::vector<std::thread> threads_;
  friend class HttpServer;
};

namespace {

// ---- one generation request (n choices) in flight on a connection ---------------------------

struct Choice {
  std::shared_ptr<engine::RequestStream> stream;
  int32_t index = 0;
  int32_t prompt_index = 0;
  std::string echo;         // completions with echo: the prompt's text, sent first
  bool started = false;     // streaming: the first chunk (role, or echo) was sent
  bool sent_final = false;  // streaming: the chunk with the finish_reason was sent
  int64_t text_offset = 0;  // logprobs: bytes of the choice's token texts so far (echo included)
  ChoiceOutput out;         // text and tokens gathered (streaming: since the last chunk)
  std::optional<engine::StreamEvent> final;  // the final event, payload removed
};

struct Generation {
  OpenAiRequest request;
  ResponseIdentity identity;
  std::string path;
  std::vector<Choice> choices;
  std::vector<int32_t> prompt_tokens;  // per prompt
  bool done_sent = false;              // the last bytes of the response are written or queued

  bool AllFinal() const {
    for (const Choice& c : choices) {
      if (!c.final) return false;
    }
    return true;
  }
  void CancelAll() {
    for (Choice& c : choices) c.stream->Cancel();
  }
  OpenAiUsage Usage() const {
    OpenAiUsage u;
    for (const Choice& c : choices) {
      if (!c.final) continue;
      if (c.index % request.n == 0) {
        u.prompt_tokens += c.final->usage.prompt_tokens;
        u.cached_tokens += c.final->usage.cached_prompt_tokens;
      }
      u.completion_tokens += c.final->usage.completion_tokens;
    }
    return u;
  }
  // The first choice that failed, if any.
  const Choice* Failed() const {
    for (const Choice& c : choices) {
      if (c.final && !c.final->status.ok()) return &c;
    }
    return nullptr;
  }
};

// Appends an event's log-probabilities to the choice, with the tokens' texts (raw bytes) and,
// for completions, each token's byte offset in the choice's text.
void AddLogprobs(const engine::StreamEvent& e, const engine::Tokenizer& tokenizer, Choice& c) {
  for (const engine::TokenLogprob& lp : e.logprobs) {
    std::string text = tokenizer.TokenBytes(lp.token_id);
    c.out.text_offsets.push_back(static_cast<int32_t>(c.text_offset));
    c.text_offset += static_cast<int64_t>(text.size());
    c.out.token_texts.push_back(std::move(text));
    c.out.token_logprobs.push_back(lp.logprob);
    std::vector<std::pair<std::string, float>> top;
    top.reserve(lp.top.size());
    for (const engine::TopLogprob& t : lp.top) {
      top.emplace_back(tokenizer.TokenBytes(t.token_id), t.logprob);
    }
    c.out.top_logprobs.push_back(std::move(top));
  }
}

// Moves a stream's pending events into the choice. True when something new arrived.
bool TakeEvents(Choice& c, const engine::Tokenizer& tokenizer) {
  std::vector<engine::StreamEvent> events;
  c.stream->Take(&events);
  if (events.empty()) return false;
  for (engine::StreamEvent& e : events) {
    c.out.token_ids.insert(c.out.token_ids.end(), e.token_ids.begin(), e.token_ids.end());
    c.out.text.append(e.text);
    AddLogprobs(e, tokenizer, c);
    if (e.final) {
      c.out.finished = true;
      c.out.finish_reason = e.finish_reason;
      c.final = FinalSummary(e);
    }
  }
  return true;
}

http::status ToHttpStatus(int code) { return static_cast<http::status>(code); }

// ---- a connection -----------------------------------------------------------------------------

template <class Stream>
class Session : public SessionBase, public std::enable_shared_from_this<Session<Stream>> {
 public:
  Session(HttpServer::Impl* server, uint64_t id, Stream stream)
      : server_(server), id_(id), stream_(std::move(stream)) {}
  ~Session() override {
    if (gen_) {  // closed at shutdown with a request in flight
      gen_->CancelAll();
      for (Choice& c : gen_->choices) c.stream->SetListener([] {});
    }
    EndCall();
    server_->Unregister(id_);
  }

  void Run() {
    if constexpr (std::is_same_v<Stream, beast::tcp_stream>) {
      DoRead();
    } else {
      Lowest().expires_after(ToChrono(server_->options().config.read_timeout_seconds));
      stream_.async_handshake(ssl::stream_base::server,
                              [self = this->shared_from_this()](beast::error_code ec) {
                                if (ec) return self->CloseNow();
                                self->DoRead();
                              });
    }
  }

  void Close() override {
    net::post(Lowest().get_executor(), [self = this->shared_from_this()] {
      self->closing_ = true;
      if (self->gen_) {
        self->gen_->CancelAll();
        for (Choice& c : self->gen_->choices) c.stream->SetListener([] {});
      }
      self->self_.reset();
      self->CloseNow();
    });
  }

 private:
  beast::tcp_stream& Lowest() { return beast::get_lowest_layer(stream_); }
  static std::chrono::steady_clock::duration ToChrono(double seconds) {
    return std::chrono::duration_cast<std::chrono::steady_clock::duration>(
        std::chrono::duration<double>(seconds));
  }

  // The generation call is over once its last byte is written (or the connection is gone): a
  // drain waits for that (WaitForCalls), not just for the engine.
  void EndCall() {
    if (!call_open_) return;
    call_open_ = false;
    server_->calls().End();
  }

  void CloseNow() {
    EndCall();
    beast::error_code ec;
    Lowest().socket().shutdown(tcp::socket::shutdown_both, ec);
    Lowest().close();
  }

  // ---- reading requests ----

  void DoRead() {
    if (closing_) return CloseNow();
    parser_.emplace();
    parser_->header_limit(kHeaderLimit);
    parser_->body_limit(static_cast<uint64_t>(server_->max_body_bytes()));
    // The first request of a connection, and every later one, must arrive in time; an idle
    // keep-alive connection is closed after idle_timeout_seconds.
    const auto& config = server_->options().config;
    Lowest().expires_after(
        ToChrono(requests_ == 0 ? config.read_timeout_seconds : config.idle_timeout_seconds));
    http::async_read_header(
        stream_, buffer_, *parser_,
        [self = this->shared_from_this()](beast::error_code ec, size_t) { self->OnHeader(ec); });
  }

  // The headers are in (a Content-Length over the limit has already failed with body_limit):
  // answer `Expect: 100-continue` so that the client sends its body now, then read the body.
  void OnHeader(beast::error_code ec) {
    if (ec) return OnRead(ec);
    Lowest().expires_after(ToChrono(server_->options().config.read_timeout_seconds));
    auto read_body = [self = this->shared_from_this()] {
      http::async_read(self->stream_, self->buffer_, *self->parser_,
                       [self](beast::error_code ec2, size_t) { self->OnRead(ec2); });
    };
    const auto expect = parser_->get()[http::field::expect];
    if (!beast::iequals(expect, "100-continue") || parser_->is_done()) return read_body();
    static constexpr std::string_view kContinue = "HTTP/1.1 100 Continue\r\n\r\n";
    net::async_write(stream_, net::buffer(kContinue.data(), kContinue.size()),
                     [self = this->shared_from_this(), read_body](beast::error_code ec2, size_t) {
                       if (ec2) return self->CloseNow();
                       read_body();
                     });
  }

  void OnRead(beast::error_code ec) {
    if (ec == http::error::body_limit) {
      keep_alive_ = false;
      return SendError(
          OpenAiError{413,
                      absl::StrCat("the request body is larger than ", server_->max_body_bytes(),
                                   " bytes (http.max_body_bytes)"),
                      "invalid_request_error", "", "request_too_large"});
    }
    if (ec == http::error::header_limit) {
      keep_alive_ = false;
      return SendError(OpenAiError{431, "the request headers are too large",
                                   "invalid_request_error", "", "headers_too_large"});
    }
    if (ec) return CloseNow();  // end of stream, timeout, reset, or a malformed request
    ++requests_;
    request_ = parser_->release();
    keep_alive_ = request_.keep_alive() && !server_->draining();
    Lowest().expires_never();
    Route();
  }

  // ---- routing ----

  void Route() {
    std::string_view target(request_.target().data(), request_.target().size());
    const size_t query = target.find('?');
    if (query != std::string_view::npos) target = target.substr(0, query);
    path_ = std::string(target);
    const http::verb verb = request_.method();
    if (path_ == "/health") {
      if (verb != http::verb::get && verb != http::verb::head) return MethodNotAllowed("GET");
      if (server_->draining()) {
        return SendError(OpenAiError{503, "the server is shutting down",
                                     "service_unavailable_error", "", "draining"});
      }
      return SendJson(http::status::ok, "{}");
    }
    const bool known = path_ == "/v1/models" || path_ == "/v1/completions" ||
                       path_ == "/v1/chat/completions" || path_ == "/tokenize" ||
                       path_ == "/detokenize" || absl::StartsWith(path_, "/v1/models/");
    if (!known) {
      return SendError(OpenAiError{404, absl::StrCat("no such endpoint: ", SanitizeForLog(path_)),
                                   "invalid_request_error", "", "not_found"});
    }
    if (const ApiKeyAuthenticator* auth = server_->options().authenticator; auth != nullptr) {
      const auto header = request_[http::field::authorization];
      if (absl::Status s = auth->CheckHeader(std::string_view(header.data(), header.size()));
          !s.ok()) {
        return SendError(OpenAiError{401, std::string(s.message()), "authentication_error", "",
                                     "invalid_api_key"});
      }
    }
    if (absl::StartsWith(path_, "/v1/models")) {
      if (verb != http::verb::get) return MethodNotAllowed("GET");
      return Models();
    }
    if (verb != http::verb::post) return MethodNotAllowed("POST");
    if (path_ == "/tokenize") return Tokenize();
    if (path_ == "/detokenize") return Detokenize();
    StartGeneration(path_ == "/v1/completions" ? OpenAiEndpoint::kCompletions
                                               : OpenAiEndpoint::kChat);
  }

  void MethodNotAllowed(const char* allowed) {
    SendError(OpenAiError{405,
                          absl::StrCat(std::string(request_.method_string()), " is not allowed on ",
                                       SanitizeForLog(path_), "; use ", allowed),
                          "invalid_request_error", "", "method_not_allowed"});
  }

  json ModelJson() const {
    return {{"id", server_->options().model_name},
            {"object", "model"},
            {"created", server_->created()},
            {"owned_by", "kvserve"},
            {"max_model_len", server_->engine()->config().context_length},
            {"vocab_size", server_->engine()->config().vocab_size}};
  }

  void Models() {
    const std::string& name = server_->options().model_name;
    if (path_ == "/v1/models") {
      json body = {{"object", "list"}, {"data", json::array({ModelJson()})}};
      return SendJson(http::status::ok, body.dump());
    }
    const std::string wanted = path_.substr(std::string_view("/v1/models/").size());
    if (wanted != name) return ModelNotFound(wanted);
    SendJson(http::status::ok, ModelJson().dump());
  }

  void ModelNotFound(const std::string& model) {
    SendError(OpenAiError{
        404,
        absl::StrCat("the model '", SanitizeForLog(model), "' does not exist; this server serves '",
                     server_->options().model_name, "'"),
        "invalid_request_error", "model", "model_not_found"});
  }

  // ---- tokenize / detokenize ----

  std::optional<json> ParseObject() {
    json body = json::parse(request_.body(), nullptr, /*allow_exceptions=*/false);
    if (body.is_discarded() || !body.is_object()) {
      SendError(OpenAiError{400, "the request body must be a JSON object", "invalid_request_error",
                            "", ""});
      return std::nullopt;
    }
    return body;
  }

  bool CheckModel(const json& body) {
    auto it = body.find("model");
    if (it == body.end() || it->is_null()) return true;
    if (!it->is_string()) {
      SendError(OpenAiError{400, "model: must be a string", "invalid_request_error", "model", ""});
      return false;
    }
    if (it->get<std::string>() != server_->options().model_name) {
      ModelNotFound(it->get<std::string>());
      return false;
    }
    return true;
  }

  void Tokenize() {
    std::optional<json> body = ParseObject();
    if (!body || !CheckModel(*body)) return;
    auto prompt = body->find("prompt");
    if (prompt == body->end() || !prompt->is_string()) {
      return SendError(
          OpenAiError{400, "prompt: must be a string", "invalid_request_error", "prompt", ""});
    }
    for (auto it = body->begin(); it != body->end(); ++it) {
      if (it.key() != "prompt" && it.key() != "model" && it.key() != "add_special_tokens") {
        return SendError(OpenAiError{400,
                                     absl::StrCat("unknown field '", it.key().substr(0, 64), "'"),
                                     "invalid_request_error", it.key().substr(0, 64), ""});
      }
    }
    const std::string text = prompt->get<std::string>();
    const int64_t max_bytes = server_->options().limits.max_prompt_bytes;
    if (static_cast<int64_t>(text.size()) > max_bytes) {
      return SendError(
          OpenAiError{400,
                      absl::StrCat("prompt: ", text.size(), " bytes; at most ", max_bytes,
                                   " are accepted (limits.max_prompt_bytes)"),
                      "invalid_request_error", "prompt", ""});
    }
    bool special = true;
    if (auto it = body->find("add_special_tokens"); it != body->end() && !it->is_null()) {
      if (!it->is_boolean()) {
        return SendError(OpenAiError{400, "add_special_tokens: must be a boolean",
                                     "invalid_request_error", "add_special_tokens", ""});
      }
      special = it->get<bool>();
    }
    const engine::Tokenizer& tokenizer = server_->engine()->tokenizer();
    std::vector<int32_t> ids;
    if (special && tokenizer.vocab().add_bos) ids.push_back(tokenizer.bos_id());
    const std::vector<int32_t> rest = tokenizer.Encode(text, engine::EncodeOptions());
    ids.insert(ids.end(), rest.begin(), rest.end());
    json out = {{"tokens", ids},
                {"count", ids.size()},
                {"max_model_len", server_->engine()->config().context_length}};
    SendJson(http::status::ok, out.dump());
  }

  void Detokenize() {
    std::optional<json> body = ParseObject();
    if (!body || !CheckModel(*body)) return;
    auto tokens = body->find("tokens");
    if (tokens == body->end() || !tokens->is_array()) {
      return SendError(OpenAiError{400, "tokens: must be an array of token ids",
                                   "invalid_request_error", "tokens", ""});
    }
    const engine::Tokenizer& tokenizer = server_->engine()->tokenizer();
    std::vector<int32_t> ids;
    for (size_t i = 0; i < tokens->size(); ++i) {
      const json& t = (*tokens)[i];
      const bool integral = t.is_number_integer() || t.is_number_unsigned();
      const int64_t id = integral ? t.get<int64_t>() : -1;
      if (!integral || id < 0 || id > INT32_MAX || !tokenizer.IsValidId(static_cast<int32_t>(id))) {
        return SendError(OpenAiError{
            400,
            absl::StrCat("tokens[", i, "]: ", t.dump().substr(0, 32),
                         " is not a token id of the vocabulary [0, ", tokenizer.vocab_size(), ")"),
            "invalid_request_error", absl::StrCat("tokens[", i, "]"), ""});
      }
      ids.push_back(static_cast<int32_t>(id));
    }
    engine::StreamingDetokenizer detokenizer(tokenizer);
    std::string text;
    for (int32_t id : ids) text += detokenizer.Feed(id);
    text += detokenizer.Flush();
    json out = {{"prompt", text}};
    SendJson(http::status::ok, out.dump(-1, ' ', false, json::error_handler_t::replace));
  }

  // ---- generation ----

  void StartGeneration(OpenAiEndpoint endpoint) {
    if (server_->draining()) {
      return SendError(OpenAiError{503, "the server is shutting down", "service_unavailable_error",
                                   "", "draining"});
    }
    auto gen = std::make_unique<Generation>();
    if (std::optional<OpenAiError> e =
            ParseOpenAiRequest(request_.body(), endpoint, &gen->request)) {
      return SendError(*e);
    }
    const OpenAiRequest& r = gen->request;
    if (!r.model.empty() && r.model != server_->options().model_name) return ModelNotFound(r.model);
    gen->path = path_;
    gen->identity.id =
        server_->NextId(endpoint == OpenAiEndpoint::kCompletions ? "cmpl-" : "chatcmpl-");
    gen->identity.created = absl::ToUnixSeconds(absl::Now());
    gen->identity.model = server_->options().model_name;
    if (std::optional<OpenAiError> e = Submit(*gen)) {
      gen->CancelAll();
      return SendError(*e);
    }
    gen_ = std::move(gen);
    server_->calls().Begin();
    call_open_ = true;
    // The engine's events reach the session through a weak reference: this one keeps it alive
    // until the request ends, whatever the connection does meanwhile.
    self_ = this->shared_from_this();
    // Listen for the client going away while the response is built.
    ReadAhead();
    for (Choice& c : gen_->choices) {
      std::weak_ptr<Session> weak = this->shared_from_this();
      c.stream->SetListener([weak] {
        if (std::shared_ptr<Session> self = weak.lock()) {
          net::post(self->Lowest().get_executor(), [self] { self->Pump(); });
        }
      });
    }
    if (gen_->request.stream) {
      StartStream();
    } else {
      Pump();
    }
  }

  // Builds and submits every choice's engine request. An error leaves what was submitted in
  // gen.choices (the caller cancels them).
  std::optional<OpenAiError> Submit(Generation& gen) {
    const OpenAiRequest& r = gen.request;
    const HttpServerOptions& options = server_->options();
    const engine::Tokenizer& tokenizer = server_->engine()->tokenizer();
    const int num_prompts = static_cast<int>(r.prompts.size());
    for (int p = 0; p < num_prompts; ++p) {
      for (int j = 0; j < r.n; ++j) {
        v1::GenerateRequest message = r.prompts[static_cast<size_t>(p)];
        if (r.seed) message.mutable_sampling()->set_seed(*r.seed + static_cast<uint64_t>(j));
        if (!message.request_id().empty() && (r.n > 1 || num_prompts > 1)) {
          message.set_request_id(absl::StrCat(message.request_id(), "-", p * r.n + j));
        }
        auto request = BuildEngineRequest(message, tokenizer, options.limits, server_->NextSeed(),
                                          absl::InfiniteFuture(), &options.chat);
        if (!request.ok()) {
          return InvalidRequestError(request.status(), r.endpoint, p, num_prompts);
        }
        std::string echo;
        if (r.echo) {
          echo = message.has_text() ? message.text() : tokenizer.Decode(request->prompt);
        }
        const int32_t prompt_tokens = static_cast<int32_t>(request->prompt.size());
        auto stream = server_->engine()->Submit(*std::move(request));
        if (!stream.ok()) {
          OpenAiError e = ErrorFromStatus(stream.status(), r.endpoint);
          if (stream.status().code() == absl::StatusCode::kInvalidArgument) {
            e = InvalidRequestError(stream.status(), r.endpoint, p, num_prompts);
          }
          return e;
        }
        Choice c;
        c.stream = *std::move(stream);
        c.index = p * r.n + j;
        c.prompt_index = p;
        c.text_offset = static_cast<int64_t>(echo.size());
        c.echo = std::move(echo);
        c.out.index = c.index;
        gen.choices.push_back(std::move(c));
        if (j == 0) gen.prompt_tokens.push_back(prompt_tokens);
      }
    }
    return std::nullopt;
  }

  void StartStream() {
    header_.emplace(http::status::ok, request_.version());
    header_->set(http::field::server, "kvserve");
    header_->set(http::field::content_type, "text/event-stream");
    header_->set(http::field::cache_control, "no-cache");
    header_->keep_alive(keep_alive_);
    header_->chunked(true);
    serializer_.emplace(*header_);
    writing_ = true;
    http::async_write_header(stream_, *serializer_,
                             [self = this->shared_from_this()](beast::error_code ec, size_t) {
                               self->OnChunkWritten(ec);
                             });
  }

  // Reads while a response is in flight: an error or end of stream means the client is gone.
  void ReadAhead() {
    if (reading_ahead_ || buffer_.size() >= kReadAheadLimit) return;
    reading_ahead_ = true;
    stream_.async_read_some(buffer_.prepare(4096),
                            [self = this->shared_from_this()](beast::error_code ec, size_t n) {
                              self->OnReadAhead(ec, n);
                            });
  }

  void OnReadAhead(beast::error_code ec, size_t n) {
    reading_ahead_ = false;
    if (ec) {
      if (gen_) {
        client_gone_ = true;
        gen_->CancelAll();  // frees the KV on the engine's next step
        return Pump();
      }
      return CloseNow();
    }
    buffer_.commit(n);
    if (gen_) return ReadAhead();
    if (!writing_) DoRead();  // the response ended while this read was pending
  }

  // Takes the engine's events and writes what they call for. On the strand.
  void Pump() {
    if (!gen_ || writing_) return;
    const engine::Tokenizer& tokenizer = server_->engine()->tokenizer();
    for (Choice& c : gen_->choices) TakeEvents(c, tokenizer);
    if (client_gone_) {
      if (gen_->AllFinal()) EndGeneration(absl::CancelledError("the client went away"));
      return;
    }
    if (gen_->request.stream) return PumpStream();
    if (!gen_->AllFinal()) return;
    const OpenAiEndpoint endpoint = gen_->request.endpoint;
    if (const Choice* failed = gen_->Failed()) {
      const absl::Status status = failed->final->status;
      EndGeneration(status);
      return SendError(ErrorFromStatus(status, endpoint));
    }
    std::vector<ChoiceOutput> outs;
    for (Choice& c : gen_->choices) {
      c.out.text = c.echo + c.out.text;
      outs.push_back(c.out);
    }
    std::string body =
        CompletionBody(endpoint, gen_->identity, outs, gen_->Usage(), gen_->request.logprobs);
    const int64_t max_bytes = server_->options().max_message_bytes;
    if (max_bytes > 0 && static_cast<int64_t>(body.size()) > max_bytes) {
      const absl::Status too_large = absl::ResourceExhaustedError(
          absl::StrCat("the response (", body.size(),
                       " bytes) is larger than server.max_message_bytes (", max_bytes, " bytes)"));
      EndGeneration(too_large);
      return SendError(OpenAiError{500, std::string(too_large.message()), "server_error", "",
                                   "response_too_large"});
    }
    EndGeneration(absl::OkStatus());
    SendJson(http::status::ok, std::move(body));
  }

  void PumpStream() {
    const OpenAiEndpoint endpoint = gen_->request.endpoint;
    std::string events;
    for (Choice& c : gen_->choices) {
      if (!c.started) {
        c.started = true;
        if (endpoint == OpenAiEndpoint::kChat) {
          events += ChunkEvent(endpoint, gen_->identity, c.out, -1, /*role_only=*/true);
        } else if (!c.echo.empty()) {
          ChoiceOutput echo;
          echo.index = c.index;
          echo.text = c.echo;
          events += ChunkEvent(endpoint, gen_->identity, echo, -1);
        }
      }
      if (c.sent_final) continue;
      if (c.final && !c.final->status.ok()) {
        c.sent_final = true;  // the error event below reports it
        continue;
      }
      if (c.out.text.empty() && !c.out.finished) continue;
      // A finished choice's last chunk carries its finish_reason; nothing more is sent for it.
      events += ChunkEvent(endpoint, gen_->identity, c.out, gen_->request.logprobs);
      c.sent_final = c.out.finished;
      c.out = ChoiceOutput();
      c.out.index = c.index;
    }
    if (gen_->AllFinal()) {
      if (const Choice* failed = gen_->Failed()) {
        events += ErrorEvent(ErrorFromStatus(failed->final->status, endpoint));
        EndGeneration(failed->final->status);
      } else {
        if (gen_->request.include_usage) {
          events += UsageChunkEvent(endpoint, gen_->identity, gen_->Usage());
        }
        EndGeneration(absl::OkStatus());
      }
      events += kDoneEvent;
      last_chunk_ = true;
    }
    if (events.empty()) return;
    chunk_ = std::move(events);
    writing_ = true;
    net::async_write(stream_, http::make_chunk(net::buffer(chunk_)),
                     [self = this->shared_from_this()](beast::error_code ec, size_t) {
                       self->OnChunkWritten(ec);
                     });
  }

  void OnChunkWritten(beast::error_code ec) {
    writing_ = false;
    if (ec) {
      client_gone_ = true;
      if (gen_) {
        gen_->CancelAll();
        return Pump();
      }
      return CloseNow();
    }
    if (last_chunk_) {
      last_chunk_ = false;
      writing_ = true;
      net::async_write(stream_, http::make_chunk_last(),
                       [self = this->shared_from_this()](beast::error_code ec2, size_t) {
                         self->writing_ = false;
                         self->serializer_.reset();
                         self->header_.reset();
                         self->AfterResponse(ec2);
                       });
      return;
    }
    Pump();
  }

  // Logs and counts the request's end, once.
  void EndGeneration(const absl::Status& status) {
    if (!gen_) return;
    std::unique_ptr<Generation> gen = std::move(gen_);
    const HttpServerOptions& options = server_->options();
    for (Choice& c : gen->choices) {
      c.stream->SetListener([] {});
      if (c.final && options.metrics != nullptr)
        options.metrics->ObserveRequest(*c.final, Protocol::kHttp);
    }
    if (options.outcomes != nullptr) options.outcomes->Count(status.code(), Protocol::kHttp);
    const OpenAiUsage usage = gen->Usage();
    const engine::StreamEvent* first =
        gen->choices.empty() || !gen->choices[0].final ? nullptr : &*gen->choices[0].final;
    spdlog::info(
        "HTTP {} {} finished: status={} choices={} prompt_tokens={} cached_tokens={} "
        "completion_tokens={} ttft_ms={:.1f} duration_ms={:.1f}{}{}",
        gen->path, gen->identity.id, absl::StatusCodeToString(status.code()), gen->choices.size(),
        usage.prompt_tokens, usage.cached_tokens, usage.completion_tokens,
        first ? absl::ToDoubleMilliseconds(first->timings.time_to_first_token) : 0.0,
        first ? absl::ToDoubleMilliseconds(first->timings.total) : 0.0,
        status.ok() ? "" : absl::StrCat(" error=\"", absl::CHexEscape(status.message()), "\""),
        client_gone_ ? " (client gone)" : "");
    if (client_gone_) CloseNow();
    // Every caller runs in a handler that holds the session, so this never destroys *this.
    self_.reset();
  }

  // ---- writing plain responses ----

  void SendJson(http::status status, std::string body) {
    auto res = std::make_shared<http::response<http::string_body>>(status, request_.version());
    res->set(http::field::server, "kvserve");
    res->set(http::field::content_type, "application/json");
    res->keep_alive(keep_alive_);
    if (request_.method() == http::verb::head) {
      res->content_length(body.size());
    } else {
      res->body() = std::move(body);
      res->prepare_payload();
    }
    writing_ = true;
    http::async_write(stream_, *res,
                      [self = this->shared_from_this(), res](beast::error_code ec, size_t) {
                        self->writing_ = false;
                        self->AfterResponse(ec);
                      });
  }

  void SendError(const OpenAiError& error) {
    if (error.http_status >= 500) {
      spdlog::warn("HTTP {}: {} {}", SanitizeForLog(path_), error.http_status,
                   SanitizeForLog(error.message));
    } else {
      spdlog::info("HTTP {} rejected: {} {}", SanitizeForLog(path_), error.http_status,
                   SanitizeForLog(error.message));
    }
    SendJson(ToHttpStatus(error.http_status), ErrorBody(error));
  }

  void AfterResponse(beast::error_code ec) {
    EndCall();
    if (ec || !keep_alive_ || closing_ || client_gone_) return CloseNow();
    if (reading_ahead_) {
      // The pending read continues the connection (OnReadAhead); bound the wait for it.
      Lowest().expires_after(ToChrono(server_->options().config.idle_timeout_seconds));
      return;
    }
    DoRead();
  }

  HttpServer::Impl* const server_;
  const uint64_t id_;
  Stream stream_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  http::request<http::string_body> request_;
  std::string path_;
  int64_t requests_ = 0;
  bool keep_alive_ = true;
  bool closing_ = false;
  bool writing_ = false;
  bool reading_ahead_ = false;
  bool client_gone_ = false;
  bool last_chunk_ = false;
  bool call_open_ = false;  // counted in calls() until the response's last byte is written
  std::unique_ptr<Generation> gen_;
  std::shared_ptr<Session> self_;  // set while gen_ runs
  std::optional<http::response<http::empty_body>> header_;
  std::optional<http::response_serializer<http::empty_body>> serializer_;
  std::string chunk_;
};

}  // namespace

// ---- listening --------------------------------------------------------------------------------

template <class Stream>
void HttpServer::Impl::StartSession(Stream stream) {
  std::shared_ptr<Session<Stream>> session;
  {
    absl::MutexLock lock(&mu_);
    if (stopped_) return;
    if (static_cast<int64_t>(sessions_.size()) >= options_.config.max_connections) {
      spdlog::warn("HTTP: {} connections open (http.max_connections): closing a new one",
                   sessions_.size());
      return;
    }
    const uint64_t id = next_session_++;
    session = std::make_shared<Session<Stream>>(this, id, std::move(stream));
    sessions_[id] = session;
  }
  session->Run();
}

void HttpServer::Impl::Accept() {
  acceptor_->async_accept(net::make_strand(ioc_), [this](beast::error_code ec, tcp::socket socket) {
    if (ec == net::error::operation_aborted) return;
    if (!ec) {
      socket.set_option(tcp::no_delay(true), ec);
      if (ssl_) {
        StartSession(beast::ssl_stream<beast::tcp_stream>(std::move(socket), *ssl_));
      } else {
        StartSession(beast::tcp_stream(std::move(socket)));
      }
    }
    Accept();
  });
}

absl::Status HttpServer::Impl::Listen() {
  const HttpConfig& config = options_.config;
  max_body_bytes_ =
      config.max_body_bytes > 0
          ? config.max_body_bytes
          : std::min<int64_t>(2 * DefaultMaxRequestBytes(options_.limits), int64_t{1} << 31);
  if (!options_.tls_cert_pem.empty()) {
    const std::string& cert = options_.tls_cert_pem;
    const std::string& key = options_.tls_key_pem;
    ssl_.emplace(ssl::context::tls_server);
    ssl_->set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 |
                      ssl::context::no_sslv3 | ssl::context::no_tlsv1 | ssl::context::no_tlsv1_1);
    beast::error_code ec;
    ssl_->use_certificate_chain(net::buffer(cert), ec);
    if (ec) {
      return absl::InvalidArgumentError(
          absl::StrCat("server.tls.cert_file: not a PEM certificate chain: ", ec.message()));
    }
    ssl_->use_private_key(net::buffer(key), ssl::context::pem, ec);
    if (ec) {
      return absl::InvalidArgumentError(absl::StrCat(
          "server.tls.key_file: not a PEM private key of the certificate: ", ec.message()));
    }
  }
  std::string host;
  std::string port;
  if (!SplitHostPort(config.address, &host, &port)) {
    return absl::InvalidArgumentError(
        absl::StrCat("http.address: expected host:port, got '", config.address, "'"));
  }
  beast::error_code ec;
  tcp::resolver resolver(ioc_);
  auto endpoints = resolver.resolve(host, port, ec);
  if (ec || endpoints.empty()) {
    return absl::UnavailableError(
        absl::StrCat("cannot resolve ", config.address, " (http.address): ", ec.message()));
  }
  const tcp::endpoint endpoint = endpoints.begin()->endpoint();
  acceptor_.emplace(ioc_);
  acceptor_->open(endpoint.protocol(), ec);
  if (!ec) acceptor_->set_option(net::socket_base::reuse_address(true), ec);
  if (!ec) acceptor_->bind(endpoint, ec);
  if (!ec) acceptor_->listen(net::socket_base::max_listen_connections, ec);
  if (ec) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", config.address, " (http.address): ", ec.message()));
  }
  port_ = acceptor_->local_endpoint().port();
  const size_t colon = config.address.rfind(':');
  bound_address_ = absl::StrCat(config.address.substr(0, colon + 1), port_);
  Accept();
  for (int i = 0; i < config.threads; ++i) {
    threads_.emplace_back([this] { ioc_.run(); });
  }
  return absl::OkStatus();
}

void HttpServer::Impl::Stop() {
  std::vector<std::shared_ptr<SessionBase>> live;
  {
    absl::MutexLock lock(&mu_);
    if (stopped_) return;
    stopped_ = true;
    for (auto& [id, weak] : sessions_) {
      if (std::shared_ptr<SessionBase> s = weak.lock()) live.push_back(std::move(s));
    }
  }
  net::post(ioc_, [this] {
    beast::error_code ec;
    if (acceptor_) acceptor_->close(ec);
  });
  for (const auto& s : live) s->Close();
  live.clear();
  // Every connection closes on its strand; then nothing is left to run.
  {
    absl::MutexLock lock(&mu_);
    auto empty = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return sessions_.empty(); };
    mu_.AwaitWithTimeout(absl::Condition(&empty), absl::Seconds(5));
  }
  ioc_.stop();
  for (std::thread& t : threads_) t.join();
  threads_.clear();
}

// ---- HttpServer -------------------------------------------------------------------------------

HttpServer::HttpServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

HttpServer::~HttpServer() { Shutdown(); }

absl::StatusOr<std::unique_ptr<HttpServer>> HttpServer::Start(const HttpServerOptions& options,
                                                              engine::Engine* engine) {
  auto impl = std::make_unique<Impl>(options, engine);
  if (absl::Status s = impl->Listen(); !s.ok()) return s;
  return std::unique_ptr<HttpServer>(new HttpServer(std::move(impl)));
}

int HttpServer::port() const { return impl_->port_; }
const std::string& HttpServer::bound_address() const { return impl_->bound_address_; }
bool HttpServer::tls() const { return impl_->ssl_.has_value(); }
void HttpServer::BeginDrain() { impl_->BeginDrain(); }
bool HttpServer::WaitForCalls(absl::Duration timeout) { return impl_->calls().WaitIdle(timeout); }
void HttpServer::Shutdown() {
  if (impl_ != nullptr) impl_->Stop();
}

}  // namespace kvserve::server
