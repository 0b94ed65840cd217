#include "server/grpc/grpc_server.h"

#include <chrono>
#include <fstream>
#include <limits>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"
#include "server/grpc/chat_setup.h"
#include "server/grpc/liveness_watchdog.h"
#include "spdlog/spdlog.h"

namespace kvserve::server {
namespace {

absl::StatusOr<std::string> ReadFile(const std::string& key, const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::InvalidArgumentError(absl::StrCat(key, ": cannot read '", path, "'"));
  std::stringstream contents;
  contents << in.rdbuf();
  if (contents.str().empty()) {
    return absl::InvalidArgumentError(absl::StrCat(key, ": '", path, "' is empty"));
  }
  return contents.str();
}

absl::Status CheckTlsPair(const TlsConfig& tls) {
  if (tls.cert_file.empty() != tls.key_file.empty()) {
    return absl::InvalidArgumentError(
        tls.cert_file.empty() ? "server.tls.cert_file: must be set when server.tls.key_file is"
                              : "server.tls.key_file: must be set when server.tls.cert_file is");
  }
  return absl::OkStatus();
}

// config.address with its port replaced by `port`.
std::string WithPort(const std::string& address, int port) {
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos) return address;
  return absl::StrCat(address.substr(0, colon + 1), port);
}

// The most often a client may ping with no data (its own keepalive), and how many pings more
// often than that the server tolerates before it closes the connection (GOAWAY).
constexpr int kMinClientPingIntervalMs = 10'000;
constexpr int kMaxClientPingStrikes = 2;

// Seconds as a channel argument's milliseconds (an int), at least 1.
int ToChannelMs(double seconds) {
  const double ms = seconds * 1000.0;
  if (ms >= 2147483647.0) return 2147483647;
  return ms < 1.0 ? 1 : static_cast<int>(ms);
}

}  // namespace

absl::Status CheckServerFiles(const ServerConfig& config) {
  if (absl::Status s = CheckTlsPair(config.tls); !s.ok()) return s;
  if (config.tls.enabled()) {
    if (auto r = ReadFile("server.tls.cert_file", config.tls.cert_file); !r.ok()) {
      return r.status();
    }
    if (auto r = ReadFile("server.tls.key_file", config.tls.key_file); !r.ok()) {
      return r.status();
    }
  }
  if (!config.api_keys_file.empty()) {
    if (auto r = ApiKeyAuthenticator::FromFile(config.api_keys_file); !r.ok()) return r.status();
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<GrpcServer>> GrpcServer::Start(const ServerConfig& config,
                                                              engine::Engine* engine) {
  std::unique_ptr<GrpcServer> server(new GrpcServer());
  if (absl::Status s = CheckTlsPair(config.tls); !s.ok()) return s;

  std::shared_ptr<grpc::ServerCredentials> credentials = grpc::InsecureServerCredentials();
  std::string tls_cert_pem;  // also the HTTP API's
  std::string tls_key_pem;
  if (config.tls.enabled()) {
    auto cert = ReadFile("server.tls.cert_file", config.tls.cert_file);
    if (!cert.ok()) return cert.status();
    auto key = ReadFile("server.tls.key_file", config.tls.key_file);
    if (!key.ok()) return key.status();
    tls_cert_pem = *std::move(cert);
    tls_key_pem = *std::move(key);
    grpc::SslServerCredentialsOptions ssl;
    ssl.pem_key_cert_pairs.push_back({tls_key_pem, tls_cert_pem});
    credentials = grpc::SslServerCredentials(ssl);
    server->tls_ = true;
  }

  const bool loopback = IsLoopbackAddress(config.address);
  if (ApiKeysRequired(config.address, !config.api_keys_file.empty(), config.auth_on_loopback)) {
    auto auth = ApiKeyAuthenticator::FromFile(config.api_keys_file);
    if (!auth.ok()) return auth.status();
    server->authenticator_ = *std::move(auth);
    spdlog::info("API keys required ({} keys)", server->authenticator_->num_keys());
    if (!loopback && !server->tls_) {
      spdlog::warn(
          "{} is not a loopback address and TLS is off: API keys travel in plaintext and can be "
          "read on the network (set server.tls.cert_file and server.tls.key_file)",
          config.address);
    }
  } else if (!loopback) {
    // The config loader refuses this unless it was asked for explicitly.
    spdlog::warn(
        "{} is not a loopback address and no API keys are required "
        "(server.allow_unauthenticated: true): anyone who can reach it may call every method",
        config.address);
  } else if (!config.api_keys_file.empty()) {
    spdlog::warn(
        "server.api_keys_file is set but {} is a loopback address: keys are not required "
        "(set server.auth_on_loopback: true to require them)",
        config.address);
  }

  if (!config.metrics_address.empty()) {
    server->metrics_ = std::make_unique<ServerMetrics>(engine, &server->outcomes_);
    if (absl::Status s = server->metrics_->Serve(config.metrics_address); !s.ok()) return s;
    spdlog::info("metrics on http://{}/metrics",
                 WithPort(config.metrics_address, server->metrics_->port()));
  }

  GenerationServiceOptions options;
  options.default_max_tokens = config.default_max_tokens;
  options.max_prompt_bytes = config.max_prompt_bytes;
  options.max_message_bytes = config.max_message_bytes;
  options.kv_block_bytes = engine->Stats().kv_block_bytes;
  options.authenticator = server->authenticator_.get();
  options.metrics = server->metrics_.get();
  options.outcomes = &server->outcomes_;
  absl::StatusOr<ChatSetup> chat = LoadChatTemplate(config.chat_template_path, config.model_path);
  if (!chat.ok()) return chat.status();
  options.chat_template = chat->chat_template;
  if (options.chat_template != nullptr) spdlog::info("chat template from {}", chat->source);
  const engine::Vocabulary& vocab = engine->tokenizer().vocab();
  options.bos_token = vocab.pieces[static_cast<size_t>(vocab.bos_id)];
  options.eos_token = vocab.pieces[static_cast<size_t>(vocab.eos_id)];
  server->service_ = std::make_unique<GenerationService>(engine, options);
  MemoryServiceOptions memory_options;
  memory_options.min_watch_interval = absl::Milliseconds(config.min_watch_interval_ms);
  memory_options.authenticator = server->authenticator_.get();
  memory_options.outcomes = &server->outcomes_;
  server->memory_service_ = std::make_unique<MemoryService>(engine, memory_options);

  if (!config.http.address.empty()) {
    HttpServerOptions http;
    http.config = config.http;
    http.tls_cert_pem = tls_cert_pem;
    http.tls_key_pem = tls_key_pem;
    http.next_seed = [service = server->service_.get()] { return service->NextSeed(); };
    http.model_name = engine->config().name;
    http.limits = server->service_->limits();
    http.chat_template = options.chat_template;
    http.chat = ChatSettings{options.chat_template.get(), options.bos_token, options.eos_token};
    http.authenticator = server->authenticator_.get();
    http.metrics = server->metrics_.get();
    http.outcomes = &server->outcomes_;
    http.max_message_bytes = config.max_message_bytes;
    auto started = HttpServer::Start(http, engine);
    if (!started.ok()) return started.status();
    server->http_ = *std::move(started);
    spdlog::info("OpenAI-compatible HTTP API on {}://{} (model '{}')",
                 server->http_->tls() ? "https" : "http", server->http_->bound_address(),
                 http.model_name);
  }

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  // Without this a second server could bind the same port (gRPC sets SO_REUSEPORT by default).
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  // Requests are bounded by what the limits let a request carry, not by the response size: gRPC
  // refuses a larger message with RESOURCE_EXHAUSTED before any handler parses it.
  const int64_t max_request_bytes = config.max_request_bytes > 0
                                        ? config.max_request_bytes
                                        : DefaultMaxRequestBytes(server->service_->limits());
  builder.SetMaxReceiveMessageSize(static_cast<int>(max_request_bytes));
  builder.SetMaxSendMessageSize(static_cast<int>(config.max_message_bytes));
  spdlog::info("request messages: at most {} bytes (server.max_request_bytes{})", max_request_bytes,
               config.max_request_bytes > 0 ? "" : ", derived");
  // HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS: one connection cannot open more calls than this; a
  // client's further calls wait (in the client) for one of its own to end. The engine's
  // scheduler.max_waiting_requests bounds the calls of all connections together.
  builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, config.max_streams_per_connection);
  // A connection that has not completed its TLS and HTTP/2 handshake (the client's preface and
  // SETTINGS) by then is closed: a silent TCP connection holds a socket for this long at most.
  builder.AddChannelArgument(GRPC_ARG_SERVER_HANDSHAKE_TIMEOUT_MS,
                             ToChannelMs(config.handshake_timeout_seconds));
  // A connection with no call in flight for this long gets GOAWAY and is closed.
  if (config.max_connection_idle_seconds > 0) {
    builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_IDLE_MS,
                               ToChannelMs(config.max_connection_idle_seconds));
  }
  // Keepalive: the server sends an HTTP/2 PING on each connection every keepalive_seconds; a
  // client that does not answer within keepalive_timeout_seconds (a stopped or vanished process,
  // a dead network path) has its connection closed and its calls cancelled, which ends their
  // requests and frees their KV blocks.
  const int keepalive_ms = config.keepalive_seconds > 0 ? ToChannelMs(config.keepalive_seconds)
                                                        : std::numeric_limits<int>::max();
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, keepalive_ms);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS,
                             ToChannelMs(config.keepalive_timeout_seconds));
  // Clients' own keepalive pings are accepted down to one every 10 s, with or without a call in
  // flight (gRPC's defaults: one every 5 minutes, or 2 hours with no call; after two pings
  // sooner than that, GOAWAY). PERMIT_WITHOUT_CALLS also lets the server ping idle connections.
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS,
                             kMinClientPingIntervalMs);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, kMaxClientPingStrikes);
  builder.AddListeningPort(config.address, credentials, &server->port_);
  builder.RegisterService(server->service_.get());
  builder.RegisterService(server->memory_service_.get());
  server->server_ = builder.BuildAndStart();
  if (server->server_ == nullptr || server->port_ == 0) {
    return absl::UnavailableError(absl::StrCat(
        "cannot listen on ", config.address,
        " (server.address): the port is in use, or the address is not local",
        server->tls_ ? ", or the TLS certificate and key (server.tls) are not a valid pair" : ""));
  }
  server->bound_address_ = WithPort(config.address, server->port_);
  grpc::HealthCheckServiceInterface* health = server->server_->GetHealthCheckService();
  if (health != nullptr) {
    health->SetServingStatus(true);
    health->SetServingStatus(v1::Generation::service_full_name(), true);
    health->SetServingStatus(v1::Memory::service_full_name(), true);
    health->SetServingStatus(kLivenessService, true);
  }
  return server;
}

GrpcServer::~GrpcServer() { Shutdown(absl::ZeroDuration()); }

absl::Status GrpcServer::ReloadApiKeys(const std::string& path) {
  if (authenticator_ == nullptr) return absl::OkStatus();
  auto keys = ApiKeyAuthenticator::ReadKeysFile(path);
  if (!keys.ok()) return keys.status();
  const size_t count = keys->size();
  authenticator_->SetKeys(*std::move(keys));
  spdlog::info("API keys reloaded ({} keys)", count);
  return absl::OkStatus();
}

void GrpcServer::SetHealthStatus(const std::string& service, bool serving) {
  if (server_ != nullptr && server_->GetHealthCheckService() != nullptr) {
    server_->GetHealthCheckService()->SetServingStatus(service, serving);
  }
}

void GrpcServer::BeginDrain() {
  if (service_ != nullptr) service_->BeginDrain();
  if (http_ != nullptr) http_->BeginDrain();
  if (memory_service_ != nullptr) memory_service_->BeginDrain();
  if (server_ != nullptr && server_->GetHealthCheckService() != nullptr) {
    server_->GetHealthCheckService()->SetServingStatus(false);
  }
}

void GrpcServer::Shutdown(absl::Duration grace) {
  if (shut_down_ || server_ == nullptr) return;
  shut_down_ = true;
  BeginDrain();
  // gRPC's own Shutdown(deadline) waits for idle connections too (clients keep them open after
  // GOAWAY), so it would always take the whole grace: wait for our calls instead, then close.
  const absl::Time deadline = absl::Now() + grace;
  if (!service_->WaitForCalls(grace) ||
      (http_ != nullptr && !http_->WaitForCalls(deadline - absl::Now()))) {
    spdlog::warn("calls still in flight after {}s: cancelling them", absl::ToDoubleSeconds(grace));
  }
  if (http_ != nullptr) http_->Shutdown();
  server_->Shutdown(std::chrono::system_clock::now());
  server_->Wait();
}

}  // namespace kvserve::server
