#include "tools/http_client.h"

#include <openssl/ssl.h>

#include <algorithm>
#include <boost/asio/connect.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/strand.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <cstdint>
#include <limits>
#include <thread>
#include <type_traits>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"

namespace kvserve::tools {
namespace {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace ssl = net::ssl;
using tcp = net::ip::tcp;
using Clock = HttpStreamHandler::Clock;
using PlainStream = beast::tcp_stream;
using TlsStream = beast::ssl_stream<beast::tcp_stream>;

// What every connection of a client shares; owned by the client.
struct Target {
  tcp::resolver::results_type endpoints;
  std::string host;         // as resolved and verified (no brackets)
  std::string host_header;  // the Host header: host[:port], IPv6 bracketed
  std::string where;        // "host:port" for error messages
};

// One request on its own connection, from connect to the end of the response. Owned by the
// asynchronous operations in flight (shared_from_this); Stream is a PlainStream or a TlsStream.
template <class Stream>
class Exchange : public std::enable_shared_from_this<Exchange<Stream>> {
 public:
  static constexpr bool kTls = std::is_same_v<Stream, TlsStream>;

  Exchange(net::io_context& io, ssl::context* tls, const Target& target,
           http::request<http::string_body> request, double timeout_s,
           std::shared_ptr<HttpStreamHandler> handler)
      : stream_(MakeStream(io, tls)),
        target_(target),
        request_(std::move(request)),
        timeout_s_(timeout_s),
        handler_(std::move(handler)) {
    parser_.body_limit(std::numeric_limits<std::uint64_t>::max());
  }

  // Runs the exchange on the connection's strand.
  void Start() {
    net::post(stream_.get_executor(), [self = this->shared_from_this()] { self->Connect(); });
  }

 private:
  static Stream MakeStream(net::io_context& io, ssl::context* tls) {
    if constexpr (kTls) {
      return Stream(net::make_strand(io), *tls);
    } else {
      return Stream(net::make_strand(io));
    }
  }

  void Connect() {
    auto& socket = beast::get_lowest_layer(stream_);
    if (timeout_s_ > 0) {
      socket.expires_after(std::chrono::duration_cast<std::chrono::steady_clock::duration>(
          std::chrono::duration<double>(timeout_s_)));
    } else {
      socket.expires_never();
    }
    if constexpr (kTls) {
      // SNI (for a host name, not an IP address), and the certificate must name the host.
      beast::error_code not_ip;
      net::ip::make_address(target_.host, not_ip);
      if (not_ip && SSL_set_tlsext_host_name(stream_.native_handle(), target_.host.c_str()) != 1) {
        Finish(
            absl::UnavailableError(absl::StrCat("TLS: cannot set the server name ", target_.host)));
        return;
      }
      stream_.set_verify_callback(ssl::host_name_verification(target_.host));
    }
    socket.async_connect(target_.endpoints,
                         [self = this->shared_from_this()](
                             beast::error_code ec, const tcp::endpoint&) { self->OnConnect(ec); });
  }

  void OnConnect(beast::error_code ec) {
    if (ec) return Fail(ec, "connect to");
    if constexpr (kTls) {
      stream_.async_handshake(
          ssl::stream_base::client,
          [self = this->shared_from_this()](beast::error_code e) { self->OnHandshake(e); });
    } else {
      Write();
    }
  }

  void OnHandshake(beast::error_code ec) {
    if (ec) return Fail(ec, "TLS handshake with");
    Write();
  }

  void Write() {
    http::async_write(
        stream_, request_,
        [self = this->shared_from_this()](beast::error_code ec, size_t) { self->OnWrite(ec); });
  }

  void OnWrite(beast::error_code ec) {
    if (ec) return Fail(ec, "send to");
    http::async_read_header(
        stream_, buffer_, parser_,
        [self = this->shared_from_this()](beast::error_code e, size_t) { self->OnHeader(e); });
  }

  void OnHeader(beast::error_code ec) {
    if (ec) return Fail(ec, "read the response of");
    const auto& header = parser_.get();
    handler_->OnHeaders(static_cast<int>(header.result_int()),
                        std::string_view(header[http::field::content_type].data(),
                                         header[http::field::content_type].size()));
    ReadSome();
  }

  void ReadSome() {
    if (parser_.is_done()) return Finish(absl::OkStatus());
    parser_.get().body().data = chunk_;
    parser_.get().body().size = sizeof(chunk_);
    http::async_read_some(
        stream_, buffer_, parser_,
        [self = this->shared_from_this()](beast::error_code ec, size_t) { self->OnRead(ec); });
  }

  void OnRead(beast::error_code ec) {
    const Clock::time_point now = Clock::now();
    if (ec == http::error::need_buffer) ec = {};  // the chunk is full; read on
    const size_t n = sizeof(chunk_) - parser_.get().body().size;
    if (n > 0 && !handler_->OnBody(std::string_view(chunk_, n), now)) {
      return Finish(absl::OkStatus());
    }
    if (ec) return Fail(ec, "read the response of");
    ReadSome();
  }

  void Fail(beast::error_code ec, const char* what) {
    const std::string message = absl::StrCat(what, " ", target_.where, ": ", ec.message());
    if (ec == beast::error::timeout) return Finish(absl::DeadlineExceededError(message));
    // Before the response began nothing was received: the server is unavailable. During it,
    // part of the response is lost.
    if (parser_.got_some()) return Finish(absl::DataLossError(message));
    return Finish(absl::UnavailableError(message));
  }

  void Finish(const absl::Status& status) {
    const Clock::time_point now = Clock::now();
    // Close without a TLS close_notify: the response is complete or the exchange failed, and
    // nothing more is sent on this connection.
    beast::error_code ignored;
    beast::get_lowest_layer(stream_).socket().shutdown(tcp::socket::shutdown_both, ignored);
    beast::get_lowest_layer(stream_).close();
    handler_->OnDone(status, now);
  }

  Stream stream_;
  const Target& target_;
  http::request<http::string_body> request_;
  double timeout_s_;
  std::shared_ptr<HttpStreamHandler> handler_;
  beast::flat_buffer buffer_;
  http::response_parser<http::buffer_body> parser_;
  char chunk_[16384];
};

class BeastHttpClient final : public HttpClient {
 public:
  BeastHttpClient(HttpUrl url, Target target, std::unique_ptr<ssl::context> tls, int threads)
      : HttpClient(std::move(url)),
        target_(std::move(target)),
        tls_(std::move(tls)),
        work_(net::make_work_guard(io_)) {
    for (int i = 0; i < std::max(threads, 1); ++i) threads_.emplace_back([this] { io_.run(); });
  }
  ~BeastHttpClient() override {
    work_.reset();
    io_.stop();
    for (std::thread& t : threads_) t.join();
  }

  void Stream(const HttpRequest& request, std::shared_ptr<HttpStreamHandler> handler) override {
    http::request<http::string_body> message;
    message.version(11);
    message.method_string(request.method);
    message.target(request.target);
    message.set(http::field::host, target_.host_header);
    message.set(http::field::user_agent, "kvserve-bench");
    message.set(http::field::connection, "close");
    for (const auto& [name, value] : request.headers) message.set(name, value);
    if (!request.body.empty() || request.method == "POST") {
      message.body() = request.body;
      message.prepare_payload();
    }
    if (url().tls) {
      std::make_shared<Exchange<TlsStream>>(io_, tls_.get(), target_, std::move(message),
                                            request.timeout_s, std::move(handler))
          ->Start();
    } else {
      std::make_shared<Exchange<PlainStream>>(io_, nullptr, target_, std::move(message),
                                              request.timeout_s, std::move(handler))
          ->Start();
    }
  }

 private:
  Target target_;
  std::unique_ptr<ssl::context> tls_;
  net::io_context io_;
  net::executor_work_guard<net::io_context::executor_type> work_;
  std::vector<std::thread> threads_;
};

// Collects a whole response for Fetch.
class Collector : public HttpStreamHandler {
 public:
  void OnHeaders(int status, std::string_view content_type) override {
    response_.status = status;
    response_.content_type = std::string(content_type);
  }
  bool OnBody(std::string_view bytes, Clock::time_point) override {
    response_.body.append(bytes);
    return true;
  }
  void OnDone(const absl::Status& status, Clock::time_point) override {
    status_ = status;
    done_.Notify();
  }
  absl::StatusOr<HttpResponse> Wait() {
    done_.WaitForNotification();
    if (!status_.ok()) return status_;
    return std::move(response_);
  }

 private:
  HttpResponse response_;
  absl::Status status_;
  absl::Notification done_;
};

}  // namespace

absl::StatusOr<HttpUrl> ParseHttpUrl(std::string_view url) {
  auto bad = [&](std::string_view why) {
    return absl::InvalidArgumentError(
        absl::StrCat("URL '", std::string(url), "': ", std::string(why)));
  };
  HttpUrl out;
  std::string_view rest = url;
  const std::string lower =
      absl::AsciiStrToLower(std::string(url.substr(0, std::min<size_t>(url.size(), 8))));
  if (lower.rfind("http://", 0) == 0) {
    rest.remove_prefix(7);
  } else if (lower.rfind("https://", 0) == 0) {
    rest.remove_prefix(8);
    out.tls = true;
  } else {
    return bad("expected http:// or https://");
  }
  if (rest.find_first_of("?#") != std::string_view::npos)
    return bad("no query or fragment, please");
  const size_t slash = rest.find('/');
  std::string_view authority = rest.substr(0, slash);
  std::string_view path = slash == std::string_view::npos ? "" : rest.substr(slash);
  while (!path.empty() && path.back() == '/') path.remove_suffix(1);
  out.path = std::string(path);
  if (authority.find('@') != std::string_view::npos) return bad("user info is not supported");
  std::string_view port;
  if (!authority.empty() && authority[0] == '[') {
    const size_t close = authority.find(']');
    if (close == std::string_view::npos) return bad("unterminated IPv6 address");
    out.host = std::string(authority.substr(1, close - 1));
    std::string_view after = authority.substr(close + 1);
    if (!after.empty()) {
      if (after[0] != ':') return bad("expected ':' after the IPv6 address");
      port = after.substr(1);
    }
  } else {
    const size_t colon = authority.rfind(':');
    out.host = std::string(authority.substr(0, colon));
    if (colon != std::string_view::npos) port = authority.substr(colon + 1);
  }
  if (out.host.empty()) return bad("no host");
  int port_number = out.tls ? 443 : 80;
  if (!port.empty() && (!absl::SimpleAtoi(std::string(port), &port_number) || port_number < 1 ||
                        port_number > 65535)) {
    return bad(absl::StrCat("port '", std::string(port), "' is not in [1, 65535]"));
  }
  out.port = absl::StrCat(port_number);
  return out;
}

absl::StatusOr<HttpResponse> HttpClient::Fetch(const HttpRequest& request) {
  auto collector = std::make_shared<Collector>();
  Stream(request, collector);
  return collector->Wait();
}

absl::StatusOr<std::unique_ptr<HttpClient>> HttpClient::Create(const HttpUrl& url,
                                                               const HttpClientOptions& options) {
  Target target;
  target.host = url.host;
  const bool ipv6 = url.host.find(':') != std::string::npos;
  const std::string host = ipv6 ? absl::StrCat("[", url.host, "]") : url.host;
  const bool default_port = url.port == (url.tls ? "443" : "80");
  target.host_header = default_port ? host : absl::StrCat(host, ":", url.port);
  target.where = absl::StrCat(host, ":", url.port);
  {
    net::io_context io;
    tcp::resolver resolver(io);
    beast::error_code ec;
    target.endpoints = resolver.resolve(url.host, url.port, ec);
    if (ec) {
      return absl::UnavailableError(
          absl::StrCat("cannot resolve ", target.where, ": ", ec.message()));
    }
  }
  std::unique_ptr<ssl::context> tls;
  if (url.tls) {
    tls = std::make_unique<ssl::context>(ssl::context::tls_client);
    tls->set_verify_mode(ssl::verify_peer);
    beast::error_code ec;
    if (!options.ca_file.empty()) {
      tls->load_verify_file(options.ca_file, ec);
      if (ec) {
        return absl::InvalidArgumentError(
            absl::StrCat("--tls-ca: cannot load ", options.ca_file, ": ", ec.message()));
      }
    } else {
      tls->set_default_verify_paths(ec);
      if (ec) {
        return absl::InvalidArgumentError(
            absl::StrCat("TLS: cannot load the system's CA certificates: ", ec.message()));
      }
    }
  }
  return std::unique_ptr<HttpClient>(
      new BeastHttpClient(url, std::move(target), std::move(tls), options.threads));
}

}  // namespace kvserve::tools
