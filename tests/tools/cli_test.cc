// `kvserve serve` and `kvserve client` as a user runs them.
#include <signal.h>

#include <filesystem>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/server/grpc/server_process.h"

namespace kvserve::tools {
namespace {

using ::kvserve::server::testing::HealthStatus;
using ::kvserve::server::testing::KvserveBinary;
using ::kvserve::server::testing::ModelPath;
using ::kvserve::server::testing::OfflineGreedy;
using ::kvserve::server::testing::ProcessResult;
using ::kvserve::server::testing::RunProcess;
using ::kvserve::server::testing::ScratchDir;
using ::kvserve::server::testing::ServerProcess;
using ::kvserve::server::testing::SourceDir;

ProcessResult Client(const std::vector<std::string>& args) {
  std::vector<std::string> argv = {KvserveBinary(), "client"};
  argv.insert(argv.end(), args.begin(), args.end());
  return RunProcess(argv, absl::Seconds(30));
}

TEST(ServeClientCliTest, ClientGenerateOutputEqualsOfflineGenerate) {
  ServerProcess server;
  ASSERT_TRUE(server.Start());
  for (const std::string prompt : {"Once upon a time", "The little bird"}) {
    const std::string expected = OfflineGreedy(prompt, 30);
    ProcessResult plain = Client({"generate", "--addr", server.address(), "--prompt", prompt,
                                  "--max-tokens", "30", "--temperature", "0"});
    EXPECT_EQ(plain.exit_code, 0) << plain.err;
    EXPECT_EQ(plain.out, expected);
    ProcessResult streamed = Client({"generate", "--addr", server.address(), "--prompt", prompt,
                                     "--max-tokens", "30", "--temperature", "0", "--stream"});
    EXPECT_EQ(streamed.exit_code, 0) << streamed.err;
    EXPECT_EQ(streamed.out, expected);
  }
  // Seeded sampling is reproducible.
  std::vector<std::string> seeded = {"generate", "--addr",           server.address(),
                                     "--prompt", "Once upon a time", "--max-tokens",
                                     "20",       "--seed",           "42"};
  ProcessResult a = Client(seeded);
  ProcessResult b = Client(seeded);
  EXPECT_EQ(a.exit_code, 0) << a.err;
  EXPECT_EQ(a.out, b.out);
}

TEST(ServeClientCliTest, ClientHealthInfoTokenizeAndErrors) {
  ServerProcess server;
  ASSERT_TRUE(server.Start());
  ProcessResult health = Client({"health", "--addr", server.address()});
  EXPECT_EQ(health.exit_code, 0) << health.err;
  EXPECT_EQ(health.out, "SERVING\n");

  ProcessResult info = Client({"info", "--addr", server.address()});
  EXPECT_EQ(info.exit_code, 0) << info.err;
  EXPECT_NE(info.out.find("vocab_size:          512"), std::string::npos) << info.out;
  EXPECT_NE(info.out.find("context_length:      2048"), std::string::npos) << info.out;
  EXPECT_NE(info.out.find("KV_FORMAT_FP32"), std::string::npos) << info.out;

  ProcessResult tokens = Client({"tokenize", "--addr", server.address(), "--text", "Hello"});
  EXPECT_EQ(tokens.exit_code, 0) << tokens.err;
  EXPECT_EQ(tokens.out.rfind("1 ", 0), 0u) << tokens.out;  // BOS first

  ProcessResult bad =
      Client({"generate", "--addr", server.address(), "--prompt", "Hi", "--max-tokens", "0"});
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_NE(bad.err.find("INVALID_ARGUMENT: max_tokens"), std::string::npos) << bad.err;
  EXPECT_EQ(bad.out, "");

  ProcessResult usage = Client({"generate", "--addr", server.address()});
  EXPECT_EQ(usage.exit_code, 2);  // --prompt missing

  EXPECT_EQ(server.SignalAndWait(SIGTERM, absl::Seconds(20)), 0);
  ProcessResult down = Client({"health", "--addr", server.address(), "--timeout", "5"});
  EXPECT_EQ(down.exit_code, 1);
  EXPECT_NE(down.err.find("UNAVAILABLE"), std::string::npos) << down.err;
}

TEST(ServeClientCliTest, SecondServerOnTheSamePortFailsWithExitCode1) {
  ServerProcess first;
  ASSERT_TRUE(first.Start());
  ScratchDir dir;
  const std::string config = dir.Write(
      "server.yaml", "model:\n  path: " + ModelPath() + "\nserver:\n  address: " + first.address() +
                         "\nmetrics:\n  address: \"\"\nhttp:\n  address: \"\"\n");
  ProcessResult second =
      RunProcess({KvserveBinary(), "serve", "--config", config}, absl::Seconds(30));
  EXPECT_EQ(second.exit_code, 1) << second.err;
  EXPECT_NE(second.err.find("cannot listen on " + first.address()), std::string::npos)
      << second.err;
  // The first one is unaffected.
  EXPECT_EQ(HealthStatus(first.Channel()), "SERVING");
}

TEST(ServeClientCliTest, ServeCheckAcceptsTheShippedConfigs) {
  std::vector<std::string> configs = {SourceDir() + "/configs/server.yaml"};
  for (const auto& entry : std::filesystem::directory_iterator(SourceDir() + "/configs/presets")) {
    if (entry.path().extension() == ".yaml") configs.push_back(entry.path().string());
  }
  ASSERT_GE(configs.size(), 2u);
  for (const std::string& config : configs) {
    ProcessResult r =
        RunProcess({KvserveBinary(), "serve", "--config", config, "--check"}, absl::Seconds(60));
    EXPECT_EQ(r.exit_code, 0) << config << "\n" << r.err;
    EXPECT_NE(r.out.find("OK"), std::string::npos) << config;
  }
}

TEST(ServeClientCliTest, ServeCheckRejectsABrokenConfigNamingTheKey) {
  ScratchDir dir;
  const std::string model = "model:\n  path: " + ModelPath() + "\n";
  struct Broken {
    std::string yaml;
    std::string key;
  };
  const std::vector<Broken> cases = {
      {model + "kv_cache:\n  block_size: 0\n", "kv_cache.block_size"},
      {model + "kv_cache:\n  colour: blue\n", "kv_cache.colour"},
      {model + "server:\n  address: nowhere\n", "server.address"},
      {"model:\n  path: /nonexistent/model.gguf\n", "model.path"},
      {model + "server:\n  api_keys_file: /nonexistent/keys\n", "server.api_keys_file"},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    const std::string path = dir.Write("broken" + std::to_string(i) + ".yaml", cases[i].yaml);
    ProcessResult r =
        RunProcess({KvserveBinary(), "serve", "--config", path, "--check"}, absl::Seconds(30));
    EXPECT_EQ(r.exit_code, 2) << cases[i].yaml << r.err;
    EXPECT_NE(r.err.find(cases[i].key), std::string::npos) << cases[i].key << ": " << r.err;
  }
  // A bad --set override is named too.
  const std::string good = dir.Write("good.yaml", model);
  ProcessResult r = RunProcess(
      {KvserveBinary(), "serve", "--config", good, "--check", "--set", "scheduler.policy=random"});
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("scheduler.policy"), std::string::npos) << r.err;
  // Missing --config is a usage error.
  EXPECT_EQ(RunProcess({KvserveBinary(), "serve"}).exit_code, 2);
}

}  // namespace
}  // namespace kvserve::tools
