// Fuzzes request validation: arbitrary bytes parsed as a kvserve.v1.GenerateRequest by the
// server's codec (ParseRequest, which also checks UTF-8 at every depth) and turned into an engine
// request by BuildEngineRequest, with stories260K's tokenizer and the default limits.
//
// Properties: no crash; an accepted request satisfies everything the engine requires of it (a
// non-empty prompt within the limit, token ids inside the vocabulary, max_tokens within the limit,
// valid sampling parameters, bounded stop strings, request id and cache salt).
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/time/time.h"
#include "engine/tokenizer/llama2c_tokenizer_file.h"
#include "engine/tokenizer/tokenizer.h"
#include "google/protobuf/stubs/logging.h"
#include "grpcpp/support/byte_buffer.h"
#include "grpcpp/support/slice.h"
#include "kvserve/v1/generation.pb.h"
#include "server/grpc/proto_codec.h"
#include "server/grpc/request_validation.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

using namespace kvserve;

const engine::Tokenizer& Stories260KTokenizer() {
  static const engine::Tokenizer* tokenizer = [] {
    auto vocab = engine::ReadLlama2cTokenizer(fuzz::ModelsDir() + "/tok512.bin", 512);
    FUZZ_CHECK(vocab.ok(), "%s", std::string(vocab.status().message()).c_str());
    return new engine::Tokenizer(*std::move(vocab));
  }();
  return *tokenizer;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // Protobuf logs every string field that is not UTF-8; the server sends those lines to debug.
  static const bool quiet = [] {
    google::protobuf::SetLogHandler(
        [](google::protobuf::LogLevel, const char*, int, const std::string&) {});
    return true;
  }();
  (void)quiet;
  const engine::Tokenizer& tokenizer = Stories260KTokenizer();
  // The limits of the default config with stories260K: a 512-token context.
  const server::RequestLimits limits{/*max_prompt_tokens=*/511, /*max_tokens_limit=*/511,
                                     /*default_max_tokens=*/256};
  grpc::Slice slice(data, size);
  grpc::ByteBuffer buffer(&slice, 1);
  v1::GenerateRequest message;
  if (absl::Status s = server::ParseRequest(buffer, &message); !s.ok()) {
    FUZZ_CHECK(s.code() == absl::StatusCode::kInvalidArgument);
    return 0;
  }
  auto request = server::BuildEngineRequest(message, tokenizer, limits, /*random_seed=*/7,
                                            absl::Now() + absl::Seconds(10));
  if (!request.ok()) {
    FUZZ_CHECK(request.status().code() == absl::StatusCode::kInvalidArgument);
    FUZZ_CHECK(!request.status().message().empty());
    return 0;
  }
  FUZZ_CHECK(!request->prompt.empty());
  FUZZ_CHECK(static_cast<int32_t>(request->prompt.size()) <= limits.max_prompt_tokens,
             "%zu prompt tokens", request->prompt.size());
  for (int32_t id : request->prompt) FUZZ_CHECK(tokenizer.IsValidId(id), "token id %d", id);
  FUZZ_CHECK(request->max_tokens >= 1 && request->max_tokens <= limits.max_tokens_limit,
             "max_tokens %d", request->max_tokens);
  FUZZ_CHECK(request->sampling.Validate().ok());
  FUZZ_CHECK(request->stop.size() <= server::kMaxStopStrings);
  for (const std::string& stop : request->stop) {
    FUZZ_CHECK(!stop.empty() && stop.size() <= server::kMaxStopBytes);
  }
  FUZZ_CHECK(request->id.size() <= server::kMaxRequestIdBytes);
  FUZZ_CHECK(request->cache_salt.size() <= server::kMaxCacheSaltBytes);
  FUZZ_CHECK(request->retention.size() <= server::kMaxRetentionHints);
  return 0;
}
