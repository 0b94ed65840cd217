// `kvserve render`: renders a conversation with a model's chat template and prints the prompt.
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "engine/chat/chat_template.h"
#include "engine/chat/gguf_chat_info.h"
#include "nlohmann/json.hpp"
#include "tools/commands.h"
#include "tools/flags.h"

namespace kvserve::tools {
namespace {

using Json = nlohmann::ordered_json;  // keeps the keys of each message in file order
using engine::chat::Value;

Value ValueFromJson(const Json& j) {
  switch (j.type()) {
    case Json::value_t::null:
      return Value::None();
    case Json::value_t::boolean:
      return Value::Bool(j.get<bool>());
    case Json::value_t::number_integer:
      return Value::Int(j.get<int64_t>());
    case Json::value_t::number_unsigned: {
      const uint64_t u = j.get<uint64_t>();
      if (u > static_cast<uint64_t>(INT64_MAX)) return Value::Float(static_cast<double>(u));
      return Value::Int(static_cast<int64_t>(u));
    }
    case Json::value_t::number_float:
      return Value::Float(j.get<double>());
    case Json::value_t::string:
      return Value::String(j.get<std::string>());
    case Json::value_t::array: {
      engine::chat::ValueList items;
      for (const Json& x : j) items.push_back(ValueFromJson(x));
      return Value::List(std::move(items));
    }
    case Json::value_t::object: {
      Value d = Value::Dict();
      for (auto it = j.begin(); it != j.end(); ++it) d.Set(it.key(), ValueFromJson(it.value()));
      return d;
    }
    default:
      return Value::None();
  }
}

absl::StatusOr<std::string> ReadFile(const std::string& path, const char* flag) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    return absl::InvalidArgumentError(absl::StrCat("cannot read ", flag, " file '", path, "'"));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The messages of FILE.json: a JSON array of message objects (or an object whose "messages" is
// one, as in an OpenAI-style request body).
absl::StatusOr<Value> ReadMessages(const std::string& path) {
  absl::StatusOr<std::string> text = ReadFile(path, "--messages");
  if (!text.ok()) return text.status();
  Json j = Json::parse(*text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--messages file '", path, "' is not valid JSON"));
  }
  if (j.is_object() && j.contains("messages")) j = j["messages"];
  if (!j.is_array()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--messages file '", path, "' must hold a JSON array of messages"));
  }
  for (size_t i = 0; i < j.size(); ++i) {
    if (!j[i].is_object() || !j[i].contains("role") || !j[i]["role"].is_string()) {
      return absl::InvalidArgumentError(absl::StrCat("--messages file '", path, "': message ", i,
                                                     " must be an object with a string \"role\""));
    }
  }
  return ValueFromJson(j);
}

}  // namespace

int RunRenderCommand(const std::vector<std::string>& args) {
  FlagSet flags("render");
  flags.String("model", "", "GGUF file: its tokenizer.chat_template and BOS/EOS token texts");
  flags.String("messages", "",
               "JSON file: [{\"role\": ..., \"content\": ...}, ...] (further keys such as "
               "tool_calls are passed to the template)");
  flags.String("chat-template", "", "Jinja file to use instead of the model's chat template");
  flags.Bool("no-generation-prompt", "render without add_generation_prompt");
  flags.Repeated("var", "NAME=JSON: a further template variable, e.g. enable_thinking=false");
  flags.Bool("segments",
             "print one JSON object per line, {\"text\", \"from_template\"}, instead of the text");
  flags.Required("model");
  flags.Required("messages");
  if (absl::Status s = flags.Parse(args); !s.ok()) {
    std::fprintf(stderr, "kvserve render: %s\n\n%s", std::string(s.message()).c_str(),
                 flags.Usage().c_str());
    return 2;
  }
  if (flags.help_requested()) {
    std::fputs(flags.Usage().c_str(), stdout);
    return 0;
  }
  absl::StatusOr<Value> messages = ReadMessages(flags.GetString("messages"));
  if (!messages.ok()) {
    std::fprintf(stderr, "kvserve render: %s\n", std::string(messages.status().message()).c_str());
    return 2;
  }
  engine::chat::RenderOptions options;
  options.add_generation_prompt = !flags.GetBool("no-generation-prompt");
  for (const std::string& var : flags.GetRepeated("var")) {
    const size_t eq = var.find('=');
    Json value = eq == std::string::npos
                     ? Json()
                     : Json::parse(var.substr(eq + 1), nullptr, /*allow_exceptions=*/false);
    if (eq == std::string::npos || eq == 0 || value.is_discarded()) {
      std::fprintf(stderr, "kvserve render: --var '%s' must be NAME=JSON\n", var.c_str());
      return 2;
    }
    options.variables.emplace_back(var.substr(0, eq), ValueFromJson(value));
  }

  absl::StatusOr<engine::chat::GgufChatInfo> info =
      engine::chat::ReadGgufChatInfo(flags.GetString("model"));
  if (!info.ok()) {
    std::fprintf(stderr, "kvserve render: %s\n", std::string(info.status().message()).c_str());
    return 1;
  }
  options.bos_token = info->bos_token;
  options.eos_token = info->eos_token;
  std::string source;
  std::string source_name;
  if (flags.IsSet("chat-template")) {
    absl::StatusOr<std::string> text =
        ReadFile(flags.GetString("chat-template"), "--chat-template");
    if (!text.ok()) {
      std::fprintf(stderr, "kvserve render: %s\n", std::string(text.status().message()).c_str());
      return 2;
    }
    source = std::move(*text);
    source_name = flags.GetString("chat-template");
  } else if (info->chat_template.has_value()) {
    source = *info->chat_template;
    source_name = flags.GetString("model") + " (tokenizer.chat_template)";
  } else {
    std::fprintf(stderr,
                 "kvserve render: '%s' has no tokenizer.chat_template; pass --chat-template FILE\n",
                 flags.GetString("model").c_str());
    return 1;
  }
  absl::StatusOr<engine::chat::ChatTemplate> chat_template =
      engine::chat::ChatTemplate::Parse(source);
  if (!chat_template.ok()) {
    std::fprintf(stderr, "kvserve render: %s: %s\n", source_name.c_str(),
                 std::string(chat_template.status().message()).c_str());
    return 1;
  }
  absl::StatusOr<engine::chat::RenderedPrompt> prompt =
      chat_template->RenderValue(*messages, options);
  if (!prompt.ok()) {
    std::fprintf(stderr, "kvserve render: %s: %s\n", source_name.c_str(),
                 std::string(prompt.status().message()).c_str());
    return 1;
  }
  if (flags.GetBool("segments")) {
    for (const engine::chat::PromptSegment& s : prompt->segments) {
      Json line = {{"text", s.text}, {"from_template", s.from_template}};
      std::fputs((line.dump(-1, ' ', false, Json::error_handler_t::replace) + "\n").c_str(),
                 stdout);
    }
  } else {
    const std::string text = prompt->Text();
    std::fwrite(text.data(), 1, text.size(), stdout);
  }
  return std::fflush(stdout) == 0 ? 0 : 1;
}

}  // namespace kvserve::tools
