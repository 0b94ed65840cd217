// `kvserve serve`: runs the gRPC server on a YAML config until SIGTERM or SIGINT.
//
// Shutdown: the first SIGTERM/SIGINT turns health to NOT_SERVING and refuses new calls
// (UNAVAILABLE), stops the engine from admitting requests, and waits up to
// server.drain_timeout_seconds for the running ones to finish; whatever is left then ends with
// UNAVAILABLE (at once on a second signal). The server is then stopped and the process exits 0.
// SIGHUP reloads the config file (with the same --set overrides); see config_reload.h for what a
// reload applies and how a bad file is reported (the running config stays).
// Signals are taken by a sigwait thread (blocked everywhere else), so no work runs in a handler.
#include <pthread.h>
#include <signal.h>

#include <atomic>
#include <cstdio>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_join.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "engine/runtime/engine.h"
#include "google/protobuf/stubs/logging.h"
#include "kernels/kv_format.h"
#include "server/config/config_reload.h"
#include "server/config/file_change_poller.h"
#include "server/config/server_config.h"
#include "server/grpc/chat_setup.h"
#include "server/grpc/grpc_server.h"
#include "server/grpc/liveness_watchdog.h"
#include "spdlog/spdlog.h"
#include "tools/commands.h"
#include "tools/flags.h"

namespace kvserve::tools {

using server::ChatSetup;
using server::CheckServerFiles;
using server::ConfigChanges;
using server::FileChangePoller;
using server::GrpcServer;
using server::kLivenessService;
using server::LivenessSample;
using server::LivenessWatchdog;
using server::LoadChatTemplate;
using server::LoadServerConfig;
using server::LocateConfigError;
using server::ServerConfig;

namespace {

// SIGUSR2 only tells the watcher thread to exit.
sigset_t WatchedSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGHUP);
  sigaddset(&set, SIGUSR2);
  return set;
}

class SignalWatcher {
 public:
  // REQUIRES: called before any other thread is started, so that every thread inherits the mask.
  SignalWatcher() {
    sigset_t set = WatchedSignals();
    pthread_sigmask(SIG_BLOCK, &set, nullptr);
    thread_ = std::thread([this] { Run(); });
  }
  ~SignalWatcher() {
    pthread_kill(thread_.native_handle(), SIGUSR2);
    thread_.join();
  }
  absl::Notification& drain() { return drain_; }
  absl::Notification& force() { return force_; }
  // True once per SIGHUP received since the last call.
  bool TakeReload() { return reloads_.exchange(0) > 0; }

 private:
  void Run() {
    const sigset_t set = WatchedSignals();
    for (;;) {
      int sig = 0;
      if (sigwait(&set, &sig) != 0 || sig == SIGUSR2) return;
      if (sig == SIGHUP) {
        reloads_.fetch_add(1);
        continue;
      }
      if (!drain_.HasBeenNotified()) {
        spdlog::info("received {}: shutting down", sig == SIGTERM ? "SIGTERM" : "SIGINT");
        drain_.Notify();
      } else if (!force_.HasBeenNotified()) {
        spdlog::warn("received a second signal: ending the remaining requests now");
        force_.Notify();
      }
    }
  }

  absl::Notification drain_;
  absl::Notification force_;
  std::atomic<int> reloads_{0};
  std::thread thread_;
};

// Reloads the config on SIGHUP (see config_reload.h). `running` is updated with what was applied.
void Reload(const std::string& path, const std::vector<std::string>& overrides, GrpcServer& server,
            ServerConfig& running) {
  spdlog::info("received SIGHUP: reloading {}", path);
  auto loaded = LoadServerConfig(path, overrides);
  if (!loaded.ok()) {
    spdlog::error("config reload failed, keeping the running config: {}",
                  std::string(loaded.status().message()));
    return;
  }
  const ConfigChanges changes = DiffServerConfigs(running, *loaded);
  if (server.api_keys_required()) {
    if (absl::Status s = server.ReloadApiKeys(loaded->api_keys_file); !s.ok()) {
      spdlog::error("config reload failed, keeping the running config: {}: {}", path,
                    std::string(s.message()));
      return;
    }
  }
  running.api_keys_file = loaded->api_keys_file;
  running.log_level = loaded->log_level;
  spdlog::set_level(spdlog::level::from_str(running.log_level));
  if (!changes.not_reloadable.empty()) {
    spdlog::warn("config reload: not applied (restart to apply): {}",
                 absl::StrJoin(changes.not_reloadable, ", "));
  }
  spdlog::info("config reloaded: {}", changes.reloadable.empty()
                                          ? std::string("no reloadable key changed")
                                          : "applied " + absl::StrJoin(changes.reloadable, ", "));
}

// Protobuf's own log lines (a request that does not parse) are client errors, already answered.
void RouteProtobufLogs() {
  google::protobuf::SetLogHandler(
      [](google::protobuf::LogLevel level, const char* file, int line, const std::string& message) {
        if (level >= google::protobuf::LOGLEVEL_FATAL) {
          spdlog::critical("protobuf: {}", message);
        } else {
          spdlog::debug("protobuf: {}", message);
        }
      });
}

int Drain(GrpcServer& server, engine::Engine& engine, SignalWatcher& signals, double timeout_s) {
  server.BeginDrain();
  engine.BeginShutdown();
  spdlog::info("draining: new calls are refused; waiting up to {}s for running requests",
               timeout_s);
  const absl::Time deadline = absl::Now() + absl::Seconds(timeout_s);
  bool idle = false;
  while (!(idle = engine.WaitIdle(absl::Milliseconds(100)))) {
    if (signals.force().HasBeenNotified() || absl::Now() >= deadline) break;
  }
  if (!idle) {
    spdlog::warn("drain timeout: ending the remaining requests with UNAVAILABLE");
    engine.AbortAll(absl::UnavailableError("the server is shutting down"));
  }
  // Streams still flushing their last messages get a few seconds, then are cancelled.
  server.Shutdown(absl::Seconds(5));
  spdlog::info("stopped");
  return 0;
}

}  // namespace

int RunServeCommand(const std::vector<std::string>& args) {
  FlagSet flags("serve");
  flags.String("config", "", "YAML configuration file (see configs/server.yaml)");
  flags.Repeated("set", "override a config key, e.g. --set kv_cache.format=fp16 (repeatable)");
  flags.Bool("check", "validate the config and load the model, then exit");
  flags.Required("config");
  if (absl::Status s = flags.Parse(args); !s.ok()) {
    std::fprintf(stderr, "kvserve serve: %s\n\n%s", std::string(s.message()).c_str(),
                 flags.Usage().c_str());
    return 2;
  }
  if (flags.help_requested()) {
    std::fputs(flags.Usage().c_str(), stdout);
    return 0;
  }
  auto config = LoadServerConfig(flags.GetString("config"), flags.GetRepeated("set"));
  if (!config.ok()) {
    std::fprintf(stderr, "kvserve serve: %s\n", std::string(config.status().message()).c_str());
    return 2;
  }
  spdlog::set_level(spdlog::level::from_str(config->log_level));
  RouteProtobufLogs();
  if (absl::Status s = CheckServerFiles(*config); !s.ok()) {
    std::fprintf(stderr, "kvserve serve: %s: %s\n", config->source.c_str(),
                 std::string(s.message()).c_str());
    return 2;
  }

  std::unique_ptr<SignalWatcher> signals;
  if (!flags.GetBool("check")) signals = std::make_unique<SignalWatcher>();

  auto engine = engine::Engine::Create(config->engine);
  if (!engine.ok()) {
    // A config key that only the loaded model can check is a config error, placed like one.
    if (std::optional<std::string> located = LocateConfigError(*config, engine.status())) {
      std::fprintf(stderr, "kvserve serve: %s\n", located->c_str());
      return 2;
    }
    spdlog::error("{}", std::string(engine.status().message()));
    return 1;
  }
  const engine::ModelConfig& model = (*engine)->config();
  spdlog::info(
      "model {}: {} layers, dim {}, vocab {}, context {}; KV {} in blocks of {}, "
      "budget {:.2f} MiB",
      model.name, model.num_layers, model.dim, model.vocab_size, model.context_length,
      std::string(kernels::KvFormatName(config->engine.model.kv_format)),
      config->engine.model.block_size,
      static_cast<double>(config->engine.model.kv_budget_bytes) / (1 << 20));
  // A chat template that cannot be read or parsed is a config error (model.chat_template).
  if (absl::StatusOr<ChatSetup> chat =
          LoadChatTemplate(config->chat_template_path, config->model_path);
      !chat.ok()) {
    std::fprintf(stderr, "kvserve serve: %s\n", std::string(chat.status().message()).c_str());
    return 2;
  }
  if (flags.GetBool("check")) {
    std::printf("%s: OK\n", config->source.c_str());
    return 0;
  }

  auto server = GrpcServer::Start(*config, engine->get());
  if (!server.ok()) {
    spdlog::error("{}", std::string(server.status().message()));
    return 1;
  }
  spdlog::info("listening on {} ({}{})", (*server)->bound_address(),
               (*server)->tls() ? "TLS" : "plaintext",
               (*server)->api_keys_required() ? ", API keys required" : "");
  // Liveness (liveness_watchdog.h): the engine loop's progress, reported as kvserve.liveness.
  auto watchdog = std::make_unique<LivenessWatchdog>(
      [e = engine->get()] {
        const engine::EngineStats s = e->Stats();
        return LivenessSample{s.steps, s.step_time, s.running_requests + s.waiting_requests};
      },
      [srv = server->get()](bool live) { srv->SetHealthStatus(kLivenessService, live); },
      absl::Seconds(config->liveness_stall_seconds), absl::Milliseconds(500));
  // Key rotation without SIGHUP: the keys file is read again when its content changes.
  FileChangePoller keys_poller((*server)->api_keys_required() ? config->api_keys_file : "");
  const absl::Duration keys_poll = absl::Seconds(config->api_keys_poll_seconds);
  absl::Time next_keys_poll = absl::Now() + keys_poll;
  while (!signals->drain().WaitForNotificationWithTimeout(absl::Milliseconds(100))) {
    if (signals->TakeReload()) {
      Reload(flags.GetString("config"), flags.GetRepeated("set"), **server, *config);
      if ((*server)->api_keys_required()) keys_poller.Reset(config->api_keys_file);
    }
    if (keys_poll > absl::ZeroDuration() && absl::Now() >= next_keys_poll) {
      next_keys_poll = absl::Now() + keys_poll;
      if (keys_poller.Changed()) {
        spdlog::info("{} changed: reloading the API keys", keys_poller.path());
        if (absl::Status s = (*server)->ReloadApiKeys(keys_poller.path()); !s.ok()) {
          spdlog::error("API keys not reloaded, keeping the old ones: {}",
                        std::string(s.message()));
        }
      }
    }
  }
  const int code = Drain(**server, **engine, *signals, config->drain_timeout_seconds);
  watchdog.reset();
  server->reset();
  engine->reset();
  return code;
}

}  // namespace kvserve::tools
