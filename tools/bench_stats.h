// Summary statistics of the serving benchmark's latency samples.
#ifndef KVSERVE_TOOLS_BENCH_STATS_H_
#define KVSERVE_TOOLS_BENCH_STATS_H_

#include <cstdint>
#include <vector>

namespace kvserve::tools {

struct LatencySummary {
  int64_t count = 0;
  double mean = 0;
  double median = 0;  // the 50th percentile
  double p90 = 0;
  double p99 = 0;
  double min = 0;
  double max = 0;
};

// The q-th percentile (q in [0, 100]) of `sorted` (ascending) by linear interpolation between the
// closest ranks, as numpy.percentile's default: rank = q / 100 * (n - 1). 0 for an empty input.
double Percentile(const std::vector<double>& sorted, double q);

// Every field of LatencySummary; all zero for an empty input. Takes the samples by value (sorts).
LatencySummary Summarize(std::vector<double> samples);

}  // namespace kvserve::tools

#endif  // KVSERVE_TOOLS_BENCH_STATS_H_
