// `kvserve bench --protocol openai`: the benchmark's requests as streamed completions of an
// OpenAI-compatible HTTP API (tools/openai_client.h), so that one tool measures kvserve over gRPC,
// kvserve over HTTP and other servers of that API (vLLM, llama.cpp's server) side by side.
//
// Each request is POST /v1/completions with "prompt": [token ids] (or the trace's text), or
// POST /v1/chat/completions with the prompt text as one user message; max_tokens = its output
// length, the run's temperature, seed + index, ignore_eos, "stream": true and
// "stream_options": {"include_usage": true}. Timing is StreamTimer's (bench_runner.h): TTFT until
// the first event carrying text, ITL between such events, E2E until "[DONE]". Token counts are
// the usage of the last chunk; a server that sends none gets its output counted as the events
// carrying text (RequestRecord::usage_reported is false) and the prompt as the ids sent (0 for
// text).
#ifndef KVSERVE_TOOLS_BENCH_OPENAI_H_
#define KVSERVE_TOOLS_BENCH_OPENAI_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "tools/bench_runner.h"
#include "tools/bench_workload.h"
#include "tools/openai_client.h"

namespace kvserve::tools {

// Sends through `client` (not owned; it outlives the sender), naming `model` in each body. A chat
// request whose prompt has no text fails (PromptIdsToText first).
std::unique_ptr<BenchSender> MakeOpenAiSender(OpenAiClient* client, OpenAiEndpoint endpoint,
                                              std::string model, const BenchOptions& options);

// The model to name and what /v1/models says of it. With `model` given it is used as is, and a
// server that lists no models is fine; otherwise the first listed model is taken.
struct OpenAiModelChoice {
  std::string model;
  ModelLimits limits;  // vocab_size and context_length when listed, else 0 (unknown)
};
absl::StatusOr<OpenAiModelChoice> ChooseOpenAiModel(OpenAiClient& client, const std::string& model);

// Chat sends text: gives every request that has token ids and no text the text of its ids
// (`detokenize`), and drops the ids.
using Detokenizer = std::function<absl::StatusOr<std::string>(const std::vector<int32_t>&)>;
absl::Status PromptIdsToText(std::vector<BenchRequest>& requests, const Detokenizer& detokenize);

}  // namespace kvserve::tools

#endif  // KVSERVE_TOOLS_BENCH_OPENAI_H_
