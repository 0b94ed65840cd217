#include "engine/serving/request_stream.h"

#include <utility>

namespace kvserve::engine {

bool RequestStream::Take(std::vector<StreamEvent>* out) {
  absl::MutexLock lock(&mu_);
  int64_t taken = 0;
  for (StreamEvent& e : events_) {
    taken += static_cast<int64_t>(e.token_ids.size());
    if (e.final) final_taken_ = true;
    out->push_back(std::move(e));
  }
  events_.clear();
  pending_tokens_.fetch_sub(taken, std::memory_order_relaxed);
  return final_taken_;
}

bool RequestStream::WaitAndTake(std::vector<StreamEvent>* out, absl::Duration timeout) {
  {
    const absl::Time deadline = absl::Now() + timeout;
    absl::MutexLock lock(&mu_);
    // Events pushed and not yet notified count too: they are there to take.
    while (events_.empty() && !final_taken_) {
      if (pushed_.WaitWithDeadline(&mu_, deadline)) break;  // timed out
    }
  }
  return Take(out);
}

void RequestStream::SetListener(std::function<void()> listener) {
  std::shared_ptr<const std::function<void()>> set;
  if (listener) set = std::make_shared<const std::function<void()>>(std::move(listener));
  bool pending;
  {
    absl::MutexLock lock(&mu_);
    listener_ = set;
    pending = !events_.empty();
  }
  if (pending && set) (*set)();
}

bool RequestStream::HasRoom() const {
  return pending_tokens_.load(std::memory_order_relaxed) < capacity_tokens_;
}

bool RequestStream::Push(StreamEvent event) {
  absl::MutexLock lock(&mu_);
  if (final_pushed_) return false;  // a stream ends once
  final_pushed_ = event.final;
  pending_tokens_.fetch_add(static_cast<int64_t>(event.token_ids.size()),
                            std::memory_order_relaxed);
  events_.push_back(std::move(event));
  const bool first = !notify_owed_;
  notify_owed_ = true;
  return first;
}

void RequestStream::Notify() {
  std::shared_ptr<const std::function<void()>> listener;
  {
    absl::MutexLock lock(&mu_);
    notify_owed_ = false;
    listener = listener_;
  }
  pushed_.SignalAll();
  if (listener) (*listener)();
}

}  // namespace kvserve::engine
