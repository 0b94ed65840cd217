// kvserve.v1.Generation on the gRPC callback API.
//
// Every call is admitted in the same order: UNAVAILABLE while the server drains, then the API key
// (see auth.h), then the request is parsed and validated (INVALID_ARGUMENT naming the field, see
// request_validation.h), then Generate and Complete are submitted to the engine, whose status maps
// one to one onto the gRPC code (RESOURCE_EXHAUSTED when the queue is full, UNAVAILABLE after
// shutdown began). The call's deadline becomes the engine request's deadline.
//
// Tokenize is bounded like a text prompt: text over limits.max_prompt_bytes is refused before it is
// tokenized (INVALID_ARGUMENT), and the response is sized before it is built, so that one that
// would exceed server.max_message_bytes is refused (RESOURCE_EXHAUSTED naming the key) instead
// of being built and then dropped by gRPC.
//
// Generate, Complete and Tokenize are registered raw (their requests carry strings; see
// proto_codec.h for why). No handler blocks: the generation calls are reactors driven by the
// engine (generation_calls.h); the other methods finish inline.
//
// Thread-safety: handlers run on gRPC threads concurrently; BeginDrain() is thread-safe. The
// engine and the authenticator must outlive the service; the service must outlive the server.
#ifndef KVSERVE_SERVER_GRPC_GENERATION_SERVICE_H_
#define KVSERVE_SERVER_GRPC_GENERATION_SERVICE_H_

#include <atomic>
#include <cstdint>

#include "absl/status/status.h"
#include "engine/runtime/engine.h"
#include "grpcpp/grpcpp.h"
#include "kvserve/v1/generation.grpc.pb.h"
#include "server/grpc/auth.h"
#include "server/grpc/generation_calls.h"
#include "server/grpc/request_validation.h"

namespace kvserve::server {

struct GenerationServiceOptions {
  int32_t default_max_tokens = 256;  // max_tokens of a request that leaves it unset
  int64_t kv_block_bytes = 0;        // for GetModelInfo
  int64_t max_prompt_bytes = 0;      // limits.max_prompt_bytes; 0 = derived from the model
  const ApiKeyAuthenticator* authenticator = nullptr;  // null: no key required
  ServerMetrics* metrics = nullptr;                    // request histograms; null: none
  RequestOutcomes* outcomes = nullptr;                 // how the calls ended; null: not counted
  // server.max_message_bytes: larger responses fail (Tokenize sizes its answer first); 0: no bound.
  int64_t max_message_bytes = 0;
  // Chat: the template conversations are rendered with (null: Chat is refused naming
  // model.chat_template) and the BOS/EOS texts it writes.
  std::shared_ptr<const engine::chat::ChatTemplate> chat_template;
  std::string bos_token;
  std::string eos_token;
};

using GenerationServiceBase = v1::Generation::WithRawCallbackMethod_Generate<
    v1::Generation::WithRawCallbackMethod_Complete<v1::Generation::WithRawCallbackMethod_Chat<
        v1::Generation::WithRawCallbackMethod_ChatComplete<
            v1::Generation::WithRawCallbackMethod_Tokenize<
                v1::Generation::WithCallbackMethod_Detokenize<
                    v1::Generation::WithCallbackMethod_GetModelInfo<v1::Generation::Service>>>>>>>;

class GenerationService final : public GenerationServiceBase {
 public:
  GenerationService(engine::Engine* engine, const GenerationServiceOptions& options);

  // From now on every call fails with UNAVAILABLE ("the server is shutting down").
  void BeginDrain() { draining_.store(true, std::memory_order_release); }
  // A fresh seed for a request that sets none (63 bits, never repeated by this server). The HTTP
  // API draws from it too. Thread-safe.
  uint64_t NextSeed();
  // The limits requests are checked against (derived values filled in).
  const RequestLimits& limits() const { return limits_; }
  // Waits until no Generate or Complete call is in flight (their last messages written), or the
  // timeout passes. True when none is.
  bool WaitForCalls(absl::Duration timeout) { return calls_.WaitIdle(timeout); }

  grpc::ServerWriteReactor<grpc::ByteBuffer>* Generate(grpc::CallbackServerContext* context,
                                                       const grpc::ByteBuffer* request) override;
  grpc::ServerUnaryReactor* Complete(grpc::CallbackServerContext* context,
                                     const grpc::ByteBuffer* request,
                                     grpc::ByteBuffer* response) override;
  // Generate and Complete for a `chat` prompt (any other prompt is INVALID_ARGUMENT).
  grpc::ServerWriteReactor<grpc::ByteBuffer>* Chat(grpc::CallbackServerContext* context,
                                                   const grpc::ByteBuffer* request) override;
  grpc::ServerUnaryReactor* ChatComplete(grpc::CallbackServerContext* context,
                                         const grpc::ByteBuffer* request,
                                         grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* Tokenize(grpc::CallbackServerContext* context,
                                     const grpc::ByteBuffer* request,
                                     grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* Detokenize(grpc::CallbackServerContext* context,
                                       const v1::DetokenizeRequest* request,
                                       v1::DetokenizeResponse* response) override;
  grpc::ServerUnaryReactor* GetModelInfo(grpc::CallbackServerContext* context,
                                         const v1::GetModelInfoRequest* request,
                                         v1::ModelInfo* response) override;

 private:
  // Draining and authentication.
  absl::Status Admit(const grpc::CallbackServerContext& context) const;
  // Admit, parse, validate and submit. Fills *prompt_tokens. With `chat_only`, a prompt other
  // than `chat` is refused.
  absl::StatusOr<std::shared_ptr<engine::RequestStream>> Submit(
      grpc::CallbackServerContext* context, const grpc::ByteBuffer& request, int32_t* prompt_tokens,
      bool chat_only = false);
  CallInfo Info(const char* method, int32_t prompt_tokens,
                const grpc::CallbackServerContext& context);

  engine::Engine* const engine_;
  const GenerationServiceOptions options_;
  const RequestLimits limits_;
  const ChatSettings chat_;
  std::atomic<bool> draining_{false};
  const uint64_t seed_base_;
  std::atomic<uint64_t> seed_counter_{0};
  CallTracker calls_;
  // Turns engine events into writes off the engine thread. Destroyed before calls_, after every
  // call has ended (the server waits for them before it destroys the service).
  StreamPump pump_;
};

}  // namespace kvserve::server

#endif  // KVSERVE_SERVER_GRPC_GENERATION_SERVICE_H_
