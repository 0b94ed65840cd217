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
    absl::MutexLock lock(&mu_);
    auto ready = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
      return !events_.empty() || final_taken_;
    };
    mu_.AwaitWithTimeout(absl::Condition(&ready), timeout);
  }
  return Take(out);
}

void RequestStream::SetListener(std::function<void()> listener) {
  bool pending;
  {
    absl::MutexLock lock(&mu_);
    listener_ = listener;
    pending = !events_.empty();
  }
  if (pending && listener) listener();
}

bool RequestStream::HasRoom() const {
  return pending_tokens_.load(std::memory_order_relaxed) < capacity_tokens_;
}

void RequestStream::Push(StreamEvent event) {
  std::function<void()> listener;
  {
    absl::MutexLock lock(&mu_);
    if (final_pushed_) return;  // a stream ends once
    final_pushed_ = event.final;
    pending_tokens_.fetch_add(static_cast<int64_t>(event.token_ids.size()),
                              std::memory_order_relaxed);
    events_.push_back(std::move(event));
    listener = listener_;
  }
  if (listener) listener();
}

}  // namespace kvserve::engine
