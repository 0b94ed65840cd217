// UTF-8 helpers for the template engine: Python's str works on code points, so lengths, indexes,
// slices and whitespace are computed on code points here.
#ifndef KVSERVE_ENGINE_CHAT_UTF8_H_
#define KVSERVE_ENGINE_CHAT_UTF8_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace kvserve::engine::chat {

// Decodes the code point at *pos and advances *pos past it. A byte that does not start a
// well-formed sequence decodes alone, as U+DC80..U+DCFF (Python's surrogateescape), so every byte
// string has a decoding and a stray byte is never taken for whitespace.
uint32_t DecodeUtf8(std::string_view s, size_t* pos);
void AppendUtf8(uint32_t cp, std::string& out);
// Byte offset of each code point, plus s.size() at the end.
std::vector<size_t> CodePointOffsets(std::string_view s);
size_t CodePointCount(std::string_view s);
// Python's str.isspace() for one code point.
bool IsPythonSpace(uint32_t cp);

}  // namespace kvserve::engine::chat

#endif  // KVSERVE_ENGINE_CHAT_UTF8_H_
