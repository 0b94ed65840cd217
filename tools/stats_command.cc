#include "tools/stats_command.h"

#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "grpcpp/grpcpp.h"
#include "kvserve/v1/memory.grpc.pb.h"
#include "tools/client_util.h"
#include "tools/flags.h"

namespace kvserve::tools {
namespace {

std::string Bytes(int64_t b) {
  return absl::StrFormat("%10.2f MiB  (%d bytes)", static_cast<double>(b) / (1 << 20), b);
}

void Row(std::string* out, const std::string& label, const std::string& value) {
  absl::StrAppendFormat(out, "  %-24s %s\n", label, value);
}

void Print(const std::string& s) {
  std::fwrite(s.data(), 1, s.size(), stdout);
  std::fflush(stdout);
}

}  // namespace

std::string FormatMemoryStats(const v1::MemoryStats& s) {
  std::string out = "KV pool\n";
  Row(&out, "capacity", Bytes(s.capacity_bytes()));
  Row(&out, "allocated", Bytes(s.allocated_bytes()));
  Row(&out, "used", absl::StrFormat("%s  %.1f%%", Bytes(s.used_bytes()), 100 * s.usage_ratio()));
  Row(&out, "  active", Bytes(s.active_bytes()));
  Row(&out, "  cached (reusable)", Bytes(s.cached_bytes()));
  Row(&out, "free", Bytes(s.free_bytes()));
  Row(&out, "values", Bytes(s.value_bytes()));
  Row(&out, "scales", Bytes(s.scale_bytes()));
  Row(&out, "padding", Bytes(s.padding_bytes()));
  Row(&out, "fp16 equivalent", Bytes(s.fp16_equivalent_bytes()));
  Row(&out, "compression ratio", absl::StrFormat("%.3f", s.compression_ratio()));
  out += "\nBytes by format\n";
  absl::StrAppendFormat(&out, "  %-8s %14s %14s %14s %14s\n", "format", "values", "scales",
                        "padding", "total");
  for (const v1::FormatUsage& f : s.used_by_format()) {
    absl::StrAppendFormat(&out, "  %-8s %14d %14d %14d %14d\n", f.format(), f.value_bytes(),
                          f.scale_bytes(), f.padding_bytes(), f.total_bytes());
  }
  out += "\nBlocks\n";
  Row(&out, "block size", absl::StrCat(s.block_bytes(), " bytes"));
  Row(&out, "active", absl::StrCat(s.active_blocks()));
  Row(&out, "cached (reusable)", absl::StrCat(s.cached_blocks()));
  Row(&out, "free", absl::StrCat(s.free_blocks()));
  out += "\nPrefix cache\n";
  Row(&out, "eviction policy", s.eviction_policy().empty() ? "(off)" : s.eviction_policy());
  Row(&out, "blocks in index", absl::StrCat(s.prefix_cached_blocks()));
  Row(&out, "queries", absl::StrCat(s.prefix_queries()));
  Row(&out, "hit tokens",
      absl::StrFormat("%d of %d (%.1f%%)", s.prefix_hit_tokens(), s.prefix_query_tokens(),
                      s.prefix_query_tokens() > 0
                          ? 100.0 * s.prefix_hit_tokens() / s.prefix_query_tokens()
                          : 0.0));
  Row(&out, "evicted blocks", absl::StrCat(s.evicted_blocks()));
  Row(&out, "flushed blocks", absl::StrCat(s.flushed_blocks()));
  out += "\nToken eviction\n";
  Row(&out, "default policy",
      s.token_eviction_policy().empty() ? "none" : s.token_eviction_policy());
  Row(&out, "default budget", absl::StrCat(s.token_eviction_budget_tokens(), " tokens"));
  for (const auto& c : s.tokens_evicted()) {
    Row(&out, absl::StrCat("evicted by ", c.policy()), absl::StrCat(c.tokens(), " tokens"));
  }
  Row(&out, "compactions", absl::StrCat(s.token_eviction_events()));
  out += "\nRequests\n";
  Row(&out, "running / waiting", absl::StrCat(s.running_requests(), " / ", s.waiting_requests()));
  Row(&out, "finished", absl::StrCat(s.requests_finished()));
  Row(&out, "cancelled", absl::StrCat(s.requests_cancelled()));
  Row(&out, "deadline exceeded", absl::StrCat(s.requests_deadline_exceeded()));
  Row(&out, "failed", absl::StrCat(s.requests_failed()));
  Row(&out, "preemptions", absl::StrCat(s.preemptions()));
  Row(&out, "prompt tokens", absl::StrCat(s.prompt_tokens()));
  Row(&out, "generated tokens", absl::StrCat(s.generated_tokens()));
  if (s.top_requests_size() > 0) {
    out += "\nTop requests by KV bytes\n";
    absl::StrAppendFormat(&out, "  %-24s %14s %8s %8s %s\n", "request", "bytes", "blocks", "tokens",
                          "state");
    for (const v1::RequestKvUsage& r : s.top_requests()) {
      absl::StrAppendFormat(&out, "  %-24s %14d %8d %8d %s\n", r.request_id(), r.bytes(),
                            r.blocks(), r.tokens(), r.running() ? "running" : "waiting");
    }
  }
  return out;
}

int RunClientStats(const std::vector<std::string>& args) {
  FlagSet flags("client stats");
  AddConnectionFlags(flags);
  flags.Bool("watch", "stream a snapshot every --interval-ms until interrupted");
  flags.Int("interval-ms", 1000, "milliseconds between snapshots with --watch");
  flags.Bool("flush", "flush the prefix cache first (FlushPrefixCache)");
  if (absl::Status s = flags.Parse(args); !s.ok()) {
    std::fprintf(stderr, "kvserve client: %s\n\n%s", std::string(s.message()).c_str(),
                 flags.Usage().c_str());
    return 2;
  }
  if (flags.help_requested()) {
    std::fputs(flags.Usage().c_str(), stdout);
    return 0;
  }
  auto channel = MakeChannel(flags);
  if (!channel.ok()) return ReportError(channel.status());
  auto stub = v1::Memory::NewStub(*channel);
  if (flags.GetBool("flush")) {
    grpc::ClientContext context;
    if (absl::Status s = PrepareContext(flags, &context); !s.ok()) return ReportError(s);
    v1::FlushPrefixCacheResponse response;
    grpc::Status status =
        stub->FlushPrefixCache(&context, v1::FlushPrefixCacheRequest(), &response);
    if (!status.ok()) return ReportError(status);
    Print(absl::StrCat("prefix cache flushed: ", response.released_blocks(), " blocks, ",
                       response.released_bytes(), " bytes released\n\n"));
  }
  grpc::ClientContext context;
  if (absl::Status s = PrepareContext(flags, &context); !s.ok()) return ReportError(s);
  if (!flags.GetBool("watch")) {
    v1::MemoryStats stats;
    grpc::Status status = stub->GetStats(&context, v1::GetStatsRequest(), &stats);
    if (!status.ok()) return ReportError(status);
    Print(FormatMemoryStats(stats));
    return 0;
  }
  v1::WatchStatsRequest request;
  request.set_interval_ms(flags.GetInt("interval-ms"));
  auto reader = stub->WatchStats(&context, request);
  v1::MemoryStats stats;
  bool first = true;
  while (reader->Read(&stats)) {
    Print(absl::StrCat(
        first ? "" : "\n", "== snapshot at ",
        absl::FormatTime("%Y-%m-%d %H:%M:%E3S", absl::FromUnixMicros(stats.snapshot_unix_micros()),
                         absl::LocalTimeZone()),
        " ==\n", FormatMemoryStats(stats)));
    first = false;
  }
  grpc::Status status = reader->Finish();
  if (!status.ok()) return ReportError(status);
  return 0;
}

}  // namespace kvserve::tools
