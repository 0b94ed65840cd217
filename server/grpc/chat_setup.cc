#include "server/grpc/chat_setup.h"

#include <fstream>
#include <sstream>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "engine/chat/gguf_chat_info.h"
#include "spdlog/spdlog.h"

namespace kvserve::server {

absl::StatusOr<ChatSetup> LoadChatTemplate(const std::string& template_path,
                                           const std::string& model_path) {
  ChatSetup setup;
  if (!template_path.empty()) {
    std::ifstream in(template_path, std::ios::binary);
    std::stringstream text;
    text << in.rdbuf();
    if (!in.good() && !in.eof()) {
      return absl::InvalidArgumentError(
          absl::StrCat("model.chat_template: cannot read ", template_path));
    }
    absl::StatusOr<engine::chat::ChatTemplate> parsed =
        engine::chat::ChatTemplate::Parse(text.str());
    if (!parsed.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("model.chat_template: ", template_path, ": ", parsed.status().message()));
    }
    setup.chat_template = std::make_shared<const engine::chat::ChatTemplate>(*std::move(parsed));
    setup.source = absl::StrCat("model.chat_template ", template_path);
    return setup;
  }
  if (!absl::EndsWith(model_path, ".gguf")) return setup;  // llama2.c checkpoints have none
  absl::StatusOr<engine::chat::GgufChatInfo> info = engine::chat::ReadGgufChatInfo(model_path);
  if (!info.ok()) {
    spdlog::warn("chat: cannot read the model's chat template: {}",
                 std::string(info.status().message()));
    return setup;
  }
  if (!info->chat_template.has_value()) return setup;
  absl::StatusOr<engine::chat::ChatTemplate> parsed =
      engine::chat::ChatTemplate::Parse(*info->chat_template);
  if (!parsed.ok()) {
    spdlog::warn(
        "chat: the model's chat template cannot be rendered ({}); Chat is refused "
        "until model.chat_template names one that can",
        std::string(parsed.status().message()));
    return setup;
  }
  setup.chat_template = std::make_shared<const engine::chat::ChatTemplate>(*std::move(parsed));
  setup.source = "the model file (tokenizer.chat_template)";
  return setup;
}

}  // namespace kvserve::server
