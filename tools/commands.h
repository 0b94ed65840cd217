// Entry points of the kvserve subcommands. Each takes the arguments after the command word and
// returns the process exit code (0 ok, 1 runtime failure, 2 bad usage).
#ifndef KVSERVE_TOOLS_COMMANDS_H_
#define KVSERVE_TOOLS_COMMANDS_H_

#include <string>
#include <vector>

namespace kvserve::tools {

int RunGenerateCommand(const std::vector<std::string>& args);
int RunPerplexityCommand(const std::vector<std::string>& args);
// `kvserve score --model M (--text T | --ids "1 2 3") [--json]`: teacher-forced NLL per token.
int RunScoreCommand(const std::vector<std::string>& args);
int RunProfileCommand(const std::vector<std::string>& args);
// `kvserve serve --config FILE [--set key=value ...] [--check]`: the gRPC server.
int RunServeCommand(const std::vector<std::string>& args);
// `kvserve client <generate|health|info|tokenize> ...`: calls a running server.
int RunClientCommand(const std::vector<std::string>& args);
// `kvserve client chat` (client_chat.cc).
int RunClientChat(const std::vector<std::string>& args);
// `kvserve mkmodel --shape tiny|110m|1b-gqa|custom ... --out FILE`: a synthetic GGUF model.
int RunMkmodelCommand(const std::vector<std::string>& args);
// `kvserve bench --addr HOST:PORT ...` or `kvserve bench --protocol openai --url URL ...`: the
// serving benchmark (a load generator over gRPC or an OpenAI-compatible HTTP API).
int RunBenchCommand(const std::vector<std::string>& args);
// `kvserve calibrate --model M --text T --budget-bits B [--out FILE]`: per-layer KV formats.
int RunCalibrateCommand(const std::vector<std::string>& args);
// `kvserve render --model M --messages FILE.json [--chat-template FILE]`: a chat prompt.
int RunRenderCommand(const std::vector<std::string>& args);
// `kvserve tokenize --model PATH (--text T | --text-file F) [--add-special] [--parse-special]`:
// the token ids of a text under a GGUF file's vocabulary, on one line.
int RunTokenizeCommand(const std::vector<std::string>& args);

}  // namespace kvserve::tools

#endif  // KVSERVE_TOOLS_COMMANDS_H_
