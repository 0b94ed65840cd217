#include "engine/common/documents.h"

namespace kvserve::engine {

std::vector<std::string_view> SplitDocuments(std::string_view text, std::string_view separator) {
  std::vector<std::string_view> docs;
  size_t start = 0;
  while (start <= text.size()) {
    size_t end = separator.empty() ? std::string_view::npos : text.find(separator, start);
    if (end == std::string_view::npos) end = text.size();
    std::string_view doc = text.substr(start, end - start);
    while (!doc.empty() && (doc.front() == ' ' || doc.front() == '\n' || doc.front() == '\r')) {
      doc.remove_prefix(1);
    }
    if (!doc.empty()) docs.push_back(doc);
    if (end == text.size()) break;
    start = end + separator.size();
  }
  return docs;
}

}  // namespace kvserve::engine
