#include "server/grpc/memory_stats.h"

#include <algorithm>
#include <string>

#include "engine/kv/block_pool.h"

namespace kvserve::server {

v1::MemoryStats ToMemoryStats(const engine::EngineStats& s, absl::Time taken) {
  v1::MemoryStats out;
  const engine::KvPoolStats& kv = s.kv;
  const int64_t cached_bytes = s.kv_cached_bytes;
  out.set_capacity_bytes(kv.budget_bytes);
  out.set_allocated_bytes(kv.allocated_bytes);
  out.set_used_bytes(kv.used_bytes);
  out.set_active_bytes(kv.used_bytes - cached_bytes);
  out.set_cached_bytes(cached_bytes);
  out.set_free_bytes(kv.budget_bytes - kv.used_bytes);
  int64_t value = 0, scale = 0, padding = 0;
  for (size_t f = 0; f < kv.used_by_format.size(); ++f) {
    const engine::KvFormatUsage& u = kv.used_by_format[f];
    value += u.value_bytes;
    scale += u.scale_bytes;
    padding += u.padding_bytes;
    if (u.total() == 0) continue;
    v1::FormatUsage* fu = out.add_used_by_format();
    fu->set_format(std::string(kernels::KvFormatName(static_cast<kernels::KvFormat>(f))));
    fu->set_value_bytes(u.value_bytes);
    fu->set_scale_bytes(u.scale_bytes);
    fu->set_padding_bytes(u.padding_bytes);
    fu->set_total_bytes(u.total());
  }
  out.set_value_bytes(value);
  out.set_scale_bytes(scale);
  out.set_padding_bytes(padding);
  out.set_block_bytes(s.kv_block_bytes);
  out.set_active_blocks(kv.used_blocks - s.kv_cached_blocks);
  out.set_cached_blocks(s.kv_cached_blocks);
  out.set_free_blocks(s.kv_free_blocks);
  out.set_fp16_equivalent_bytes(kv.fp16_equivalent_bytes);
  out.set_compression_ratio(kv.compression_ratio());
  out.set_usage_ratio(kv.budget_bytes > 0 ? static_cast<double>(kv.used_bytes) /
                                                static_cast<double>(kv.budget_bytes)
                                          : 0.0);
  out.set_eviction_policy(s.prefix_eviction_policy);
  out.set_prefix_queries(s.prefix_queries);
  out.set_prefix_query_tokens(s.prefix_query_tokens);
  out.set_prefix_hit_tokens(s.prefix_hit_tokens);
  out.set_prefix_cached_blocks(s.prefix_cached_blocks);
  out.set_evicted_blocks(s.prefix_capacity_evictions);
  out.set_flushed_blocks(s.prefix_flushed_blocks);
  out.set_preemptions(s.preemptions);
  out.set_running_requests(s.running_requests);
  out.set_waiting_requests(s.waiting_requests);
  out.set_requests_finished(s.requests_finished);
  out.set_requests_cancelled(s.requests_cancelled);
  out.set_requests_failed(s.requests_failed);
  out.set_prompt_tokens(s.prompt_tokens);
  out.set_generated_tokens(s.generated_tokens);
  for (const engine::RequestKvEntry& r : s.top_requests) {
    v1::RequestKvUsage* e = out.add_top_requests();
    e->set_request_id(r.id);
    e->set_bytes(r.bytes);
    e->set_blocks(r.blocks);
    e->set_tokens(r.tokens);
    e->set_running(r.running);
  }
  out.set_snapshot_unix_micros(absl::ToUnixMicros(taken));
  out.set_token_eviction_policy(s.token_eviction_policy);
  out.set_token_eviction_budget_tokens(s.token_eviction_budget);
  for (const auto& [policy, tokens] : s.tokens_evicted) {
    v1::TokenEvictionCount* c = out.add_tokens_evicted();
    c->set_policy(policy);
    c->set_tokens(tokens);
  }
  out.set_token_eviction_events(s.token_eviction_events);
  return out;
}

}  // namespace kvserve::server
