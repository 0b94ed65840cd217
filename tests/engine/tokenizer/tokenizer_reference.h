// Plain reference implementations for the tokenizer tests, written directly from the
// definitions (UTF-8 per RFC 3629 by decoding the code point; SentencePiece BPE as llama2.c's
// encode() does it, by rescanning every adjacent pair after each merge: O(n^2), no queue).
#ifndef KVSERVE_TESTS_ENGINE_TOKENIZER_TOKENIZER_REFERENCE_H_
#define KVSERVE_TESTS_ENGINE_TOKENIZER_TOKENIZER_REFERENCE_H_

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "engine/tokenizer/vocabulary.h"

namespace kvserve::engine::testing {

// Length of the well-formed UTF-8 sequence at s[pos], or 0 when none starts there.
inline int RefSequenceLength(std::string_view s, size_t pos) {
  const auto c = static_cast<unsigned char>(s[pos]);
  int n = 0;
  uint32_t cp = 0;
  if (c < 0x80) return 1;
  if ((c >> 5) == 0x6) {
    n = 2;
    cp = c & 0x1F;
  } else if ((c >> 4) == 0xE) {
    n = 3;
    cp = c & 0x0F;
  } else if ((c >> 3) == 0x1E) {
    n = 4;
    cp = c & 0x07;
  } else {
    return 0;
  }
  if (pos + static_cast<size_t>(n) > s.size()) return 0;
  for (int k = 1; k < n; ++k) {
    const auto b = static_cast<unsigned char>(s[pos + static_cast<size_t>(k)]);
    if ((b & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (b & 0x3F);
  }
  static constexpr uint32_t kMinimum[] = {0, 0, 0x80, 0x800, 0x10000};
  if (cp < kMinimum[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
  return n;
}

inline bool RefIsValidUtf8(std::string_view s) {
  for (size_t pos = 0; pos < s.size();) {
    const int n = RefSequenceLength(s, pos);
    if (n == 0) return false;
    pos += static_cast<size_t>(n);
  }
  return true;
}

// True when `prefix` (shorter than a full sequence) can be completed into a well-formed sequence.
inline bool RefIsIncompletePrefix(std::string_view prefix) {
  for (int total = static_cast<int>(prefix.size()) + 1; total <= 4; ++total) {
    for (const unsigned char second : {0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF}) {
      std::string s(prefix);
      while (static_cast<int>(s.size()) < total) {
        s.push_back(static_cast<char>(s.size() == 1 ? second : 0x80));
      }
      if (RefSequenceLength(s, 0) == total) return true;
    }
  }
  return false;
}

// Replaces every maximal ill-formed subpart of `s` by U+FFFD (Unicode's recommended practice,
// also Python's bytes.decode("utf-8", "replace")).
inline std::string RefReplaceInvalid(std::string_view s) {
  std::string out;
  for (size_t pos = 0; pos < s.size();) {
    const int n = RefSequenceLength(s, pos);
    if (n > 0) {
      out.append(s.substr(pos, static_cast<size_t>(n)));
      pos += static_cast<size_t>(n);
      continue;
    }
    size_t k = 1;
    while (k < 3 && pos + k < s.size() && RefIsIncompletePrefix(s.substr(pos, k + 1))) ++k;
    out.append("\xEF\xBF\xBD");
    pos += k;
  }
  return out;
}

class ReferenceEncoder {
 public:
  explicit ReferenceEncoder(const Vocabulary& vocab) : vocab_(vocab) {
    for (int32_t i = 0; i < vocab.size(); ++i) {
      const std::string& piece = vocab.pieces[i];
      const TokenType type = vocab.types[i];
      if ((type == TokenType::kNormal || type == TokenType::kUserDefined) && !piece.empty()) {
        pieces_.emplace(piece, i);
      }
      if (type == TokenType::kByte) {
        const int value = std::stoi(piece.substr(3, 2), nullptr, 16);
        if (byte_ids_.count(value) == 0) byte_ids_[value] = i;
      }
    }
  }

  std::vector<int32_t> Encode(std::string_view input, bool add_bos) const {
    std::vector<int32_t> ids;
    if (add_bos) ids.push_back(vocab_.bos_id);
    if (input.empty()) return ids;
    std::string text = vocab_.add_space_prefix ? " " : "";
    text.append(input);
    struct Tok {
      int32_t id;
      std::string text;  // empty: never merges
    };
    std::vector<Tok> toks;
    for (size_t pos = 0; pos < text.size();) {
      const int n = RefSequenceLength(text, pos);
      const std::string unit = text.substr(pos, n > 0 ? static_cast<size_t>(n) : 1);
      pos += unit.size();
      auto it = n > 0 ? pieces_.find(unit) : pieces_.end();
      if (it != pieces_.end()) {
        toks.push_back({it->second, unit});
      } else if (byte_ids_.empty()) {
        toks.push_back({vocab_.unk_id, ""});
      } else {
        for (const char c : unit) {
          auto b = byte_ids_.find(static_cast<unsigned char>(c));
          toks.push_back({b == byte_ids_.end() ? vocab_.unk_id : b->second, ""});
        }
      }
    }
    while (true) {
      int best = -1;
      float best_score = 0;
      int32_t best_id = -1;
      for (size_t i = 0; i + 1 < toks.size(); ++i) {
        if (toks[i].text.empty() || toks[i + 1].text.empty()) continue;
        auto it = pieces_.find(toks[i].text + toks[i + 1].text);
        if (it == pieces_.end()) continue;
        const float score = vocab_.scores[it->second];
        if (best < 0 || score > best_score) {
          best = static_cast<int>(i);
          best_score = score;
          best_id = it->second;
        }
      }
      if (best < 0) break;
      toks[best].text += toks[best + 1].text;
      toks[best].id = best_id;
      toks.erase(toks.begin() + best + 1);
    }
    for (const Tok& t : toks) {
      if (t.id >= 0) ids.push_back(t.id);
    }
    return ids;
  }

 private:
  const Vocabulary& vocab_;
  std::map<std::string, int32_t> pieces_;
  std::map<int, int32_t> byte_ids_;
};

}  // namespace kvserve::engine::testing

#endif  // KVSERVE_TESTS_ENGINE_TOKENIZER_TOKENIZER_REFERENCE_H_
