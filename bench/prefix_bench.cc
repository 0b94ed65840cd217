// Prefix reuse and block eviction, measured in process on the threaded serving engine:
//
//   ttft     time to first token of a 480-token prompt whose first 448 tokens are cached, against
//            the same prompt cold (a cache_salt no other request used); median of --reps each.
//   shared   64 requests sharing a 400-token system prompt, each with a 32-token unique suffix
//            and --output-tokens generated tokens, all submitted at once: total throughput
//            (prompt + generated tokens per second) with the prefix cache on and off.
//   zipf     a multi-tenant trace under memory pressure: --tenants system prompts of 256 tokens,
//            requests drawn Zipf(1.1) over tenants, each with a 16-token unique suffix; the KV
//            budget holds only --kv-blocks blocks. Reports the prefix hit rate per block
//            eviction policy, and whether one pinned system prompt (the least popular tenant,
//            retention priority 100 for the whole trace) stayed cached: the fraction of its
//            requests after the first that found all of its prefix.
//
//   prefix_bench [--mode all|ttft|shared|zipf] [--model PATH] [--reps 7] [--output-tokens 16]
//                [--tenants 24] [--requests 400] [--kv-blocks 160] [--seed 1]
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "engine/runtime/engine.h"
#include "spdlog/spdlog.h"

namespace {

using kvserve::engine::Engine;
using kvserve::engine::EngineOptions;
using kvserve::engine::EngineRequest;
using kvserve::engine::RequestStream;
using kvserve::engine::RetentionHint;
using kvserve::engine::StreamEvent;

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

// Token ids from the ordinary vocabulary range, a deterministic function of (stream, index).
std::vector<int32_t> Tokens(int n, int stream) {
  std::vector<int32_t> t;
  for (int i = 0; i < n; ++i) t.push_back(300 + (i * 7 + stream * 31 + (i * stream) % 13) % 200);
  return t;
}

std::unique_ptr<Engine> Make(EngineOptions o) {
  auto e = Engine::Create(o);
  if (!e.ok()) {
    std::fprintf(stderr, "%s\n", std::string(e.status().message()).c_str());
    std::exit(1);
  }
  return std::move(*e);
}

StreamEvent Wait(RequestStream& s, int64_t* tokens = nullptr) {
  std::vector<StreamEvent> ev;
  StreamEvent final_event;
  bool done = false;
  while (!done) {
    ev.clear();
    done = s.WaitAndTake(&ev, absl::Seconds(120));
    for (auto& e : ev) {
      if (tokens != nullptr) *tokens += static_cast<int64_t>(e.token_ids.size());
      if (e.final) final_event = e;
    }
  }
  if (!final_event.status.ok()) {
    std::fprintf(stderr, "request failed: %s\n", std::string(final_event.status.message()).c_str());
    std::exit(1);
  }
  return final_event;
}

StreamEvent Run(Engine& e, EngineRequest r) {
  auto s = e.Submit(std::move(r));
  if (!s.ok()) {
    std::fprintf(stderr, "submit: %s\n", std::string(s.status().message()).c_str());
    std::exit(1);
  }
  return Wait(**s);
}

void Ttft(const EngineOptions& base, int reps) {
  EngineOptions o = base;
  o.max_running_requests = 1;
  auto engine = Make(o);
  std::vector<double> warm, cold;
  int32_t cached_tokens = 0;
  for (int r = 0; r < reps + 1; ++r) {  // the first round warms up and is dropped
    std::vector<int32_t> prompt = {1};
    const std::vector<int32_t> body = Tokens(479, r);
    prompt.insert(prompt.end(), body.begin(), body.end());
    // Seed the cache with the first 448 tokens (and a different tail).
    EngineRequest seed;
    seed.prompt.assign(prompt.begin(), prompt.begin() + 448);
    for (int i = 0; i < 8; ++i) seed.prompt.push_back(5 + i);
    seed.max_tokens = 1;
    seed.cache_salt = "warm" + std::to_string(r);
    Run(*engine, seed);
    EngineRequest hit;
    hit.prompt = prompt;
    hit.max_tokens = 1;
    hit.cache_salt = seed.cache_salt;
    const StreamEvent h = Run(*engine, hit);
    EngineRequest miss = hit;
    miss.cache_salt = "cold" + std::to_string(r);
    const StreamEvent m = Run(*engine, miss);
    if (r == 0) continue;
    cached_tokens = h.usage.cached_prompt_tokens;
    warm.push_back(absl::ToDoubleMicroseconds(h.timings.time_to_first_token));
    cold.push_back(absl::ToDoubleMicroseconds(m.timings.time_to_first_token));
    if (m.usage.cached_prompt_tokens != 0) std::fprintf(stderr, "cold run hit the cache\n");
  }
  std::printf("ttft: 480-token prompt, %d tokens cached, median of %d\n", cached_tokens, reps);
  std::printf("  cold %.0f us, cached %.0f us, speed-up %.2fx\n", Median(cold), Median(warm),
              Median(cold) / Median(warm));
}

void Shared(const EngineOptions& base, int reps, int output_tokens) {
  std::printf(
      "shared: 64 requests, 400-token common prefix, 32-token unique suffix, %d output "
      "tokens, median of %d\n",
      output_tokens, reps);
  double on_tps = 0, off_tps = 0;
  for (bool cache : {false, true}) {
    EngineOptions o = base;
    o.model.prefix_cache = cache;
    o.max_running_requests = 64;
    auto engine = Make(o);
    std::vector<double> tps, hit;
    for (int r = 0; r < reps + 1; ++r) {
      std::vector<int32_t> system = {1};
      const std::vector<int32_t> body = Tokens(399, 1000 + r);
      system.insert(system.end(), body.begin(), body.end());
      const absl::Time start = absl::Now();
      std::vector<std::shared_ptr<RequestStream>> streams;
      for (int i = 0; i < 64; ++i) {
        EngineRequest q;
        q.prompt = system;
        const std::vector<int32_t> suffix = Tokens(32, 5000 + r * 64 + i);
        q.prompt.insert(q.prompt.end(), suffix.begin(), suffix.end());
        q.max_tokens = output_tokens;
        q.ignore_eos = true;
        streams.push_back(*engine->Submit(q));
      }
      int64_t generated = 0;
      int64_t cached = 0;
      for (auto& s : streams) cached += Wait(*s, &generated).usage.cached_prompt_tokens;
      const double seconds = absl::ToDoubleSeconds(absl::Now() - start);
      if (r == 0) continue;
      tps.push_back((64.0 * 432 + static_cast<double>(generated)) / seconds);
      hit.push_back(static_cast<double>(cached) / (64.0 * 432));
    }
    const double m = Median(tps);
    (cache ? on_tps : off_tps) = m;
    std::printf(
        "  prefix cache %-3s: %.0f tokens/s (prompt + output), %.1f%% of prompt tokens "
        "cached\n",
        cache ? "on" : "off", m, 100 * Median(hit));
  }
  std::printf("  throughput on / off: %.2fx\n", on_tps / off_tps);
}

void Zipf(const EngineOptions& base, int tenants, int requests, int kv_blocks, uint32_t seed) {
  // Block bytes of the default layout, to size the budget in blocks.
  int64_t block_bytes = 0;
  {
    auto probe = Make(base);
    block_bytes = probe->Stats().kv_block_bytes;
  }
  std::vector<double> weight(tenants);
  for (int t = 0; t < tenants; ++t) weight[t] = 1.0 / std::pow(t + 1, 1.1);
  const int pinned = tenants - 1;  // the least popular tenant
  std::printf(
      "zipf: %d tenants (256-token system prompts), %d requests, Zipf(1.1), KV budget %d "
      "blocks of %lld bytes; tenant %d pinned at retention priority 100\n",
      tenants, requests, kv_blocks, static_cast<long long>(block_bytes), pinned);
  std::printf("  %-9s %10s %22s %12s\n", "policy", "hit rate", "pinned prompt cached", "evictions");
  for (const char* policy : {"lru", "priority", "slru"}) {
    EngineOptions o = base;
    o.model.block_eviction = policy;
    o.model.kv_budget_bytes = kv_blocks * block_bytes;
    o.max_running_requests = 4;
    auto engine = Make(o);
    std::mt19937 rng(seed);
    std::discrete_distribution<int> pick(weight.begin(), weight.end());
    int pinned_requests = 0, pinned_full = 0;
    // The pinned tenant's prompt appears every requests / 8 requests; the rest follow Zipf.
    for (int i = 0; i < requests; ++i) {
      const int t = i % (requests / 8) == 0 ? pinned : pick(rng);
      EngineRequest q = {};
      q.prompt = {1};
      const std::vector<int32_t> sys = Tokens(255, 100 + t);
      q.prompt.insert(q.prompt.end(), sys.begin(), sys.end());
      const std::vector<int32_t> suffix = Tokens(16, 20000 + i);
      q.prompt.insert(q.prompt.end(), suffix.begin(), suffix.end());
      q.max_tokens = 4;
      q.ignore_eos = true;
      RetentionHint h;
      h.start_token = 0;
      h.end_token = 256;
      h.priority = t == pinned ? 100 : 35;
      q.retention.push_back(h);
      const StreamEvent e = Run(*engine, q);
      if (t == pinned) {
        if (pinned_requests > 0 && e.usage.cached_prompt_tokens >= 256) ++pinned_full;
        ++pinned_requests;
      }
    }
    const auto st = engine->Stats();
    const double rate = st.prefix_query_tokens > 0
                            ? static_cast<double>(st.prefix_hit_tokens) / st.prefix_query_tokens
                            : 0.0;
    std::printf("  %-9s %9.1f%% %15d of %-4d %12lld\n", policy, 100 * rate, pinned_full,
                pinned_requests - 1, static_cast<long long>(st.prefix_capacity_evictions));
  }
}

}  // namespace

int main(int argc, char** argv) {
  spdlog::set_level(spdlog::level::warn);
  std::string model = std::string(KVSERVE_MODELS_DIR) + "/stories260K.gguf";
  std::string mode = "all";
  int reps = 7, output_tokens = 16, tenants = 24, requests = 400, kv_blocks = 160;
  uint32_t seed = 1;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--model")
      model = value;
    else if (flag == "--mode")
      mode = value;
    else if (flag == "--reps")
      reps = std::stoi(value);
    else if (flag == "--output-tokens")
      output_tokens = std::stoi(value);
    else if (flag == "--tenants")
      tenants = std::stoi(value);
    else if (flag == "--requests")
      requests = std::stoi(value);
    else if (flag == "--kv-blocks")
      kv_blocks = std::stoi(value);
    else if (flag == "--seed")
      seed = static_cast<uint32_t>(std::stoul(value));
    else {
      std::fprintf(stderr, "unknown flag %s\n", flag.c_str());
      return 2;
    }
  }
  EngineOptions o;
  o.model.model_path = model;
  o.model.kv_budget_bytes = 64ll << 20;
  if (mode == "all" || mode == "ttft") Ttft(o, reps);
  if (mode == "all" || mode == "shared") Shared(o, reps, output_tokens);
  if (mode == "all" || mode == "zipf") Zipf(o, tenants, requests, kv_blocks, seed);
  return 0;
}
