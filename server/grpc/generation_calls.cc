#include "server/grpc/generation_calls.h"

#include <functional>
#include <optional>
#include <utility>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "kvserve/v1/generation.pb.h"
#include "server/grpc/proto_codec.h"
#include "server/metrics/server_metrics.h"
#include "spdlog/spdlog.h"

namespace kvserve::server {
namespace {

double Ms(absl::Duration d) { return absl::ToDoubleMilliseconds(d); }

// gRPC tells a server only that a call was cancelled, not whether its client cancelled it or the
// call's deadline passed. The client's own deadline timer usually fires first (the server's
// deadline is the client's plus the time the request took to arrive, and gRPC's timers count whole
// milliseconds); the client then resets the stream and reports DEADLINE_EXCEEDED to its caller.
// So a cancellation after the deadline, or less than this before it, is counted as the deadline
// (gRPC itself reads a reset stream after the deadline as DEADLINE_EXCEEDED).
constexpr absl::Duration kDeadlineSlack = absl::Milliseconds(5);

// The status a call ends with when its client cancelled it or went away.
grpc::Status CancelledStatus(absl::Time deadline) {
  if (absl::Now() >= deadline - kDeadlineSlack) {
    return grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "the call's deadline passed");
  }
  return grpc::Status(grpc::StatusCode::CANCELLED, "the call was cancelled");
}

// RESOURCE_EXHAUSTED when a response message of `bytes` is larger than the bound.
std::optional<grpc::Status> CheckMessageSize(size_t bytes, int64_t max_bytes) {
  if (max_bytes <= 0 || bytes <= static_cast<size_t>(max_bytes)) return std::nullopt;
  return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                      absl::StrFormat("the response (%d bytes) is larger than "
                                      "server.max_message_bytes (%d bytes)",
                                      bytes, max_bytes));
}

// Counts the status a call ends with; called once per call, just before Finish(status).
void CountEnd(const CallInfo& info, const grpc::Status& status) {
  if (info.outcomes == nullptr) return;
  info.outcomes->Count(static_cast<absl::StatusCode>(status.error_code()));
}

// One info line per finished request, with the status the call ended with (what the client got).
// Never the prompt or the output text.
void LogFinished(const CallInfo& info, const std::string& id,
                 const std::optional<engine::StreamEvent>& final, int64_t streamed_tokens,
                 bool client_gone, const grpc::Status& ended) {
  if (final && info.metrics != nullptr) info.metrics->ObserveRequest(*final);
  const std::string status =
      absl::StatusCodeToString(static_cast<absl::StatusCode>(ended.error_code()));
  // Escaped: an engine message may quote a value the client sent.
  const std::string error =
      ended.ok() ? std::string()
                 : absl::StrFormat(" error=\"%s\"", absl::CHexEscape(ended.error_message()));
  const char* gone = client_gone ? " (client gone)" : "";
  if (!final) {
    spdlog::info("{} {} finished: status={} prompt_tokens={} completion_tokens={}{}{}", info.method,
                 id, status, info.prompt_tokens, streamed_tokens, error, gone);
    return;
  }
  spdlog::info(
      "{} {} finished: status={} finish_reason={} prompt_tokens={} cached_tokens={} "
      "completion_tokens={} ttft_ms={:.1f} duration_ms={:.1f} queued_ms={:.1f} preemptions={} "
      "peak_kv_blocks={}{}{}",
      info.method, id, status, std::string(engine::FinishReasonName(final->finish_reason)),
      final->usage.prompt_tokens, final->usage.cached_prompt_tokens, final->usage.completion_tokens,
      Ms(final->timings.time_to_first_token), Ms(final->timings.total), Ms(final->timings.queued),
      final->preemptions, final->kv.peak_blocks, error, gone);
}

template <typename Response>
void FillFinal(const engine::StreamEvent& e, Response* out) {
  out->set_finish_reason(ToProtoFinishReason(e.finish_reason));
  out->mutable_usage()->set_prompt_tokens(e.usage.prompt_tokens);
  out->mutable_usage()->set_cached_prompt_tokens(e.usage.cached_prompt_tokens);
  out->mutable_usage()->set_completion_tokens(e.usage.completion_tokens);
  ToProtoDuration(e.timings.queued, out->mutable_timings()->mutable_queued());
  ToProtoDuration(e.timings.time_to_first_token,
                  out->mutable_timings()->mutable_time_to_first_token());
  ToProtoDuration(e.timings.total, out->mutable_timings()->mutable_total());
  out->mutable_kv_usage()->set_peak_blocks(e.kv.peak_blocks);
  out->mutable_kv_usage()->set_peak_bytes(e.kv.peak_bytes);
  out->mutable_kv_usage()->set_evicted_tokens(e.kv.evicted_tokens);
  out->set_preemptions(e.preemptions);
}

// Appends an event's per-token log-probabilities (aligned with its token ids).
template <typename Response>
void AddLogprobs(const engine::StreamEvent& e, Response* out) {
  for (const engine::TokenLogprob& l : e.logprobs) {
    v1::TokenLogprob* entry = out->add_logprobs();
    entry->set_token_id(l.token_id);
    entry->set_logprob(l.logprob);
    for (const engine::TopLogprob& t : l.top) {
      v1::TopLogprob* top = entry->add_top();
      top->set_token_id(t.token_id);
      top->set_logprob(t.logprob);
    }
  }
}

}  // namespace

engine::StreamEvent FinalSummary(const engine::StreamEvent& e) {
  engine::StreamEvent summary;
  summary.final = true;
  summary.finish_reason = e.finish_reason;
  summary.status = e.status;
  summary.usage = e.usage;
  summary.timings = e.timings;
  summary.kv = e.kv;
  summary.preemptions = e.preemptions;
  return summary;
}

namespace {

// The listener of a call's stream: runs the call's Pump() on `pump`, or at once when there is no
// pump. Holds only a weak reference (the engine may push to a stream whose call is gone).
template <class Call>
std::function<void()> PumpListener(const std::shared_ptr<Call>& self, StreamPump* pump) {
  std::weak_ptr<Call> weak = self;
  return [weak, pump] {
    std::shared_ptr<Call> call = weak.lock();
    if (call == nullptr) return;
    if (pump != nullptr) {
      pump->Post(call);
    } else {
      call->Pump();
    }
  };
}

class GenerateCall final : public grpc::ServerWriteReactor<grpc::ByteBuffer>, public PumpTarget {
 public:
  GenerateCall(std::shared_ptr<engine::RequestStream> stream, CallInfo info)
      : stream_(std::move(stream)), info_(std::move(info)) {
    if (info_.tracker != nullptr) info_.tracker->Begin();
  }

  void Start(const std::shared_ptr<GenerateCall>& self) {
    self_ = self;
    // May call the listener at once (events already pending): no lock of ours is held here.
    stream_->SetListener(PumpListener(self, info_.pump));
  }

  void OnWriteDone(bool ok) override {
    if (!ok) stream_->Cancel();  // the client is gone: free the KV now
    {
      absl::MutexLock lock(&mu_);
      write_in_flight_ = false;
      if (!ok) broken_ = true;
    }
    Pump();
  }

  void OnCancel() override {
    stream_->Cancel();
    {
      absl::MutexLock lock(&mu_);
      broken_ = true;
    }
    Pump();
  }

  void OnDone() override {
    bool client_gone;
    std::optional<engine::StreamEvent> final;
    int64_t streamed;
    grpc::Status ended;
    {
      absl::MutexLock lock(&mu_);
      done_ = true;
      client_gone = broken_;
      final = final_;
      streamed = streamed_tokens_;
      ended = ended_;
      buffer_.Clear();  // no write is in flight any more
    }
    stream_->SetListener([] {});
    stream_->Cancel();  // no effect once the request has finished
    LogFinished(info_, stream_->id(), final, streamed, client_gone, ended);
    if (info_.tracker != nullptr) info_.tracker->End();
    std::shared_ptr<GenerateCall> self = std::move(self_);  // may destroy *this on return
  }

  // Starts the next write or the Finish, if the call is ready for one.
  void Pump() override {
    enum class Action { kNone, kWrite, kFinish } action = Action::kNone;
    grpc::Status finish_status;
    {
      absl::MutexLock lock(&mu_);
      if (done_ || finishing_ || write_in_flight_) return;
      if (broken_) {
        finishing_ = true;
        action = Action::kFinish;
        finish_status = CancelledStatus(info_.deadline);
      } else if (server_error_) {
        finishing_ = true;
        action = Action::kFinish;
        finish_status = *server_error_;
      } else if (final_) {
        // Everything up to the final event has been written.
        finishing_ = true;
        action = Action::kFinish;
        finish_status = ToGrpcStatus(final_->status);
      } else {
        action = TakeEvents() ? Action::kWrite : Action::kNone;
        if (action == Action::kNone && (final_ || server_error_)) {
          finishing_ = true;
          action = Action::kFinish;
          finish_status = server_error_ ? *server_error_ : ToGrpcStatus(final_->status);
        }
        if (action == Action::kWrite) write_in_flight_ = true;
      }
      if (action == Action::kFinish) ended_ = finish_status;
    }
    if (action == Action::kFinish) CountEnd(info_, finish_status);
    if (action == Action::kWrite) {
      StartWrite(&buffer_);
    } else if (action == Action::kFinish) {
      Finish(finish_status);
    }
  }

 private:
  // Takes the pending events into buffer_. True when there is a message to write.
  bool TakeEvents() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    std::vector<engine::StreamEvent> events;
    stream_->Take(&events);
    if (events.empty()) return false;
    v1::GenerateResponse message;
    for (engine::StreamEvent& e : events) {
      for (int32_t t : e.token_ids) message.add_token_ids(t);
      AddLogprobs(e, &message);
      streamed_tokens_ += static_cast<int64_t>(e.token_ids.size());
      message.mutable_text()->append(e.text);
      if (e.final) final_ = FinalSummary(e);
    }
    bool write = message.token_ids_size() > 0 || !message.text().empty();
    if (final_ && final_->status.ok()) {
      FillFinal(*final_, &message);
      write = true;
    }
    if (!write) return false;
    message.set_request_id(stream_->id());
    if (!SerializeResponse(message, &buffer_)) {
      stream_->Cancel();
      server_error_ = grpc::Status(grpc::StatusCode::INTERNAL, "cannot serialize the response");
      return false;
    }
    if (auto too_large = CheckMessageSize(buffer_.Length(), info_.max_message_bytes)) {
      buffer_.Clear();
      stream_->Cancel();
      server_error_ = *std::move(too_large);
      return false;
    }
    return true;
  }

  const std::shared_ptr<engine::RequestStream> stream_;
  const CallInfo info_;
  std::shared_ptr<GenerateCall> self_;  // keeps the call alive until OnDone

  absl::Mutex mu_;
  bool write_in_flight_ ABSL_GUARDED_BY(mu_) = false;
  bool finishing_ ABSL_GUARDED_BY(mu_) = false;
  bool broken_ ABSL_GUARDED_BY(mu_) = false;  // cancelled, or a write failed
  bool done_ ABSL_GUARDED_BY(mu_) = false;
  std::optional<engine::StreamEvent> final_ ABSL_GUARDED_BY(mu_);
  // Set when the server cannot send a message (it ends the call with this status).
  std::optional<grpc::Status> server_error_ ABSL_GUARDED_BY(mu_);
  grpc::Status ended_ ABSL_GUARDED_BY(mu_);  // the status the call was finished with
  int64_t streamed_tokens_ ABSL_GUARDED_BY(mu_) = 0;
  // The message being written: filled under mu_, then owned by the write until OnWriteDone.
  grpc::ByteBuffer buffer_;
};

class CompleteCall final : public grpc::ServerUnaryReactor, public PumpTarget {
 public:
  CompleteCall(std::shared_ptr<engine::RequestStream> stream, grpc::ByteBuffer* response,
               CallInfo info)
      : stream_(std::move(stream)), response_(response), info_(std::move(info)) {
    if (info_.tracker != nullptr) info_.tracker->Begin();
  }

  void Start(const std::shared_ptr<CompleteCall>& self) {
    self_ = self;
    stream_->SetListener(PumpListener(self, info_.pump));
  }

  void OnCancel() override {
    stream_->Cancel();
    grpc::Status status = CancelledStatus(info_.deadline);
    {
      absl::MutexLock lock(&mu_);
      if (finishing_ || done_) return;
      finishing_ = true;
      cancelled_ = true;
      ended_ = status;
    }
    CountEnd(info_, status);
    Finish(status);
  }

  void OnDone() override {
    bool cancelled;
    std::optional<engine::StreamEvent> final;
    int64_t tokens;
    grpc::Status ended;
    {
      absl::MutexLock lock(&mu_);
      done_ = true;
      cancelled = cancelled_;
      final = final_;
      tokens = message_.token_ids_size();
      ended = ended_;
    }
    stream_->SetListener([] {});
    stream_->Cancel();
    LogFinished(info_, stream_->id(), final, tokens, cancelled, ended);
    if (info_.tracker != nullptr) info_.tracker->End();
    std::shared_ptr<CompleteCall> self = std::move(self_);  // may destroy *this on return
  }

  void Pump() override {
    grpc::Status status;
    {
      absl::MutexLock lock(&mu_);
      if (done_ || finishing_) return;
      std::vector<engine::StreamEvent> events;
      stream_->Take(&events);
      for (engine::StreamEvent& e : events) {
        for (int32_t t : e.token_ids) message_.add_token_ids(t);
        AddLogprobs(e, &message_);
        message_.mutable_text()->append(e.text);
        if (e.final) final_ = FinalSummary(e);
      }
      if (!final_) return;
      finishing_ = true;
      status = ToGrpcStatus(final_->status);
      if (status.ok()) {
        FillFinal(*final_, &message_);
        message_.set_request_id(stream_->id());
        if (!SerializeResponse(message_, response_)) {
          status = grpc::Status(grpc::StatusCode::INTERNAL, "cannot serialize the response");
        } else if (auto too_large =
                       CheckMessageSize(response_->Length(), info_.max_message_bytes)) {
          response_->Clear();
          status = *std::move(too_large);
        }
      }
      ended_ = status;
    }
    CountEnd(info_, status);
    Finish(status);
  }

 private:
  const std::shared_ptr<engine::RequestStream> stream_;
  grpc::ByteBuffer* const response_;
  const CallInfo info_;
  std::shared_ptr<CompleteCall> self_;

  absl::Mutex mu_;
  bool finishing_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  bool done_ ABSL_GUARDED_BY(mu_) = false;
  v1::CompleteResponse message_ ABSL_GUARDED_BY(mu_);
  std::optional<engine::StreamEvent> final_ ABSL_GUARDED_BY(mu_);
  grpc::Status ended_ ABSL_GUARDED_BY(mu_);  // the status the call was finished with
};

class FailedWriteReactor final : public grpc::ServerWriteReactor<grpc::ByteBuffer> {
 public:
  explicit FailedWriteReactor(const grpc::Status& status) { Finish(status); }
  void OnDone() override { delete this; }
};

}  // namespace

void CallTracker::Begin() {
  absl::MutexLock lock(&mu_);
  ++active_;
}

void CallTracker::End() {
  absl::MutexLock lock(&mu_);
  --active_;
}

bool CallTracker::WaitIdle(absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  auto idle = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return active_ == 0; };
  return mu_.AwaitWithTimeout(absl::Condition(&idle), timeout);
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* StartGenerateCall(
    std::shared_ptr<engine::RequestStream> stream, CallInfo info) {
  auto call = std::make_shared<GenerateCall>(std::move(stream), std::move(info));
  call->Start(call);
  return call.get();
}

grpc::ServerUnaryReactor* StartCompleteCall(std::shared_ptr<engine::RequestStream> stream,
                                            grpc::ByteBuffer* response, CallInfo info) {
  auto call = std::make_shared<CompleteCall>(std::move(stream), response, std::move(info));
  call->Start(call);
  return call.get();
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* FailedGenerateCall(const grpc::Status& status) {
  return new FailedWriteReactor(status);
}

}  // namespace kvserve::server
