// `kvserve bench`: the serving benchmark. Loads a running server over gRPC with a workload
// (random, shared-prefix, long-context or a JSONL trace; docs/bench.md), at Poisson/gamma arrivals
// or a fixed concurrency, and prints throughput and latency percentiles, the server's KV peak,
// preemptions and prefix hit rate, and its own CPU time. --json FILE writes everything.
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "tools/bench_runner.h"
#include "tools/bench_workload.h"
#include "tools/client_util.h"
#include "tools/commands.h"
#include "tools/flags.h"

namespace kvserve::tools {
namespace {

int Usage(const FlagSet& flags, const std::string& message) {
  std::fprintf(stderr, "kvserve bench: %s\n\n%s", message.c_str(), flags.Usage().c_str());
  return 2;
}

int Fail(const absl::Status& status) {
  std::fprintf(stderr, "kvserve bench: %s\n", std::string(status.message()).c_str());
  return 1;
}

void DrawProgress(int64_t done, int64_t total) {
  constexpr int kWidth = 40;
  const int filled = total > 0 ? static_cast<int>(kWidth * done / total) : kWidth;
  std::string bar(static_cast<size_t>(filled), '#');
  bar.resize(kWidth, '.');
  std::fprintf(stderr, "\r[%s] %lld/%lld requests", bar.c_str(), static_cast<long long>(done),
               static_cast<long long>(total));
  if (done == total) std::fputc('\n', stderr);
  std::fflush(stderr);
}

}  // namespace

int RunBenchCommand(const std::vector<std::string>& args) {
  FlagSet flags("bench");
  AddConnectionFlags(flags);
  flags.Int("num-requests", 100, "requests to send (not for --workload trace)");
  flags.Int("concurrency", 0, "requests in flight at most; 0 = no cap");
  flags.String("request-rate", "inf",
               "mean arrival rate, requests/s (Poisson, or gamma with --burstiness); inf = all at "
               "once");
  flags.Float("burstiness", 1.0, "gamma shape of the arrival gaps: 1 = Poisson, <1 burstier");
  flags.String("workload", "random", "random, shared-prefix, long-context or trace");
  flags.String("trace", "", "JSONL trace file for --workload trace (docs/bench.md)");
  flags.Int("input-len", 0, "prompt tokens (random: default 128; long-context: default a range)");
  flags.Int("output-len", 128, "tokens to generate per request");
  flags.Float("range-ratio", 0.0, "random: lengths uniform in len * [1 - r, 1 + r], r in [0, 1)");
  flags.Int("prefix-len", 256, "shared-prefix: tokens of each shared prefix");
  flags.Int("suffix-len", 32, "shared-prefix: random tokens after the prefix");
  flags.Int("num-prefixes", 4, "shared-prefix: distinct prefixes");
  flags.Int("seed", 0, "seed of the prompts, the arrival times and the sampling");
  flags.Float("temperature", 0.0, "sampling temperature of every request; 0 = greedy");
  flags.Int("warmup", 0, "requests of the same shape sent one at a time before the measured run");
  flags.Int("stats-interval-ms", 50, "Memory/GetStats sampling period; 0 = before and after only");
  flags.String("json", "", "write every figure and every request's record to this file");
  flags.Bool("no-progress", "no progress bar (it is shown only when stderr is a terminal)");
  if (absl::Status s = flags.Parse(args); !s.ok()) return Usage(flags, std::string(s.message()));
  if (flags.help_requested()) {
    std::fputs(flags.Usage().c_str(), stdout);
    return 0;
  }

  BenchOptions options;
  options.max_concurrency = flags.GetInt("concurrency");
  if (options.max_concurrency < 0) return Usage(flags, "--concurrency must be >= 0");
  if (!absl::SimpleAtod(flags.GetString("request-rate"), &options.request_rate) ||
      !(options.request_rate > 0)) {
    return Usage(flags, absl::StrCat("--request-rate: '", flags.GetString("request-rate"),
                                     "' is not a number > 0 or inf"));
  }
  options.burstiness = flags.GetFloat("burstiness");
  if (!(options.burstiness > 0) || !std::isfinite(options.burstiness)) {
    return Usage(flags, "--burstiness must be a finite number > 0");
  }
  if (flags.GetInt("seed") < 0) return Usage(flags, "--seed must be >= 0");
  options.seed = static_cast<uint64_t>(flags.GetInt("seed"));
  options.temperature = static_cast<float>(flags.GetFloat("temperature"));
  if (options.temperature < 0) return Usage(flags, "--temperature must be >= 0");
  options.stats_interval_ms = flags.GetInt("stats-interval-ms");
  if (options.stats_interval_ms < 0) return Usage(flags, "--stats-interval-ms must be >= 0");
  if (flags.GetFloat("timeout") < 0) return Usage(flags, "--timeout must be >= 0");
  options.prepare_context = [&flags](grpc::ClientContext* context) {
    return PrepareContext(flags, context);
  };

  auto channel = MakeChannel(flags);
  if (!channel.ok()) return Fail(channel.status());
  absl::StatusOr<ModelLimits> limits = FetchModelLimits(*channel, options.prepare_context);
  if (!limits.ok()) return Fail(limits.status());

  std::vector<BenchRequest> requests;
  std::vector<BenchRequest> warm;
  const int64_t warmup = flags.GetInt("warmup");
  if (warmup < 0) return Usage(flags, "--warmup must be >= 0");
  const std::string workload = flags.GetString("workload");
  if (workload == "trace") {
    const std::string path = flags.GetString("trace");
    if (path.empty()) return Usage(flags, "--workload trace needs --trace FILE");
    std::ifstream in(path, std::ios::binary);
    if (!in) return Fail(absl::NotFoundError(absl::StrCat("--trace: cannot read ", path)));
    std::stringstream text;
    text << in.rdbuf();
    auto parsed = ParseTrace(text.str(), path, *limits, options.seed);
    if (!parsed.ok()) return Fail(parsed.status());
    requests = std::move(*parsed);
    // Warm-up: the trace's first requests.
    warm.assign(
        requests.begin(),
        requests.begin() + std::min<int64_t>(warmup, static_cast<int64_t>(requests.size())));
  } else {
    WorkloadOptions w;
    w.kind = workload;
    w.num_requests = flags.GetInt("num-requests");
    w.input_len = static_cast<int32_t>(flags.GetInt("input-len"));
    w.output_len = static_cast<int32_t>(flags.GetInt("output-len"));
    w.range_ratio = flags.GetFloat("range-ratio");
    w.prefix_len = static_cast<int32_t>(flags.GetInt("prefix-len"));
    w.suffix_len = static_cast<int32_t>(flags.GetInt("suffix-len"));
    w.num_prefixes = static_cast<int32_t>(flags.GetInt("num-prefixes"));
    w.seed = options.seed;
    auto generated = GenerateWorkload(w, *limits);
    if (!generated.ok()) return Usage(flags, std::string(generated.status().message()));
    requests = std::move(*generated);
    if (warmup > 0) {
      // Warm-up requests of the same shape from another seed, so that the measured requests do
      // not find their prompts in the prefix cache.
      w.num_requests = warmup;
      w.seed = options.seed ^ 0x5EEDF00Dull;
      auto warm_generated = GenerateWorkload(w, *limits);
      if (!warm_generated.ok()) return Fail(warm_generated.status());
      warm = std::move(*warm_generated);
    }
  }

  if (!warm.empty()) {
    for (BenchRequest& r : warm) r.arrival_s.reset();
    BenchOptions warm_options = options;
    warm_options.max_concurrency = 1;
    warm_options.request_rate = std::numeric_limits<double>::infinity();
    warm_options.stats_interval_ms = 0;
    auto warm_report = RunBenchmark(*channel, warm, warm_options);
    if (!warm_report.ok()) return Fail(warm_report.status());
  }

  if (isatty(STDERR_FILENO) && !flags.GetBool("no-progress")) options.progress = DrawProgress;
  auto report = RunBenchmark(*channel, requests, options);
  if (!report.ok()) return Fail(report.status());
  std::fputs(FormatReport(*report).c_str(), stdout);
  std::fflush(stdout);

  if (const std::string json = flags.GetString("json"); !json.empty()) {
    std::vector<std::pair<std::string, std::string>> settings;
    for (const char* name :
         {"addr", "num-requests", "concurrency", "request-rate", "burstiness", "workload", "trace",
          "input-len", "output-len", "range-ratio", "prefix-len", "suffix-len", "num-prefixes",
          "seed", "temperature", "warmup"}) {
      // Every setting, given or default, so that a result file describes itself.
      const std::string n = name;
      std::string value;
      if (n == "burstiness" || n == "range-ratio" || n == "temperature") {
        value = absl::StrCat(flags.GetFloat(n));
      } else if (n == "addr" || n == "request-rate" || n == "workload" || n == "trace") {
        value = flags.GetString(n);
      } else {
        value = absl::StrCat(flags.GetInt(n));
      }
      settings.emplace_back(n, value);
    }
    std::ofstream out(json, std::ios::binary | std::ios::trunc);
    out << ReportToJson(*report, settings);
    out.close();
    if (!out) return Fail(absl::InternalError(absl::StrCat("--json: cannot write ", json)));
  }
  return report->failed == 0 ? 0 : 1;
}

}  // namespace kvserve::tools
