// `kvserve client`: calls a running kvserve server.
//
//   generate   prints the prompt followed by the completion and a newline, like `kvserve
//              generate` (--stream prints each piece as it arrives); sends the prefix-affinity
//              routing header x-kvserve-prefix-hash (server/routing/prefix_hash.h)
//   chat       a conversation through Generation.Chat (client_chat.cc)
//   health     prints the grpc.health.v1 status; exit 0 only when SERVING
//   info       prints the model and KV-cache description
//   tokenize   prints the token ids of --text
//   stats      prints the KV memory stats as a table (stats_command.h)
//
// A failed call prints "kvserve client: CODE: message" to stderr and exits 1; bad flags exit 2.
#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "grpcpp/grpcpp.h"
#include "kvserve/v1/generation.grpc.pb.h"
#include "server/routing/prefix_hash.h"
#include "spdlog/spdlog.h"
#include "tools/client_util.h"
#include "tools/commands.h"
#include "tools/flags.h"
#include "tools/model_flags.h"
#include "tools/stats_command.h"

namespace kvserve::tools {

using server::kDefaultPrefixHashBytes;
using server::kPrefixHashHeader;
using server::PrefixHashHeaderValue;

namespace {

constexpr char kClientUsage[] =
    "usage: kvserve client <command> [flags]\n"
    "\n"
    "commands:\n"
    "  generate   generate text on a server (--prompt TEXT [--stream])\n"
    "  chat       chat with the served model (interactive, or --message TEXT for one turn)\n"
    "  health     print the server's health: SERVING or NOT_SERVING\n"
    "  info       print the served model and its KV cache\n"
    "  tokenize   print the token ids of --text\n"
    "  stats      print the KV memory stats (--watch [--interval-ms N] to stream them)\n"
    "\n"
    "Run 'kvserve client <command> --help' for the flags of a command.\n";

void Write(const std::string& s) {
  std::fwrite(s.data(), 1, s.size(), stdout);
  std::fflush(stdout);
}

// Parses flags; returns -1 to go on, or the exit code.
int ParseFlags(FlagSet& flags, const std::vector<std::string>& args) {
  if (absl::Status s = flags.Parse(args); !s.ok()) {
    std::fprintf(stderr, "kvserve client: %s\n\n%s", std::string(s.message()).c_str(),
                 flags.Usage().c_str());
    return 2;
  }
  if (flags.help_requested()) {
    std::fputs(flags.Usage().c_str(), stdout);
    return 0;
  }
  return -1;
}

int Generate(const std::vector<std::string>& args) {
  FlagSet flags("client generate");
  AddConnectionFlags(flags);
  flags.String("prompt", "", "prompt text");
  // The API's defaults (generation.proto): a flag not given leaves its field unset, so the
  // server's defaults apply, and the defaults shown are those.
  flags.Int("max-tokens", 0,
            "tokens to generate at most; not given: the server's limits.default_max_tokens");
  AddSamplingFlags(flags, "random seed; -1 = one chosen by the server", /*top_p=*/1.0);
  flags.Repeated("stop", "stop string (repeatable)");
  flags.String("request-id", "", "request id echoed in the server's log");
  flags.Bool("stream", "print the completion as it is generated");
  flags.String("cache-salt", "", "requests with different salts never share cached KV blocks");
  flags.Int("prefix-hash-bytes", static_cast<int64_t>(kDefaultPrefixHashBytes),
            "prompt bytes hashed into the x-kvserve-prefix-hash routing header; 0 = no header");
  flags.Required("prompt");
  if (int code = ParseFlags(flags, args); code >= 0) return code;

  const std::string prompt = flags.GetString("prompt");
  v1::GenerateRequest request;
  request.set_text(prompt);
  request.set_request_id(flags.GetString("request-id"));
  if (flags.IsSet("max-tokens")) {
    request.set_max_tokens(static_cast<int32_t>(flags.GetInt("max-tokens")));
  }
  SetSamplingFromFlags(flags, request.mutable_sampling());
  for (const std::string& stop : flags.GetRepeated("stop")) request.add_stop(stop);
  request.set_cache_salt(flags.GetString("cache-salt"));
  const int64_t prefix_hash_bytes = flags.GetInt("prefix-hash-bytes");
  if (prefix_hash_bytes < 0) {
    return ReportError(absl::InvalidArgumentError("--prefix-hash-bytes: must be >= 0"));
  }

  auto channel = MakeChannel(flags);
  if (!channel.ok()) return ReportError(channel.status());
  auto stub = v1::Generation::NewStub(*channel);
  grpc::ClientContext context;
  if (absl::Status s = PrepareContext(flags, &context); !s.ok()) return ReportError(s);
  // Prefix-affinity routing key for a consistent-hash load balancer (docs/scaling.md).
  if (prefix_hash_bytes > 0) {
    context.AddMetadata(kPrefixHashHeader,
                        PrefixHashHeaderValue(prompt, request.cache_salt(),
                                              static_cast<size_t>(prefix_hash_bytes)));
  }

  if (!flags.GetBool("stream")) {
    v1::CompleteResponse response;
    grpc::Status status = stub->Complete(&context, request, &response);
    if (!status.ok()) return ReportError(status);
    Write(prompt + response.text() + "\n");
    LogSummary(response.request_id(), response.usage(), response.timings(),
               response.finish_reason());
    return 0;
  }
  Write(prompt);
  auto reader = stub->Generate(&context, request);
  v1::GenerateResponse message;
  v1::GenerateResponse last;
  while (reader->Read(&message)) {
    Write(message.text());
    if (message.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) last = message;
  }
  Write("\n");
  grpc::Status status = reader->Finish();
  if (!status.ok()) return ReportError(status);
  LogSummary(last.request_id(), last.usage(), last.timings(), last.finish_reason());
  return 0;
}

int Health(const std::vector<std::string>& args) {
  FlagSet flags("client health");
  AddConnectionFlags(flags);
  flags.String("service", "", "service to ask about; empty = the whole server");
  if (int code = ParseFlags(flags, args); code >= 0) return code;
  auto channel = MakeChannel(flags);
  if (!channel.ok()) return ReportError(channel.status());
  grpc::ClientContext context;
  if (absl::Status s = PrepareContext(flags, &context); !s.ok()) return ReportError(s);
  auto status = CheckHealth(*channel, &context, flags.GetString("service"));
  if (!status.ok()) return ReportError(status.status());
  Write(*status + "\n");
  return *status == "SERVING" ? 0 : 1;
}

int Info(const std::vector<std::string>& args) {
  FlagSet flags("client info");
  AddConnectionFlags(flags);
  if (int code = ParseFlags(flags, args); code >= 0) return code;
  auto channel = MakeChannel(flags);
  if (!channel.ok()) return ReportError(channel.status());
  grpc::ClientContext context;
  if (absl::Status s = PrepareContext(flags, &context); !s.ok()) return ReportError(s);
  v1::ModelInfo info;
  grpc::Status status =
      v1::Generation::NewStub(*channel)->GetModelInfo(&context, v1::GetModelInfoRequest(), &info);
  if (!status.ok()) return ReportError(status);
  Write(FormatModelInfo(info));
  return 0;
}

int Tokenize(const std::vector<std::string>& args) {
  FlagSet flags("client tokenize");
  AddConnectionFlags(flags);
  flags.String("text", "", "text to tokenize");
  flags.Bool("no-bos", "do not put BOS first");
  flags.Bool("pieces", "print each token's piece next to its id");
  flags.Required("text");
  if (int code = ParseFlags(flags, args); code >= 0) return code;
  auto channel = MakeChannel(flags);
  if (!channel.ok()) return ReportError(channel.status());
  grpc::ClientContext context;
  if (absl::Status s = PrepareContext(flags, &context); !s.ok()) return ReportError(s);
  v1::TokenizeRequest request;
  request.set_text(flags.GetString("text"));
  if (flags.GetBool("no-bos")) request.set_add_bos(false);
  v1::TokenizeResponse response;
  grpc::Status status = v1::Generation::NewStub(*channel)->Tokenize(&context, request, &response);
  if (!status.ok()) return ReportError(status);
  if (flags.GetBool("pieces")) {
    std::string out;
    for (int i = 0; i < response.token_ids_size(); ++i) {
      absl::StrAppend(&out, response.token_ids(i), "\t'", response.pieces(i), "'\n");
    }
    Write(out);
  } else {
    Write(absl::StrJoin(response.token_ids(), " ") + "\n");
  }
  return 0;
}

}  // namespace

int RunClientCommand(const std::vector<std::string>& args) {
  if (args.empty()) {
    std::fputs(kClientUsage, stderr);
    return 2;
  }
  const std::string& command = args[0];
  const std::vector<std::string> rest(args.begin() + 1, args.end());
  if (command == "generate") return Generate(rest);
  if (command == "chat") return RunClientChat(rest);
  if (command == "health") return Health(rest);
  if (command == "info") return Info(rest);
  if (command == "tokenize") return Tokenize(rest);
  if (command == "stats") return RunClientStats(rest);
  if (command == "--help" || command == "-h" || command == "help") {
    std::fputs(kClientUsage, stdout);
    return 0;
  }
  std::fprintf(stderr, "kvserve client: unknown command '%s'\n\n%s", command.c_str(), kClientUsage);
  return 2;
}

}  // namespace kvserve::tools
