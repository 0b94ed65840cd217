// Bases of the low-rank key format (kernels::KvFormat::kLowrank).
//
// Keys of one layer and KV head live close to a low-dimensional subspace. Over calibration text
// the uncentered second moment C = sum_t k_t k_t^T of that head's keys (RoPE applied, as the
// cache stores them) is accumulated; its top-r eigenvectors B = [b_1 .. b_r] (head_dim x r,
// orthonormal) are the right singular vectors of the key matrix, and k ~ B (B^T k) is the best
// rank-r approximation in the least-squares sense. The cache then stores c = B^T k (r numbers)
// per token and head, and attention scores q . k as (B^T q) . c.
//
// The eigenvectors come from a cyclic Jacobi solver on the small symmetric head_dim x head_dim
// matrix, in double precision (no external library).
#ifndef KVSERVE_ENGINE_KV_LOWRANK_BASIS_H_
#define KVSERVE_ENGINE_KV_LOWRANK_BASIS_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"

namespace kvserve::engine {

struct SymmetricEigen {
  std::vector<double> values;   // [n], descending
  std::vector<double> vectors;  // [n][n] row-major; column j is the unit eigenvector of values[j]
};

// Eigen-decomposition of the symmetric n x n matrix `a` (row-major; only symmetric input is
// meaningful) by cyclic Jacobi rotations until the off-diagonal mass is below 1e-14 of the
// total (or 100 sweeps).
SymmetricEigen JacobiEigen(const std::vector<double>& a, int n);

// Accumulates the keys' second moments of every (layer, KV head) and turns them into bases.
// Not thread-safe.
class KeyCovariance {
 public:
  KeyCovariance(int num_layers, int num_kv_heads, int head_dim);

  // key: [head_dim] floats of one token of (layer, head).
  void Add(int layer, int head, const float* key);
  int64_t tokens(int layer, int head) const { return count_[Index(layer, head)]; }

  // Bases of rank `rank`: [num_layers][num_kv_heads][head_dim][rank] floats, column i of a
  // (layer, head) matrix being its i-th principal direction. FailedPrecondition when a head saw
  // no key; InvalidArgument for rank outside [1, head_dim].
  absl::StatusOr<std::vector<float>> Basis(int rank) const;
  // Fraction of sum_t |k_t|^2 that the rank-`rank` basis of (layer, head) keeps.
  double EnergyKept(int layer, int head, int rank) const;

 private:
  int Index(int layer, int head) const { return layer * num_kv_heads_ + head; }

  int num_layers_, num_kv_heads_, head_dim_;
  std::vector<std::vector<double>> moment_;  // [layer * heads + head][head_dim * head_dim]
  std::vector<int64_t> count_;
};

}  // namespace kvserve::engine

#endif  // KVSERVE_ENGINE_KV_LOWRANK_BASIS_H_
