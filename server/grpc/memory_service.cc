#include "server/grpc/memory_service.h"

#include <algorithm>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "server/grpc/memory_stats.h"
#include "server/grpc/proto_codec.h"
#include "spdlog/spdlog.h"

namespace kvserve::server {
namespace {

grpc::ServerUnaryReactor* FinishNow(grpc::CallbackServerContext* context,
                                    const absl::Status& status) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

// A WatchStats call refused before it started.
class RefusedWatch final : public grpc::ServerWriteReactor<v1::MemoryStats> {
 public:
  explicit RefusedWatch(const grpc::Status& status) { Finish(status); }
  void OnDone() override { delete this; }
};

}  // namespace

// One WatchStats call. The ticker offers it each shared snapshot; it writes when due.
class MemoryService::Watcher final : public grpc::ServerWriteReactor<v1::MemoryStats> {
 public:
  Watcher(MemoryService* service, absl::Duration interval, absl::Duration tick)
      : service_(service), interval_(interval), tick_(tick), next_due_(absl::Now()) {}

  // True when a snapshot taken at `now` should be offered. Ticker thread, service mu_ held.
  bool Due(absl::Time now) {
    absl::MutexLock lock(&mu_);
    return !finishing_ && !writing_ && now >= next_due_;
  }

  // Ticker thread, service mu_ held (so the watcher cannot be deleted meanwhile).
  void Offer(absl::Time now, const std::shared_ptr<const v1::MemoryStats>& snapshot) {
    {
      absl::MutexLock lock(&mu_);
      if (finishing_ || writing_ || now < next_due_) return;
      // Ticks are `tick_` apart: due half a tick early, a snapshot lands within half a tick of
      // the requested interval.
      next_due_ = now + interval_ - tick_ / 2;
      writing_ = true;
      current_ = snapshot;
    }
    StartWrite(current_.get());
  }

  void OnWriteDone(bool ok) override {
    absl::MutexLock lock(&mu_);
    writing_ = false;
    current_.reset();
    if (!ok && !finishing_) finishing_ = true;
    if (finishing_) FinishOnce(grpc::Status(grpc::StatusCode::CANCELLED, "the call was cancelled"));
  }

  void OnCancel() override {
    absl::MutexLock lock(&mu_);
    finishing_ = true;
    if (!writing_) {
      FinishOnce(grpc::Status(grpc::StatusCode::CANCELLED, "the call was cancelled"));
    }
  }

  void OnDone() override {
    service_->Unregister(this);
    delete this;
  }

 private:
  void FinishOnce(const grpc::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finished_) return;
    finished_ = true;
    Finish(status);
  }

  MemoryService* const service_;
  const absl::Duration interval_;
  const absl::Duration tick_;
  absl::Mutex mu_;
  absl::Time next_due_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool finishing_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  std::shared_ptr<const v1::MemoryStats> current_;  // the message being written
};

MemoryService::MemoryService(engine::Engine* engine, MemoryServiceOptions options)
    : engine_(engine), options_(options) {
  ticker_ = std::thread([this] { TickLoop(); });
}

MemoryService::~MemoryService() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  ticker_.join();
}

absl::Status MemoryService::Admit(const grpc::CallbackServerContext& context) const {
  if (draining_.load(std::memory_order_acquire)) {
    return absl::UnavailableError("the server is shutting down");
  }
  if (options_.authenticator != nullptr) return options_.authenticator->Check(context);
  return absl::OkStatus();
}

absl::Duration MemoryService::Tick() const {
  return std::max(options_.min_watch_interval / 4, absl::Milliseconds(1));
}

void MemoryService::Register(Watcher* w) {
  absl::MutexLock lock(&mu_);
  watchers_.push_back(w);
}

void MemoryService::Unregister(Watcher* w) {
  absl::MutexLock lock(&mu_);
  watchers_.erase(std::remove(watchers_.begin(), watchers_.end(), w), watchers_.end());
}

v1::MemoryStats MemoryService::Snapshot(absl::Time now) const {
  v1::MemoryStats stats = ToMemoryStats(engine_->Stats(), now);
  if (const RequestOutcomes* o = options_.outcomes) {
    stats.set_requests_finished(o->Get(RequestOutcome::kOk));
    stats.set_requests_cancelled(o->Get(RequestOutcome::kCancelled));
    stats.set_requests_deadline_exceeded(o->Get(RequestOutcome::kDeadlineExceeded));
    stats.set_requests_failed(o->Get(RequestOutcome::kFailed));
  }
  return stats;
}

void MemoryService::TickLoop() {
  absl::MutexLock lock(&mu_);
  while (true) {
    mu_.AwaitWithTimeout(absl::Condition(&stop_), Tick());
    if (stop_) return;
    const absl::Time now = absl::Now();
    bool any_due = false;
    for (Watcher* w : watchers_) any_due = any_due || w->Due(now);
    if (!any_due) continue;
    auto snapshot = std::make_shared<const v1::MemoryStats>(Snapshot(now));
    for (Watcher* w : watchers_) w->Offer(now, snapshot);
  }
}

grpc::ServerUnaryReactor* MemoryService::GetStats(grpc::CallbackServerContext* context,
                                                  const v1::GetStatsRequest* /*request*/,
                                                  v1::MemoryStats* response) {
  if (absl::Status s = Admit(*context); !s.ok()) return FinishNow(context, s);
  *response = Snapshot(absl::Now());
  return FinishNow(context, absl::OkStatus());
}

grpc::ServerWriteReactor<v1::MemoryStats>* MemoryService::WatchStats(
    grpc::CallbackServerContext* context, const v1::WatchStatsRequest* request) {
  if (absl::Status s = Admit(*context); !s.ok()) return new RefusedWatch(ToGrpcStatus(s));
  const int64_t min_ms = absl::ToInt64Milliseconds(options_.min_watch_interval);
  if (request->interval_ms() <= 0) {
    return new RefusedWatch(
        grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                     absl::StrCat("interval_ms: must be positive, got ", request->interval_ms())));
  }
  if (request->interval_ms() < min_ms) {
    return new RefusedWatch(grpc::Status(
        grpc::StatusCode::INVALID_ARGUMENT,
        absl::StrCat("interval_ms: must be at least ", min_ms,
                     " (metrics.min_watch_interval_ms), got ", request->interval_ms())));
  }
  auto* watcher = new Watcher(this, absl::Milliseconds(request->interval_ms()), Tick());
  Register(watcher);
  return watcher;
}

grpc::ServerUnaryReactor* MemoryService::FlushPrefixCache(
    grpc::CallbackServerContext* context, const v1::FlushPrefixCacheRequest* /*request*/,
    v1::FlushPrefixCacheResponse* response) {
  if (absl::Status s = Admit(*context); !s.ok()) return FinishNow(context, s);
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  engine::Engine* engine = engine_;
  // The server waits for this reactor to finish before it shuts down, so the engine outlives
  // the thread's use of it.
  std::thread([engine, reactor, response] {
    absl::StatusOr<engine::PrefixFlushResult> released = engine->FlushPrefixCache();
    if (!released.ok()) {
      reactor->Finish(ToGrpcStatus(released.status()));
      return;
    }
    response->set_released_blocks(released->blocks);
    response->set_released_bytes(released->bytes);
    spdlog::info("prefix cache flushed: {} blocks ({} bytes) released", released->blocks,
                 released->bytes);
    reactor->Finish(grpc::Status::OK);
  }).detach();
  return reactor;
}

}  // namespace kvserve::server
