// API keys and TLS against the real server.
#include <fstream>
#include <iterator>
#include <string>

#include "gtest/gtest.h"
#include "tests/server/grpc/server_process.h"

namespace kvserve::server::testing {
namespace {

grpc::Status CompleteWithKey(const std::shared_ptr<grpc::Channel>& channel,
                             const std::string& authorization) {
  auto stub = v1::Generation::NewStub(channel);
  grpc::ClientContext context;
  if (!authorization.empty()) context.AddMetadata("authorization", authorization);
  v1::CompleteResponse response;
  return stub->Complete(&context, GreedyRequest("Once upon a time", 8), &response);
}

TEST(GrpcSecurityTest, ApiKeysRequiredWithAuthOnLoopback) {
  ServerProcess server;
  const std::string keys =
      server.dir().Write("keys.txt", "# kvserve keys\n\nfirst-key-123\n  second-key-456  \n");
  ASSERT_TRUE(server.Start({"server.api_keys_file=" + keys, "server.auth_on_loopback=true"}));
  auto channel = server.Channel();

  grpc::Status status = CompleteWithKey(channel, "");
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED) << status.error_message();
  status = CompleteWithKey(channel, "Bearer wrong-key");
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  status = CompleteWithKey(channel, "Bearer first-key-12");  // a prefix of a key
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  status = CompleteWithKey(channel, "first-key-123");  // no scheme
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  status = CompleteWithKey(channel, "Bearer first-key-123");
  EXPECT_TRUE(status.ok()) << status.error_message();
  status = CompleteWithKey(channel, "bearer second-key-456");
  EXPECT_TRUE(status.ok()) << status.error_message();

  // Streaming and the other methods too.
  auto stub = v1::Generation::NewStub(channel);
  StreamResult stream = ReadStream(*stub, GreedyRequest("Once upon a time", 8));
  EXPECT_EQ(stream.status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  grpc::ClientContext info_context;
  v1::ModelInfo info;
  EXPECT_EQ(stub->GetModelInfo(&info_context, v1::GetModelInfoRequest(), &info).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);

  // Health needs no key.
  EXPECT_EQ(HealthStatus(channel), "SERVING");
  // Keys never reach the log.
  EXPECT_EQ(server.Stderr().find("first-key-123"), std::string::npos);
  EXPECT_EQ(server.Stderr().find("wrong-key"), std::string::npos);

  // The client command reads the key from the environment.
  ProcessResult r =
      RunProcess({KvserveBinary(), "client", "generate", "--addr", server.address(), "--prompt",
                  "Once upon a time", "--max-tokens", "8", "--temperature", "0"},
                 absl::Seconds(30), {"KVSERVE_API_KEY=second-key-456"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  r = RunProcess({KvserveBinary(), "client", "generate", "--addr", server.address(), "--prompt",
                  "Once upon a time", "--max-tokens", "8", "--api-key", "nope"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("UNAUTHENTICATED"), std::string::npos) << r.err;
}

TEST(GrpcSecurityTest, LoopbackClientsNeedNoKeyUnlessAuthOnLoopback) {
  ServerProcess server;
  const std::string keys = server.dir().Write("keys.txt", "only-key\n");
  ASSERT_TRUE(server.Start({"server.api_keys_file=" + keys}));
  grpc::Status status = CompleteWithKey(server.Channel(), "");
  EXPECT_TRUE(status.ok()) << status.error_message();
}

TEST(GrpcSecurityTest, TlsRoundTrip) {
  if (RunProcess({"/usr/bin/openssl", "version"}).exit_code != 0) {
    GTEST_SKIP() << "openssl is not installed; skipping the TLS test";
  }
  ServerProcess server;
  const std::string cert = server.dir().path() + "/cert.pem";
  const std::string key = server.dir().path() + "/key.pem";
  ProcessResult gen =
      RunProcess({"/usr/bin/openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                  key, "-out", cert, "-days", "1", "-subj", "/CN=localhost", "-addext",
                  "subjectAltName=IP:127.0.0.1,DNS:localhost"});
  ASSERT_EQ(gen.exit_code, 0) << gen.err;
  ASSERT_TRUE(server.Start({"server.tls.cert_file=" + cert, "server.tls.key_file=" + key}));
  EXPECT_NE(server.Stderr().find("(TLS)"), std::string::npos);

  std::ifstream in(cert);
  std::string pem((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  grpc::SslCredentialsOptions ssl;
  ssl.pem_root_certs = pem;
  auto tls_channel = server.Channel(grpc::SslCredentials(ssl));
  StreamResult stream =
      ReadStream(*v1::Generation::NewStub(tls_channel), GreedyRequest("Once upon a time", 12));
  ASSERT_TRUE(stream.status.ok()) << stream.status.error_message();
  EXPECT_EQ("Once upon a time" + stream.text + "\n", OfflineGreedy("Once upon a time", 12));

  // Plaintext to a TLS port fails.
  grpc::Status status = CompleteWithKey(server.Channel(), "");
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();

  // The client command with --tls-ca.
  ProcessResult r = RunProcess({KvserveBinary(), "client", "generate", "--addr", server.address(),
                                "--tls-ca", cert, "--prompt", "Once upon a time", "--max-tokens",
                                "12", "--temperature", "0"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, OfflineGreedy("Once upon a time", 12));
}

}  // namespace
}  // namespace kvserve::server::testing
