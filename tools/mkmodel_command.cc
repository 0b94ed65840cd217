// `kvserve mkmodel`: writes a GGUF of architecture llama, qwen2, qwen3 or phi3 with seeded random
// weights of any supported weight type at a named shape (tiny, 110m, 1b-gqa) or custom dims, with
// a SentencePiece-style vocabulary of the requested size (engine/model/synthetic_model.h). For
// measuring speed and memory at realistic sizes, and for testing every architecture and type.
//
//   kvserve mkmodel --shape 110m --type q4_k_m --seed 1 --out /tmp/110m-q4km.gguf
//   kvserve mkmodel --shape 1b-gqa --arch qwen2 --type q8_0 --out /tmp/1b-qwen2.gguf
//   kvserve mkmodel --shape custom --dim 256 --layers 4 --heads 8 --kv-heads 2 --hidden-dim 688
//                   --vocab 4096 --context 2048 --out m.gguf
#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "engine/model/synthetic_model.h"
#include "tools/commands.h"
#include "tools/flags.h"

namespace kvserve::tools {
namespace {

int Usage(const FlagSet& flags, const std::string& message) {
  std::fprintf(stderr, "kvserve mkmodel: %s\n\n%s", message.c_str(), flags.Usage().c_str());
  return 2;
}

}  // namespace

int RunMkmodelCommand(const std::vector<std::string>& args) {
  FlagSet flags("mkmodel");
  flags.String("shape", "", "tiny, 110m, 1b-gqa or custom (custom needs every dimension flag)");
  flags.String("arch", "llama", "architecture: llama, qwen2, qwen3 or phi3");
  flags.String("type", "",
               "weight type of the matrices: f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q2_k, "
               "q3_k, q4_k, q5_k, q6_k, q4_k_m, q5_k_m (default f32)");
  flags.String("dtype", "", "the same as --type");
  flags.Int("head-dim", 0, "head size when it is not dim / heads (written as key_length)");
  flags.Int("vocab", 0, "vocabulary size; 0 = the shape's (512 for tiny, else 32000)");
  flags.Int("seed", 0, "random seed of the weights and the vocabulary");
  flags.String("out", "", "the GGUF file to write");
  flags.String("name", "", "general.name; default synthetic-<shape>");
  flags.Int("dim", 0, "embedding width (custom shape, or to override a named one)");
  flags.Int("hidden-dim", 0, "feed-forward width");
  flags.Int("layers", 0, "transformer layers");
  flags.Int("heads", 0, "query heads");
  flags.Int("kv-heads", 0, "key/value heads; 0 = heads (no grouped-query attention)");
  flags.Int("context", 0, "context length, tokens");
  flags.Required("shape");
  flags.Required("out");
  if (absl::Status s = flags.Parse(args); !s.ok()) return Usage(flags, std::string(s.message()));
  if (flags.help_requested()) {
    std::fputs(flags.Usage().c_str(), stdout);
    return 0;
  }

  const std::string shape = flags.GetString("shape");
  engine::SyntheticModelSpec spec;
  if (shape == "custom") {
    for (const char* f : {"dim", "hidden-dim", "layers", "heads", "vocab", "context"}) {
      if (!flags.IsSet(f)) return Usage(flags, absl::StrCat("--shape custom needs --", f));
    }
    spec.name = "synthetic-custom";
  } else {
    auto named = engine::NamedSyntheticShape(shape);
    if (!named.ok()) return Usage(flags, absl::StrCat("--shape: ", named.status().message()));
    spec = *named;
  }
  auto override_int = [&](const char* flag, int32_t* field) {
    if (flags.IsSet(flag)) *field = static_cast<int32_t>(flags.GetInt(flag));
  };
  override_int("dim", &spec.dim);
  override_int("hidden-dim", &spec.hidden_dim);
  override_int("layers", &spec.num_layers);
  override_int("heads", &spec.num_heads);
  override_int("context", &spec.context_length);
  override_int("head-dim", &spec.explicit_head_dim);
  spec.arch = flags.GetString("arch");
  if (flags.IsSet("vocab") && flags.GetInt("vocab") != 0) override_int("vocab", &spec.vocab_size);
  if (flags.IsSet("kv-heads") && flags.GetInt("kv-heads") != 0) {
    override_int("kv-heads", &spec.num_kv_heads);
  } else if (shape == "custom") {
    spec.num_kv_heads = spec.num_heads;
  }
  if (!flags.GetString("name").empty()) spec.name = flags.GetString("name");
  if (flags.IsSet("type") && flags.IsSet("dtype")) {
    return Usage(flags, "give --type or --dtype, not both");
  }
  std::string dtype = flags.IsSet("dtype") ? flags.GetString("dtype") : flags.GetString("type");
  if (dtype.empty()) dtype = "f32";
  if (absl::Status s = engine::ParseSyntheticWeightType(dtype, spec); !s.ok()) {
    return Usage(flags, absl::StrCat("--type: ", s.message()));
  }
  if (flags.GetInt("seed") < 0) return Usage(flags, "--seed must be >= 0");
  spec.seed = static_cast<uint64_t>(flags.GetInt("seed"));
  if (absl::Status s = engine::ValidateSyntheticSpec(spec); !s.ok()) {
    return Usage(flags, std::string(s.message()));
  }

  const std::string out = flags.GetString("out");
  const int64_t params = engine::SyntheticParameterCount(spec);
  if (absl::Status s = engine::WriteSyntheticModel(spec, out); !s.ok()) {
    std::fprintf(stderr, "kvserve mkmodel: %s\n", std::string(s.message()).c_str());
    return 1;
  }
  std::printf(
      "wrote %s: %s, %s, dim %d, hidden %d, %d layers, %d heads, %d KV heads, head_dim %d, vocab "
      "%d, context %d, %s weights, %.1fM parameters, seed %llu\n",
      out.c_str(), spec.name.c_str(), spec.arch.c_str(), spec.dim, spec.hidden_dim, spec.num_layers,
      spec.num_heads, spec.num_kv_heads, spec.head_dim(), spec.vocab_size, spec.context_length,
      dtype.c_str(), static_cast<double>(params) / 1e6, static_cast<unsigned long long>(spec.seed));
  return 0;
}

}  // namespace kvserve::tools
