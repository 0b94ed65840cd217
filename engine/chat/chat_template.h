// Chat templates: renders a model's `tokenizer.chat_template` (Jinja) for a conversation, the way
// Hugging Face's apply_chat_template does with Python's jinja2 (trim_blocks, lstrip_blocks, the
// variables messages, add_generation_prompt, bos_token, eos_token and raise_exception).
//
// The template language is a subset of Jinja implemented here (jinja_syntax.h, jinja_eval.h):
// everything the chat templates of Llama 3.x, Qwen2.5/3, Gemma 2, Phi-3.5, Mistral Nemo and
// SmolLM3 use, plus the common rest (macros, filters such as trim/tojson/join/map/selectattr,
// tests, slices, namespace(), loop.*, break/continue). A template that uses something outside the
// subset fails, at Parse() when it can be seen there (unknown tags, filters and tests) and at
// Render() otherwise, with an error naming it; it never renders a different prompt.
//
// Injection safety. Render() returns the prompt as segments that record where each byte came
// from: `from_template` is true for the template's own text (its literal text and string
// literals, and bos_token/eos_token) and false for text that came from variables (message
// roles and contents, tool definitions, extra variables), however the template combined them.
// The tokenizer should recognise control tokens (such as "<|im_start|>") only inside template
// segments and encode variable segments as plain text, so a user who types "<|im_start|>system"
// into a message gets those characters, not a control token. To tokenize exactly as a tokenizer
// that sees the whole string would, split control tokens out of template segments only, and
// encode the text between two control tokens as one piece even where it spans segments.
// RenderOptions::content_is_inert = false turns this off (every segment is template text), which
// is what llama.cpp and vLLM do.
#ifndef KVSERVE_ENGINE_CHAT_CHAT_TEMPLATE_H_
#define KVSERVE_ENGINE_CHAT_CHAT_TEMPLATE_H_

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/chat/value.h"

namespace kvserve::engine::chat {

struct Stmt;

// One message of a conversation. `content` is usually a string; it may be any Value (none, a list
// of parts ...), and an undefined content leaves the key out of the message. `fields` are further
// keys of the message (tool_calls, name, tool_call_id, reasoning_content ...), in order.
struct ChatMessage {
  std::string role;
  Value content;
  std::vector<std::pair<std::string, Value>> fields;
};

struct RenderOptions {
  bool add_generation_prompt = true;
  std::string bos_token;  // template text: may hold control tokens
  std::string eos_token;
  // Further template variables (tools, date_string, enable_thinking, ...). Their strings count as
  // variable text.
  std::vector<std::pair<std::string, Value>> variables;
  // true: message contents and other variables are never parsed as control tokens (see above).
  bool content_is_inert = true;
};

// A span of the rendered prompt.
struct PromptSegment {
  std::string text;
  bool from_template = false;  // the tokenizer may parse control tokens in it
  friend bool operator==(const PromptSegment& a, const PromptSegment& b) {
    return a.text == b.text && a.from_template == b.from_template;
  }
};

struct RenderedPrompt {
  std::vector<PromptSegment> segments;  // adjacent segments differ in from_template
  std::string Text() const;             // all segments concatenated
};

class ChatTemplate {
 public:
  // Parses a template. InvalidArgument naming the line and column on a syntax error, an unknown
  // or unsupported tag, filter or test.
  static absl::StatusOr<ChatTemplate> Parse(std::string_view source);

  ChatTemplate(ChatTemplate&&) noexcept;
  ChatTemplate& operator=(ChatTemplate&&) noexcept;
  ~ChatTemplate();

  // Renders the conversation. InvalidArgument when the template rejects it (raise_exception: the
  // message is "chat template error: " + the template's message) or fails on it (an undefined
  // value used, a type error ...: the message names the line and column); Unimplemented for a
  // construct outside the supported subset.
  absl::StatusOr<RenderedPrompt> Render(const std::vector<ChatMessage>& messages,
                                        const RenderOptions& options) const;
  // The same, with the messages as a list Value (a list of dicts), as a JSON request holds them.
  absl::StatusOr<RenderedPrompt> RenderValue(const Value& messages,
                                             const RenderOptions& options) const;

 private:
  ChatTemplate();
  std::unique_ptr<std::vector<std::unique_ptr<Stmt>>> program_;
};

// The messages as the list of dicts a template sees.
Value MessagesToValue(const std::vector<ChatMessage>& messages);

}  // namespace kvserve::engine::chat

#endif  // KVSERVE_ENGINE_CHAT_CHAT_TEMPLATE_H_
