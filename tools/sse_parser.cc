#include "tools/sse_parser.h"

namespace kvserve::tools {
namespace {

constexpr std::string_view kBom = "\xEF\xBB\xBF";

}  // namespace

void SseParser::Feed(std::string_view bytes, std::vector<SseEvent>* out) {
  if (!started_) {
    // Hold the first bytes until they are known to be, or not to be, the byte order mark.
    while (!bytes.empty() && bom_.size() < kBom.size() && bytes[0] == kBom[bom_.size()]) {
      bom_.push_back(bytes[0]);
      bytes.remove_prefix(1);
    }
    if (bom_.size() < kBom.size() && bytes.empty()) return;
    started_ = true;
    if (bom_.size() < kBom.size()) {
      // Not a byte order mark after all: its bytes are the start of the stream.
      const std::string held = std::move(bom_);
      bom_.clear();
      Feed(held, out);
    }
  }
  size_t begin = 0;
  for (size_t i = 0; i < bytes.size(); ++i) {
    const char c = bytes[i];
    if (c != '\r' && c != '\n') continue;
    if (c == '\n' && after_cr_ && i == begin && line_.empty()) {
      // The '\n' of a "\r\n" whose '\r' ended the line already.
      after_cr_ = false;
      begin = i + 1;
      continue;
    }
    if (line_.empty()) {
      Line(bytes.substr(begin, i - begin), out);
    } else {
      line_.append(bytes.substr(begin, i - begin));
      Line(line_, out);
      line_.clear();
    }
    after_cr_ = c == '\r';
    begin = i + 1;
  }
  if (begin < bytes.size()) {
    after_cr_ = false;
    line_.append(bytes.substr(begin));
  }
}

void SseParser::Line(std::string_view line, std::vector<SseEvent>* out) {
  if (line.empty()) {
    if (has_data_) out->push_back(SseEvent{std::move(type_), std::move(data_)});
    data_.clear();
    type_.clear();
    has_data_ = false;
    return;
  }
  if (line[0] == ':') return;  // a comment (servers send them to keep a connection alive)
  std::string_view field = line;
  std::string_view value;
  if (const size_t colon = line.find(':'); colon != std::string_view::npos) {
    field = line.substr(0, colon);
    value = line.substr(colon + 1);
    if (!value.empty() && value[0] == ' ') value.remove_prefix(1);
  }
  if (field == "data") {
    if (has_data_) data_.push_back('\n');
    data_.append(value);
    has_data_ = true;
  } else if (field == "event") {
    type_ = std::string(value);
  }
}

}  // namespace kvserve::tools
