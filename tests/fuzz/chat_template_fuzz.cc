// Fuzzes the chat template renderer: a chat template comes from the model file, so it is input
// like any other. The input is a template, then optionally "\x00" and message contents separated
// by "\x00" (roles alternate user/assistant).
//
// Properties (chat_template.h): Parse and Render never crash, whatever they are given, and fail
// only with a status; a rendered prompt's Text() is its segments concatenated, adjacent segments
// differ in provenance, and with content_is_inert off there is at most one segment.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "engine/chat/chat_template.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvserve::engine::chat;
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  const size_t split = input.find('\0');
  const std::string_view source = input.substr(0, split);
  std::vector<ChatMessage> messages;
  if (split != std::string_view::npos) {
    std::string_view rest = input.substr(split + 1);
    while (true) {
      const size_t end = rest.find('\0');
      messages.push_back({messages.size() % 2 == 0 ? "user" : "assistant",
                          Value::String(std::string(rest.substr(0, end))),
                          {}});
      if (end == std::string_view::npos) break;
      rest = rest.substr(end + 1);
    }
  }
  absl::StatusOr<ChatTemplate> chat_template = ChatTemplate::Parse(source);
  if (!chat_template.ok()) return 0;
  for (bool inert : {true, false}) {
    RenderOptions options;
    options.bos_token = "<s>";
    options.eos_token = "</s>";
    options.content_is_inert = inert;
    options.variables = {
        {"tools", Value::List({Value::Dict({{Value::String("name"), Value::String("f")}})})}};
    absl::StatusOr<RenderedPrompt> prompt = chat_template->Render(messages, options);
    if (!prompt.ok()) continue;
    std::string joined;
    for (size_t i = 0; i < prompt->segments.size(); ++i) {
      FUZZ_CHECK(!prompt->segments[i].text.empty(), "empty segment %zu", i);
      if (i > 0) {
        FUZZ_CHECK(prompt->segments[i].from_template != prompt->segments[i - 1].from_template,
                   "segments %zu and %zu have the same provenance", i - 1, i);
      }
      joined += prompt->segments[i].text;
    }
    FUZZ_CHECK(joined == prompt->Text(), "Text() differs from the segments");
    if (!inert) FUZZ_CHECK(prompt->segments.size() <= 1, "%zu segments", prompt->segments.size());
  }
  return 0;
}
