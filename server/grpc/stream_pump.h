// Moves the work of turning engine events into gRPC writes off the engine thread.
//
// A RequestStream calls its listener on the engine thread at the end of each step that pushed to
// it. Serializing the message and starting the gRPC write from there would put the transport's
// work, a sendmsg on loopback included, into every decode step, once per running stream. Instead
// the listener posts the call here (a lock and a vector append; a call already posted is not posted
// again) and the pump's thread runs the calls' Pump(), which takes every event pending by then into
// one message.
//
// Thread-safety: Post from any thread. The pump outlives the calls that post to it: its owner
// destroys it only after every call has ended; the destructor runs what is still posted, then
// joins the thread.
#ifndef KVSERVE_SERVER_GRPC_STREAM_PUMP_H_
#define KVSERVE_SERVER_GRPC_STREAM_PUMP_H_

#include <atomic>
#include <memory>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"

namespace kvserve::server {

// A call whose Pump() the pump runs.
class PumpTarget {
 public:
  virtual ~PumpTarget() = default;
  // Takes the pending events and starts what they call for (a write, the finish). Thread-safe.
  virtual void Pump() = 0;

 private:
  friend class StreamPump;
  std::atomic<bool> posted_{false};  // in the pump's queue, its Pump() not yet started
};

class StreamPump {
 public:
  StreamPump();
  ~StreamPump();
  StreamPump(const StreamPump&) = delete;
  StreamPump& operator=(const StreamPump&) = delete;

  // Runs target->Pump() on the pump's thread, unless it is already posted and not yet started
  // (that run will see whatever this post was for).
  void Post(const std::shared_ptr<PumpTarget>& target);

 private:
  void Loop();

  absl::Mutex mu_;
  std::vector<std::weak_ptr<PumpTarget>> queue_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace kvserve::server

#endif  // KVSERVE_SERVER_GRPC_STREAM_PUMP_H_
