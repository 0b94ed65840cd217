// Fuzzes the HTTP API's request parsing: arbitrary bytes as the JSON body of /v1/completions
// (first byte even) or /v1/chat/completions (odd), through ParseOpenAiRequest and then, for each
// prompt, BuildEngineRequest with stories260K's tokenizer, a plain chat template and the default
// limits; and the response builders on the parsed strings.
//
// Properties: no crash; a refused body is a 400 whose message is not empty; an accepted request
// has 1 to kMaxOpenAiChoices choices and each of its prompts either is refused with
// InvalidArgument (mapped onto a JSON field name) or meets every engine limit; the response
// objects built around any text are valid JSON that gives the text back (replacement characters
// aside, the engine emits only valid UTF-8).
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "absl/time/time.h"
#include "engine/chat/chat_template.h"
#include "engine/tokenizer/llama2c_tokenizer_file.h"
#include "engine/tokenizer/tokenizer.h"
#include "nlohmann/json.hpp"
#include "server/grpc/proto_codec.h"
#include "server/grpc/request_validation.h"
#include "server/http/openai_protocol.h"
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

const engine::chat::ChatTemplate& PlainTemplate() {
  static const engine::chat::ChatTemplate* t = [] {
    auto parsed = engine::chat::ChatTemplate::Parse(
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}");
    FUZZ_CHECK(parsed.ok());
    return new engine::chat::ChatTemplate(*std::move(parsed));
  }();
  return *t;
}

void CheckResponses(const server::OpenAiRequest& request) {
  using nlohmann::json;
  server::ResponseIdentity identity{"cmpl-x", 1, request.model};
  server::ChoiceOutput choice;
  // Any text the request carried (a stop string, a prompt) as if it were output.
  for (const auto& p : request.prompts) {
    for (const std::string& stop : p.stop()) choice.text += stop;
    choice.text += p.text();
  }
  if (server::FindInvalidUtf8(choice.text) != std::string_view::npos) {
    choice.text = server::ToValidUtf8(choice.text);
  }
  choice.finished = true;
  choice.finish_reason = engine::FinishReason::kStop;
  const std::string event = server::ChunkEvent(request.endpoint, identity, choice, -1);
  FUZZ_CHECK(event.rfind("data: ", 0) == 0 && event.size() >= 8);
  FUZZ_CHECK(event.compare(event.size() - 2, 2, "\n\n") == 0);
  const std::string body_text = event.substr(6, event.size() - 8);
  FUZZ_CHECK(body_text.find('\n') == std::string::npos, "an event spans lines");
  const json chunk = json::parse(body_text, nullptr, false);
  FUZZ_CHECK(!chunk.is_discarded());
  const json& c = chunk["choices"][0];
  const std::string got = request.endpoint == server::OpenAiEndpoint::kCompletions
                              ? c["text"].get<std::string>()
                              : c["delta"].value("content", std::string());
  FUZZ_CHECK(got == choice.text);
  const json whole = json::parse(
      server::CompletionBody(request.endpoint, identity, {choice}, {}, -1), nullptr, false);
  FUZZ_CHECK(!whole.is_discarded());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const server::OpenAiEndpoint endpoint =
      data[0] % 2 == 0 ? server::OpenAiEndpoint::kCompletions : server::OpenAiEndpoint::kChat;
  const std::string_view body(reinterpret_cast<const char*>(data) + 1, size - 1);
  server::OpenAiRequest request;
  if (std::optional<server::OpenAiError> e = server::ParseOpenAiRequest(body, endpoint, &request)) {
    FUZZ_CHECK(e->http_status == 400);
    FUZZ_CHECK(!e->message.empty());
    const nlohmann::json j = nlohmann::json::parse(server::ErrorBody(*e), nullptr, false);
    FUZZ_CHECK(!j.is_discarded() && j["error"]["message"].is_string());
    return 0;
  }
  const int64_t choices = static_cast<int64_t>(request.prompts.size()) * request.n;
  FUZZ_CHECK(choices >= 1 && choices <= server::kMaxOpenAiChoices, "%lld choices",
             static_cast<long long>(choices));
  const engine::Tokenizer& tokenizer = Stories260KTokenizer();
  const server::RequestLimits limits{/*max_prompt_tokens=*/511, /*max_tokens_limit=*/511,
                                     /*default_max_tokens=*/256, /*max_prompt_bytes=*/4096};
  const server::ChatSettings chat{&PlainTemplate(), "<s>", "</s>"};
  for (size_t i = 0; i < request.prompts.size(); ++i) {
    auto built = server::BuildEngineRequest(request.prompts[i], tokenizer, limits,
                                            /*random_seed=*/7, absl::InfiniteFuture(), &chat);
    if (!built.ok()) {
      FUZZ_CHECK(built.status().code() == absl::StatusCode::kInvalidArgument);
      const server::OpenAiError e = server::InvalidRequestError(
          built.status(), endpoint, static_cast<int>(i), static_cast<int>(request.prompts.size()));
      FUZZ_CHECK(!e.message.empty() && e.http_status == 400);
      continue;
    }
    FUZZ_CHECK(!built->prompt.empty());
    FUZZ_CHECK(static_cast<int32_t>(built->prompt.size()) <= limits.max_prompt_tokens);
    for (int32_t id : built->prompt) FUZZ_CHECK(tokenizer.IsValidId(id), "token id %d", id);
    FUZZ_CHECK(built->max_tokens >= 1 && built->max_tokens <= limits.max_tokens_limit);
    FUZZ_CHECK(built->sampling.Validate().ok());
  }
  CheckResponses(request);
  return 0;
}
