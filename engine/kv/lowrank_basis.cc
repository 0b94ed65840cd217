#include "engine/kv/lowrank_basis.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "absl/strings/str_format.h"

namespace kvserve::engine {

SymmetricEigen JacobiEigen(const std::vector<double>& input, int n) {
  std::vector<double> a = input;
  std::vector<double> v(static_cast<size_t>(n) * n, 0.0);
  for (int i = 0; i < n; ++i) v[i * n + i] = 1.0;
  auto at = [&](int i, int j) -> double& { return a[static_cast<size_t>(i) * n + j]; };
  double total = 0;
  for (double x : a) total += x * x;
  for (int sweep = 0; sweep < 100; ++sweep) {
    double off = 0;
    for (int i = 0; i < n; ++i) {
      for (int j = i + 1; j < n; ++j) off += 2 * at(i, j) * at(i, j);
    }
    if (off <= 1e-28 * total || off == 0) break;
    for (int p = 0; p < n; ++p) {
      for (int q = p + 1; q < n; ++q) {
        const double apq = at(p, q);
        if (apq == 0) continue;
        // Rotation zeroing a[p][q] (Golub & Van Loan, symmetric Schur decomposition).
        const double theta = (at(q, q) - at(p, p)) / (2 * apq);
        const double t =
            (theta >= 0 ? 1.0 : -1.0) / (std::fabs(theta) + std::sqrt(theta * theta + 1));
        const double c = 1 / std::sqrt(t * t + 1), s = t * c;
        for (int k = 0; k < n; ++k) {  // columns p, q of a
          const double akp = at(k, p), akq = at(k, q);
          at(k, p) = c * akp - s * akq;
          at(k, q) = s * akp + c * akq;
        }
        for (int k = 0; k < n; ++k) {  // rows p, q of a
          const double apk = at(p, k), aqk = at(q, k);
          at(p, k) = c * apk - s * aqk;
          at(q, k) = s * apk + c * aqk;
        }
        for (int k = 0; k < n; ++k) {  // accumulate V = V J
          const double vkp = v[k * n + p], vkq = v[k * n + q];
          v[k * n + p] = c * vkp - s * vkq;
          v[k * n + q] = s * vkp + c * vkq;
        }
      }
    }
  }
  std::vector<int> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int x, int y) { return at(x, x) > at(y, y); });
  SymmetricEigen out;
  out.values.resize(n);
  out.vectors.resize(static_cast<size_t>(n) * n);
  for (int j = 0; j < n; ++j) {
    out.values[j] = at(order[j], order[j]);
    for (int k = 0; k < n; ++k) out.vectors[k * n + j] = v[k * n + order[j]];
  }
  return out;
}

KeyCovariance::KeyCovariance(int num_layers, int num_kv_heads, int head_dim)
    : num_layers_(num_layers),
      num_kv_heads_(num_kv_heads),
      head_dim_(head_dim),
      moment_(static_cast<size_t>(num_layers) * num_kv_heads,
              std::vector<double>(static_cast<size_t>(head_dim) * head_dim, 0.0)),
      count_(static_cast<size_t>(num_layers) * num_kv_heads, 0) {}

void KeyCovariance::Add(int layer, int head, const float* key) {
  std::vector<double>& m = moment_[Index(layer, head)];
  for (int i = 0; i < head_dim_; ++i) {
    const double ki = key[i];
    for (int j = 0; j < head_dim_; ++j) m[i * head_dim_ + j] += ki * key[j];
  }
  ++count_[Index(layer, head)];
}

absl::StatusOr<std::vector<float>> KeyCovariance::Basis(int rank) const {
  if (rank < 1 || rank > head_dim_) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "low-rank key rank must be in [1, head_dim = %d], got %d", head_dim_, rank));
  }
  std::vector<float> basis(static_cast<size_t>(num_layers_) * num_kv_heads_ * head_dim_ * rank);
  for (int l = 0; l < num_layers_; ++l) {
    for (int h = 0; h < num_kv_heads_; ++h) {
      if (count_[Index(l, h)] == 0) {
        return absl::FailedPreconditionError(absl::StrFormat(
            "no calibration keys for layer %d, KV head %d: the calibration text is empty", l, h));
      }
      const SymmetricEigen e = JacobiEigen(moment_[Index(l, h)], head_dim_);
      float* out = basis.data() + static_cast<size_t>(Index(l, h)) * head_dim_ * rank;
      for (int d = 0; d < head_dim_; ++d) {
        for (int i = 0; i < rank; ++i) {
          out[d * rank + i] = static_cast<float>(e.vectors[d * head_dim_ + i]);
        }
      }
    }
  }
  return basis;
}

double KeyCovariance::EnergyKept(int layer, int head, int rank) const {
  const SymmetricEigen e = JacobiEigen(moment_[Index(layer, head)], head_dim_);
  double kept = 0, total = 0;
  for (int i = 0; i < head_dim_; ++i) {
    total += e.values[i];
    if (i < rank) kept += e.values[i];
  }
  return total > 0 ? kept / total : 1.0;
}

}  // namespace kvserve::engine
