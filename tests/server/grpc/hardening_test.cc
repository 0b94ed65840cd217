// Abuse cases against the real server: listeners reachable from the network without keys, prompts
// and Tokenize calls far over the limits, client text that tries to forge log lines, an IPv6
// metrics address, and connections that never handshake or sit idle.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kvserve/v1/generation.grpc.pb.h"
#include "tests/server/grpc/server_process.h"

namespace kvserve::server::testing {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::Not;

// `kvserve serve` on a minimal config plus `sets`, run to its exit (for configs that must fail).
ProcessResult ServeExpectingExit(const std::vector<std::string>& sets) {
  ScratchDir dir;
  const std::string config = dir.Write(
      "server.yaml", absl::StrCat("model:\n  path: ", ModelPath(),
                                  "\nmetrics:\n  address: \"\"\nhttp:\n  address: \"\"\n"));
  std::vector<std::string> argv = {KvserveBinary(), "serve", "--config", config};
  for (const std::string& s : sets) {
    argv.push_back("--set");
    argv.push_back(s);
  }
  return RunProcess(argv, absl::Seconds(30));
}

int64_t RssKiB(pid_t pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stoll(line.substr(6));
  }
  return -1;
}

// ---- Item: a non-loopback listener needs keys or an explicit opt-out ------------------------

TEST(HardeningTest, EveryInterfaceWithoutKeysIsAConfigError) {
  const ProcessResult result = ServeExpectingExit({"server.address=0.0.0.0:0"});
  EXPECT_EQ(result.exit_code, 2) << result.err;
  EXPECT_THAT(result.err,
              AllOf(HasSubstr("--set server.address=0.0.0.0:0"), HasSubstr("server.api_keys_file"),
                    HasSubstr("server.allow_unauthenticated")));
  EXPECT_THAT(result.err, Not(HasSubstr("listening on")));
}

TEST(HardeningTest, AllowUnauthenticatedStartsWithAWarning) {
  ServerProcess server;
  ASSERT_TRUE(server.Start({"server.address=0.0.0.0:0", "server.allow_unauthenticated=true"}));
  EXPECT_THAT(server.Stderr(), HasSubstr("no API keys are required"));
  EXPECT_THAT(server.Stderr(), HasSubstr("[warning]"));
  auto stub = v1::Generation::NewStub(grpc::CreateChannel(absl::StrCat("127.0.0.1:", server.port()),
                                                          grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  v1::ModelInfo info;
  EXPECT_TRUE(stub->GetModelInfo(&context, v1::GetModelInfoRequest(), &info).ok());
}

TEST(HardeningTest, KeysOverPlaintextOnEveryInterfaceAreWarnedAbout) {
  ServerProcess server;
  const std::string keys = server.dir().Write("keys", "secret-key\n");
  ASSERT_TRUE(server.Start({"server.address=0.0.0.0:0", "server.api_keys_file=" + keys}));
  EXPECT_THAT(server.Stderr(), HasSubstr("API keys travel in plaintext"));
}

// ---- Item: client text is escaped in errors and in the log -----------------------------------

TEST(HardeningTest, ClientTextCannotForgeLogLinesOrSendEscapes) {
  ServerProcess server;
  ASSERT_TRUE(server.Start());
  auto stub = server.Stub();
  v1::GenerateRequest request = GreedyRequest("Once upon a time", 4);
  request.mutable_token_eviction()->set_policy("x\n[fake] admin logged in\x1b[2J\x1b]0;t\x07");
  grpc::ClientContext context;
  v1::CompleteResponse response;
  const grpc::Status status = stub->Complete(&context, request, &response);
  ASSERT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << status.error_message();
  const std::string escaped = "x\\n[fake] admin logged in\\x1b[2J\\x1b]0;t\\x07";
  EXPECT_THAT(status.error_message(), HasSubstr(escaped));
  EXPECT_EQ(status.error_message().find_first_of("\n\x1b\x07"), std::string::npos)
      << status.error_message();
  ASSERT_TRUE(server.WaitForStderr("Complete rejected", absl::Seconds(10)));
  const std::string log = server.Stderr();
  EXPECT_THAT(log, HasSubstr(escaped));
  EXPECT_EQ(log.find("\n[fake]"), std::string::npos);
  EXPECT_EQ(log.find('\x1b'), std::string::npos);
}

// ---- Item: work bounded by the limits, not by the input --------------------------------------

TEST(HardeningTest, OversizedPromptsAndTokenizeCallsAreRefusedNamingTheLimit) {
  ServerProcess server;
  // A byte limit well inside the derived request-message limit (the model's own is 14,329).
  ASSERT_TRUE(server.Start({"limits.max_prompt_bytes=20000"}));
  auto stub = server.Stub();
  const std::string big(30000, 'a');
  {
    grpc::ClientContext context;
    v1::CompleteResponse response;
    const grpc::Status status = stub->Complete(&context, GreedyRequest(big, 4), &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(status.error_message(), AllOf(HasSubstr("text: the prompt has 30000 bytes"),
                                              HasSubstr("limits.max_prompt_bytes")));
  }
  {
    grpc::ClientContext context;
    v1::TokenizeRequest request;
    request.set_text(big);
    v1::TokenizeResponse response;
    const grpc::Status status = stub->Tokenize(&context, request, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(status.error_message(), HasSubstr("limits.max_prompt_bytes"));
  }
  {
    // Within the byte bound, but more tokens than a prompt may have: refused by the count.
    grpc::ClientContext context;
    v1::ModelInfo info;
    ASSERT_TRUE(stub->GetModelInfo(&context, v1::GetModelInfoRequest(), &info).ok());
    grpc::ClientContext call;
    v1::CompleteResponse response;
    std::string many;
    for (int i = 0; i < info.max_prompt_tokens() + 10; ++i) many += "\xC3\xA9 ";
    const grpc::Status status = stub->Complete(&call, GreedyRequest(many, 4), &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(status.error_message(),
                HasSubstr(absl::StrCat("at most ", info.max_prompt_tokens(), " are accepted")));
  }
}

// Request messages are bounded by what the limits let a request carry (server.max_request_bytes,
// derived by default), not by the 4 MiB response limit: gRPC refuses a larger one before any
// handler parses it.
TEST(HardeningTest, RequestMessagesAreBoundedByThePromptLimits) {
  ServerProcess server;
  ASSERT_TRUE(server.Start());
  auto stub = server.Stub();
  grpc::ClientContext info_context;
  v1::ModelInfo info;
  ASSERT_TRUE(stub->GetModelInfo(&info_context, v1::GetModelInfoRequest(), &info).ok());
  // stories260K: 2,047 prompt tokens x 7 bytes (its longest piece) = 14,329 text bytes, plus
  // 5 bytes for each of max(2,047, 2,048) ids, plus 16 KiB for the other fields.
  const int64_t limit = 14329 + 5 * 2048 + 16384;
  ASSERT_EQ(info.max_prompt_tokens(), 2047);
  ASSERT_EQ(info.max_tokens_limit(), 2048);
  EXPECT_THAT(server.Stderr(),
              HasSubstr(absl::StrCat("request messages: at most ", limit, " bytes")));
  for (const size_t bytes : {size_t{3} << 20, static_cast<size_t>(limit) + 1}) {
    SCOPED_TRACE(bytes);
    grpc::ClientContext context;
    v1::TokenizeRequest request;
    request.set_text(std::string(bytes, 'a'));
    v1::TokenizeResponse response;
    const grpc::Status status = stub->Tokenize(&context, request, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
    EXPECT_THAT(status.error_message(), HasSubstr("larger than max"));
  }
  {
    // Just inside the message limit: refused by the handler, naming the prompt byte limit.
    grpc::ClientContext context;
    v1::CompleteResponse response;
    const grpc::Status status = stub->Complete(
        &context, GreedyRequest(std::string(static_cast<size_t>(limit) - 100, 'a'), 4), &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(status.error_message(), HasSubstr("limits.max_prompt_bytes"));
  }
  {
    // The largest lists of ids a request may carry fit: a whole context to Detokenize (ids of
    // up to 3 varint bytes here), and a prompt of max_prompt_tokens ids with every other field
    // at its largest.
    grpc::ClientContext context;
    v1::DetokenizeRequest request;
    for (int i = 0; i < info.context_length(); ++i) request.add_token_ids(400 + i % 100);
    v1::DetokenizeResponse response;
    EXPECT_TRUE(stub->Detokenize(&context, request, &response).ok());
    grpc::ClientContext generate_context;
    v1::GenerateRequest generate = TokenPrompt(info.max_prompt_tokens(), 200, 1);
    generate.set_request_id(std::string(128, 'r'));
    generate.set_cache_salt(std::string(256, 's'));
    for (int i = 0; i < 16; ++i) generate.add_stop(std::string(256, 'a' + i));
    v1::CompleteResponse completion;
    const grpc::Status status = stub->Complete(&generate_context, generate, &completion);
    EXPECT_TRUE(status.ok()) << status.error_message();
  }
  {
    ServerProcess tight;
    ASSERT_TRUE(tight.Start({"server.max_request_bytes=2048"}));
    EXPECT_THAT(tight.Stderr(), HasSubstr("request messages: at most 2048 bytes"));
    grpc::ClientContext context;
    v1::CompleteResponse response;
    const grpc::Status status =
        tight.Stub()->Complete(&context, GreedyRequest(std::string(4096, 'a'), 4), &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  }
}

TEST(HardeningTest, TokenizeResponseIsSizedBeforeItIsBuilt) {
  ServerProcess server;
  ASSERT_TRUE(server.Start({"server.max_message_bytes=4096", "limits.max_prompt_bytes=4000"}));
  auto stub = server.Stub();
  // 1,500 bytes of text, about 1,500 tokens whose pieces ("<0xC3>" ...) make a larger answer.
  std::string text;
  while (text.size() < 1500) text += "\xC3\xA9";
  grpc::ClientContext context;
  v1::TokenizeRequest request;
  request.set_text(text);
  v1::TokenizeResponse response;
  const grpc::Status status = stub->Tokenize(&context, request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << status.error_message();
  EXPECT_THAT(status.error_message(), AllOf(HasSubstr("the response would be"),
                                            HasSubstr("server.max_message_bytes (4096)")));
  grpc::ClientContext small_context;
  request.set_text("Once upon a time");
  EXPECT_TRUE(stub->Tokenize(&small_context, request, &response).ok());
}

// A flood of ~4 MiB prompts and Tokenize calls from 8 clients: each is refused by the request
// message limit before any handler parses it, the server's memory stays bounded, and a small
// request is still served.
TEST(HardeningTest, FloodOfHugePromptsLeavesSmallRequestsServedAndMemoryBounded) {
  ServerProcess server;
  ASSERT_TRUE(server.Start());
  const std::string expected = OfflineGreedy("Once upon a time", 20);
  {
    auto stub = server.Stub();
    ASSERT_TRUE(ReadStream(*stub, GreedyRequest("Once upon a time", 20)).status.ok());
  }
  const int64_t rss_before = RssKiB(server.pid());
  ASSERT_GT(rss_before, 0);
  const std::string big((4 << 20) - 4096, 'a');
  std::atomic<bool> stop{false};
  std::atomic<int> refused{0};
  absl::Mutex other_mu;
  std::string other;  // the first status other than the size refusal
  std::vector<std::thread> flood;
  for (int c = 0; c < 8; ++c) {
    flood.emplace_back([&, c] {
      auto stub = v1::Generation::NewStub(server.Channel());
      while (!stop.load()) {
        grpc::ClientContext context;
        grpc::Status status;
        if (c % 2 == 0) {
          v1::CompleteResponse response;
          status = stub->Complete(&context, GreedyRequest(big, 4), &response);
        } else {
          v1::TokenizeRequest request;
          request.set_text(big);
          v1::TokenizeResponse response;
          status = stub->Tokenize(&context, request, &response);
        }
        if (status.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED &&
            status.error_message().find("larger than max") != std::string::npos) {
          refused.fetch_add(1);
        } else {
          absl::MutexLock lock(&other_mu);
          if (other.empty())
            other = absl::StrCat(status.error_code(), ": ", status.error_message());
        }
      }
    });
  }
  // Bounded: a server that stopped refusing would otherwise keep the test waiting.
  const absl::Time give_up = absl::Now() + absl::Seconds(120);
  while (refused.load() < 16 && absl::Now() < give_up) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_GE(refused.load(), 16) << "flood calls not refused by size; first other status: " << [&] {
    absl::MutexLock lock(&other_mu);
    return other;
  }();
  auto stub = server.Stub();
  const StreamResult small = ReadStream(*stub, GreedyRequest("Once upon a time", 20));
  const int64_t rss_during = RssKiB(server.pid());
  stop.store(true);
  for (std::thread& t : flood) t.join();
  ASSERT_TRUE(small.status.ok()) << small.status.error_message();
  EXPECT_EQ("Once upon a time" + small.text + "\n", expected);
  // Before the byte limit, each call tokenized its whole text: hundreds of MB; before the request
  // message limit, each was received and parsed whole: about 120 MB.
  // Under AddressSanitizer freed memory sits in its quarantine (256 MB by default), so resident
  // memory says nothing about what the server holds: the bound is checked in normal builds. Eight
  // 4 MiB messages in flight alone are 32 MiB; measured growth is 19-40 MiB, so the bound leaves
  // room for a loaded machine while still failing at the ~120 MB a whole-message parse cost.
  if (!kAddressSanitizer) {
    EXPECT_LT(rss_during - rss_before, 64 * 1024)
        << "RSS grew from " << rss_before << " KiB to " << rss_during << " KiB";
  }
  std::printf("RSS %lld KiB before the flood, %lld KiB during it\n",
              static_cast<long long>(rss_before), static_cast<long long>(rss_during));
}

// ---- Item: an IPv6 metrics address is refused at validation ----------------------------------

TEST(HardeningTest, Ipv6MetricsAddressIsAConfigError) {
  const ProcessResult result = ServeExpectingExit({"metrics.address=[::1]:0"});
  EXPECT_EQ(result.exit_code, 2) << result.err;
  EXPECT_THAT(result.err, AllOf(HasSubstr("metrics.address"), HasSubstr("IPv6")));
  EXPECT_THAT(result.err, Not(HasSubstr("null context")));
}

// ---- Item: connections that never handshake or sit idle are closed ---------------------------

// True when the peer closes `fd` (or resets it) within `timeout`; data read meanwhile is dropped.
bool ClosedWithin(int fd, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  char buffer[4096];
  while (absl::Now() < deadline) {
    pollfd p{fd, POLLIN, 0};
    const int ready =
        poll(&p, 1, static_cast<int>(absl::ToInt64Milliseconds(deadline - absl::Now())));
    if (ready <= 0) continue;
    const ssize_t n = recv(fd, buffer, sizeof(buffer), 0);
    if (n <= 0) return true;
  }
  return false;
}

int ConnectTcp(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

TEST(HardeningTest, SilentConnectionsAreClosedAfterTheHandshakeTimeout) {
  ServerProcess server;
  ASSERT_TRUE(server.Start({"server.handshake_timeout_seconds=0.5"}));
  std::vector<int> fds;
  for (int i = 0; i < 20; ++i) {
    const int fd = ConnectTcp(server.port());
    ASSERT_GE(fd, 0);
    fds.push_back(fd);
  }
  // gRPC's own default would keep them for 120 s.
  for (int fd : fds) {
    EXPECT_TRUE(ClosedWithin(fd, absl::Seconds(20)));
    close(fd);
  }
  EXPECT_TRUE(server.running());
}

TEST(HardeningTest, IdleConnectionsAreClosed) {
  ServerProcess server;
  ASSERT_TRUE(server.Start({"server.max_connection_idle_seconds=0.5"}));
  auto channel = server.Channel();
  auto stub = v1::Generation::NewStub(channel);
  grpc::ClientContext context;
  v1::ModelInfo info;
  ASSERT_TRUE(stub->GetModelInfo(&context, v1::GetModelInfoRequest(), &info).ok());
  ASSERT_EQ(channel->GetState(false), GRPC_CHANNEL_READY);
  // The server's GOAWAY takes the channel out of READY; without the bound it would stay there.
  const bool changed = channel->WaitForStateChange(
      GRPC_CHANNEL_READY, std::chrono::system_clock::now() + std::chrono::seconds(20));
  EXPECT_TRUE(changed);
  EXPECT_NE(channel->GetState(false), GRPC_CHANNEL_READY);
}

}  // namespace
}  // namespace kvserve::server::testing
