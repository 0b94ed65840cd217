// What a forward step costs, learned while serving, so that the scheduler can fill a step with
// prefill chunks only up to a time target (SchedulerOptions::max_step_time).
//
// A step is described by its StepShape: how many decode and prefill tokens it computes and how
// many KV slots they attend to in all (attention grows with context; the matmuls with tokens).
// LinearStepCostModel fits  time = c0 + c1 * tokens + c2 * decode_tokens + c3 * decode_context
//                                 + c4 * prefill_context
// (tokens = decode + prefill tokens: a decode token costs c1 + c2, a prefill token c1, so a
// decode token is never estimated cheaper than a prefill token, which also holds while only
// prefill-heavy steps have been seen)
// by least squares over the steps it has observed, older steps weighing less (exponential
// forgetting, so that it follows changes in load and thermal state), with every coefficient kept
// non-negative. It answers from the first observed step on: while the steps seen cannot tell the
// coefficients apart, the least-norm fit shares the time among them (a first guess that the next
// steps correct).
//
// Thread-safety: none; the engine thread owns it.
#ifndef KVSERVE_ENGINE_SERVING_STEP_COST_MODEL_H_
#define KVSERVE_ENGINE_SERVING_STEP_COST_MODEL_H_

#include <array>
#include <cstdint>
#include <optional>

#include "absl/time/time.h"

namespace kvserve::engine {

struct StepShape {
  int64_t decode_tokens = 0;
  int64_t decode_context = 0;  // slots the decode tokens attend to, summed
  int64_t prefill_tokens = 0;
  int64_t prefill_context = 0;  // slots the prefill tokens attend to, summed

  // A decode token at position `pos` (it attends to pos + 1 slots).
  void AddDecode(int64_t pos) {
    ++decode_tokens;
    decode_context += pos + 1;
  }
  // A chunk of `count` tokens from position `start` (token i attends to i + 1 slots).
  void AddPrefill(int64_t start, int64_t count) {
    prefill_tokens += count;
    prefill_context += count * start + count * (count + 1) / 2;
  }
};

class StepCostModel {
 public:
  virtual ~StepCostModel() = default;
  // The estimated wall time of a step of this shape; nullopt while the model cannot tell.
  virtual std::optional<absl::Duration> Estimate(const StepShape& shape) const = 0;
  // A step of this shape took `measured`.
  virtual void Observe(const StepShape& shape, absl::Duration measured) = 0;
};

class LinearStepCostModel : public StepCostModel {
 public:
  // `forgetting`: the weight an observation keeps per later observation, in (0, 1].
  explicit LinearStepCostModel(double forgetting = 0.98) : forgetting_(forgetting) {}

  std::optional<absl::Duration> Estimate(const StepShape& shape) const override;
  void Observe(const StepShape& shape, absl::Duration measured) override;

  static constexpr int kFeatures = 5;
  // The fitted coefficients (milliseconds per unit; contexts per 1,024 slots), for tests and logs.
  const std::array<double, kFeatures>& coefficients() const { return theta_; }

 private:
  static std::array<double, kFeatures> Features(const StepShape& s);
  void Fit();

  double forgetting_;
  std::array<std::array<double, kFeatures>, kFeatures> a_{};  // sum of w * x x^T
  std::array<double, kFeatures> b_{};                         // sum of w * x y
  std::array<double, kFeatures> theta_{};
  int64_t decode_only_steps_ = 0;
  int64_t prefill_steps_ = 0;
};

}  // namespace kvserve::engine

#endif  // KVSERVE_ENGINE_SERVING_STEP_COST_MODEL_H_
