// Weights are held once: a server serving a 110M-parameter model (the `110m` shape of
// `kvserve mkmodel`) in each weight type has a resident set of at most 1.1 x the file size + the
// KV budget + 64 MiB once it has loaded and answered a request. Before the file's copy of each
// repacked matrix was released, an F32 file took 2 x its size (882 MB for 439 MB).
#include <gtest/gtest.h>

#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "engine/model/synthetic_model.h"
#include "server_process.h"

namespace kvserve::server::testing {
namespace {

// A "Field:   N kB" line of /proc/PID/FILE, in KiB; -1 when absent.
int64_t ProcKiB(pid_t pid, const std::string& file, const std::string& field) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/", file));
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(field + ":", 0) == 0) return std::stoll(line.substr(field.size() + 1));
  }
  return -1;
}

class WeightMemoryTest : public ::testing::TestWithParam<const char*> {};

TEST_P(WeightMemoryTest, ResidentSetIsTheFileOnceAfterLoad) {
  if (kAddressSanitizer) GTEST_SKIP() << "AddressSanitizer's shadow memory inflates the RSS";
  const std::string type = GetParam();
  ScratchDir dir;
  auto spec = engine::NamedSyntheticShape("110m");
  ASSERT_TRUE(spec.ok());
  ASSERT_TRUE(engine::ParseSyntheticWeightType(type, *spec).ok());
  const std::string model = dir.path() + "/110m-" + type + ".gguf";
  ASSERT_TRUE(engine::WriteSyntheticModel(*spec, model).ok());
  std::ifstream f(model, std::ios::binary | std::ios::ate);
  const int64_t file_bytes = f.tellg();

  const int kv_budget_mb = 16;
  ServerProcess server;
  ASSERT_TRUE(
      server.Start({"model.path=" + model, absl::StrCat("kv_cache.budget_mb=", kv_budget_mb),
                    "prefix_cache.enabled=false"}));
  // One request, so that every weight has been read by a forward pass.
  {
    const StreamResult stream =
        ReadStream(*server.Stub(), GreedyRequest("Once upon a time", 4), absl::Seconds(60));
    ASSERT_TRUE(stream.status.ok()) << stream.status.error_message() << "\n" << server.Stderr();
  }
  // The weights go into huge pages in the background after the load; the bound holds after that
  // too (released ranges stay released). Waits until the huge-page total stops growing.
  int64_t huge = -1;
  for (int i = 0, steady = 0; i < 100 && steady < 3; ++i) {
    absl::SleepFor(absl::Milliseconds(300));
    const int64_t now = ProcKiB(server.pid(), "smaps_rollup", "AnonHugePages");
    steady = now == huge ? steady + 1 : 0;
    huge = now;
  }
  const int64_t rss = ProcKiB(server.pid(), "status", "VmRSS") * 1024;
  const int64_t bound = file_bytes * 11 / 10 + (int64_t{kv_budget_mb} + 64) * 1024 * 1024;
  RecordProperty("rss_bytes", std::to_string(rss));
  std::printf(
      "%s: file %.1f MiB, RSS after load and one request %.1f MiB (bound %.1f MiB), %.1f MiB of "
      "it in huge pages\n",
      type.c_str(), file_bytes / 1048576.0, rss / 1048576.0, bound / 1048576.0, huge / 1024.0);
  EXPECT_GT(rss, file_bytes / 2) << "the RSS reading looks wrong";
  EXPECT_LE(rss, bound) << type;
}

INSTANTIATE_TEST_SUITE_P(Types, WeightMemoryTest,
                         ::testing::Values("f32", "f16", "bf16", "q8_0", "q4_k_m", "q6_k"));

}  // namespace
}  // namespace kvserve::server::testing
