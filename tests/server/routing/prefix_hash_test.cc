// The prefix-affinity routing header: its definition (XXH3-64 of salt, "\n" and the prompt's first
// bytes, cut at a character boundary) and that `kvserve client generate` sends it.
#include "server/routing/prefix_hash.h"

#include <xxhash.h>

#include <string>

#include "absl/synchronization/mutex.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "kvserve/v1/generation.grpc.pb.h"
#include "tests/server/grpc/server_process.h"

namespace kvserve::server {
namespace {

// One-shot XXH3-64 of the key as the definition spells it, without the streaming code under test.
uint64_t Reference(const std::string& salt, const std::string& prefix) {
  const std::string key = salt + "\n" + prefix;
  return XXH3_64bits(key.data(), key.size());
}

TEST(PrefixHashTest, HashesSaltNewlineAndTheFirstBytes) {
  const std::string a(300, 'a');
  EXPECT_EQ(PrefixHash(a), Reference("", std::string(256, 'a')));
  EXPECT_EQ(PrefixHash(a, "tenant-1", 10), Reference("tenant-1", std::string(10, 'a')));
  EXPECT_EQ(PrefixHash("short"), Reference("", "short"));
  // XXH3-64 of the empty input is a published constant; here the key is "\n" alone.
  EXPECT_EQ(XXH3_64bits("", 0), 0x2D06800538D394C2ULL);
  EXPECT_EQ(PrefixHash(""), Reference("", ""));
}

TEST(PrefixHashTest, EqualPrefixesEqualHashesAndOnlyThePrefixCounts) {
  const std::string system(256, 's');
  EXPECT_EQ(PrefixHash(system + "question one"), PrefixHash(system + "another question"));
  std::string changed = system + "x";
  changed[255] = 't';
  EXPECT_NE(PrefixHash(system + "x"), PrefixHash(changed));
  EXPECT_NE(PrefixHash(system, "salt-a"), PrefixHash(system, "salt-b"));
  EXPECT_NE(PrefixHash("abc"), PrefixHash("abcd"));  // shorter than the prefix: whole prompt
}

TEST(PrefixHashTest, NeverSplitsAUtf8Character) {
  // "é" is C3 A9, "€" is E2 82 AC.
  EXPECT_EQ(PrefixHashLength("a\xC3\xA9z", 2), 1u);
  EXPECT_EQ(PrefixHashLength("a\xC3\xA9z", 3), 3u);
  EXPECT_EQ(PrefixHashLength("\xE2\x82\xAC\xE2\x82\xAC", 4), 3u);
  EXPECT_EQ(PrefixHashLength("\xE2\x82\xAC\xE2\x82\xAC", 5), 3u);
  EXPECT_EQ(PrefixHashLength("\xE2\x82\xAC", 2), 0u);
  EXPECT_EQ(PrefixHashLength("abc", 10), 3u);
  EXPECT_EQ(PrefixHash("a\xC3\xA9z", "", 2), Reference("", "a"));
}

TEST(PrefixHashTest, HeaderValueIsSixteenLowercaseHexDigits) {
  const std::string v = PrefixHashHeaderValue("Once upon a time");
  ASSERT_EQ(v.size(), 16u);
  char expected[17];
  std::snprintf(expected, sizeof(expected), "%016llx",
                static_cast<unsigned long long>(Reference("", "Once upon a time")));
  EXPECT_EQ(v, expected);
  EXPECT_EQ(std::string(kPrefixHashHeader), "x-kvserve-prefix-hash");
}

// A Generation service that records the routing header of each Complete call.
class RecordingService final : public v1::Generation::Service {
 public:
  grpc::Status Complete(grpc::ServerContext* context, const v1::GenerateRequest* request,
                        v1::CompleteResponse* response) override {
    absl::MutexLock lock(&mu_);
    auto it = context->client_metadata().find(kPrefixHashHeader);
    header_ = it == context->client_metadata().end()
                  ? "<none>"
                  : std::string(it->second.data(), it->second.size());
    salt_ = request->cache_salt();
    response->set_text(" done");
    return grpc::Status::OK;
  }
  std::string header() {
    absl::MutexLock lock(&mu_);
    return header_;
  }
  std::string salt() {
    absl::MutexLock lock(&mu_);
    return salt_;
  }

 private:
  absl::Mutex mu_;
  std::string header_;
  std::string salt_;
};

TEST(PrefixHashTest, ClientGenerateSendsTheHeader) {
  RecordingService service;
  int port = 0;
  grpc::ServerBuilder builder;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  ASSERT_GT(port, 0);
  const std::string addr = "127.0.0.1:" + std::to_string(port);
  const std::string prompt = std::string(300, 'p') + " and the rest";

  testing::ProcessResult r = testing::RunProcess(
      {testing::KvserveBinary(), "client", "generate", "--addr", addr, "--prompt", prompt});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, prompt + " done\n");
  EXPECT_EQ(service.header(), PrefixHashHeaderValue(std::string(256, 'p')));

  r = testing::RunProcess({testing::KvserveBinary(), "client", "generate", "--addr", addr,
                           "--prompt", prompt, "--cache-salt", "t1", "--prefix-hash-bytes", "8"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(service.salt(), "t1");
  char expected[17];
  std::snprintf(expected, sizeof(expected), "%016llx",
                static_cast<unsigned long long>(Reference("t1", std::string(8, 'p'))));
  EXPECT_EQ(service.header(), expected);

  r = testing::RunProcess({testing::KvserveBinary(), "client", "generate", "--addr", addr,
                           "--prompt", prompt, "--prefix-hash-bytes", "0"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(service.header(), "<none>");

  r = testing::RunProcess({testing::KvserveBinary(), "client", "generate", "--addr", addr,
                           "--prompt", prompt, "--prefix-hash-bytes", "-1"});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("--prefix-hash-bytes"), std::string::npos) << r.err;
  server->Shutdown();
}

}  // namespace
}  // namespace kvserve::server
