#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cctype>
#include <cstdlib>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "tests/server/http/http_client.h"

namespace kvserve::server::testing {
namespace {

int Connect(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return -1;
  }
  const int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  return fd;
}

bool SendAll(int fd, const std::string& data) {
  size_t sent = 0;
  while (sent < data.size()) {
    const ssize_t n = send(fd, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) return false;
    sent += static_cast<size_t>(n);
  }
  return true;
}

// Appends what arrives before the deadline; false at EOF, error or timeout.
bool ReadSome(int fd, std::string* out, absl::Time deadline) {
  const absl::Duration left = deadline - absl::Now();
  if (left <= absl::ZeroDuration()) return false;
  pollfd p{fd, POLLIN, 0};
  if (poll(&p, 1, static_cast<int>(absl::ToInt64Milliseconds(left)) + 1) <= 0) return false;
  char buf[16384];
  const ssize_t n = recv(fd, buf, sizeof(buf), 0);
  if (n <= 0) return false;
  out->append(buf, static_cast<size_t>(n));
  return true;
}

std::string BuildRequest(const std::string& method, const std::string& path,
                         const std::string& body, const std::vector<std::string>& headers,
                         bool close) {
  std::string req = absl::StrCat(method, " ", path, " HTTP/1.1\r\nHost: 127.0.0.1\r\n");
  if (close) req += "Connection: close\r\n";
  for (const std::string& h : headers) absl::StrAppend(&req, h, "\r\n");
  if (!body.empty() || method == "POST") {
    absl::StrAppend(&req, "Content-Type: application/json\r\nContent-Length: ", body.size(),
                    "\r\n");
  }
  absl::StrAppend(&req, "\r\n", body);
  return req;
}

// Parses the status line and headers at the start of `raw` (which holds them all); returns the
// header block's length, 0 when incomplete.
size_t ParseHead(const std::string& raw, int* status, std::map<std::string, std::string>* headers) {
  const size_t end = raw.find("\r\n\r\n");
  if (end == std::string::npos) return 0;
  const std::string head = raw.substr(0, end);
  size_t line_end = head.find("\r\n");
  const std::string status_line = head.substr(0, line_end);
  if (status_line.size() < 12) return 0;
  *status = std::atoi(status_line.substr(9, 3).c_str());
  while (line_end != std::string::npos) {
    const size_t next = head.find("\r\n", line_end + 2);
    const std::string line = head.substr(
        line_end + 2, next == std::string::npos ? std::string::npos : next - line_end - 2);
    const size_t colon = line.find(':');
    if (colon != std::string::npos) {
      std::string value = line.substr(colon + 1);
      (*headers)[absl::AsciiStrToLower(line.substr(0, colon))] =
          std::string(absl::StripAsciiWhitespace(value));
    }
    line_end = next;
  }
  return end + 4;
}

}  // namespace

HttpResponse HttpCall(int port, const std::string& method, const std::string& path,
                      const std::string& body, const std::vector<std::string>& headers,
                      absl::Duration timeout) {
  HttpStream stream;
  HttpResponse r;
  if (!stream.Open(port, method + " " + path, body, headers, timeout)) {
    r.error = "no response";
    r.status = stream.status();
    return r;
  }
  stream.ReadAll(timeout);
  r.status = stream.status();
  r.headers = stream.headers();
  r.body = stream.body();
  r.chunked = r.headers.count("transfer-encoding") > 0;
  return r;
}

std::string HttpRaw(int port, const std::string& raw, absl::Duration timeout) {
  const int fd = Connect(port);
  if (fd < 0) return "";
  std::string out;
  if (SendAll(fd, raw)) {
    const absl::Time deadline = absl::Now() + timeout;
    while (ReadSome(fd, &out, deadline)) {
    }
  }
  close(fd);
  return out;
}

HttpStream::~HttpStream() { Close(); }

void HttpStream::Close() {
  if (fd_ >= 0) close(fd_);
  fd_ = -1;
}

bool HttpStream::Open(int port, const std::string& path, const std::string& body,
                      const std::vector<std::string>& headers, absl::Duration timeout) {
  fd_ = Connect(port);
  if (fd_ < 0) return false;
  // A method prefix in `path` ("GET /v1/models") picks the method; POST otherwise.
  std::string method = "POST";
  std::string target = path;
  if (const size_t space = path.find(' '); space != std::string::npos) {
    method = path.substr(0, space);
    target = path.substr(space + 1);
  }
  if (!SendAll(fd_, BuildRequest(method, target, body, headers, /*close=*/true))) return false;
  const absl::Time deadline = absl::Now() + timeout;
  size_t head = 0;
  while ((head = ParseHead(raw_, &status_, &headers_)) == 0) {
    if (!ReadSome(fd_, &raw_, deadline)) return false;
  }
  raw_.erase(0, head);
  auto te = headers_.find("transfer-encoding");
  chunked_ = te != headers_.end() && te->second == "chunked";
  Dechunk();
  return true;
}

void HttpStream::Dechunk() {
  if (!chunked_) {
    body_ += raw_;
    raw_.clear();
    return;
  }
  for (;;) {
    const size_t line = raw_.find("\r\n");
    if (line == std::string::npos) return;
    uint64_t size = 0;
    if (!absl::SimpleHexAtoi(raw_.substr(0, line), &size)) {
      complete_ = true;  // malformed framing: the test sees a truncated body
      return;
    }
    if (raw_.size() < line + 2 + size + 2) return;
    body_.append(raw_, line + 2, size);
    raw_.erase(0, line + 2 + size + 2);
    if (size == 0) {
      complete_ = true;
      return;
    }
  }
}

bool HttpStream::Fill(absl::Time deadline) {
  if (fd_ < 0) return false;
  if (!ReadSome(fd_, &raw_, deadline)) return false;
  Dechunk();
  return true;
}

std::optional<std::string> HttpStream::NextEvent(absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  for (;;) {
    const size_t end = body_.find("\n\n", consumed_);
    if (end != std::string::npos) {
      std::string event = body_.substr(consumed_, end - consumed_);
      consumed_ = end + 2;
      return event;
    }
    if (complete_ || !Fill(deadline)) return std::nullopt;
  }
}

std::vector<std::string> HttpStream::ReadAll(absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  std::vector<std::string> events;
  while (!complete_ && Fill(deadline)) {
  }
  while (auto e = NextEvent(absl::ZeroDuration())) events.push_back(*e);
  return events;
}

}  // namespace kvserve::server::testing
