// Quantized weights on the CPU: a MatMul micro-benchmark per weight type against F16 (panels,
// as the model packs them), and single-sequence greedy decode of a quantized GGUF model.
// Reports medians and the achieved rate of weight streaming (weight bytes read per second).
//
//   quant_bench [--model PATH] [--rows R] [--cols C] [--n N] [--reps K] [--steps S]
//               [--threads T] [--path avx512vnni|avx2|scalar]
// --path picks the quantized MatMul kernel of the micro-benchmark (default: the best this CPU
// runs); the model decode always uses the best.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "engine/model/model.h"
#include "engine/model/sequence_scoring.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/quant_matmul.h"
#include "kernels/weight_formats.h"
#include "spdlog/spdlog.h"

namespace {

using kvserve::kernels::DType;
using Clock = std::chrono::steady_clock;

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

int64_t WeightBytes(const kvserve::kernels::WeightView& w) {
  return kvserve::kernels::WeightRowBytes(w.dtype, w.cols) * w.rows;
}

}  // namespace

int main(int argc, char** argv) {
  spdlog::set_level(spdlog::level::warn);
  std::string model_path = std::string(KVSERVE_MODELS_DIR) + "/arch/dev-smol-llama-Q4_K_M.gguf";
  int64_t rows = 4096, cols = 4096, n = 1;
  int reps = 21, steps = 128, threads = 1;
  namespace cpu = kvserve::kernels::cpu;
  cpu::QuantKernel path = cpu::BestQuantKernel();
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    const char* v = argv[i + 1];
    if (a == "--model")
      model_path = v;
    else if (a == "--rows")
      rows = std::atoll(v);
    else if (a == "--cols")
      cols = std::atoll(v);
    else if (a == "--n")
      n = std::atoll(v);
    else if (a == "--reps")
      reps = std::atoi(v);
    else if (a == "--steps")
      steps = std::atoi(v);
    else if (a == "--threads")
      threads = std::atoi(v);
    else if (a == "--path") {
      const std::string name = v;
      bool found = false;
      for (cpu::QuantKernel k :
           {cpu::QuantKernel::kAvx512Vnni, cpu::QuantKernel::kAvx2, cpu::QuantKernel::kScalar}) {
        if (name == cpu::QuantKernelName(k)) {
          path = k;
          found = true;
        }
      }
      if (!found || !cpu::QuantKernelSupported(path)) {
        std::fprintf(stderr, "--path %s: not a quantized kernel this CPU runs\n", v);
        return 2;
      }
    } else {
      std::fprintf(stderr, "unknown flag %s\n", a.c_str());
      return 2;
    }
  }
  kvserve::kernels::ThreadPool pool(threads);
  std::printf("quantized MatMul: path %s, W [%lld, %lld], n = %lld, %d thread(s), median of %d\n",
              cpu::QuantKernelName(path), static_cast<long long>(rows),
              static_cast<long long>(cols), static_cast<long long>(n), threads, reps);
  std::printf("%-6s %12s %12s %10s\n", "type", "weight MB", "us/call", "GB/s");
  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0.0f, 0.05f);
  std::vector<float> raw(rows * cols), x(n * cols), y(n * rows);
  for (float& v : raw) v = normal(rng);
  for (float& v : x) v = normal(rng) * 20;
  for (DType t : {DType::kF16, DType::kQ8_0, DType::kQ6_K, DType::kQ5_K, DType::kQ4_K, DType::kQ4_0,
                  DType::kQ4_1, DType::kQ5_0, DType::kQ5_1, DType::kQ3_K, DType::kQ2_K}) {
    kvserve::kernels::WeightView w{t, nullptr, rows, cols, nullptr};
    std::vector<uint8_t> bytes(WeightBytes(w)), panels;
    if (t == DType::kF16) {
      auto* h = reinterpret_cast<uint16_t*>(bytes.data());
      for (int64_t i = 0; i < rows * cols; ++i) h[i] = kvserve::kernels::FloatToFp16(raw[i]);
      w.data = bytes.data();
      panels.resize(kvserve::kernels::cpu::WeightPanelBytes(w));
      kvserve::kernels::cpu::PackWeightPanels(w, panels.data());
      w.panels = panels.data();
    } else {
      for (int64_t r = 0; r < rows; ++r) {
        kvserve::kernels::QuantizeRow(t, raw.data() + r * cols, cols,
                                      bytes.data() + r * kvserve::kernels::WeightRowBytes(t, cols));
      }
      w.data = bytes.data();
    }
    std::vector<double> us;
    for (int k = 0; k < reps; ++k) {
      const auto t0 = Clock::now();
      if (t == DType::kF16) {
        cpu::MatMul(x.data(), n, w, y.data(), &pool);
      } else {
        cpu::QuantMatMulWith(path, x.data(), n, w, y.data(), &pool);
      }
      us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
    }
    const double med = Median(us);
    std::printf("%-6s %12.2f %12.1f %10.2f\n", std::string(kvserve::kernels::DTypeName(t)).c_str(),
                bytes.size() / 1e6, med, bytes.size() / med / 1e3);
  }

  auto model = kvserve::engine::LoadModel(model_path, "", /*ids_only_vocabulary=*/true);
  if (!model.ok()) {
    std::fprintf(stderr, "%s\n", std::string(model.status().message()).c_str());
    return 1;
  }
  const kvserve::engine::ModelWeights& mw = (*model)->weights();
  int64_t per_token = WeightBytes(mw.output);
  for (const auto& l : mw.layers) {
    for (const auto* m : {&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down}) {
      per_token += WeightBytes(*m);
    }
  }
  const std::vector<int32_t> prompt = {1, 2, 3, 4};
  // Prepares the weights (the first runner does) and lets their collapse into huge pages finish
  // before anything is timed.
  if (auto warm = kvserve::engine::GreedyContinue(**model, prompt, 1, &pool); !warm.ok()) {
    std::fprintf(stderr, "%s\n", std::string(warm.status().message()).c_str());
    return 1;
  }
  (*model)->WaitForHugePages();
  std::vector<double> tps;
  for (int k = 0; k < 5; ++k) {
    const auto t0 = Clock::now();
    auto r = kvserve::engine::GreedyContinue(**model, prompt, steps, &pool);
    const double s = std::chrono::duration<double>(Clock::now() - t0).count();
    if (!r.ok()) {
      std::fprintf(stderr, "%s\n", std::string(r.status().message()).c_str());
      return 1;
    }
    tps.push_back(steps / s);
  }
  const double med = Median(tps);
  std::printf("\ndecode, 1 sequence, %d tokens after a 4-token prompt: %s\n", steps,
              model_path.c_str());
  std::printf("  %.1f tokens/s (median of 5), %.2f MB of matrices per token, %.2f GB/s\n", med,
              per_token / 1e6, med * per_token / 1e9);
  return 0;
}
