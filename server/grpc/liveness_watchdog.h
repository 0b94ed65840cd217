// Liveness of the engine loop, distinct from readiness.
//
// Readiness (grpc.health.v1, service "") says whether the server takes new calls: NOT_SERVING
// from the start of a drain. Liveness (service kLivenessService) says whether the engine loop
// still makes progress: NOT_SERVING only when the loop is wedged, that is when it has neither run
// a step nor turned over (its step counter and its accumulated step time both unchanged) for
// `stall_after` while requests were running or waiting. An idle engine, or one whose every
// stream waits for a slow reader (the loop keeps turning), is live; so is a draining one, so a
// liveness probe never cuts a drain short. A container orchestrator restarts the process when
// liveness fails (deploy/k8s: the kubelet's gRPC probe on that service).
//
// LivenessTracker is the decision alone, fed with times (tests inject them); LivenessWatchdog
// samples the engine on a thread of its own and reports every result (re-asserting it, so that
// a health status reset by the drain is restored at the next tick).
//
// Thread-safety: LivenessTracker is not thread-safe; LivenessWatchdog's callbacks run on its
// thread, and its destructor stops the thread.
#ifndef KVSERVE_SERVER_GRPC_LIVENESS_WATCHDOG_H_
#define KVSERVE_SERVER_GRPC_LIVENESS_WATCHDOG_H_

#include <cstdint>
#include <functional>
#include <thread>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace kvserve::server {

// The grpc.health.v1 service name of the liveness check.
inline constexpr char kLivenessService[] = "kvserve.liveness";

// One observation of the engine.
struct LivenessSample {
  int64_t steps = 0;         // steps run (EngineStats::steps)
  absl::Duration step_time;  // time of the loop's turns (EngineStats::step_time): grows on
                             // every turn, a step run or not
  int64_t queued = 0;        // requests running or waiting
};

class LivenessTracker {
 public:
  explicit LivenessTracker(absl::Duration stall_after) : stall_after_(stall_after) {}

  // Records `sample`, observed at `now` (non-decreasing). Returns false (wedged) when the loop
  // made no progress for at least stall_after while work was queued at every observation.
  bool Observe(absl::Time now, const LivenessSample& sample);

  // How long the loop has made no progress with work queued, as of the last observation.
  absl::Duration stalled_for() const { return stalled_for_; }

 private:
  absl::Duration stall_after_;
  bool started_ = false;
  LivenessSample last_;
  absl::Time last_progress_;
  absl::Duration stalled_for_;
};

class LivenessWatchdog {
 public:
  // Samples with `sample` every `interval` (the first at once) and passes each result to
  // `report` (true: live). `clock` gives the time of each observation.
  LivenessWatchdog(
      std::function<LivenessSample()> sample, std::function<void(bool)> report,
      absl::Duration stall_after, absl::Duration interval,
      std::function<absl::Time()> clock = [] { return absl::Now(); });
  ~LivenessWatchdog();
  LivenessWatchdog(const LivenessWatchdog&) = delete;
  LivenessWatchdog& operator=(const LivenessWatchdog&) = delete;

 private:
  void Run();

  std::function<LivenessSample()> sample_;
  std::function<void(bool)> report_;
  std::function<absl::Time()> clock_;
  LivenessTracker tracker_;
  absl::Duration interval_;
  absl::Mutex mu_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace kvserve::server

#endif  // KVSERVE_SERVER_GRPC_LIVENESS_WATCHDOG_H_
