#include "engine/chat/chat_template.h"

#include "absl/status/status.h"
#include "engine/chat/jinja_eval.h"
#include "engine/chat/jinja_syntax.h"
#include "engine/common/status_macros.h"

namespace kvserve::engine::chat {

std::string RenderedPrompt::Text() const {
  std::string out;
  for (const PromptSegment& s : segments) out += s.text;
  return out;
}

ChatTemplate::ChatTemplate() = default;
ChatTemplate::ChatTemplate(ChatTemplate&&) noexcept = default;
ChatTemplate& ChatTemplate::operator=(ChatTemplate&&) noexcept = default;
ChatTemplate::~ChatTemplate() = default;

absl::StatusOr<ChatTemplate> ChatTemplate::Parse(std::string_view source) {
  KVSERVE_ASSIGN_OR_RETURN(StmtList program, ParseTemplate(source));
  KVSERVE_RETURN_IF_ERROR(CheckNames(program));
  ChatTemplate t;
  t.program_ = std::make_unique<StmtList>(std::move(program));
  return t;
}

Value MessagesToValue(const std::vector<ChatMessage>& messages) {
  ValueList list;
  for (const ChatMessage& m : messages) {
    Value d = Value::Dict();
    d.Set("role", Value::String(m.role));
    if (!m.content.is_undefined()) d.Set("content", m.content);
    for (const auto& [k, v] : m.fields) d.Set(k, v);
    list.push_back(std::move(d));
  }
  return Value::List(std::move(list));
}

absl::StatusOr<RenderedPrompt> ChatTemplate::Render(const std::vector<ChatMessage>& messages,
                                                    const RenderOptions& options) const {
  return RenderValue(MessagesToValue(messages), options);
}

absl::StatusOr<RenderedPrompt> ChatTemplate::RenderValue(const Value& messages,
                                                         const RenderOptions& options) const {
  if (!messages.is_list()) return absl::InvalidArgumentError("messages must be a list");
  std::vector<std::pair<std::string, Value>> variables = options.variables;
  variables.emplace_back("messages", messages);
  variables.emplace_back("add_generation_prompt", Value::Bool(options.add_generation_prompt));
  variables.emplace_back("bos_token", Value::TemplateString(options.bos_token));
  variables.emplace_back("eos_token", Value::TemplateString(options.eos_token));
  KVSERVE_ASSIGN_OR_RETURN(chat::Text text, RenderProgram(*program_, variables));
  RenderedPrompt out;
  if (!options.content_is_inert) {
    if (!text.empty()) out.segments.push_back({text.str(), true});
    return out;
  }
  size_t pos = 0;
  for (const auto& [len, tmpl] : text.Runs()) {
    out.segments.push_back({text.str().substr(pos, len), tmpl});
    pos += len;
  }
  return out;
}

}  // namespace kvserve::engine::chat
