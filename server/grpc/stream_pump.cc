#include "server/grpc/stream_pump.h"

#include <utility>

namespace kvserve::server {

StreamPump::StreamPump() : thread_([this] { Loop(); }) {}

StreamPump::~StreamPump() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  thread_.join();
}

void StreamPump::Post(const std::shared_ptr<PumpTarget>& target) {
  if (target->posted_.exchange(true, std::memory_order_acq_rel)) return;
  absl::MutexLock lock(&mu_);
  queue_.push_back(target);
}

void StreamPump::Loop() {
  std::vector<std::weak_ptr<PumpTarget>> batch;
  for (;;) {
    {
      absl::MutexLock lock(&mu_);
      auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !queue_.empty() || stop_; };
      mu_.Await(absl::Condition(&ready));
      if (queue_.empty()) return;  // stopping, nothing left
      batch.swap(queue_);
    }
    for (std::weak_ptr<PumpTarget>& weak : batch) {
      if (std::shared_ptr<PumpTarget> target = weak.lock()) {
        // Cleared before the run: an event pushed during it posts the target again.
        target->posted_.store(false, std::memory_order_release);
        target->Pump();
      }
    }
    batch.clear();
  }
}

}  // namespace kvserve::server
