// kvserve.v1.Memory on the gRPC callback API: GetStats, WatchStats and FlushPrefixCache.
//
// Every call is admitted like the Generation calls: UNAVAILABLE while the server drains, then the
// API key when keys are required (FlushPrefixCache is an admin call but takes the same key).
//
// WatchStats: one ticker thread wakes every quarter of `min_watch_interval`; when a watcher is
// due it takes one snapshot (Engine::Stats, converted once) and hands the same message to every
// due watcher. A watcher whose previous write has not completed (a slow reader) skips the tick.
// FlushPrefixCache waits for the engine thread, so it runs on a short-lived thread of its own
// rather than on the gRPC callback thread.
//
// Thread-safety: handlers run on gRPC threads concurrently; BeginDrain() is thread-safe. The
// engine and the authenticator must outlive the service; the service must outlive the server
// (its destructor stops the ticker, after the server has ended every watch).
#ifndef KVSERVE_SERVER_GRPC_MEMORY_SERVICE_H_
#define KVSERVE_SERVER_GRPC_MEMORY_SERVICE_H_

#include <atomic>
#include <memory>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "engine/runtime/engine.h"
#include "grpcpp/grpcpp.h"
#include "kvserve/v1/memory.grpc.pb.h"
#include "server/grpc/auth.h"
#include "server/metrics/request_outcomes.h"

namespace kvserve::server {

struct MemoryServiceOptions {
  absl::Duration min_watch_interval = absl::Milliseconds(100);  // smallest WatchStats interval
  const ApiKeyAuthenticator* authenticator = nullptr;           // null: no key required
  // The requests_* fields of every snapshot (how the generation calls ended); null: the
  // engine's own counts.
  const RequestOutcomes* outcomes = nullptr;
};

class MemoryService final : public v1::Memory::CallbackService {
 public:
  MemoryService(engine::Engine* engine, MemoryServiceOptions options);
  ~MemoryService() override;
  MemoryService(const MemoryService&) = delete;
  MemoryService& operator=(const MemoryService&) = delete;

  // From now on every call fails with UNAVAILABLE ("the server is shutting down").
  void BeginDrain() { draining_.store(true, std::memory_order_release); }

  grpc::ServerUnaryReactor* GetStats(grpc::CallbackServerContext* context,
                                     const v1::GetStatsRequest* request,
                                     v1::MemoryStats* response) override;
  grpc::ServerWriteReactor<v1::MemoryStats>* WatchStats(
      grpc::CallbackServerContext* context, const v1::WatchStatsRequest* request) override;
  grpc::ServerUnaryReactor* FlushPrefixCache(grpc::CallbackServerContext* context,
                                             const v1::FlushPrefixCacheRequest* request,
                                             v1::FlushPrefixCacheResponse* response) override;

 private:
  class Watcher;

  absl::Status Admit(const grpc::CallbackServerContext& context) const;
  void Register(Watcher* w);
  void Unregister(Watcher* w);
  void TickLoop();
  absl::Duration Tick() const;  // the ticker's period

  engine::Engine* const engine_;
  // One snapshot: the engine's, with the call outcomes when there are any.
  v1::MemoryStats Snapshot(absl::Time now) const;

  const MemoryServiceOptions options_;
  std::atomic<bool> draining_{false};

  absl::Mutex mu_;  // held while the ticker writes to watchers; taken before a watcher's own
  std::vector<Watcher*> watchers_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread ticker_;
};

}  // namespace kvserve::server

#endif  // KVSERVE_SERVER_GRPC_MEMORY_SERVICE_H_
