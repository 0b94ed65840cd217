// The consumer end of one request's output: a bounded, thread-safe queue of StreamEvents.
//
// The engine thread pushes; a server thread takes. The engine never blocks on a stream: when a
// stream holds `capacity_tokens` undelivered tokens the engine stops scheduling that request
// (its KV stays) until the consumer takes them — a slow reader slows only itself.
//
// Pushing and telling the consumer are separate: the engine pushes every event of a step, then
// calls Notify once per stream that got events. A consumer is woken once per step, after the
// step's events are all in place, and does not contend with the pushes that follow its wake-up.
//
// Thread-safety: every method is thread-safe. The listener is called on the engine thread with no
// lock held, from Notify; it must not block (typically it kicks off an asynchronous write).
#ifndef KVSERVE_ENGINE_SERVING_REQUEST_STREAM_H_
#define KVSERVE_ENGINE_SERVING_REQUEST_STREAM_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "engine/serving/request.h"

namespace kvserve::engine {

class RequestStream {
 public:
  RequestStream(std::string id, int64_t capacity_tokens)
      : id_(std::move(id)), capacity_tokens_(capacity_tokens) {}

  const std::string& id() const { return id_; }

  // ---- consumer side ----
  // Moves every available event into *out (appending). Returns true if the final event was taken
  // (by this or an earlier call).
  bool Take(std::vector<StreamEvent>* out);
  // Blocks until an event is available, the stream is finished, or the timeout passes; then as
  // Take. For simple clients and tests; servers use the listener.
  bool WaitAndTake(std::vector<StreamEvent>* out, absl::Duration timeout);
  // Sets the function Notify calls. Called once immediately if events are pending.
  void SetListener(std::function<void()> listener);
  // Asks the engine to stop the request: it ends with status CANCELLED and its KV blocks are
  // freed on the engine's next step. Idempotent.
  void Cancel() { cancelled_.store(true, std::memory_order_release); }

  // ---- engine side ----
  bool cancelled() const { return cancelled_.load(std::memory_order_acquire); }
  // True while the consumer holds back fewer than capacity tokens.
  bool HasRoom() const;
  // Queues an event; the consumer is not told until Notify. Returns true when this is the first
  // push since the last Notify (the caller then owes the stream a Notify).
  bool Push(StreamEvent event);
  // Wakes WaitAndTake and calls the listener.
  void Notify();

 private:
  const std::string id_;
  const int64_t capacity_tokens_;
  std::atomic<bool> cancelled_{false};
  mutable absl::Mutex mu_;
  absl::CondVar pushed_;  // signalled by Notify
  // Take drains every event, so a vector (which keeps its capacity) serves as the queue: a push
  // allocates nothing once the stream has been read.
  std::vector<StreamEvent> events_ ABSL_GUARDED_BY(mu_);
  // Tokens pushed and not yet taken. Written under mu_; HasRoom reads it without the lock.
  std::atomic<int64_t> pending_tokens_{0};
  bool final_pushed_ ABSL_GUARDED_BY(mu_) = false;
  bool final_taken_ ABSL_GUARDED_BY(mu_) = false;
  bool notify_owed_ ABSL_GUARDED_BY(mu_) = false;  // pushed since the last Notify
  // Shared so that Notify can call it outside the lock while SetListener replaces it.
  std::shared_ptr<const std::function<void()>> listener_ ABSL_GUARDED_BY(mu_);
};

}  // namespace kvserve::engine

#endif  // KVSERVE_ENGINE_SERVING_REQUEST_STREAM_H_
