#include "server/grpc/generation_service.h"

#include <chrono>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "server/grpc/generation_calls.h"
#include "server/grpc/proto_codec.h"
#include "server/grpc/sanitize.h"
#include "spdlog/spdlog.h"

namespace kvserve::server {
namespace {

absl::Time DeadlineOf(const grpc::CallbackServerContext& context) {
  const auto deadline = context.deadline();
  // No deadline reads as a time point centuries away.
  if (deadline >= std::chrono::system_clock::now() + std::chrono::hours(24 * 365 * 100)) {
    return absl::InfiniteFuture();
  }
  return absl::FromChrono(deadline);
}

grpc::ServerUnaryReactor* FinishNow(grpc::CallbackServerContext* context,
                                    const absl::Status& status) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

uint64_t SplitMix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

uint64_t RandomBase() {
  std::random_device rd;
  return (static_cast<uint64_t>(rd()) << 32) ^ rd();
}

// Bytes of `v` as a protobuf varint.
size_t VarintBytes(uint64_t v) {
  size_t n = 1;
  while (v >= 0x80) {
    v >>= 7;
    ++n;
  }
  return n;
}

void LogRejected(const char* method, const absl::Status& status) {
  spdlog::info("{} rejected: {}: {}", method, absl::StatusCodeToString(status.code()),
               SanitizeForLog(std::string(status.message())));
}

}  // namespace

GenerationService::GenerationService(engine::Engine* engine,
                                     const GenerationServiceOptions& options)
    : engine_(engine),
      options_(options),
      limits_{engine->max_prompt_tokens(), engine->max_tokens_limit(), options.default_max_tokens,
              options.max_prompt_bytes > 0
                  ? options.max_prompt_bytes
                  : DefaultMaxPromptBytes(engine->max_prompt_tokens(), engine->tokenizer())},
      chat_{options_.chat_template.get(), options_.bos_token, options_.eos_token},
      seed_base_(RandomBase()) {
  spdlog::info("text prompts: at most {} bytes, {} tokens", limits_.max_prompt_bytes,
               limits_.max_prompt_tokens);
}

uint64_t GenerationService::NextSeed() {
  // Seeds are 63 bits so that they print the same in every client language.
  return SplitMix64(seed_base_ + seed_counter_.fetch_add(1, std::memory_order_relaxed)) >> 1;
}

absl::Status GenerationService::Admit(const grpc::CallbackServerContext& context) const {
  if (draining_.load(std::memory_order_acquire)) {
    return absl::UnavailableError("the server is shutting down");
  }
  if (options_.authenticator != nullptr) return options_.authenticator->Check(context);
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<engine::RequestStream>> GenerationService::Submit(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer& request, int32_t* prompt_tokens,
    bool chat_only) {
  if (absl::Status s = Admit(*context); !s.ok()) return s;
  v1::GenerateRequest message;
  if (absl::Status s = ParseRequest(request, &message); !s.ok()) return s;
  if (chat_only && message.prompt_case() != v1::GenerateRequest::kChat) {
    return absl::InvalidArgumentError(
        "chat: required (Chat and ChatComplete take a conversation; use Generate or Complete for "
        "text or token ids)");
  }
  auto engine_request = BuildEngineRequest(message, engine_->tokenizer(), limits_, NextSeed(),
                                           DeadlineOf(*context), &chat_);
  if (!engine_request.ok()) return engine_request.status();
  *prompt_tokens = static_cast<int32_t>(engine_request->prompt.size());
  if (spdlog::should_log(spdlog::level::debug)) {
    spdlog::debug("request '{}' from {}: {} prompt tokens; text: {}", message.request_id(),
                  context->peer(), *prompt_tokens, SanitizeForLog(message.text()));
  }
  return engine_->Submit(*std::move(engine_request));
}

CallInfo GenerationService::Info(const char* method, int32_t prompt_tokens,
                                 const grpc::CallbackServerContext& context) {
  CallInfo info{method, prompt_tokens, &calls_, options_.metrics, &pump_};
  info.outcomes = options_.outcomes;
  info.deadline = DeadlineOf(context);
  info.max_message_bytes = options_.max_message_bytes;
  return info;
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* GenerationService::Generate(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request) {
  int32_t prompt_tokens = 0;
  auto stream = Submit(context, *request, &prompt_tokens);
  if (!stream.ok()) {
    LogRejected("Generate", stream.status());
    return FailedGenerateCall(ToGrpcStatus(stream.status()));
  }
  return StartGenerateCall(*std::move(stream), Info("Generate", prompt_tokens, *context));
}

grpc::ServerUnaryReactor* GenerationService::Complete(grpc::CallbackServerContext* context,
                                                      const grpc::ByteBuffer* request,
                                                      grpc::ByteBuffer* response) {
  int32_t prompt_tokens = 0;
  auto stream = Submit(context, *request, &prompt_tokens);
  if (!stream.ok()) {
    LogRejected("Complete", stream.status());
    return FinishNow(context, stream.status());
  }
  return StartCompleteCall(*std::move(stream), response, Info("Complete", prompt_tokens, *context));
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* GenerationService::Chat(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request) {
  int32_t prompt_tokens = 0;
  auto stream = Submit(context, *request, &prompt_tokens, /*chat_only=*/true);
  if (!stream.ok()) {
    LogRejected("Chat", stream.status());
    return FailedGenerateCall(ToGrpcStatus(stream.status()));
  }
  return StartGenerateCall(*std::move(stream), Info("Chat", prompt_tokens, *context));
}

grpc::ServerUnaryReactor* GenerationService::ChatComplete(grpc::CallbackServerContext* context,
                                                          const grpc::ByteBuffer* request,
                                                          grpc::ByteBuffer* response) {
  int32_t prompt_tokens = 0;
  auto stream = Submit(context, *request, &prompt_tokens, /*chat_only=*/true);
  if (!stream.ok()) {
    LogRejected("ChatComplete", stream.status());
    return FinishNow(context, stream.status());
  }
  return StartCompleteCall(*std::move(stream), response,
                           Info("ChatComplete", prompt_tokens, *context));
}

grpc::ServerUnaryReactor* GenerationService::Tokenize(grpc::CallbackServerContext* context,
                                                      const grpc::ByteBuffer* request,
                                                      grpc::ByteBuffer* response) {
  if (absl::Status s = Admit(*context); !s.ok()) return FinishNow(context, s);
  v1::TokenizeRequest message;
  if (absl::Status s = ParseRequest(*request, &message); !s.ok()) return FinishNow(context, s);
  if (static_cast<int64_t>(message.text().size()) > limits_.max_prompt_bytes) {
    return FinishNow(
        context, absl::InvalidArgumentError(absl::StrCat(
                     "text: ", message.text().size(), " bytes; at most ", limits_.max_prompt_bytes,
                     " are accepted (limits.max_prompt_bytes)")));
  }
  const engine::Tokenizer& tokenizer = engine_->tokenizer();
  // BOS: add_bos when set, else add_special when set, else what the vocabulary asks for; EOS
  // only with add_special and a vocabulary that asks for it.
  const engine::Vocabulary& vocab = tokenizer.vocab();
  const bool bos = message.has_add_bos()       ? message.add_bos()
                   : message.has_add_special() ? message.add_special() && vocab.add_bos
                                               : vocab.add_bos;
  const bool eos = message.has_add_special() && message.add_special() && vocab.add_eos;
  engine::EncodeOptions encode;
  encode.parse_special = message.parse_special();
  std::vector<int32_t> ids;
  if (bos) ids.push_back(tokenizer.bos_id());
  const std::vector<int32_t> body = tokenizer.Encode(message.text(), encode);
  ids.insert(ids.end(), body.begin(), body.end());
  if (eos) ids.push_back(tokenizer.eos_id());
  // The response's size, computed before it is built: packed ids, then one string per piece.
  std::vector<std::string> pieces;
  pieces.reserve(ids.size());
  size_t ids_bytes = 0;
  size_t size = 0;
  for (int32_t id : ids) {
    ids_bytes += VarintBytes(static_cast<uint32_t>(id));
    pieces.push_back(ToValidUtf8(tokenizer.vocab().pieces[id]));
    size += 1 + VarintBytes(pieces.back().size()) + pieces.back().size();
  }
  if (!ids.empty()) size += 1 + VarintBytes(ids_bytes) + ids_bytes;
  if (options_.max_message_bytes > 0 && static_cast<int64_t>(size) > options_.max_message_bytes) {
    return FinishNow(context, absl::ResourceExhaustedError(absl::StrCat(
                                  "the response would be ", size, " bytes (", ids.size(),
                                  " tokens), more than server.max_message_bytes (",
                                  options_.max_message_bytes, "); tokenize a shorter text")));
  }
  v1::TokenizeResponse out;
  out.mutable_token_ids()->Reserve(static_cast<int>(ids.size()));
  for (size_t i = 0; i < ids.size(); ++i) {
    out.add_token_ids(ids[i]);
    out.add_pieces(std::move(pieces[i]));
  }
  if (!SerializeResponse(out, response)) {
    return FinishNow(context, absl::InternalError("cannot serialize the response"));
  }
  return FinishNow(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* GenerationService::Detokenize(grpc::CallbackServerContext* context,
                                                        const v1::DetokenizeRequest* request,
                                                        v1::DetokenizeResponse* response) {
  if (absl::Status s = Admit(*context); !s.ok()) return FinishNow(context, s);
  const engine::Tokenizer& tokenizer = engine_->tokenizer();
  for (int i = 0; i < request->token_ids_size(); ++i) {
    const int32_t id = request->token_ids(i);
    if (!tokenizer.IsValidId(id)) {
      return FinishNow(context,
                       absl::InvalidArgumentError(absl::StrCat("token_ids[", i, "]: token id ", id,
                                                               " is outside the vocabulary [0, ",
                                                               tokenizer.vocab_size(), ")")));
    }
  }
  engine::StreamingDetokenizer detokenizer(tokenizer);
  std::string text;
  for (int32_t id : request->token_ids()) text += detokenizer.Feed(id);
  text += detokenizer.Flush();
  response->set_text(std::move(text));
  return FinishNow(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* GenerationService::GetModelInfo(grpc::CallbackServerContext* context,
                                                          const v1::GetModelInfoRequest* request,
                                                          v1::ModelInfo* response) {
  if (absl::Status s = Admit(*context); !s.ok()) return FinishNow(context, s);
  const engine::ModelConfig& c = engine_->config();
  const engine::EngineOptions& o = engine_->options();
  response->set_architecture(c.architecture);
  response->set_name(ToValidUtf8(c.name));
  response->set_dim(c.dim);
  response->set_hidden_dim(c.hidden_dim);
  response->set_num_layers(c.num_layers);
  response->set_num_heads(c.num_heads);
  response->set_num_kv_heads(c.num_kv_heads);
  response->set_head_dim(c.head_dim);
  response->set_vocab_size(c.vocab_size);
  response->set_context_length(c.context_length);
  response->set_bos_id(engine_->tokenizer().bos_id());
  response->set_eos_id(engine_->tokenizer().eos_id());
  for (int f = 0; f < kernels::kNumKvFormats; ++f) {
    const v1::KvFormat format = ToProtoKvFormat(static_cast<kernels::KvFormat>(f));
    if (format != v1::KV_FORMAT_UNSPECIFIED) response->add_kv_formats_available(format);
  }
  response->set_kv_format(ToProtoKvFormat(o.model.kv_format));
  response->set_block_size(o.model.block_size);
  response->set_kv_budget_bytes(o.model.kv_budget_bytes);
  response->set_kv_block_bytes(options_.kv_block_bytes);
  response->set_max_prompt_tokens(limits_.max_prompt_tokens);
  response->set_max_tokens_limit(limits_.max_tokens_limit);
  response->set_default_max_tokens(std::min(limits_.default_max_tokens, limits_.max_tokens_limit));
  const engine::Tokenizer& tokenizer = engine_->tokenizer();
  response->set_tokenizer(tokenizer.kind() == engine::TokenizerKind::kByteLevelBpe ? "bpe" : "spm");
  response->set_tokenizer_pre(tokenizer.pre());
  response->set_has_chat_template(chat_.chat_template != nullptr);
  for (int32_t id : tokenizer.end_of_generation_ids()) response->add_end_of_generation_ids(id);
  return FinishNow(context, absl::OkStatus());
}

}  // namespace kvserve::server
