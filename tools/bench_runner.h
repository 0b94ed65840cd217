// The serving benchmark's load generator: sends a workload (bench_workload.h) to a running server
// at Poisson/gamma arrival times or a fixed concurrency, times every token as it arrives, samples
// the server's Memory service during the run, and summarizes (bench_stats.h). The requests go
// through a BenchSender: gRPC streams (MakeGrpcSender, here) or the OpenAI-compatible HTTP API
// (MakeOpenAiSender, bench_openai.h); the dispatching, timing and report are the same for both.
//
// Timing (StreamTimer): a request's clock starts when it is sent (its gRPC stream started, or its
// HTTP connection opened). TTFT = until the first message carrying output (a gRPC message with
// tokens, an SSE event with text); ITL = the gaps between consecutive messages carrying output
// (a message carries several tokens when the server produced them before the previous one was
// sent); TPOT = (E2E - TTFT) / (output tokens - 1) per request; E2E = until the stream's end (the
// final gRPC status, or "[DONE]").
//
// Thread-safety: RunBenchmark blocks its caller; it uses the sender's threads (gRPC's callback
// threads, the HTTP client's) and two helper threads of its own (Memory sampling, progress), all
// joined before it returns.
#ifndef KVSERVE_TOOLS_BENCH_RUNNER_H_
#define KVSERVE_TOOLS_BENCH_RUNNER_H_

#include <chrono>
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
  // Why the Memory service is not sampled when RunBenchmark gets no channel for it.
  std::string no_memory_channel_reason = "no Memory service to sample";
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
  int32_t output_tokens = 0;         // tokens received (OpenAI: the usage's, see bench_openai.h)
  bool usage_reported = true;        // false: the server sent no usage; output_tokens are counted
  int32_t token_messages = 0;        // stream messages that carried output (itl_s has one fewer)
  int32_t expected_output_tokens = 0;
  int32_t preemptions = 0;
  double server_queued_s = 0;  // the server's own timings
  double server_ttft_s = 0;
  bool ok = false;
  std::string error;  // "CODE: message" when !ok (CODE: a gRPC / absl status code name)
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
  std::string protocol;  // what was measured, for the table and the JSON ("" = not shown)
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

// Times one request into its record, the same way for every protocol (above). Not thread-safe:
// one request's events arrive one at a time.
class StreamTimer {
 public:
  using Clock = std::chrono::steady_clock;
  StreamTimer(RequestRecord* record, Clock::time_point bench_start)
      : record_(record), bench_start_(bench_start) {}
  // The request is sent: its clock starts (record->start_s).
  void Start(Clock::time_point now);
  // A message carrying output arrived at `now`, with `tokens` tokens (added to output_tokens).
  void Output(Clock::time_point now, int32_t tokens);
  // The stream ended (record->e2e_s).
  void Finish(Clock::time_point now);

 private:
  RequestRecord* record_;
  Clock::time_point bench_start_;
  Clock::time_point start_;
  Clock::time_point last_;
};

// Sends the benchmark's requests over one protocol.
class BenchSender {
 public:
  virtual ~BenchSender() = default;
  // Starts request `index`, to be timed by `timer` into `record`, and returns. Sets record->ok,
  // or record->error ("CODE: message"), and the usage fields, then calls `done` exactly once, from
  // any thread, when the record is final.
  virtual void Send(int64_t index, const BenchRequest& request, RequestRecord* record,
                    StreamTimer timer, std::function<void()> done) = 0;
};

// Sends each request as a Generate stream on `channel` (options: sampling, ignore_eos,
// prepare_context).
std::unique_ptr<BenchSender> MakeGrpcSender(const std::shared_ptr<grpc::Channel>& channel,
                                            const BenchOptions& options);

// Reads GetModelInfo into the limits the workload generators need.
absl::StatusOr<ModelLimits> FetchModelLimits(const std::shared_ptr<grpc::Channel>& channel,
                                             const ContextPreparer& prepare_context);

// Detokenize over gRPC: the text of `ids`.
absl::StatusOr<std::string> DetokenizeOverGrpc(const std::shared_ptr<grpc::Channel>& channel,
                                               const ContextPreparer& prepare_context,
                                               const std::vector<int32_t>& ids);

// Runs the workload through `sender`, sampling the Memory service over `memory_channel` (null:
// no samples, and report.server says so). Failed requests are recorded, not fatal;
// InvalidArgument only for bad options.
absl::StatusOr<BenchReport> RunBenchmark(BenchSender& sender,
                                         const std::shared_ptr<grpc::Channel>& memory_channel,
                                         const std::vector<BenchRequest>& requests,
                                         const BenchOptions& options);
// The same over gRPC alone: MakeGrpcSender(channel) and the Memory service of `channel`.
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
