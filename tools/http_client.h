// A small HTTP/1.1 client for the OpenAI-compatible bench client (tools/openai_client.h), on
// Boost.Beast and Asio, over TCP or TLS.
//
// Every request opens its own connection (no keep-alive, no pipelining), sends one request and
// hands the response body to a handler piece by piece as it arrives, decoded from chunked
// transfer encoding or read up to its Content-Length or the end of the connection, then closes
// the connection. Endpoints are resolved once, when the client is created.
//
// TLS (an https:// URL): the server's certificate must chain to the system's CA certificates, or
// to those of `HttpClientOptions::ca_file`, and match the URL's host (name or IP address); the
// host name goes out as SNI.
//
// Thread-safety: Fetch and Stream may be called from any thread at once. The handlers run on the
// client's own threads (HttpClientOptions::threads), one callback at a time per request.
// Destroying the client stops its threads; requests still in flight are abandoned without a
// callback, so wait for every OnDone first.
#ifndef KVSERVE_TOOLS_HTTP_CLIENT_H_
#define KVSERVE_TOOLS_HTTP_CLIENT_H_

#include <chrono>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace kvserve::tools {

// "http://host:port/path" split up. The port defaults to 80 (http) or 443 (https); `path` is
// what follows the authority without a trailing '/' ("" for none). IPv6 hosts are bracketed:
// "http://[::1]:8000".
struct HttpUrl {
  bool tls = false;
  std::string host;
  std::string port;
  std::string path;
};
// InvalidArgument naming the URL for another scheme, a missing host, a bad port, a query or
// fragment, or user info.
absl::StatusOr<HttpUrl> ParseHttpUrl(std::string_view url);

struct HttpClientOptions {
  std::string ca_file;  // PEM file of the CAs to trust for https; empty: the system's
  int threads = 1;      // threads running the connections
};

struct HttpRequest {
  std::string method = "GET";
  std::string target = "/";  // path and query
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;      // sent with Content-Length when not empty
  double timeout_s = 0;  // deadline of the whole exchange, connect included; 0 = none
};

struct HttpResponse {
  int status = 0;
  std::string content_type;
  std::string body;
};

// Receives one streamed response. Called on the client's threads, one call at a time.
class HttpStreamHandler {
 public:
  using Clock = std::chrono::steady_clock;
  virtual ~HttpStreamHandler() = default;
  // The status line and headers have arrived (`status` 200, 404, ...).
  virtual void OnHeaders(int status, std::string_view content_type) {}
  // The next bytes of the (decoded) body, read at `received`. Returning false ends the exchange
  // there, as complete (OnDone with OK follows): the handler has read all it wanted.
  virtual bool OnBody(std::string_view bytes, Clock::time_point received) = 0;
  // Called once, last: OK when the whole response arrived; DeadlineExceeded past the timeout;
  // Unavailable when no connection could be made or the request could not be sent; DataLoss
  // when the connection failed or closed during the response.
  virtual void OnDone(const absl::Status& status, Clock::time_point finished) = 0;
};

class HttpClient {
 public:
  // Resolves the URL's host and prepares TLS. Unavailable when the host does not resolve;
  // InvalidArgument when `ca_file` cannot be loaded.
  static absl::StatusOr<std::unique_ptr<HttpClient>> Create(const HttpUrl& url,
                                                            const HttpClientOptions& options);
  virtual ~HttpClient() = default;

  const HttpUrl& url() const { return url_; }

  // Sends `request` and reads the whole response; blocks the caller (never call it from a
  // handler). Any HTTP status is a response; errors as HttpStreamHandler::OnDone.
  absl::StatusOr<HttpResponse> Fetch(const HttpRequest& request);
  // Starts `request` on a new connection and returns; `handler` receives the response.
  virtual void Stream(const HttpRequest& request, std::shared_ptr<HttpStreamHandler> handler) = 0;

 protected:
  explicit HttpClient(HttpUrl url) : url_(std::move(url)) {}

 private:
  HttpUrl url_;
};

}  // namespace kvserve::tools

#endif  // KVSERVE_TOOLS_HTTP_CLIENT_H_
