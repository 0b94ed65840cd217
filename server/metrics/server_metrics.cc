#include "server/metrics/server_metrics.h"

#include <algorithm>
#include <exception>
#include <limits>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/kv/block_pool.h"
#include "engine/kv/token_eviction/token_eviction_policy.h"
#include "prometheus/collectable.h"
#include "prometheus/exposer.h"
#include "prometheus/histogram.h"
#include "prometheus/metric_family.h"
#include "prometheus/registry.h"
#include "prometheus/text_serializer.h"

namespace kvserve::server {

using prometheus::ClientMetric;
using prometheus::MetricFamily;
using prometheus::MetricType;

namespace {

constexpr char kVersion[] = "0.1.0";

// Buckets in seconds.
const prometheus::Histogram::BucketBoundaries& TtftBuckets() {
  static const auto* b = new prometheus::Histogram::BucketBoundaries{
      0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
  return *b;
}
const prometheus::Histogram::BucketBoundaries& InterTokenBuckets() {
  static const auto* b = new prometheus::Histogram::BucketBoundaries{
      0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1};
  return *b;
}
const prometheus::Histogram::BucketBoundaries& DurationBuckets() {
  static const auto* b = new prometheus::Histogram::BucketBoundaries{
      0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300};
  return *b;
}

class FamilyBuilder {
 public:
  explicit FamilyBuilder(std::vector<MetricFamily>* out) : out_(out) {}

  FamilyBuilder& Family(std::string name, std::string help, MetricType type) {
    out_->push_back(MetricFamily{std::move(name), std::move(help), type, {}});
    return *this;
  }
  // A histogram from an engine FixedHistogram (cumulative buckets, +Inf last).
  FamilyBuilder& AddHistogram(const engine::FixedHistogram& h,
                              std::vector<ClientMetric::Label> labels = {}) {
    ClientMetric m;
    m.label = std::move(labels);
    m.histogram.sample_count = static_cast<uint64_t>(h.count);
    m.histogram.sample_sum = h.sum;
    uint64_t cumulative = 0;
    for (size_t i = 0; i < h.counts.size(); ++i) {
      cumulative += static_cast<uint64_t>(h.counts[i]);
      ClientMetric::Bucket bucket;
      bucket.cumulative_count = cumulative;
      bucket.upper_bound =
          i < h.bounds.size() ? h.bounds[i] : std::numeric_limits<double>::infinity();
      m.histogram.bucket.push_back(bucket);
    }
    out_->back().metric.push_back(std::move(m));
    return *this;
  }
  FamilyBuilder& Add(double value, std::vector<ClientMetric::Label> labels = {}) {
    ClientMetric m;
    m.label = std::move(labels);
    if (out_->back().type == MetricType::Counter) {
      m.counter.value = value;
    } else {
      m.gauge.value = value;
    }
    out_->back().metric.push_back(std::move(m));
    return *this;
  }

 private:
  std::vector<MetricFamily>* out_;
};

}  // namespace

// Pulls one engine snapshot per scrape.
class EngineCollector final : public prometheus::Collectable {
 public:
  EngineCollector(engine::Engine* engine, const RequestOutcomes* outcomes)
      : engine_(engine), outcomes_(outcomes) {}

  std::vector<MetricFamily> Collect() const override {
    const engine::EngineStats s = engine_->Stats();
    const engine::KvPoolStats& kv = s.kv;
    const double cached_bytes = static_cast<double>(s.kv_cached_bytes);
    const double used = static_cast<double>(kv.used_bytes);
    const double budget = static_cast<double>(kv.budget_bytes);
    std::vector<MetricFamily> out;
    FamilyBuilder b(&out);
    b.Family("kvserve_build_info", "Build of the running server (always 1).", MetricType::Gauge)
        .Add(1, {{"version", kVersion}});
    b.Family("kvserve_kv_capacity_bytes", "Byte budget of the KV block pool.", MetricType::Gauge)
        .Add(budget);
    b.Family("kvserve_kv_allocated_bytes", "Heap bytes held for KV block storage.",
             MetricType::Gauge)
        .Add(static_cast<double>(kv.allocated_bytes));
    b.Family("kvserve_kv_bytes",
             "KV pool bytes by state: active (used by a request), cached (reusable prefix "
             "blocks nobody uses), free (rest of the budget).",
             MetricType::Gauge)
        .Add(used - cached_bytes, {{"state", "active"}})
        .Add(cached_bytes, {{"state", "cached"}})
        .Add(budget - used, {{"state", "free"}});
    b.Family("kvserve_kv_used_bytes",
             "Bytes of used KV blocks by storage format and role (value payload, scales and zero "
             "points, alignment padding).",
             MetricType::Gauge);
    for (size_t f = 0; f < kv.used_by_format.size(); ++f) {
      const engine::KvFormatUsage& u = kv.used_by_format[f];
      const std::string format(kernels::KvFormatName(static_cast<kernels::KvFormat>(f)));
      if (format.empty() || format == "unknown") continue;
      b.Add(static_cast<double>(u.value_bytes), {{"format", format}, {"role", "value"}})
          .Add(static_cast<double>(u.scale_bytes), {{"format", format}, {"role", "scale"}})
          .Add(static_cast<double>(u.padding_bytes), {{"format", format}, {"role", "padding"}});
    }
    b.Family("kvserve_kv_blocks",
             "KV blocks by state (free: blocks of the default layout that "
             "can still be allocated).",
             MetricType::Gauge)
        .Add(static_cast<double>(kv.used_blocks - s.kv_cached_blocks), {{"state", "active"}})
        .Add(static_cast<double>(s.kv_cached_blocks), {{"state", "cached"}})
        .Add(static_cast<double>(s.kv_free_blocks), {{"state", "free"}});
    b.Family("kvserve_kv_block_bytes", "Bytes of one KV block of the default layout.",
             MetricType::Gauge)
        .Add(static_cast<double>(s.kv_block_bytes));
    b.Family("kvserve_kv_usage_ratio", "Used KV bytes (active + cached) / capacity.",
             MetricType::Gauge)
        .Add(budget > 0 ? used / budget : 0);
    b.Family("kvserve_kv_fp16_equivalent_bytes",
             "Bytes the used KV blocks would take stored in FP16.", MetricType::Gauge)
        .Add(static_cast<double>(kv.fp16_equivalent_bytes));
    b.Family("kvserve_kv_compression_ratio",
             "FP16-equivalent bytes / used bytes of the KV pool (0 when nothing is used).",
             MetricType::Gauge)
        .Add(kv.compression_ratio());
    b.Family("kvserve_prefix_cache_queries_total", "Prefix cache lookups (one per admission).",
             MetricType::Counter)
        .Add(static_cast<double>(s.prefix_queries));
    b.Family("kvserve_prefix_cache_query_tokens_total",
             "Prompt tokens looked up in the prefix "
             "cache.",
             MetricType::Counter)
        .Add(static_cast<double>(s.prefix_query_tokens));
    b.Family("kvserve_prefix_cache_hit_tokens_total",
             "Prompt tokens served from cached prefix blocks.", MetricType::Counter)
        .Add(static_cast<double>(s.prefix_hit_tokens));
    b.Family("kvserve_prefix_cache_blocks", "Blocks in the prefix index, in use or not.",
             MetricType::Gauge)
        .Add(static_cast<double>(s.prefix_cached_blocks));
    b.Family("kvserve_block_evictions_total",
             "Cached prefix blocks dropped to make room, by block eviction policy.",
             MetricType::Counter);
    if (!s.prefix_eviction_policy.empty()) {
      b.Add(static_cast<double>(s.prefix_capacity_evictions),
            {{"policy", s.prefix_eviction_policy}});
    }
    b.Family("kvserve_tokens_evicted_total",
             "Tokens dropped from live sequences by token eviction, by policy.",
             MetricType::Counter);
    for (const std::string& policy : engine::TokenEvictionPolicyNames()) {
      if (policy == "none") continue;
      const auto it = s.tokens_evicted.find(policy);
      b.Add(it == s.tokens_evicted.end() ? 0.0 : static_cast<double>(it->second),
            {{"policy", policy}});
    }
    b.Family("kvserve_token_eviction_events_total",
             "Token eviction compactions run (each drops one or more tokens of one sequence).",
             MetricType::Counter)
        .Add(static_cast<double>(s.token_eviction_events));
    b.Family("kvserve_prefix_cache_flushed_blocks_total",
             "Cached prefix blocks dropped by FlushPrefixCache.", MetricType::Counter)
        .Add(static_cast<double>(s.prefix_flushed_blocks));
    b.Family("kvserve_preemptions_total",
             "Running requests preempted (blocks freed, recomputed later).", MetricType::Counter)
        .Add(static_cast<double>(s.preemptions));
    b.Family("kvserve_requests_total",
             "Requests ended, by the status the client got (ok: finished normally; cancelled: "
             "by the client; deadline_exceeded: the call's deadline passed; failed: any other "
             "error).",
             MetricType::Counter);
    for (int p = 0; p < kNumProtocols; ++p) {
      const auto protocol = static_cast<Protocol>(p);
      for (int o = 0; o < kNumRequestOutcomes; ++o) {
        const auto outcome = static_cast<RequestOutcome>(o);
        b.Add(static_cast<double>(outcomes_->Get(outcome, protocol)),
              {{"status", std::string(RequestOutcomeName(outcome))},
               {"protocol", ProtocolName(protocol)}});
      }
    }
    b.Family("kvserve_running_requests", "Requests in the running batch.", MetricType::Gauge)
        .Add(s.running_requests);
    b.Family("kvserve_waiting_requests", "Requests waiting to be admitted (preempted included).",
             MetricType::Gauge)
        .Add(s.waiting_requests);
    b.Family("kvserve_prompt_tokens_total",
             "Prompt tokens computed (recomputation after preemption included).",
             MetricType::Counter)
        .Add(static_cast<double>(s.prompt_tokens));
    b.Family("kvserve_generation_tokens_total", "Tokens generated.", MetricType::Counter)
        .Add(static_cast<double>(s.generated_tokens));
    b.Family("kvserve_engine_steps_total", "Engine steps run.", MetricType::Counter)
        .Add(static_cast<double>(s.steps));
    b.Family("kvserve_engine_forward_seconds_total", "Time spent in the forward pass.",
             MetricType::Counter)
        .Add(absl::ToDoubleSeconds(s.forward_time));
    b.Family("kvserve_engine_step_seconds_total",
             "Time spent in engine steps (scheduling, forward pass, sampling, streaming, "
             "statistics).",
             MetricType::Counter)
        .Add(absl::ToDoubleSeconds(s.step_time));
    b.Family("kvserve_step_duration_seconds",
             "Wall time of one engine step (planning, forward pass, sampling, streaming).",
             MetricType::Histogram)
        .AddHistogram(s.histograms.step_seconds);
    b.Family("kvserve_step_prefill_tokens", "Prefill tokens computed in one engine step.",
             MetricType::Histogram)
        .AddHistogram(s.histograms.prefill_tokens);
    b.Family("kvserve_token_gap_seconds",
             "Time between consecutive generated tokens of a request, every gap counted, by the "
             "request's priority (at most 16 priorities; the rest are \"other\").",
             MetricType::Histogram);
    for (const auto& [priority, h] : s.histograms.token_gap_seconds) {
      b.AddHistogram(h, {{"priority", priority == engine::SchedulerHistograms::kOtherPriority
                                          ? std::string("other")
                                          : std::to_string(priority)}});
    }
    return out;
  }

 private:
  engine::Engine* const engine_;
  const RequestOutcomes* const outcomes_;
};

ServerMetrics::ServerMetrics(engine::Engine* engine, const RequestOutcomes* outcomes)
    : registry_(std::make_shared<prometheus::Registry>()),
      collector_(std::make_shared<EngineCollector>(engine, outcomes)) {
  auto& ttft = prometheus::BuildHistogram()
                   .Name("kvserve_time_to_first_token_seconds")
                   .Help("Time from a request's arrival to its first generated token.")
                   .Register(*registry_);
  auto& inter_token = prometheus::BuildHistogram()
                          .Name("kvserve_inter_token_latency_seconds")
                          .Help(
                              "Time between consecutive generated tokens of a request (its mean "
                              "gap, counted once per gap).")
                          .Register(*registry_);
  auto& duration = prometheus::BuildHistogram()
                       .Name("kvserve_request_duration_seconds")
                       .Help("Time from a request's arrival to its end.")
                       .Register(*registry_);
  for (int p = 0; p < kNumProtocols; ++p) {
    const std::map<std::string, std::string> labels = {
        {"protocol", ProtocolName(static_cast<Protocol>(p))}};
    ttft_[p] = &ttft.Add(labels, TtftBuckets());
    inter_token_[p] = &inter_token.Add(labels, InterTokenBuckets());
    duration_[p] = &duration.Add(labels, DurationBuckets());
  }
}

ServerMetrics::~ServerMetrics() = default;

absl::Status ServerMetrics::Serve(const std::string& address) {
  try {
    auto exposer = std::make_unique<prometheus::Exposer>(address, 2);
    exposer->RegisterCollectable(collector_);
    exposer->RegisterCollectable(registry_);
    const std::vector<int> ports = exposer->GetListeningPorts();
    port_ = ports.empty() ? 0 : ports.front();
    exposer_ = std::move(exposer);
  } catch (const std::exception& e) {
    return absl::UnavailableError(
        absl::StrCat("cannot serve metrics on ", address, " (metrics.address): ", e.what()));
  }
  return absl::OkStatus();
}

void ServerMetrics::ObserveRequest(const engine::StreamEvent& final, Protocol protocol) {
  const int p = static_cast<int>(protocol);
  const int64_t tokens = final.usage.completion_tokens;
  if (tokens > 0) ttft_[p]->Observe(absl::ToDoubleSeconds(final.timings.time_to_first_token));
  duration_[p]->Observe(absl::ToDoubleSeconds(final.timings.total));
  if (tokens > 1) {
    const double gaps = static_cast<double>(tokens - 1);
    const double mean =
        absl::ToDoubleSeconds(final.timings.total - final.timings.time_to_first_token) / gaps;
    const auto& bounds = InterTokenBuckets();
    std::vector<double> increments(bounds.size() + 1, 0.0);
    const size_t bucket = std::lower_bound(bounds.begin(), bounds.end(), mean) - bounds.begin();
    increments[bucket] = gaps;
    inter_token_[p]->ObserveMultiple(increments, mean * gaps);
  }
}

std::string ServerMetrics::Render() const {
  std::vector<MetricFamily> families = collector_->Collect();
  for (MetricFamily& f : registry_->Collect()) families.push_back(std::move(f));
  return prometheus::TextSerializer().Serialize(families);
}

}  // namespace kvserve::server
