// Faults under a running server: its model file truncated or rewritten, a kill -9 and a restart
// on the same port.
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/server/grpc/server_process.h"

namespace kvserve::server::testing {
namespace {

std::string GreedyText(const ServerProcess& server, const std::string& prompt, int max_tokens) {
  auto stub = server.Stub();
  grpc::ClientContext context;
  v1::CompleteResponse response;
  grpc::Status status = stub->Complete(&context, GreedyRequest(prompt, max_tokens), &response);
  EXPECT_TRUE(status.ok()) << status.error_message();
  return response.text();
}

// The model is read into private memory at load (MappedFile), so truncating or overwriting the
// file under the server neither faults it (SIGBUS) nor changes its weights.
TEST(GrpcFaultsTest, ModelFileTruncatedAndRewrittenUnderTheServerChangesNothing) {
  ScratchDir scratch;
  const std::string model = scratch.path() + "/model.gguf";
  std::filesystem::copy_file(ModelPath(), model);
  ServerProcess server;
  ASSERT_TRUE(server.Start({"model.path=" + model}));
  const std::string expected = OfflineGreedy("Once upon a time", 40);
  ASSERT_FALSE(expected.empty());
  EXPECT_EQ("Once upon a time" + GreedyText(server, "Once upon a time", 40) + "\n", expected);

  ASSERT_EQ(::truncate(model.c_str(), 4096), 0);
  EXPECT_EQ("Once upon a time" + GreedyText(server, "Once upon a time", 40) + "\n", expected);

  {
    std::ofstream out(model, std::ios::binary | std::ios::trunc);
    out << std::string(std::filesystem::file_size(ModelPath()), '\x7f');
  }
  EXPECT_EQ("Once upon a time" + GreedyText(server, "Once upon a time", 40) + "\n", expected);
  std::filesystem::remove(model);
  EXPECT_EQ("Once upon a time" + GreedyText(server, "Once upon a time", 40) + "\n", expected);
  EXPECT_EQ(HealthStatus(server.Channel()), "SERVING");
  EXPECT_EQ(server.SignalAndWait(SIGTERM, absl::Seconds(20)), 0) << server.Stderr();
}

// kill -9 in the middle of streaming leaves nothing behind (no socket, pid or lock file; the port
// is reusable at once), so a new server starts on the same port and serves.
TEST(GrpcFaultsTest, KillNineMidStreamThenRestartOnTheSamePort) {
  const std::string expected = OfflineGreedy("Lily and Tom went to the park. They", 30);
  int port = 0;
  for (int round = 0; round < 3; ++round) {
    ServerProcess server;
    ASSERT_TRUE(server.Start({port == 0 ? "server.address=127.0.0.1:0"
                                        : absl::StrCat("server.address=127.0.0.1:", port)}))
        << "round " << round << ": " << server.Stderr();
    if (port == 0) port = server.port();
    ASSERT_EQ(server.port(), port);
    EXPECT_EQ("Lily and Tom went to the park. They" +
                  GreedyText(server, "Lily and Tom went to the park. They", 30) + "\n",
              expected);
    // Streams in flight on open connections when the process dies.
    auto channel = server.Channel();
    auto stub = v1::Generation::NewStub(channel);
    grpc::ClientContext context;
    auto reader = stub->Generate(&context, TokenPrompt(200, 5, 400));
    v1::GenerateResponse first;
    ASSERT_TRUE(reader->Read(&first));
    EXPECT_EQ(server.SignalAndWait(SIGKILL, absl::Seconds(10)), -1);
    v1::GenerateResponse message;
    while (reader->Read(&message)) {
    }
    EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::UNAVAILABLE);
  }
}

grpc::Status CompleteWithKey(const ServerProcess& server, const std::string& key,
                             const std::string& prompt) {
  auto stub = server.Stub();
  grpc::ClientContext context;
  context.AddMetadata("authorization", "Bearer " + key);
  v1::CompleteResponse response;
  return stub->Complete(&context, GreedyRequest(prompt, 4), &response);
}

size_t Count(const std::string& text, const std::string& needle) {
  size_t n = 0;
  for (size_t at = text.find(needle); at != std::string::npos; at = text.find(needle, at + 1)) ++n;
  return n;
}

// Waits until `needle` occurs `n` times in the server's stderr.
bool WaitForCount(const ServerProcess& server, const std::string& needle, size_t n) {
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  while (absl::Now() < deadline) {
    if (Count(server.Stderr(), needle) >= n) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return false;
}

std::string ValidConfig(const std::string& extra) {
  return absl::StrCat(
      "model:\n  path: ", ModelPath(),
      "\nserver:\n  address: 127.0.0.1:0\n  drain_timeout_seconds: 10\nkv_cache:\n  format: fp32\n"
      "  budget_mb: 64\nengine:\n  threads: 1\nmetrics:\n  address: \"\"\n",
      extra);
}

// SIGHUP reloads the config: a broken file or an unreadable keys file keeps everything as it
// was and logs why; a good one rotates the API keys and the log level at once and names the keys
// that need a restart. Neither keys nor prompt text reach the log below debug level.
TEST(GrpcFaultsTest, SighupReloadKeepsTheOldConfigOnABadFileAndRotatesKeys) {
  ServerProcess server;
  const std::string keys = server.dir().Write("keys.txt", "key-one-abc\n");
  ASSERT_TRUE(server.Start({"server.api_keys_file=" + keys, "server.auth_on_loopback=true"}));
  const std::string config = server.dir().path() + "/server.yaml";
  const std::string kSecretPrompt = "Zq secret prompt text";
  ASSERT_TRUE(CompleteWithKey(server, "key-one-abc", kSecretPrompt).ok());

  // An unknown key: the reload fails naming it, file and line; the old config stays.
  server.dir().Write("server.yaml", ValidConfig("logging:\n  level: debug\nkv_cache2:\n  x: 1\n"));
  ASSERT_EQ(::kill(server.pid(), SIGHUP), 0);
  ASSERT_TRUE(WaitForCount(server, "config reload failed, keeping the running config", 1))
      << server.Stderr();
  EXPECT_NE(server.Stderr().find("unknown key 'kv_cache2"), std::string::npos) << server.Stderr();
  EXPECT_NE(server.Stderr().find("server.yaml:"), std::string::npos);
  ASSERT_TRUE(CompleteWithKey(server, "key-one-abc", kSecretPrompt).ok());

  // A keys file without keys: the reload fails as a whole, the old key still works and the log
  // level did not change to debug.
  server.dir().Write("server.yaml", ValidConfig("logging:\n  level: debug\n"));
  server.dir().Write("keys.txt", "# rotated, but forgot the key\n");
  ASSERT_EQ(::kill(server.pid(), SIGHUP), 0);
  ASSERT_TRUE(WaitForCount(server, "config reload failed, keeping the running config", 2));
  EXPECT_NE(server.Stderr().find("holds no key"), std::string::npos);
  ASSERT_TRUE(CompleteWithKey(server, "key-one-abc", kSecretPrompt).ok());
  EXPECT_EQ(server.Stderr().find(kSecretPrompt), std::string::npos);

  // A good reload: new key, debug logging; kv_cache.format changed too, which needs a restart.
  server.dir().Write("keys.txt", "key-two-def\n");
  server.dir().Write(
      "server.yaml",
      ValidConfig("logging:\n  level: debug\n").replace(ValidConfig("").find("fp32"), 4, "int8"));
  ASSERT_EQ(::kill(server.pid(), SIGHUP), 0);
  ASSERT_TRUE(WaitForCount(server, "config reloaded: applied logging.level", 1)) << server.Stderr();
  EXPECT_NE(server.Stderr().find("not applied (restart to apply): kv_cache.format"),
            std::string::npos)
      << server.Stderr();
  EXPECT_EQ(CompleteWithKey(server, "key-one-abc", "Once").error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  ASSERT_TRUE(CompleteWithKey(server, "key-two-def", kSecretPrompt).ok());
  // Debug logging is now on: the prompt text is logged; the keys never are.
  EXPECT_TRUE(server.WaitForStderr(kSecretPrompt, absl::Seconds(5)));
  EXPECT_EQ(server.Stderr().find("key-one-abc"), std::string::npos);
  EXPECT_EQ(server.Stderr().find("key-two-def"), std::string::npos);
  EXPECT_EQ(server.SignalAndWait(SIGTERM, absl::Seconds(20)), 0) << server.Stderr();
}

}  // namespace
}  // namespace kvserve::server::testing
