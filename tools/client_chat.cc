// `kvserve client chat`: a conversation with a running server through Generation.Chat.
//
// Interactive (the default): each line read from standard input is a user message; the reply is
// streamed to standard output as it is generated, and the conversation (system prompt, user
// messages and replies) is sent again with every turn, so the server's prefix cache serves the
// part it has seen. "/reset" starts a new conversation, "/exit" or end of input ends the session.
// With --message TEXT: one turn (after the --system prompt, if any); the reply and a newline go to
// standard output, nothing else.
#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include "grpcpp/grpcpp.h"
#include "kvserve/v1/generation.grpc.pb.h"
#include "tools/client_util.h"
#include "tools/commands.h"
#include "tools/flags.h"
#include "tools/model_flags.h"

namespace kvserve::tools {
namespace {

void WriteOut(const std::string& s) {
  std::fwrite(s.data(), 1, s.size(), stdout);
  std::fflush(stdout);
}

// The request of one turn: the conversation so far and the sampling flags.
v1::GenerateRequest TurnRequest(const FlagSet& flags, const std::vector<v1::ChatMessage>& history) {
  v1::GenerateRequest request;
  v1::ChatPrompt* chat = request.mutable_chat();
  for (const v1::ChatMessage& m : history) *chat->add_messages() = m;
  if (flags.IsSet("max-tokens")) {
    request.set_max_tokens(static_cast<int32_t>(flags.GetInt("max-tokens")));
  }
  SetSamplingFromFlags(flags, request.mutable_sampling());
  request.set_cache_salt(flags.GetString("cache-salt"));
  return request;
}

// Runs one turn, streaming the reply to stdout; returns the reply's text.
absl::StatusOr<std::string> Turn(v1::Generation::Stub& stub, const FlagSet& flags,
                                 const std::vector<v1::ChatMessage>& history) {
  grpc::ClientContext context;
  if (absl::Status s = PrepareContext(flags, &context); !s.ok()) return s;
  const v1::GenerateRequest request = TurnRequest(flags, history);
  auto reader = stub.Chat(&context, request);
  v1::GenerateResponse message;
  std::string reply;
  while (reader->Read(&message)) {
    WriteOut(message.text());
    reply += message.text();
  }
  WriteOut("\n");
  const grpc::Status status = reader->Finish();
  if (!status.ok()) {
    return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
  }
  return reply;
}

}  // namespace

int RunClientChat(const std::vector<std::string>& args) {
  FlagSet flags("client chat");
  AddConnectionFlags(flags);
  flags.String("system", "", "system prompt that opens the conversation");
  flags.String("message", "", "one user message: print the reply and exit (no interaction)");
  flags.Int("max-tokens", 0,
            "tokens per reply at most; not given: the server's limits.default_max_tokens");
  AddSamplingFlags(flags, "random seed; -1 = one chosen by the server", /*top_p=*/1.0);
  flags.String("cache-salt", "", "requests with different salts never share cached KV blocks");
  if (absl::Status s = flags.Parse(args); !s.ok()) {
    std::fprintf(stderr, "kvserve client: %s\n\n%s", std::string(s.message()).c_str(),
                 flags.Usage().c_str());
    return 2;
  }
  if (flags.help_requested()) {
    std::fputs(flags.Usage().c_str(), stdout);
    return 0;
  }
  auto channel = MakeChannel(flags);
  if (!channel.ok()) return ReportError(channel.status());
  auto stub = v1::Generation::NewStub(*channel);

  std::vector<v1::ChatMessage> history;
  auto reset = [&] {
    history.clear();
    if (!flags.GetString("system").empty()) {
      v1::ChatMessage system;
      system.set_role("system");
      system.set_content(flags.GetString("system"));
      history.push_back(system);
    }
  };
  reset();
  auto say = [&](const std::string& text) -> int {
    v1::ChatMessage user;
    user.set_role("user");
    user.set_content(text);
    history.push_back(user);
    absl::StatusOr<std::string> reply = Turn(*stub, flags, history);
    if (!reply.ok()) {
      history.pop_back();  // the turn did not happen
      return ReportError(reply.status());
    }
    v1::ChatMessage assistant;
    assistant.set_role("assistant");
    assistant.set_content(*reply);
    history.push_back(assistant);
    return 0;
  };

  if (flags.IsSet("message")) return say(flags.GetString("message"));
  const bool tty = isatty(fileno(stdin)) != 0;
  std::string line;
  while (true) {
    if (tty) std::fputs("> ", stderr);
    if (!std::getline(std::cin, line)) break;
    if (line == "/exit") break;
    if (line == "/reset") {
      reset();
      continue;
    }
    if (line.empty()) continue;
    if (say(line) != 0 && !tty) return 1;  // a script stops at the first failed turn
  }
  return 0;
}

}  // namespace kvserve::tools
