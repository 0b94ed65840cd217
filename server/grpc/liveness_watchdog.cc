#include "server/grpc/liveness_watchdog.h"

#include <utility>

#include "spdlog/spdlog.h"

namespace kvserve::server {

bool LivenessTracker::Observe(absl::Time now, const LivenessSample& sample) {
  const bool progressed = !started_ || sample.steps != last_.steps ||
                          sample.step_time != last_.step_time || sample.queued == 0;
  if (progressed) last_progress_ = now;
  started_ = true;
  last_ = sample;
  stalled_for_ = now - last_progress_;
  return stalled_for_ < stall_after_;
}

LivenessWatchdog::LivenessWatchdog(std::function<LivenessSample()> sample,
                                   std::function<void(bool)> report, absl::Duration stall_after,
                                   absl::Duration interval, std::function<absl::Time()> clock)
    : sample_(std::move(sample)),
      report_(std::move(report)),
      clock_(std::move(clock)),
      tracker_(stall_after),
      interval_(interval),
      thread_([this] { Run(); }) {}

LivenessWatchdog::~LivenessWatchdog() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  thread_.join();
}

void LivenessWatchdog::Run() {
  bool was_live = true;
  while (true) {
    const LivenessSample s = sample_();
    const bool live = tracker_.Observe(clock_(), s);
    if (live != was_live) {
      if (live) {
        spdlog::info("liveness: the engine loop makes progress again");
      } else {
        spdlog::error(
            "liveness: the engine loop has made no progress for {:.1f}s with {} requests queued "
            "(steps {}): reporting {} NOT_SERVING",
            absl::ToDoubleSeconds(tracker_.stalled_for()), s.queued, s.steps, kLivenessService);
      }
      was_live = live;
    }
    report_(live);
    absl::MutexLock lock(&mu_);
    auto stopped = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return stop_; };
    if (mu_.AwaitWithTimeout(absl::Condition(&stopped), interval_)) return;
  }
}

}  // namespace kvserve::server
