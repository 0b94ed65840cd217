// kvserve.v1.Memory against the real server: GetStats figures that add up, WatchStats interval
// checks and streaming, FlushPrefixCache emptying the cached blocks, API keys.
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "kvserve/v1/memory.grpc.pb.h"
#include "tests/server/grpc/server_process.h"

namespace kvserve::server::testing {
namespace {

std::unique_ptr<v1::Memory::Stub> MemoryStub(const ServerProcess& server) {
  return v1::Memory::NewStub(server.Channel());
}

v1::MemoryStats GetStats(v1::Memory::Stub& stub) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  v1::MemoryStats stats;
  const grpc::Status status = stub.GetStats(&context, v1::GetStatsRequest(), &stats);
  EXPECT_TRUE(status.ok()) << status.error_message();
  return stats;
}

// Stats once no request is running or waiting and no block is active (the engine publishes its
// snapshot just after the step that ended the last request).
v1::MemoryStats QuietStats(v1::Memory::Stub& stub) {
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  v1::MemoryStats stats = GetStats(stub);
  while (absl::Now() < deadline && (stats.running_requests() != 0 ||
                                    stats.waiting_requests() != 0 || stats.active_bytes() != 0)) {
    absl::SleepFor(absl::Milliseconds(20));
    stats = GetStats(stub);
  }
  return stats;
}

// Prompts of 40 tokens: two full 16-token blocks each end up in the prefix cache.
void RunRequests(const ServerProcess& server, int n) {
  auto stub = server.Stub();
  for (int i = 0; i < n; ++i) {
    StreamResult r = ReadStream(*stub, TokenPrompt(40, 3 + 50 * i, 4));
    ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  }
}

TEST(MemoryServiceTest, GetStatsFiguresAddUp) {
  ServerProcess server;
  ASSERT_TRUE(server.Start());
  auto stub = MemoryStub(server);
  const v1::MemoryStats idle = GetStats(*stub);
  EXPECT_EQ(idle.capacity_bytes(), 64 << 20);
  EXPECT_EQ(idle.used_bytes(), 0);
  EXPECT_EQ(idle.free_bytes(), idle.capacity_bytes());
  EXPECT_EQ(idle.eviction_policy(), "lru");
  EXPECT_GT(idle.block_bytes(), 0);

  RunRequests(server, 3);
  const v1::MemoryStats s = QuietStats(*stub);
  EXPECT_EQ(s.running_requests(), 0);
  EXPECT_EQ(s.active_bytes(), 0);
  EXPECT_EQ(s.active_blocks(), 0);
  EXPECT_EQ(s.cached_blocks(), 6);
  EXPECT_EQ(s.cached_bytes(), 6 * s.block_bytes());
  EXPECT_EQ(s.used_bytes(), s.active_bytes() + s.cached_bytes());
  EXPECT_EQ(s.active_bytes() + s.cached_bytes() + s.free_bytes(), s.capacity_bytes());
  EXPECT_EQ(s.value_bytes() + s.scale_bytes() + s.padding_bytes(), s.used_bytes());
  int64_t by_format = 0;
  for (const v1::FormatUsage& f : s.used_by_format()) {
    EXPECT_EQ(f.value_bytes() + f.scale_bytes() + f.padding_bytes(), f.total_bytes());
    by_format += f.total_bytes();
  }
  EXPECT_EQ(by_format, s.used_bytes());
  ASSERT_EQ(s.used_by_format_size(), 1);
  EXPECT_EQ(s.used_by_format(0).format(), "fp32");
  EXPECT_EQ(s.scale_bytes(), 0);
  // An fp32 pool takes twice what FP16 would.
  EXPECT_EQ(s.fp16_equivalent_bytes() * 2, s.used_bytes());
  EXPECT_DOUBLE_EQ(s.compression_ratio(), 0.5);
  EXPECT_DOUBLE_EQ(s.usage_ratio(), static_cast<double>(s.used_bytes()) / s.capacity_bytes());
  EXPECT_EQ(s.prefix_queries(), 3);
  EXPECT_EQ(s.prefix_query_tokens(), 3 * 39);  // the last prompt token is always computed
  EXPECT_EQ(s.requests_finished(), 3);
  EXPECT_EQ(s.generated_tokens(), 12);
  EXPECT_TRUE(s.top_requests().empty());

  // The same prompt again hits the two cached blocks.
  auto gen = server.Stub();
  ASSERT_TRUE(ReadStream(*gen, TokenPrompt(40, 3, 4)).status.ok());
  const v1::MemoryStats again = QuietStats(*stub);
  EXPECT_EQ(again.prefix_hit_tokens(), 32);
  EXPECT_EQ(again.cached_blocks(), 6);
}

TEST(MemoryServiceTest, QuantizedPoolCountsCachedBlocksAtTheirOwnSize) {
  ServerProcess server;
  ASSERT_TRUE(server.Start({"kv_cache.format=int8"}));
  auto stub = MemoryStub(server);
  RunRequests(server, 2);
  const v1::MemoryStats s = QuietStats(*stub);
  EXPECT_EQ(s.active_bytes(), 0);
  EXPECT_EQ(s.cached_blocks(), 4);
  EXPECT_EQ(s.cached_bytes(), s.used_bytes());
  EXPECT_EQ(s.value_bytes() + s.scale_bytes() + s.padding_bytes(), s.used_bytes());
  ASSERT_EQ(s.used_by_format_size(), 1);
  EXPECT_EQ(s.used_by_format(0).format(), "int8");
  EXPECT_GT(s.scale_bytes(), 0);
  EXPECT_GT(s.compression_ratio(), 1.0);

  grpc::ClientContext context;
  v1::FlushPrefixCacheResponse response;
  ASSERT_TRUE(stub->FlushPrefixCache(&context, v1::FlushPrefixCacheRequest(), &response).ok());
  EXPECT_EQ(response.released_blocks(), 4);
  EXPECT_EQ(response.released_bytes(), s.cached_bytes());
}

TEST(MemoryServiceTest, FlushPrefixCacheReleasesTheCachedBlocks) {
  ServerProcess server;
  ASSERT_TRUE(server.Start());
  auto stub = MemoryStub(server);
  RunRequests(server, 2);
  const v1::MemoryStats before = QuietStats(*stub);
  ASSERT_EQ(before.cached_blocks(), 4);

  grpc::ClientContext context;
  v1::FlushPrefixCacheResponse response;
  const grpc::Status status =
      stub->FlushPrefixCache(&context, v1::FlushPrefixCacheRequest(), &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.released_blocks(), 4);
  EXPECT_EQ(response.released_bytes(), 4 * before.block_bytes());

  const v1::MemoryStats after = GetStats(*stub);
  EXPECT_EQ(after.cached_blocks(), 0);
  EXPECT_EQ(after.cached_bytes(), 0);
  EXPECT_EQ(after.used_bytes(), 0);
  EXPECT_EQ(after.prefix_cached_blocks(), 0);
  EXPECT_EQ(after.flushed_blocks(), 4);
  EXPECT_EQ(after.free_bytes(), after.capacity_bytes());
}

TEST(MemoryServiceTest, WatchStatsRejectsBadIntervals) {
  ServerProcess server;
  ASSERT_TRUE(server.Start({"metrics.min_watch_interval_ms=100"}));
  auto stub = MemoryStub(server);
  for (int64_t interval : {0L, -5L, 50L, 99L}) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    v1::WatchStatsRequest request;
    request.set_interval_ms(interval);
    auto reader = stub->WatchStats(&context, request);
    v1::MemoryStats stats;
    EXPECT_FALSE(reader->Read(&stats));
    const grpc::Status status = reader->Finish();
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << interval;
    EXPECT_NE(status.error_message().find("interval_ms"), std::string::npos)
        << status.error_message();
  }
}

TEST(MemoryServiceTest, WatchStatsStreamsAtTheInterval) {
  ServerProcess server;
  ASSERT_TRUE(server.Start({"metrics.min_watch_interval_ms=50"}));
  auto stub = MemoryStub(server);
  grpc::ClientContext a_context, b_context;
  v1::WatchStatsRequest request;
  request.set_interval_ms(100);
  auto a = stub->WatchStats(&a_context, request);
  auto b = stub->WatchStats(&b_context, request);
  std::vector<int64_t> a_times, b_times;
  const absl::Time start = absl::Now();
  for (int i = 0; i < 4; ++i) {
    v1::MemoryStats stats;
    ASSERT_TRUE(a->Read(&stats));
    EXPECT_EQ(stats.capacity_bytes(), 64 << 20);
    a_times.push_back(stats.snapshot_unix_micros());
    ASSERT_TRUE(b->Read(&stats));
    b_times.push_back(stats.snapshot_unix_micros());
  }
  // Four snapshots 100 ms apart.
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(250));
  for (int i = 1; i < 4; ++i) {
    EXPECT_GE(a_times[i] - a_times[i - 1], 90'000);
    EXPECT_GE(b_times[i] - b_times[i - 1], 90'000);
  }
  // The server takes at most one snapshot per tick (a quarter of the 50 ms minimum interval,
  // 12.5 ms) and gives it to every watcher due at that tick. Whether the two calls start at
  // the same tick depends on when their requests arrive, so the test does not require a shared
  // snapshot; it requires that snapshots the two watchers got are either one and the same or
  // at least a tick apart (10 ms allows for timer slack). A snapshot per watcher would put
  // watchers due at the same tick microseconds apart.
  for (int64_t t : a_times) {
    for (int64_t u : b_times) {
      if (t != u) {
        EXPECT_GE(std::abs(t - u), 10'000) << t << " vs " << u;
      }
    }
  }
  a_context.TryCancel();
  b_context.TryCancel();
  EXPECT_EQ(a->Finish().error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_EQ(b->Finish().error_code(), grpc::StatusCode::CANCELLED);
}

TEST(MemoryServiceTest, FlushPrefixCacheNeedsTheApiKey) {
  ServerProcess server;
  const std::string keys = server.dir().Write("keys.txt", "admin-key-123\n");
  ASSERT_TRUE(server.Start({"server.api_keys_file=" + keys, "server.auth_on_loopback=true"}));
  auto stub = MemoryStub(server);
  {
    grpc::ClientContext context;
    v1::FlushPrefixCacheResponse response;
    EXPECT_EQ(
        stub->FlushPrefixCache(&context, v1::FlushPrefixCacheRequest(), &response).error_code(),
        grpc::StatusCode::UNAUTHENTICATED);
  }
  {
    grpc::ClientContext context;
    v1::MemoryStats stats;
    EXPECT_EQ(stub->GetStats(&context, v1::GetStatsRequest(), &stats).error_code(),
              grpc::StatusCode::UNAUTHENTICATED);
  }
  grpc::ClientContext context;
  context.AddMetadata("authorization", "Bearer admin-key-123");
  v1::FlushPrefixCacheResponse response;
  const grpc::Status status =
      stub->FlushPrefixCache(&context, v1::FlushPrefixCacheRequest(), &response);
  EXPECT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.released_blocks(), 0);
}

TEST(MemoryServiceTest, ClientStatsPrintsATable) {
  ServerProcess server;
  ASSERT_TRUE(server.Start());
  RunRequests(server, 1);
  ProcessResult r = RunProcess({KvserveBinary(), "client", "stats", "--addr", server.address()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("KV pool"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("capacity"), std::string::npos);
  EXPECT_NE(r.out.find("(67108864 bytes)"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("fp32"), std::string::npos);
  EXPECT_NE(r.out.find("eviction policy"), std::string::npos);

  // --watch: two snapshots, then the call's deadline ends the stream.
  r = RunProcess({KvserveBinary(), "client", "stats", "--addr", server.address(), "--watch",
                  "--interval-ms", "200", "--timeout", "0.5"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("DEADLINE_EXCEEDED"), std::string::npos) << r.err;
  size_t snapshots = 0;
  for (size_t p = r.out.find("== snapshot at"); p != std::string::npos;
       p = r.out.find("== snapshot at", p + 1)) {
    ++snapshots;
  }
  EXPECT_GE(snapshots, 2u) << r.out;

  r = RunProcess({KvserveBinary(), "client", "stats", "--addr", server.address(), "--watch",
                  "--interval-ms", "0"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("INVALID_ARGUMENT"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace kvserve::server::testing
