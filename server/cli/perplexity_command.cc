// `kvserve perplexity`: scores a text with the model through the paged KV cache.
#include <cstdio>
#include <fstream>
#include <sstream>

#include "absl/strings/str_format.h"
#include "engine/eval/perplexity.h"
#include "engine/generation/local_model.h"
#include "engine/kv/kv_cache_policy.h"
#include "kernels/kv_format.h"
#include "server/cli/commands.h"
#include "server/cli/flags.h"
#include "spdlog/spdlog.h"

namespace kvserve::server {

int RunPerplexityCommand(const std::vector<std::string>& args) {
  FlagSet flags("perplexity");
  flags.String("model", "", "model file: GGUF, or a llama2.c checkpoint (.bin)");
  flags.String("tokenizer", "", "llama2.c tokenizer file (default: beside a .bin model)");
  flags.String("text", "", "text file; documents separated by --separator");
  flags.String("separator", "<|endoftext|>", "document separator");
  flags.Int("context", 0, "tokens per document at most, BOS included; 0 = the model's context");
  flags.Int("max-documents", 0, "score only the first N documents; 0 = all");
  flags.String("kv-format", "fp32", "KV cache block format");
  flags.String("layer-formats", "", "per-layer KV format overrides, LAYER:FORMAT[,...]");
  flags.Int("recent-window", 0, "newest tokens kept in --window-format");
  flags.Int("sink-tokens", 0, "first tokens kept in --window-format");
  flags.String("window-format", "fp16", "KV format of the recent window and sink tokens");
  flags.Int("block-size", 16, "tokens per KV block");
  flags.Int("threads", 0, "worker threads; 0 = all CPUs");
  flags.Bool("json", "print the result as JSON");
  flags.Required("model");
  flags.Required("text");
  if (absl::Status s = flags.Parse(args); !s.ok()) {
    std::fprintf(stderr, "kvserve perplexity: %s\n\n%s", std::string(s.message()).c_str(),
                 flags.Usage().c_str());
    return 2;
  }
  if (flags.help_requested()) {
    std::fputs(flags.Usage().c_str(), stdout);
    return 0;
  }
  const auto format = kernels::ParseKvFormat(flags.GetString("kv-format"));
  if (!format) {
    std::fprintf(stderr, "kvserve perplexity: --kv-format: unknown format '%s'\n\n%s",
                 flags.GetString("kv-format").c_str(), flags.Usage().c_str());
    return 2;
  }
  std::ifstream in(flags.GetString("text"), std::ios::binary);
  if (!in) {
    std::fprintf(stderr, "kvserve perplexity: cannot read --text file '%s'\n",
                 flags.GetString("text").c_str());
    return 2;
  }
  std::stringstream buffer;
  buffer << in.rdbuf();
  const std::string text = buffer.str();

  engine::LocalModelOptions options;
  options.model_path = flags.GetString("model");
  options.tokenizer_path = flags.GetString("tokenizer");
  options.kv_format = *format;
  options.block_size = static_cast<int>(flags.GetInt("block-size"));
  options.kv_recent_window = static_cast<int32_t>(flags.GetInt("recent-window"));
  options.kv_sink_tokens = static_cast<int32_t>(flags.GetInt("sink-tokens"));
  {
    const auto window = kernels::ParseKvFormat(flags.GetString("window-format"));
    auto layers = engine::ParseLayerFormats(flags.GetString("layer-formats"));
    if (!window || !layers.ok()) {
      std::fprintf(stderr, "kvserve %s: %s\n\n%s", "perplexity",
                   !window ? "--window-format: unknown format"
                           : ("--layer-formats: " + std::string(layers.status().message())).c_str(),
                   flags.Usage().c_str());
      return 2;
    }
    options.kv_window_format = *window;
    options.kv_layer_formats = *layers;
  }
  options.num_threads = static_cast<int>(flags.GetInt("threads"));
  auto local = engine::LocalModel::Open(options);
  if (!local.ok()) {
    spdlog::error("{}", std::string(local.status().message()));
    return 1;
  }
  engine::PerplexityOptions po;
  po.separator = flags.GetString("separator");
  po.max_tokens = static_cast<int32_t>(flags.GetInt("context"));
  po.max_documents = static_cast<int32_t>(flags.GetInt("max-documents"));
  auto result = engine::EvaluatePerplexity(**local, text, po);
  if (!result.ok()) {
    spdlog::error("{}", std::string(result.status().message()));
    return 1;
  }
  if (flags.GetBool("json")) {
    std::printf(
        "{\"perplexity\": %.6f, \"mean_nll\": %.8f, \"predicted_tokens\": %lld, "
        "\"documents\": %lld, \"kv_format\": \"%s\"}\n",
        result->perplexity(), result->mean_nll(),
        static_cast<long long>(result->predicted_tokens),
        static_cast<long long>(result->documents), std::string(kernels::KvFormatName(*format)).c_str());
  } else {
    std::printf("perplexity %.4f over %lld predicted tokens in %lld documents (mean NLL %.5f "
                "nats, KV %s)\n",
                result->perplexity(), static_cast<long long>(result->predicted_tokens),
                static_cast<long long>(result->documents), result->mean_nll(),
                std::string(kernels::KvFormatName(*format)).c_str());
  }
  return 0;
}

}  // namespace kvserve::server
