// examples/python/generate_stream.py against the real server, with stubs generated at test time.
#include <string>

#include "gtest/gtest.h"
#include "tests/server/grpc/server_process.h"

namespace kvserve::server::testing {
namespace {

TEST(PythonExampleTest, GenerateStreamPrintsTheGreedyCompletion) {
  if (RunProcess({"/usr/bin/python3", "-c", "import grpc, google.protobuf"}).exit_code != 0) {
    GTEST_SKIP() << "/usr/bin/python3 lacks grpc or protobuf (apt-get install python3-grpcio "
                    "python3-protobuf); skipping the Python example test";
  }
  ProcessResult which = RunProcess({"/bin/sh", "-c", "command -v protoc grpc_python_plugin"});
  if (which.exit_code != 0) {
    GTEST_SKIP() << "protoc or grpc_python_plugin is missing (apt-get install protobuf-compiler "
                    "protobuf-compiler-grpc); skipping the Python example test";
  }
  ScratchDir stubs;
  const std::string proto_dir = SourceDir() + "/proto";
  ProcessResult gen = RunProcess(
      {"/bin/sh", "-c",
       "protoc -I'" + proto_dir + "' --python_out='" + stubs.path() + "' --grpc_out='" +
           stubs.path() + "' --plugin=protoc-gen-grpc=\"$(command -v grpc_python_plugin)\" '" +
           proto_dir + "'/kvserve/v1/*.proto"});
  ASSERT_EQ(gen.exit_code, 0) << gen.err;

  ServerProcess server;
  ASSERT_TRUE(server.Start());
  ProcessResult run =
      RunProcess({"/usr/bin/python3", SourceDir() + "/examples/python/generate_stream.py",
                  "--stubs", stubs.path(), "--addr", server.address(), "--prompt",
                  "Once upon a time", "--max-tokens", "24", "--temperature", "0"},
                 absl::Seconds(60));
  EXPECT_EQ(run.exit_code, 0) << run.err;
  EXPECT_EQ(run.out, OfflineGreedy("Once upon a time", 24));
  EXPECT_NE(run.err.find("FINISH_REASON_"), std::string::npos) << run.err;

  // Errors come back as the gRPC code.
  ProcessResult bad =
      RunProcess({"/usr/bin/python3", SourceDir() + "/examples/python/generate_stream.py",
                  "--stubs", stubs.path(), "--addr", server.address(), "--max-tokens", "0"},
                 absl::Seconds(60));
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_NE(bad.err.find("INVALID_ARGUMENT"), std::string::npos) << bad.err;
}

}  // namespace
}  // namespace kvserve::server::testing
