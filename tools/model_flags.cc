#include "tools/model_flags.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "engine/kv/kv_cache_policy.h"
#include "kernels/kv_format.h"

namespace kvserve::tools {

void AddLocalModelFlags(FlagSet& flags) {
  flags.String("model", "", "model file: GGUF, or a llama2.c checkpoint (.bin)");
  flags.String("tokenizer", "", "llama2.c tokenizer file (default: beside a .bin model)");
  flags.String("kv-format", "fp32",
               "KV cache block format: fp32, fp16, bf16, fp8, int8, int4, nvfp4, int2, lowrank");
  flags.String("layer-formats", "", "per-layer KV format overrides, LAYER:FORMAT[,...]");
  flags.Int("recent-window", 0, "newest tokens kept in --window-format");
  flags.Int("sink-tokens", 0, "first tokens kept in --window-format");
  flags.String("window-format", "fp16", "KV format of the recent window and sink tokens");
  flags.Int("kv-budget-mb", 256, "KV cache budget in MiB");
  flags.Int("block-size", 16, "tokens per KV block");
  flags.Int("threads", 0, "worker threads; 0 = all CPUs");
  flags.String(
      "device", "cpu",
      "where the forward pass and KV pool run: cpu, or cuda (builds with CUDA; F32/F16/BF16 "
      "weights)");
  flags.Int("lowrank-rank", 0, "lowrank format: coefficients per key (1..head_dim)");
  flags.String("lowrank-text", "", "lowrank format: calibration text whose keys give the basis");
  flags.Required("model");
}

absl::StatusOr<engine::LocalModelOptions> LocalModelOptionsFromFlags(const FlagSet& flags) {
  engine::LocalModelOptions options;
  options.model_path = flags.GetString("model");
  options.tokenizer_path = flags.GetString("tokenizer");
  for (const char* name : {"kv-format", "window-format"}) {
    const auto format = kernels::ParseKvFormat(flags.GetString(name));
    if (!format) {
      return absl::InvalidArgumentError(
          absl::StrCat("--", name, ": unknown format '", flags.GetString(name), "'"));
    }
    (std::string(name) == "kv-format" ? options.kv_format : options.kv_window_format) = *format;
  }
  auto layers = engine::ParseLayerFormats(flags.GetString("layer-formats"));
  if (!layers.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("--layer-formats: ", layers.status().message()));
  }
  options.kv_layer_formats = *std::move(layers);
  options.kv_recent_window = static_cast<int32_t>(flags.GetInt("recent-window"));
  options.kv_sink_tokens = static_cast<int32_t>(flags.GetInt("sink-tokens"));
  options.kv_budget_bytes = flags.GetInt("kv-budget-mb") << 20;
  options.block_size = static_cast<int>(flags.GetInt("block-size"));
  options.num_threads = static_cast<int>(flags.GetInt("threads"));
  options.device = flags.GetString("device");
  if (options.device != "cpu" && options.device != "cuda") {
    return absl::InvalidArgumentError(
        absl::StrCat("--device: must be cpu or cuda, got '", options.device, "'"));
  }
  options.kv_lowrank_rank = static_cast<int32_t>(flags.GetInt("lowrank-rank"));
  options.kv_lowrank_text = flags.GetString("lowrank-text");
  return options;
}

void AddSamplingFlags(FlagSet& flags, const char* seed_help, double top_p) {
  flags.Float("temperature", 1.0, "sampling temperature; 0 = greedy");
  flags.Int("top-k", 0, "keep the k most probable tokens; 0 = off");
  flags.Float("top-p", top_p, "nucleus sampling mass in (0, 1]");
  flags.Float("min-p", 0.0, "drop tokens below min-p times the top probability");
  flags.Float("repetition-penalty", 1.0, "penalty on tokens already seen; 1 = off");
  flags.Float("presence-penalty", 0.0, "subtracted from generated tokens' logits, in [-2, 2]");
  flags.Float("frequency-penalty", 0.0,
              "subtracted from a generated token's logit per occurrence, in [-2, 2]");
  flags.Int("seed", -1, seed_help);
}

}  // namespace kvserve::tools
