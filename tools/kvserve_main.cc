// kvserve: the command-line entry point. Dispatches to the subcommands.
#include <cstdio>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "spdlog/sinks/stdout_color_sinks.h"
#include "spdlog/spdlog.h"
#include "tools/commands.h"
#if defined(KVSERVE_CUDA_MODULE)
#include "kernels/backend.h"
#endif

namespace {

constexpr char kUsage[] =
    "usage: kvserve <command> [flags]\n"
    "\n"
    "commands:\n"
    "  generate   generate text offline with a local model\n"
    "  perplexity score a text with a local model (KV formats and policies applied)\n"
    "  score      teacher-forced NLL and top-1 per token of one sequence (--text or --ids)\n"
    "  profile    KV memory per format for a model shape; measures the real pool\n"
    "  serve      run the gRPC server (kvserve serve --config configs/server.yaml)\n"
    "  client     call a running server: generate, health, info, tokenize, stats\n"
    "  mkmodel    write a GGUF model with random weights at a named shape (tiny, 110m, 1b-gqa)\n"
    "  bench      serving benchmark: load a running server and report latency and throughput\n"
    "  calibrate  per-layer KV formats under a bits/element budget, by measured sensitivity\n"
    "  render     render a conversation with a model's chat template and print the prompt\n"
    "  tokenize   token ids of a text under a GGUF file's vocabulary (vocab-only files too)\n"
    "\n"
    "Run 'kvserve <command> --help' for the flags of a command.\n";

}  // namespace

int main(int argc, char** argv) {
  // Logs go to stderr: stdout carries only what a command produces.
  spdlog::set_default_logger(spdlog::stderr_color_mt("kvserve"));
  spdlog::set_pattern("[%Y-%m-%d %H:%M:%S.%e] [%^%l%$] %v");
  // Debian's Abseil is built without NDEBUG, which leaves its debug-only lock-order graph on: every
  // absl::Mutex acquisition (ours and gRPC's) then updates a process-wide graph under a global
  // lock. Release builds of Abseil turn it off; so do we. The tests keep it on, and the TSan build
  // checks the locking for real (docs/reliability.md).
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
#if defined(KVSERVE_CUDA_MODULE)
  // Registered, not loaded: the module and the CUDA libraries load when a command asks for cuda.
  kvserve::kernels::RegisterCudaModule(KVSERVE_CUDA_MODULE);
#endif
  if (argc < 2) {
    std::fputs(kUsage, stderr);
    return 2;
  }
  const std::string command = argv[1];
  std::vector<std::string> args(argv + 2, argv + argc);
  if (command == "generate") return kvserve::tools::RunGenerateCommand(args);
  if (command == "perplexity") return kvserve::tools::RunPerplexityCommand(args);
  if (command == "score") return kvserve::tools::RunScoreCommand(args);
  if (command == "profile") return kvserve::tools::RunProfileCommand(args);
  if (command == "serve") return kvserve::tools::RunServeCommand(args);
  if (command == "client") return kvserve::tools::RunClientCommand(args);
  if (command == "mkmodel") return kvserve::tools::RunMkmodelCommand(args);
  if (command == "bench") return kvserve::tools::RunBenchCommand(args);
  if (command == "calibrate") return kvserve::tools::RunCalibrateCommand(args);
  if (command == "render") return kvserve::tools::RunRenderCommand(args);
  if (command == "tokenize") return kvserve::tools::RunTokenizeCommand(args);
  if (command == "--help" || command == "-h" || command == "help") {
    std::fputs(kUsage, stdout);
    return 0;
  }
  std::fprintf(stderr, "kvserve: unknown command '%s'\n\n%s", command.c_str(), kUsage);
  return 2;
}
