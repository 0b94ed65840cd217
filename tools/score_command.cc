// `kvserve score`: teacher-forced scoring of one token sequence with a local model.
//
//   kvserve score --model PATH (--text T | --ids "1 2 3 ...") [--json] [--threads N]
//
// nll[i] is -log p(token i+1 | tokens 0..i) and top1[i] the argmax after token i. --ids are
// scored as given (no BOS added) and work with any model, including one whose tokenizer this
// build cannot run; --text is tokenized as the model does (BOS added when the model adds one).
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "engine/model/model.h"
#include "engine/model/sequence_scoring.h"
#include "engine/tokenizer/tokenizer.h"
#include "kernels/cpu/thread_pool.h"
#include "spdlog/spdlog.h"
#include "tools/commands.h"
#include "tools/flags.h"

namespace kvserve::tools {

int RunScoreCommand(const std::vector<std::string>& args) {
  FlagSet flags("score");
  flags.String("model", "", "model file (GGUF or llama2.c)");
  flags.String("text", "", "text to score, tokenized by the model's tokenizer");
  flags.String("ids", "", "token ids to score, separated by spaces or commas (no BOS added)");
  flags.Int("threads", 1, "threads for the forward pass");
  flags.Bool("json", "print {\"tokens\", \"nll\", \"top1\", \"mean_nll\"} as JSON");
  flags.Required("model");
  auto usage_error = [&](const std::string& message) {
    std::fprintf(stderr, "kvserve score: %s\n\n%s", message.c_str(), flags.Usage().c_str());
    return 2;
  };
  if (absl::Status s = flags.Parse(args); !s.ok()) return usage_error(std::string(s.message()));
  if (flags.help_requested()) {
    std::fputs(flags.Usage().c_str(), stdout);
    return 0;
  }
  const std::string text = flags.GetString("text");
  const std::string ids_flag = flags.GetString("ids");
  if (text.empty() == ids_flag.empty()) return usage_error("give exactly one of --text and --ids");
  if (flags.GetInt("threads") < 1) return usage_error("--threads must be >= 1");
  std::vector<int32_t> ids;
  for (absl::string_view part :
       absl::StrSplit(ids_flag, absl::ByAnyChar(" ,\t\n"), absl::SkipEmpty())) {
    int32_t id;
    if (!absl::SimpleAtoi(part, &id)) {
      return usage_error("--ids: '" + std::string(part) + "' is not a token id");
    }
    ids.push_back(id);
  }
  // Ids need no tokenizer: a model whose tokenizer is not supported still loads for them.
  auto model =
      engine::LoadModel(flags.GetString("model"), "", /*ids_only_vocabulary=*/text.empty());
  if (!model.ok()) {
    spdlog::error("{}", std::string(model.status().message()));
    return 1;
  }
  if (!text.empty()) {
    auto tokenizer = engine::Tokenizer::Create((*model)->vocab());
    if (!tokenizer.ok()) {
      spdlog::error("{}", std::string(tokenizer.status().message()));
      return 1;
    }
    ids = tokenizer->Encode(text, (*model)->vocab().add_bos);
  }
  if (ids.size() < 2) return usage_error("need at least 2 tokens to score");
  kernels::ThreadPool pool(static_cast<int>(flags.GetInt("threads")));
  auto scores = engine::ScoreSequence(**model, ids, &pool);
  if (!scores.ok()) {
    spdlog::error("{}", std::string(scores.status().message()));
    return 1;
  }
  if (flags.GetBool("json")) {
    std::printf("{\"tokens\": [");
    for (size_t i = 0; i < ids.size(); ++i) std::printf("%s%d", i ? ", " : "", ids[i]);
    std::printf("], \"nll\": [");
    for (size_t i = 0; i < scores->nll.size(); ++i)
      std::printf("%s%.6f", i ? ", " : "", scores->nll[i]);
    std::printf("], \"top1\": [");
    for (size_t i = 0; i < scores->top1.size(); ++i)
      std::printf("%s%d", i ? ", " : "", scores->top1[i]);
    std::printf("], \"mean_nll\": %.8f}\n", scores->mean_nll);
  } else {
    std::printf("%zu tokens, %zu predicted: mean NLL %.5f nats (perplexity %.4f)\n", ids.size(),
                scores->nll.size(), scores->mean_nll, std::exp(scores->mean_nll));
    for (size_t i = 0; i < scores->nll.size(); ++i) {
      std::printf("%5zu  next %7d  nll %9.5f  top1 %7d\n", i, ids[i + 1], scores->nll[i],
                  scores->top1[i]);
    }
  }
  return 0;
}

}  // namespace kvserve::tools
