// The OpenAI-compatible HTTP face of `kvserve serve`, beside the gRPC one and on the same engine:
//
//   GET  /v1/models             the served model
//   POST /v1/completions        text completion (prompt: text, ids, or lists of them)
//   POST /v1/chat/completions   chat, rendered by the model's chat template (or
//   model.chat_template) GET  /health                200 while serving, 503 while draining (never
//   authenticated) POST /tokenize, /detokenize token ids of a text and back
//
// Requests run the gRPC path's validation (openai_protocol.h turns the JSON into a
// kvserve.v1.GenerateRequest; BuildEngineRequest checks it against the same limits), the same API
// keys (`Authorization: Bearer KEY`, auth.h: same file, same loopback rule), the same TLS
// certificate (server.tls), and their outcomes are counted with the gRPC calls' (protocol="http").
//
// Streaming is server-sent events as the OpenAI API sends them: `data: {json}\n\n` per chunk,
// `data: [DONE]\n\n` last, in a chunked response written as the engine produces tokens (one
// write in flight per connection; the events of one engine step go out together). While a
// response is in flight the connection is also read: a client that closes it (or resets it) has
// its requests cancelled in the engine at once, which frees their KV blocks on the next step.
//
// Bodies are bounded before they are read (http.max_body_bytes: 413), and a request must arrive
// within http.read_timeout_seconds; malformed JSON is a 400 that never reaches the engine.
//
// Why Boost.Beast: it is asynchronous. A streaming response holds no thread while it waits for
// the next token, so hundreds of open streams cost a socket and a few kilobytes each, served by
// http.threads threads (cpp-httplib and civetweb, the other Debian candidates, hold one thread per
// connection for as long as a stream lasts). docs/http.md has the measurement.
//
// Lifecycle: Start() binds and serves. BeginDrain() makes /health answer 503 and new generation
// requests 503 while streams in flight go on (responses then carry `Connection: close`).
// Shutdown() closes every connection and joins the threads.
//
// Thread-safety: BeginDrain and WaitForCalls are thread-safe; Shutdown and the destructor belong
// to the owner. The engine, authenticator, metrics and outcomes must outlive the server.
#ifndef KVSERVE_SERVER_HTTP_HTTP_SERVER_H_
#define KVSERVE_SERVER_HTTP_HTTP_SERVER_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "engine/runtime/engine.h"
#include "server/config/server_config.h"
#include "server/grpc/auth.h"
#include "server/grpc/request_validation.h"
#include "server/metrics/request_outcomes.h"

namespace kvserve::server {

class ServerMetrics;

struct HttpServerOptions {
  HttpConfig config;  // http.* (address, threads, limits, timeouts)
  // server.tls, as read by the gRPC server: the same certificate and key, PEM; "" = plaintext.
  std::string tls_cert_pem;
  std::string tls_key_pem;
  // Seeds of requests that set none, and the ids of responses: the gRPC service's NextSeed.
  std::function<uint64_t()> next_seed;
  std::string model_name;  // the id /v1/models lists and requests may name
  RequestLimits limits;    // as the gRPC service checks them
  ChatSettings chat;       // the chat template (null: chat is refused naming model.chat_template)
  std::shared_ptr<const engine::chat::ChatTemplate> chat_template;  // keeps chat.chat_template
  const ApiKeyAuthenticator* authenticator = nullptr;               // null: no key required
  ServerMetrics* metrics = nullptr;                                 // null: none
  RequestOutcomes* outcomes = nullptr;                              // null: not counted
  // server.max_message_bytes: a non-streaming response larger than this is refused (500 naming
  // the key), as over gRPC. 0: no bound.
  int64_t max_message_bytes = 0;
};

class HttpServer {
 public:
  // Listens on options.config.address (port 0 picks a free port). Unavailable naming
  // http.address when it cannot be bound; InvalidArgument naming server.tls.* for a bad
  // certificate or key.
  static absl::StatusOr<std::unique_ptr<HttpServer>> Start(const HttpServerOptions& options,
                                                           engine::Engine* engine);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  int port() const;
  const std::string& bound_address() const;
  bool tls() const;

  void BeginDrain();
  // Waits until no generation request is in flight or the timeout passes. True when none is.
  bool WaitForCalls(absl::Duration timeout);
  // Stops accepting, closes every connection (cancelling what still runs) and joins the threads.
  void Shutdown();

  class Impl;

 private:
  explicit HttpServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvserve::server

#endif  // KVSERVE_SERVER_HTTP_HTTP_SERVER_H_
