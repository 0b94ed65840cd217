#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <atomic>
#include <boost/asio/buffers_iterator.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/streambuf.hpp>
#include <boost/asio/write.hpp>
#include <chrono>
#include <mutex>
#include <thread>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "nlohmann/json.hpp"
#include "tests/tools/fake_openai_server.h"

namespace kvserve::tools::testing {
namespace {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using Json = nlohmann::json;

std::string BioText(BIO* bio) {
  char* data = nullptr;
  const long n = BIO_get_mem_data(bio, &data);
  return std::string(data, static_cast<size_t>(n));
}

// A self-signed P-256 certificate for the IP address 127.0.0.1, valid for a day.
void MakeCertificate(std::string* cert_pem, std::string* key_pem) {
  EVP_PKEY* key = EVP_EC_gen("P-256");
  X509* cert = X509_new();
  X509_set_version(cert, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(cert), 1);
  X509_gmtime_adj(X509_getm_notBefore(cert), -3600);
  X509_gmtime_adj(X509_getm_notAfter(cert), 24 * 3600);
  X509_set_pubkey(cert, key);
  X509_NAME* name = X509_get_subject_name(cert);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>("127.0.0.1"), -1, -1, 0);
  X509_set_issuer_name(cert, name);
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, cert, cert, nullptr, nullptr, 0);
  X509_EXTENSION* san = X509V3_EXT_conf_nid(nullptr, &ctx, NID_subject_alt_name, "IP:127.0.0.1");
  X509_add_ext(cert, san, -1);
  X509_EXTENSION_free(san);
  X509_sign(cert, key, EVP_sha256());
  BIO* bio = BIO_new(BIO_s_mem());
  PEM_write_bio_X509(bio, cert);
  *cert_pem = BioText(bio);
  BIO_free(bio);
  bio = BIO_new(BIO_s_mem());
  PEM_write_bio_PrivateKey(bio, key, nullptr, nullptr, 0, nullptr, nullptr);
  *key_pem = BioText(bio);
  BIO_free(bio);
  X509_free(cert);
  EVP_PKEY_free(key);
}

std::string Event(const Json& j) { return "data: " + j.dump() + "\r\n\r\n"; }

}  // namespace

struct FakeOpenAiServer::Impl {
  FakeOpenAiServerOptions options;
  asio::io_context io;
  tcp::acceptor acceptor{io};
  std::unique_ptr<asio::ssl::context> tls;
  std::string cert_pem;
  int port = 0;
  std::atomic<bool> stopping{false};
  std::thread accept_thread;
  std::mutex mu;
  std::vector<std::thread> connections;  // guarded by mu
  std::vector<std::string> bodies;       // guarded by mu
  std::vector<std::string> targets;      // guarded by mu

  void AcceptLoop() {
    while (true) {
      tcp::socket socket(io);
      boost::system::error_code ec;
      acceptor.accept(socket, ec);
      if (stopping) return;
      if (ec) continue;
      std::lock_guard<std::mutex> lock(mu);
      connections.emplace_back([this, s = std::move(socket)]() mutable { Serve(std::move(s)); });
    }
  }

  void Serve(tcp::socket socket) {
    if (tls) {
      asio::ssl::stream<tcp::socket> stream(std::move(socket), *tls);
      boost::system::error_code ec;
      stream.handshake(asio::ssl::stream_base::server, ec);
      if (!ec) Handle(stream);
    } else {
      Handle(socket);
    }
  }

  template <class Stream>
  static bool Write(Stream& stream, const std::string& bytes) {
    boost::system::error_code ec;
    asio::write(stream, asio::buffer(bytes), ec);
    return !ec;
  }

  template <class Stream>
  static void Respond(Stream& stream, int status, const std::string& reason,
                      const std::string& body) {
    Write(stream, absl::StrCat("HTTP/1.1 ", status, " ", reason,
                               "\r\nContent-Type: application/json\r\nContent-Length: ",
                               body.size(), "\r\nConnection: close\r\n\r\n", body));
  }

  template <class Stream>
  void Handle(Stream& stream) {
    asio::streambuf buffer;
    boost::system::error_code ec;
    const size_t head_size = asio::read_until(stream, buffer, "\r\n\r\n", ec);
    if (ec) return;
    const std::string head(asio::buffers_begin(buffer.data()),
                           asio::buffers_begin(buffer.data()) + static_cast<long>(head_size));
    buffer.consume(head_size);
    std::vector<std::string> lines = absl::StrSplit(head, "\r\n");
    std::vector<std::string> request_line = absl::StrSplit(lines[0], ' ');
    if (request_line.size() < 2) return;
    const std::string method = request_line[0];
    const std::string target = request_line[1];
    size_t content_length = 0;
    std::string authorization;
    for (size_t i = 1; i < lines.size(); ++i) {
      const size_t colon = lines[i].find(':');
      if (colon == std::string::npos) continue;
      const std::string name = absl::AsciiStrToLower(lines[i].substr(0, colon));
      const std::string value(absl::StripAsciiWhitespace(lines[i].substr(colon + 1)));
      if (name == "content-length") (void)absl::SimpleAtoi(value, &content_length);
      if (name == "authorization") authorization = value;
    }
    if (buffer.size() < content_length) {
      asio::read(stream, buffer, asio::transfer_exactly(content_length - buffer.size()), ec);
      if (ec) return;
    }
    const std::string body(asio::buffers_begin(buffer.data()),
                           asio::buffers_begin(buffer.data()) + static_cast<long>(content_length));
    {
      std::lock_guard<std::mutex> lock(mu);
      targets.push_back(target);
      if (method == "POST") bodies.push_back(body);
    }
    if (!options.api_key.empty() && authorization != "Bearer " + options.api_key) {
      Respond(stream, 401, "Unauthorized",
              R"({"error":{"message":"invalid API key","type":"authentication_error",)"
              R"("param":null,"code":"invalid_api_key"}})");
      return;
    }
    const Json request = Json::parse(body, nullptr, false);
    if (method == "GET" && target == "/v1/models") {
      Respond(stream, 200, "OK",
              R"({"object":"list","data":[{"id":"fake-model","object":"model",)"
              R"("owned_by":"test","max_model_len":2048,"meta":{"n_vocab":512}}]})");
    } else if (method == "POST" && target == "/detokenize" && request.is_object()) {
      std::string text;
      for (const Json& id : request.value("tokens", Json::array())) {
        absl::StrAppend(&text, text.empty() ? "" : " ", "w", id.get<int>());
      }
      Respond(stream, 200, "OK", Json{{"prompt", text}}.dump());
    } else if (method == "POST" && request.is_object() &&
               (target == "/v1/completions" || target == "/v1/chat/completions")) {
      StreamCompletion(stream, request, target == "/v1/chat/completions");
    } else {
      Respond(stream, 404, "Not Found", R"({"error":{"message":"no such route"}})");
    }
  }

  template <class Stream>
  void StreamCompletion(Stream& stream, const Json& request, bool chat) {
    const int n = request.value("max_tokens", 16);
    int prompt_tokens = 0;
    if (chat) {
      prompt_tokens = static_cast<int>(request["messages"][0]["content"].get<std::string>().size());
    } else if (request["prompt"].is_array()) {
      prompt_tokens = static_cast<int>(request["prompt"].size());
    } else {
      prompt_tokens = static_cast<int>(request["prompt"].get<std::string>().size());
    }
    auto chunk = [&stream](const std::string& data) {
      std::string encoded;
      absl::StrAppend(&encoded, absl::Hex(data.size()), "\r\n", data, "\r\n");
      return Write(stream, encoded);
    };
    const Json object = chat ? "chat.completion.chunk" : "text_completion";
    auto choice = [chat](const Json& text, const Json& finish) {
      Json c = {{"index", 0}, {"finish_reason", finish}};
      if (chat) {
        c["delta"] = text.is_null() ? Json::object() : Json{{"content", text}};
      } else {
        c["text"] = text.is_null() ? "" : text;
        c["logprobs"] = nullptr;
      }
      return c;
    };
    auto message = [&](Json choices) {
      return Json{{"id", "cmpl-1"},
                  {"object", object},
                  {"created", 1},
                  {"model", "fake-model"},
                  {"choices", std::move(choices)}};
    };
    if (!Write(stream,
               "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
               "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n")) {
      return;
    }
    chunk(": a comment, as servers send to keep a connection alive\r\n\r\n");
    if (chat) {
      Json first = {{"index", 0}, {"delta", {{"role", "assistant"}}}, {"finish_reason", nullptr}};
      chunk(Event(message(Json::array({first}))));
    }
    for (int i = 0; i < n; ++i) {
      if (i == options.truncate_after) return;  // closed without the last chunk
      std::this_thread::sleep_for(std::chrono::milliseconds(options.event_gap_ms));
      const std::string e = Event(message(Json::array({choice(absl::StrCat("t", i), nullptr)})));
      // "dat" | "a: {...}\r" | "\n\r\n": the field name and the CRLF are split across writes.
      const size_t cr = e.size() - 4;
      if (!chunk(e.substr(0, 3))) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
      chunk(e.substr(3, cr + 1 - 3));
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
      chunk(e.substr(cr + 1));
    }
    chunk(Event(message(Json::array({choice(nullptr, "length")}))));
    if (options.send_usage) {
      Json usage = message(Json::array());
      usage["usage"] = {{"prompt_tokens", prompt_tokens},
                        {"completion_tokens", n},
                        {"total_tokens", prompt_tokens + n}};
      chunk(Event(usage));
    }
    chunk("data: [DONE]\r\n\r\n");
    Write(stream, "0\r\n\r\n");
  }
};

FakeOpenAiServer::FakeOpenAiServer(FakeOpenAiServerOptions options)
    : impl_(std::make_unique<Impl>()) {
  impl_->options = std::move(options);
  if (impl_->options.tls) {
    std::string key_pem;
    MakeCertificate(&impl_->cert_pem, &key_pem);
    impl_->tls = std::make_unique<asio::ssl::context>(asio::ssl::context::tls_server);
    impl_->tls->use_certificate_chain(asio::buffer(impl_->cert_pem));
    impl_->tls->use_private_key(asio::buffer(key_pem), asio::ssl::context::pem);
  }
  const tcp::endpoint endpoint(asio::ip::make_address("127.0.0.1"), 0);
  impl_->acceptor.open(endpoint.protocol());
  impl_->acceptor.set_option(tcp::acceptor::reuse_address(true));
  impl_->acceptor.bind(endpoint);
  impl_->acceptor.listen();
  impl_->port = impl_->acceptor.local_endpoint().port();
  impl_->accept_thread = std::thread([this] { impl_->AcceptLoop(); });
}

FakeOpenAiServer::~FakeOpenAiServer() {
  impl_->stopping = true;
  {
    // Wake the blocking accept.
    tcp::socket waker(impl_->io);
    boost::system::error_code ec;
    waker.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"),
                                static_cast<unsigned short>(impl_->port)),
                  ec);
  }
  impl_->accept_thread.join();
  std::vector<std::thread> connections;
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    connections.swap(impl_->connections);
  }
  for (std::thread& t : connections) t.join();
}

std::string FakeOpenAiServer::url() const {
  return absl::StrCat(impl_->options.tls ? "https" : "http", "://127.0.0.1:", impl_->port);
}

std::string FakeOpenAiServer::cert_pem() const { return impl_->cert_pem; }

std::vector<std::string> FakeOpenAiServer::bodies() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->bodies;
}

std::vector<std::string> FakeOpenAiServer::targets() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->targets;
}

}  // namespace kvserve::tools::testing
