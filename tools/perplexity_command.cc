// `kvserve perplexity`: scores a text with the model through the paged KV cache.
#include <cstdio>
#include <fstream>
#include <sstream>

#include "absl/strings/str_format.h"
#include "engine/eval/perplexity.h"
#include "engine/runtime/local_model.h"
#include "kernels/kv_format.h"
#include "spdlog/spdlog.h"
#include "tools/commands.h"
#include "tools/flags.h"
#include "tools/model_flags.h"

namespace kvserve::tools {

int RunPerplexityCommand(const std::vector<std::string>& args) {
  FlagSet flags("perplexity");
  AddLocalModelFlags(flags);
  flags.String("text", "", "text file; documents separated by --separator");
  flags.String("separator", "<|endoftext|>", "document separator");
  flags.Int("context", 0, "tokens per document at most, BOS included; 0 = the model's context");
  flags.Int("max-documents", 0, "score only the first N documents; 0 = all");
  flags.Int("chunk-tokens", 0,
            "tokens fed per forward step; 0 = the KV block size (capped by token eviction)");
  flags.Bool("json", "print the result as JSON");
  flags.Bool("per-document", "with --json: add each document's mean NLL (document_mean_nll)");
  flags.String("token-eviction", "none",
               "token eviction policy bounding each document's KV: none, sliding_window, h2o, "
               "attention");
  flags.Int("token-budget", 0, "KV slots per document under token eviction (required with it)");
  flags.Int("token-sinks", 4, "sliding_window: first tokens always kept (attention sinks)");
  flags.Int("token-recent-window", -1, "h2o: newest tokens always kept; -1 = half the budget");
  flags.Int("token-slack", 0, "evict down to budget - slack tokens (fewer, larger evictions)");
  flags.String("token-granularity", "sequence",
               "h2o, attention: one decision per sequence, layer or head (layer and KV head)");
  flags.String("token-score-normalization", "none",
               "h2o, attention: none (accumulated attention) or age (divided by the queries that "
               "have seen the token)");
  flags.String("documents", "all",
               "all, even or odd: score only the documents with an even (0, 2, ...) or odd "
               "0-based index");
  flags.Required("text");
  if (absl::Status s = flags.Parse(args); !s.ok()) {
    std::fprintf(stderr, "kvserve perplexity: %s\n\n%s", std::string(s.message()).c_str(),
                 flags.Usage().c_str());
    return 2;
  }
  if (flags.help_requested()) {
    std::fputs(flags.Usage().c_str(), stdout);
    return 0;
  }
  auto model_options = LocalModelOptionsFromFlags(flags);
  if (!model_options.ok()) {
    std::fprintf(stderr, "kvserve perplexity: %s\n\n%s",
                 std::string(model_options.status().message()).c_str(), flags.Usage().c_str());
    return 2;
  }
  if (flags.GetString("token-eviction") != "none" && flags.GetInt("token-budget") < 1) {
    std::fprintf(stderr,
                 "kvserve perplexity: --token-budget must be >= 1 with --token-eviction %s\n",
                 flags.GetString("token-eviction").c_str());
    return 2;
  }
  std::ifstream in(flags.GetString("text"), std::ios::binary);
  if (!in) {
    std::fprintf(stderr, "kvserve perplexity: cannot read --text file '%s'\n",
                 flags.GetString("text").c_str());
    return 2;
  }
  std::stringstream buffer;
  buffer << in.rdbuf();
  const std::string text = buffer.str();

  const engine::LocalModelOptions& options = *model_options;
  auto local = engine::LocalModel::Open(options);
  if (!local.ok()) {
    spdlog::error("{}", std::string(local.status().message()));
    return 1;
  }
  engine::PerplexityOptions po;
  po.separator = flags.GetString("separator");
  po.max_tokens = static_cast<int32_t>(flags.GetInt("context"));
  po.max_documents = static_cast<int32_t>(flags.GetInt("max-documents"));
  po.chunk_tokens = static_cast<int32_t>(flags.GetInt("chunk-tokens"));
  po.token_eviction.policy = flags.GetString("token-eviction");
  po.token_eviction.budget_tokens = static_cast<int32_t>(flags.GetInt("token-budget"));
  po.token_eviction.options.sink_tokens = static_cast<int32_t>(flags.GetInt("token-sinks"));
  po.token_eviction.options.recent_window =
      static_cast<int32_t>(flags.GetInt("token-recent-window"));
  po.token_eviction.options.slack_tokens = static_cast<int32_t>(flags.GetInt("token-slack"));
  const std::string subset = flags.GetString("documents");
  if (subset == "even") {
    po.subset = engine::PerplexityOptions::Subset::kEven;
  } else if (subset == "odd") {
    po.subset = engine::PerplexityOptions::Subset::kOdd;
  } else if (subset != "all") {
    std::fprintf(stderr, "kvserve perplexity: --documents must be all, even or odd, got '%s'\n",
                 subset.c_str());
    return 2;
  }
  auto granularity = engine::ParseTokenEvictionGranularity(flags.GetString("token-granularity"));
  auto normalization =
      engine::ParseTokenScoreNormalization(flags.GetString("token-score-normalization"));
  if (!granularity.ok() || !normalization.ok()) {
    const absl::Status& bad = granularity.ok() ? normalization.status() : granularity.status();
    std::fprintf(stderr, "kvserve perplexity: %s\n", std::string(bad.message()).c_str());
    return 2;
  }
  po.token_eviction.options.granularity = *granularity;
  po.token_eviction.options.score_normalization = *normalization;
  auto result = engine::EvaluatePerplexity(**local, text, po);
  if (!result.ok()) {
    spdlog::error("{}", std::string(result.status().message()));
    return 1;
  }
  if (flags.GetBool("json")) {
    std::printf(
        "{\"perplexity\": %.6f, \"mean_nll\": %.8f, \"predicted_tokens\": %lld, "
        "\"documents\": %lld, \"kv_format\": \"%s\", \"token_eviction\": \"%s\", "
        "\"evicted_tokens\": %lld, \"peak_kv_slots\": %lld",
        result->perplexity(), result->mean_nll(), static_cast<long long>(result->predicted_tokens),
        static_cast<long long>(result->documents),
        std::string(kernels::KvFormatName(options.kv_format)).c_str(),
        po.token_eviction.policy.c_str(), static_cast<long long>(result->evicted_tokens),
        static_cast<long long>(result->peak_kv_slots));
    if (flags.GetBool("per-document")) {
      std::printf(", \"document_mean_nll\": [");
      for (size_t i = 0; i < result->document_nll.size(); ++i) {
        std::printf("%s%.8f", i ? ", " : "", result->document_nll[i]);
      }
      std::printf("]");
    }
    std::printf("}\n");
  } else {
    std::printf(
        "perplexity %.4f over %lld predicted tokens in %lld documents (mean NLL %.5f "
        "nats, KV %s)\n",
        result->perplexity(), static_cast<long long>(result->predicted_tokens),
        static_cast<long long>(result->documents), result->mean_nll(),
        std::string(kernels::KvFormatName(options.kv_format)).c_str());
    if (po.token_eviction.policy != "none") {
      std::printf("token eviction %s, budget %d: %lld tokens evicted, at most %lld KV slots\n",
                  po.token_eviction.policy.c_str(), po.token_eviction.budget_tokens,
                  static_cast<long long>(result->evicted_tokens),
                  static_cast<long long>(result->peak_kv_slots));
    }
  }
  return 0;
}

}  // namespace kvserve::tools
