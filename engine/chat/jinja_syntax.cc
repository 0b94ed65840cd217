#include "engine/chat/jinja_syntax.h"

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <optional>
#include <set>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/chat/utf8.h"
#include "engine/common/status_macros.h"

namespace kvserve::engine::chat {
namespace {

enum class Tok {
  kData,
  kVarBegin,
  kVarEnd,
  kBlockBegin,
  kBlockEnd,
  kName,
  kString,
  kInt,
  kFloat,
  kOp,
  kEof
};

struct Token {
  Tok type = Tok::kEof;
  std::string text;  // data, name, operator, or the decoded string literal
  int line = 0;
  int column = 0;
  int64_t int_value = 0;
  double float_value = 0;
};

std::string_view TokName(Tok t) {
  switch (t) {
    case Tok::kData:
      return "template data";
    case Tok::kVarBegin:
      return "'{{'";
    case Tok::kVarEnd:
      return "'}}'";
    case Tok::kBlockBegin:
      return "'{%'";
    case Tok::kBlockEnd:
      return "'%}'";
    case Tok::kName:
      return "name";
    case Tok::kString:
      return "string";
    case Tok::kInt:
      return "integer";
    case Tok::kFloat:
      return "float";
    case Tok::kOp:
      return "operator";
    case Tok::kEof:
      return "end of template";
  }
  return "?";
}

bool IsSpaceAt(std::string_view s, size_t pos, size_t* next) {
  uint32_t cp = DecodeUtf8(s, &pos);
  *next = pos;
  return IsPythonSpace(cp);
}

// Length of the run of whitespace at `pos`.
size_t SkipSpace(std::string_view s, size_t pos) {
  size_t next;
  while (pos < s.size() && IsSpaceAt(s, pos, &next)) pos = next;
  return pos;
}

// Python's str.rstrip().
std::string_view RStripSpace(std::string_view s) {
  std::vector<size_t> offsets = CodePointOffsets(s);
  size_t end = offsets.size() - 1;  // index of the code point after the kept text
  while (end > 0) {
    size_t p = offsets[end - 1];
    size_t next;
    if (!IsSpaceAt(s, p, &next)) break;
    --end;
  }
  return s.substr(0, offsets[end]);
}

bool AllSpace(std::string_view s) {
  if (s.empty()) return false;
  return SkipSpace(s, 0) == s.size();
}

class Lexer {
 public:
  explicit Lexer(std::string_view source) {
    // jinja2: every line break becomes "\n" and one trailing newline is dropped.
    src_.reserve(source.size());
    for (size_t i = 0; i < source.size(); ++i) {
      if (source[i] == '\r') {
        src_ += '\n';
        if (i + 1 < source.size() && source[i + 1] == '\n') ++i;
      } else {
        src_ += source[i];
      }
    }
    if (!src_.empty() && src_.back() == '\n') src_.pop_back();
    line_starts_.push_back(0);
    for (size_t i = 0; i < src_.size(); ++i) {
      if (src_[i] == '\n') line_starts_.push_back(i + 1);
    }
  }

  absl::StatusOr<std::vector<Token>> Run() {
    std::string_view s = src_;
    size_t pos = 0;
    bool line_starting = true;
    while (pos < s.size()) {
      size_t start = std::string_view::npos;
      char kind = 0;
      for (size_t p = s.find('{', pos); p != std::string_view::npos; p = s.find('{', p + 1)) {
        if (p + 1 < s.size() && (s[p + 1] == '{' || s[p + 1] == '%' || s[p + 1] == '#')) {
          start = p;
          kind = s[p + 1];
          break;
        }
      }
      if (start == std::string_view::npos) {
        Emit(Tok::kData, std::string(s.substr(pos)), pos);
        break;
      }
      std::string_view text = s.substr(pos, start - pos);
      char sign = 0;
      if (start + 2 < s.size() && (s[start + 2] == '-' || s[start + 2] == '+')) {
        sign = s[start + 2];
      }
      if (sign == '-') {
        text = RStripSpace(text);
      } else if (sign != '+' && kind != '{') {
        size_t l_pos = text.rfind('\n');
        l_pos = l_pos == std::string_view::npos ? 0 : l_pos + 1;
        if ((l_pos > 0 || line_starting) && AllSpace(text.substr(l_pos))) {
          text = text.substr(0, l_pos);
        }
      }
      if (!text.empty()) Emit(Tok::kData, std::string(text), pos);
      pos = start + 2 + (sign ? 1 : 0);
      if (kind == '#') {
        size_t p = pos;
        size_t end = std::string_view::npos;
        for (size_t q = s.find("#}", pos); q != std::string_view::npos; q = s.find("#}", q + 1)) {
          end = q;
          break;
        }
        if (end == std::string_view::npos) return Error(start, "missing end of comment tag");
        p = end;
        char close_sign = 0;
        if (p > pos && (s[p - 1] == '-' || s[p - 1] == '+')) close_sign = s[p - 1];
        size_t after = end + 2;
        if (close_sign == '-') {
          after = SkipSpace(s, after);
        } else if (close_sign != '+' && after < s.size() && s[after] == '\n') {
          ++after;
        }
        line_starting = after > 0 && s[after - 1] == '\n';
        pos = after;
        continue;
      }
      Emit(kind == '{' ? Tok::kVarBegin : Tok::kBlockBegin, "", start);
      KVSERVE_ASSIGN_OR_RETURN(pos, LexTag(kind == '%', pos, &line_starting));
    }
    Emit(Tok::kEof, "", s.size());
    return std::move(tokens_);
  }

 private:
  void Emit(Tok type, std::string text, size_t pos) {
    Token t;
    t.type = type;
    t.text = std::move(text);
    Locate(pos, &t.line, &t.column);
    tokens_.push_back(std::move(t));
  }
  void Locate(size_t pos, int* line, int* column) const {
    auto it = std::upper_bound(line_starts_.begin(), line_starts_.end(), pos);
    size_t idx = static_cast<size_t>(it - line_starts_.begin()) - 1;
    *line = static_cast<int>(idx) + 1;
    *column = static_cast<int>(pos - line_starts_[idx]) + 1;
  }
  absl::Status Error(size_t pos, std::string_view message) const {
    int line, column;
    Locate(pos, &line, &column);
    return absl::InvalidArgumentError(absl::StrCat(
        "template syntax error at line ", line, ", column ", column, ": ", std::string(message)));
  }

  // Lexes the inside of a {{ }} or {% %} tag starting at `pos`; returns the position after its
  // end (and the whitespace control of the end).
  absl::StatusOr<size_t> LexTag(bool block, size_t pos, bool* line_starting) {
    std::string_view s = src_;
    std::vector<char> balance;
    while (true) {
      pos = SkipSpace(s, pos);
      if (pos >= s.size()) return Error(pos, block ? "missing '%}'" : "missing '}}'");
      if (balance.empty()) {
        if (std::optional<size_t> after = LexTagEnd(block, pos)) {
          *line_starting = *after > 0 && s[*after - 1] == '\n';
          return *after;
        }
      }
      const char c = s[pos];
      if (std::isdigit(static_cast<unsigned char>(c))) {
        KVSERVE_ASSIGN_OR_RETURN(pos, LexNumber(pos));
      } else if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
        pos = LexName(pos);
      } else if (c == '\'' || c == '"') {
        KVSERVE_ASSIGN_OR_RETURN(pos, LexString(pos));
      } else {
        KVSERVE_ASSIGN_OR_RETURN(pos, LexOp(pos, balance));
      }
    }
  }

  // When the tag's end (with its whitespace control) is at `pos`: emits the end token and
  // returns the position after it (and after the whitespace it strips).
  std::optional<size_t> LexTagEnd(bool block, size_t pos) {
    std::string_view s = src_;
    const std::string_view end = block ? "%}" : "}}";
    size_t after = std::string_view::npos;
    if (s[pos] == '-' && s.substr(pos + 1, 2) == end) {
      after = SkipSpace(s, pos + 3);
    } else if (block && s[pos] == '+' && s.substr(pos + 1, 2) == end) {
      after = pos + 3;
    } else if (s.substr(pos, 2) == end) {
      after = pos + 2;
      if (block && after < s.size() && s[after] == '\n') ++after;
    }
    if (after == std::string_view::npos) return std::nullopt;
    Emit(block ? Tok::kBlockEnd : Tok::kVarEnd, "", pos);
    return after;
  }

  // Lexes an int or float literal (Python syntax, '_' between digits) at `pos`, which holds a
  // digit; returns the position after it.
  absl::StatusOr<size_t> LexNumber(size_t pos) {
    std::string_view s = src_;
    size_t p = pos;
    auto digits = [&]() {
      size_t q = p;
      while (q < s.size() && (std::isdigit(static_cast<unsigned char>(s[q])) ||
                              (s[q] == '_' && q + 1 < s.size() &&
                               std::isdigit(static_cast<unsigned char>(s[q + 1]))))) {
        ++q;
      }
      p = q;
    };
    digits();
    bool is_float = false;
    if (p + 1 < s.size() && s[p] == '.' && std::isdigit(static_cast<unsigned char>(s[p + 1]))) {
      ++p;
      digits();
      is_float = true;
    }
    if (p < s.size() && (s[p] == 'e' || s[p] == 'E')) {
      size_t q = p + 1;
      if (q < s.size() && (s[q] == '+' || s[q] == '-')) ++q;
      if (q < s.size() && std::isdigit(static_cast<unsigned char>(s[q]))) {
        p = q;
        digits();
        is_float = true;
      }
    }
    std::string number;
    for (size_t k = pos; k < p; ++k) {
      if (s[k] != '_') number += s[k];
    }
    Emit(is_float ? Tok::kFloat : Tok::kInt, number, pos);
    if (is_float) {
      tokens_.back().float_value = std::strtod(number.c_str(), nullptr);
    } else {
      errno = 0;
      tokens_.back().int_value = std::strtoll(number.c_str(), nullptr, 10);
      if (errno == ERANGE) return Error(pos, "integer literal out of range");
    }
    return p;
  }

  // Lexes a name at `pos` (a letter or '_'); returns the position after it.
  size_t LexName(size_t pos) {
    std::string_view s = src_;
    size_t p = pos;
    while (p < s.size() && (std::isalnum(static_cast<unsigned char>(s[p])) || s[p] == '_')) ++p;
    Emit(Tok::kName, std::string(s.substr(pos, p - pos)), pos);
    return p;
  }

  // Lexes a string literal whose quote is at `pos`; returns the position after its closing quote.
  absl::StatusOr<size_t> LexString(size_t pos) {
    std::string_view s = src_;
    const char c = s[pos];
    std::string value;
    size_t p = pos + 1;
    while (true) {
      if (p >= s.size()) return Error(pos, "unterminated string literal");
      if (s[p] == c) break;
      if (s[p] == '\\' && p + 1 < s.size()) {
        KVSERVE_RETURN_IF_ERROR(Unescape(s, &p, value));
        continue;
      }
      value += s[p++];
    }
    Emit(Tok::kString, std::move(value), pos);
    return p + 1;
  }

  // Lexes an operator at `pos`, keeping brackets balanced (`balance` holds the closers
  // expected); returns the position after it.
  absl::StatusOr<size_t> LexOp(size_t pos, std::vector<char>& balance) {
    std::string_view s = src_;
    static constexpr std::string_view kOps[] = {"//", "**", "==", "!=", ">=", "<=", "+", "-", "/",
                                                "*",  "%",  "~",  "[",  "]",  "(",  ")", "{", "}",
                                                ">",  "<",  "=",  ".",  ":",  "|",  ",", ";"};
    std::string_view op;
    for (std::string_view candidate : kOps) {
      if (s.substr(pos, candidate.size()) == candidate) {
        op = candidate;
        break;
      }
    }
    if (op.empty())
      return Error(pos, absl::StrCat("unexpected character '", std::string(s.substr(pos, 1)), "'"));
    if (op == "(" || op == "[" || op == "{") {
      balance.push_back(op == "(" ? ')' : op == "[" ? ']' : '}');
    } else if (op == ")" || op == "]" || op == "}") {
      if (balance.empty()) return Error(pos, absl::StrCat("unexpected '", std::string(op), "'"));
      if (balance.back() != op[0]) {
        return Error(pos, absl::StrCat("unexpected '", std::string(op), "', expected '",
                                       std::string(1, balance.back()), "'"));
      }
      balance.pop_back();
    }
    Emit(Tok::kOp, std::string(op), pos);
    return pos + op.size();
  }

  // Python's unicode-escape for one backslash sequence at *p.
  absl::Status Unescape(std::string_view s, size_t* p, std::string& out) const {
    const size_t start = *p;
    const char e = s[start + 1];
    *p = start + 2;
    auto hex = [&](int n) -> absl::StatusOr<uint32_t> {
      if (*p + n > s.size()) return Error(start, "truncated \\x/\\u escape");
      uint32_t v = 0;
      for (int k = 0; k < n; ++k) {
        char h = s[*p + k];
        if (!std::isxdigit(static_cast<unsigned char>(h))) {
          return Error(start, "truncated \\x/\\u escape");
        }
        v = v * 16 + static_cast<uint32_t>(std::isdigit(static_cast<unsigned char>(h))
                                               ? h - '0'
                                               : std::tolower(h) - 'a' + 10);
      }
      *p += n;
      return v;
    };
    switch (e) {
      case 'n':
        out += '\n';
        return absl::OkStatus();
      case 't':
        out += '\t';
        return absl::OkStatus();
      case 'r':
        out += '\r';
        return absl::OkStatus();
      case '\\':
      case '\'':
      case '"':
        out += e;
        return absl::OkStatus();
      case 'a':
        out += '\a';
        return absl::OkStatus();
      case 'b':
        out += '\b';
        return absl::OkStatus();
      case 'f':
        out += '\f';
        return absl::OkStatus();
      case 'v':
        out += '\v';
        return absl::OkStatus();
      case '\n':
        return absl::OkStatus();
      case 'x': {
        KVSERVE_ASSIGN_OR_RETURN(uint32_t v, hex(2));
        AppendUtf8(v, out);
        return absl::OkStatus();
      }
      case 'u': {
        KVSERVE_ASSIGN_OR_RETURN(uint32_t v, hex(4));
        AppendUtf8(v, out);
        return absl::OkStatus();
      }
      case 'U': {
        KVSERVE_ASSIGN_OR_RETURN(uint32_t v, hex(8));
        if (v > 0x10FFFF) return Error(start, "illegal \\U escape");
        AppendUtf8(v, out);
        return absl::OkStatus();
      }
      default:
        if (e >= '0' && e <= '7') {
          uint32_t v = static_cast<uint32_t>(e - '0');
          for (int k = 0; k < 2 && *p < s.size() && s[*p] >= '0' && s[*p] <= '7'; ++k) {
            v = v * 8 + static_cast<uint32_t>(s[(*p)++] - '0');
          }
          AppendUtf8(v, out);
          return absl::OkStatus();
        }
        if (e == 'N') return Error(start, "\\N{...} escapes are not supported");
        out += '\\';
        *p = start + 1;  // keep the backslash; the next character is read as itself
        return absl::OkStatus();
    }
  }

  std::string src_;
  std::vector<size_t> line_starts_;
  std::vector<Token> tokens_;
};

// ---- Parser -----------------------------------------------------------------------------------

class Parser {
 public:
  explicit Parser(std::vector<Token> tokens) : toks_(std::move(tokens)) {}

  absl::StatusOr<StmtList> ParseAll() {
    StmtList out;
    std::string end;
    KVSERVE_RETURN_IF_ERROR(Subparse({}, out, &end));
    return out;
  }

 private:
  const Token& Cur() const { return toks_[pos_]; }
  const Token& Peek(size_t n = 1) const { return toks_[std::min(pos_ + n, toks_.size() - 1)]; }
  void Next() {
    if (pos_ + 1 < toks_.size()) ++pos_;
  }
  bool IsOp(std::string_view op) const { return Cur().type == Tok::kOp && Cur().text == op; }
  bool IsName(std::string_view name) const {
    return Cur().type == Tok::kName && Cur().text == name;
  }
  bool SkipOp(std::string_view op) {
    if (!IsOp(op)) return false;
    Next();
    return true;
  }
  bool SkipName(std::string_view name) {
    if (!IsName(name)) return false;
    Next();
    return true;
  }
  absl::Status ErrorAt(const Token& t, std::string_view message) const {
    return absl::InvalidArgumentError(absl::StrCat("template syntax error at line ", t.line,
                                                   ", column ", t.column, ": ",
                                                   std::string(message)));
  }
  std::string Describe(const Token& t) const {
    if (t.type == Tok::kName || t.type == Tok::kOp) return absl::StrCat("'", t.text, "'");
    return std::string(TokName(t.type));
  }
  absl::Status ExpectOp(std::string_view op) {
    if (!SkipOp(op)) {
      return ErrorAt(Cur(),
                     absl::StrCat("expected '", std::string(op), "', got ", Describe(Cur())));
    }
    return absl::OkStatus();
  }
  absl::StatusOr<std::string> ExpectName() {
    if (Cur().type != Tok::kName) {
      return ErrorAt(Cur(), absl::StrCat("expected a name, got ", Describe(Cur())));
    }
    std::string name = Cur().text;
    Next();
    return name;
  }
  absl::Status ExpectBlockEnd() {
    if (Cur().type != Tok::kBlockEnd) {
      return ErrorAt(Cur(), absl::StrCat("expected end of statement block, got ", Describe(Cur())));
    }
    Next();
    return absl::OkStatus();
  }

  // Parses statements until a block tag whose name is in `ends` (consumed up to and including the
  // name; *end receives it), or the end of the template when `ends` is empty.
  absl::Status Subparse(const std::set<std::string>& ends, StmtList& out, std::string* end) {
    while (true) {
      const Token& t = Cur();
      switch (t.type) {
        case Tok::kEof:
          if (!ends.empty()) {
            std::string names;
            for (const auto& e : ends) names += (names.empty() ? "'" : " or '") + e + "'";
            return ErrorAt(t, absl::StrCat("unexpected end of template, expected ", names));
          }
          return absl::OkStatus();
        case Tok::kData: {
          auto stmt = NewStmt(Stmt::Kind::kText, t);
          stmt->text = t.text;
          out.push_back(std::move(stmt));
          Next();
          break;
        }
        case Tok::kVarBegin: {
          auto stmt = NewStmt(Stmt::Kind::kOutput, t);
          Next();
          KVSERVE_ASSIGN_OR_RETURN(stmt->expr, ParseTuple(true));
          if (Cur().type != Tok::kVarEnd) {
            return ErrorAt(Cur(), absl::StrCat("expected '}}', got ", Describe(Cur())));
          }
          Next();
          out.push_back(std::move(stmt));
          break;
        }
        case Tok::kBlockBegin: {
          Next();
          if (Cur().type != Tok::kName) {
            return ErrorAt(Cur(), absl::StrCat("expected a tag name, got ", Describe(Cur())));
          }
          if (ends.count(Cur().text)) {
            *end = Cur().text;
            Next();
            return absl::OkStatus();
          }
          KVSERVE_RETURN_IF_ERROR(ParseStatement(out));
          break;
        }
        default:
          return ErrorAt(t, absl::StrCat("unexpected ", Describe(t)));
      }
    }
  }

  std::unique_ptr<Stmt> NewStmt(Stmt::Kind kind, const Token& t) {
    auto s = std::make_unique<Stmt>();
    s->kind = kind;
    s->line = t.line;
    s->column = t.column;
    return s;
  }

  absl::Status ParseStatement(StmtList& out) {
    if (++depth_ > kMaxDepth) return ErrorAt(Cur(), "blocks nested too deeply");
    absl::Status status = ParseStatementInner(out);
    --depth_;
    return status;
  }

  absl::Status ParseStatementInner(StmtList& out) {
    const Token tag = Cur();
    const std::string& name = tag.text;
    if (name == "if") return ParseIf(out);
    if (name == "for") return ParseFor(out);
    if (name == "set") return ParseSet(out);
    if (name == "macro") return ParseMacro(out);
    if (name == "break" || name == "continue") {
      if (loop_depth_ == 0) return ErrorAt(tag, absl::StrCat("'", name, "' outside of a loop"));
      Next();
      KVSERVE_RETURN_IF_ERROR(ExpectBlockEnd());
      out.push_back(NewStmt(name == "break" ? Stmt::Kind::kBreak : Stmt::Kind::kContinue, tag));
      return absl::OkStatus();
    }
    if (name == "generation") {
      Next();
      KVSERVE_RETURN_IF_ERROR(ExpectBlockEnd());
      auto stmt = NewStmt(Stmt::Kind::kScope, tag);
      std::string end;
      KVSERVE_RETURN_IF_ERROR(Subparse({"endgeneration"}, stmt->body, &end));
      KVSERVE_RETURN_IF_ERROR(ExpectBlockEnd());
      out.push_back(std::move(stmt));
      return absl::OkStatus();
    }
    if (name == "filter") {
      Next();
      auto stmt = NewStmt(Stmt::Kind::kFilterBlock, tag);
      KVSERVE_ASSIGN_OR_RETURN(stmt->expr, ParseFilterChain(nullptr, true));
      KVSERVE_RETURN_IF_ERROR(ExpectBlockEnd());
      std::string end;
      KVSERVE_RETURN_IF_ERROR(Subparse({"endfilter"}, stmt->body, &end));
      KVSERVE_RETURN_IF_ERROR(ExpectBlockEnd());
      out.push_back(std::move(stmt));
      return absl::OkStatus();
    }
    static const std::set<std::string> kUnsupported = {
        "include", "extends",    "import", "from",  "block",     "raw",   "call",
        "with",    "autoescape", "do",     "trans", "pluralize", "endraw"};
    if (kUnsupported.count(name)) {
      return ErrorAt(tag, absl::StrCat("the '", name, "' tag is not supported"));
    }
    return ErrorAt(tag, absl::StrCat("unknown tag '", name, "'"));
  }

  absl::Status ParseIf(StmtList& out) {
    auto stmt = NewStmt(Stmt::Kind::kIf, Cur());
    Next();
    while (true) {
      KVSERVE_ASSIGN_OR_RETURN(ExprPtr cond, ParseTuple(false));
      KVSERVE_RETURN_IF_ERROR(ExpectBlockEnd());
      stmt->conditions.push_back(std::move(cond));
      stmt->bodies.emplace_back();
      std::string end;
      KVSERVE_RETURN_IF_ERROR(Subparse({"elif", "else", "endif"}, stmt->bodies.back(), &end));
      if (end == "elif") continue;
      if (end == "else") {
        KVSERVE_RETURN_IF_ERROR(ExpectBlockEnd());
        stmt->bodies.emplace_back();
        KVSERVE_RETURN_IF_ERROR(Subparse({"endif"}, stmt->bodies.back(), &end));
      }
      KVSERVE_RETURN_IF_ERROR(ExpectBlockEnd());
      break;
    }
    out.push_back(std::move(stmt));
    return absl::OkStatus();
  }

  absl::Status ParseTargets(std::vector<std::string>& targets) {
    bool parens = SkipOp("(");
    while (true) {
      KVSERVE_ASSIGN_OR_RETURN(std::string name, ExpectName());
      targets.push_back(std::move(name));
      if (!SkipOp(",")) break;
      if (Cur().type != Tok::kName || IsName("in")) break;
    }
    if (parens) KVSERVE_RETURN_IF_ERROR(ExpectOp(")"));
    return absl::OkStatus();
  }

  absl::Status ParseFor(StmtList& out) {
    auto stmt = NewStmt(Stmt::Kind::kFor, Cur());
    Next();
    KVSERVE_RETURN_IF_ERROR(ParseTargets(stmt->targets));
    if (!SkipName("in"))
      return ErrorAt(Cur(), absl::StrCat("expected 'in', got ", Describe(Cur())));
    KVSERVE_ASSIGN_OR_RETURN(stmt->expr, ParseTuple(false));
    if (SkipName("if")) {
      KVSERVE_ASSIGN_OR_RETURN(stmt->condition, ParseExpression(true));
    }
    if (IsName("recursive")) return ErrorAt(Cur(), "recursive loops are not supported");
    KVSERVE_RETURN_IF_ERROR(ExpectBlockEnd());
    ++loop_depth_;
    std::string end;
    KVSERVE_RETURN_IF_ERROR(Subparse({"endfor", "else"}, stmt->body, &end));
    --loop_depth_;
    if (end == "else") {
      KVSERVE_RETURN_IF_ERROR(ExpectBlockEnd());
      KVSERVE_RETURN_IF_ERROR(Subparse({"endfor"}, stmt->else_body, &end));
    }
    KVSERVE_RETURN_IF_ERROR(ExpectBlockEnd());
    out.push_back(std::move(stmt));
    return absl::OkStatus();
  }

  absl::Status ParseSet(StmtList& out) {
    const Token tag = Cur();
    Next();
    if (Cur().type == Tok::kName && Peek().type == Tok::kOp && Peek().text == ".") {
      auto stmt = NewStmt(Stmt::Kind::kSet, tag);
      auto ns = std::make_unique<Expr>();
      ns->kind = Expr::Kind::kName;
      ns->name = Cur().text;
      ns->line = Cur().line;
      ns->column = Cur().column;
      Next();
      Next();
      KVSERVE_ASSIGN_OR_RETURN(std::string attr, ExpectName());
      stmt->attr_target = std::move(ns);
      stmt->targets.push_back(std::move(attr));
      KVSERVE_RETURN_IF_ERROR(ExpectOp("="));
      KVSERVE_ASSIGN_OR_RETURN(stmt->expr, ParseTuple(true));
      KVSERVE_RETURN_IF_ERROR(ExpectBlockEnd());
      out.push_back(std::move(stmt));
      return absl::OkStatus();
    }
    std::vector<std::string> targets;
    KVSERVE_RETURN_IF_ERROR(ParseTargets(targets));
    if (SkipOp("=")) {
      auto stmt = NewStmt(Stmt::Kind::kSet, tag);
      stmt->targets = std::move(targets);
      KVSERVE_ASSIGN_OR_RETURN(stmt->expr, ParseTuple(true));
      KVSERVE_RETURN_IF_ERROR(ExpectBlockEnd());
      out.push_back(std::move(stmt));
      return absl::OkStatus();
    }
    if (targets.size() != 1) return ErrorAt(Cur(), "a block set takes one name");
    auto stmt = NewStmt(Stmt::Kind::kSetBlock, tag);
    stmt->targets = std::move(targets);
    if (IsOp("|")) {
      KVSERVE_ASSIGN_OR_RETURN(stmt->expr, ParseFilterChain(nullptr, false));
    }
    KVSERVE_RETURN_IF_ERROR(ExpectBlockEnd());
    std::string end;
    KVSERVE_RETURN_IF_ERROR(Subparse({"endset"}, stmt->body, &end));
    KVSERVE_RETURN_IF_ERROR(ExpectBlockEnd());
    out.push_back(std::move(stmt));
    return absl::OkStatus();
  }

  absl::Status ParseMacro(StmtList& out) {
    auto stmt = NewStmt(Stmt::Kind::kMacro, Cur());
    Next();
    KVSERVE_ASSIGN_OR_RETURN(stmt->text, ExpectName());
    KVSERVE_RETURN_IF_ERROR(ExpectOp("("));
    while (!IsOp(")")) {
      if (!stmt->params.empty()) KVSERVE_RETURN_IF_ERROR(ExpectOp(","));
      if (IsOp(")")) break;
      KVSERVE_ASSIGN_OR_RETURN(std::string param, ExpectName());
      stmt->params.push_back(std::move(param));
      ExprPtr def;
      if (SkipOp("=")) {
        KVSERVE_ASSIGN_OR_RETURN(def, ParseExpression(true));
      } else if (!stmt->defaults.empty() && stmt->defaults.back() != nullptr) {
        return ErrorAt(Cur(), "non-default argument follows default argument");
      }
      stmt->defaults.push_back(std::move(def));
    }
    Next();
    KVSERVE_RETURN_IF_ERROR(ExpectBlockEnd());
    const int saved_depth = loop_depth_;
    loop_depth_ = 0;
    std::string end;
    KVSERVE_RETURN_IF_ERROR(Subparse({"endmacro"}, stmt->body, &end));
    loop_depth_ = saved_depth;
    if (Cur().type == Tok::kName) Next();  // {% endmacro name %}
    KVSERVE_RETURN_IF_ERROR(ExpectBlockEnd());
    out.push_back(std::move(stmt));
    return absl::OkStatus();
  }

  // ---- expressions ----

  ExprPtr NewExpr(Expr::Kind kind, const Token& t) {
    auto e = std::make_unique<Expr>();
    e->kind = kind;
    e->line = t.line;
    e->column = t.column;
    return e;
  }

  // A comma-separated list of expressions: a tuple when there is a comma.
  absl::StatusOr<ExprPtr> ParseTuple(bool with_condexpr) {
    const Token start = Cur();
    std::vector<ExprPtr> items;
    bool comma = false;
    while (true) {
      if (!items.empty()) {
        if (!SkipOp(",")) break;
        comma = true;
        if (Cur().type == Tok::kBlockEnd || Cur().type == Tok::kVarEnd || IsOp(")") ||
            IsName("if")) {
          break;
        }
      }
      KVSERVE_ASSIGN_OR_RETURN(ExprPtr e, ParseExpression(with_condexpr));
      items.push_back(std::move(e));
    }
    if (!comma) return std::move(items[0]);
    auto tuple = NewExpr(Expr::Kind::kTuple, start);
    tuple->args = std::move(items);
    return tuple;
  }

  absl::StatusOr<ExprPtr> ParseExpression(bool with_condexpr) {
    if (++depth_ > kMaxDepth) return ErrorAt(Cur(), "expression nested too deeply");
    absl::StatusOr<ExprPtr> e = ParseExpressionInner(with_condexpr);
    --depth_;
    return e;
  }

  absl::StatusOr<ExprPtr> ParseExpressionInner(bool with_condexpr) {
    if (!with_condexpr) return ParseOr();
    KVSERVE_ASSIGN_OR_RETURN(ExprPtr expr, ParseOr());
    while (IsName("if")) {
      const Token t = Cur();
      Next();
      KVSERVE_ASSIGN_OR_RETURN(ExprPtr cond, ParseOr());
      ExprPtr otherwise;
      if (SkipName("else")) {
        KVSERVE_ASSIGN_OR_RETURN(otherwise, ParseExpression(true));
      }
      auto node = NewExpr(Expr::Kind::kCondition, t);
      node->args.push_back(std::move(cond));
      node->args.push_back(std::move(expr));
      node->args.push_back(std::move(otherwise));
      KVSERVE_RETURN_IF_ERROR(Grow(*node));
      expr = std::move(node);
    }
    return expr;
  }

  // Sets node.height from its children; an error past kMaxHeight (chains of postfix operators,
  // filters and conditions are built by loops, not recursion, so depth_ does not bound them).
  absl::Status Grow(Expr& node) {
    int h = 0;
    for (const auto& a : node.args) {
      if (a) h = std::max(h, a->height);
    }
    for (const auto& [k, a] : node.kwargs) h = std::max(h, a->height);
    node.height = h + 1;
    if (node.height > kMaxHeight) {
      return absl::InvalidArgumentError(absl::StrCat("template syntax error at line ", node.line,
                                                     ", column ", node.column,
                                                     ": expression too long"));
    }
    return absl::OkStatus();
  }

  absl::StatusOr<ExprPtr> Binary(const Token& t, std::string op, ExprPtr a, ExprPtr b) {
    const int height = 1 + std::max(a->height, b->height);
    if (height > kMaxHeight) return ErrorAt(t, "expression too long");
    auto node = NewExpr(Expr::Kind::kBinary, t);
    node->height = height;
    node->name = std::move(op);
    node->args.push_back(std::move(a));
    node->args.push_back(std::move(b));
    return node;
  }

  absl::StatusOr<ExprPtr> ParseOr() {
    KVSERVE_ASSIGN_OR_RETURN(ExprPtr left, ParseAnd());
    while (IsName("or")) {
      const Token t = Cur();
      Next();
      KVSERVE_ASSIGN_OR_RETURN(ExprPtr right, ParseAnd());
      KVSERVE_ASSIGN_OR_RETURN(left, Binary(t, "or", std::move(left), std::move(right)));
    }
    return left;
  }

  absl::StatusOr<ExprPtr> ParseAnd() {
    KVSERVE_ASSIGN_OR_RETURN(ExprPtr left, ParseNot());
    while (IsName("and")) {
      const Token t = Cur();
      Next();
      KVSERVE_ASSIGN_OR_RETURN(ExprPtr right, ParseNot());
      KVSERVE_ASSIGN_OR_RETURN(left, Binary(t, "and", std::move(left), std::move(right)));
    }
    return left;
  }

  absl::StatusOr<ExprPtr> ParseNot() {
    if (IsName("not")) {
      const Token t = Cur();
      Next();
      if (++depth_ > kMaxDepth) return ErrorAt(t, "expression nested too deeply");
      absl::StatusOr<ExprPtr> inner = ParseNot();
      --depth_;
      KVSERVE_ASSIGN_OR_RETURN(ExprPtr operand, std::move(inner));
      auto node = NewExpr(Expr::Kind::kUnary, t);
      node->name = "not";
      node->args.push_back(std::move(operand));
      return node;
    }
    return ParseCompare();
  }

  absl::StatusOr<ExprPtr> ParseCompare() {
    KVSERVE_ASSIGN_OR_RETURN(ExprPtr left, ParseMath1());
    int count = 0;
    while (true) {
      const Token t = Cur();
      std::string op;
      if (t.type == Tok::kOp && (t.text == "==" || t.text == "!=" || t.text == "<" ||
                                 t.text == "<=" || t.text == ">" || t.text == ">=")) {
        op = t.text;
        Next();
      } else if (IsName("in")) {
        op = "in";
        Next();
      } else if (IsName("not") && Peek().type == Tok::kName && Peek().text == "in") {
        op = "notin";
        Next();
        Next();
      } else {
        break;
      }
      if (++count > 1) return ErrorAt(t, "chained comparisons are not supported");
      KVSERVE_ASSIGN_OR_RETURN(ExprPtr right, ParseMath1());
      KVSERVE_ASSIGN_OR_RETURN(left, Binary(t, op, std::move(left), std::move(right)));
    }
    return left;
  }

  absl::StatusOr<ExprPtr> ParseMath1() {
    KVSERVE_ASSIGN_OR_RETURN(ExprPtr left, ParseConcat());
    while (IsOp("+") || IsOp("-")) {
      const Token t = Cur();
      Next();
      KVSERVE_ASSIGN_OR_RETURN(ExprPtr right, ParseConcat());
      KVSERVE_ASSIGN_OR_RETURN(left, Binary(t, t.text, std::move(left), std::move(right)));
    }
    return left;
  }

  absl::StatusOr<ExprPtr> ParseConcat() {
    KVSERVE_ASSIGN_OR_RETURN(ExprPtr left, ParseMath2());
    while (IsOp("~")) {
      const Token t = Cur();
      Next();
      KVSERVE_ASSIGN_OR_RETURN(ExprPtr right, ParseMath2());
      KVSERVE_ASSIGN_OR_RETURN(left, Binary(t, "~", std::move(left), std::move(right)));
    }
    return left;
  }

  absl::StatusOr<ExprPtr> ParseMath2() {
    KVSERVE_ASSIGN_OR_RETURN(ExprPtr left, ParsePow());
    while (IsOp("*") || IsOp("/") || IsOp("//") || IsOp("%")) {
      const Token t = Cur();
      Next();
      KVSERVE_ASSIGN_OR_RETURN(ExprPtr right, ParsePow());
      KVSERVE_ASSIGN_OR_RETURN(left, Binary(t, t.text, std::move(left), std::move(right)));
    }
    return left;
  }

  absl::StatusOr<ExprPtr> ParsePow() {
    KVSERVE_ASSIGN_OR_RETURN(ExprPtr left, ParseUnary(true));
    while (IsOp("**")) {
      const Token t = Cur();
      Next();
      KVSERVE_ASSIGN_OR_RETURN(ExprPtr right, ParseUnary(true));
      KVSERVE_ASSIGN_OR_RETURN(left, Binary(t, "**", std::move(left), std::move(right)));
    }
    return left;
  }

  absl::StatusOr<ExprPtr> ParseUnary(bool with_filter) {
    if (++depth_ > kMaxDepth) return ErrorAt(Cur(), "expression nested too deeply");
    absl::StatusOr<ExprPtr> node = ParseUnaryInner(with_filter);
    --depth_;
    return node;
  }

  absl::StatusOr<ExprPtr> ParseUnaryInner(bool with_filter) {
    ExprPtr node;
    if (IsOp("-") || IsOp("+")) {
      const Token t = Cur();
      Next();
      KVSERVE_ASSIGN_OR_RETURN(ExprPtr operand, ParseUnary(false));
      node = NewExpr(Expr::Kind::kUnary, t);
      node->name = t.text;
      node->args.push_back(std::move(operand));
    } else {
      KVSERVE_ASSIGN_OR_RETURN(node, ParsePrimary());
    }
    KVSERVE_ASSIGN_OR_RETURN(node, ParsePostfix(std::move(node)));
    if (with_filter) {
      KVSERVE_ASSIGN_OR_RETURN(node, ParseFilterExpr(std::move(node)));
    }
    return node;
  }

  // A literal, a name, a parenthesized expression or tuple, or a list or dict display.
  absl::StatusOr<ExprPtr> ParsePrimary() {
    const Token t = Cur();
    switch (t.type) {
      case Tok::kName:
        Next();
        return NameOrConstant(t);
      case Tok::kString:
        return ParseStrings(t);
      case Tok::kInt: {
        Next();
        auto node = NewExpr(Expr::Kind::kLiteral, t);
        node->value = Value::Int(t.int_value);
        return node;
      }
      case Tok::kFloat: {
        Next();
        auto node = NewExpr(Expr::Kind::kLiteral, t);
        node->value = Value::Float(t.float_value);
        return node;
      }
      case Tok::kOp:
        if (t.text == "(") return ParseParenthesized(t);
        if (t.text == "[") return ParseListDisplay(t);
        if (t.text == "{") return ParseDictDisplay(t);
        break;
      default:
        break;
    }
    return ErrorAt(t, absl::StrCat("unexpected ", Describe(t)));
  }

  // The name token `t` (already consumed): true/false/none (either case) or a variable name.
  ExprPtr NameOrConstant(const Token& t) {
    auto node = NewExpr(Expr::Kind::kLiteral, t);
    if (t.text == "true" || t.text == "True") {
      node->value = Value::Bool(true);
    } else if (t.text == "false" || t.text == "False") {
      node->value = Value::Bool(false);
    } else if (t.text == "none" || t.text == "None") {
      node->value = Value::None();
    } else {
      node->kind = Expr::Kind::kName;
      node->name = t.text;
    }
    return node;
  }

  // Adjacent string literals, concatenated, from `t` (the current token) on.
  ExprPtr ParseStrings(const Token& t) {
    std::string text;
    while (Cur().type == Tok::kString) {
      text += Cur().text;
      Next();
    }
    auto node = NewExpr(Expr::Kind::kLiteral, t);
    node->value = Value::TemplateString(std::move(text));
    return node;
  }

  // "()" (the empty tuple) or "(" expression or tuple ")"; `t` is the current "(".
  absl::StatusOr<ExprPtr> ParseParenthesized(const Token& t) {
    Next();
    if (SkipOp(")")) return NewExpr(Expr::Kind::kTuple, t);
    KVSERVE_ASSIGN_OR_RETURN(ExprPtr inner, ParseTuple(true));
    KVSERVE_RETURN_IF_ERROR(ExpectOp(")"));
    return inner;
  }

  // "[" items "]" with an optional trailing comma; `t` is the current "[".
  absl::StatusOr<ExprPtr> ParseListDisplay(const Token& t) {
    Next();
    auto node = NewExpr(Expr::Kind::kList, t);
    while (!IsOp("]")) {
      if (!node->args.empty()) {
        KVSERVE_RETURN_IF_ERROR(ExpectOp(","));
        if (IsOp("]")) break;
      }
      KVSERVE_ASSIGN_OR_RETURN(ExprPtr item, ParseExpression(true));
      node->args.push_back(std::move(item));
    }
    Next();
    return node;
  }

  // "{" key ":" value pairs "}" with an optional trailing comma (args: key, value, key, ...);
  // `t` is the current "{".
  absl::StatusOr<ExprPtr> ParseDictDisplay(const Token& t) {
    Next();
    auto node = NewExpr(Expr::Kind::kDict, t);
    while (!IsOp("}")) {
      if (!node->args.empty()) {
        KVSERVE_RETURN_IF_ERROR(ExpectOp(","));
        if (IsOp("}")) break;
      }
      KVSERVE_ASSIGN_OR_RETURN(ExprPtr key, ParseExpression(true));
      KVSERVE_RETURN_IF_ERROR(ExpectOp(":"));
      KVSERVE_ASSIGN_OR_RETURN(ExprPtr value, ParseExpression(true));
      node->args.push_back(std::move(key));
      node->args.push_back(std::move(value));
    }
    Next();
    return node;
  }

  absl::StatusOr<ExprPtr> ParsePostfix(ExprPtr node) {
    while (true) {
      KVSERVE_RETURN_IF_ERROR(Grow(*node));
      const Token t = Cur();
      if (IsOp(".")) {
        Next();
        if (Cur().type == Tok::kName) {
          auto attr = NewExpr(Expr::Kind::kGetAttr, t);
          attr->name = Cur().text;
          attr->args.push_back(std::move(node));
          node = std::move(attr);
          Next();
        } else if (Cur().type == Tok::kInt) {
          auto item = NewExpr(Expr::Kind::kGetItem, t);
          auto index = NewExpr(Expr::Kind::kLiteral, Cur());
          index->value = Value::Int(Cur().int_value);
          item->args.push_back(std::move(node));
          item->args.push_back(std::move(index));
          node = std::move(item);
          Next();
        } else {
          return ErrorAt(Cur(), absl::StrCat("expected a name after '.', got ", Describe(Cur())));
        }
      } else if (IsOp("[")) {
        Next();
        KVSERVE_ASSIGN_OR_RETURN(node, ParseSubscript(std::move(node), t));
      } else if (IsOp("(")) {
        KVSERVE_ASSIGN_OR_RETURN(node, ParseCall(std::move(node)));
      } else {
        return node;
      }
    }
  }

  absl::StatusOr<ExprPtr> ParseSubscript(ExprPtr base, const Token& t) {
    std::vector<ExprPtr> parts;  // up to start, stop, step
    bool slice = false;
    ExprPtr current;
    if (!IsOp(":")) {
      KVSERVE_ASSIGN_OR_RETURN(current, ParseExpression(true));
    }
    if (IsOp(":")) {
      slice = true;
      parts.push_back(std::move(current));
      for (int k = 0; k < 2 && SkipOp(":"); ++k) {
        ExprPtr part;
        if (!IsOp(":") && !IsOp("]")) {
          KVSERVE_ASSIGN_OR_RETURN(part, ParseExpression(true));
        }
        parts.push_back(std::move(part));
      }
    }
    if (IsOp(",")) return ErrorAt(Cur(), "tuple subscripts are not supported");
    KVSERVE_RETURN_IF_ERROR(ExpectOp("]"));
    if (!slice) {
      auto node = NewExpr(Expr::Kind::kGetItem, t);
      node->args.push_back(std::move(base));
      node->args.push_back(std::move(current));
      return node;
    }
    auto node = NewExpr(Expr::Kind::kSlice, t);
    node->args.push_back(std::move(base));
    parts.resize(3);
    for (auto& p : parts) node->args.push_back(std::move(p));
    return node;
  }

  absl::Status ParseCallArgs(Expr& node) {
    KVSERVE_RETURN_IF_ERROR(ExpectOp("("));
    bool first = true;
    while (!IsOp(")")) {
      if (!first) {
        KVSERVE_RETURN_IF_ERROR(ExpectOp(","));
        if (IsOp(")")) break;
      }
      first = false;
      if (IsOp("*") || IsOp("**")) return ErrorAt(Cur(), "*args and **kwargs are not supported");
      if (Cur().type == Tok::kName && Peek().type == Tok::kOp && Peek().text == "=") {
        std::string key = Cur().text;
        Next();
        Next();
        KVSERVE_ASSIGN_OR_RETURN(ExprPtr value, ParseExpression(true));
        node.kwargs.emplace_back(std::move(key), std::move(value));
      } else {
        if (!node.kwargs.empty()) {
          return ErrorAt(Cur(), "positional argument follows keyword argument");
        }
        KVSERVE_ASSIGN_OR_RETURN(ExprPtr value, ParseExpression(true));
        node.args.push_back(std::move(value));
      }
    }
    Next();
    return absl::OkStatus();
  }

  absl::StatusOr<ExprPtr> ParseCall(ExprPtr callee) {
    auto node = NewExpr(Expr::Kind::kCall, Cur());
    node->args.push_back(std::move(callee));
    KVSERVE_RETURN_IF_ERROR(ParseCallArgs(*node));
    return node;
  }

  absl::StatusOr<std::string> ParseDottedName() {
    KVSERVE_ASSIGN_OR_RETURN(std::string name, ExpectName());
    while (IsOp(".")) {
      Next();
      KVSERVE_ASSIGN_OR_RETURN(std::string part, ExpectName());
      name += "." + part;
    }
    return name;
  }

  // `| name(args) | name ...`; with start_inline the first '|' is implied.
  absl::StatusOr<ExprPtr> ParseFilterChain(ExprPtr node, bool start_inline) {
    while (IsOp("|") || start_inline) {
      if (!start_inline) Next();
      start_inline = false;
      const Token t = Cur();
      auto filter = NewExpr(Expr::Kind::kFilter, t);
      KVSERVE_ASSIGN_OR_RETURN(filter->name, ParseDottedName());
      filter->args.push_back(std::move(node));
      if (IsOp("(")) KVSERVE_RETURN_IF_ERROR(ParseCallArgs(*filter));
      KVSERVE_RETURN_IF_ERROR(Grow(*filter));
      node = std::move(filter);
    }
    return node;
  }

  absl::StatusOr<ExprPtr> ParseFilterExpr(ExprPtr node) {
    while (true) {
      if (IsOp("|")) {
        KVSERVE_ASSIGN_OR_RETURN(node, ParseFilterChain(std::move(node), false));
      } else if (IsName("is")) {
        const Token t = Cur();
        Next();
        auto test = NewExpr(Expr::Kind::kTest, t);
        test->negated = SkipName("not");
        KVSERVE_ASSIGN_OR_RETURN(test->name, ParseDottedName());
        test->args.push_back(std::move(node));
        const Token& c = Cur();
        if (IsOp("(")) {
          KVSERVE_RETURN_IF_ERROR(ParseCallArgs(*test));
        } else if ((c.type == Tok::kName || c.type == Tok::kString || c.type == Tok::kInt ||
                    c.type == Tok::kFloat || IsOp("(") || IsOp("[") || IsOp("{")) &&
                   !IsName("else") && !IsName("or") && !IsName("and")) {
          if (IsName("is")) return ErrorAt(c, "you cannot chain multiple tests with is");
          KVSERVE_ASSIGN_OR_RETURN(ExprPtr arg, ParsePrimary());
          KVSERVE_ASSIGN_OR_RETURN(arg, ParsePostfix(std::move(arg)));
          test->args.push_back(std::move(arg));
        }
        KVSERVE_RETURN_IF_ERROR(Grow(*test));
        node = std::move(test);
      } else if (IsOp("(")) {
        KVSERVE_ASSIGN_OR_RETURN(node, ParseCall(std::move(node)));
      } else {
        return node;
      }
    }
  }

  static constexpr int kMaxDepth = 200;    // nesting of blocks and of expressions
  static constexpr int kMaxHeight = 1000;  // a chain of binary operators

  std::vector<Token> toks_;
  size_t pos_ = 0;
  int loop_depth_ = 0;
  int depth_ = 0;
};

}  // namespace

absl::StatusOr<StmtList> ParseTemplate(std::string_view source) {
  Lexer lexer(source);
  KVSERVE_ASSIGN_OR_RETURN(std::vector<Token> tokens, lexer.Run());
  Parser parser(std::move(tokens));
  return parser.ParseAll();
}

}  // namespace kvserve::engine::chat
