// Test helpers for the gRPC front end: runs the real `kvserve` binary as a child process.
//
// ServerProcess writes a config into a scratch directory, starts `kvserve serve` on 127.0.0.1:0
// (any free port), reads the chosen port from its stderr line "listening on 127.0.0.1:PORT", keeps
// collecting its stderr, and kills it when destroyed. RunProcess runs a command to completion
// (e.g. `kvserve generate` for the expected output).
#ifndef KVSERVE_TESTS_SERVER_GRPC_SERVER_PROCESS_H_
#define KVSERVE_TESTS_SERVER_GRPC_SERVER_PROCESS_H_

#include <sys/types.h>

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "kvserve/v1/generation.grpc.pb.h"

namespace kvserve::server::testing {

// Whether this build (and so the server binary built beside it) runs under AddressSanitizer.
#if defined(__SANITIZE_ADDRESS__)
constexpr bool kAddressSanitizer = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
constexpr bool kAddressSanitizer = true;
#else
constexpr bool kAddressSanitizer = false;
#endif
#else
constexpr bool kAddressSanitizer = false;
#endif

std::string KvserveBinary();
std::string ModelPath();  // stories260K.gguf
std::string SourceDir();

// A fresh directory for the running test, removed when destroyed.
class ScratchDir {
 public:
  ScratchDir();
  ~ScratchDir();
  const std::string& path() const { return path_; }
  // Writes `contents` to path()/name and returns the full path.
  std::string Write(const std::string& name, const std::string& contents) const;

 private:
  std::string path_;
};

struct ProcessResult {
  int exit_code = -1;  // -1: killed by a signal or timed out
  std::string out;
  std::string err;
};

// Runs argv[0] with the arguments, stdin from /dev/null. Kills it after `timeout`.
ProcessResult RunProcess(const std::vector<std::string>& argv,
                         absl::Duration timeout = absl::Seconds(60),
                         const std::vector<std::string>& extra_env = {});

// stdout of `kvserve generate --temperature 0` (fp32 KV): the prompt, the completion, "\n".
std::string OfflineGreedy(const std::string& prompt, int max_tokens);

class ServerProcess {
 public:
  ServerProcess() = default;
  ~ServerProcess();
  ServerProcess(const ServerProcess&) = delete;
  ServerProcess& operator=(const ServerProcess&) = delete;

  // Starts `kvserve serve` on the test config plus `sets` (each "key.path=value") and waits for
  // its listening line.
  ::testing::AssertionResult Start(const std::vector<std::string>& sets = {});

  const std::string& address() const { return address_; }
  int port() const { return port_; }
  // The OpenAI-compatible HTTP API's port (http.address is 127.0.0.1:0); 0 when it is off.
  int http_port() const { return http_port_; }
  pid_t pid() const { return pid_; }
  const ScratchDir& dir() const { return dir_; }

  std::shared_ptr<grpc::Channel> Channel(
      std::shared_ptr<grpc::ChannelCredentials> credentials = nullptr,
      const grpc::ChannelArguments& arguments = grpc::ChannelArguments()) const;
  std::unique_ptr<v1::Generation::Stub> Stub() const;

  // Sends `sig` and waits for the exit. Returns the exit code, or -1 when it died of a signal
  // or did not exit within `timeout` (it is then killed).
  int SignalAndWait(int sig, absl::Duration timeout);
  bool running() const { return pid_ > 0; }

  // Everything written to stderr so far.
  std::string Stderr() const;
  // Waits until stderr contains `needle`.
  bool WaitForStderr(const std::string& needle, absl::Duration timeout) const;

 private:
  bool Spawn(const std::vector<std::string>& argv);
  void Reap();

  ScratchDir dir_;
  pid_t pid_ = -1;
  int exit_code_ = -1;
  std::string address_;
  int port_ = 0;
  int http_port_ = 0;
  std::thread reader_;
  mutable absl::Mutex mu_;
  std::string stderr_ ABSL_GUARDED_BY(mu_);
  bool stderr_closed_ ABSL_GUARDED_BY(mu_) = false;
};

// A TCP relay between a client and the server: Cut() drops every connection at once, as a client
// that vanishes (crash, network loss) would, without the client's gRPC library saying goodbye.
class TcpProxy {
 public:
  explicit TcpProxy(int upstream_port);
  ~TcpProxy();
  TcpProxy(const TcpProxy&) = delete;
  TcpProxy& operator=(const TcpProxy&) = delete;
  std::string address() const;
  // Closes the listening socket and every relayed connection (both sides).
  void Cut();

 private:
  void Run();

  const int upstream_port_;
  int listen_fd_ = -1;
  int port_ = 0;
  int wake_pipe_[2] = {-1, -1};
  std::thread thread_;
};

// Channel arguments of a client that reads slowly: a small HTTP/2 window and no window growth,
// so that the server's writes block soon after the client stops reading.
grpc::ChannelArguments SlowReaderArguments();

// A prompt of `n` token ids (BOS, then ids cycling from `first`), valid for the 512-token
// vocabulary of stories260K.
v1::GenerateRequest TokenPrompt(int n, int first, int max_tokens);

// A GenerateRequest for `text`, greedy, `max_tokens`.
v1::GenerateRequest GreedyRequest(const std::string& text, int max_tokens);

// Reads a whole Generate stream: the concatenated text, token ids and the last message.
struct StreamResult {
  grpc::Status status;
  std::string text;
  std::vector<int32_t> token_ids;
  v1::GenerateResponse last;
  int messages = 0;
};
StreamResult ReadStream(v1::Generation::Stub& stub, const v1::GenerateRequest& request,
                        absl::Duration timeout = absl::Seconds(60));

// The gRPC health status of the server ("SERVING", ...), or the failed call's code name.
std::string HealthStatus(const std::shared_ptr<grpc::Channel>& channel);

}  // namespace kvserve::server::testing

#endif  // KVSERVE_TESTS_SERVER_GRPC_SERVER_PROCESS_H_
