// A listener that anyone on the network can reach needs API keys, or an explicit opt-out; and the
// connection bounds and the prompt byte limit load as configured.
#include <string>
#include <utility>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/config/server_config.h"
#include "tests/server/config/config_test_util.h"

namespace kvserve::server {
namespace {

using config_test::ScratchDir;
using ::testing::AllOf;
using ::testing::HasSubstr;

class ListenerSecurityConfigTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_.Write("m.gguf", "model bytes");
    keys_ = dir_.Write("keys.txt", "k1\n");
  }
  absl::StatusOr<ServerConfig> Load(const std::string& text,
                                    const std::vector<std::string>& overrides = {}) {
    return LoadServerConfig(dir_.Write("c.yaml", text), overrides);
  }
  std::string At(int line) const { return dir_.Path("c.yaml") + ":" + std::to_string(line) + ":"; }

  ScratchDir dir_;
  std::string keys_;
};

TEST_F(ListenerSecurityConfigTest, NonLoopbackAddressWithoutKeysIsAnError) {
  for (const std::string address :
       {"0.0.0.0:50051", "[::]:50051", "10.1.2.3:50051", "example.com:50051", "128.0.0.1:1"}) {
    SCOPED_TRACE(address);
    absl::StatusOr<ServerConfig> config = Load(
        "model:\n"          // 1
        "  path: m.gguf\n"  // 2
        "server:\n"         // 3
        "  address: \"" +
        address + "\"\n");  // 4
    ASSERT_FALSE(config.ok());
    EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(
        config.status().message(),
        AllOf(HasSubstr(At(4) + " server.address: " + address), HasSubstr("loopback"),
              HasSubstr("server.api_keys_file"), HasSubstr("server.allow_unauthenticated")));
  }
}

TEST_F(ListenerSecurityConfigTest, OverrideToEveryInterfaceWithoutKeysNamesTheFlag) {
  absl::StatusOr<ServerConfig> config =
      Load("model:\n  path: m.gguf\n", {"server.address=0.0.0.0:0"});
  ASSERT_FALSE(config.ok());
  EXPECT_THAT(config.status().message(), AllOf(HasSubstr("--set server.address=0.0.0.0:0: "),
                                               HasSubstr("server.api_keys_file is not set")));
}

TEST_F(ListenerSecurityConfigTest, KeysOrTheOptOutMakeANonLoopbackAddressValid) {
  absl::StatusOr<ServerConfig> with_keys =
      Load("model:\n  path: m.gguf\nserver:\n  address: 0.0.0.0:1\n  api_keys_file: keys.txt\n");
  EXPECT_TRUE(with_keys.ok()) << with_keys.status();
  absl::StatusOr<ServerConfig> opted_out = Load(
      "model:\n  path: m.gguf\nserver:\n  address: 0.0.0.0:1\n  allow_unauthenticated: true\n");
  ASSERT_TRUE(opted_out.ok()) << opted_out.status();
  EXPECT_TRUE(opted_out->allow_unauthenticated);
}

TEST_F(ListenerSecurityConfigTest, LoopbackAddressesNeedNoKeys) {
  for (const std::string address : {"127.0.0.1:1", "[::1]:1", "localhost:1", "127.4.5.6:0"}) {
    SCOPED_TRACE(address);
    absl::StatusOr<ServerConfig> config =
        Load("model:\n  path: m.gguf\nserver:\n  address: \"" + address + "\"\n");
    EXPECT_TRUE(config.ok()) << config.status();
  }
}

TEST_F(ListenerSecurityConfigTest, ConnectionBoundsAndPromptBytesDefaultsAndRanges) {
  absl::StatusOr<ServerConfig> defaults = Load("model:\n  path: m.gguf\n");
  ASSERT_TRUE(defaults.ok()) << defaults.status();
  EXPECT_FALSE(defaults->allow_unauthenticated);
  EXPECT_DOUBLE_EQ(defaults->handshake_timeout_seconds, 10);
  EXPECT_DOUBLE_EQ(defaults->max_connection_idle_seconds, 300);
  EXPECT_EQ(defaults->max_prompt_bytes, 0);
  absl::StatusOr<ServerConfig> bad =
      Load("model:\n  path: m.gguf\nserver:\n  handshake_timeout_seconds: 0\n");
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(bad.status().message(), HasSubstr(At(4) + " server.handshake_timeout_seconds"));
  bad = Load("model:\n  path: m.gguf\nlimits:\n  max_prompt_bytes: -1\n");
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(bad.status().message(), HasSubstr(At(4) + " limits.max_prompt_bytes"));
}

TEST_F(ListenerSecurityConfigTest, RequestBytesAndKeepaliveDefaultsAndRanges) {
  absl::StatusOr<ServerConfig> defaults = Load("model:\n  path: m.gguf\n");
  ASSERT_TRUE(defaults.ok()) << defaults.status();
  EXPECT_EQ(defaults->max_request_bytes, 0);
  EXPECT_DOUBLE_EQ(defaults->keepalive_seconds, 60);
  EXPECT_DOUBLE_EQ(defaults->keepalive_timeout_seconds, 20);
  absl::StatusOr<ServerConfig> off =
      Load("model:\n  path: m.gguf\nserver:\n  keepalive_seconds: 0\n");
  ASSERT_TRUE(off.ok()) << off.status();
  EXPECT_DOUBLE_EQ(off->keepalive_seconds, 0);
  for (const auto& [yaml, key] : std::vector<std::pair<std::string, std::string>>{
           {"  max_request_bytes: 100\n", "server.max_request_bytes: must be 0"},
           {"  max_request_bytes: -1\n", "server.max_request_bytes"},
           {"  max_request_bytes: 2147483648\n", "server.max_request_bytes"},
           {"  keepalive_seconds: -1\n", "server.keepalive_seconds"},
           {"  keepalive_timeout_seconds: 0\n", "server.keepalive_timeout_seconds"}}) {
    SCOPED_TRACE(yaml);
    absl::StatusOr<ServerConfig> bad = Load("model:\n  path: m.gguf\nserver:\n" + yaml);
    ASSERT_FALSE(bad.ok());
    EXPECT_THAT(bad.status().message(), HasSubstr(At(4) + " " + key));
  }
  absl::StatusOr<ServerConfig> bad =
      Load("model:\n  path: m.gguf\n", {"server.max_request_bytes=1023"});
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(bad.status().message(), HasSubstr("--set server.max_request_bytes=1023"));
}

}  // namespace
}  // namespace kvserve::server

namespace kvserve::server {
namespace {

TEST_F(ListenerSecurityConfigTest, Ipv6MetricsAddressIsRefusedWithTheReason) {
  absl::StatusOr<ServerConfig> config =
      Load("model:\n  path: m.gguf\nmetrics:\n  address: \"[::1]:9100\"\n");
  ASSERT_FALSE(config.ok());
  EXPECT_THAT(config.status().message(),
              AllOf(HasSubstr(At(4) + " metrics.address: IPv6 addresses are not supported"),
                    HasSubstr("civetweb")));
  config = Load("model:\n  path: m.gguf\n", {"metrics.address=[::1]:0"});
  ASSERT_FALSE(config.ok());
  EXPECT_THAT(config.status().message(), HasSubstr("--set metrics.address=[::1]:0: IPv6"));
}

}  // namespace
}  // namespace kvserve::server
