// The flags every offline command that runs a local model shares (model, tokenizer, KV cache
// format and policy, block size, budget, threads), declared and parsed in one place; and the
// sampling flags of the generating commands.
#ifndef KVSERVE_TOOLS_MODEL_FLAGS_H_
#define KVSERVE_TOOLS_MODEL_FLAGS_H_

#include "absl/status/statusor.h"
#include "engine/runtime/local_model.h"
#include "tools/flags.h"

namespace kvserve::tools {

// Declares --model (required), --tokenizer, --kv-format, --layer-formats, --recent-window,
// --sink-tokens, --window-format, --kv-budget-mb, --block-size, --threads, --device, --lowrank-rank
// and --lowrank-text.
void AddLocalModelFlags(FlagSet& flags);

// Reads them back after a successful Parse. InvalidArgument naming the flag for an unknown
// format or a malformed --layer-formats.
absl::StatusOr<engine::LocalModelOptions> LocalModelOptionsFromFlags(const FlagSet& flags);

// Declares the sampling flags that `kvserve generate` and `kvserve client generate` share:
// --temperature, --top-k, --top-p, --min-p, --repetition-penalty, --presence-penalty,
// --frequency-penalty and --seed (-1 when not given; `seed_help` says what the command does
// then). `top_p` is --top-p's default.
void AddSamplingFlags(FlagSet& flags, const char* seed_help, double top_p = 0.9);

}  // namespace kvserve::tools

#endif  // KVSERVE_TOOLS_MODEL_FLAGS_H_
