// Decode throughput of the CPU engine on a real model: single-sequence and batched greedy
// generation. Prints medians over repetitions, the batched/single ratios, and the share of the
// step time spent demoting blocks to their long-term format (quantize-on-write; zero for formats
// that are written in their final format).
//
//   decode_bench [--model PATH] [--tokens N] [--reps R] [--batches 1,8,32] [--kv-format F]
//                [--recent-window N] [--sink-tokens N] [--threads N] [--mutex-checks 0]
//                [--prompt-tokens N] [--device cpu|cuda] [--kv-budget-mb N]
// --device cuda: the forward pass and the KV pool on the GPU (builds with CUDA; the module
// libkvserve_cuda.so is looked for beside this binary, or at $KVSERVE_CUDA_MODULE).
// --prompt-tokens N: a prompt-processing line first: one sequence of an N-token prompt (the
// first N tokens of the model's tokenization of a fixed text, padded with ids) and one generated
// token, in prompt tokens/s (prefix cache off). The decode rows use short prompts.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "engine/runtime/local_model.h"
#include "kernels/backend.h"
#include "spdlog/spdlog.h"

namespace {

using kvserve::engine::GenerationRequest;
using kvserve::engine::LocalModel;
using kvserve::engine::LocalModelOptions;

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

// VmRSS of this process, MiB.
double ResidentMiB() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stod(line.substr(6)) / 1024.0;
  }
  return -1;
}

}  // namespace

int main(int argc, char** argv) {
  spdlog::set_level(spdlog::level::warn);
  std::string model = std::string(KVSERVE_MODELS_DIR) + "/stories260K.gguf";
  int tokens = 256, reps = 5;
  std::vector<int> batches = {1, 8, 32};
  std::string format = "fp32";
  int recent_window = 0, sink_tokens = 0, threads = 0, prompt_tokens = 0;
  std::string device = "cpu";
  int64_t budget_mb = 256;
  bool mutex_checks = false;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--model") {
      model = value;
    } else if (flag == "--tokens") {
      tokens = std::stoi(value);
    } else if (flag == "--reps") {
      reps = std::stoi(value);
    } else if (flag == "--kv-format") {
      format = value;
    } else if (flag == "--recent-window") {
      recent_window = std::stoi(value);
    } else if (flag == "--sink-tokens") {
      sink_tokens = std::stoi(value);
    } else if (flag == "--threads") {
      threads = std::stoi(value);
    } else if (flag == "--device") {
      device = value;
    } else if (flag == "--kv-budget-mb") {
      budget_mb = std::stoll(value);
    } else if (flag == "--mutex-checks") {
      mutex_checks = value == "1";
    } else if (flag == "--prompt-tokens") {
      prompt_tokens = std::atoi(value.c_str());
    } else if (flag == "--batches") {
      batches.clear();
      for (absl::string_view b : absl::StrSplit(value, ',')) {
        int n = 0;
        if (absl::SimpleAtoi(b, &n)) batches.push_back(n);
      }
    } else {
      std::fprintf(stderr, "unknown flag %s\n", flag.c_str());
      return 2;
    }
  }
  // As `kvserve serve` does (tools/kvserve_main.cc); --mutex-checks 1 keeps Abseil's lock-order
  // checks.
  if (!mutex_checks) absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
#if defined(KVSERVE_CUDA_MODULE)
  kvserve::kernels::RegisterCudaModule(KVSERVE_CUDA_MODULE);
#endif
  LocalModelOptions o;
  o.model_path = model;
  const auto parsed = kvserve::kernels::ParseKvFormat(format);
  if (!parsed) {
    std::fprintf(stderr, "unknown --kv-format %s\n", format.c_str());
    return 2;
  }
  o.kv_format = *parsed;
  o.kv_recent_window = recent_window;
  o.kv_sink_tokens = sink_tokens;
  o.num_threads = threads;
  o.device = device;
  o.kv_budget_bytes = budget_mb << 20;
  // Repeated runs of one long prompt must compute it each time.
  if (prompt_tokens > 0) o.prefix_cache = false;
  const auto load_start = std::chrono::steady_clock::now();
  auto lm = LocalModel::Open(o);
  if (!lm.ok()) {
    std::fprintf(stderr, "%s\n", std::string(lm.status().message()).c_str());
    return 1;
  }
  const double load_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - load_start)
          .count();
  std::printf("load %.0f ms, RSS after load %.1f MiB (KV budget %.0f MiB)\n", load_ms,
              ResidentMiB(), o.kv_budget_bytes / 1048576.0);
  // Weights reach huge pages in the background after the load; nothing is timed before that.
  (*lm)->loaded().WaitForHugePages();
  std::printf(
      "weights in huge pages %.0f ms after the load began\n",
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - load_start)
          .count());
  const char* prompts[] = {"Once upon a time", "The little dog", "Lily and Ben went",
                           "One day, a big bird", "Tom had a red ball"};
  std::printf(
      "model %s, device %s, KV %s (recent window %d, sinks %d), %d generated tokens per sequence, "
      "median of %d runs, mutex lock-order checks %s\n",
      model.c_str(), device.c_str(), format.c_str(), recent_window, sink_tokens, tokens, reps,
      mutex_checks ? "on" : "off");
  // The fixed long prompt of --prompt-tokens: a text's tokens, padded with ids when short.
  std::vector<int32_t> long_prompt;
  if (prompt_tokens > 0) {
    std::string text;
    for (int i = 0; i < 200; ++i) {
      absl::StrAppend(&text, "Once upon a time, in a small town by the sea, a girl named Lily ",
                      "found a box of old letters. ");
    }
    long_prompt = (*lm)->tokenizer().Encode(text, true);
    const int32_t vocab = (*lm)->config().vocab_size;
    for (int32_t i = 0; static_cast<int>(long_prompt.size()) < prompt_tokens; ++i) {
      long_prompt.push_back(3 + (i * 7919) % (vocab - 3));
    }
    long_prompt.resize(static_cast<size_t>(prompt_tokens));
    std::vector<GenerationRequest> one(1);
    one[0].prompt = long_prompt;
    one[0].max_tokens = 1;
    one[0].ignore_eos = true;
    one[0].sampling.temperature = 0;
    std::vector<double> pps;
    for (int r = 0; r < reps + 1; ++r) {
      const auto t0 = std::chrono::steady_clock::now();
      auto res = (*lm)->generator().Run(one);
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (!res.ok()) {
        std::fprintf(stderr, "%s\n", std::string(res.status().message()).c_str());
        return 1;
      }
      if (r > 0) pps.push_back(prompt_tokens / s);
    }
    std::printf("prompt processing: %d-token prompt, %.0f prompt tokens/s (median)\n",
                prompt_tokens, Median(pps));
  }
  std::printf("%-10s %14s %14s %10s %14s\n", "sequences", "tokens/s", "ms per step", "vs 1 seq",
              "demotion/step");
  double single = 0;
  for (int b : batches) {
    std::vector<GenerationRequest> reqs(b);
    for (int i = 0; i < b; ++i) {
      reqs[i].prompt = (*lm)->tokenizer().Encode(prompts[i % 5], true);
      reqs[i].max_tokens = tokens;
      reqs[i].ignore_eos = true;
      reqs[i].sampling.temperature = 0;
    }
    std::vector<double> tps, step_ms, demotion_share;
    for (int r = 0; r < reps + 1; ++r) {
      const auto t0 = std::chrono::steady_clock::now();
      auto res = (*lm)->generator().Run(reqs);
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (!res.ok()) {
        std::fprintf(stderr, "%s\n", std::string(res.status().message()).c_str());
        return 1;
      }
      if (r == 0) continue;  // warm-up
      tps.push_back(static_cast<double>(b) * tokens / s);
      step_ms.push_back(1e3 * s / (*lm)->generator().steps());
      demotion_share.push_back(
          absl::FDivDuration((*lm)->generator().demotion_time(), (*lm)->generator().step_time()));
    }
    const double m = Median(tps);
    if (b == 1) single = m;
    std::printf("%-10d %14.0f %14.3f %9.2fx %13.2f%%\n", b, m, Median(step_ms),
                single > 0 ? m / single : 0, 100.0 * Median(demotion_share));
  }
  return 0;
}
