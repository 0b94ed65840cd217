// Serving throughput of the engine (scheduler + forward pass), in process: N concurrent streams
// with fixed prompt and output lengths, against one stream alone. Also reports the scheduler's
// own share of step time (everything but the forward pass). One consumer thread drains every
// stream as the engine notifies it, as the server's stream pump does.
//
//   serving_bench [--model PATH] [--prompt-tokens 64] [--output-tokens 128] [--streams 32]
//                 [--reps 3] [--kv-format fp32] [--mutex-checks 0]
#include <algorithm>
#include <atomic>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "engine/runtime/engine.h"
#include "spdlog/spdlog.h"

namespace {

using kvserve::engine::Engine;
using kvserve::engine::EngineOptions;
using kvserve::engine::EngineRequest;
using kvserve::engine::StreamEvent;

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

struct RunResult {
  double tokens_per_second;
  double scheduler_share;  // step wall time outside the forward pass / step wall time
  double scheduler_us_per_step;
  double step_us;
};

RunResult RunOnce(Engine& engine, int streams, int prompt_tokens, int output_tokens, int salt) {
  std::vector<std::shared_ptr<kvserve::engine::RequestStream>> handles;
  const auto before = engine.Stats();
  const absl::Time start = absl::Now();
  for (int i = 0; i < streams; ++i) {
    EngineRequest r;
    r.prompt.push_back(1);
    // Distinct prompts of the requested length (token ids from the normal vocabulary range).
    for (int t = 1; t < prompt_tokens; ++t) r.prompt.push_back(300 + (t * 7 + i * 13 + salt) % 200);
    r.max_tokens = output_tokens;
    r.ignore_eos = true;
    auto s = engine.Submit(r);
    if (!s.ok()) {
      std::fprintf(stderr, "submit: %s\n", std::string(s.status().message()).c_str());
      std::exit(1);
    }
    handles.push_back(*s);
  }
  // One consumer drains every stream as its events arrive, as the server's stream pump does: a
  // stream's listener (run on the engine thread after a push) posts it to a ready list once, and
  // this thread takes the events of every posted stream.
  struct Ready {
    absl::Mutex mu;
    std::vector<int> list ABSL_GUARDED_BY(mu);
  } ready;
  std::vector<std::unique_ptr<std::atomic<bool>>> posted;
  for (int i = 0; i < streams; ++i) posted.push_back(std::make_unique<std::atomic<bool>>(false));
  for (int i = 0; i < streams; ++i) {
    std::atomic<bool>* flag = posted[i].get();
    handles[i]->SetListener([&ready, flag, i] {
      if (flag->exchange(true, std::memory_order_acq_rel)) return;
      absl::MutexLock lock(&ready.mu);
      ready.list.push_back(i);
    });
  }
  int64_t tokens = 0;
  int finished = 0;
  std::vector<StreamEvent> events;
  std::vector<int> batch;
  while (finished < streams) {
    {
      absl::MutexLock lock(&ready.mu);
      auto any = [&ready]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(ready.mu) { return !ready.list.empty(); };
      if (!ready.mu.AwaitWithTimeout(absl::Condition(&any), absl::Seconds(60))) {
        std::fprintf(stderr, "no output for 60 s\n");
        std::exit(1);
      }
      batch.swap(ready.list);
    }
    for (int i : batch) {
      // Cleared before taking: an event pushed meanwhile posts the stream again.
      posted[i]->store(false, std::memory_order_release);
      events.clear();
      if (handles[i]->Take(&events)) {
        for (const StreamEvent& e : events) finished += e.final;
      }
      for (const StreamEvent& e : events) {
        tokens += static_cast<int64_t>(e.token_ids.size());
        if (e.final && !e.status.ok()) {
          std::fprintf(stderr, "request failed: %s\n", std::string(e.status.message()).c_str());
          std::exit(1);
        }
      }
    }
    batch.clear();
  }
  // The listeners point into this frame.
  for (auto& h : handles) h->SetListener(nullptr);
  const double seconds = absl::ToDoubleSeconds(absl::Now() - start);
  engine.WaitIdle(absl::Seconds(10));
  const auto after = engine.Stats();
  const double step = absl::ToDoubleSeconds(after.step_time - before.step_time);
  // The scheduler's own time: the engine thread's wall time in steps outside the forward pass.
  const double sched = step - absl::ToDoubleSeconds(after.forward_time - before.forward_time);
  const double steps = static_cast<double>(std::max<int64_t>(1, after.steps - before.steps));
  return {static_cast<double>(tokens) / seconds, step > 0 ? sched / step : 0, 1e6 * sched / steps,
          1e6 * step / steps};
}

}  // namespace

int main(int argc, char** argv) {
  spdlog::set_level(spdlog::level::warn);
  std::string model = std::string(KVSERVE_MODELS_DIR) + "/stories260K.gguf";
  int prompt_tokens = 64, output_tokens = 128, streams = 32, reps = 3;
  std::string format = "fp32";
  bool mutex_checks = false;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--model")
      model = value;
    else if (flag == "--prompt-tokens")
      prompt_tokens = std::stoi(value);
    else if (flag == "--output-tokens")
      output_tokens = std::stoi(value);
    else if (flag == "--streams")
      streams = std::stoi(value);
    else if (flag == "--reps")
      reps = std::stoi(value);
    else if (flag == "--kv-format")
      format = value;
    else if (flag == "--mutex-checks")
      mutex_checks = value == "1";
    else {
      std::fprintf(stderr, "unknown flag %s\n", flag.c_str());
      return 2;
    }
  }
  // As `kvserve serve` does (tools/kvserve_main.cc); --mutex-checks 1 keeps Abseil's lock-order
  // checks.
  if (!mutex_checks) absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  EngineOptions o;
  o.model.model_path = model;
  o.model.kv_format = *kvserve::kernels::ParseKvFormat(format);
  o.max_running_requests = std::max(streams, 1);
  auto engine = Engine::Create(o);
  if (!engine.ok()) {
    std::fprintf(stderr, "%s\n", std::string(engine.status().message()).c_str());
    return 1;
  }
  std::printf(
      "model %s, KV %s, prompts %d tokens, outputs %d tokens, median of %d runs, mutex lock-order "
      "checks %s\n",
      model.c_str(), format.c_str(), prompt_tokens, output_tokens, reps,
      mutex_checks ? "on" : "off");
  std::printf("%-8s %16s %12s %14s %16s %12s\n", "streams", "output tokens/s", "vs 1 stream",
              "step (us)", "scheduler (us)", "share");
  double single = 0;
  for (int n : {1, streams}) {
    std::vector<double> tps, share, sched_us, step_us;
    RunOnce(**engine, n, prompt_tokens, output_tokens, 999);  // warm-up
    for (int r = 0; r < reps; ++r) {
      const RunResult res = RunOnce(**engine, n, prompt_tokens, output_tokens, r);
      tps.push_back(res.tokens_per_second);
      share.push_back(res.scheduler_share);
      sched_us.push_back(res.scheduler_us_per_step);
      step_us.push_back(res.step_us);
    }
    const double m = Median(tps);
    if (n == 1) single = m;
    std::printf("%-8d %16.0f %11.2fx %14.1f %16.1f %11.2f%%\n", n, m, m / single, Median(step_us),
                Median(sched_us), 100 * Median(share));
  }
  return 0;
}
