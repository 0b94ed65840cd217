// The reactors that carry one engine request to its gRPC client: GenerateCall streams it
// (Generate), CompleteCall gathers it into one response (Complete).
//
// Neither ever blocks a gRPC or engine thread. The RequestStream's listener (engine thread) posts
// the call to a StreamPump, whose thread calls Pump(), as does the write-completion callback
// (gRPC thread); Pump() takes events only when no write is in flight: one write at a time, and a
// client that reads slowly leaves the events in the RequestStream, whose bound pauses the request
// in the engine (flow control end to end). When the client cancels, disconnects or its deadline
// passes (OnCancel), or a write fails, the request is cancelled in the engine at once so that its
// KV blocks are freed on the next step.
//
// Each call is logged (one line) and counted (CallInfo::outcomes) with the gRPC status it ends
// with, which is what its client gets: the engine's final status; RESOURCE_EXHAUSTED for a
// response larger than server.max_message_bytes (checked here before the write, so that gRPC
// never fails the send behind the call's back); CANCELLED when the client cancelled or went
// away, DEADLINE_EXCEEDED when that happened at its deadline (see kDeadlineSlack).
//
// Ownership: each call owns itself (a self reference dropped in OnDone); the listener holds only a
// weak reference, so the engine may push to a stream whose call is gone.
#ifndef KVSERVE_SERVER_GRPC_GENERATION_CALLS_H_
#define KVSERVE_SERVER_GRPC_GENERATION_CALLS_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "engine/serving/request_stream.h"
#include "grpcpp/grpcpp.h"
#include "server/grpc/stream_pump.h"
#include "server/metrics/request_outcomes.h"

namespace kvserve::server {

class ServerMetrics;

// Counts the generation calls in flight, so that a shutdown can wait for the last messages to be
// written before it closes the connections. Thread-safe.
class CallTracker {
 public:
  void Begin();
  void End();
  // Waits until no call is in flight or the timeout passes. True when none is.
  bool WaitIdle(absl::Duration timeout);

 private:
  absl::Mutex mu_;
  int64_t active_ ABSL_GUARDED_BY(mu_) = 0;
};

// What the log line of a finished request needs besides the stream's final event.
struct CallInfo {
  std::string method;  // "Generate" or "Complete"
  int32_t prompt_tokens = 0;
  CallTracker* tracker = nullptr;    // told when the call begins and ends; may be null
  ServerMetrics* metrics = nullptr;  // records the finished request; may be null
  // Runs the call's Pump() for the stream's listener, off the engine thread; null: the listener
  // runs it itself.
  StreamPump* pump = nullptr;
  RequestOutcomes* outcomes = nullptr;  // counts the status the call ends with; may be null
  absl::Time deadline = absl::InfiniteFuture();  // the call's deadline
  // A response message larger than this ends the call with RESOURCE_EXHAUSTED, as gRPC would
  // refuse to send it (server.max_message_bytes); 0: no bound.
  int64_t max_message_bytes = 0;
};

// The final event `e` without its payload (tokens, log-probabilities and text, which go into the
// messages): finish reason, status, usage, timings, KV usage, preemptions.
engine::StreamEvent FinalSummary(const engine::StreamEvent& e);

// Streams `stream` to the client. The returned reactor belongs to gRPC until OnDone.
grpc::ServerWriteReactor<grpc::ByteBuffer>* StartGenerateCall(
    std::shared_ptr<engine::RequestStream> stream, CallInfo info);

// Gathers `stream` into a CompleteResponse serialized into `*response` (owned by gRPC).
grpc::ServerUnaryReactor* StartCompleteCall(std::shared_ptr<engine::RequestStream> stream,
                                            grpc::ByteBuffer* response, CallInfo info);

// A Generate reactor that ends the call at once with `status` (a rejected request).
grpc::ServerWriteReactor<grpc::ByteBuffer>* FailedGenerateCall(const grpc::Status& status);

}  // namespace kvserve::server

#endif  // KVSERVE_SERVER_GRPC_GENERATION_CALLS_H_
