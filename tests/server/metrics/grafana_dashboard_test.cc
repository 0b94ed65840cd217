// The Grafana dashboard and its provisioning files in deploy/grafana: every PromQL expression
// names only metrics that docs/metrics.md documents and that the real server exports, with label
// names those series carry; a real Prometheus evaluates every expression against a scraped
// server to a non-empty result; the data source the dashboard selects is the provisioned one.
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/json_util.h"
#include "gtest/gtest.h"
#include "tests/server/grpc/server_process.h"
#include "tests/server/metrics/metrics_scrape.h"
#include "tests/server/metrics/prometheus_process.h"
#include "tests/server/metrics/promql_names.h"
#include "yaml-cpp/yaml.h"

namespace kvserve::server::testing {
namespace {

using google::protobuf::Struct;
using google::protobuf::Value;

// Labels Prometheus attaches to every scraped series (target labels).
const std::set<std::string> kTargetLabels = {"job", "instance"};
constexpr char kDashboard[] = "/deploy/grafana/dashboards/kvserve.json";
constexpr char kDatasources[] = "/deploy/grafana/provisioning/datasources/prometheus.yaml";
constexpr char kProviders[] = "/deploy/grafana/provisioning/dashboards/kvserve.yaml";

std::string ReadSourceFile(const std::string& relative) {
  std::ifstream in(SourceDir() + relative);
  EXPECT_TRUE(in.good()) << "cannot read " << SourceDir() + relative;
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

Struct ParseJson(const std::string& text) {
  Struct s;
  const auto status = google::protobuf::util::JsonStringToMessage(text, &s);
  EXPECT_TRUE(status.ok()) << kDashboard << ": " << status.ToString();
  return s;
}

std::string Str(const Struct& s, const std::string& key) {
  auto it = s.fields().find(key);
  return it == s.fields().end() ? "" : it->second.string_value();
}

// A PromQL query of the dashboard: a panel target or a variable query.
struct DashboardQuery {
  std::string where;  // "panel 'KV bytes by state' target A" / "variable instance"
  std::string expr;
  std::string legend;
  bool variable = false;
};

void CollectTargets(const Value& v, const std::string& where, std::vector<DashboardQuery>& out) {
  if (v.has_list_value()) {
    for (const Value& e : v.list_value().values()) CollectTargets(e, where, out);
    return;
  }
  if (!v.has_struct_value()) return;
  const Struct& s = v.struct_value();
  std::string here = where;
  if (!Str(s, "title").empty()) here = absl::StrCat("panel '", Str(s, "title"), "'");
  if (s.fields().contains("expr")) {
    out.push_back({absl::StrCat(here, " target ", Str(s, "refId")), Str(s, "expr"),
                   Str(s, "legendFormat"), false});
  }
  for (const auto& [key, child] : s.fields()) {
    if (key != "templating") CollectTargets(child, here, out);
  }
}

std::vector<DashboardQuery> DashboardQueries(const Struct& dashboard) {
  std::vector<DashboardQuery> queries;
  CollectTargets(dashboard.fields().at("panels"), "", queries);
  for (const Value& var : dashboard.fields()
                              .at("templating")
                              .struct_value()
                              .fields()
                              .at("list")
                              .list_value()
                              .values()) {
    const Struct& v = var.struct_value();
    if (Str(v, "type") != "query") continue;
    const Value& q = v.fields().at("query");
    queries.push_back({absl::StrCat("variable ", Str(v, "name")),
                       q.has_struct_value() ? Str(q.struct_value(), "query") : q.string_value(), "",
                       true});
  }
  return queries;
}

// The documented metric a series name belongs to: itself, or the histogram it is a part of.
bool Documented(const std::string& series, const std::map<std::string, std::string>& docs) {
  if (docs.contains(series)) return true;
  for (const char* suffix : {"_bucket", "_sum", "_count"}) {
    if (absl::EndsWith(series, suffix)) {
      auto it = docs.find(series.substr(0, series.size() - std::string(suffix).size()));
      if (it != docs.end() && it->second == "histogram") return true;
    }
  }
  return false;
}

// Problems of one query against the exported series (name -> label names) and the documented
// metrics; empty when it is right.
std::vector<std::string> CheckQuery(const DashboardQuery& q,
                                    const std::map<std::string, std::set<std::string>>& exported,
                                    const std::map<std::string, std::string>& docs) {
  std::vector<std::string> problems;
  absl::StatusOr<PromqlNames> names =
      q.variable ? ScanGrafanaVariableQuery(q.expr) : ScanPromql(q.expr);
  if (!names.ok()) return {absl::StrCat(q.where, ": ", names.status().message())};
  if (names->metrics.empty()) problems.push_back(absl::StrCat(q.where, ": no metric in ", q.expr));
  std::set<std::string> allowed = kTargetLabels;
  for (const std::string& m : names->metrics) {
    if (!Documented(m, docs)) {
      problems.push_back(absl::StrCat(q.where, ": metric ", m, " is not in docs/metrics.md"));
    }
    auto it = exported.find(m);
    if (it == exported.end()) {
      problems.push_back(absl::StrCat(q.where, ": metric ", m, " is not exported by the server"));
    } else {
      allowed.insert(it->second.begin(), it->second.end());
    }
  }
  std::set<std::string> used = names->labels;
  for (const std::string& l : LegendLabels(q.legend)) used.insert(l);
  for (const std::string& l : used) {
    if (!allowed.contains(l)) {
      problems.push_back(absl::StrCat(q.where, ": label ", l, " is on none of the series of ",
                                      absl::StrJoin(names->metrics, ", ")));
    }
  }
  return problems;
}

TEST(PromqlNamesTest, TellsMetricsLabelsAndFunctionsApart) {
  absl::StatusOr<PromqlNames> n = ScanPromql(
      R"(histogram_quantile(0.99, sum by (le) (rate(kvserve_x_seconds_bucket{job=~"$job",)"
      R"( instance!="a,b}"}[$__rate_interval]))) / on (instance) group_left (format))"
      R"( max without(role) (kvserve_y_bytes offset 5m) > bool 2e3)");
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_EQ(n->metrics, (std::set<std::string>{"kvserve_x_seconds_bucket", "kvserve_y_bytes"}));
  EXPECT_EQ(n->labels, (std::set<std::string>{"le", "job", "instance", "format", "role"}));
  EXPECT_EQ(n->functions, (std::set<std::string>{"histogram_quantile", "sum", "rate", "max"}));

  n = ScanGrafanaVariableQuery(R"(label_values(kvserve_build_info{job=~"$job"}, instance))");
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_EQ(n->metrics, std::set<std::string>{"kvserve_build_info"});
  EXPECT_EQ(n->labels, (std::set<std::string>{"job", "instance"}));
  EXPECT_EQ(LegendLabels("{{format}} / {{ role }}"), (std::set<std::string>{"format", "role"}));
}

TEST(PromqlNamesTest, RejectsMalformedExpressions) {
  EXPECT_FALSE(ScanPromql("sum(rate(kvserve_a[5m])").ok());           // '(' left open
  EXPECT_FALSE(ScanPromql("kvserve_a{job=\"x}").ok());                // string left open
  EXPECT_FALSE(ScanPromql("kvserve_a{job}").ok());                    // no matcher
  EXPECT_FALSE(ScanPromql("rates(kvserve_a[5m])").ok());              // unknown function
  EXPECT_FALSE(ScanPromql("rate(kvserve_a[$__rate_interval)").ok());  // range left open
  EXPECT_FALSE(ScanPromql("kvserve_a * $scale").ok());                // bare variable
}

TEST(PromqlNamesTest, ExpositionAndDocsParsers) {
  const auto series = ExpositionLabels(
      "# HELP a x\n# TYPE a counter\na_total{status=\"o\\\"k\",policy=\"lru\"} 1\n"
      "h_bucket{le=\"+Inf\"} 3\nh_sum 2\n");
  EXPECT_EQ(series.at("a_total"), (std::set<std::string>{"status", "policy"}));
  EXPECT_EQ(series.at("h_bucket"), std::set<std::string>{"le"});
  EXPECT_TRUE(series.at("h_sum").empty());
  const auto docs = DocumentedMetrics(
      "| metric | type |\n|---|---|\n| `kvserve_a_total` | counter | | x |\n"
      "| `kvserve_h_seconds` | histogram | | y |\n");
  EXPECT_EQ(docs, (std::map<std::string, std::string>{{"kvserve_a_total", "counter"},
                                                      {"kvserve_h_seconds", "histogram"}}));
  EXPECT_TRUE(Documented("kvserve_h_seconds_bucket", docs));
  EXPECT_FALSE(Documented("kvserve_a_total_bucket", docs));
}

// The check itself finds a misspelt metric, an undocumented one and a label the series lack.
TEST(PromqlNamesTest, CheckQueryReportsWrongNames) {
  const std::map<std::string, std::set<std::string>> exported = {{"kvserve_kv_bytes", {"state"}},
                                                                 {"kvserve_extra", {}}};
  const std::map<std::string, std::string> docs = {{"kvserve_kv_bytes", "gauge"}};
  EXPECT_TRUE(CheckQuery({"t", R"(sum by (state) (kvserve_kv_bytes{job="x"}))", "{{state}}"},
                         exported, docs)
                  .empty());
  EXPECT_EQ(CheckQuery({"t", "kvserve_kv_byte", ""}, exported, docs).size(), 2u);
  EXPECT_EQ(CheckQuery({"t", "kvserve_extra", ""}, exported, docs),
            std::vector<std::string>{"t: metric kvserve_extra is not in docs/metrics.md"});
  EXPECT_EQ(
      CheckQuery({"t", "sum by (format) (kvserve_kv_bytes)", "{{role}}"}, exported, docs),
      (std::vector<std::string>{"t: label format is on none of the series of kvserve_kv_bytes",
                                "t: label role is on none of the series of kvserve_kv_bytes"}));
}

TEST(GrafanaDashboardTest, ShowsWhatTheMemoryAccountingAsksFor) {
  const Struct dashboard = ParseJson(ReadSourceFile(kDashboard));
  EXPECT_EQ(Str(dashboard, "uid"), "kvserve-overview");
  const std::vector<DashboardQuery> queries = DashboardQueries(dashboard);
  std::string all;
  for (const DashboardQuery& q : queries) all += q.expr + "\n";
  for (const char* needle :
       {"sum by (format, role) (kvserve_kv_used_bytes", "kvserve_kv_usage_ratio",
        "kvserve_kv_compression_ratio", "kvserve_prefix_cache_hit_tokens_total",
        "kvserve_prefix_cache_query_tokens_total", "kvserve_block_evictions_total",
        "kvserve_preemptions_total",
        "histogram_quantile(0.99, sum by (le) (rate(kvserve_time_to_first_token_seconds_bucket",
        "histogram_quantile(0.5, sum by (le) (rate(kvserve_inter_token_latency_seconds_bucket",
        "rate(kvserve_generation_tokens_total", "rate(kvserve_requests_total"}) {
    EXPECT_TRUE(absl::StrContains(all, needle)) << "no query contains " << needle;
  }
}

// Every panel reads the `datasource` variable, whose default is the provisioned data source;
// ids are unique and the grid is 24 columns wide.
TEST(GrafanaDashboardTest, PanelsUseTheProvisionedDatasource) {
  const Struct dashboard = ParseJson(ReadSourceFile(kDashboard));
  const YAML::Node ds = YAML::LoadFile(SourceDir() + kDatasources);
  ASSERT_EQ(ds["apiVersion"].as<int>(), 1);
  ASSERT_EQ(ds["datasources"].size(), 1u);
  const std::string uid = ds["datasources"][0]["uid"].as<std::string>();
  EXPECT_EQ(ds["datasources"][0]["type"].as<std::string>(), "prometheus");

  bool have_variable = false;
  for (const Value& var : dashboard.fields()
                              .at("templating")
                              .struct_value()
                              .fields()
                              .at("list")
                              .list_value()
                              .values()) {
    const Struct& v = var.struct_value();
    if (Str(v, "name") != "datasource") continue;
    have_variable = true;
    EXPECT_EQ(Str(v, "type"), "datasource");
    EXPECT_EQ(Str(v, "query"), "prometheus");
    EXPECT_EQ(Str(v.fields().at("current").struct_value(), "value"), uid)
        << kDashboard << ": the datasource variable's default is not the uid in " << kDatasources;
  }
  EXPECT_TRUE(have_variable);

  std::set<double> ids;
  int panels = 0;
  for (const Value& p : dashboard.fields().at("panels").list_value().values()) {
    const Struct& panel = p.struct_value();
    EXPECT_TRUE(ids.insert(panel.fields().at("id").number_value()).second)
        << "duplicate panel id in " << Str(panel, "title");
    const Struct& grid = panel.fields().at("gridPos").struct_value();
    EXPECT_LE(grid.fields().at("x").number_value() + grid.fields().at("w").number_value(), 24)
        << Str(panel, "title");
    if (Str(panel, "type") == "row") continue;
    ++panels;
    EXPECT_EQ(Str(panel.fields().at("datasource").struct_value(), "uid"), "${datasource}")
        << Str(panel, "title");
    for (const Value& t : panel.fields().at("targets").list_value().values()) {
      EXPECT_EQ(Str(t.struct_value().fields().at("datasource").struct_value(), "uid"),
                "${datasource}")
          << Str(panel, "title");
    }
  }
  EXPECT_GE(panels, 10);

  const YAML::Node providers = YAML::LoadFile(SourceDir() + kProviders);
  ASSERT_EQ(providers["apiVersion"].as<int>(), 1);
  ASSERT_EQ(providers["providers"].size(), 1u);
  EXPECT_EQ(providers["providers"][0]["type"].as<std::string>(), "file");
  EXPECT_EQ(providers["providers"][0]["options"]["path"].as<std::string>(),
            "/var/lib/grafana/dashboards");
}

// A real server after a few requests: what its /metrics exposes.
class DashboardAgainstServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(server_.Start({"metrics.address=127.0.0.1:0"}));
    port_ = MetricsPort(server_);
    ASSERT_GT(port_, 0) << server_.Stderr();
    auto stub = server_.Stub();
    // The same 40-token prompt twice: the second one hits the prefix cache.
    for (int i = 0; i < 2; ++i) {
      StreamResult r = ReadStream(*stub, TokenPrompt(40, 7, 5));
      ASSERT_TRUE(r.status.ok()) << r.status.error_message();
    }
    dashboard_ = ParseJson(ReadSourceFile(kDashboard));
    docs_ = DocumentedMetrics(ReadSourceFile("/docs/metrics.md"));
    ASSERT_GT(docs_.size(), 20u);
  }

  ServerProcess server_;
  int port_ = 0;
  Struct dashboard_;
  std::map<std::string, std::string> docs_;
};

TEST_F(DashboardAgainstServerTest, EveryQueryNamesExportedDocumentedSeries) {
  const HttpResponse scrape = HttpGet(port_, "/metrics");
  ASSERT_EQ(scrape.status, 200);
  const auto exported = ExpositionLabels(scrape.body);
  const std::vector<DashboardQuery> queries = DashboardQueries(dashboard_);
  ASSERT_GE(queries.size(), 30u);
  std::vector<std::string> problems;
  for (const DashboardQuery& q : queries) {
    for (std::string& p : CheckQuery(q, exported, docs_)) problems.push_back(std::move(p));
  }
  EXPECT_TRUE(problems.empty()) << absl::StrJoin(problems, "\n");
}

// Prometheus scrapes the server and evaluates every expression of the dashboard, with Grafana's
// variables replaced as Grafana would: each one parses and yields at least one series.
TEST_F(DashboardAgainstServerTest, PrometheusEvaluatesEveryQuery) {
  if (!HaveProgram("prometheus")) {
    GTEST_SKIP() << "prometheus not installed (Debian package 'prometheus'): test skipped";
  }
  PrometheusProcess prometheus;
  ASSERT_TRUE(prometheus.Start(server_.dir(), "kvserve", {port_}));
  // rate() needs two samples in its window: wait for the third scrape of the build info.
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (absl::Now() < deadline) {
    HttpResponse r = prometheus.Query("count_over_time(kvserve_build_info[1m]) >= 3");
    if (r.status == 200 && !absl::StrContains(r.body, "\"result\":[]")) break;
    absl::SleepFor(absl::Milliseconds(500));
  }
  std::vector<std::string> problems;
  for (const DashboardQuery& q : DashboardQueries(dashboard_)) {
    std::string expr = q.expr;
    std::string label;
    if (q.variable) {
      // label_values(selector, label) lists the label's values on the selected series.
      absl::string_view args = q.expr;
      ASSERT_TRUE(absl::ConsumePrefix(&args, "label_values(") && absl::ConsumeSuffix(&args, ")"))
          << q.where << ": " << q.expr;
      const size_t comma = args.rfind(',');
      ASSERT_NE(comma, absl::string_view::npos) << q.where;
      label = std::string(absl::StripAsciiWhitespace(args.substr(comma + 1)));
      expr = absl::StrCat("count by (", label, ") (", args.substr(0, comma), ")");
    }
    expr = absl::StrReplaceAll(
        expr,
        {{"$__rate_interval", "1m"}, {"$__range", "1h"}, {"$job", ".*"}, {"$instance", ".*"}});
    const HttpResponse r = prometheus.Query(expr);
    if (r.status != 200 || !absl::StrContains(r.body, "\"status\":\"success\"")) {
      problems.push_back(absl::StrCat(q.where, ": HTTP ", r.status, " ", r.body));
    } else if (absl::StrContains(r.body, "\"result\":[]")) {
      problems.push_back(absl::StrCat(q.where, ": no series for ", expr));
    } else if (!label.empty() && !absl::StrContains(r.body, absl::StrCat("\"", label, "\":\""))) {
      problems.push_back(absl::StrCat(q.where, ": no value of label ", label, ": ", r.body));
    }
  }
  EXPECT_TRUE(problems.empty()) << absl::StrJoin(problems, "\n");
}

}  // namespace
}  // namespace kvserve::server::testing
