// `kvserve calibrate`: per-layer KV formats under an average bits/element budget, chosen by
// each layer's measured perplexity sensitivity (engine/eval/calibrate.h).
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_split.h"
#include "engine/eval/calibrate.h"
#include "tools/commands.h"
#include "tools/flags.h"
#include "tools/model_flags.h"

namespace kvserve::tools {
namespace {

int Usage(const FlagSet& flags, const std::string& message) {
  std::fprintf(stderr, "kvserve calibrate: %s\n\n%s", message.c_str(), flags.Usage().c_str());
  return 2;
}

}  // namespace

int RunCalibrateCommand(const std::vector<std::string>& args) {
  FlagSet flags("calibrate");
  AddLocalModelFlags(flags);
  flags.String("text", "", "calibration text file; documents separated by --separator");
  flags.Float("budget-bits", 0,
              "average KV bits per element over the layers (scales and padding included)");
  flags.String("formats", "fp16,fp8,int8,int4,nvfp4,int2",
               "candidate formats, comma-separated; the most precise is the reference");
  flags.String("out", "", "write the kv_cache config fragment here (default: standard output)");
  flags.String("separator", "<|endoftext|>", "document separator");
  flags.Int("context", 0, "tokens per document at most, BOS included; 0 = the model's context");
  flags.Int("max-documents", 0, "use only the first N documents; 0 = all");
  flags.Bool("quiet", "do not print each measurement to standard error");
  flags.Required("text");
  flags.Required("budget-bits");
  if (absl::Status s = flags.Parse(args); !s.ok()) return Usage(flags, std::string(s.message()));
  if (flags.help_requested()) {
    std::fputs(flags.Usage().c_str(), stdout);
    return 0;
  }
  for (const char* chosen : {"kv-format", "layer-formats"}) {
    if (flags.IsSet(chosen)) {
      return Usage(flags, std::string("--") + chosen +
                              " is what calibrate chooses; give the candidates with --formats");
    }
  }
  auto model_options = LocalModelOptionsFromFlags(flags);
  if (!model_options.ok()) return Usage(flags, std::string(model_options.status().message()));

  engine::CalibrationOptions options;
  options.budget_bits = flags.GetFloat("budget-bits");
  if (!(options.budget_bits > 0) || options.budget_bits > 64) {
    return Usage(flags, "--budget-bits: must be in (0, 64] bits per element, got " +
                            flags.GetString("budget-bits"));
  }
  for (absl::string_view piece : absl::StrSplit(flags.GetString("formats"), ',')) {
    const std::string name(piece);
    const auto format = kernels::ParseKvFormat(name);
    if (!format) {
      return Usage(flags, "--formats: unknown format '" + name +
                              "' (fp32, fp16, bf16, fp8, int8, int4, nvfp4, int2)");
    }
    options.formats.push_back(*format);
  }
  for (const char* count : {"context", "max-documents"}) {
    if (flags.GetInt(count) < 0) {
      return Usage(flags,
                   std::string("--") + count + ": must be >= 0, got " + flags.GetString(count));
    }
  }
  options.perplexity.separator = flags.GetString("separator");
  options.perplexity.max_tokens = static_cast<int32_t>(flags.GetInt("context"));
  options.perplexity.max_documents = static_cast<int32_t>(flags.GetInt("max-documents"));
  if (!flags.GetBool("quiet")) {
    options.progress = [](const std::string& line) {
      std::fprintf(stderr, "calibrate: %s\n", line.c_str());
    };
  }

  const std::string text_path = flags.GetString("text");
  std::ifstream in(text_path, std::ios::binary);
  if (!in) return Usage(flags, "--text: cannot read '" + text_path + "'");
  std::stringstream buffer;
  buffer << in.rdbuf();
  const std::string text = buffer.str();

  // Open the output before measuring, so that a bad path fails at once.
  const std::string out_path = flags.GetString("out");
  std::ofstream out;
  if (!out_path.empty()) {
    out.open(out_path, std::ios::binary | std::ios::trunc);
    if (!out) return Usage(flags, "--out: cannot write '" + out_path + "'");
  }

  auto result = engine::Calibrate(*model_options, text, options);
  if (!result.ok()) {
    std::fprintf(stderr, "kvserve calibrate: %s\n", std::string(result.status().message()).c_str());
    if (!out_path.empty()) {
      out.close();
      std::filesystem::remove(out_path);
    }
    return result.status().code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
  }
  const std::string yaml = engine::FormatCalibrationYaml(
      *result, *model_options, std::filesystem::path(text_path).filename().string());
  if (out_path.empty()) {
    std::fputs(yaml.c_str(), stdout);
  } else {
    out << yaml;
    out.close();
    if (!out) {
      std::fprintf(stderr, "kvserve calibrate: writing '%s' failed\n", out_path.c_str());
      return 1;
    }
    std::fprintf(stderr, "calibrate: wrote %s\n", out_path.c_str());
  }
  // The summary goes beside the fragment's file, never into the fragment.
  std::fprintf(
      out_path.empty() ? stderr : stdout,
      "budget %.4g bits/element: chosen average %.4f; perplexity %.6f (every layer %s: %.6f, "
      "%+.4f%%)\n",
      result->choice.budget_bits, result->choice.average_bits, result->measured_perplexity,
      std::string(kernels::KvFormatName(result->sensitivity.reference)).c_str(),
      result->sensitivity.reference_perplexity,
      100.0 * (result->measured_perplexity / result->sensitivity.reference_perplexity - 1));
  return 0;
}

}  // namespace kvserve::tools
