// Per-layer KV format calibration: dynamic quantization by layer importance.
//
// 1. Sensitivity: with every layer in the *reference* format (the most precise candidate), the
//    text's perplexity is measured; then, for each layer and each other candidate format, the
//    perplexity with only that layer in that format. The increase is the layer's sensitivity to
//    the format.
// 2. Choice: one format per layer minimising the sum of the measured increases (the usual
//    additive model of independent per-layer errors) subject to the average bits per element
//    over the layers being at most the budget. Bits are what the pool allocates for a block's
//    long-term layout at the model's head_dim and block size: values, scales, zero points and
//    region padding included. Solved exactly by dynamic programming over bytes (a
//    multiple-choice knapsack).
// 3. Verification: the chosen configuration's perplexity is measured.
//
// Tokens kept in the window format (recent_window, sink_tokens) are not part of the budget: it
// describes the long-term layout, which is what a long context consists of.
//
// Cost: (layers x (candidates - 1) + 2) perplexity evaluations of the text.
#ifndef KVSERVE_ENGINE_EVAL_CALIBRATE_H_
#define KVSERVE_ENGINE_EVAL_CALIBRATE_H_

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/eval/perplexity.h"
#include "engine/runtime/local_model.h"
#include "kernels/kv_format.h"

namespace kvserve::engine {

// Bits per element of a layer's K and V regions of one block in `f`, scales, zero points and
// padding included: 8 * KvLayerBytes / (2 * block_size * num_kv_heads * head_dim).
double KvFormatBitsPerElement(kernels::KvFormat f, const kernels::KvRegionShape& shape);

// Multiple-choice knapsack: picks choice[l] for every layer l minimising
// sum_l cost[l][choice[l]] subject to sum_l bytes[choice[l]] <= budget_bytes. Exact. Ties go to
// the smaller total bytes, then to the lower choice index. InvalidArgument when no assignment
// fits (budget below layers * min(bytes)) or the inputs are inconsistent.
// cost: [layers][choices]; bytes: [choices], positive.
absl::StatusOr<std::vector<int>> ChooseLayerFormats(const std::vector<std::vector<double>>& cost,
                                                    const std::vector<int64_t>& bytes,
                                                    int64_t budget_bytes);

struct CalibrationOptions {
  // Candidate long-term formats (at least one). The one with the most bits per element is the
  // reference every other layer keeps while one layer is measured.
  std::vector<kernels::KvFormat> formats;
  double budget_bits = 0;  // average bits per element over the layers, > 0
  PerplexityOptions perplexity;
  // Called after each perplexity evaluation ("layer 3 int4: 3.4912"); may be empty.
  std::function<void(const std::string&)> progress;
};

// Measured perplexity increases, before any choice.
struct LayerSensitivity {
  kernels::KvFormat reference = kernels::KvFormat::kFp32;
  double reference_perplexity = 0;
  int64_t predicted_tokens = 0;
  int64_t documents = 0;
  std::vector<kernels::KvFormat> formats;  // the candidates, in the order given
  // [layer][candidate]: perplexity with only that layer in that format (the reference's own
  // column holds reference_perplexity).
  std::vector<std::vector<double>> perplexity;
  kernels::KvRegionShape shape;  // block_size, num_kv_heads, head_dim of the model
  int num_layers = 0;
};

struct CalibrationChoice {
  std::vector<kernels::KvFormat> layer_formats;  // [layer]
  double average_bits = 0;                       // over the layers, as KvFormatBitsPerElement
  double budget_bits = 0;
  double predicted_perplexity = 0;  // reference + the sum of the chosen layers' increases
};

struct CalibrationResult {
  LayerSensitivity sensitivity;
  CalibrationChoice choice;
  double measured_perplexity = 0;  // of the chosen configuration
};

// Step 1. `base` supplies the model, block size, window policy and threads; its kv_format and
// kv_layer_formats are ignored. InvalidArgument for an empty candidate list, a duplicate, or a
// format the model's head_dim cannot store (naming it).
absl::StatusOr<LayerSensitivity> MeasureLayerSensitivity(const LocalModelOptions& base,
                                                         std::string_view text,
                                                         const CalibrationOptions& options);

// Step 2. InvalidArgument naming the budget when it is not positive or below what the smallest
// candidate needs.
absl::StatusOr<CalibrationChoice> ChooseCalibration(const LayerSensitivity& sensitivity,
                                                    double budget_bits);

// The model options of a choice: the most common chosen format as kv_format, the other layers
// as overrides (ties go to the cheaper format).
LocalModelOptions ApplyCalibration(const LocalModelOptions& base, const CalibrationChoice& choice);

// Steps 1 to 3.
absl::StatusOr<CalibrationResult> Calibrate(const LocalModelOptions& base, std::string_view text,
                                            const CalibrationOptions& options);

// The config fragment `kvserve serve --config` and the presets accept (the kv_cache: keys
// format, layer_formats, recent_window, sink_tokens and window_format), preceded by comments
// giving the measurements.
std::string FormatCalibrationYaml(const CalibrationResult& result, const LocalModelOptions& base,
                                  std::string_view text_name);

}  // namespace kvserve::engine

#endif  // KVSERVE_ENGINE_EVAL_CALIBRATE_H_
