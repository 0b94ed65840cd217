#include "engine/eval/calibrate.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "engine/common/status_macros.h"
#include "engine/kv/kv_cache_policy.h"

namespace kvserve::engine {
namespace {

using kernels::KvFormat;
using kernels::KvFormatName;

std::string Name(KvFormat f) { return std::string(KvFormatName(f)); }

absl::StatusOr<PerplexityResult> Measure(const LocalModelOptions& options, std::string_view text,
                                         const PerplexityOptions& po) {
  KVSERVE_ASSIGN_OR_RETURN(std::unique_ptr<LocalModel> lm, LocalModel::Open(options));
  return EvaluatePerplexity(*lm, text, po);
}

// Layer bytes of each candidate at the model's shape.
std::vector<int64_t> CandidateBytes(const LayerSensitivity& s) {
  std::vector<int64_t> bytes;
  for (KvFormat f : s.formats) bytes.push_back(kernels::KvLayerBytes(f, s.shape));
  return bytes;
}

}  // namespace

double KvFormatBitsPerElement(KvFormat f, const kernels::KvRegionShape& shape) {
  const double elements = 2.0 * shape.block_size * shape.num_kv_heads * shape.head_dim;
  return 8.0 * static_cast<double>(kernels::KvLayerBytes(f, shape)) / elements;
}

absl::StatusOr<std::vector<int>> ChooseLayerFormats(const std::vector<std::vector<double>>& cost,
                                                    const std::vector<int64_t>& bytes,
                                                    int64_t budget_bytes) {
  const size_t layers = cost.size();
  const size_t choices = bytes.size();
  if (layers == 0 || choices == 0) {
    return absl::InvalidArgumentError("no layers or no candidate formats to choose from");
  }
  for (const auto& row : cost) {
    if (row.size() != choices) {
      return absl::InvalidArgumentError("a layer's cost row does not match the candidates");
    }
    for (double c : row) {
      if (!std::isfinite(c)) return absl::InvalidArgumentError("a measured cost is not finite");
    }
  }
  int64_t unit = 0;
  for (int64_t b : bytes) {
    if (b <= 0) return absl::InvalidArgumentError("candidate bytes must be positive");
    unit = std::gcd(unit, b);
  }
  const int64_t min_bytes = *std::min_element(bytes.begin(), bytes.end());
  if (budget_bytes < static_cast<int64_t>(layers) * min_bytes) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "the budget of %d bytes is below %d layers x %d bytes of the smallest candidate",
        budget_bytes, layers, min_bytes));
  }
  // Work in units of the bytes' gcd; the budget never needs more than every layer at the
  // largest candidate.
  const int64_t max_bytes = *std::max_element(bytes.begin(), bytes.end());
  const int64_t capacity = std::min(budget_bytes, static_cast<int64_t>(layers) * max_bytes) / unit;
  if (capacity > (int64_t{1} << 26)) {
    return absl::InvalidArgumentError("the byte budget is too fine-grained to solve exactly");
  }
  constexpr double kInf = std::numeric_limits<double>::infinity();
  const size_t width = static_cast<size_t>(capacity) + 1;
  // best[u]: least cost of the layers so far using exactly u units; pick[l][u]: the choice of
  // layer l on that path.
  std::vector<double> best(width, kInf), next(width);
  std::vector<std::vector<int16_t>> pick(layers, std::vector<int16_t>(width, -1));
  best[0] = 0;
  for (size_t l = 0; l < layers; ++l) {
    std::fill(next.begin(), next.end(), kInf);
    for (size_t u = 0; u < width; ++u) {
      if (best[u] == kInf) continue;
      for (size_t c = 0; c < choices; ++c) {
        const size_t v = u + static_cast<size_t>(bytes[c] / unit);
        if (v >= width) continue;
        const double total = best[u] + cost[l][c];
        if (total < next[v]) {
          next[v] = total;
          pick[l][v] = static_cast<int16_t>(c);
        }
      }
    }
    best.swap(next);
  }
  // Least cost over every fill level; ties to fewer bytes (the lower u scanned first).
  size_t end = width;
  for (size_t u = 0; u < width; ++u) {
    if (best[u] != kInf && (end == width || best[u] < best[end])) end = u;
  }
  if (end == width) return absl::InvalidArgumentError("no assignment fits the budget");
  std::vector<int> choice(layers);
  size_t u = end;
  for (size_t l = layers; l-- > 0;) {
    const int c = pick[l][u];
    choice[l] = c;
    u -= static_cast<size_t>(bytes[c] / unit);
  }
  return choice;
}

absl::StatusOr<LayerSensitivity> MeasureLayerSensitivity(const LocalModelOptions& base,
                                                         std::string_view text,
                                                         const CalibrationOptions& options) {
  if (options.formats.empty()) {
    return absl::InvalidArgumentError("no candidate formats");
  }
  for (size_t i = 0; i < options.formats.size(); ++i) {
    for (size_t j = 0; j < i; ++j) {
      if (options.formats[i] == options.formats[j]) {
        return absl::InvalidArgumentError(
            absl::StrCat("candidate format '", Name(options.formats[i]), "' is listed twice"));
      }
    }
  }
  LayerSensitivity s;
  s.formats = options.formats;
  // The model's shape, from a model opened in the window format (valid with any window).
  LocalModelOptions reference = base;
  reference.kv_layer_formats.clear();
  {
    reference.kv_format = base.kv_window_format;
    KVSERVE_ASSIGN_OR_RETURN(std::unique_ptr<LocalModel> lm, LocalModel::Open(reference));
    const KvGeometry& g = lm->kv_pool().geometry();
    s.shape = g.RegionShape();
    s.shape.key_rank = base.kv_lowrank_rank;  // sizes a lowrank candidate
    s.num_layers = g.num_layers;
  }
  for (KvFormat f : s.formats) {
    if (!kernels::KvFormatSupports(f, s.shape)) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "candidate format '%s' cannot store this model's KV (head_dim %d, block_size %d)",
          Name(f), s.shape.head_dim, s.shape.block_size));
    }
  }
  if (options.budget_bits > 0) {
    // Refuse an unreachable budget before the measurements rather than after them.
    LayerSensitivity shape_only = s;
    shape_only.perplexity.assign(s.num_layers, std::vector<double>(s.formats.size(), 0.0));
    KVSERVE_RETURN_IF_ERROR(ChooseCalibration(shape_only, options.budget_bits).status());
  }
  // The reference: the candidate with the most bits per element (the first of equals).
  size_t ref = 0;
  for (size_t i = 1; i < s.formats.size(); ++i) {
    if (kernels::KvLayerBytes(s.formats[i], s.shape) >
        kernels::KvLayerBytes(s.formats[ref], s.shape)) {
      ref = i;
    }
  }
  s.reference = s.formats[ref];
  reference.kv_format = s.reference;
  KVSERVE_ASSIGN_OR_RETURN(PerplexityResult r, Measure(reference, text, options.perplexity));
  s.reference_perplexity = r.perplexity();
  s.predicted_tokens = r.predicted_tokens;
  s.documents = r.documents;
  if (options.progress) {
    options.progress(absl::StrFormat("reference, every layer %s: perplexity %.6f",
                                     Name(s.reference), s.reference_perplexity));
  }
  s.perplexity.assign(s.num_layers, std::vector<double>(s.formats.size(), s.reference_perplexity));
  for (int layer = 0; layer < s.num_layers; ++layer) {
    for (size_t i = 0; i < s.formats.size(); ++i) {
      if (i == ref) continue;
      LocalModelOptions one = reference;
      one.kv_layer_formats[layer] = s.formats[i];
      KVSERVE_ASSIGN_OR_RETURN(PerplexityResult m, Measure(one, text, options.perplexity));
      s.perplexity[layer][i] = m.perplexity();
      if (options.progress) {
        options.progress(absl::StrFormat("layer %d in %s: perplexity %.6f (%+.4f%%)", layer,
                                         Name(s.formats[i]), m.perplexity(),
                                         100.0 * (m.perplexity() / s.reference_perplexity - 1)));
      }
    }
  }
  return s;
}

absl::StatusOr<CalibrationChoice> ChooseCalibration(const LayerSensitivity& s, double budget_bits) {
  if (!(budget_bits > 0) || !std::isfinite(budget_bits)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "budget must be a positive number of bits per element, got %g", budget_bits));
  }
  const std::vector<int64_t> bytes = CandidateBytes(s);
  const int64_t elements = 2ll * s.shape.block_size * s.shape.num_kv_heads * s.shape.head_dim;
  // sum_l 8 bytes_l <= budget_bits * layers * elements, in whole bytes.
  const int64_t budget_bytes = static_cast<int64_t>(
      std::floor(budget_bits * static_cast<double>(s.num_layers) * elements / 8.0 + 1e-9));
  double min_bits = std::numeric_limits<double>::infinity();
  KvFormat min_format = s.formats[0];
  for (KvFormat f : s.formats) {
    if (KvFormatBitsPerElement(f, s.shape) < min_bits) {
      min_bits = KvFormatBitsPerElement(f, s.shape);
      min_format = f;
    }
  }
  if (budget_bytes < int64_t{s.num_layers} * kernels::KvLayerBytes(min_format, s.shape)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "budget %g bits/element is below the smallest candidate, %s at %.4g bits/element "
        "(head_dim %d, block_size %d, scales included)",
        budget_bits, Name(min_format), min_bits, s.shape.head_dim, s.shape.block_size));
  }
  std::vector<std::vector<double>> cost(s.num_layers);
  for (int l = 0; l < s.num_layers; ++l) {
    for (double p : s.perplexity[l]) cost[l].push_back(p - s.reference_perplexity);
  }
  KVSERVE_ASSIGN_OR_RETURN(std::vector<int> pick, ChooseLayerFormats(cost, bytes, budget_bytes));
  CalibrationChoice c;
  c.budget_bits = budget_bits;
  c.predicted_perplexity = s.reference_perplexity;
  double bits = 0;
  for (int l = 0; l < s.num_layers; ++l) {
    const KvFormat f = s.formats[pick[l]];
    c.layer_formats.push_back(f);
    bits += KvFormatBitsPerElement(f, s.shape);
    c.predicted_perplexity += cost[l][pick[l]];
  }
  c.average_bits = bits / s.num_layers;
  return c;
}

LocalModelOptions ApplyCalibration(const LocalModelOptions& base, const CalibrationChoice& c) {
  LocalModelOptions o = base;
  std::map<KvFormat, int> count;
  for (KvFormat f : c.layer_formats) ++count[f];
  KvFormat common = c.layer_formats.empty() ? base.kv_format : c.layer_formats[0];
  for (const auto& [f, n] : count) {
    // Prefer more layers, then fewer bytes per element (at a head_dim every format stores).
    constexpr kernels::KvRegionShape kProbe{16, 1, 128};
    if (n > count[common] || (n == count[common] && kernels::KvLayerBytes(f, kProbe) <
                                                        kernels::KvLayerBytes(common, kProbe))) {
      common = f;
    }
  }
  o.kv_format = common;
  o.kv_layer_formats.clear();
  for (size_t l = 0; l < c.layer_formats.size(); ++l) {
    if (c.layer_formats[l] != common) o.kv_layer_formats[static_cast<int>(l)] = c.layer_formats[l];
  }
  return o;
}

absl::StatusOr<CalibrationResult> Calibrate(const LocalModelOptions& base, std::string_view text,
                                            const CalibrationOptions& options) {
  CalibrationResult result;
  if (!(options.budget_bits > 0) || !std::isfinite(options.budget_bits)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "budget must be a positive number of bits per element, got %g", options.budget_bits));
  }
  KVSERVE_ASSIGN_OR_RETURN(result.sensitivity, MeasureLayerSensitivity(base, text, options));
  KVSERVE_ASSIGN_OR_RETURN(result.choice,
                           ChooseCalibration(result.sensitivity, options.budget_bits));
  KVSERVE_ASSIGN_OR_RETURN(
      PerplexityResult r, Measure(ApplyCalibration(base, result.choice), text, options.perplexity));
  result.measured_perplexity = r.perplexity();
  if (options.progress) {
    options.progress(absl::StrFormat("chosen configuration: perplexity %.6f (predicted %.6f)",
                                     result.measured_perplexity,
                                     result.choice.predicted_perplexity));
  }
  return result;
}

std::string FormatCalibrationYaml(const CalibrationResult& r, const LocalModelOptions& base,
                                  std::string_view text_name) {
  const LayerSensitivity& s = r.sensitivity;
  const LocalModelOptions chosen = ApplyCalibration(base, r.choice);
  const auto rel = [&](double p) { return 100.0 * (p / s.reference_perplexity - 1); };
  std::string out = absl::StrFormat(
      "# Per-layer KV formats written by `kvserve calibrate` for %s\n"
      "# (%d layers, %d KV heads, head_dim %d, block_size %d), measured on %s\n"
      "# (%d documents, %d predicted tokens; recent_window %d, sink_tokens %d in %s).\n"
      "#\n"
      "# Budget %.4g bits/element (scales, zero points and padding included); chosen average "
      "%.4f.\n"
      "# Perplexity: every layer %s %.6f; chosen %.6f (%+.4f%%), predicted %.6f.\n"
      "#\n"
      "# Perplexity increase with only that layer in the format:\n",
      base.model_path, s.num_layers, s.shape.num_kv_heads, s.shape.head_dim, s.shape.block_size,
      text_name, s.documents, s.predicted_tokens, base.kv_recent_window, base.kv_sink_tokens,
      Name(base.kv_window_format), r.choice.budget_bits, r.choice.average_bits, Name(s.reference),
      s.reference_perplexity, r.measured_perplexity, rel(r.measured_perplexity),
      r.choice.predicted_perplexity);
  out += "#   layer";
  for (KvFormat f : s.formats) {
    out += absl::StrFormat(
        " %11s", absl::StrFormat("%s %.2fb", Name(f), KvFormatBitsPerElement(f, s.shape)));
  }
  out += "   chosen\n";
  for (int l = 0; l < s.num_layers; ++l) {
    out += absl::StrFormat("#   %5d", l);
    for (double p : s.perplexity[l]) out += absl::StrFormat(" %+10.4f%%", rel(p));
    out += absl::StrFormat("   %s\n", Name(r.choice.layer_formats[l]));
  }
  out += absl::StrFormat(
      "kv_cache:\n"
      "  format: %s\n"
      "  layer_formats: \"%s\"\n"
      "  recent_window: %d\n"
      "  sink_tokens: %d\n"
      "  window_format: %s\n",
      Name(chosen.kv_format), FormatLayerFormats(chosen.kv_layer_formats), base.kv_recent_window,
      base.kv_sink_tokens, Name(base.kv_window_format));
  return out;
}

}  // namespace kvserve::engine
