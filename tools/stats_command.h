// `kvserve client stats`: the Memory service's snapshot as a readable table.
//
//   kvserve client stats [--addr HOST:PORT] [--watch --interval-ms N] [--flush]
//
// Without --watch, one GetStats call; with --watch, a WatchStats stream, one table per snapshot,
// until interrupted. --flush calls FlushPrefixCache first and prints what it released.
#ifndef KVSERVE_TOOLS_STATS_COMMAND_H_
#define KVSERVE_TOOLS_STATS_COMMAND_H_

#include <string>
#include <vector>

#include "kvserve/v1/memory.pb.h"

namespace kvserve::tools {

// The snapshot as aligned "label  value" rows grouped by section (bytes in MiB and bytes).
std::string FormatMemoryStats(const v1::MemoryStats& stats);

// Runs `kvserve client stats` with the arguments after "stats". Exit code 0, 1 (failed call) or
// 2 (bad flags).
int RunClientStats(const std::vector<std::string>& args);

}  // namespace kvserve::tools

#endif  // KVSERVE_TOOLS_STATS_COMMAND_H_
