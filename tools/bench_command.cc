// `kvserve bench`: the serving benchmark. Loads a running server over gRPC, or over an
// OpenAI-compatible HTTP API (--protocol openai: kvserve's or another server's), with a workload
// (random, shared-prefix, long-context or a JSONL trace; docs/bench.md), at Poisson/gamma arrivals
// or a fixed concurrency, and prints throughput and latency percentiles, the server's KV peak,
// preemptions and prefix hit rate (from kvserve's gRPC Memory service), and its own CPU time.
// --json FILE writes everything.
#include <sys/resource.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <memory>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "tools/bench_openai.h"
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

// Every request in flight over HTTP holds a socket: lift the soft limit on open files to the hard
// one, so that a run without a concurrency cap is not cut short at 1024.
void RaiseOpenFileLimit() {
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur < limit.rlim_max) {
    limit.rlim_cur = limit.rlim_max;
    setrlimit(RLIMIT_NOFILE, &limit);
  }
}

// --api-key, else $KVSERVE_API_KEY.
std::string ApiKey(const FlagSet& flags) {
  std::string key = flags.GetString("api-key");
  if (key.empty()) {
    if (const char* env = std::getenv("KVSERVE_API_KEY"); env != nullptr) key = env;
  }
  return key;
}

}  // namespace

int RunBenchCommand(const std::vector<std::string>& args) {
  FlagSet flags("bench");
  AddConnectionFlags(flags);
  flags.String("protocol", "grpc",
               "grpc (kvserve's Generate stream at --addr) or openai (an OpenAI-compatible HTTP "
               "API at --url)");
  flags.String("url", "",
               "openai: the server's base URL, http(s)://host:port (a trailing /v1 is fine; "
               "https trusts the system's CAs or --tls-ca). --addr, when given too, is kvserve's "
               "gRPC address for the Memory service, the model's limits and chat prompts' text");
  flags.String("endpoint", "completions",
               "openai: completions (/v1/completions) or chat (/v1/chat/completions)");
  flags.String("model", "", "openai: the model to name (default: the first of GET /v1/models)");
  flags.Int("vocab-size", 0,
            "openai: the model's vocabulary, for random prompts; 0 = GetModelInfo with --addr, "
            "else what /v1/models says");
  flags.Int("context-length", 0,
            "openai: the model's context in tokens; 0 = GetModelInfo with --addr, else what "
            "/v1/models says (unknown: not checked)");
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

  const std::string protocol = flags.GetString("protocol");
  const bool openai = protocol == "openai";
  if (!openai && protocol != "grpc") {
    return Usage(flags, absl::StrCat("--protocol: '", protocol, "' is not grpc or openai"));
  }
  absl::StatusOr<OpenAiEndpoint> endpoint = ParseOpenAiEndpoint(flags.GetString("endpoint"));
  if (!endpoint.ok()) return Usage(flags, std::string(endpoint.status().message()));
  if (flags.GetInt("vocab-size") < 0) return Usage(flags, "--vocab-size must be >= 0");
  if (flags.GetInt("context-length") < 0) return Usage(flags, "--context-length must be >= 0");
  if (!openai) {
    for (const char* name : {"url", "endpoint", "model", "vocab-size", "context-length"}) {
      if (flags.IsSet(name)) {
        return Usage(flags, absl::StrCat("--", name, " is for --protocol openai"));
      }
    }
  } else if (flags.GetString("url").empty()) {
    return Usage(flags, "--protocol openai needs --url http(s)://HOST:PORT");
  }

  // gRPC: the Generate stream and the Memory service. OpenAI: the HTTP API, and kvserve's gRPC
  // services only when --addr is given.
  std::shared_ptr<grpc::Channel> channel;
  ModelLimits limits;
  if (!openai || flags.IsSet("addr")) {
    auto made = MakeChannel(flags);
    if (!made.ok()) return Fail(made.status());
    channel = *made;
    absl::StatusOr<ModelLimits> fetched = FetchModelLimits(channel, options.prepare_context);
    if (!fetched.ok()) return Fail(fetched.status());
    limits = *fetched;
  }
  std::unique_ptr<OpenAiClient> client;
  std::string model;
  if (openai) {
    OpenAiClientOptions o;
    o.api_key = ApiKey(flags);
    o.ca_file = flags.GetString("tls-ca");
    o.timeout_s = flags.GetFloat("timeout");
    o.threads = 2;
    RaiseOpenFileLimit();
    auto created = OpenAiClient::Create(flags.GetString("url"), o);
    if (!created.ok()) return Fail(created.status());
    client = std::move(*created);
    auto choice = ChooseOpenAiModel(*client, flags.GetString("model"));
    if (!choice.ok()) return Fail(choice.status());
    model = choice->model;
    if (channel == nullptr) limits = choice->limits;
    if (flags.IsSet("vocab-size"))
      limits.vocab_size = static_cast<int32_t>(flags.GetInt("vocab-size"));
    if (flags.IsSet("context-length")) {
      limits.context_length = static_cast<int32_t>(flags.GetInt("context-length"));
    }
    options.no_memory_channel_reason =
        "the OpenAI API has no Memory service (give --addr, kvserve's gRPC address, to sample it)";
  }

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
    auto parsed = ParseTrace(text.str(), path, limits, options.seed);
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
    auto generated = GenerateWorkload(w, limits);
    if (!generated.ok()) return Usage(flags, std::string(generated.status().message()));
    requests = std::move(*generated);
    if (warmup > 0) {
      // Warm-up requests of the same shape from another seed, so that the measured requests do
      // not find their prompts in the prefix cache.
      w.num_requests = warmup;
      w.seed = options.seed ^ 0x5EEDF00Dull;
      auto warm_generated = GenerateWorkload(w, limits);
      if (!warm_generated.ok()) return Fail(warm_generated.status());
      warm = std::move(*warm_generated);
    }
  }

  if (openai && *endpoint == OpenAiEndpoint::kChat) {
    // Chat sends text: the text of the generated ids, from kvserve's Detokenize over gRPC or the
    // server's POST /detokenize.
    Detokenizer detokenize = [&](const std::vector<int32_t>& ids) {
      return channel != nullptr ? DetokenizeOverGrpc(channel, options.prepare_context, ids)
                                : client->Detokenize(model, ids);
    };
    for (std::vector<BenchRequest>* batch : {&requests, &warm}) {
      if (absl::Status s = PromptIdsToText(*batch, detokenize); !s.ok()) {
        return Fail(
            absl::Status(s.code(), absl::StrCat(s.message(),
                                                " (--endpoint chat sends text: a trace with "
                                                "\"prompt\" text needs no detokenization)")));
      }
    }
  }
  std::unique_ptr<BenchSender> sender =
      openai ? MakeOpenAiSender(client.get(), *endpoint, model, options)
             : MakeGrpcSender(channel, options);
  const std::string described =
      openai
          ? absl::StrCat("openai ", flags.GetString("endpoint"), ", ", flags.GetString("url"),
                         ", model ", model.empty() ? "(none)" : model,
                         channel != nullptr ? absl::StrCat("; gRPC ", flags.GetString("addr")) : "")
          : absl::StrCat("grpc, ", flags.GetString("addr"));

  if (!warm.empty()) {
    for (BenchRequest& r : warm) r.arrival_s.reset();
    BenchOptions warm_options = options;
    warm_options.max_concurrency = 1;
    warm_options.request_rate = std::numeric_limits<double>::infinity();
    warm_options.stats_interval_ms = 0;
    auto warm_report = RunBenchmark(*sender, channel, warm, warm_options);
    if (!warm_report.ok()) return Fail(warm_report.status());
  }

  if (isatty(STDERR_FILENO) && !flags.GetBool("no-progress")) options.progress = DrawProgress;
  auto report = RunBenchmark(*sender, channel, requests, options);
  if (!report.ok()) return Fail(report.status());
  report->protocol = described;
  std::fputs(FormatReport(*report).c_str(), stdout);
  int64_t counted = 0;
  for (const RequestRecord& r : report->records) counted += r.ok && !r.usage_reported ? 1 : 0;
  if (counted > 0) {
    std::fprintf(stderr,
                 "kvserve bench: %lld responses carried no usage: their output tokens are the "
                 "events carrying text, their prompt tokens the ids sent\n",
                 static_cast<long long>(counted));
  }
  std::fflush(stdout);

  if (const std::string json = flags.GetString("json"); !json.empty()) {
    std::vector<std::pair<std::string, std::string>> settings;
    for (const char* name :
         {"protocol",     "addr",         "url",          "endpoint",    "model",
          "num-requests", "concurrency",  "request-rate", "burstiness",  "workload",
          "trace",        "input-len",    "output-len",   "range-ratio", "prefix-len",
          "suffix-len",   "num-prefixes", "seed",         "temperature", "warmup"}) {
      // Every setting, given or default, so that a result file describes itself.
      const std::string n = name;
      std::string value;
      if (n == "burstiness" || n == "range-ratio" || n == "temperature") {
        value = absl::StrCat(flags.GetFloat(n));
      } else if (n == "model") {
        value = model;  // the one named in the requests
      } else if (n == "protocol" || n == "addr" || n == "url" || n == "endpoint" ||
                 n == "request-rate" || n == "workload" || n == "trace") {
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
