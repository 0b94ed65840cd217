// Turns the engine's EngineStats snapshot into the public kvserve.v1.MemoryStats message.
//
// Byte roles: `active` blocks are used by a request, `cached` blocks sit in the prefix index with
// no user (reusable, dropped first when memory is needed), `free` is the rest of the budget:
//   active_bytes + cached_bytes + free_bytes = capacity_bytes
//   sum over formats of total_bytes = value_bytes + scale_bytes + padding_bytes = used_bytes
// Cached bytes are exact: each idle cached block counted in the layout it is stored in (the sink
// blocks a window keeps in the window format included; EngineStats::kv_cached_bytes).
#ifndef KVSERVE_SERVER_GRPC_MEMORY_STATS_H_
#define KVSERVE_SERVER_GRPC_MEMORY_STATS_H_

#include "absl/time/time.h"
#include "engine/runtime/engine.h"
#include "kvserve/v1/memory.pb.h"

namespace kvserve::server {

// `taken` is recorded as snapshot_unix_micros.
v1::MemoryStats ToMemoryStats(const engine::EngineStats& stats, absl::Time taken);

}  // namespace kvserve::server

#endif  // KVSERVE_SERVER_GRPC_MEMORY_STATS_H_
