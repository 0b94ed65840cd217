// `kvserve profile`: the KV memory profiler. For a model shape (from a model file, a named shape
// or custom dims) prints KV bytes per format for a grid of context lengths and batch sizes; with
// a model file it also measures the real pool while the model generates; writes a text report and
// an SVG plot of memory against context length, one line per format.
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "engine/eval/kv_profile.h"
#include "engine/model/model.h"
#include "spdlog/spdlog.h"
#include "tools/commands.h"
#include "tools/flags.h"

namespace kvserve::tools {
namespace {

using kernels::KvFormat;

std::string HumanBytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024 && u < 4) {
    b /= 1024;
    ++u;
  }
  // Two literal formats: clang checks StrFormat's format at compile time.
  return u == 0 ? absl::StrFormat("%.0f %s", b, units[u]) : absl::StrFormat("%.2f %s", b, units[u]);
}

absl::StatusOr<std::vector<int64_t>> ParseList(const std::string& flag, const std::string& s) {
  std::vector<int64_t> out;
  for (absl::string_view part : absl::StrSplit(s, ',', absl::SkipEmpty())) {
    int64_t v = 0;
    if (!absl::SimpleAtoi(part, &v) || v < 1) {
      return absl::InvalidArgumentError(
          absl::StrFormat("--%s: '%s' is not a positive integer", flag, std::string(part)));
    }
    out.push_back(v);
  }
  if (out.empty()) return absl::InvalidArgumentError(absl::StrCat("--", flag, " is empty"));
  return out;
}

std::string Svg(const engine::KvShape& shape, const std::vector<KvFormat>& formats, int block_size,
                int64_t max_context) {
  const double w = 760, h = 460, left = 80, right = 150, top = 40, bottom = 50;
  const double max_bytes =
      static_cast<double>(engine::KvSequenceBytes(shape, KvFormat::kFp32, block_size, max_context));
  const char* colors[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                          "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};
  std::string svg = absl::StrFormat(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" "
      "font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%%\" height=\"100%%\" "
      "fill=\"white\"/>\n<text x=\"%.0f\" y=\"24\" font-size=\"15\">KV cache of one sequence: "
      "%s (%d layers, %d KV heads, head_dim %d, block %d)</text>\n",
      w, h, left, shape.name, shape.num_layers, shape.num_kv_heads, shape.head_dim, block_size);
  const double pw = w - left - right, ph = h - top - bottom;
  absl::StrAppendFormat(
      &svg,
      "<line x1=\"%.0f\" y1=\"%.0f\" x2=\"%.0f\" y2=\"%.0f\" stroke=\"black\"/>\n"
      "<line x1=\"%.0f\" y1=\"%.0f\" x2=\"%.0f\" y2=\"%.0f\" stroke=\"black\"/>\n",
      left, top + ph, left + pw, top + ph, left, top, left, top + ph);
  for (int i = 0; i <= 4; ++i) {
    const double x = left + pw * i / 4, y = top + ph - ph * i / 4;
    absl::StrAppendFormat(&svg,
                          "<text x=\"%.0f\" y=\"%.0f\" text-anchor=\"middle\">%d</text>\n"
                          "<text x=\"%.0f\" y=\"%.0f\" text-anchor=\"end\">%s</text>\n"
                          "<line x1=\"%.0f\" y1=\"%.0f\" x2=\"%.0f\" y2=\"%.0f\" "
                          "stroke=\"#ddd\"/>\n",
                          x, top + ph + 18, max_context * i / 4, left - 6, y + 4,
                          HumanBytes(max_bytes * i / 4), left, y, left + pw, y);
  }
  absl::StrAppendFormat(&svg,
                        "<text x=\"%.0f\" y=\"%.0f\" text-anchor=\"middle\">context length "
                        "(tokens)</text>\n",
                        left + pw / 2, h - 12);
  for (size_t f = 0; f < formats.size(); ++f) {
    std::string points;
    const int steps = 200;
    for (int i = 0; i <= steps; ++i) {
      const int64_t ctx = max_context * i / steps;
      const double b =
          static_cast<double>(engine::KvSequenceBytes(shape, formats[f], block_size, ctx));
      absl::StrAppendFormat(&points, "%.1f,%.1f ", left + pw * i / steps,
                            top + ph - ph * b / max_bytes);
    }
    const char* color = colors[f % 10];
    absl::StrAppendFormat(&svg,
                          "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"2\" "
                          "points=\"%s\"/>\n<text x=\"%.0f\" y=\"%.0f\" fill=\"%s\">%s (%.2f "
                          "bits)</text>\n",
                          color, points, left + pw + 10, top + 16 + 18.0 * f, color,
                          kernels::KvFormatName(formats[f]),
                          engine::KvBitsPerElement(shape, formats[f], block_size));
  }
  svg += "</svg>\n";
  return svg;
}

}  // namespace

int RunProfileCommand(const std::vector<std::string>& args) {
  FlagSet flags("profile");
  flags.String("model", "", "model file (GGUF or llama2.c): its shape, and a real measurement");
  flags.String("tokenizer", "", "llama2.c tokenizer file (default: beside a .bin model)");
  flags.String("shape", "", "named shape: llama-7b, llama-13b, llama-70b");
  flags.Int("layers", 0, "custom shape: layers");
  flags.Int("kv-heads", 0, "custom shape: KV heads");
  flags.Int("head-dim", 0, "custom shape: head dimension");
  flags.String("contexts", "512,4096,32768", "context lengths, comma-separated");
  flags.String("batches", "1,8,32", "batch sizes (sequences), comma-separated");
  flags.String("formats", "all", "KV formats, comma-separated, or all");
  flags.Int("block-size", 16, "tokens per KV block");
  flags.Int("lowrank-rank", 0, "coefficients per key of the lowrank format (0: leave it out)");
  flags.Int("measure-tokens", 200, "with --model: tokens to generate while measuring the pool");
  flags.String("report", "", "write the text report to this file too");
  flags.String("plot", "", "write an SVG plot of memory against context length");
  if (absl::Status s = flags.Parse(args); !s.ok()) {
    std::fprintf(stderr, "kvserve profile: %s\n\n%s", std::string(s.message()).c_str(),
                 flags.Usage().c_str());
    return 2;
  }
  if (flags.help_requested()) {
    std::fputs(flags.Usage().c_str(), stdout);
    return 0;
  }
  auto usage_error = [&](const std::string& msg) {
    std::fprintf(stderr, "kvserve profile: %s\n\n%s", msg.c_str(), flags.Usage().c_str());
    return 2;
  };
  auto contexts = ParseList("contexts", flags.GetString("contexts"));
  if (!contexts.ok()) return usage_error(std::string(contexts.status().message()));
  auto batches = ParseList("batches", flags.GetString("batches"));
  if (!batches.ok()) return usage_error(std::string(batches.status().message()));
  const int block_size = static_cast<int>(flags.GetInt("block-size"));
  if (block_size < 1 || block_size > 1024) return usage_error("--block-size must be in [1, 1024]");
  std::vector<KvFormat> formats;
  if (flags.GetString("formats") == "all") {
    for (int i = 0; i < kernels::kNumKvFormats; ++i) {
      if (static_cast<KvFormat>(i) == KvFormat::kLowrank && flags.GetInt("lowrank-rank") <= 0) {
        continue;  // sized only with a rank
      }
      formats.push_back(static_cast<KvFormat>(i));
    }
  } else {
    for (absl::string_view name : absl::StrSplit(flags.GetString("formats"), ',')) {
      auto f = kernels::ParseKvFormat(std::string_view(name.data(), name.size()));
      if (!f) return usage_error(absl::StrCat("--formats: unknown format '", name, "'"));
      formats.push_back(*f);
    }
  }

  engine::KvShape shape;
  std::unique_ptr<engine::LocalModel> local;
  const int sources = !flags.GetString("model").empty() + !flags.GetString("shape").empty() +
                      (flags.GetInt("layers") > 0);
  if (sources != 1) {
    return usage_error("give exactly one of --model, --shape, or --layers/--kv-heads/--head-dim");
  }
  if (!flags.GetString("model").empty()) {
    engine::LocalModelOptions o;
    o.model_path = flags.GetString("model");
    o.tokenizer_path = flags.GetString("tokenizer");
    o.block_size = block_size;
    auto lm = engine::LocalModel::Open(o);
    if (!lm.ok()) {
      spdlog::error("{}", std::string(lm.status().message()));
      return 1;
    }
    local = std::move(*lm);
    const engine::ModelConfig& c = local->config();
    shape = {c.name.empty() ? "model" : c.name, c.num_layers, c.num_kv_heads, c.head_dim};
  } else if (!flags.GetString("shape").empty()) {
    auto s = engine::NamedKvShape(flags.GetString("shape"));
    if (!s.ok()) return usage_error(std::string(s.status().message()));
    shape = *s;
  } else {
    shape = {"custom", static_cast<int>(flags.GetInt("layers")),
             static_cast<int>(flags.GetInt("kv-heads")),
             static_cast<int>(flags.GetInt("head-dim"))};
    if (shape.num_kv_heads < 1 || shape.head_dim < 1) {
      return usage_error("--kv-heads and --head-dim must be >= 1 with --layers");
    }
  }

  shape.key_rank = static_cast<int>(flags.GetInt("lowrank-rank"));
  for (KvFormat f : formats) {
    if (f == KvFormat::kLowrank && (shape.key_rank < 1 || shape.key_rank > shape.head_dim)) {
      return usage_error(absl::StrFormat(
          "--lowrank-rank: the lowrank format needs a rank in [1, %d]", shape.head_dim));
    }
  }
  std::string report = absl::StrFormat(
      "KV cache of %s: %d layers, %d KV heads, head_dim %d, blocks of %d tokens\n\n", shape.name,
      shape.num_layers, shape.num_kv_heads, shape.head_dim, block_size);
  absl::StrAppendFormat(&report, "%-10s %10s %14s %12s", "format", "bits/elem", "bytes/token",
                        "vs fp16");
  for (int64_t ctx : *contexts) {
    for (int64_t b : *batches) {
      absl::StrAppendFormat(&report, " %16s", absl::StrFormat("%dx%d", b, ctx));
    }
  }
  report += "\n";
  const int64_t fp16_block = engine::KvBlockBytes(shape, KvFormat::kFp16, block_size);
  for (KvFormat f : formats) {
    const int64_t block = engine::KvBlockBytes(shape, f, block_size);
    absl::StrAppendFormat(&report, "%-10s %10.3f %14.1f %11.3fx", kernels::KvFormatName(f),
                          engine::KvBitsPerElement(shape, f, block_size),
                          static_cast<double>(block) / block_size,
                          static_cast<double>(block) / fp16_block);
    for (int64_t ctx : *contexts) {
      for (int64_t b : *batches) {
        absl::StrAppendFormat(&report, " %16s",
                              HumanBytes(static_cast<double>(
                                  b * engine::KvSequenceBytes(shape, f, block_size, ctx))));
      }
    }
    report += "\n";
  }
  absl::StrAppend(&report, "\ncolumns: sequences x context tokens; whole blocks counted\n");

  if (local != nullptr) {
    const int32_t tokens = static_cast<int32_t>(
        std::min<int64_t>(flags.GetInt("measure-tokens"), local->config().context_length - 8));
    absl::StrAppendFormat(&report,
                          "\nmeasured: the pool's used bytes while %s generates %d tokens\n",
                          shape.name, tokens);
    absl::StrAppendFormat(&report, "%-10s %12s %16s %16s\n", "format", "tokens", "pool bytes",
                          "predicted");
    for (KvFormat f : formats) {
      if (f == KvFormat::kLowrank) continue;  // its basis needs a calibration text
      engine::LocalModelOptions o = local->options();
      o.kv_format = f;
      auto lm = engine::LocalModel::Open(o);
      if (!lm.ok()) {
        absl::StrAppendFormat(&report, "%-10s %s\n", kernels::KvFormatName(f),
                              std::string(lm.status().message()));
        continue;
      }
      auto curve = engine::MeasureKvGrowth(**lm, "Once upon a time", tokens);
      if (!curve.ok() || curve->empty()) continue;
      for (size_t i = 0; i < curve->size(); i += std::max<size_t>(1, curve->size() / 4)) {
        const auto [t, bytes] = (*curve)[i];
        absl::StrAppendFormat(&report, "%-10s %12d %16d %16d\n", kernels::KvFormatName(f), t, bytes,
                              engine::KvSequenceBytes(shape, f, block_size, t));
      }
    }
  }
  std::fputs(report.c_str(), stdout);
  if (!flags.GetString("report").empty()) {
    std::ofstream out(flags.GetString("report"));
    out << report;
    if (!out) {
      spdlog::error("cannot write {}", flags.GetString("report"));
      return 1;
    }
  }
  if (!flags.GetString("plot").empty()) {
    const int64_t max_ctx = *std::max_element(contexts->begin(), contexts->end());
    std::ofstream out(flags.GetString("plot"));
    out << Svg(shape, formats, block_size, max_ctx);
    if (!out) {
      spdlog::error("cannot write {}", flags.GetString("plot"));
      return 1;
    }
  }
  return 0;
}

}  // namespace kvserve::tools
