#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <regex>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "tests/server/grpc/server_process.h"
#include "tools/client_util.h"

namespace kvserve::server::testing {
namespace {

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

std::vector<char*> CArgs(const std::vector<std::string>& args) {
  std::vector<char*> out;
  for (const std::string& a : args) out.push_back(const_cast<char*>(a.c_str()));
  out.push_back(nullptr);
  return out;
}

// Waits for `pid` up to `timeout`; kills it after. Returns the exit code or -1.
int WaitPid(pid_t pid, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  int status = 0;
  for (;;) {
    const pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid) break;
    if (r < 0) return -1;
    if (absl::Now() >= deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      return -1;
    }
    absl::SleepFor(absl::Milliseconds(5));
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

}  // namespace

std::string KvserveBinary() { return KVSERVE_BINARY; }
std::string ModelPath() { return std::string(KVSERVE_MODELS_DIR) + "/stories260K.gguf"; }
std::string SourceDir() { return KVSERVE_SOURCE_DIR; }

ScratchDir::ScratchDir() {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  std::string name = "kvserve_grpc_";
  if (info != nullptr) absl::StrAppend(&name, info->test_suite_name(), "_", info->name(), "_");
  absl::StrAppend(&name, getpid(), "_", reinterpret_cast<uintptr_t>(this));
  for (char& c : name) {
    if (c == '/') c = '_';
  }
  path_ = (std::filesystem::path(::testing::TempDir()) / name).string();
  std::filesystem::remove_all(path_);
  std::filesystem::create_directories(path_);
}

ScratchDir::~ScratchDir() {
  std::error_code ignored;
  std::filesystem::remove_all(path_, ignored);
}

std::string ScratchDir::Write(const std::string& name, const std::string& contents) const {
  const std::string path = path_ + "/" + name;
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << contents;
  return path;
}

ProcessResult RunProcess(const std::vector<std::string>& argv, absl::Duration timeout,
                         const std::vector<std::string>& extra_env) {
  ScratchDir dir;
  const std::string out_path = dir.path() + "/stdout";
  const std::string err_path = dir.path() + "/stderr";
  const int out_fd = open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  const int err_fd = open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  const int null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  std::vector<char*> args = CArgs(argv);
  std::vector<std::string> env_strings;
  for (char** e = environ; *e != nullptr; ++e) env_strings.emplace_back(*e);
  for (const std::string& e : extra_env) env_strings.push_back(e);
  std::vector<char*> env = CArgs(env_strings);
  ProcessResult result;
  const pid_t pid = fork();
  if (pid == 0) {
    dup2(null_fd, 0);
    dup2(out_fd, 1);
    dup2(err_fd, 2);
    execve(args[0], args.data(), env.data());
    _exit(127);
  }
  close(out_fd);
  close(err_fd);
  close(null_fd);
  if (pid < 0) return result;
  result.exit_code = WaitPid(pid, timeout);
  result.out = ReadFile(out_path);
  result.err = ReadFile(err_path);
  return result;
}

std::string OfflineGreedy(const std::string& prompt, int max_tokens) {
  ProcessResult r = RunProcess({KvserveBinary(), "generate", "--model", ModelPath(), "--prompt",
                                prompt, "--max-tokens", std::to_string(max_tokens), "--temperature",
                                "0", "--kv-format", "fp32", "--threads", "1"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  return r.out;
}

ServerProcess::~ServerProcess() {
  if (pid_ > 0) {
    kill(pid_, SIGKILL);
    Reap();
  }
  if (reader_.joinable()) reader_.join();
}

bool ServerProcess::Spawn(const std::vector<std::string>& argv) {
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) return false;
  const int null_fd = open("/dev/null", O_RDWR | O_CLOEXEC);
  std::vector<char*> args = CArgs(argv);
  const pid_t pid = fork();
  if (pid == 0) {
    dup2(null_fd, 0);
    dup2(null_fd, 1);
    dup2(fds[1], 2);
    execv(args[0], args.data());
    _exit(127);
  }
  close(fds[1]);
  close(null_fd);
  if (pid < 0) {
    close(fds[0]);
    return false;
  }
  pid_ = pid;
  {
    absl::MutexLock lock(&mu_);
    stderr_.clear();
    stderr_closed_ = false;
  }
  const int read_fd = fds[0];
  reader_ = std::thread([this, read_fd] {
    char buf[4096];
    for (;;) {
      const ssize_t n = read(read_fd, buf, sizeof(buf));
      if (n <= 0) break;
      absl::MutexLock lock(&mu_);
      stderr_.append(buf, static_cast<size_t>(n));
    }
    close(read_fd);
    absl::MutexLock lock(&mu_);
    stderr_closed_ = true;
  });
  return true;
}

void ServerProcess::Reap() {
  int status = 0;
  if (pid_ > 0 && waitpid(pid_, &status, 0) == pid_) {
    exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }
  pid_ = -1;
}

::testing::AssertionResult ServerProcess::Start(const std::vector<std::string>& sets) {
  const std::string config = dir_.Write("server.yaml", absl::StrCat("model:\n  path: ", ModelPath(),
                                                                    "\n"
                                                                    "server:\n"
                                                                    "  address: 127.0.0.1:0\n"
                                                                    "  drain_timeout_seconds: 10\n"
                                                                    "kv_cache:\n"
                                                                    "  format: fp32\n"
                                                                    "  budget_mb: 64\n"
                                                                    "engine:\n"
                                                                    "  threads: 1\n"
                                                                    "metrics:\n"
                                                                    "  address: \"\"\n"
                                                                    "http:\n"
                                                                    "  address: 127.0.0.1:0\n"
                                                                    "logging:\n"
                                                                    "  level: info\n"));
  std::vector<std::string> argv = {KvserveBinary(), "serve", "--config", config};
  for (const std::string& s : sets) {
    argv.push_back("--set");
    argv.push_back(s);
  }
  if (!Spawn(argv)) return ::testing::AssertionFailure() << "cannot start " << argv[0];
  const std::regex listening(R"(listening on ([0-9.]+):([0-9]+))");
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  for (;;) {
    std::smatch m;
    const std::string err = Stderr();
    if (std::regex_search(err, m, listening)) {
      port_ = std::stoi(m[2].str());
      address_ = absl::StrCat(m[1].str(), ":", port_);
      std::smatch h;
      if (std::regex_search(err, h, std::regex(R"(HTTP API on https?://[0-9.]+:([0-9]+))"))) {
        http_port_ = std::stoi(h[1].str());
      }
      return ::testing::AssertionSuccess();
    }
    bool closed;
    {
      absl::MutexLock lock(&mu_);
      closed = stderr_closed_;
    }
    if (closed || absl::Now() >= deadline) {
      if (!closed) kill(pid_, SIGKILL);
      Reap();
      return ::testing::AssertionFailure()
             << "kvserve serve did not start (exit " << exit_code_ << "):\n"
             << err;
    }
    absl::SleepFor(absl::Milliseconds(5));
  }
}

std::shared_ptr<grpc::Channel> ServerProcess::Channel(
    std::shared_ptr<grpc::ChannelCredentials> credentials,
    const grpc::ChannelArguments& arguments) const {
  if (credentials == nullptr) credentials = grpc::InsecureChannelCredentials();
  return grpc::CreateCustomChannel(address_, credentials, arguments);
}

std::unique_ptr<v1::Generation::Stub> ServerProcess::Stub() const {
  return v1::Generation::NewStub(Channel());
}

int ServerProcess::SignalAndWait(int sig, absl::Duration timeout) {
  if (pid_ <= 0) return exit_code_;
  kill(pid_, sig);
  const int code = WaitPid(pid_, timeout);
  pid_ = -1;
  exit_code_ = code;
  if (reader_.joinable()) reader_.join();
  return code;
}

std::string ServerProcess::Stderr() const {
  absl::MutexLock lock(&mu_);
  return stderr_;
}

bool ServerProcess::WaitForStderr(const std::string& needle, absl::Duration timeout) const {
  absl::MutexLock lock(&mu_);
  auto found = [this, &needle]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
    return stderr_.find(needle) != std::string::npos || stderr_closed_;
  };
  mu_.AwaitWithTimeout(absl::Condition(&found), timeout);
  return stderr_.find(needle) != std::string::npos;
}

TcpProxy::TcpProxy(int upstream_port) : upstream_port_(upstream_port) {
  listen_fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  listen(listen_fd_, 16);
  socklen_t len = sizeof(addr);
  getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len);
  port_ = ntohs(addr.sin_port);
  pipe2(wake_pipe_, O_CLOEXEC);
  thread_ = std::thread([this] { Run(); });
}

TcpProxy::~TcpProxy() {
  Cut();
  if (thread_.joinable()) thread_.join();
  close(wake_pipe_[0]);
  close(wake_pipe_[1]);
}

std::string TcpProxy::address() const { return absl::StrCat("127.0.0.1:", port_); }

void TcpProxy::Cut() {
  const char c = 'x';
  (void)!write(wake_pipe_[1], &c, 1);
}

void TcpProxy::Run() {
  struct Pair {
    int client;
    int server;
  };
  std::vector<Pair> pairs;
  auto close_all = [&] {
    for (const Pair& p : pairs) {
      // RST rather than FIN: the peer sees the connection vanish.
      linger l{1, 0};
      setsockopt(p.client, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
      setsockopt(p.server, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
      close(p.client);
      close(p.server);
    }
    pairs.clear();
    close(listen_fd_);
  };
  for (;;) {
    std::vector<pollfd> fds = {{wake_pipe_[0], POLLIN, 0}, {listen_fd_, POLLIN, 0}};
    for (const Pair& p : pairs) {
      fds.push_back({p.client, POLLIN, 0});
      fds.push_back({p.server, POLLIN, 0});
    }
    if (poll(fds.data(), fds.size(), -1) < 0) continue;
    if (fds[0].revents != 0) {
      close_all();
      return;
    }
    const size_t polled = pairs.size();  // a pair accepted below has no pollfd this round
    if (fds[1].revents & POLLIN) {
      const int client = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      const int server = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
      sockaddr_in addr{};
      addr.sin_family = AF_INET;
      addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      addr.sin_port = htons(static_cast<uint16_t>(upstream_port_));
      if (client >= 0 && connect(server, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
        pairs.push_back({client, server});
      } else {
        if (client >= 0) close(client);
        close(server);
      }
    }
    std::vector<Pair> alive;
    for (size_t i = 0; i < pairs.size(); ++i) {
      if (i >= polled) {
        alive.push_back(pairs[i]);
        continue;
      }
      bool open = true;
      for (int side = 0; side < 2 && open; ++side) {
        const pollfd& f = fds[2 + 2 * i + side];
        if (f.revents == 0) continue;
        const int from = side == 0 ? pairs[i].client : pairs[i].server;
        const int to = side == 0 ? pairs[i].server : pairs[i].client;
        char buf[16384];
        const ssize_t n = read(from, buf, sizeof(buf));
        if (n <= 0) {
          open = false;
          break;
        }
        for (ssize_t done = 0; done < n;) {
          const ssize_t w = write(to, buf + done, static_cast<size_t>(n - done));
          if (w <= 0) break;
          done += w;
        }
      }
      if (open) {
        alive.push_back(pairs[i]);
      } else {
        close(pairs[i].client);
        close(pairs[i].server);
      }
    }
    pairs = std::move(alive);
  }
}

grpc::ChannelArguments SlowReaderArguments() {
  grpc::ChannelArguments args;
  args.SetInt("grpc.http2.lookahead_bytes", 1024);
  args.SetInt("grpc.http2.bdp_probe", 0);
  return args;
}

v1::GenerateRequest TokenPrompt(int n, int first, int max_tokens) {
  v1::GenerateRequest request;
  auto* ids = request.mutable_token_ids()->mutable_ids();
  ids->Add(1);  // BOS
  for (int i = 1; i < n; ++i) ids->Add(3 + (first + i * 7) % 500);
  request.set_max_tokens(max_tokens);
  request.set_ignore_eos(true);
  request.mutable_sampling()->set_temperature(0);
  return request;
}

v1::GenerateRequest GreedyRequest(const std::string& text, int max_tokens) {
  v1::GenerateRequest request;
  request.set_text(text);
  request.set_max_tokens(max_tokens);
  request.mutable_sampling()->set_temperature(0);
  return request;
}

StreamResult ReadStream(v1::Generation::Stub& stub, const v1::GenerateRequest& request,
                        absl::Duration timeout) {
  StreamResult result;
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::milliseconds(absl::ToInt64Milliseconds(timeout)));
  auto reader = stub.Generate(&context, request);
  v1::GenerateResponse message;
  while (reader->Read(&message)) {
    ++result.messages;
    result.text += message.text();
    result.token_ids.insert(result.token_ids.end(), message.token_ids().begin(),
                            message.token_ids().end());
    result.last = message;
  }
  result.status = reader->Finish();
  return result;
}

std::string HealthStatus(const std::shared_ptr<grpc::Channel>& channel) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  auto status = tools::CheckHealth(channel, &context, "");
  if (!status.ok()) return absl::StatusCodeToString(status.status().code());
  return *status;
}

}  // namespace kvserve::server::testing
