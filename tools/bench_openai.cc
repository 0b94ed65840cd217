#include "tools/bench_openai.h"

#include <optional>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace kvserve::tools {
namespace {

// One streamed request: times its events into the record. Owned by the OpenAI client while the
// request runs.
class OpenAiCall : public OpenAiStreamHandler {
 public:
  OpenAiCall(RequestRecord* record, StreamTimer timer, std::function<void()> done,
             int32_t prompt_ids)
      : record_(record), timer_(timer), done_(std::move(done)), prompt_ids_(prompt_ids) {}

  void Start() { timer_.Start(Clock::now()); }

  void OnChunk(const OpenAiChunk& chunk, Clock::time_point received) override {
    // The tokens an event carries are not told; the usage gives the count at the end.
    if (!chunk.text.empty()) timer_.Output(received, 1);
    if (chunk.usage.has_value()) usage_ = chunk.usage;
  }

  void OnDone(const absl::Status& status, Clock::time_point finished) override {
    timer_.Finish(finished);
    if (usage_.has_value()) {
      record_->prompt_tokens = usage_->prompt_tokens;
      record_->cached_prompt_tokens = usage_->cached_prompt_tokens;
      record_->output_tokens = usage_->completion_tokens;
    } else {
      record_->usage_reported = false;
      record_->prompt_tokens = prompt_ids_;  // the events carrying text counted the output
    }
    record_->ok = status.ok();
    if (!status.ok()) {
      record_->error =
          absl::StrCat(absl::StatusCodeToString(status.code()), ": ", status.message());
    }
    std::function<void()> done = std::move(done_);
    done();
  }

 private:
  RequestRecord* record_;
  StreamTimer timer_;
  std::function<void()> done_;
  int32_t prompt_ids_;
  std::optional<OpenAiUsage> usage_;
};

class OpenAiSender : public BenchSender {
 public:
  OpenAiSender(OpenAiClient* client, OpenAiEndpoint endpoint, std::string model,
               BenchOptions options)
      : client_(client),
        endpoint_(endpoint),
        model_(std::move(model)),
        options_(std::move(options)) {}

  void Send(int64_t index, const BenchRequest& br, RequestRecord* record, StreamTimer timer,
            std::function<void()> done) override {
    OpenAiRequest request;
    request.endpoint = endpoint_;
    request.model = model_;
    int32_t prompt_ids = 0;
    if (br.prompt_text.empty() && endpoint_ == OpenAiEndpoint::kCompletions) {
      request.prompt_ids = br.prompt_ids;
      prompt_ids = static_cast<int32_t>(br.prompt_ids.size());
    } else {
      request.prompt_text = br.prompt_text;
    }
    request.max_tokens = br.output_len;
    request.temperature = options_.temperature;
    request.seed = options_.seed + static_cast<uint64_t>(index);
    request.ignore_eos = options_.ignore_eos;
    auto call = std::make_shared<OpenAiCall>(record, timer, std::move(done), prompt_ids);
    call->Start();
    if (endpoint_ == OpenAiEndpoint::kChat && br.prompt_text.empty()) {
      call->OnDone(absl::InvalidArgumentError("a chat request needs prompt text"),
                   OpenAiStreamHandler::Clock::now());
      return;
    }
    client_->Stream(request, std::move(call));
  }

 private:
  OpenAiClient* client_;
  OpenAiEndpoint endpoint_;
  std::string model_;
  BenchOptions options_;
};

}  // namespace

std::unique_ptr<BenchSender> MakeOpenAiSender(OpenAiClient* client, OpenAiEndpoint endpoint,
                                              std::string model, const BenchOptions& options) {
  return std::make_unique<OpenAiSender>(client, endpoint, std::move(model), options);
}

absl::StatusOr<OpenAiModelChoice> ChooseOpenAiModel(OpenAiClient& client,
                                                    const std::string& model) {
  absl::StatusOr<std::vector<OpenAiModelInfo>> models = client.ListModels();
  OpenAiModelChoice choice;
  choice.model = model;
  if (!models.ok()) {
    if (!model.empty()) return choice;  // named: the list is only for the limits
    return absl::Status(models.status().code(),
                        absl::StrCat(models.status().message(), " (name the model with --model)"));
  }
  if (models->empty() && model.empty()) {
    return absl::NotFoundError("GET /v1/models lists no model (name one with --model)");
  }
  const OpenAiModelInfo* info = models->empty() ? nullptr : &models->front();
  for (const OpenAiModelInfo& m : *models) {
    if (m.id == model) info = &m;
  }
  if (info != nullptr && (model.empty() || info->id == model)) {
    choice.model = info->id;
    choice.limits.vocab_size = info->vocab_size;
    choice.limits.context_length = info->context_length;
  }
  return choice;
}

absl::Status PromptIdsToText(std::vector<BenchRequest>& requests, const Detokenizer& detokenize) {
  for (size_t i = 0; i < requests.size(); ++i) {
    BenchRequest& r = requests[i];
    if (!r.prompt_text.empty() || r.prompt_ids.empty()) continue;
    absl::StatusOr<std::string> text = detokenize(r.prompt_ids);
    if (!text.ok()) {
      return absl::Status(
          text.status().code(),
          absl::StrCat("the text of request ", i, "'s prompt: ", text.status().message()));
    }
    if (text->empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("the text of request ", i, "'s prompt is empty"));
    }
    r.prompt_text = std::move(*text);
    r.prompt_ids.clear();
  }
  return absl::OkStatus();
}

}  // namespace kvserve::tools
