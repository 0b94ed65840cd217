// An incremental parser of server-sent events (the `text/event-stream` format of the WHATWG HTML
// standard, section 9.2), as OpenAI-compatible servers stream completions: bytes go in as they
// arrive, split anywhere, and whole events come out.
//
// Lines end with "\n", "\r\n" or "\r" (a "\r\n" split between two reads is one line end). A line
// starting with ':' is a comment; "field: value" lines set the event's fields (one space after
// the colon is dropped); a blank line ends the event. "data" lines accumulate, joined by "\n";
// "event" sets the type; "id", "retry" and unknown fields are ignored. An event without data is
// not dispatched. A UTF-8 byte order mark at the very start is skipped.
//
// Thread-compatible: one parser per stream.
#ifndef KVSERVE_TOOLS_SSE_PARSER_H_
#define KVSERVE_TOOLS_SSE_PARSER_H_

#include <string>
#include <string_view>
#include <vector>

namespace kvserve::tools {

struct SseEvent {
  std::string type;  // the "event" field; empty for the default ("message")
  std::string data;  // the "data" lines joined by "\n"
};

class SseParser {
 public:
  // Parses `bytes` (the next bytes of the stream) and appends the events they complete to `*out`.
  void Feed(std::string_view bytes, std::vector<SseEvent>* out);

  // Bytes held for an unfinished line or event. An event not ended by a blank line when the
  // stream closes is dropped, as the standard says.
  bool HasPending() const { return !line_.empty() || has_data_ || !type_.empty(); }

 private:
  void Line(std::string_view line, std::vector<SseEvent>* out);

  std::string line_;       // the unfinished line
  bool after_cr_ = false;  // the last byte was '\r': a '\n' right after it ends nothing
  bool started_ = false;   // past the optional byte order mark
  std::string bom_;        // its first bytes, while they may still be one
  std::string data_;
  bool has_data_ = false;
  std::string type_;
};

}  // namespace kvserve::tools

#endif  // KVSERVE_TOOLS_SSE_PARSER_H_
