#include "engine/tokenizer/pre_tokenizer.h"

#include <unicode/regex.h>
#include <unicode/uchar.h>
#include <unicode/utext.h>

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"

namespace kvserve::engine {
namespace {

// The split expressions, written as in the models' tokenizer.json files.
constexpr std::string_view kGpt2Regex =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S))";
constexpr std::string_view kLlama3Regex =
    R"((?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|)"
    R"(\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr std::string_view kQwen2Regex =
    R"((?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|)"
    R"(\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr std::string_view kCjkRegex = "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+";
// The letters of deepseek-llm's tokenizer.json (a fixed list of ranges, not \p{L}).
constexpr std::string_view kDeepseekLlmLetters =
    "\\s?[A-Za-z\u00b5\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u01ba\u01bc-\u01bf\u01c4-\u0293"
    "\u0295-\u02af\u0370-\u0373\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c"
    "\u038e-\u03a1\u03a3-\u03f5\u03f7-\u0481\u048a-\u052f\u0531-\u0556\u10a0-\u10c5"
    "\u13a0-\u13f5\u13f8-\u13fd\u1c90-\u1cba\u1cbd-\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77"
    "\u1d79-\u1d9a\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45\u1f48-\u1f4d\u1f50-\u1f57\u1f59"
    "\u1f5b\u1f5d\u1f5f-\u1f7d\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4\u1fc6-\u1fcc"
    "\u1fd0-\u1fd3\u1fd6-\u1fdb\u1fe0-\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc\u2102\u2107"
    "\u210a-\u2113\u2115\u2119-\u211d\u2124\u2126\u2128\u212a-\u212d\u212f-\u2134\u2139"
    "\u213c-\u213f\u2145-\u2149\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4\u2ceb-\u2cee"
    "\u2cf2\u2cf3\ua640-\ua66d\ua680-\ua69b\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e"
    "\uab70-\uabbf\ufb00-\ufb06\ufb13-\ufb17\uff21-\uff3a\uff41-\uff5a\U00010400-\U0001044f"
    "\U000104b0-\U000104d3\U000104d8-\U000104fb\U00010c80-\U00010cb2\U00010cc0-\U00010cf2"
    "\U000118a0-\U000118df\U0001e900-\U0001e943]+";

enum class StageKind { kRegex, kGpt2, kLlama3, kTrailingSpace };

struct StageSpec {
  std::string_view regex;
  StageKind fast;  // the hand-written splitter of this expression, or kRegex
  int max_digits;  // kLlama3: \p{N}{1,max_digits}
};

struct PreSpec {
  std::string_view name;
  bool ignore_merges;
  std::vector<StageSpec> stages;
};

const std::vector<PreSpec>& PreSpecs() {
  static const auto* specs = [] {
    const StageSpec gpt2{kGpt2Regex, StageKind::kGpt2, 0};
    const StageSpec digit{R"(\p{N})", StageKind::kRegex, 0};
    const StageSpec three_digits{"[0-9][0-9][0-9]", StageKind::kRegex, 0};
    auto* s = new std::vector<PreSpec>{
        {"default",
         false,
         {{R"([\p{P}\$\+<=>\^~\|]+)", StageKind::kRegex, 0},
          gpt2,
          {R"(\p{N}+)", StageKind::kRegex, 0},
          three_digits}},
        {"llama-bpe", true, {{kLlama3Regex, StageKind::kLlama3, 3}}},
        {"qwen2", false, {{kQwen2Regex, StageKind::kLlama3, 1}}},
        {"gpt-2", false, {gpt2}},
        {"mpt", false, {gpt2}},
        {"starcoder", false, {digit, gpt2}},
        {"smollm", false, {digit, gpt2}},
        {"refact", false, {digit, gpt2}},
        {"falcon", false, {{R"([\p{P}\$\+<=>\^~\|`]+)", StageKind::kRegex, 0}, gpt2, three_digits}},
        {"deepseek-coder",
         false,
         {{"[\r\n]", StageKind::kRegex, 0},
          {R"(\s?\p{L}+)", StageKind::kRegex, 0},
          {R"(\s?\p{P}+)", StageKind::kRegex, 0},
          {kCjkRegex, StageKind::kRegex, 0},
          digit}},
        {"deepseek-llm",
         false,
         {{"[\r\n]", StageKind::kRegex, 0},
          {kDeepseekLlmLetters, StageKind::kRegex, 0},
          {"\\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+", StageKind::kRegex,
           0},
          {R"(\s+$)", StageKind::kTrailingSpace, 0},
          {kCjkRegex, StageKind::kRegex, 0},
          {R"(\p{N}+)", StageKind::kRegex, 0}}},
    };
    return s;
  }();
  return *specs;
}

// ---- character classes ------------------------------------------------------------------------

enum CharClass : uint8_t { kSpace, kLetter, kNumber, kOther };

CharClass ClassifyCodePoint(UChar32 c) {
  if (u_isUWhiteSpace(c)) return kSpace;  // the White_Space property, as \s
  switch (u_charType(c)) {
    case U_UPPERCASE_LETTER:
    case U_LOWERCASE_LETTER:
    case U_TITLECASE_LETTER:
    case U_MODIFIER_LETTER:
    case U_OTHER_LETTER:
      return kLetter;
    case U_DECIMAL_DIGIT_NUMBER:
    case U_LETTER_NUMBER:
    case U_OTHER_NUMBER:
      return kNumber;
    default:
      return kOther;
  }
}

const std::array<CharClass, 128>& AsciiClasses() {
  static const std::array<CharClass, 128> table = [] {
    std::array<CharClass, 128> t{};
    for (UChar32 c = 0; c < 128; ++c) t[static_cast<size_t>(c)] = ClassifyCodePoint(c);
    return t;
  }();
  return table;
}

struct Char {
  uint32_t offset;  // byte offset in the piece
  uint32_t cp;      // code point; kInvalidCp for an ill-formed byte
  CharClass cls;
};
constexpr uint32_t kInvalidCp = 0xFFFFFFFF;

// Decodes `text` into characters, plus a sentinel at text.size().
void DecodeChars(std::string_view text, std::vector<Char>* chars) {
  chars->clear();
  const auto& ascii = AsciiClasses();
  const auto* s = reinterpret_cast<const uint8_t*>(text.data());
  const size_t n = text.size();
  size_t i = 0;
  while (i < n) {
    const uint8_t b0 = s[i];
    if (b0 < 0x80) {
      chars->push_back({static_cast<uint32_t>(i), b0, ascii[b0]});
      ++i;
      continue;
    }
    size_t need = 0;
    uint32_t cp = 0;
    uint8_t lo = 0x80, hi = 0xBF;
    if (b0 >= 0xC2 && b0 <= 0xDF) {
      need = 2;
      cp = b0 & 0x1F;
    } else if (b0 >= 0xE0 && b0 <= 0xEF) {
      need = 3;
      cp = b0 & 0x0F;
      if (b0 == 0xE0) lo = 0xA0;
      if (b0 == 0xED) hi = 0x9F;
    } else if (b0 >= 0xF0 && b0 <= 0xF4) {
      need = 4;
      cp = b0 & 0x07;
      if (b0 == 0xF0) lo = 0x90;
      if (b0 == 0xF4) hi = 0x8F;
    }
    bool ok = need > 0 && i + need <= n;
    for (size_t k = 1; ok && k < need; ++k) {
      const uint8_t b = s[i + k];
      ok = k == 1 ? (b >= lo && b <= hi) : (b >= 0x80 && b <= 0xBF);
      cp = (cp << 6) | (b & 0x3F);
    }
    if (!ok) {
      chars->push_back({static_cast<uint32_t>(i), kInvalidCp, kOther});
      ++i;
      continue;
    }
    chars->push_back({static_cast<uint32_t>(i), cp, ClassifyCodePoint(static_cast<UChar32>(cp))});
    i += need;
  }
  chars->push_back({static_cast<uint32_t>(n), 0, kOther});
}

uint32_t AsciiLower(uint32_t cp) { return cp >= 'A' && cp <= 'Z' ? cp + 32 : cp; }
bool IsNewline(uint32_t cp) { return cp == '\r' || cp == '\n'; }

// Length in characters of a contraction ('s 't 're 've 'm 'll 'd) at chars[i], or 0.
size_t Contraction(const std::vector<Char>& chars, size_t i, size_t n, bool any_case) {
  if (chars[i].cp != '\'' || i + 1 >= n) return 0;
  const auto fold = [any_case](uint32_t cp) { return any_case ? AsciiLower(cp) : cp; };
  const uint32_t c1 = fold(chars[i + 1].cp);
  if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') return 2;
  if (i + 2 >= n) return 0;
  const uint32_t c2 = fold(chars[i + 2].cp);
  if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l')) return 3;
  return 0;
}

size_t RunEnd(const std::vector<Char>& chars, size_t i, size_t n, CharClass cls) {
  while (i < n && chars[i].cls == cls) ++i;
  return i;
}

// GPT2 (see the header). Characters no alternative matches (a lone white space character other
// than ' ' before a non-space) become pieces of their own, as the text between matches does.
void SplitGpt2(std::string_view text, std::vector<Char>& chars,
               std::vector<std::string_view>* out) {
  DecodeChars(text, &chars);
  const size_t n = chars.size() - 1;
  auto emit = [&](size_t a, size_t b) {
    out->push_back(text.substr(chars[a].offset, chars[b].offset - chars[a].offset));
  };
  size_t i = 0;
  while (i < n) {
    if (const size_t c = Contraction(chars, i, n, /*any_case=*/false); c > 0) {
      emit(i, i + c);
      i += c;
      continue;
    }
    size_t j = i;
    if (chars[i].cp == ' ' && i + 1 < n && chars[i + 1].cls != kSpace) j = i + 1;
    if (chars[j].cls != kSpace) {  // ` ?\p{L}+`, ` ?\p{N}+` or ` ?[^\s\p{L}\p{N}]+`
      const size_t end = RunEnd(chars, j, n, chars[j].cls);
      emit(i, end);
      i = end;
      continue;
    }
    const size_t end = RunEnd(chars, i, n, kSpace);
    if (end == n) {
      emit(i, n);
      i = n;
    } else if (end - i > 1) {  // \s+(?!\S) leaves the last one for the next piece
      emit(i, end - 1);
      i = end - 1;
    } else {
      emit(i, i + 1);
      ++i;
    }
  }
}

// LLAMA3 / QWEN2 (see the header); every character is matched by some alternative.
void SplitLlama3(std::string_view text, int max_digits, std::vector<Char>& chars,
                 std::vector<std::string_view>* out) {
  DecodeChars(text, &chars);
  const size_t n = chars.size() - 1;
  auto emit = [&](size_t a, size_t b) {
    out->push_back(text.substr(chars[a].offset, chars[b].offset - chars[a].offset));
  };
  size_t i = 0;
  while (i < n) {
    const Char& c = chars[i];
    if (const size_t k = Contraction(chars, i, n, /*any_case=*/true); k > 0) {
      emit(i, i + k);
      i += k;
      continue;
    }
    // [^\r\n\p{L}\p{N}]?\p{L}+
    if (c.cls == kLetter) {
      const size_t end = RunEnd(chars, i, n, kLetter);
      emit(i, end);
      i = end;
      continue;
    }
    if (c.cls != kNumber && !IsNewline(c.cp) && i + 1 < n && chars[i + 1].cls == kLetter) {
      const size_t end = RunEnd(chars, i + 1, n, kLetter);
      emit(i, end);
      i = end;
      continue;
    }
    // \p{N}{1,max_digits}
    if (c.cls == kNumber) {
      size_t end = i;
      while (end < n && end - i < static_cast<size_t>(max_digits) && chars[end].cls == kNumber) {
        ++end;
      }
      emit(i, end);
      i = end;
      continue;
    }
    //  ?[^\s\p{L}\p{N}]+[\r\n]*
    const size_t j = (c.cp == ' ' && i + 1 < n && chars[i + 1].cls == kOther) ? i + 1 : i;
    if (chars[j].cls == kOther) {
      size_t end = RunEnd(chars, j, n, kOther);
      while (end < n && IsNewline(chars[end].cp)) ++end;
      emit(i, end);
      i = end;
      continue;
    }
    // White space: \s*[\r\n]+ | \s+(?!\S) | \s+
    const size_t end = RunEnd(chars, i, n, kSpace);
    size_t last_newline = end;
    for (size_t k = end; k > i; --k) {
      if (IsNewline(chars[k - 1].cp)) {
        last_newline = k - 1;
        break;
      }
    }
    size_t stop;
    if (last_newline != end) {
      stop = last_newline + 1;
    } else if (end == n || end - i == 1) {
      stop = end;
    } else {
      stop = end - 1;
    }
    emit(i, stop);
    i = stop;
  }
}

// \s+$: the white space that ends the piece, split from what precedes it. (A backtracking regex
// engine takes quadratic time on a long run of white space that does not end the piece.)
void SplitTrailingSpace(std::string_view text, std::vector<Char>& chars,
                        std::vector<std::string_view>* out) {
  DecodeChars(text, &chars);
  size_t k = chars.size() - 1;
  while (k > 0 && chars[k - 1].cls == kSpace) --k;
  const size_t begin = chars[k].offset;
  if (begin > 0) out->push_back(text.substr(0, begin));
  if (begin < text.size()) out->push_back(text.substr(begin));
}

// Rewrites \s and \S as the White_Space property (ICU's \s is a narrower set).
std::string ToIcuPattern(std::string_view regex) {
  return absl::StrReplaceAll(std::string(regex),
                             {{R"(\s)", R"(\p{White_Space})"}, {R"(\S)", R"(\P{White_Space})"}});
}

}  // namespace

struct PreTokenizer::Stage {
  StageKind kind = StageKind::kRegex;
  int max_digits = 0;
  std::unique_ptr<icu::RegexPattern> pattern;  // kRegex

  void Apply(std::string_view text, std::vector<Char>& chars,
             std::vector<std::string_view>* out) const {
    switch (kind) {
      case StageKind::kGpt2:
        SplitGpt2(text, chars, out);
        return;
      case StageKind::kLlama3:
        SplitLlama3(text, max_digits, chars, out);
        return;
      case StageKind::kTrailingSpace:
        SplitTrailingSpace(text, chars, out);
        return;
      case StageKind::kRegex:
        break;
    }
    UErrorCode status = U_ZERO_ERROR;
    UText* ut = utext_openUTF8(nullptr, text.data(), static_cast<int64_t>(text.size()), &status);
    std::unique_ptr<icu::RegexMatcher> matcher(pattern->matcher(status));
    if (U_FAILURE(status) || matcher == nullptr) {
      utext_close(ut);
      out->push_back(text);  // unreachable: the pattern compiled at Create
      return;
    }
    matcher->reset(ut);
    int64_t last = 0;
    while (matcher->find(status) && U_SUCCESS(status)) {
      const int64_t begin = matcher->start64(status);
      const int64_t end = matcher->end64(status);
      if (end <= begin) continue;
      if (begin > last) out->push_back(text.substr(last, begin - last));
      out->push_back(text.substr(begin, end - begin));
      last = end;
    }
    if (last < static_cast<int64_t>(text.size())) out->push_back(text.substr(last));
    matcher.reset();
    utext_close(ut);
  }
};

bool PreTokenizer::IsKnown(std::string_view pre) {
  for (const PreSpec& spec : PreSpecs()) {
    if (spec.name == pre) return true;
  }
  return false;
}

std::string PreTokenizer::KnownNames() {
  std::vector<std::string> names;
  for (const PreSpec& spec : PreSpecs()) names.emplace_back(spec.name);
  return absl::StrJoin(names, ", ");
}

absl::StatusOr<PreTokenizer> PreTokenizer::Create(std::string_view pre, Engine engine) {
  const PreSpec* spec = nullptr;
  for (const PreSpec& s : PreSpecs()) {
    if (s.name == pre) spec = &s;
  }
  if (spec == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("pre-tokenizer '", std::string(pre),
                     "' (tokenizer.ggml.pre) is not supported; known: ", KnownNames()));
  }
  PreTokenizer p;
  p.name_ = std::string(pre);
  p.ignore_merges_ = spec->ignore_merges;
  for (const StageSpec& s : spec->stages) {
    auto stage = std::make_shared<Stage>();
    stage->kind = engine == Engine::kFast ? s.fast : StageKind::kRegex;
    stage->max_digits = s.max_digits;
    if (stage->kind == StageKind::kRegex) {
      const std::string pattern = ToIcuPattern(s.regex);
      UErrorCode status = U_ZERO_ERROR;
      UParseError parse_error;
      stage->pattern.reset(
          icu::RegexPattern::compile(icu::UnicodeString::fromUTF8(icu::StringPiece(
                                         pattern.data(), static_cast<int32_t>(pattern.size()))),
                                     0, parse_error, status));
      if (U_FAILURE(status)) {
        return absl::InternalError(absl::StrCat("pre-tokenizer '", std::string(pre),
                                                "': expression ", std::string(s.regex),
                                                " does not compile: ", u_errorName(status)));
      }
    }
    p.stages_.push_back(std::move(stage));
  }
  return p;
}

void PreTokenizer::Split(std::string_view text, std::vector<std::string_view>* pieces) const {
  if (text.empty()) return;
  thread_local std::vector<Char> chars;
  if (stages_.size() == 1) {
    stages_[0]->Apply(text, chars, pieces);
    return;
  }
  std::vector<std::string_view> current{text};
  std::vector<std::string_view> next;
  for (const auto& stage : stages_) {
    next.clear();
    for (const std::string_view piece : current) stage->Apply(piece, chars, &next);
    current.swap(next);
  }
  pieces->insert(pieces->end(), current.begin(), current.end());
}

}  // namespace kvserve::engine
