// `kvserve generate`: offline generation with the local engine. Writes the prompt followed by the
// generated text to stdout and nothing else; logs go to stderr.
#include <cstdio>
#include <random>

#include "absl/strings/str_format.h"
#include "engine/runtime/local_model.h"
#include "kernels/kv_format.h"
#include "spdlog/spdlog.h"
#include "tools/commands.h"
#include "tools/flags.h"
#include "tools/model_flags.h"

namespace kvserve::tools {

int RunGenerateCommand(const std::vector<std::string>& args) {
  FlagSet flags("generate");
  AddLocalModelFlags(flags);
  flags.String("prompt", "", "prompt text");
  flags.Int("max-tokens", 256, "tokens to generate at most");
  AddSamplingFlags(flags, "random seed; -1 = a fresh one (logged)");
  flags.Required("prompt");
  if (absl::Status s = flags.Parse(args); !s.ok()) {
    std::fprintf(stderr, "kvserve generate: %s\n\n%s", std::string(s.message()).c_str(),
                 flags.Usage().c_str());
    return 2;
  }
  if (flags.help_requested()) {
    std::fputs(flags.Usage().c_str(), stdout);
    return 0;
  }
  const std::string prompt = flags.GetString("prompt");
  if (prompt.empty()) {
    std::fprintf(stderr, "kvserve generate: --prompt must not be empty\n\n%s",
                 flags.Usage().c_str());
    return 2;
  }
  auto model_options = LocalModelOptionsFromFlags(flags);
  if (!model_options.ok()) {
    std::fprintf(stderr, "kvserve generate: %s\n\n%s",
                 std::string(model_options.status().message()).c_str(), flags.Usage().c_str());
    return 2;
  }
  engine::GenerationRequest request;
  request.max_tokens = static_cast<int32_t>(flags.GetInt("max-tokens"));
  request.sampling.temperature = static_cast<float>(flags.GetFloat("temperature"));
  request.sampling.top_k = static_cast<int32_t>(flags.GetInt("top-k"));
  request.sampling.top_p = static_cast<float>(flags.GetFloat("top-p"));
  request.sampling.min_p = static_cast<float>(flags.GetFloat("min-p"));
  request.sampling.repetition_penalty = static_cast<float>(flags.GetFloat("repetition-penalty"));
  request.sampling.presence_penalty = static_cast<float>(flags.GetFloat("presence-penalty"));
  request.sampling.frequency_penalty = static_cast<float>(flags.GetFloat("frequency-penalty"));
  int64_t seed = flags.GetInt("seed");
  if (seed < 0) seed = static_cast<int64_t>(std::random_device{}() & 0x7fffffff);
  request.sampling.seed = static_cast<uint64_t>(seed);
  if (absl::Status s = request.sampling.Validate(); !s.ok()) {
    std::fprintf(stderr, "kvserve generate: %s\n\n%s", std::string(s.message()).c_str(),
                 flags.Usage().c_str());
    return 2;
  }
  if (request.max_tokens < 1) {
    std::fprintf(stderr, "kvserve generate: --max-tokens must be >= 1\n\n%s",
                 flags.Usage().c_str());
    return 2;
  }

  const engine::LocalModelOptions& options = *model_options;
  auto local = engine::LocalModel::Open(options);
  if (!local.ok()) {
    spdlog::error("{}", std::string(local.status().message()));
    return 1;
  }
  engine::LocalModel& lm = **local;
  request.prompt = lm.tokenizer().Encode(prompt, /*add_bos=*/true);
  if (static_cast<int64_t>(request.prompt.size()) >= lm.config().context_length) {
    spdlog::error("the prompt has {} tokens; the model's context holds {}", request.prompt.size(),
                  lm.config().context_length);
    return 1;
  }
  spdlog::info("prompt: {} tokens; seed {}; KV format {}", request.prompt.size(), seed,
               kernels::KvFormatName(options.kv_format));

  std::fwrite(prompt.data(), 1, prompt.size(), stdout);
  std::fflush(stdout);
  engine::StreamingDetokenizer detok(lm.tokenizer());
  for (int32_t t : request.prompt) detok.Feed(t);  // context for the leading-space rule
  auto results = lm.generator().Run({request}, [&](int, int32_t token) {
    const std::string text = detok.Feed(token);
    std::fwrite(text.data(), 1, text.size(), stdout);
    std::fflush(stdout);
  });
  const std::string tail = detok.Flush();
  std::fwrite(tail.data(), 1, tail.size(), stdout);
  std::fputc('\n', stdout);
  std::fflush(stdout);
  if (!results.ok()) {
    spdlog::error("{}", std::string(results.status().message()));
    return 1;
  }
  const auto& r = (*results)[0];
  spdlog::info("generated {} tokens; finish reason {}", r.tokens.size(),
               engine::FinishReasonName(r.finish_reason));
  return 0;
}

}  // namespace kvserve::tools
