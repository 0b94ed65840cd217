// Workloads of the serving benchmark (`kvserve bench`, docs/bench.md): what each request sends
// and when it arrives. Engine-free and deterministic for a given seed.
//
//   random         prompts of random token ids, input and output lengths uniform in
//                  [len * (1 - range_ratio), len * (1 + range_ratio)]
//   shared-prefix  num_prefixes distinct random prefixes of prefix_len tokens; each request is one
//                  of them (round robin) followed by a random suffix of suffix_len tokens
//   long-context   prompts uniform in [context / 2, context - output_len - 1] tokens (or input_len
//                  when given): long sequences, few output tokens
//   trace          one request per line of a JSONL file (ParseTrace)
#ifndef KVSERVE_TOOLS_BENCH_WORKLOAD_H_
#define KVSERVE_TOOLS_BENCH_WORKLOAD_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace kvserve::tools {

// One request of the benchmark.
struct BenchRequest {
  std::vector<int32_t> prompt_ids;  // used when `prompt_text` is empty
  std::string prompt_text;          // a trace may give text; the server tokenizes it
  int32_t output_len = 0;           // max_tokens (EOS is ignored: exactly this many are generated)
  std::optional<double> arrival_s;  // a trace's timestamp, seconds from the start
};

// What the server says about its model (GetModelInfo); bounds the generated requests.
struct ModelLimits {
  int32_t vocab_size = 0;  // 0 = unknown (an OpenAI-compatible server may not say)
  int32_t bos_id = 1;
  int32_t eos_id = 2;
  int32_t context_length = 0;
  int32_t max_prompt_tokens = 0;
  int32_t max_tokens_limit = 0;
};

struct WorkloadOptions {
  std::string kind = "random";  // random, shared-prefix, long-context, trace
  int64_t num_requests = 0;
  int32_t input_len = 0;  // random (0 = 128) / long-context (0 = its default range)
  int32_t output_len = 128;
  double range_ratio = 0.0;  // in [0, 1)
  int32_t prefix_len = 256;  // shared-prefix
  int32_t suffix_len = 32;
  int32_t num_prefixes = 4;
  uint64_t seed = 0;
};

// Generates `options.num_requests` requests (not for "trace"). Prompts start with BOS; the other
// ids are uniform over the vocabulary without BOS and EOS. InvalidArgument naming the option when
// a request could not fit the model (prompt + output > context, prompt > max_prompt_tokens,
// output > max_tokens_limit), an option is out of range, or the vocabulary size (long-context:
// the context length) is unknown (0).
absl::StatusOr<std::vector<BenchRequest>> GenerateWorkload(const WorkloadOptions& options,
                                                           const ModelLimits& limits);

// Parses a JSONL trace: one JSON object per non-empty line, with
//   "output_len"        tokens to generate (required, >= 1)
//   one prompt of       "prompt" (text), "prompt_token_ids" (array of ids) or "input_len" (that
//                       many random ids from `seed`)
//   "timestamp"         optional arrival in seconds from the start (>= 0, non-decreasing); given
//                       on every line or on none
// Lines starting with '#' are comments. Errors name the file and the line ("trace.jsonl:3: ...").
// A vocabulary size of 0 in `limits` means unknown: token ids are then not bounded, and
// "input_len" lines are refused.
absl::StatusOr<std::vector<BenchRequest>> ParseTrace(std::string_view text,
                                                     std::string_view file_name,
                                                     const ModelLimits& limits, uint64_t seed);

// Arrival times (seconds from the start, ascending) of `n` requests: gaps drawn from a gamma
// distribution of shape `burstiness` and mean 1 / rate, so that the mean rate is `rate` requests/s;
// burstiness 1 gives a Poisson process, < 1 burstier, > 1 more regular. rate = infinity: every
// request at time 0.
std::vector<double> ArrivalTimes(int64_t n, double rate, double burstiness, uint64_t seed);

}  // namespace kvserve::tools

#endif  // KVSERVE_TOOLS_BENCH_WORKLOAD_H_
