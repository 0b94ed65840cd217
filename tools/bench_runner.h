// The serving benchmark's load generator: sends a workload (bench_workload.h) to a running server
// over gRPC streams at Poisson/gamma arrival times or a fixed concurrency, times every token as it
// arrives, samples the server's Memory service during the run, and summarizes (bench_stats.h).
//
// Timing: a request's clock starts when its stream is started. TTFT = until the first message
// carrying tokens; ITL = the gaps between consecutive messages carrying tokens (a message carries
// several tokens when the server produced them before the previous one was sent); TPOT = (E2E -
// TTFT) / (output tokens - 1) per request; E2E = until the stream's final status.
//
// Thread-safety: RunBenchmark blocks its caller; it uses gRPC's callback threads and two helper
// threads of its own (Memory sampling, progress), all joined before it returns.
#ifndef KVSERVE_TOOLS_BENCH_RUNNER_H_
#define KVSERVE_TOOLS_BENCH_RUNNER_H_

#include <cstdint>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "grpcpp/grpcpp.h"
#include "tools/bench_stats.h"
#include "tools/bench_workload.h"

namespace kvserve::tools {

// Prepares each call's context (API key, deadline). May be empty.
using ContextPreparer = std::function<absl::Status(grpc::ClientContext*)>;

struct BenchOptions {
  int64_t max_concurrency = 0;  // requests in flight at most; 0 = no cap
  double request_rate = std::numeric_limits<double>::infinity();  // requests/s; inf = all at once
  double burstiness = 1.0;         // gamma shape of the inter-arrival gaps; 1 = Poisson
  uint64_t seed = 0;               // arrival times
  float temperature = 0.0f;        // sampling of every request (0 = greedy)
  bool ignore_eos = true;          // generate exactly output_len tokens
  int64_t stats_interval_ms = 50;  // Memory/GetStats sampling period; 0 = before and after only
  ContextPreparer prepare_context;
  // Called about 5 times a second from a helper thread with (finished, total) requests.
  std::function<void(int64_t, int64_t)> progress;
};

// One request's record; times in seconds from the benchmark's start or as durations.
struct RequestRecord {
  int64_t index = 0;
  double scheduled_s = 0;  // intended arrival
  double start_s = 0;  // stream started (later than scheduled_s when the concurrency cap held it)
  double ttft_s = 0;   // 0 when no token arrived
  double e2e_s = 0;
  std::vector<double> itl_s;
  int32_t prompt_tokens = 0;         // the server's count (usage)
  int32_t cached_prompt_tokens = 0;  // prompt tokens served from the prefix cache
  int32_t output_tokens = 0;         // tokens received
  int32_t token_messages = 0;        // stream messages that carried tokens (itl_s has one fewer)
  int32_t expected_output_tokens = 0;
  int32_t preemptions = 0;
  double server_queued_s = 0;  // the server's own timings
  double server_ttft_s = 0;
  bool ok = false;
  std::string error;  // "CODE: message" when !ok
};

// The server's Memory service over the run: peaks from samples, counters as after - before.
struct ServerStatsSummary {
  bool available = false;
  std::string error;  // why not available
  int64_t samples = 0;
  int64_t capacity_bytes = 0;
  int64_t block_bytes = 0;
  int64_t peak_used_bytes = 0;
  int64_t peak_active_bytes = 0;
  double peak_usage_ratio = 0;
  int32_t peak_running_requests = 0;
  int32_t peak_waiting_requests = 0;
  int64_t preemptions = 0;
  int64_t prefix_query_tokens = 0;
  int64_t prefix_hit_tokens = 0;
  double prefix_hit_rate = 0;  // hit / query tokens during the run
  int64_t evicted_blocks = 0;
  int64_t requests_finished = 0;
  int64_t requests_failed = 0;
  int64_t requests_cancelled = 0;
  int64_t prompt_tokens = 0;  // computed (recomputation included)
  int64_t generated_tokens = 0;
};

struct BenchReport {
  double duration_s = 0;
  int64_t num_requests = 0;
  int64_t completed = 0;
  int64_t failed = 0;
  int64_t prompt_tokens = 0;
  int64_t cached_prompt_tokens = 0;
  int64_t output_tokens = 0;
  double request_throughput = 0;  // completed / duration
  double output_throughput = 0;   // output tokens / s
  double total_throughput = 0;    // (prompt + output tokens) / s
  int32_t peak_concurrency = 0;   // requests in flight at once, at the client
  LatencySummary ttft_ms, tpot_ms, itl_ms, e2e_ms;
  double cpu_user_s = 0;  // this process over the run (gRPC threads included)
  double cpu_system_s = 0;
  ServerStatsSummary server;
  std::map<std::string, int64_t> errors;  // failed requests by gRPC code name
  std::vector<RequestRecord> records;
};

// Reads GetModelInfo into the limits the workload generators need.
absl::StatusOr<ModelLimits> FetchModelLimits(const std::shared_ptr<grpc::Channel>& channel,
                                             const ContextPreparer& prepare_context);

// Runs the workload. Failed requests are recorded, not fatal; InvalidArgument only for bad options.
absl::StatusOr<BenchReport> RunBenchmark(const std::shared_ptr<grpc::Channel>& channel,
                                         const std::vector<BenchRequest>& requests,
                                         const BenchOptions& options);

// The human-readable result table.
std::string FormatReport(const BenchReport& report);

// The whole report as JSON: every figure, the server's stats, and one record per request.
// `settings` (flag name -> value) is echoed under "settings".
std::string ReportToJson(const BenchReport& report,
                         const std::vector<std::pair<std::string, std::string>>& settings);

}  // namespace kvserve::tools

#endif  // KVSERVE_TOOLS_BENCH_RUNNER_H_
