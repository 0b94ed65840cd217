// A scripted OpenAI-compatible HTTP server for the bench client's tests, on loopback, over TCP or
// TLS: GET /v1/models, POST /detokenize, and streamed POST /v1/completions and
// /v1/chat/completions whose events come at known times and arrive split across writes.
//
// A streamed request with max_tokens = N answers (HTTP/1.1, chunked, CRLF line ends): a comment
// line, then for chat a first event with delta {"role": "assistant"} and no text, then N events
// carrying the text "t0", "t1", ... each after `event_gap_ms` of sleep and each written in two
// pieces (the split falls inside the "data:" field name and between the CR and LF of its end),
// then an event with finish_reason "length", a usage event (when `send_usage`: prompt_tokens =
// the number of prompt ids, or of the message's characters; completion_tokens = N) and
// "data: [DONE]". Connections close after each response.
#ifndef KVSERVE_TESTS_TOOLS_FAKE_OPENAI_SERVER_H_
#define KVSERVE_TESTS_TOOLS_FAKE_OPENAI_SERVER_H_

#include <memory>
#include <string>
#include <vector>

namespace kvserve::tools::testing {

struct FakeOpenAiServerOptions {
  std::string api_key;    // when not empty, requests without "Authorization: Bearer KEY" get 401
  int event_gap_ms = 50;  // sleep before each event carrying text
  bool send_usage = true;
  int truncate_after = -1;  // >= 0: close the connection after that many text events, mid-body
  bool tls = false;         // serve https with a fresh self-signed certificate for 127.0.0.1
};

class FakeOpenAiServer {
 public:
  explicit FakeOpenAiServer(FakeOpenAiServerOptions options);
  ~FakeOpenAiServer();

  // "http://127.0.0.1:PORT" or "https://...".
  std::string url() const;
  // The PEM certificate a TLS server presents (its own CA).
  std::string cert_pem() const;
  // The JSON bodies of the POST requests received so far, in order of arrival.
  std::vector<std::string> bodies() const;
  // The request targets ("/v1/models", ...) received so far.
  std::vector<std::string> targets() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvserve::tools::testing

#endif  // KVSERVE_TESTS_TOOLS_FAKE_OPENAI_SERVER_H_
