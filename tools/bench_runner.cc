#include "tools/bench_runner.h"

#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <memory>
#include <optional>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "kvserve/v1/generation.grpc.pb.h"
#include "kvserve/v1/memory.grpc.pb.h"
#include "tools/bench_json.h"
#include "tools/client_util.h"

namespace kvserve::tools {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }
double Seconds(const google::protobuf::Duration& d) { return d.seconds() + d.nanos() / 1e9; }

double CpuSeconds(const timeval& tv) { return tv.tv_sec + tv.tv_usec / 1e6; }

// Shared by the dispatcher and the stream callbacks (each holds a reference, so that the last
// callback's unlock never touches a destroyed mutex).
struct RunState {
  absl::Mutex mu;
  int64_t in_flight ABSL_GUARDED_BY(mu) = 0;
  int64_t finished ABSL_GUARDED_BY(mu) = 0;
  int32_t peak_in_flight ABSL_GUARDED_BY(mu) = 0;
  // The dispatcher's conditions.
  int64_t max_in_flight = 0;  // 0 = no cap
  int64_t total = 0;
  bool HasRoom() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    return max_in_flight <= 0 || in_flight < max_in_flight;
  }
  bool AllFinished() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return finished == total; }
};

// One Generate stream. Deletes itself when done.
class StreamCall : public grpc::ClientReadReactor<v1::GenerateResponse> {
 public:
  StreamCall(v1::Generation::Stub* stub, v1::GenerateRequest request, RequestRecord* record,
             StreamTimer timer, std::function<void()> done)
      : stub_(stub),
        request_(std::move(request)),
        record_(record),
        timer_(timer),
        done_(std::move(done)) {}
  grpc::ClientContext* context() { return &context_; }
  void Go() {
    timer_.Start(Clock::now());
    stub_->async()->Generate(&context_, &request_, this);
    StartRead(&message_);
    StartCall();
  }

  // Fails the call without starting its stream (its context could not be prepared).
  void FailUnstarted(const absl::Status& s) {
    timer_.Start(Clock::now());
    OnDone(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, std::string(s.message())));
  }

  void OnReadDone(bool ok) override {
    if (!ok) return;  // OnDone follows
    if (message_.token_ids_size() > 0) timer_.Output(Clock::now(), message_.token_ids_size());
    if (message_.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) {
      record_->prompt_tokens = message_.usage().prompt_tokens();
      record_->cached_prompt_tokens = message_.usage().cached_prompt_tokens();
      record_->preemptions = message_.preemptions();
      record_->server_queued_s = Seconds(message_.timings().queued());
      record_->server_ttft_s = Seconds(message_.timings().time_to_first_token());
    }
    StartRead(&message_);
  }

  void OnDone(const grpc::Status& status) override {
    timer_.Finish(Clock::now());
    record_->ok = status.ok();
    if (!status.ok()) {
      record_->error =
          absl::StrCat(GrpcCodeName(status.error_code()), ": ", status.error_message());
    }
    std::function<void()> done = std::move(done_);
    delete this;
    done();
  }

 private:
  v1::Generation::Stub* stub_;
  grpc::ClientContext context_;
  v1::GenerateRequest request_;
  v1::GenerateResponse message_;
  RequestRecord* record_;
  StreamTimer timer_;
  std::function<void()> done_;
};

// Each request as a Generate stream.
class GrpcSender : public BenchSender {
 public:
  GrpcSender(const std::shared_ptr<grpc::Channel>& channel, BenchOptions options)
      : stub_(v1::Generation::NewStub(channel)), options_(std::move(options)) {}

  void Send(int64_t index, const BenchRequest& br, RequestRecord* record, StreamTimer timer,
            std::function<void()> done) override {
    v1::GenerateRequest request;
    request.set_request_id(absl::StrCat("bench-", index));
    if (!br.prompt_text.empty()) {
      request.set_text(br.prompt_text);
    } else {
      request.mutable_token_ids()->mutable_ids()->Assign(br.prompt_ids.begin(),
                                                         br.prompt_ids.end());
    }
    request.set_max_tokens(br.output_len);
    request.set_ignore_eos(options_.ignore_eos);
    request.mutable_sampling()->set_temperature(options_.temperature);
    request.mutable_sampling()->set_seed(options_.seed + static_cast<uint64_t>(index));
    auto* call = new StreamCall(stub_.get(), std::move(request), record, timer, std::move(done));
    if (options_.prepare_context) {
      if (absl::Status s = options_.prepare_context(call->context()); !s.ok()) {
        call->FailUnstarted(s);
        return;
      }
    }
    call->Go();
  }

 private:
  std::unique_ptr<v1::Generation::Stub> stub_;
  BenchOptions options_;
};

// Samples Memory/GetStats until stopped; keeps the peaks.
class StatsSampler {
 public:
  StatsSampler(const std::shared_ptr<grpc::Channel>& channel, const ContextPreparer& prepare,
               int64_t interval_ms)
      : stub_(v1::Memory::NewStub(channel)), prepare_(prepare), interval_ms_(interval_ms) {}

  absl::StatusOr<v1::MemoryStats> Get() {
    grpc::ClientContext context;
    if (prepare_) {
      if (absl::Status s = prepare_(&context); !s.ok()) return s;
    }
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    v1::MemoryStats stats;
    grpc::Status status = stub_->GetStats(&context, v1::GetStatsRequest(), &stats);
    if (!status.ok()) {
      return absl::UnavailableError(absl::StrCat(
          "Memory/GetStats: ", GrpcCodeName(status.error_code()), ": ", status.error_message()));
    }
    return stats;
  }

  void Observe(const v1::MemoryStats& s) {
    absl::MutexLock lock(&mu_);
    ++summary_.samples;
    summary_.peak_used_bytes = std::max(summary_.peak_used_bytes, s.used_bytes());
    summary_.peak_active_bytes = std::max(summary_.peak_active_bytes, s.active_bytes());
    summary_.peak_usage_ratio = std::max(summary_.peak_usage_ratio, s.usage_ratio());
    summary_.peak_running_requests = std::max(summary_.peak_running_requests, s.running_requests());
    summary_.peak_waiting_requests = std::max(summary_.peak_waiting_requests, s.waiting_requests());
  }

  void Start() {
    if (interval_ms_ <= 0) return;
    thread_ = std::thread([this] {
      while (true) {
        if (auto s = Get(); s.ok()) Observe(*s);
        absl::MutexLock lock(&stop_mu_);
        if (stop_mu_.AwaitWithTimeout(absl::Condition(&stop_), absl::Milliseconds(interval_ms_))) {
          return;
        }
      }
    });
  }
  void Stop() {
    {
      absl::MutexLock lock(&stop_mu_);
      stop_ = true;
    }
    if (thread_.joinable()) thread_.join();
  }
  ServerStatsSummary summary() {
    absl::MutexLock lock(&mu_);
    return summary_;
  }

 private:
  std::unique_ptr<v1::Memory::Stub> stub_;
  ContextPreparer prepare_;
  int64_t interval_ms_;
  std::thread thread_;
  absl::Mutex stop_mu_;
  bool stop_ ABSL_GUARDED_BY(stop_mu_) = false;
  absl::Mutex mu_;
  ServerStatsSummary summary_ ABSL_GUARDED_BY(mu_);
};

void SummarizeReport(BenchReport& r) {
  std::vector<double> ttft, tpot, itl, e2e;
  for (const RequestRecord& rec : r.records) {
    if (!rec.ok) {
      ++r.failed;
      const size_t colon = rec.error.find(':');
      ++r.errors[rec.error.substr(0, colon)];
      continue;
    }
    ++r.completed;
    r.prompt_tokens += rec.prompt_tokens;
    r.cached_prompt_tokens += rec.cached_prompt_tokens;
    r.output_tokens += rec.output_tokens;
    if (rec.output_tokens > 0) ttft.push_back(rec.ttft_s * 1e3);
    if (rec.output_tokens > 1) {
      tpot.push_back((rec.e2e_s - rec.ttft_s) / (rec.output_tokens - 1) * 1e3);
    }
    for (double g : rec.itl_s) itl.push_back(g * 1e3);
    e2e.push_back(rec.e2e_s * 1e3);
  }
  r.ttft_ms = Summarize(std::move(ttft));
  r.tpot_ms = Summarize(std::move(tpot));
  r.itl_ms = Summarize(std::move(itl));
  r.e2e_ms = Summarize(std::move(e2e));
  if (r.duration_s > 0) {
    r.request_throughput = r.completed / r.duration_s;
    r.output_throughput = r.output_tokens / r.duration_s;
    r.total_throughput = (r.prompt_tokens + r.output_tokens) / r.duration_s;
  }
}

}  // namespace

void StreamTimer::Start(Clock::time_point now) {
  start_ = now;
  last_ = now;
  record_->start_s = Seconds(now - bench_start_);
}

void StreamTimer::Output(Clock::time_point now, int32_t tokens) {
  if (record_->token_messages == 0) {
    record_->ttft_s = Seconds(now - start_);
  } else {
    record_->itl_s.push_back(Seconds(now - last_));
  }
  last_ = now;
  record_->output_tokens += tokens;
  ++record_->token_messages;
}

void StreamTimer::Finish(Clock::time_point now) { record_->e2e_s = Seconds(now - start_); }

std::unique_ptr<BenchSender> MakeGrpcSender(const std::shared_ptr<grpc::Channel>& channel,
                                            const BenchOptions& options) {
  return std::make_unique<GrpcSender>(channel, options);
}

absl::StatusOr<ModelLimits> FetchModelLimits(const std::shared_ptr<grpc::Channel>& channel,
                                             const ContextPreparer& prepare_context) {
  grpc::ClientContext context;
  if (prepare_context) {
    if (absl::Status s = prepare_context(&context); !s.ok()) return s;
  }
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  v1::ModelInfo info;
  grpc::Status status =
      v1::Generation::NewStub(channel)->GetModelInfo(&context, v1::GetModelInfoRequest(), &info);
  if (!status.ok()) {
    return absl::UnavailableError(absl::StrCat("GetModelInfo: ", GrpcCodeName(status.error_code()),
                                               ": ", status.error_message()));
  }
  ModelLimits limits;
  limits.vocab_size = info.vocab_size();
  limits.bos_id = info.bos_id();
  limits.eos_id = info.eos_id();
  limits.context_length = info.context_length();
  limits.max_prompt_tokens = info.max_prompt_tokens();
  limits.max_tokens_limit = info.max_tokens_limit();
  return limits;
}

absl::StatusOr<std::string> DetokenizeOverGrpc(const std::shared_ptr<grpc::Channel>& channel,
                                               const ContextPreparer& prepare_context,
                                               const std::vector<int32_t>& ids) {
  grpc::ClientContext context;
  if (prepare_context) {
    if (absl::Status s = prepare_context(&context); !s.ok()) return s;
  }
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  v1::DetokenizeRequest request;
  request.mutable_token_ids()->Assign(ids.begin(), ids.end());
  v1::DetokenizeResponse response;
  grpc::Status status = v1::Generation::NewStub(channel)->Detokenize(&context, request, &response);
  if (!status.ok()) {
    return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                        absl::StrCat("Detokenize: ", status.error_message()));
  }
  return response.text();
}

absl::StatusOr<BenchReport> RunBenchmark(const std::shared_ptr<grpc::Channel>& channel,
                                         const std::vector<BenchRequest>& requests,
                                         const BenchOptions& options) {
  std::unique_ptr<BenchSender> sender = MakeGrpcSender(channel, options);
  return RunBenchmark(*sender, channel, requests, options);
}

absl::StatusOr<BenchReport> RunBenchmark(BenchSender& sender,
                                         const std::shared_ptr<grpc::Channel>& memory_channel,
                                         const std::vector<BenchRequest>& requests,
                                         const BenchOptions& options) {
  if (options.max_concurrency < 0) {
    return absl::InvalidArgumentError("--concurrency must be >= 0");
  }
  if (!(options.request_rate > 0)) {
    return absl::InvalidArgumentError("--request-rate must be > 0 (or inf)");
  }
  if (!(options.burstiness > 0) || !std::isfinite(options.burstiness)) {
    return absl::InvalidArgumentError("--burstiness must be a finite number > 0");
  }
  const int64_t n = static_cast<int64_t>(requests.size());
  std::vector<double> arrivals;
  const bool traced = n > 0 && requests[0].arrival_s.has_value();
  if (traced) {
    for (const BenchRequest& r : requests) arrivals.push_back(r.arrival_s.value_or(0));
  } else {
    arrivals = ArrivalTimes(n, options.request_rate, options.burstiness, options.seed);
  }

  BenchReport report;
  report.num_requests = n;
  report.records.resize(static_cast<size_t>(n));
  std::optional<StatsSampler> sampler;
  absl::StatusOr<v1::MemoryStats> before = absl::UnavailableError(options.no_memory_channel_reason);
  if (memory_channel != nullptr) {
    sampler.emplace(memory_channel, options.prepare_context, options.stats_interval_ms);
    before = sampler->Get();
  }
  auto state_ptr = std::make_shared<RunState>();
  RunState& state = *state_ptr;
  state.max_in_flight = options.max_concurrency;
  state.total = n;

  std::atomic<bool> progress_stop{false};
  std::thread progress;
  if (options.progress) {
    progress = std::thread([&] {
      while (!progress_stop.load()) {
        int64_t finished;
        {
          absl::MutexLock lock(&state.mu);
          finished = state.finished;
        }
        options.progress(finished, n);
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
      }
    });
  }

  rusage usage_before{};
  getrusage(RUSAGE_SELF, &usage_before);
  if (sampler) sampler->Start();
  const Clock::time_point start = Clock::now();
  for (int64_t i = 0; i < n; ++i) {
    const BenchRequest& br = requests[static_cast<size_t>(i)];
    RequestRecord& rec = report.records[static_cast<size_t>(i)];
    rec.index = i;
    rec.scheduled_s = arrivals[static_cast<size_t>(i)];
    rec.expected_output_tokens = br.output_len;
    std::this_thread::sleep_until(start + std::chrono::duration_cast<Clock::duration>(
                                              std::chrono::duration<double>(rec.scheduled_s)));
    {
      absl::MutexLock lock(&state.mu, absl::Condition(&state, &RunState::HasRoom));
      ++state.in_flight;
      state.peak_in_flight = std::max(state.peak_in_flight, static_cast<int32_t>(state.in_flight));
    }
    sender.Send(i, br, &rec, StreamTimer(&rec, start), [state_ptr] {
      absl::MutexLock lock(&state_ptr->mu);
      --state_ptr->in_flight;
      ++state_ptr->finished;
    });
  }
  { absl::MutexLock lock(&state.mu, absl::Condition(&state, &RunState::AllFinished)); }
  report.duration_s = Seconds(Clock::now() - start);
  rusage usage_after{};
  getrusage(RUSAGE_SELF, &usage_after);
  if (sampler) sampler->Stop();
  progress_stop = true;
  if (progress.joinable()) progress.join();
  if (options.progress) options.progress(n, n);
  report.cpu_user_s = CpuSeconds(usage_after.ru_utime) - CpuSeconds(usage_before.ru_utime);
  report.cpu_system_s = CpuSeconds(usage_after.ru_stime) - CpuSeconds(usage_before.ru_stime);
  {
    absl::MutexLock lock(&state.mu);
    report.peak_concurrency = state.peak_in_flight;
  }

  // The engine counts a request as finished, and its tokens as generated, just after it sends
  // the last message, and publishes its counters between steps: give them a moment to catch up
  // with what the client saw (at most 2 s).
  int64_t completed = 0;
  int64_t received_tokens = 0;
  for (const RequestRecord& rec : report.records) {
    completed += rec.ok ? 1 : 0;
    received_tokens += rec.ok ? rec.output_tokens : 0;
  }
  absl::StatusOr<v1::MemoryStats> after = before;
  if (sampler) after = sampler->Get();
  auto behind = [&] {
    return after->requests_finished() - before->requests_finished() < completed ||
           after->generated_tokens() - before->generated_tokens() < received_tokens;
  };
  for (int i = 0; i < 40 && before.ok() && after.ok() && behind(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    after = sampler->Get();
  }
  if (sampler && before.ok() && after.ok()) {
    sampler->Observe(*after);
    ServerStatsSummary s = sampler->summary();
    s.available = true;
    s.capacity_bytes = after->capacity_bytes();
    s.block_bytes = after->block_bytes();
    s.preemptions = after->preemptions() - before->preemptions();
    s.prefix_query_tokens = after->prefix_query_tokens() - before->prefix_query_tokens();
    s.prefix_hit_tokens = after->prefix_hit_tokens() - before->prefix_hit_tokens();
    s.prefix_hit_rate = s.prefix_query_tokens > 0
                            ? static_cast<double>(s.prefix_hit_tokens) / s.prefix_query_tokens
                            : 0.0;
    s.evicted_blocks = after->evicted_blocks() - before->evicted_blocks();
    s.requests_finished = after->requests_finished() - before->requests_finished();
    s.requests_failed = after->requests_failed() - before->requests_failed();
    s.requests_cancelled = after->requests_cancelled() - before->requests_cancelled();
    s.prompt_tokens = after->prompt_tokens() - before->prompt_tokens();
    s.generated_tokens = after->generated_tokens() - before->generated_tokens();
    report.server = s;
  } else {
    report.server.error = std::string((before.ok() ? after.status() : before.status()).message());
  }
  SummarizeReport(report);
  return report;
}

std::string FormatReport(const BenchReport& r) {
  std::string out;
  auto line = [&out](const std::string& label, const std::string& value) {
    absl::StrAppendFormat(&out, "%-40s %s\n", label, value);
  };
  auto f = [](double v, int digits) { return absl::StrFormat("%.*f", digits, v); };
  out += "================ Serving benchmark ================\n";
  if (!r.protocol.empty()) line("Protocol:", r.protocol);
  line("Successful requests:", absl::StrCat(r.completed));
  line("Failed requests:", absl::StrCat(r.failed));
  for (const auto& [code, count] : r.errors)
    line(absl::StrCat("  ", code, ":"), absl::StrCat(count));
  line("Peak concurrency (client):", absl::StrCat(r.peak_concurrency));
  line("Benchmark duration (s):", f(r.duration_s, 2));
  line("Prompt tokens:", absl::StrCat(r.prompt_tokens));
  line("  of which from the prefix cache:", absl::StrCat(r.cached_prompt_tokens));
  line("Output tokens:", absl::StrCat(r.output_tokens));
  line("Request throughput (req/s):", f(r.request_throughput, 2));
  line("Output token throughput (tok/s):", f(r.output_throughput, 2));
  line("Total token throughput (tok/s):", f(r.total_throughput, 2));
  absl::StrAppendFormat(&out, "%-18s %10s %10s %10s %10s %10s\n", "latency (ms)", "mean", "median",
                        "p90", "p99", "max");
  auto row = [&](const char* name, const LatencySummary& s) {
    absl::StrAppendFormat(&out, "%-18s %10.2f %10.2f %10.2f %10.2f %10.2f\n", name, s.mean,
                          s.median, s.p90, s.p99, s.max);
  };
  row("TTFT", r.ttft_ms);
  row("TPOT", r.tpot_ms);
  row("ITL", r.itl_ms);
  row("E2E", r.e2e_ms);
  out += "---------------- Server (Memory service) ----------\n";
  if (!r.server.available) {
    line("unavailable:", r.server.error);
  } else {
    const ServerStatsSummary& s = r.server;
    line("Peak KV used (MiB):",
         absl::StrFormat("%.2f of %.2f (%.1f%%)", s.peak_used_bytes / 1048576.0,
                         s.capacity_bytes / 1048576.0, 100.0 * s.peak_usage_ratio));
    line("Peak KV active (MiB):", f(s.peak_active_bytes / 1048576.0, 2));
    line("Peak running / waiting requests:",
         absl::StrCat(s.peak_running_requests, " / ", s.peak_waiting_requests));
    line("Preemptions:", absl::StrCat(s.preemptions));
    line("Prefix cache hit rate:",
         absl::StrFormat("%.1f%% (%d of %d prompt tokens)", 100.0 * s.prefix_hit_rate,
                         s.prefix_hit_tokens, s.prefix_query_tokens));
    line("Evicted cached blocks:", absl::StrCat(s.evicted_blocks));
    line("Requests finished (server):", absl::StrCat(s.requests_finished));
    line("Tokens generated (server):", absl::StrCat(s.generated_tokens));
    line("Stats samples:", absl::StrCat(s.samples));
  }
  out += "---------------- Load generator -------------------\n";
  const double cpu = r.cpu_user_s + r.cpu_system_s;
  line("CPU time (s):",
       absl::StrFormat("%.2f (user %.2f, system %.2f)", cpu, r.cpu_user_s, r.cpu_system_s));
  line("CPU use (% of one core):", f(r.duration_s > 0 ? 100.0 * cpu / r.duration_s : 0.0, 1));
  line("CPU per request (us):", f(r.num_requests > 0 ? 1e6 * cpu / r.num_requests : 0.0, 1));
  out += "===================================================\n";
  return out;
}

std::string ReportToJson(const BenchReport& r,
                         const std::vector<std::pair<std::string, std::string>>& settings) {
  JsonWriter w;
  w.BeginObject();
  w.Key("settings").BeginObject();
  for (const auto& [k, v] : settings) w.Key(k).String(v);
  w.EndObject();
  if (!r.protocol.empty()) w.Key("protocol").String(r.protocol);
  w.Key("duration_s").Number(r.duration_s);
  w.Key("num_requests").Int(r.num_requests);
  w.Key("completed").Int(r.completed);
  w.Key("failed").Int(r.failed);
  w.Key("errors").BeginObject();
  for (const auto& [code, count] : r.errors) w.Key(code).Int(count);
  w.EndObject();
  w.Key("peak_concurrency").Int(r.peak_concurrency);
  w.Key("prompt_tokens").Int(r.prompt_tokens);
  w.Key("cached_prompt_tokens").Int(r.cached_prompt_tokens);
  w.Key("output_tokens").Int(r.output_tokens);
  w.Key("request_throughput").Number(r.request_throughput);
  w.Key("output_throughput").Number(r.output_throughput);
  w.Key("total_token_throughput").Number(r.total_throughput);
  auto summary = [&w](const char* name, const LatencySummary& s) {
    w.Key(name).BeginObject();
    w.Key("count").Int(s.count);
    w.Key("mean").Number(s.mean);
    w.Key("median").Number(s.median);
    w.Key("p90").Number(s.p90);
    w.Key("p99").Number(s.p99);
    w.Key("min").Number(s.min);
    w.Key("max").Number(s.max);
    w.EndObject();
  };
  summary("ttft_ms", r.ttft_ms);
  summary("tpot_ms", r.tpot_ms);
  summary("itl_ms", r.itl_ms);
  summary("e2e_ms", r.e2e_ms);
  w.Key("load_generator").BeginObject();
  w.Key("cpu_user_s").Number(r.cpu_user_s);
  w.Key("cpu_system_s").Number(r.cpu_system_s);
  w.Key("cpu_fraction_of_one_core")
      .Number(r.duration_s > 0 ? (r.cpu_user_s + r.cpu_system_s) / r.duration_s : 0.0);
  w.EndObject();
  const ServerStatsSummary& s = r.server;
  w.Key("server").BeginObject();
  w.Key("available").Bool(s.available);
  if (!s.available) w.Key("error").String(s.error);
  w.Key("samples").Int(s.samples);
  w.Key("capacity_bytes").Int(s.capacity_bytes);
  w.Key("block_bytes").Int(s.block_bytes);
  w.Key("peak_used_bytes").Int(s.peak_used_bytes);
  w.Key("peak_active_bytes").Int(s.peak_active_bytes);
  w.Key("peak_usage_ratio").Number(s.peak_usage_ratio);
  w.Key("peak_running_requests").Int(s.peak_running_requests);
  w.Key("peak_waiting_requests").Int(s.peak_waiting_requests);
  w.Key("preemptions").Int(s.preemptions);
  w.Key("prefix_query_tokens").Int(s.prefix_query_tokens);
  w.Key("prefix_hit_tokens").Int(s.prefix_hit_tokens);
  w.Key("prefix_hit_rate").Number(s.prefix_hit_rate);
  w.Key("evicted_blocks").Int(s.evicted_blocks);
  w.Key("requests_finished").Int(s.requests_finished);
  w.Key("requests_failed").Int(s.requests_failed);
  w.Key("requests_cancelled").Int(s.requests_cancelled);
  w.Key("prompt_tokens").Int(s.prompt_tokens);
  w.Key("generated_tokens").Int(s.generated_tokens);
  w.EndObject();
  w.Key("requests").BeginArray();
  for (const RequestRecord& rec : r.records) {
    w.BeginObject();
    w.Key("index").Int(rec.index);
    w.Key("ok").Bool(rec.ok);
    if (!rec.ok) w.Key("error").String(rec.error);
    w.Key("scheduled_s").Number(rec.scheduled_s);
    w.Key("start_s").Number(rec.start_s);
    w.Key("ttft_s").Number(rec.ttft_s);
    w.Key("e2e_s").Number(rec.e2e_s);
    w.Key("prompt_tokens").Int(rec.prompt_tokens);
    w.Key("cached_prompt_tokens").Int(rec.cached_prompt_tokens);
    w.Key("output_tokens").Int(rec.output_tokens);
    w.Key("token_messages").Int(rec.token_messages);
    w.Key("usage_reported").Bool(rec.usage_reported);
    w.Key("expected_output_tokens").Int(rec.expected_output_tokens);
    w.Key("preemptions").Int(rec.preemptions);
    w.Key("server_queued_s").Number(rec.server_queued_s);
    w.Key("server_ttft_s").Number(rec.server_ttft_s);
    w.Key("itl_s").BeginArray();
    for (double g : rec.itl_s) w.Number(g);
    w.EndArray();
    w.EndObject();
  }
  w.EndArray();
  w.EndObject();
  return w.str() + "\n";
}

}  // namespace kvserve::tools
