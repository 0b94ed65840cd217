// `kvserve tokenize --model PATH (--text T | --text-file F) [--add-special] [--parse-special]`:
// offline tokenization with the vocabulary of a GGUF file (any architecture, tensors or not).
// Prints the token ids on one line separated by spaces, and nothing else, to stdout.
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_join.h"
#include "engine/model/gguf_model.h"
#include "engine/tokenizer/tokenizer.h"
#include "tools/commands.h"
#include "tools/flags.h"

namespace kvserve::tools {

int RunTokenizeCommand(const std::vector<std::string>& args) {
  FlagSet flags("tokenize");
  flags.String("model", "", "GGUF file whose vocabulary to use (vocab-only files too)");
  flags.String("text", "", "text to tokenize");
  flags.String("text-file", "", "file whose bytes to tokenize (instead of --text)");
  flags.Bool("add-special", "add BOS/EOS as the vocabulary's add_bos_token/add_eos_token say");
  flags.Bool("parse-special", "control tokens written in the text become those tokens");
  flags.Required("model");
  if (absl::Status s = flags.Parse(args); !s.ok()) {
    std::fprintf(stderr, "kvserve tokenize: %s\n\n%s", std::string(s.message()).c_str(),
                 flags.Usage().c_str());
    return 2;
  }
  if (flags.help_requested()) {
    std::fputs(flags.Usage().c_str(), stdout);
    return 0;
  }
  if (flags.IsSet("text") == flags.IsSet("text-file")) {
    std::fprintf(stderr, "kvserve tokenize: give exactly one of --text and --text-file\n\n%s",
                 flags.Usage().c_str());
    return 2;
  }
  std::string text = flags.GetString("text");
  if (flags.IsSet("text-file")) {
    const std::string path = flags.GetString("text-file");
    std::ifstream in(path, std::ios::binary);
    if (!in) {
      std::fprintf(stderr, "kvserve tokenize: cannot read --text-file %s\n", path.c_str());
      return 1;
    }
    std::ostringstream buffer;
    buffer << in.rdbuf();
    text = buffer.str();
  }
  const std::string model = flags.GetString("model");
  auto vocab = engine::ReadGgufVocabularyFile(model);
  if (!vocab.ok()) {
    std::fprintf(stderr, "kvserve tokenize: %s\n", std::string(vocab.status().message()).c_str());
    return 1;
  }
  auto tokenizer = engine::Tokenizer::Create(*std::move(vocab));
  if (!tokenizer.ok()) {
    std::fprintf(stderr, "kvserve tokenize: %s: %s\n", model.c_str(),
                 std::string(tokenizer.status().message()).c_str());
    return 1;
  }
  engine::EncodeOptions options;
  options.add_special = flags.GetBool("add-special");
  options.parse_special = flags.GetBool("parse-special");
  const std::vector<int32_t> ids = tokenizer->Encode(text, options);
  const std::string line = absl::StrJoin(ids, " ") + "\n";
  std::fwrite(line.data(), 1, line.size(), stdout);
  return std::fflush(stdout) == 0 ? 0 : 1;
}

}  // namespace kvserve::tools
