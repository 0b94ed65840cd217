#include "server/grpc/auth.h"

#include <fstream>
#include <string>

#include "gtest/gtest.h"

namespace kvserve::server {
namespace {

TEST(AuthTest, ConstantTimeEquals) {
  EXPECT_TRUE(ConstantTimeEquals("", ""));
  EXPECT_TRUE(ConstantTimeEquals("secret", "secret"));
  EXPECT_FALSE(ConstantTimeEquals("secret", "secreT"));
  EXPECT_FALSE(ConstantTimeEquals("secret", "secret2"));
  EXPECT_FALSE(ConstantTimeEquals("secret2", "secret"));
  EXPECT_FALSE(ConstantTimeEquals("", "x"));
  EXPECT_FALSE(ConstantTimeEquals(std::string("a\0b", 3), std::string("a\0c", 3)));
}

TEST(AuthTest, CheckHeader) {
  ApiKeyAuthenticator auth({"k1", "key-two"});
  EXPECT_TRUE(auth.CheckHeader("Bearer k1").ok());
  EXPECT_TRUE(auth.CheckHeader("bearer key-two").ok());
  EXPECT_TRUE(auth.CheckHeader("BEARER   key-two ").ok());
  EXPECT_EQ(auth.CheckHeader("").code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(auth.CheckHeader("k1").code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(auth.CheckHeader("Basic k1").code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(auth.CheckHeader("Bearer k").code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(auth.CheckHeader("Bearer ").code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(auth.CheckHeader("Bearer k1k1").code(), absl::StatusCode::kUnauthenticated);
  // The message never repeats the key.
  EXPECT_EQ(std::string(auth.CheckHeader("Bearer guess").message()).find("guess"),
            std::string::npos);
}

TEST(AuthTest, KeysFile) {
  const std::string path = ::testing::TempDir() + "/kvserve_auth_test_keys";
  {
    std::ofstream out(path);
    out << "# comment\n\n  alpha \r\nbeta\n";
  }
  auto auth = ApiKeyAuthenticator::FromFile(path);
  ASSERT_TRUE(auth.ok()) << auth.status();
  EXPECT_EQ((*auth)->num_keys(), 2u);
  EXPECT_TRUE((*auth)->CheckHeader("Bearer alpha").ok());
  EXPECT_TRUE((*auth)->CheckHeader("Bearer beta").ok());
  EXPECT_FALSE((*auth)->CheckHeader("Bearer # comment").ok());
  {
    std::ofstream out(path);
    out << "# only a comment\n";
  }
  auto empty = ApiKeyAuthenticator::FromFile(path);
  ASSERT_FALSE(empty.ok());
  EXPECT_NE(std::string(empty.status().message()).find("server.api_keys_file"), std::string::npos);
  auto missing = ApiKeyAuthenticator::FromFile(path + ".missing");
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(std::string(missing.status().message()).find("server.api_keys_file"),
            std::string::npos);
}

TEST(AuthTest, LoopbackAddresses) {
  EXPECT_TRUE(IsLoopbackAddress("127.0.0.1:50051"));
  EXPECT_TRUE(IsLoopbackAddress("127.1.2.3:1"));
  EXPECT_TRUE(IsLoopbackAddress("localhost:50051"));
  EXPECT_TRUE(IsLoopbackAddress("[::1]:50051"));
  EXPECT_TRUE(IsLoopbackAddress("unix:/tmp/kvserve.sock"));
  EXPECT_FALSE(IsLoopbackAddress("0.0.0.0:50051"));
  EXPECT_FALSE(IsLoopbackAddress("[::]:50051"));
  EXPECT_FALSE(IsLoopbackAddress("10.0.0.1:50051"));
  EXPECT_FALSE(IsLoopbackAddress("127.example.com:50051"));
  EXPECT_FALSE(IsLoopbackAddress("example.com:50051"));
}

TEST(AuthTest, WhenKeysAreRequired) {
  EXPECT_FALSE(ApiKeysRequired("0.0.0.0:1", /*keys_file_set=*/false, /*auth_on_loopback=*/true));
  EXPECT_TRUE(ApiKeysRequired("0.0.0.0:1", true, false));
  EXPECT_FALSE(ApiKeysRequired("127.0.0.1:1", true, false));
  EXPECT_TRUE(ApiKeysRequired("127.0.0.1:1", true, true));
}

}  // namespace
}  // namespace kvserve::server
