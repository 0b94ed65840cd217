// What a chat template needs from a GGUF file: the template text (`tokenizer.chat_template`) and
// the text of the BOS and EOS tokens. Reads only the header and metadata (the file is mapped, no
// tensor is read), so vocabulary-only files work.
#ifndef KVSERVE_ENGINE_CHAT_GGUF_CHAT_INFO_H_
#define KVSERVE_ENGINE_CHAT_GGUF_CHAT_INFO_H_

#include <optional>
#include <string>

#include "absl/status/statusor.h"

namespace kvserve::engine::chat {

struct GgufChatInfo {
  std::optional<std::string> chat_template;  // absent when the file has none
  std::string bos_token;  // "" when the file names no BOS token (or no vocabulary)
  std::string eos_token;
};

// Errors: those of GgufFile::Open; InvalidArgument when a key has the wrong type or a token id is
// outside the vocabulary (the message names the file and the key).
absl::StatusOr<GgufChatInfo> ReadGgufChatInfo(const std::string& path);

}  // namespace kvserve::engine::chat

#endif  // KVSERVE_ENGINE_CHAT_GGUF_CHAT_INFO_H_
