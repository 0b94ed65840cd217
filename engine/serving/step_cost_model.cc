#include "engine/serving/step_cost_model.h"

#include <cmath>

namespace kvserve::engine {
namespace {

constexpr int kN = LinearStepCostModel::kFeatures;

// Solves (a + ridge I) x = b restricted to the coefficients in `active` (the others are 0), by
// Gaussian elimination with partial pivoting. False when the system is singular.
bool SolveActive(const std::array<std::array<double, kN>, kN>& a, const std::array<double, kN>& b,
                 const std::array<bool, kN>& active, std::array<double, kN>* x) {
  int idx[kN];
  int n = 0;
  for (int i = 0; i < kN; ++i) {
    if (active[i]) idx[n++] = i;
  }
  double m[kN][kN + 1];
  double trace = 0;
  for (int i = 0; i < n; ++i) trace += a[idx[i]][idx[i]];
  const double ridge = 1e-9 * (trace > 0 ? trace : 1.0);
  for (int i = 0; i < n; ++i) {
    for (int j = 0; j < n; ++j) m[i][j] = a[idx[i]][idx[j]] + (i == j ? ridge : 0.0);
    m[i][n] = b[idx[i]];
  }
  for (int c = 0; c < n; ++c) {
    int p = c;
    for (int r = c + 1; r < n; ++r) {
      if (std::abs(m[r][c]) > std::abs(m[p][c])) p = r;
    }
    if (std::abs(m[p][c]) < 1e-300) return false;
    for (int k = 0; k <= n; ++k) std::swap(m[c][k], m[p][k]);
    for (int r = 0; r < n; ++r) {
      if (r == c) continue;
      const double f = m[r][c] / m[c][c];
      for (int k = c; k <= n; ++k) m[r][k] -= f * m[c][k];
    }
  }
  x->fill(0.0);
  for (int i = 0; i < n; ++i) (*x)[idx[i]] = m[i][n] / m[i][i];
  return true;
}

}  // namespace

std::array<double, kN> LinearStepCostModel::Features(const StepShape& s) {
  // Every token pays the matmuls (tokens); a decode token pays its share of a batch too thin to
  // use the weights well on top (decode_tokens), never less than a prefill token.
  return {1.0, static_cast<double>(s.decode_tokens + s.prefill_tokens),
          static_cast<double>(s.decode_tokens), s.decode_context / 1024.0,
          s.prefill_context / 1024.0};
}

std::optional<absl::Duration> LinearStepCostModel::Estimate(const StepShape& shape) const {
  if (decode_only_steps_ + prefill_steps_ == 0) return std::nullopt;
  const std::array<double, kN> x = Features(shape);
  double ms = 0;
  for (int i = 0; i < kN; ++i) ms += theta_[i] * x[i];
  return absl::Microseconds(std::llround(ms * 1000.0));
}

void LinearStepCostModel::Observe(const StepShape& shape, absl::Duration measured) {
  const std::array<double, kN> x = Features(shape);
  const double y = absl::ToDoubleMilliseconds(measured);
  for (int i = 0; i < kN; ++i) {
    for (int j = 0; j < kN; ++j) a_[i][j] = forgetting_ * a_[i][j] + x[i] * x[j];
    b_[i] = forgetting_ * b_[i] + x[i] * y;
  }
  if (shape.prefill_tokens > 0) {
    ++prefill_steps_;
  } else {
    ++decode_only_steps_;
  }
  Fit();
}

void LinearStepCostModel::Fit() {
  // Non-negative least squares by elimination: solve, drop the most negative coefficient from
  // the active set, solve again (a step never costs less for computing more).
  std::array<bool, kN> active;
  active.fill(true);
  for (int round = 0; round < kN; ++round) {
    std::array<double, kN> x;
    if (!SolveActive(a_, b_, active, &x)) return;
    int worst = -1;
    for (int i = 0; i < kN; ++i) {
      if (active[i] && x[i] < 0 && (worst < 0 || x[i] < x[worst])) worst = i;
    }
    if (worst < 0) {
      theta_ = x;
      return;
    }
    active[worst] = false;
  }
}

}  // namespace kvserve::engine
