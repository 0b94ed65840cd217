#include <cctype>
#include <sstream>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "tests/server/metrics/promql_names.h"

namespace kvserve::server::testing {
namespace {

// PromQL functions and aggregation operators (Prometheus 2.x).
const std::set<std::string>& KnownFunctions() {
  static const auto* const kFunctions = new std::set<std::string>{
      // aggregation operators
      "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk",
      "topk", "quantile",
      // functions
      "abs", "absent", "absent_over_time", "ceil", "changes", "clamp", "clamp_max", "clamp_min",
      "day_of_month", "day_of_week", "day_of_year", "days_in_month", "delta", "deriv", "exp",
      "floor", "histogram_count", "histogram_sum", "histogram_fraction", "histogram_quantile",
      "holt_winters", "hour", "idelta", "increase", "irate", "label_join", "label_replace", "ln",
      "log2", "log10", "minute", "month", "predict_linear", "rate", "resets", "round", "scalar",
      "sgn", "sort", "sort_desc", "sqrt", "time", "timestamp", "vector", "year", "avg_over_time",
      "min_over_time", "max_over_time", "sum_over_time", "count_over_time", "quantile_over_time",
      "stddev_over_time", "stdvar_over_time", "last_over_time", "present_over_time", "acos",
      "acosh", "asin", "asinh", "atan", "atanh", "cos", "cosh", "sin", "sinh", "tan", "tanh", "deg",
      "rad", "pi"};
  return *kFunctions;
}

bool IsAggregation(const std::string& word) {
  static const auto* const kAggregations =
      new std::set<std::string>{"sum",    "min",   "max",          "avg",     "group", "stddev",
                                "stdvar", "count", "count_values", "bottomk", "topk",  "quantile"};
  return kAggregations->contains(word);
}

bool IsGrouping(const std::string& word) {
  return word == "by" || word == "without" || word == "on" || word == "ignoring" ||
         word == "group_left" || word == "group_right";
}

bool IsKeyword(const std::string& word) {
  return IsGrouping(word) || word == "bool" || word == "and" || word == "or" || word == "unless" ||
         word == "offset" || word == "atan2" || word == "inf" || word == "nan" || word == "Inf" ||
         word == "NaN";
}

bool IsNameStart(char c) {
  return std::isalpha(static_cast<unsigned char>(c)) || c == '_' || c == ':';
}
bool IsNameChar(char c) { return IsNameStart(c) || std::isdigit(static_cast<unsigned char>(c)); }

class Scanner {
 public:
  explicit Scanner(absl::string_view s) : s_(s) {}

  absl::StatusOr<PromqlNames> Run() {
    PromqlNames names;
    int parens = 0;
    std::string pending_grouping;
    while (true) {
      SkipSpace();
      if (i_ >= s_.size()) break;
      const char c = s_[i_];
      if (c == '"' || c == '\'' || c == '`') {
        if (absl::Status st = SkipString(); !st.ok()) return st;
      } else if (c == '[') {
        const size_t end = s_.find(']', i_);
        if (end == absl::string_view::npos) return Error("unterminated range '['");
        i_ = end + 1;
      } else if (c == '{') {
        if (absl::Status st = Matchers(names.labels); !st.ok()) return st;
      } else if (c == '(' && !pending_grouping.empty()) {
        pending_grouping.clear();
        if (absl::Status st = LabelList(names.labels); !st.ok()) return st;
      } else if (c == '(') {
        ++parens;
        ++i_;
      } else if (c == ')') {
        if (--parens < 0) return Error("unbalanced ')'");
        ++i_;
      } else if (c == '}' || c == ']') {
        return Error(absl::StrCat("unbalanced '", std::string(1, c), "'"));
      } else if (c == '$') {
        return Error("Grafana variable outside a string or range");
      } else if (std::isdigit(static_cast<unsigned char>(c)) ||
                 (c == '.' && i_ + 1 < s_.size() &&
                  std::isdigit(static_cast<unsigned char>(s_[i_ + 1])))) {
        while (i_ < s_.size() && (std::isalnum(static_cast<unsigned char>(s_[i_])) ||
                                  s_[i_] == '.' || s_[i_] == '_')) {
          ++i_;
        }
      } else if (IsNameStart(c)) {
        const std::string word = Name();
        SkipSpace();
        // `sum by (x) (...)`: an aggregation whose clause comes before its argument.
        const bool call = (i_ < s_.size() && s_[i_] == '(') ||
                          (IsAggregation(word) && (NextWordIs("by") || NextWordIs("without")));
        if (IsGrouping(word)) {
          // group_left/group_right may stand without a label list.
          if (call) pending_grouping = word;
        } else if (IsKeyword(word)) {
          // nothing to record
        } else if (call) {
          if (!KnownFunctions().contains(word)) {
            return Error(absl::StrCat("unknown function '", word, "'"));
          }
          names.functions.insert(word);
        } else {
          names.metrics.insert(word);
        }
      } else {
        ++i_;  // operators and commas
      }
    }
    if (parens != 0) return Error("unbalanced '('");
    return names;
  }

 private:
  absl::Status Error(absl::string_view what) const {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " at offset ", i_, " of PromQL expression: ", s_));
  }

  void SkipSpace() {
    while (i_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[i_]))) ++i_;
  }

  bool NextWordIs(absl::string_view word) const {
    return s_.substr(i_, word.size()) == word &&
           (i_ + word.size() >= s_.size() || !IsNameChar(s_[i_ + word.size()]));
  }

  std::string Name() {
    const size_t start = i_;
    while (i_ < s_.size() && IsNameChar(s_[i_])) ++i_;
    return std::string(s_.substr(start, i_ - start));
  }

  absl::Status SkipString() {
    const char quote = s_[i_++];
    while (i_ < s_.size() && s_[i_] != quote) {
      if (s_[i_] == '\\' && quote != '`') ++i_;
      ++i_;
    }
    if (i_ >= s_.size()) return Error("unterminated string");
    ++i_;
    return absl::OkStatus();
  }

  // `{name op "value", ...}`
  absl::Status Matchers(std::set<std::string>& labels) {
    ++i_;
    while (true) {
      SkipSpace();
      if (i_ >= s_.size()) return Error("unterminated '{'");
      if (s_[i_] == '}') {
        ++i_;
        return absl::OkStatus();
      }
      if (s_[i_] == ',') {
        ++i_;
        continue;
      }
      if (!IsNameStart(s_[i_])) return Error("label name expected in '{...}'");
      labels.insert(Name());
      SkipSpace();
      if (s_.substr(i_, 2) == "=~" || s_.substr(i_, 2) == "!~" || s_.substr(i_, 2) == "!=") {
        i_ += 2;
      } else if (i_ < s_.size() && s_[i_] == '=') {
        ++i_;
      } else {
        return Error("matcher operator expected in '{...}'");
      }
      SkipSpace();
      if (i_ >= s_.size() || (s_[i_] != '"' && s_[i_] != '\'' && s_[i_] != '`')) {
        return Error("quoted label value expected in '{...}'");
      }
      if (absl::Status st = SkipString(); !st.ok()) return st;
    }
  }

  // `(a, b, c)` after by/without/on/ignoring/group_left/group_right.
  absl::Status LabelList(std::set<std::string>& labels) {
    ++i_;
    while (true) {
      SkipSpace();
      if (i_ >= s_.size()) return Error("unterminated label list");
      if (s_[i_] == ')') {
        ++i_;
        return absl::OkStatus();
      }
      if (s_[i_] == ',') {
        ++i_;
        continue;
      }
      if (!IsNameStart(s_[i_])) return Error("label name expected in grouping list");
      labels.insert(Name());
    }
  }

  absl::string_view s_;
  size_t i_ = 0;
};

}  // namespace

absl::StatusOr<PromqlNames> ScanPromql(absl::string_view expr) { return Scanner(expr).Run(); }

absl::StatusOr<PromqlNames> ScanGrafanaVariableQuery(absl::string_view query) {
  absl::string_view q = absl::StripAsciiWhitespace(query);
  if (absl::ConsumePrefix(&q, "label_values(")) {
    if (!absl::ConsumeSuffix(&q, ")")) {
      return absl::InvalidArgumentError(absl::StrCat("label_values without ')': ", query));
    }
    const size_t comma = q.rfind(',');
    absl::string_view label =
        absl::StripAsciiWhitespace(comma == absl::string_view::npos ? q : q.substr(comma + 1));
    PromqlNames names;
    if (comma != absl::string_view::npos) {
      absl::StatusOr<PromqlNames> selector = ScanPromql(q.substr(0, comma));
      if (!selector.ok()) return selector.status();
      names = *std::move(selector);
    }
    names.labels.insert(std::string(label));
    return names;
  }
  if (absl::StartsWith(q, "metrics(")) return PromqlNames{};
  return ScanPromql(q);
}

std::set<std::string> LegendLabels(absl::string_view legend) {
  std::set<std::string> labels;
  size_t pos = 0;
  while ((pos = legend.find("{{", pos)) != absl::string_view::npos) {
    const size_t end = legend.find("}}", pos);
    if (end == absl::string_view::npos) break;
    labels.insert(std::string(absl::StripAsciiWhitespace(legend.substr(pos + 2, end - pos - 2))));
    pos = end + 2;
  }
  return labels;
}

std::map<std::string, std::set<std::string>> ExpositionLabels(const std::string& text) {
  std::map<std::string, std::set<std::string>> series;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    size_t i = 0;
    while (i < line.size() && IsNameChar(line[i])) ++i;
    std::set<std::string>& labels = series[line.substr(0, i)];
    if (i < line.size() && line[i] == '{') {
      ++i;
      while (i < line.size() && line[i] != '}') {
        const size_t eq = line.find('=', i);
        if (eq == std::string::npos) break;
        labels.insert(std::string(absl::StripAsciiWhitespace(line.substr(i, eq - i))));
        // Skip the quoted value (escapes: \" \\ \n).
        size_t j = eq + 2;
        while (j < line.size() && line[j] != '"') j += line[j] == '\\' ? 2 : 1;
        i = j + 1;
        if (i < line.size() && line[i] == ',') ++i;
      }
    }
  }
  return series;
}

std::map<std::string, std::string> DocumentedMetrics(const std::string& markdown) {
  std::map<std::string, std::string> metrics;
  for (absl::string_view line : absl::StrSplit(markdown, '\n')) {
    if (!absl::StartsWith(line, "| `kvserve_")) continue;
    std::vector<absl::string_view> cells = absl::StrSplit(line, '|');
    if (cells.size() < 4) continue;
    absl::string_view name = absl::StripAsciiWhitespace(cells[1]);
    absl::ConsumePrefix(&name, "`");
    absl::ConsumeSuffix(&name, "`");
    metrics[std::string(name)] = std::string(absl::StripAsciiWhitespace(cells[2]));
  }
  return metrics;
}

}  // namespace kvserve::server::testing
