// A plain HTTP/1.1 client for the tests of the HTTP API, on blocking POSIX sockets: it sends
// exactly the bytes a test asks for and exposes exactly what came back (status line, headers,
// chunk framing, server-sent events), so the tests check the wire format itself.
#ifndef KVSERVE_TESTS_SERVER_HTTP_HTTP_CLIENT_H_
#define KVSERVE_TESTS_SERVER_HTTP_HTTP_CLIENT_H_

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/time/time.h"

namespace kvserve::server::testing {

struct HttpResponse {
  int status = 0;                              // 0: no response (connection failed or closed early)
  std::map<std::string, std::string> headers;  // names lowercased
  std::string body;                            // de-chunked
  bool chunked = false;
  std::string error;  // why status is 0
};

// One request on a new connection ("Connection: close"), read to the end. `headers` are extra
// header lines ("Authorization: Bearer k").
HttpResponse HttpCall(int port, const std::string& method, const std::string& path,
                      const std::string& body = "", const std::vector<std::string>& headers = {},
                      absl::Duration timeout = absl::Seconds(60));

// Sends `raw` bytes as they are and reads the reply to the end (for malformed requests).
std::string HttpRaw(int port, const std::string& raw, absl::Duration timeout = absl::Seconds(30));

// A request whose response is read as it arrives: a streaming (SSE) response.
class HttpStream {
 public:
  HttpStream() = default;
  ~HttpStream();
  HttpStream(const HttpStream&) = delete;
  HttpStream& operator=(const HttpStream&) = delete;

  // Connects, sends the request, and reads the status line and headers. False on failure.
  bool Open(int port, const std::string& path, const std::string& body,
            const std::vector<std::string>& headers = {},
            absl::Duration timeout = absl::Seconds(60));
  int status() const { return status_; }
  const std::map<std::string, std::string>& headers() const { return headers_; }

  // The next event's text up to its blank line ("data: {...}"), without the "\n\n"; nullopt at
  // the end of the response or after the timeout.
  std::optional<std::string> NextEvent(absl::Duration timeout = absl::Seconds(60));
  // Reads to the end of the response; every event's text.
  std::vector<std::string> ReadAll(absl::Duration timeout = absl::Seconds(60));
  // The de-chunked body so far, and whether the terminating chunk arrived.
  const std::string& body() const { return body_; }
  bool complete() const { return complete_; }
  // Closes the connection at once (a client that goes away mid-stream).
  void Close();

 private:
  // Reads more bytes into raw_ and de-chunks what it can. False at EOF, error or timeout.
  bool Fill(absl::Time deadline);
  void Dechunk();

  int fd_ = -1;
  int status_ = 0;
  std::map<std::string, std::string> headers_;
  bool chunked_ = false;
  std::string raw_;      // bytes not yet de-chunked
  std::string body_;     // de-chunked
  size_t consumed_ = 0;  // body_ bytes already returned as events
  bool complete_ = false;
};

}  // namespace kvserve::server::testing

#endif  // KVSERVE_TESTS_SERVER_HTTP_HTTP_CLIENT_H_
