// The pre-tokenizer of a byte-level BPE vocabulary: splits text into the pieces ("words") that BPE
// merges within, by the split rules that tokenizer.ggml.pre names.
//
// Each `pre` is a sequence of regular expressions applied one after the other: every piece of the
// previous stage is split by the next expression, and both the matches and the text between them
// become pieces (Hugging Face's Split pre-tokenizer with behaviour "isolated"). The expressions are
// those of the models' tokenizer.json files (as llama.cpp uses them):
//   gpt-2, mpt:                      GPT2
//   starcoder, smollm, refact:       \p{N}, then GPT2
//   falcon:                          [\p{P}\$\+<=>\^~\|`]+, then GPT2, then [0-9][0-9][0-9]
//   default:                         [\p{P}\$\+<=>\^~\|]+, then GPT2, then \p{N}+, then [0-9]{3}
//   llama-bpe:                       LLAMA3 (and whole pre-tokens found in the vocabulary are
//                                    taken before any merge: ignore_merges())
//   qwen2:                           LLAMA3 with \p{N} in place of \p{N}{1,3}
//   deepseek-coder, deepseek-llm:    their own sequences (see pre_tokenizer.cc)
// where GPT2 = 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)
// and LLAMA3 = (?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|
//              \p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
// Unicode categories come from ICU (all of Unicode); \s is the White_Space property. GPT2,
// LLAMA3 and deepseek-llm's \s+$ run as hand-written splitters (Engine::kFast, the default, several
// times faster, and linear where a backtracking engine is not); the
// other expressions, and all of them with Engine::kRegex, run on ICU's regex engine. Text that is
// not valid UTF-8 is accepted: each ill-formed byte counts as one character that is neither a
// letter, a number nor white space.
//
// Immutable after Create; Split is const and safe to call from many threads at once.
#ifndef KVSERVE_ENGINE_TOKENIZER_PRE_TOKENIZER_H_
#define KVSERVE_ENGINE_TOKENIZER_PRE_TOKENIZER_H_

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace kvserve::engine {

class PreTokenizer {
 public:
  enum class Engine {
    kFast,   // hand-written splitters where there is one, ICU regex for the rest
    kRegex,  // ICU regex for every stage (the reference the fast splitters are tested against)
  };

  // InvalidArgument naming `pre` and the known values when `pre` is not one of them.
  static absl::StatusOr<PreTokenizer> Create(std::string_view pre, Engine engine = Engine::kFast);
  static bool IsKnown(std::string_view pre);
  // The known `pre` values, comma-separated, for messages.
  static std::string KnownNames();

  // Appends the pieces of `text` to `*pieces`, in order: non-empty views into `text` whose
  // concatenation is `text`.
  void Split(std::string_view text, std::vector<std::string_view>* pieces) const;

  const std::string& name() const { return name_; }
  // True for llama-bpe: a pre-token that is a token of the vocabulary is taken whole.
  bool ignore_merges() const { return ignore_merges_; }

  struct Stage;

 private:
  PreTokenizer() = default;

  std::string name_;
  bool ignore_merges_ = false;
  std::vector<std::shared_ptr<const Stage>> stages_;
};

}  // namespace kvserve::engine

#endif  // KVSERVE_ENGINE_TOKENIZER_PRE_TOKENIZER_H_
