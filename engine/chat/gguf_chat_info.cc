#include "engine/chat/gguf_chat_info.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/common/status_macros.h"
#include "engine/model/gguf.h"

namespace kvserve::engine::chat {
namespace {

absl::StatusOr<std::string> TokenText(const GgufFile& file, const char* id_key) {
  if (!file.HasKey(id_key)) return std::string();
  KVSERVE_ASSIGN_OR_RETURN(int64_t id, file.GetInteger(id_key));
  if (!file.HasKey("tokenizer.ggml.tokens")) return std::string();
  KVSERVE_ASSIGN_OR_RETURN(absl::Span<const std::string> tokens,
                           file.GetArrayOf<std::string>("tokenizer.ggml.tokens"));
  if (id < 0 || id >= static_cast<int64_t>(tokens.size())) {
    return absl::InvalidArgumentError(absl::StrCat(file.name(), ": ", id_key, " = ", id,
                                                   " is outside the vocabulary of ", tokens.size(),
                                                   " tokens"));
  }
  return tokens[static_cast<size_t>(id)];
}

}  // namespace

absl::StatusOr<GgufChatInfo> ReadGgufChatInfo(const std::string& path) {
  KVSERVE_ASSIGN_OR_RETURN(GgufFile file, GgufFile::Open(path));
  GgufChatInfo info;
  if (file.HasKey("tokenizer.chat_template")) {
    KVSERVE_ASSIGN_OR_RETURN(info.chat_template, file.GetString("tokenizer.chat_template"));
  }
  KVSERVE_ASSIGN_OR_RETURN(info.bos_token, TokenText(file, "tokenizer.ggml.bos_token_id"));
  KVSERVE_ASSIGN_OR_RETURN(info.eos_token, TokenText(file, "tokenizer.ggml.eos_token_id"));
  return info;
}

}  // namespace kvserve::engine::chat
