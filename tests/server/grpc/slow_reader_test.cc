// Clients that stop reading without closing their connection (a SIGSTOPped process, a hung host):
// the server's keepalive ping goes unanswered, the connection is closed, and the request ends and
// frees its KV blocks. The client runs in its own process (Debian's /usr/bin/python3 with
// python3-grpcio, sending the serialized request as raw bytes), so that it can be stopped.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kvserve/v1/memory.grpc.pb.h"
#include "tests/server/grpc/server_process.h"

namespace kvserve::server::testing {
namespace {

// Streams Generate(bytes.fromhex(argv[2])) from argv[1], prints "started" once the first message
// has arrived, and reads on. A small HTTP/2 window with no growth, as a slow client would have.
constexpr char kStreamingClient[] = R"(
import sys, grpc
channel = grpc.insecure_channel(
    sys.argv[1], options=[("grpc.http2.lookahead_bytes", 1024), ("grpc.http2.bdp_probe", 0)])
call = channel.unary_stream("/kvserve.v1.Generation/Generate")(bytes.fromhex(sys.argv[2]))
for i, _ in enumerate(call):
    if i == 0:
        print("started", flush=True)
)";

// A child process whose stdout is read line by line; SIGKILLed and reaped when destroyed.
class ClientProcess {
 public:
  explicit ClientProcess(const std::vector<std::string>& argv) {
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) return;
    std::vector<char*> args;
    for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    pid_ = fork();
    if (pid_ == 0) {
      dup2(fds[1], 1);
      execv(args[0], args.data());
      _exit(127);
    }
    close(fds[1]);
    out_fd_ = fds[0];
  }
  ~ClientProcess() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    if (out_fd_ >= 0) close(out_fd_);
  }
  pid_t pid() const { return pid_; }

  // True once the child has printed `line` (within `timeout`).
  bool WaitForLine(const std::string& line, absl::Duration timeout) {
    const absl::Time deadline = absl::Now() + timeout;
    while (out_.find(line + "\n") == std::string::npos) {
      const absl::Duration left = deadline - absl::Now();
      if (left <= absl::ZeroDuration()) return false;
      pollfd p{out_fd_, POLLIN, 0};
      if (poll(&p, 1, static_cast<int>(absl::ToInt64Milliseconds(left)) + 1) <= 0) continue;
      char buffer[256];
      const ssize_t n = read(out_fd_, buffer, sizeof(buffer));
      if (n <= 0) return false;
      out_.append(buffer, static_cast<size_t>(n));
    }
    return true;
  }

 private:
  pid_t pid_ = -1;
  int out_fd_ = -1;
  std::string out_;
};

bool PythonGrpcAvailable() {
  return RunProcess({"/usr/bin/python3", "-c", "import grpc"}).exit_code == 0;
}

v1::MemoryStats Stats(const ServerProcess& server) {
  auto stub = v1::Memory::NewStub(server.Channel());
  grpc::ClientContext context;
  v1::MemoryStats stats;
  EXPECT_TRUE(stub->GetStats(&context, v1::GetStatsRequest(), &stats).ok());
  return stats;
}

// Waits until no request runs or waits and no KV block is active.
bool WaitUntilIdle(const ServerProcess& server, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    const v1::MemoryStats stats = Stats(server);
    if (stats.running_requests() == 0 && stats.waiting_requests() == 0 &&
        stats.active_bytes() == 0) {
      return true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return false;
}

// Keepalive 1 s, timeout 1 s. Without keepalive the stopped client's request stays paused in the
// engine with its KV held for as long as the connection stays open (the kernel keeps
// acknowledging the client's TCP segments), i.e. until the process is resumed or killed.
TEST(SlowReaderTest, StoppedClientIsDisconnectedByKeepaliveAndItsRequestEnded) {
  if (!PythonGrpcAvailable()) {
    GTEST_SKIP() << "/usr/bin/python3 lacks grpc (apt-get install python3-grpcio)";
  }
  ServerProcess server;
  ASSERT_TRUE(server.Start({"server.keepalive_seconds=1", "server.keepalive_timeout_seconds=1",
                            "scheduler.stream_buffer_tokens=16"}));
  v1::ModelInfo info;
  {
    grpc::ClientContext context;
    ASSERT_TRUE(server.Stub()->GetModelInfo(&context, v1::GetModelInfoRequest(), &info).ok());
  }
  // Far more tokens than the client's window and the stream buffer hold: the request pauses.
  v1::GenerateRequest request = TokenPrompt(8, 0, info.context_length() - 16);
  request.set_ignore_eos(true);
  request.mutable_sampling()->set_temperature(0);
  ClientProcess client({"/usr/bin/python3", "-c", kStreamingClient, server.address(),
                        absl::BytesToHexString(request.SerializeAsString())});
  ASSERT_GT(client.pid(), 0);
  ASSERT_TRUE(client.WaitForLine("started", absl::Seconds(60)));
  ASSERT_EQ(kill(client.pid(), SIGSTOP), 0);
  const absl::Time stopped = absl::Now();
  const v1::MemoryStats during = Stats(server);
  EXPECT_EQ(during.running_requests() + during.waiting_requests(), 1);
  EXPECT_GT(during.active_bytes(), 0);

  // Keepalive time + timeout is 2 s; the rest is slack for a loaded machine.
  EXPECT_TRUE(WaitUntilIdle(server, absl::Seconds(12)))
      << "the stopped client's request still holds KV after "
      << absl::FormatDuration(absl::Now() - stopped);
  const v1::MemoryStats after = Stats(server);
  EXPECT_EQ(after.requests_cancelled(), 1);
  EXPECT_EQ(after.requests_finished(), 0);
  std::printf("request ended %s after SIGSTOP\n",
              absl::FormatDuration(absl::Now() - stopped).c_str());
  EXPECT_TRUE(server.running());
}

}  // namespace
}  // namespace kvserve::server::testing
