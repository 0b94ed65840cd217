// Test helpers for the monitoring files in deploy/: the metric and label names a PromQL
// expression refers to, and the series names and label names of a text exposition.
//
// ScanPromql is a lexer, not a full parser: it knows strings, ranges (`[5m]`,
// `[$__rate_interval]`), label matchers (`{a="x", b=~"y"}`), grouping clauses (`by (a, b)`, `on
// (a)`, `group_left (a)`), function calls and keywords, which is all it needs to tell a metric name
// from a label name from a function. Unbalanced brackets, unterminated strings and unknown
// functions are errors.
#ifndef KVSERVE_TESTS_SERVER_METRICS_PROMQL_NAMES_H_
#define KVSERVE_TESTS_SERVER_METRICS_PROMQL_NAMES_H_

#include <map>
#include <set>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace kvserve::server::testing {

struct PromqlNames {
  std::set<std::string> metrics;    // series selectors: `kvserve_kv_bytes`
  std::set<std::string> labels;     // in matchers and grouping clauses
  std::set<std::string> functions;  // functions and aggregations called
};

// The names in one PromQL expression. Grafana variables ($job, ${x}, $__rate_interval) may
// appear inside strings and ranges.
absl::StatusOr<PromqlNames> ScanPromql(absl::string_view expr);

// The names in a Grafana Prometheus variable query: `label_values(<selector>, <label>)`,
// `label_values(<label>)`, `metrics(<regex>)` or a plain PromQL expression.
absl::StatusOr<PromqlNames> ScanGrafanaVariableQuery(absl::string_view query);

// Label names in a Grafana legend format: "{{format}} {{ role }}" -> {format, role}.
std::set<std::string> LegendLabels(absl::string_view legend);

// Series names of a text exposition (`name` of every sample line, so histograms give
// `x_bucket`, `x_sum`, `x_count`) mapped to the label names seen on them.
std::map<std::string, std::set<std::string>> ExpositionLabels(const std::string& text);

// Metric names listed in the tables of docs/metrics.md (first column, `kvserve_...`) with their
// type column ("counter", "gauge", "histogram").
std::map<std::string, std::string> DocumentedMetrics(const std::string& markdown);

}  // namespace kvserve::server::testing

#endif  // KVSERVE_TESTS_SERVER_METRICS_PROMQL_NAMES_H_
