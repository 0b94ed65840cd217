// A histogram with fixed bucket bounds, for figures the server exports (Prometheus histograms are
// built from these cumulative counts; the engine links no metrics library).
//
// Thread-safety: none; the owner serializes Observe and copies.
#ifndef KVSERVE_ENGINE_COMMON_HISTOGRAM_H_
#define KVSERVE_ENGINE_COMMON_HISTOGRAM_H_

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

namespace kvserve::engine {

struct FixedHistogram {
  FixedHistogram() = default;
  // `bounds`: upper bounds of the buckets, increasing; values above the last go to +Inf.
  explicit FixedHistogram(std::vector<double> bounds)
      : bounds(std::move(bounds)), counts(this->bounds.size() + 1, 0) {}

  void Observe(double v) {
    const size_t b = std::lower_bound(bounds.begin(), bounds.end(), v) - bounds.begin();
    ++counts[b];
    ++count;
    sum += v;
  }

  std::vector<double> bounds;
  std::vector<int64_t>
      counts;  // [bounds.size() + 1]: counts[i] = values in (bounds[i-1], bounds[i]]
  int64_t count = 0;
  double sum = 0;
};

}  // namespace kvserve::engine

#endif  // KVSERVE_ENGINE_COMMON_HISTOGRAM_H_
