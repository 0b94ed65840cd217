// The chat template that Generation.Chat renders conversations with, chosen at start-up:
// model.chat_template when set, else the model file's own tokenizer.chat_template (GGUF), else
// none (Chat is then refused, naming model.chat_template).
//
// Thread-safety: LoadChatTemplate is a plain function; the template it returns is immutable and
// may be rendered from any thread.
#ifndef KVSERVE_SERVER_GRPC_CHAT_SETUP_H_
#define KVSERVE_SERVER_GRPC_CHAT_SETUP_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "engine/chat/chat_template.h"

namespace kvserve::server {

struct ChatSetup {
  std::shared_ptr<const engine::chat::ChatTemplate> chat_template;  // null: none
  std::string source;  // where it came from ("model.chat_template FILE", "the model file")
};

// `template_path`: model.chat_template ("" = unset); a file that cannot be read or does not
// parse is an error naming the key and the file (line and column for a syntax error).
// `model_path`: the model file; a GGUF file's tokenizer.chat_template is used when the key is
// unset. A model template outside the renderer's subset is not an error here: it is logged, and
// Chat is refused with the reason.
absl::StatusOr<ChatSetup> LoadChatTemplate(const std::string& template_path,
                                           const std::string& model_path);

}  // namespace kvserve::server

#endif  // KVSERVE_SERVER_GRPC_CHAT_SETUP_H_
