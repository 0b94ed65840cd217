// API key rotation without SIGHUP: the server polls server.api_keys_file and replaces the keys
// when its content changes (server/config/file_change_poller.h), as a Kubernetes Secret update
// (an atomic symlink swap) or an edit would change it.
#include <cstdio>
#include <filesystem>
#include <string>

#include "gtest/gtest.h"
#include "server/config/file_change_poller.h"
#include "tests/server/grpc/server_process.h"

namespace kvserve::server::testing {
namespace {

namespace fs = std::filesystem;

TEST(FileChangePollerTest, SeesContentChangesOnly) {
  ScratchDir dir;
  const std::string path = dir.Write("keys", "one\n");
  FileChangePoller poller(path);
  EXPECT_FALSE(poller.Changed());
  dir.Write("keys", "one\n");  // rewritten, same content
  EXPECT_FALSE(poller.Changed());
  dir.Write("keys", "two\n");
  EXPECT_TRUE(poller.Changed());
  EXPECT_FALSE(poller.Changed());
  // Replaced by a rename (a symlink swap works the same), same size.
  const std::string next = dir.Write("keys.new", "six\n");
  fs::rename(next, path);
  EXPECT_TRUE(poller.Changed());
  // Gone for a moment: no change; back with new content: a change.
  fs::remove(path);
  EXPECT_FALSE(poller.Changed());
  dir.Write("keys", "ten\n");
  EXPECT_TRUE(poller.Changed());
  FileChangePoller none("");
  EXPECT_FALSE(none.Changed());
}

grpc::Status CompleteWithKey(const std::shared_ptr<grpc::Channel>& channel,
                             const std::string& key) {
  auto stub = v1::Generation::NewStub(channel);
  grpc::ClientContext context;
  context.AddMetadata("authorization", "Bearer " + key);
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  v1::CompleteResponse response;
  return stub->Complete(&context, GreedyRequest("Once upon a time", 2), &response);
}

// Waits until `key` gets `code`, polling; false on timeout.
bool WaitForKey(const std::shared_ptr<grpc::Channel>& channel, const std::string& key,
                grpc::StatusCode code) {
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  while (absl::Now() < deadline) {
    if (CompleteWithKey(channel, key).error_code() == code) return true;
    absl::SleepFor(absl::Milliseconds(100));
  }
  return false;
}

TEST(ApiKeysRotationTest, NewKeysFileIsUsedWithoutSighup) {
  ServerProcess server;
  // As Kubernetes mounts a Secret: the file is a symlink into a data folder that is swapped.
  const fs::path dir = server.dir().path();
  fs::create_directories(dir / "v1");
  server.dir().Write("v1/api-keys", "old-key-1\n");
  fs::create_directory_symlink("v1", dir / "data");
  fs::create_symlink("data/api-keys", dir / "api-keys");
  ASSERT_TRUE(server.Start({"server.api_keys_file=" + (dir / "api-keys").string(),
                            "server.auth_on_loopback=true", "server.api_keys_poll_seconds=0.2"}));
  auto channel = server.Channel();
  ASSERT_TRUE(CompleteWithKey(channel, "old-key-1").ok());
  EXPECT_EQ(CompleteWithKey(channel, "new-key-2").error_code(), grpc::StatusCode::UNAUTHENTICATED);

  // The rotation: a new data folder, then an atomic swap of the symlink.
  fs::create_directories(dir / "v2");
  server.dir().Write("v2/api-keys", "new-key-2\n");
  fs::create_directory_symlink("v2", dir / "data.tmp");
  fs::rename(dir / "data.tmp", dir / "data");
  EXPECT_TRUE(WaitForKey(channel, "new-key-2", grpc::StatusCode::OK)) << server.Stderr();
  EXPECT_EQ(CompleteWithKey(channel, "old-key-1").error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_NE(server.Stderr().find("reloading the API keys"), std::string::npos);

  // A file with no key is refused: the keys in force stay.
  server.dir().Write("v2/api-keys", "# nothing yet\n");
  ASSERT_TRUE(server.WaitForStderr("API keys not reloaded", absl::Seconds(20))) << server.Stderr();
  EXPECT_TRUE(CompleteWithKey(channel, "new-key-2").ok());
  EXPECT_EQ(server.SignalAndWait(SIGTERM, absl::Seconds(30)), 0) << server.Stderr();
}

}  // namespace
}  // namespace kvserve::server::testing
