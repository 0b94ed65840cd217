// How the generation calls (gRPC Generate, Complete, Chat, ChatComplete; HTTP completions and chat
// completions) that reached the engine ended, counted once per call from the status the server
// ended it with: what the client got, including an end the engine never saw (a response larger
// than server.max_message_bytes, a write to a client that is gone). Calls refused before they
// reached the engine (validation, a full queue, draining) are not counted here. An HTTP status is
// counted as the absl code it came from (CANCELLED for a client that went away).
//
// Both `kvserve_requests_total{status,protocol}` (/metrics) and the requests_* fields of
// kvserve.v1.Memory's MemoryStats (both protocols together) read these counters, so the two
// always agree.
//
// Thread-safety: every method may be called from any thread.
#ifndef KVSERVE_SERVER_METRICS_REQUEST_OUTCOMES_H_
#define KVSERVE_SERVER_METRICS_REQUEST_OUTCOMES_H_

#include <array>
#include <atomic>
#include <cstdint>

#include "absl/status/status.h"

namespace kvserve::server {

enum class RequestOutcome {
  kOk,                // OK: finished normally (EOS, stop string, max_tokens, context limit)
  kCancelled,         // CANCELLED: the client cancelled or went away before its deadline
  kDeadlineExceeded,  // DEADLINE_EXCEEDED: the call's deadline passed
  kFailed,            // any other code (RESOURCE_EXHAUSTED, UNAVAILABLE, INTERNAL, ...)
};
inline constexpr int kNumRequestOutcomes = 4;

// The API a request came through: the `protocol` label.
enum class Protocol { kGrpc, kHttp };
inline constexpr int kNumProtocols = 2;
// "grpc", "http".
const char* ProtocolName(Protocol protocol);

// The outcome of a call that ended with `code`.
RequestOutcome OutcomeOf(absl::StatusCode code);
// The `status` label value: "ok", "cancelled", "deadline_exceeded", "failed".
const char* RequestOutcomeName(RequestOutcome outcome);

class RequestOutcomes {
 public:
  void Count(absl::StatusCode code, Protocol protocol = Protocol::kGrpc) {
    counts_[static_cast<int>(protocol)][static_cast<int>(OutcomeOf(code))].fetch_add(
        1, std::memory_order_relaxed);
  }
  // Over both protocols.
  int64_t Get(RequestOutcome outcome) const {
    return Get(outcome, Protocol::kGrpc) + Get(outcome, Protocol::kHttp);
  }
  int64_t Get(RequestOutcome outcome, Protocol protocol) const {
    return counts_[static_cast<int>(protocol)][static_cast<int>(outcome)].load(
        std::memory_order_relaxed);
  }

 private:
  std::array<std::array<std::atomic<int64_t>, kNumRequestOutcomes>, kNumProtocols> counts_{};
};

}  // namespace kvserve::server

#endif  // KVSERVE_SERVER_METRICS_REQUEST_OUTCOMES_H_
