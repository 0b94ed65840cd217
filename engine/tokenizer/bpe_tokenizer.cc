#include "engine/tokenizer/bpe_tokenizer.h"

#include <algorithm>
#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "engine/common/status_macros.h"

namespace kvserve::engine {
namespace {

struct ByteTables {
  std::array<uint32_t, 256> byte_to_cp;
  std::array<int16_t, 324> cp_to_byte;  // every mapped code point is below 0x100 + 68
};

const ByteTables& Tables() {
  static const ByteTables tables = [] {
    ByteTables t;
    t.cp_to_byte.fill(-1);
    uint32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      const uint32_t cp = printable ? static_cast<uint32_t>(b) : next++;
      t.byte_to_cp[static_cast<size_t>(b)] = cp;
      t.cp_to_byte[cp] = static_cast<int16_t>(b);
    }
    return t;
  }();
  return tables;
}

void AppendUtf8(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

struct Symbol {
  int32_t id;  // -1: a byte without a token (never merges)
  int32_t prev;
  int32_t next;
  bool alive;
};

struct Candidate {
  int32_t rank;
  int32_t left;
  int32_t right;
  int32_t left_id;
  int32_t right_id;
  int32_t id;
};

// top() is the best (lowest) rank, then the leftmost pair.
struct CandidateLess {
  bool operator()(const Candidate& a, const Candidate& b) const {
    if (a.rank != b.rank) return a.rank > b.rank;
    return a.left > b.left;
  }
};

}  // namespace

uint32_t ByteToUnicode(uint8_t b) { return Tables().byte_to_cp[b]; }

int UnicodeToByte(uint32_t cp) {
  const auto& t = Tables().cp_to_byte;
  return cp < t.size() ? t[cp] : -1;
}

std::string MapBytes(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size() * 2);
  for (const char c : bytes) AppendUtf8(ByteToUnicode(static_cast<uint8_t>(c)), &out);
  return out;
}

std::string UnmapBytes(std::string_view mapped) {
  std::string out;
  out.reserve(mapped.size());
  const auto* s = reinterpret_cast<const uint8_t*>(mapped.data());
  const size_t n = mapped.size();
  size_t i = 0;
  while (i < n) {
    // Mapped code points are below U+0800: one or two bytes.
    uint32_t cp = s[i];
    size_t len = 1;
    if (s[i] >= 0xC2 && s[i] <= 0xDF && i + 1 < n && (s[i + 1] & 0xC0) == 0x80) {
      cp = ((s[i] & 0x1Fu) << 6) | (s[i + 1] & 0x3Fu);
      len = 2;
    } else if (s[i] >= 0x80) {
      cp = 0xFFFFFFFF;  // not a mapped character: keep its bytes
    }
    const int b = cp == 0xFFFFFFFF ? -1 : UnicodeToByte(cp);
    if (b >= 0) {
      out.push_back(static_cast<char>(b));
    } else {
      out.append(mapped.substr(i, len));
    }
    i += len;
  }
  return out;
}

absl::StatusOr<BpeTokenizer> BpeTokenizer::Create(const Vocabulary& vocab,
                                                  PreTokenizer::Engine engine) {
  if (vocab.kind != TokenizerKind::kByteLevelBpe) {
    return absl::InvalidArgumentError("BpeTokenizer needs a byte-level BPE vocabulary");
  }
  KVSERVE_ASSIGN_OR_RETURN(PreTokenizer pre, PreTokenizer::Create(vocab.pre, engine));
  BpeTokenizer t(std::move(pre));
  t.unk_id_ = vocab.unk_id;
  t.byte_token_.fill(-1);
  const int32_t n = vocab.size();
  t.token_bytes_.resize(static_cast<size_t>(n));
  // Normal tokens by their mapped text, for the merges.
  absl::flat_hash_map<std::string_view, int32_t> mapped_to_id;
  mapped_to_id.reserve(static_cast<size_t>(n));
  t.bytes_to_id_.reserve(static_cast<size_t>(n));
  for (int32_t id = 0; id < n; ++id) {
    const std::string& piece = vocab.pieces[static_cast<size_t>(id)];
    std::string& bytes = t.token_bytes_[static_cast<size_t>(id)];
    switch (vocab.types[static_cast<size_t>(id)]) {
      case TokenType::kNormal:
        bytes = UnmapBytes(piece);
        mapped_to_id.emplace(piece, id);  // the first of duplicates wins
        if (!bytes.empty()) t.bytes_to_id_.emplace(bytes, id);
        if (bytes.size() == 1 && t.byte_token_[static_cast<uint8_t>(bytes[0])] < 0) {
          // Only a token written as the byte's mapped character is the byte's token.
          if (piece == MapBytes(bytes)) t.byte_token_[static_cast<uint8_t>(bytes[0])] = id;
        }
        break;
      case TokenType::kUserDefined:
        bytes = piece;
        break;
      case TokenType::kByte:
        if (piece.size() == 6 && piece.rfind("<0x", 0) == 0 && piece[5] == '>') {
          bytes = std::string(1, static_cast<char>(std::stoi(piece.substr(3, 2), nullptr, 16)));
        }
        break;
      case TokenType::kUnknown:
      case TokenType::kControl:
      case TokenType::kUnused:
        break;
    }
  }
  t.merges_.reserve(vocab.merges.size());
  for (size_t rank = 0; rank < vocab.merges.size(); ++rank) {
    const std::string& merge = vocab.merges[rank];
    const size_t space = merge.find(' ', 1);
    if (space == std::string::npos || space + 1 >= merge.size()) {
      return absl::InvalidArgumentError(absl::StrCat("tokenizer.ggml.merges[", rank, "] = '", merge,
                                                     "' is not two tokens separated by a space"));
    }
    const std::string_view left(merge.data(), space);
    const std::string_view right(merge.data() + space + 1, merge.size() - space - 1);
    const auto l = mapped_to_id.find(left);
    const auto r = mapped_to_id.find(right);
    const auto m = mapped_to_id.find(std::string(left) + std::string(right));
    // A merge whose parts or result are not tokens can never apply; skip it.
    if (l == mapped_to_id.end() || r == mapped_to_id.end() || m == mapped_to_id.end()) continue;
    t.merges_.try_emplace(PairKey(l->second, r->second),
                          Merge{static_cast<int32_t>(rank), m->second});
  }
  return t;
}

void BpeTokenizer::Encode(std::string_view text, std::vector<int32_t>* out) const {
  thread_local std::vector<std::string_view> words;
  words.clear();
  pre_.Split(text, &words);
  for (const std::string_view word : words) EncodeWord(word, out);
}

void BpeTokenizer::EncodeWord(std::string_view word, std::vector<int32_t>* out) const {
  if (word.empty()) return;
  if (pre_.ignore_merges() || word.size() == 1) {
    const auto it = bytes_to_id_.find(absl::string_view(word.data(), word.size()));
    if (it != bytes_to_id_.end()) {
      out->push_back(it->second);
      return;
    }
  }
  thread_local std::vector<Symbol> symbols;
  symbols.clear();
  const auto count = static_cast<int32_t>(word.size());
  for (int32_t i = 0; i < count; ++i) {
    symbols.push_back({byte_token_[static_cast<uint8_t>(word[static_cast<size_t>(i)])], i - 1,
                       i + 1 < count ? i + 1 : -1, true});
  }
  thread_local std::vector<Candidate> heap;  // a max-heap under CandidateLess
  heap.clear();
  auto try_add = [&](int32_t left, int32_t right) {
    if (left < 0 || right < 0) return;
    const int32_t lid = symbols[static_cast<size_t>(left)].id;
    const int32_t rid = symbols[static_cast<size_t>(right)].id;
    if (lid < 0 || rid < 0) return;
    const auto it = merges_.find(PairKey(lid, rid));
    if (it == merges_.end()) return;
    heap.push_back({it->second.rank, left, right, lid, rid, it->second.id});
    std::push_heap(heap.begin(), heap.end(), CandidateLess{});
  };
  for (int32_t i = 1; i < count; ++i) try_add(i - 1, i);
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), CandidateLess{});
    const Candidate c = heap.back();
    heap.pop_back();
    Symbol& l = symbols[static_cast<size_t>(c.left)];
    Symbol& r = symbols[static_cast<size_t>(c.right)];
    if (!l.alive || !r.alive || l.next != c.right || l.id != c.left_id || r.id != c.right_id) {
      continue;
    }
    l.id = c.id;
    l.next = r.next;
    if (r.next >= 0) symbols[static_cast<size_t>(r.next)].prev = c.left;
    r.alive = false;
    try_add(l.prev, c.left);
    try_add(c.left, l.next);
  }
  for (int32_t i = 0; i >= 0; i = symbols[static_cast<size_t>(i)].next) {
    const int32_t id = symbols[static_cast<size_t>(i)].id;
    if (id >= 0) {
      out->push_back(id);
    } else if (unk_id_ >= 0) {
      out->push_back(unk_id_);
    }
  }
}

}  // namespace kvserve::engine
