#include "engine/chat/jinja_eval.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
#include <optional>
#include <set>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "engine/chat/utf8.h"
#include "engine/common/status_macros.h"

namespace kvserve::engine::chat {
namespace {

// Bounds that keep a hostile or broken template from exhausting memory or the stack.
constexpr int64_t kMaxTextBytes = int64_t{64} << 20;  // the rendered prompt, any string
constexpr int kMaxCallDepth = 200;                    // nested macro calls

const std::set<std::string, std::less<>>& FilterNames() {
  static const auto* names = new std::set<std::string, std::less<>>{
      "abs",   "capitalize", "count",      "d",       "default", "e",          "escape",  "first",
      "float", "indent",     "int",        "items",   "join",    "last",       "length",  "list",
      "lower", "map",        "max",        "min",     "reject",  "rejectattr", "replace", "reverse",
      "safe",  "select",     "selectattr", "sort",    "string",  "sum",        "title",   "tojson",
      "trim",  "unique",     "upper",      "dictsort"};
  return *names;
}

const std::set<std::string, std::less<>>& TestNames() {
  static const auto* names = new std::set<std::string, std::less<>>{
      "boolean", "callable", "defined",  "divisibleby", "eq",          "equalto",
      "even",    "false",    "float",    "ge",          "greaterthan", "gt",
      "in",      "integer",  "iterable", "le",          "lessthan",    "lower",
      "lt",      "mapping",  "ne",       "none",        "number",      "odd",
      "sameas",  "sequence", "string",   "true",        "undefined",   "upper",
      "==",      "!=",       "<",        "<=",          ">",           ">="};
  return *names;
}

std::string TypeName(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::kUndefined:
      return "Undefined";
    case Value::Kind::kNone:
      return "NoneType";
    case Value::Kind::kBool:
      return "bool";
    case Value::Kind::kInt:
      return "int";
    case Value::Kind::kFloat:
      return "float";
    case Value::Kind::kString:
      return "str";
    case Value::Kind::kList:
      return v.is_tuple() ? "tuple" : "list";
    case Value::Kind::kDict:
      return "dict";
    case Value::Kind::kNamespace:
      return "Namespace";
    case Value::Kind::kCallable:
      return "function";
  }
  return "object";
}

absl::Status UndefinedError(const Value& v) {
  return absl::InvalidArgumentError(
      v.name().empty() ? std::string("undefined value used")
                       : (v.name().front() == '\'' ? v.name() : "'" + v.name() + "' is undefined"));
}

// Python's str.strip family on code points.
Text StripImpl(const Text& text, const Value& chars, bool left, bool right) {
  const std::string& s = text.str();
  std::set<uint32_t> set;
  const bool by_chars = chars.is_string();
  if (by_chars) {
    size_t p = 0;
    while (p < chars.str().size()) set.insert(DecodeUtf8(chars.str(), &p));
  }
  auto strip = [&](uint32_t cp) { return by_chars ? set.count(cp) > 0 : IsPythonSpace(cp); };
  size_t begin = 0;
  size_t end = s.size();
  if (left) {
    while (begin < end) {
      size_t next = begin;
      if (!strip(DecodeUtf8(s, &next))) break;
      begin = next;
    }
  }
  if (right) {
    while (end > begin) {
      // The code point that ends at `end`: step back over continuation bytes (at most 3), and
      // check that decoding from there consumes exactly up to `end`.
      size_t start = end - 1;
      while (start > begin && end - start < 4 &&
             (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80) {
        --start;
      }
      size_t next = start;
      uint32_t cp = DecodeUtf8(s, &next);
      if (next != end) {  // not one well-formed sequence: the last byte stands alone
        start = end - 1;
        next = start;
        cp = DecodeUtf8(s, &next);
      }
      if (!strip(cp)) break;
      end = start;
    }
  }
  return text.Substr(begin, end - begin);
}

bool IsAscii(std::string_view s) {
  return std::all_of(s.begin(), s.end(),
                     [](char c) { return static_cast<unsigned char>(c) < 0x80; });
}

// Maps each byte of an ASCII text, keeping provenance.
template <typename F>
Text MapAscii(const Text& text, F fn) {
  Text out;
  size_t pos = 0;
  for (const auto& [len, tmpl] : text.Runs()) {
    std::string piece = text.str().substr(pos, len);
    for (size_t i = 0; i < piece.size(); ++i) piece[i] = fn(i + pos, piece[i]);
    out.Append(piece, tmpl);
    pos += len;
  }
  return out;
}

char Upper(char c) { return (c >= 'a' && c <= 'z') ? static_cast<char>(c - 32) : c; }
char Lower(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c + 32) : c; }
bool IsAlpha(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }

absl::StatusOr<Value> CaseMap(const Value& v, std::string_view how) {
  const Text& t = v.text();
  if (!IsAscii(t.str())) {
    return absl::UnimplementedError(absl::StrCat(
        "'", std::string(how), "' of non-ASCII text is not supported by this renderer"));
  }
  Text out;
  if (how == "upper") {
    out = MapAscii(t, [](size_t, char c) { return Upper(c); });
  } else if (how == "lower") {
    out = MapAscii(t, [](size_t, char c) { return Lower(c); });
  } else if (how == "capitalize") {
    out = MapAscii(t, [](size_t i, char c) { return i == 0 ? Upper(c) : Lower(c); });
  } else {  // title (Python str.title: a letter after a non-letter is upper-cased)
    const std::string& s = t.str();
    out = MapAscii(t, [&](size_t i, char c) {
      const bool after_letter = i > 0 && IsAlpha(s[i - 1]);
      return after_letter ? Lower(c) : Upper(c);
    });
  }
  return Value::String(std::move(out), v.markup());
}

Text HtmlEscape(const Text& text) {
  Text out;
  const std::string& s = text.str();
  for (size_t i = 0; i < s.size(); ++i) {
    const bool tmpl = text.FromTemplateAt(i);
    switch (s[i]) {
      case '&':
        out.Append("&amp;", tmpl);
        break;
      case '<':
        out.Append("&lt;", tmpl);
        break;
      case '>':
        out.Append("&gt;", tmpl);
        break;
      case '"':
        out.Append("&#34;", tmpl);
        break;
      case '\'':
        out.Append("&#39;", tmpl);
        break;
      default:
        out.Append(std::string_view(s).substr(i, 1), tmpl);
    }
  }
  return out;
}

// Python comparison for <, <=, >, >=: -1, 0, 1, or an error.
absl::StatusOr<int> Compare(const Value& a, const Value& b, std::string_view op) {
  if (a.is_number() && b.is_number()) {
    if (a.is_float() || b.is_float()) {
      double x = a.as_float(), y = b.as_float();
      return x < y ? -1 : (x > y ? 1 : 0);
    }
    int64_t x = a.as_int(), y = b.as_int();
    return x < y ? -1 : (x > y ? 1 : 0);
  }
  if (a.is_string() && b.is_string()) {
    int c = a.str().compare(b.str());
    return c < 0 ? -1 : (c > 0 ? 1 : 0);
  }
  if (a.is_list() && b.is_list() && a.is_tuple() == b.is_tuple()) {
    const ValueList &x = a.list(), &y = b.list();
    for (size_t i = 0; i < x.size() && i < y.size(); ++i) {
      if (x[i] == y[i]) continue;
      return Compare(x[i], y[i], op);
    }
    return x.size() < y.size() ? -1 : (x.size() > y.size() ? 1 : 0);
  }
  if (a.is_undefined()) return UndefinedError(a);
  if (b.is_undefined()) return UndefinedError(b);
  return absl::InvalidArgumentError(absl::StrCat("'", std::string(op),
                                                 "' not supported between instances of '",
                                                 TypeName(a), "' and '", TypeName(b), "'"));
}

absl::StatusOr<bool> Contains(const Value& container, const Value& item) {
  switch (container.kind()) {
    case Value::Kind::kUndefined:
      return false;
    case Value::Kind::kString:
      if (!item.is_string()) {
        return absl::InvalidArgumentError(
            absl::StrCat("'in <string>' requires string as left operand, not ", TypeName(item)));
      }
      return container.str().find(item.str()) != std::string::npos;
    case Value::Kind::kList:
      for (const Value& x : container.list()) {
        if (x == item) return true;
      }
      return false;
    case Value::Kind::kDict:
      for (const auto& [k, v] : container.dict()) {
        if (k == item) return true;
      }
      return false;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("argument of type '", TypeName(container), "' is not iterable"));
  }
}

// The items a for loop, list() or a filter iterates over.
absl::StatusOr<ValueList> Iterate(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::kUndefined:
      return ValueList{};
    case Value::Kind::kList:
      return v.list();
    case Value::Kind::kDict: {
      ValueList keys;
      for (const auto& [k, x] : v.dict()) keys.push_back(k);
      return keys;
    }
    case Value::Kind::kString: {
      ValueList chars;
      std::vector<size_t> offsets = CodePointOffsets(v.str());
      for (size_t i = 0; i + 1 < offsets.size(); ++i) {
        chars.push_back(
            Value::String(v.text().Substr(offsets[i], offsets[i + 1] - offsets[i]), v.markup()));
      }
      return chars;
    }
    default:
      return absl::InvalidArgumentError(absl::StrCat("'", TypeName(v), "' object is not iterable"));
  }
}

absl::StatusOr<int64_t> Length(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::kUndefined:
      return 0;
    case Value::Kind::kString:
      return static_cast<int64_t>(CodePointCount(v.str()));
    case Value::Kind::kList:
      return static_cast<int64_t>(v.list().size());
    case Value::Kind::kDict:
      return static_cast<int64_t>(v.dict().size());
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("object of type '", TypeName(v), "' has no len()"));
  }
}

// Python slice indices (PySlice_AdjustIndices).
void AdjustSlice(int64_t length, std::optional<int64_t> start_in, std::optional<int64_t> stop_in,
                 int64_t step, std::vector<int64_t>& indices) {
  int64_t start, stop;
  if (step > 0) {
    start = start_in.value_or(0);
    stop = stop_in.value_or(length);
    if (start < 0) start = std::max<int64_t>(0, start + length);
    if (stop < 0) stop = std::max<int64_t>(0, stop + length);
    start = std::min(start, length);
    stop = std::min(stop, length);
    for (int64_t i = start; i < stop; i += step) indices.push_back(i);
  } else {
    start = start_in.value_or(length - 1);
    stop = stop_in.value_or(-1);
    bool stop_default = !stop_in.has_value();
    if (start < 0) start = std::max<int64_t>(-1, start + length);
    if (!stop_default && stop < 0) stop = std::max<int64_t>(-1, stop + length);
    start = std::min(start, length - 1);
    stop = std::min(stop, length - 1);
    for (int64_t i = start; i > stop; i += step) indices.push_back(i);
  }
}

int64_t FloorDiv(int64_t a, int64_t b) {
  int64_t q = a / b;
  if ((a % b != 0) && ((a < 0) != (b < 0))) --q;
  return q;
}
int64_t FloorMod(int64_t a, int64_t b) {
  int64_t r = a % b;
  if (r != 0 && ((r < 0) != (b < 0))) r += b;
  return r;
}

Value Concat(const Value& a, const Value& b) {
  Text out = a.text();
  out.Append(b.text());
  return Value::String(std::move(out), false);
}

// "+" on two strings (markupsafe escapes a plain side joined to Markup) or two lists (or two
// tuples); nullopt for other operands.
std::optional<Value> AddSequences(const Value& a, const Value& b) {
  if (a.is_string() && b.is_string()) {
    if (a.markup() == b.markup()) {
      Value out = Concat(a, b);
      return a.markup() ? Value::String(out.text(), true) : out;
    }
    // str + Markup (or the reverse): markupsafe escapes the plain side.
    Text left = a.markup() ? a.text() : HtmlEscape(a.text());
    left.Append(b.markup() ? b.text() : HtmlEscape(b.text()));
    return Value::String(std::move(left), true);
  }
  if (a.is_list() && b.is_list() && a.is_tuple() == b.is_tuple()) {
    ValueList items = a.list();
    items.insert(items.end(), b.list().begin(), b.list().end());
    return a.is_tuple() ? Value::Tuple(std::move(items)) : Value::List(std::move(items));
  }
  return std::nullopt;
}

// "*" of a string or list (either side) by an int or bool count (negative counts as 0), bounded
// by kMaxTextBytes; nullopt when the other side is not a count.
std::optional<absl::StatusOr<Value>> RepeatSequence(const Value& a, const Value& b) {
  const Value& seq = (a.is_string() || a.is_list()) ? a : b;
  const Value& count = (a.is_string() || a.is_list()) ? b : a;
  if (!count.is_int() && !count.is_bool()) return std::nullopt;
  int64_t n = std::max<int64_t>(0, count.as_int());
  const int64_t unit = seq.is_string() ? static_cast<int64_t>(seq.text().size())
                                       : static_cast<int64_t>(seq.list().size());
  if (unit > 0 && n > kMaxTextBytes / unit) {
    return absl::ResourceExhaustedError("repetition result too large");
  }
  if (seq.is_string()) {
    const Text& t = seq.text();
    if (t.Runs().size() <= 1) {  // one provenance: repeat the bytes directly
      std::string repeated;
      repeated.reserve(static_cast<size_t>(n) * t.size());
      for (int64_t i = 0; i < n; ++i) repeated += t.str();
      return Value::String(Text(std::move(repeated), t.empty() || t.FromTemplateAt(0)),
                           seq.markup());
    }
    Text out;
    for (int64_t i = 0; i < n; ++i) out.Append(t);
    return Value::String(std::move(out), seq.markup());
  }
  ValueList items;
  for (int64_t i = 0; i < n; ++i) items.insert(items.end(), seq.list().begin(), seq.list().end());
  return Value::List(std::move(items));
}

// + - * // % ** on two 64-bit ints (Python semantics; overflow is an error, a negative power a
// float); nullopt for other operators.
std::optional<absl::StatusOr<Value>> IntArithmetic(const std::string& op, int64_t x, int64_t y) {
  int64_t r = 0;
  const auto overflow = []() -> absl::Status {
    return absl::UnimplementedError("integer overflow: values beyond 64 bits are not supported");
  };
  if (op == "+") {
    if (__builtin_add_overflow(x, y, &r)) return overflow();
    return Value::Int(r);
  }
  if (op == "-") {
    if (__builtin_sub_overflow(x, y, &r)) return overflow();
    return Value::Int(r);
  }
  if (op == "*") {
    if (__builtin_mul_overflow(x, y, &r)) return overflow();
    return Value::Int(r);
  }
  if (op == "//" || op == "%") {
    if (y == 0) return absl::InvalidArgumentError("integer division or modulo by zero");
    return Value::Int(op == "//" ? FloorDiv(x, y) : FloorMod(x, y));
  }
  if (op == "**") {
    if (y < 0) return Value::Float(std::pow(static_cast<double>(x), static_cast<double>(y)));
    r = 1;
    for (int64_t i = 0; i < y; ++i) {
      if (__builtin_mul_overflow(r, x, &r)) return overflow();
      if (r == 0 || r == 1) break;
    }
    if (r == 1 && x == -1 && y % 2 == 1) r = -1;
    return Value::Int(r);
  }
  return std::nullopt;
}

// + - * // % ** on two doubles (Python's floor division and modulo); nullopt for other
// operators.
std::optional<absl::StatusOr<Value>> FloatArithmetic(const std::string& op, double x, double y) {
  if (op == "+") return Value::Float(x + y);
  if (op == "-") return Value::Float(x - y);
  if (op == "*") return Value::Float(x * y);
  if (op == "//" || op == "%") {
    if (y == 0) return absl::InvalidArgumentError("float division or modulo by zero");
    double m = std::fmod(x, y);
    if (m != 0 && ((m < 0) != (y < 0))) m += y;
    if (op == "%") return Value::Float(m);
    return Value::Float(std::floor((x - m) / y + 0.5));
  }
  if (op == "**") return Value::Float(std::pow(x, y));
  return std::nullopt;
}

absl::StatusOr<Value> Arithmetic(const std::string& op, const Value& a, const Value& b) {
  if (a.is_undefined()) return UndefinedError(a);
  if (b.is_undefined()) return UndefinedError(b);
  if (op == "+") {
    if (std::optional<Value> sum = AddSequences(a, b)) return *std::move(sum);
  }
  if (op == "*" && (a.is_string() || a.is_list() || b.is_string() || b.is_list())) {
    if (std::optional<absl::StatusOr<Value>> r = RepeatSequence(a, b)) return *std::move(r);
  }
  if (a.is_number() && b.is_number()) {
    if (op == "/") {
      if (b.as_float() == 0) return absl::InvalidArgumentError("division by zero");
      return Value::Float(a.as_float() / b.as_float());
    }
    std::optional<absl::StatusOr<Value>> r = a.is_float() || b.is_float()
                                                 ? FloatArithmetic(op, a.as_float(), b.as_float())
                                                 : IntArithmetic(op, a.as_int(), b.as_int());
    if (r.has_value()) return *std::move(r);
  }
  if (op == "%" && a.is_string()) {
    return absl::UnimplementedError("printf-style string formatting ('%') is not supported");
  }
  return absl::InvalidArgumentError(absl::StrCat("unsupported operand type(s) for ", op, ": '",
                                                 TypeName(a), "' and '", TypeName(b), "'"));
}

struct Frame {
  std::map<std::string, Value, std::less<>> vars;
};

class Evaluator {
 public:
  explicit Evaluator(const std::vector<std::pair<std::string, Value>>& variables) {
    auto globals = std::make_shared<Frame>();
    for (const auto& [k, v] : variables) globals->vars[k] = v;
    AddBuiltins(*globals);
    scopes_.push_back(std::move(globals));
    scopes_.push_back(std::make_shared<Frame>());  // the template's own top level
  }

  absl::StatusOr<Text> Render(const StmtList& program) {
    Text out;
    KVSERVE_RETURN_IF_ERROR(Exec(program, out));
    return out;
  }

 private:
  enum class Flow { kNormal, kBreak, kContinue };

  void AddBuiltins(Frame& g) {
    g.vars["raise_exception"] =
        Value::Callable("raise_exception", [](CallArgs& args) -> absl::StatusOr<Value> {
          Value msg = args.Get(0, "message", Value::TemplateString(""));
          return absl::InvalidArgumentError(
              absl::StrCat("chat template error: ", msg.ToText().str()));
        });
    g.vars["namespace"] = Value::Callable("namespace", [](CallArgs& args) -> absl::StatusOr<Value> {
      ValueDict attrs;
      for (const Value& p : args.positional) {
        if (!p.is_dict()) return absl::InvalidArgumentError("namespace() takes a dict or keywords");
        for (const auto& kv : p.dict()) attrs.push_back(kv);
      }
      Value ns = Value::Namespace(std::move(attrs));
      for (const auto& [k, v] : args.keyword) ns.Set(k, v);
      return ns;
    });
    g.vars["dict"] = Value::Callable("dict", [](CallArgs& args) -> absl::StatusOr<Value> {
      Value d = Value::Dict();
      for (const Value& p : args.positional) {
        if (!p.is_dict()) return absl::InvalidArgumentError("dict() takes a dict or keywords");
        for (const auto& [k, v] : p.dict()) d.Set(k, v);
      }
      for (const auto& [k, v] : args.keyword) d.Set(Value::TemplateString(k), v);
      return d;
    });
    g.vars["range"] = Value::Callable("range", [](CallArgs& args) -> absl::StatusOr<Value> {
      std::vector<int64_t> n;
      for (const Value& p : args.positional) {
        if (!p.is_int() && !p.is_bool())
          return absl::InvalidArgumentError("range() takes integers");
        n.push_back(p.as_int());
      }
      if (n.empty() || n.size() > 3)
        return absl::InvalidArgumentError("range() takes 1 to 3 arguments");
      int64_t start = n.size() == 1 ? 0 : n[0];
      int64_t stop = n.size() == 1 ? n[0] : n[1];
      int64_t step = n.size() == 3 ? n[2] : 1;
      if (step == 0) return absl::InvalidArgumentError("range() arg 3 must not be zero");
      ValueList items;
      for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
        if (items.size() > 1000000) return absl::InvalidArgumentError("range() too large");
        items.push_back(Value::Int(i));
      }
      return Value::List(std::move(items));
    });
  }

  static absl::Status At(int line, int column, absl::Status status) {
    if (status.ok() || absl::StartsWith(status.message(), "line ") ||
        absl::StartsWith(status.message(), "chat template error: ")) {
      return status;
    }
    return absl::Status(status.code(),
                        absl::StrCat("line ", line, ", column ", column, ": ", status.message()));
  }

  Value Lookup(std::string_view name) const {
    for (auto it = scopes_.rbegin(); it != scopes_.rend(); ++it) {
      auto found = (*it)->vars.find(name);
      if (found != (*it)->vars.end()) return found->second;
    }
    return Value::Undefined(std::string(name));
  }
  void Assign(const std::string& name, Value v) { scopes_.back()->vars[name] = std::move(v); }

  absl::Status AssignTargets(const std::vector<std::string>& targets, const Value& v) {
    if (targets.size() == 1) {
      Assign(targets[0], v);
      return absl::OkStatus();
    }
    KVSERVE_ASSIGN_OR_RETURN(ValueList items, Iterate(v));
    if (items.size() != targets.size()) {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot unpack ", items.size(), " values into ", targets.size(), " names"));
    }
    for (size_t i = 0; i < targets.size(); ++i) Assign(targets[i], items[i]);
    return absl::OkStatus();
  }

  // ---- statements ----

  absl::Status Exec(const StmtList& body, Text& out) {
    for (const auto& stmt : body) {
      KVSERVE_RETURN_IF_ERROR(ExecOne(*stmt, out));
      if (static_cast<int64_t>(out.size()) > kMaxTextBytes) {
        return absl::ResourceExhaustedError(
            absl::StrCat("line ", stmt->line, ", column ", stmt->column,
                         ": the rendered text exceeds ", kMaxTextBytes >> 20, " MiB"));
      }
      if (flow_ != Flow::kNormal) return absl::OkStatus();
    }
    return absl::OkStatus();
  }

  absl::Status ExecOne(const Stmt& s, Text& out) {
    switch (s.kind) {
      case Stmt::Kind::kText:
        out.Append(s.text, true);
        return absl::OkStatus();
      case Stmt::Kind::kOutput: {
        KVSERVE_ASSIGN_OR_RETURN(Value v, Eval(*s.expr));
        out.Append(v.ToText());
        return absl::OkStatus();
      }
      case Stmt::Kind::kIf:
        for (size_t i = 0; i < s.conditions.size(); ++i) {
          KVSERVE_ASSIGN_OR_RETURN(Value c, Eval(*s.conditions[i]));
          if (c.Truthy()) return Exec(s.bodies[i], out);
        }
        if (s.bodies.size() > s.conditions.size()) return Exec(s.bodies.back(), out);
        return absl::OkStatus();
      case Stmt::Kind::kFor:
        return ExecFor(s, out);
      case Stmt::Kind::kSet: {
        KVSERVE_ASSIGN_OR_RETURN(Value v, Eval(*s.expr));
        if (s.attr_target) {
          KVSERVE_ASSIGN_OR_RETURN(Value ns, Eval(*s.attr_target));
          if (!ns.is_namespace()) {
            return At(
                s.line, s.column,
                absl::InvalidArgumentError("cannot assign attribute on non-namespace object"));
          }
          ns.Set(s.targets[0], v);
          return absl::OkStatus();
        }
        return At(s.line, s.column, AssignTargets(s.targets, v));
      }
      case Stmt::Kind::kSetBlock: {
        Text captured;
        KVSERVE_RETURN_IF_ERROR(Exec(s.body, captured));
        Value v = Value::String(std::move(captured));
        if (s.expr) {
          KVSERVE_ASSIGN_OR_RETURN(v, ApplyFilterChain(*s.expr, v));
        }
        Assign(s.targets[0], v);
        return absl::OkStatus();
      }
      case Stmt::Kind::kMacro:
        Assign(s.text, MakeMacro(s));
        return absl::OkStatus();
      case Stmt::Kind::kBreak:
        flow_ = Flow::kBreak;
        return absl::OkStatus();
      case Stmt::Kind::kContinue:
        flow_ = Flow::kContinue;
        return absl::OkStatus();
      case Stmt::Kind::kFilterBlock: {
        Text captured;
        KVSERVE_RETURN_IF_ERROR(Exec(s.body, captured));
        KVSERVE_ASSIGN_OR_RETURN(Value v, ApplyFilterChain(*s.expr, Value::String(captured)));
        out.Append(v.ToText());
        return absl::OkStatus();
      }
      case Stmt::Kind::kScope:
        return Exec(s.body, out);
    }
    return absl::OkStatus();
  }

  // Applies a filter chain parsed with a null base to `v`.
  absl::StatusOr<Value> ApplyFilterChain(const Expr& chain, const Value& v) {
    Value base = v;
    if (chain.args[0]) {
      KVSERVE_ASSIGN_OR_RETURN(base, ApplyFilterChain(*chain.args[0], v));
    }
    return CallFilter(chain, base);
  }

  absl::Status ExecFor(const Stmt& s, Text& out) {
    KVSERVE_ASSIGN_OR_RETURN(Value iterable, Eval(*s.expr));
    absl::StatusOr<ValueList> all = Iterate(iterable);
    if (!all.ok()) return At(s.line, s.column, all.status());
    ValueList items;
    if (s.condition) {
      for (const Value& item : *all) {
        scopes_.push_back(std::make_shared<Frame>());
        absl::Status st = AssignTargets(s.targets, item);
        absl::StatusOr<Value> keep = st.ok() ? Eval(*s.condition) : absl::StatusOr<Value>(st);
        scopes_.pop_back();
        if (!keep.ok()) return At(s.line, s.column, keep.status());
        if (keep->Truthy()) items.push_back(item);
      }
    } else {
      items = std::move(*all);
    }
    if (items.empty()) {
      scopes_.push_back(std::make_shared<Frame>());
      absl::Status st = Exec(s.else_body, out);
      scopes_.pop_back();
      return st;
    }
    const int64_t n = static_cast<int64_t>(items.size());
    Value cycle_items;
    for (int64_t i = 0; i < n; ++i) {
      static const auto* kLoopKeys = new std::vector<Value>{
          Value::TemplateString("index"),    Value::TemplateString("index0"),
          Value::TemplateString("revindex"), Value::TemplateString("revindex0"),
          Value::TemplateString("first"),    Value::TemplateString("last"),
          Value::TemplateString("length"),   Value::TemplateString("depth"),
          Value::TemplateString("depth0"),   Value::TemplateString("previtem"),
          Value::TemplateString("nextitem"), Value::TemplateString("cycle")};
      const std::vector<Value>& k = *kLoopKeys;
      Value loop = Value::Dict({
          {k[0], Value::Int(i + 1)},
          {k[1], Value::Int(i)},
          {k[2], Value::Int(n - i)},
          {k[3], Value::Int(n - i - 1)},
          {k[4], Value::Bool(i == 0)},
          {k[5], Value::Bool(i == n - 1)},
          {k[6], Value::Int(n)},
          {k[7], Value::Int(1)},
          {k[8], Value::Int(0)},
          {k[9], i > 0 ? items[i - 1] : Value::Undefined("there is no previous item")},
          {k[10], i + 1 < n ? items[i + 1] : Value::Undefined("there is no next item")},
          {k[11], Value::Callable(
                      "cycle",
                      [i](CallArgs& args) -> absl::StatusOr<Value> {
                        if (args.positional.empty()) {
                          return absl::InvalidArgumentError("no items for cycling given");
                        }
                        return args.positional[static_cast<size_t>(i) % args.positional.size()];
                      })},
      });
      scopes_.push_back(std::make_shared<Frame>());
      absl::Status st = AssignTargets(s.targets, items[i]);
      if (st.ok()) {
        Assign("loop", loop);
        st = Exec(s.body, out);
      }
      scopes_.pop_back();
      if (!st.ok()) return At(s.line, s.column, st);
      if (flow_ == Flow::kBreak) {
        flow_ = Flow::kNormal;
        break;
      }
      flow_ = Flow::kNormal;
    }
    return absl::OkStatus();
  }

  Value MakeMacro(const Stmt& s) {
    const Stmt* macro = &s;
    return Value::Callable(s.text, [this, macro](CallArgs& args) -> absl::StatusOr<Value> {
      if (call_depth_ >= kMaxCallDepth) {
        return absl::ResourceExhaustedError(
            absl::StrCat("macro '", macro->text, "': calls nested deeper than ", kMaxCallDepth));
      }
      ++call_depth_;
      auto frame = std::make_shared<Frame>();
      if (args.positional.size() > macro->params.size()) {
        return absl::InvalidArgumentError(absl::StrCat("macro '", macro->text,
                                                       "' takes not more than ",
                                                       macro->params.size(), " argument(s)"));
      }
      std::vector<std::shared_ptr<Frame>> saved = scopes_;
      scopes_.resize(2);
      scopes_.push_back(frame);
      absl::Status status;
      for (size_t i = 0; i < macro->params.size() && status.ok(); ++i) {
        Value v = args.Get(i, macro->params[i], Value::Undefined(macro->params[i]));
        if (v.is_undefined() && i >= args.positional.size() && macro->defaults[i]) {
          absl::StatusOr<Value> d = Eval(*macro->defaults[i]);
          if (!d.ok()) {
            status = d.status();
            break;
          }
          v = *d;
        }
        frame->vars[macro->params[i]] = v;
      }
      for (const auto& [k, v] : args.keyword) {
        if (std::find(macro->params.begin(), macro->params.end(), k) == macro->params.end()) {
          status = absl::InvalidArgumentError(
              absl::StrCat("macro '", macro->text, "' has no argument named '", k, "'"));
        }
      }
      Text out;
      if (status.ok()) status = Exec(macro->body, out);
      scopes_ = std::move(saved);
      flow_ = Flow::kNormal;
      --call_depth_;
      if (!status.ok()) return status;
      return Value::String(std::move(out));
    });
  }

  // ---- expressions ----

  absl::StatusOr<Value> Eval(const Expr& e) {
    absl::StatusOr<Value> v = EvalInner(e);
    if (!v.ok()) return At(e.line, e.column, v.status());
    return v;
  }

  absl::StatusOr<CallArgs> EvalArgs(const Expr& e, size_t first) {
    CallArgs args;
    for (size_t i = first; i < e.args.size(); ++i) {
      KVSERVE_ASSIGN_OR_RETURN(Value v, Eval(*e.args[i]));
      args.positional.push_back(std::move(v));
    }
    for (const auto& [k, x] : e.kwargs) {
      KVSERVE_ASSIGN_OR_RETURN(Value v, Eval(*x));
      args.keyword.emplace_back(k, std::move(v));
    }
    return args;
  }

  absl::StatusOr<Value> EvalInner(const Expr& e) {
    switch (e.kind) {
      case Expr::Kind::kLiteral:
        return e.value;
      case Expr::Kind::kName:
        return Lookup(e.name);
      case Expr::Kind::kList:
      case Expr::Kind::kTuple:
        return EvalSequence(e);
      case Expr::Kind::kDict:
        return EvalDict(e);
      case Expr::Kind::kGetAttr: {
        KVSERVE_ASSIGN_OR_RETURN(Value obj, Eval(*e.args[0]));
        return GetAttr(obj, e.name);
      }
      case Expr::Kind::kGetItem: {
        KVSERVE_ASSIGN_OR_RETURN(Value obj, Eval(*e.args[0]));
        KVSERVE_ASSIGN_OR_RETURN(Value key, Eval(*e.args[1]));
        return GetItem(obj, key);
      }
      case Expr::Kind::kSlice:
        return EvalSlice(e);
      case Expr::Kind::kCall:
        return EvalCall(e);
      case Expr::Kind::kFilter: {
        KVSERVE_ASSIGN_OR_RETURN(Value base, Eval(*e.args[0]));
        return CallFilter(e, base);
      }
      case Expr::Kind::kTest: {
        KVSERVE_ASSIGN_OR_RETURN(Value base, Eval(*e.args[0]));
        KVSERVE_ASSIGN_OR_RETURN(CallArgs args, EvalArgs(e, 1));
        KVSERVE_ASSIGN_OR_RETURN(bool r, RunTest(e.name, base, args));
        return Value::Bool(r != e.negated);
      }
      case Expr::Kind::kUnary:
        return EvalUnary(e);
      case Expr::Kind::kBinary:
        return EvalBinary(e);
      case Expr::Kind::kCondition:
        return EvalCondition(e);
    }
    return absl::InternalError("unknown expression");
  }

  // A list or tuple display: its items evaluated in order.
  absl::StatusOr<Value> EvalSequence(const Expr& e) {
    ValueList items;
    for (const auto& a : e.args) {
      KVSERVE_ASSIGN_OR_RETURN(Value v, Eval(*a));
      items.push_back(std::move(v));
    }
    return e.kind == Expr::Kind::kList ? Value::List(std::move(items))
                                       : Value::Tuple(std::move(items));
  }

  // A dict display (args: key, value, key, ...); lists and dicts cannot be keys.
  absl::StatusOr<Value> EvalDict(const Expr& e) {
    Value d = Value::Dict();
    for (size_t i = 0; i + 1 < e.args.size(); i += 2) {
      KVSERVE_ASSIGN_OR_RETURN(Value k, Eval(*e.args[i]));
      KVSERVE_ASSIGN_OR_RETURN(Value v, Eval(*e.args[i + 1]));
      if (k.is_list() || k.is_dict()) {
        return absl::InvalidArgumentError(absl::StrCat("unhashable type: '", TypeName(k), "'"));
      }
      d.Set(k, v);
    }
    return d;
  }

  // A call: the callee, then the arguments, are evaluated; the callee must be callable.
  absl::StatusOr<Value> EvalCall(const Expr& e) {
    KVSERVE_ASSIGN_OR_RETURN(Value fn, Eval(*e.args[0]));
    KVSERVE_ASSIGN_OR_RETURN(CallArgs args, EvalArgs(e, 1));
    if (fn.is_undefined()) return UndefinedError(fn);
    if (!fn.is_callable()) {
      return absl::InvalidArgumentError(
          absl::StrCat("'", TypeName(fn), "' object is not callable"));
    }
    return fn.function()(args);
  }

  // "not" on any value; unary + and - on numbers (+ turns a bool into an int).
  absl::StatusOr<Value> EvalUnary(const Expr& e) {
    KVSERVE_ASSIGN_OR_RETURN(Value v, Eval(*e.args[0]));
    if (e.name == "not") return Value::Bool(!v.Truthy());
    if (v.is_undefined()) return UndefinedError(v);
    if (!v.is_number()) {
      return absl::InvalidArgumentError(
          absl::StrCat("bad operand type for unary ", e.name, ": '", TypeName(v), "'"));
    }
    if (e.name == "+") return v.is_float() ? v : Value::Int(v.as_int());
    return v.is_float() ? Value::Float(-v.as_float()) : Value::Int(-v.as_int());
  }

  // "a if c else b"; without an else, a false condition gives an undefined value.
  absl::StatusOr<Value> EvalCondition(const Expr& e) {
    KVSERVE_ASSIGN_OR_RETURN(Value c, Eval(*e.args[0]));
    if (c.Truthy()) return Eval(*e.args[1]);
    if (e.args[2]) return Eval(*e.args[2]);
    return Value::Undefined("the inline if-expression on line " + std::to_string(e.line) +
                            " evaluated to false and no else section was defined.");
  }

  absl::StatusOr<Value> EvalBinary(const Expr& e) {
    const std::string& op = e.name;
    KVSERVE_ASSIGN_OR_RETURN(Value a, Eval(*e.args[0]));
    if (op == "and") return a.Truthy() ? Eval(*e.args[1]) : a;
    if (op == "or") return a.Truthy() ? a : Eval(*e.args[1]);
    KVSERVE_ASSIGN_OR_RETURN(Value b, Eval(*e.args[1]));
    if (op == "~") {
      Text t = a.ToText();
      t.Append(b.ToText());
      return Value::String(std::move(t));
    }
    if (op == "==") return Value::Bool(a == b);
    if (op == "!=") return Value::Bool(!(a == b));
    if (op == "in" || op == "notin") {
      KVSERVE_ASSIGN_OR_RETURN(bool in, Contains(b, a));
      return Value::Bool(in == (op == "in"));
    }
    if (op == "<" || op == "<=" || op == ">" || op == ">=") {
      KVSERVE_ASSIGN_OR_RETURN(int c, Compare(a, b, op));
      if (op == "<") return Value::Bool(c < 0);
      if (op == "<=") return Value::Bool(c <= 0);
      if (op == ">") return Value::Bool(c > 0);
      return Value::Bool(c >= 0);
    }
    return Arithmetic(op, a, b);
  }

  absl::StatusOr<Value> EvalSlice(const Expr& e) {
    KVSERVE_ASSIGN_OR_RETURN(Value obj, Eval(*e.args[0]));
    std::optional<int64_t> parts[3];
    for (int k = 0; k < 3; ++k) {
      if (!e.args[1 + k]) continue;
      KVSERVE_ASSIGN_OR_RETURN(Value v, Eval(*e.args[1 + k]));
      if (v.is_none()) continue;
      if (!v.is_int() && !v.is_bool()) {
        return absl::InvalidArgumentError("slice indices must be integers or None");
      }
      parts[k] = v.as_int();
    }
    const int64_t step = parts[2].value_or(1);
    if (step == 0) return absl::InvalidArgumentError("slice step cannot be zero");
    if (obj.is_undefined()) return UndefinedError(obj);
    std::vector<int64_t> indices;
    if (obj.is_list()) {
      AdjustSlice(static_cast<int64_t>(obj.list().size()), parts[0], parts[1], step, indices);
      ValueList items;
      for (int64_t i : indices) items.push_back(obj.list()[static_cast<size_t>(i)]);
      return obj.is_tuple() ? Value::Tuple(std::move(items)) : Value::List(std::move(items));
    }
    if (obj.is_string()) {
      std::vector<size_t> offsets = CodePointOffsets(obj.str());
      AdjustSlice(static_cast<int64_t>(offsets.size() - 1), parts[0], parts[1], step, indices);
      Text out;
      if (step == 1 && !indices.empty()) {
        out = obj.text().Substr(offsets[indices.front()],
                                offsets[indices.back() + 1] - offsets[indices.front()]);
      } else {
        for (int64_t i : indices) {
          out.Append(obj.text().Substr(offsets[i], offsets[i + 1] - offsets[i]));
        }
      }
      return Value::String(std::move(out), obj.markup());
    }
    return absl::InvalidArgumentError(
        absl::StrCat("'", TypeName(obj), "' object is not subscriptable"));
  }

  // ---- attribute and item access ----

  static Value NoAttribute(const Value& obj, std::string_view name) {
    return Value::Undefined(
        absl::StrCat("'", TypeName(obj), " object' has no attribute '", std::string(name), "'"));
  }

  absl::StatusOr<Value> GetAttr(const Value& obj, const std::string& name) {
    if (obj.is_undefined()) return UndefinedError(obj);
    if (obj.is_namespace()) {
      const Value* v = obj.Find(name);
      return v ? *v : NoAttribute(obj, name);
    }
    if (std::optional<Value> method = Method(obj, name)) return *method;
    if (obj.is_dict()) {
      const Value* v = obj.Find(name);
      return v ? *v : NoAttribute(obj, name);
    }
    return NoAttribute(obj, name);
  }

  absl::StatusOr<Value> GetItem(const Value& obj, const Value& key) {
    if (obj.is_undefined()) return UndefinedError(obj);
    if (obj.is_dict()) {
      for (const auto& [k, v] : obj.dict()) {
        if (k == key) return v;
      }
    } else if ((obj.is_list() || obj.is_string()) && (key.is_int() || key.is_bool())) {
      int64_t i = key.as_int();
      if (obj.is_list()) {
        const int64_t n = static_cast<int64_t>(obj.list().size());
        if (i < 0) i += n;
        if (i >= 0 && i < n) return obj.list()[static_cast<size_t>(i)];
      } else {
        std::vector<size_t> offsets = CodePointOffsets(obj.str());
        const int64_t n = static_cast<int64_t>(offsets.size()) - 1;
        if (i < 0) i += n;
        if (i >= 0 && i < n) {
          return Value::String(obj.text().Substr(offsets[i], offsets[i + 1] - offsets[i]),
                               obj.markup());
        }
      }
      return Value::Undefined(
          absl::StrCat("'", TypeName(obj), " object' has no element ", key.Repr()));
    }
    if (key.is_string()) return GetAttr(obj, key.str());
    return Value::Undefined(
        absl::StrCat("'", TypeName(obj), " object' has no element ", key.Repr()));
  }

  // Bound methods of str, dict and list; nullopt when `obj` has no method `name`.
  std::optional<Value> Method(const Value& obj, const std::string& name) {
    std::optional<Value::Function> fn;
    if (obj.is_string()) {
      fn = StringTransformMethod(obj, name);
      if (!fn) fn = StringQueryMethod(obj, name);
    } else if (obj.is_dict()) {
      fn = DictMethod(obj, name);
    } else if (obj.is_list()) {
      fn = ListMethod(obj, name);
    }
    if (!fn) return std::nullopt;
    return BindMethod(TypeName(obj), name, std::move(*fn));
  }

  // Method `name` of a value of type `type` as a callable that checks the call against the
  // method's arity before running `fn`.
  static Value BindMethod(const std::string& type, const std::string& name, Value::Function fn) {
    // Arity of each method (Python's): positional arguments at most, and the keywords it takes;
    // calls outside it fail instead of ignoring arguments.
    struct Arity {
      size_t max_positional;
      std::vector<std::string> keywords;
    };
    static const auto* kArity = new std::map<std::string, Arity, std::less<>>{
        {"strip", {1, {}}},
        {"lstrip", {1, {}}},
        {"rstrip", {1, {}}},
        {"startswith", {1, {}}},
        {"endswith", {1, {}}},
        {"split", {2, {"sep", "maxsplit"}}},
        {"rsplit", {2, {"sep", "maxsplit"}}},
        {"replace", {3, {}}},
        {"find", {1, {}}},
        {"count", {1, {}}},
        {"index", {1, {}}},
        {"join", {1, {}}},
        {"format", {1000, {}}},
        {"get", {2, {}}},
    };
    auto it = kArity->find(name);
    const Arity arity = it != kArity->end() ? it->second : Arity{0, {}};
    return Value::Callable(
        name, [fn = std::move(fn), arity, name = name, type](CallArgs& a) -> absl::StatusOr<Value> {
          if (a.positional.size() > arity.max_positional) {
            return absl::InvalidArgumentError(
                absl::StrCat(type, ".", name, "() takes at most ", arity.max_positional,
                             " argument(s) here (", a.positional.size(), " given)"));
          }
          for (const auto& [k, v] : a.keyword) {
            if (std::find(arity.keywords.begin(), arity.keywords.end(), k) ==
                arity.keywords.end()) {
              return absl::InvalidArgumentError(
                  absl::StrCat(type, ".", name, "() got an unexpected keyword argument '", k, "'"));
            }
          }
          return fn(a);
        });
  }

  // str methods that build a new value from the string: strip, split, replace, case
  // mapping, splitlines, join, format.
  static std::optional<Value::Function> StringTransformMethod(const Value& obj,
                                                              const std::string& name) {
    using F = Value::Function;
    if (name == "strip" || name == "lstrip" || name == "rstrip") {
      return F([self = obj, name](CallArgs& a) -> absl::StatusOr<Value> {
        Value chars = a.Get(0, "chars", Value::None());
        if (!chars.is_none() && !chars.is_string()) {
          return absl::InvalidArgumentError(name + " arg must be None or str");
        }
        return Value::String(StripImpl(self.text(), chars, name != "rstrip", name != "lstrip"),
                             self.markup());
      });
    }
    if (name == "split" || name == "rsplit") {
      return F([self = obj, name](CallArgs& a) -> absl::StatusOr<Value> {
        return Split(self, a.Get(0, "sep", Value::None()), a.Get(1, "maxsplit", Value::Int(-1)),
                     name == "rsplit");
      });
    }
    if (name == "replace") {
      return F([self = obj](CallArgs& a) -> absl::StatusOr<Value> {
        return Replace(self, a.Get(0, "old"), a.Get(1, "new"), a.Get(2, "count", Value::Int(-1)));
      });
    }
    if (name == "upper" || name == "lower" || name == "title" || name == "capitalize") {
      return F([self = obj, name](CallArgs&) { return CaseMap(self, name); });
    }
    if (name == "splitlines") {
      return F(
          [self = obj](CallArgs&) -> absl::StatusOr<Value> { return SplitLines(self.text()); });
    }
    if (name == "join") {
      return F([self = obj](CallArgs& a) -> absl::StatusOr<Value> {
        KVSERVE_ASSIGN_OR_RETURN(ValueList items, Iterate(a.Get(0, "iterable")));
        Text out;
        for (size_t i = 0; i < items.size(); ++i) {
          if (!items[i].is_string()) {
            return absl::InvalidArgumentError(absl::StrCat(
                "sequence item ", i, ": expected str instance, ", TypeName(items[i]), " found"));
          }
          if (i > 0) out.Append(self.text());
          out.Append(items[i].text());
        }
        return Value::String(std::move(out));
      });
    }
    if (name == "format") {
      return F([](CallArgs&) -> absl::StatusOr<Value> {
        return absl::UnimplementedError("str.format is not supported");
      });
    }
    return std::nullopt;
  }

  // str methods that test or search the string: startswith/endswith, find/count/index,
  // isspace/isdigit/isalpha/isalnum.
  static std::optional<Value::Function> StringQueryMethod(const Value& obj,
                                                          const std::string& name) {
    using F = Value::Function;
    if (name == "startswith" || name == "endswith") {
      return F([self = obj, name](CallArgs& a) -> absl::StatusOr<Value> {
        Value arg = a.Get(0, "prefix");
        ValueList options = arg.is_tuple() ? arg.list() : ValueList{arg};
        if (a.positional.size() > 1) {
          return absl::UnimplementedError(name + " with start/end is not supported");
        }
        const std::string& s = self.str();
        for (const Value& o : options) {
          if (!o.is_string()) {
            return absl::InvalidArgumentError(
                absl::StrCat(name, " first arg must be str or a tuple of str, not ", TypeName(o)));
          }
          const std::string& p = o.str();
          bool hit = p.size() <= s.size() &&
                     (name == "startswith" ? s.compare(0, p.size(), p) == 0
                                           : s.compare(s.size() - p.size(), p.size(), p) == 0);
          if (hit) return Value::Bool(true);
        }
        return Value::Bool(false);
      });
    }
    if (name == "find" || name == "count" || name == "index") {
      return F([self = obj, name](CallArgs& a) -> absl::StatusOr<Value> {
        Value sub = a.Get(0, "sub");
        if (!sub.is_string()) return absl::InvalidArgumentError(name + " takes a string");
        const std::string& s = self.str();
        if (name == "count") {
          if (sub.str().empty()) return Value::Int(static_cast<int64_t>(CodePointCount(s)) + 1);
          int64_t n = 0;
          for (size_t p = s.find(sub.str()); p != std::string::npos;
               p = s.find(sub.str(), p + sub.str().size())) {
            ++n;
          }
          return Value::Int(n);
        }
        size_t p = s.find(sub.str());
        if (p == std::string::npos) {
          if (name == "index") return absl::InvalidArgumentError("substring not found");
          return Value::Int(-1);
        }
        return Value::Int(static_cast<int64_t>(CodePointCount(s.substr(0, p))));
      });
    }
    if (name == "isspace" || name == "isdigit" || name == "isalpha" || name == "isalnum") {
      return F([self = obj, name](CallArgs&) -> absl::StatusOr<Value> {
        const std::string& s = self.str();
        if (s.empty()) return Value::Bool(false);
        if (name == "isspace") {
          size_t p = 0;
          while (p < s.size()) {
            if (!IsPythonSpace(DecodeUtf8(s, &p))) return Value::Bool(false);
          }
          return Value::Bool(true);
        }
        if (!IsAscii(s)) {
          return absl::UnimplementedError(name + " of non-ASCII text is not supported");
        }
        for (char c : s) {
          bool ok = name == "isdigit"   ? (c >= '0' && c <= '9')
                    : name == "isalpha" ? IsAlpha(c)
                                        : (IsAlpha(c) || (c >= '0' && c <= '9'));
          if (!ok) return Value::Bool(false);
        }
        return Value::Bool(true);
      });
    }
    return std::nullopt;
  }

  // dict methods: items/keys/values, get; mutating methods fail (values are immutable).
  static std::optional<Value::Function> DictMethod(const Value& obj, const std::string& name) {
    using F = Value::Function;
    if (name == "items" || name == "keys" || name == "values") {
      return F([self = obj, name](CallArgs&) -> absl::StatusOr<Value> {
        ValueList out;
        for (const auto& [k, v] : self.dict()) {
          if (name == "items") {
            out.push_back(Value::Tuple({k, v}));
          } else {
            out.push_back(name == "keys" ? k : v);
          }
        }
        return Value::List(std::move(out));
      });
    }
    if (name == "get") {
      return F([self = obj](CallArgs& a) -> absl::StatusOr<Value> {
        Value key = a.Get(0, "key");
        for (const auto& [k, v] : self.dict()) {
          if (k == key) return v;
        }
        return a.Get(1, "default", Value::None());
      });
    }
    if (name == "pop" || name == "update" || name == "setdefault" || name == "clear" ||
        name == "popitem") {
      return F([name](CallArgs&) -> absl::StatusOr<Value> {
        return absl::InvalidArgumentError("dict." + name +
                                          "() is not allowed: values are immutable");
      });
    }
    return std::nullopt;
  }

  // list methods: index/count; mutating methods fail (values are immutable).
  static std::optional<Value::Function> ListMethod(const Value& obj, const std::string& name) {
    using F = Value::Function;
    if (name == "append" || name == "extend" || name == "pop" || name == "insert" ||
        name == "remove" || name == "sort" || name == "reverse" || name == "clear") {
      return F([name](CallArgs&) -> absl::StatusOr<Value> {
        return absl::InvalidArgumentError("list." + name +
                                          "() is not allowed: values are immutable");
      });
    }
    if (name == "index" || name == "count") {
      return F([self = obj, name](CallArgs& a) -> absl::StatusOr<Value> {
        Value x = a.Get(0, "value");
        int64_t n = 0;
        for (size_t i = 0; i < self.list().size(); ++i) {
          if (self.list()[i] == x) {
            if (name == "index") return Value::Int(static_cast<int64_t>(i));
            ++n;
          }
        }
        if (name == "index") return absl::InvalidArgumentError("value is not in list");
        return Value::Int(n);
      });
    }
    return std::nullopt;
  }

  static absl::StatusOr<Value> Split(const Value& self, const Value& sep, const Value& maxsplit_v,
                                     bool from_right) {
    if (!maxsplit_v.is_int()) return absl::InvalidArgumentError("maxsplit must be an integer");
    int64_t maxsplit = maxsplit_v.as_int();
    const Text& t = self.text();
    const std::string& s = t.str();
    ValueList parts;
    if (sep.is_none()) {
      if (from_right && maxsplit >= 0) {
        return absl::UnimplementedError("rsplit() without a separator is not supported");
      }
      std::vector<size_t> offsets = CodePointOffsets(s);
      auto space = [&](size_t idx) {
        size_t p = offsets[idx];
        return IsPythonSpace(DecodeUtf8(s, &p));
      };
      const size_t n = offsets.size() - 1;
      size_t i = 0;
      while (true) {
        while (i < n && space(i)) ++i;
        if (i >= n) break;
        if (maxsplit >= 0 && static_cast<int64_t>(parts.size()) == maxsplit) {
          size_t end = n;
          while (end > i && space(end - 1)) --end;
          parts.push_back(Value::String(t.Substr(offsets[i], offsets[end] - offsets[i])));
          break;
        }
        size_t j = i;
        while (j < n && !space(j)) ++j;
        parts.push_back(Value::String(t.Substr(offsets[i], offsets[j] - offsets[i])));
        i = j;
      }
      return Value::List(std::move(parts));
    }
    if (!sep.is_string()) return absl::InvalidArgumentError("must be str or None");
    const std::string& d = sep.str();
    if (d.empty()) return absl::InvalidArgumentError("empty separator");
    if (!from_right) {
      size_t start = 0;
      while (true) {
        size_t p = (maxsplit >= 0 && static_cast<int64_t>(parts.size()) >= maxsplit)
                       ? std::string::npos
                       : s.find(d, start);
        if (p == std::string::npos) {
          parts.push_back(Value::String(t.Substr(start)));
          break;
        }
        parts.push_back(Value::String(t.Substr(start, p - start)));
        start = p + d.size();
      }
    } else {
      size_t end = s.size();
      std::vector<Value> rev;
      while (true) {
        size_t p = std::string::npos;
        if ((maxsplit < 0 || static_cast<int64_t>(rev.size()) < maxsplit) && end >= d.size()) {
          p = s.rfind(d, end - d.size());
        }
        if (p == std::string::npos) {
          rev.push_back(Value::String(t.Substr(0, end)));
          break;
        }
        rev.push_back(Value::String(t.Substr(p + d.size(), end - p - d.size())));
        end = p;
      }
      parts.assign(rev.rbegin(), rev.rend());
    }
    return Value::List(std::move(parts));
  }

  static absl::StatusOr<Value> Replace(const Value& self, const Value& old, const Value& repl,
                                       const Value& count_v) {
    if (!old.is_string() || !repl.is_string()) {
      return absl::InvalidArgumentError("replace() arguments must be str");
    }
    int64_t count = count_v.is_int() ? count_v.as_int() : -1;
    const Text& t = self.text();
    const std::string& s = t.str();
    const std::string& o = old.str();
    Text out;
    if (o.empty()) {
      std::vector<size_t> offsets = CodePointOffsets(s);
      int64_t done = 0;
      for (size_t i = 0; i + 1 < offsets.size(); ++i) {
        if (count < 0 || done < count) {
          out.Append(repl.text());
          ++done;
        }
        out.Append(t.Substr(offsets[i], offsets[i + 1] - offsets[i]));
      }
      if (count < 0 || done < count) out.Append(repl.text());
      return Value::String(std::move(out), self.markup());
    }
    size_t start = 0;
    int64_t done = 0;
    while (count < 0 || done < count) {
      size_t p = s.find(o, start);
      if (p == std::string::npos) break;
      out.Append(t.Substr(start, p - start));
      out.Append(repl.text());
      start = p + o.size();
      ++done;
    }
    out.Append(t.Substr(start));
    return Value::String(std::move(out), self.markup());
  }

  static Value SplitLines(const Text& t) {
    const std::string& s = t.str();
    ValueList lines;
    size_t start = 0;
    size_t p = 0;
    while (p < s.size()) {
      size_t q = p;
      uint32_t cp = DecodeUtf8(s, &q);
      bool brk = cp == '\n' || cp == '\r' || cp == 0x0B || cp == 0x0C || cp == 0x1C || cp == 0x1D ||
                 cp == 0x1E || cp == 0x85 || cp == 0x2028 || cp == 0x2029;
      if (brk) {
        lines.push_back(Value::String(t.Substr(start, p - start)));
        if (cp == '\r' && q < s.size() && s[q] == '\n') ++q;
        start = q;
      }
      p = q;
    }
    if (start < s.size()) lines.push_back(Value::String(t.Substr(start)));
    return Value::List(std::move(lines));
  }

  // ---- filters ----

  absl::StatusOr<Value> CallFilter(const Expr& e, const Value& base) {
    KVSERVE_ASSIGN_OR_RETURN(CallArgs args, EvalArgs(e, 1));
    return RunFilter(e.name, base, args);
  }

  static Value SoftStr(const Value& v) {
    if (v.is_string()) return v;
    return Value::String(v.ToText());
  }

  // The parameters each filter takes (jinja2's names, in order); a call with more positional
  // arguments or another keyword is an error rather than an argument silently ignored.
  static absl::Status CheckFilterArgs(const std::string& name, const CallArgs& a) {
    static const auto* kParams = new std::map<std::string, std::vector<std::string>, std::less<>>{
        {"trim", {"chars"}},
        {"tojson", {"indent"}},
        {"replace", {"old", "new", "count"}},
        {"default", {"default_value", "boolean"}},
        {"d", {"default_value", "boolean"}},
        {"join", {"d", "attribute"}},
        {"int", {"default", "base"}},
        {"float", {"default"}},
        {"indent", {"width", "first", "blank"}},
        {"unique", {"case_sensitive"}},
        {"sort", {"reverse", "case_sensitive", "attribute"}},
        {"sum", {"attribute", "start"}},
        {"min", {"case_sensitive"}},
        {"max", {"case_sensitive"}},
    };
    if (name == "map" || name == "select" || name == "reject" || name == "selectattr" ||
        name == "rejectattr") {
      for (const auto& [k, v] : a.keyword) {
        if (name != "map" || (k != "attribute" && k != "default")) {
          return absl::InvalidArgumentError(
              absl::StrCat("filter '", name, "' got an unexpected keyword argument '", k, "'"));
        }
      }
      return absl::OkStatus();
    }
    auto it = kParams->find(name);
    const std::vector<std::string> none;
    const std::vector<std::string>& params = it == kParams->end() ? none : it->second;
    if (a.positional.size() > params.size()) {
      return absl::InvalidArgumentError(absl::StrCat("filter '", name, "' takes at most ",
                                                     params.size(), " argument(s), got ",
                                                     a.positional.size()));
    }
    for (const auto& [k, v] : a.keyword) {
      if (std::find(params.begin(), params.end(), k) == params.end()) {
        return absl::InvalidArgumentError(
            absl::StrCat("filter '", name, "' got an unexpected keyword argument '", k, "'"));
      }
    }
    return absl::OkStatus();
  }

  // Lower-cases ASCII strings for jinja2's case-insensitive comparisons; non-ASCII strings are
  // refused (jinja2 would fold them with Unicode rules).
  static absl::StatusOr<Value> FoldCase(const Value& v) {
    if (!v.is_string()) return v;
    if (!IsAscii(v.str())) {
      return absl::UnimplementedError(
          "case-insensitive comparison of non-ASCII strings is not supported");
    }
    return Value::String(MapAscii(v.text(), [](size_t, char c) { return Lower(c); }));
  }

  absl::StatusOr<Value> RunFilter(const std::string& name, const Value& v, CallArgs& a) {
    KVSERVE_RETURN_IF_ERROR(CheckFilterArgs(name, a));
    if (auto r = StringFilter(name, v, a)) return *std::move(r);
    if (auto r = NumberFilter(name, v, a)) return *std::move(r);
    if (auto r = SequenceFilter(name, v, a)) return *std::move(r);
    if (auto r = OrderFilter(name, v, a)) return *std::move(r);
    if (auto r = HigherOrderFilter(name, v, a)) return *std::move(r);
    return absl::UnimplementedError(absl::StrCat("no filter named '", name, "'"));
  }

  // Filters on text (jinja2's string and HTML filters, tojson); nullopt for another name.
  std::optional<absl::StatusOr<Value>> StringFilter(const std::string& name, const Value& v,
                                                    CallArgs& a) {
    if (name == "trim") {
      Value s = SoftStr(v);
      return Value::String(StripImpl(s.text(), a.Get(0, "chars", Value::None()), true, true),
                           s.markup());
    }
    if (name == "tojson") {
      Value indent = a.Get(0, "indent", Value::None());
      if (!indent.is_none() && !indent.is_int()) {
        return absl::UnimplementedError("tojson: indent must be an integer");
      }
      KVSERVE_ASSIGN_OR_RETURN(
          std::string json, ToJson(v, indent.is_none() ? -1 : static_cast<int>(indent.as_int())));
      return Value::String(Text(std::move(json), AllStringsFromTemplate(v)), true);
    }
    if (name == "string") return SoftStr(v);
    if (name == "upper" || name == "lower" || name == "title" || name == "capitalize") {
      return CaseMap(SoftStr(v), name);
    }
    if (name == "replace") {
      return Replace(SoftStr(v), a.Get(0, "old"), a.Get(1, "new"),
                     a.Get(2, "count", Value::Int(-1)));
    }
    if (name == "indent") return Indent(v, a);
    if (name == "escape" || name == "e") {
      if (v.is_string() && v.markup()) return v;
      return Value::String(HtmlEscape(SoftStr(v).text()), true);
    }
    if (name == "safe") return Value::String(SoftStr(v).text(), true);
    return std::nullopt;
  }

  // Conversions to numbers, abs, and default/length; nullopt for another name.
  std::optional<absl::StatusOr<Value>> NumberFilter(const std::string& name, const Value& v,
                                                    CallArgs& a) {
    if (name == "default" || name == "d") {
      Value fallback = a.Get(0, "default_value", Value::TemplateString(""));
      const bool boolean = a.Get(1, "boolean", Value::Bool(false)).Truthy();
      if (v.is_undefined() || (boolean && !v.Truthy())) return fallback;
      return v;
    }
    if (name == "length" || name == "count") {
      KVSERVE_ASSIGN_OR_RETURN(int64_t n, Length(v));
      return Value::Int(n);
    }
    if (name == "int") return IntFilter(v, a);
    if (name == "float") {
      Value fallback = a.Get(0, "default", Value::Float(0));
      if (v.is_number()) return Value::Float(v.as_float());
      if (v.is_string()) {
        std::string s = StripImpl(v.text(), Value::None(), true, true).str();
        char* end = nullptr;
        double f = std::strtod(s.c_str(), &end);
        if (!s.empty() && end && *end == '\0') return Value::Float(f);
      }
      return fallback;
    }
    if (name == "abs") {
      if (v.is_float()) return Value::Float(std::fabs(v.as_float()));
      if (v.is_number()) return Value::Int(std::llabs(v.as_int()));
      return absl::InvalidArgumentError(
          absl::StrCat("bad operand type for abs(): '", TypeName(v), "'"));
    }
    return std::nullopt;
  }

  // The int filter: ints, bools, finite floats (truncated) and decimal strings; otherwise the
  // default (only base 10).
  absl::StatusOr<Value> IntFilter(const Value& v, CallArgs& a) {
    Value fallback = a.Get(0, "default", Value::Int(0));
    Value base = a.Get(1, "base", Value::Int(10));
    if (!base.is_int() || base.as_int() != 10) {
      return absl::UnimplementedError("int: only base 10 is supported");
    }
    if (v.is_int() || v.is_bool()) return Value::Int(v.as_int());
    if (v.is_float()) {
      if (!std::isfinite(v.as_float())) return fallback;
      return Value::Int(static_cast<int64_t>(v.as_float()));
    }
    if (v.is_string()) {
      std::string s = StripImpl(v.text(), Value::None(), true, true).str();
      std::string digits;
      for (char c : s) {
        if (c != '_') digits += c;
      }
      char* end = nullptr;
      errno = 0;
      long long r = std::strtoll(digits.c_str(), &end, 10);
      if (!digits.empty() && end && *end == '\0' && errno == 0) return Value::Int(r);
      double f = std::strtod(digits.c_str(), &end);
      if (!digits.empty() && end && *end == '\0' && std::isfinite(f)) {
        return Value::Int(static_cast<int64_t>(f));
      }
    }
    return fallback;
  }

  // Filters on lists, dicts and strings as sequences (but unique and sort); nullopt for another
  // name.
  std::optional<absl::StatusOr<Value>> SequenceFilter(const std::string& name, const Value& v,
                                                      CallArgs& a) {
    if (name == "first" || name == "last") {
      KVSERVE_ASSIGN_OR_RETURN(ValueList items, Iterate(v));
      if (items.empty()) return Value::Undefined("No first item, sequence was empty.");
      return name == "first" ? items.front() : items.back();
    }
    if (name == "list") {
      KVSERVE_ASSIGN_OR_RETURN(ValueList items, Iterate(v));
      return Value::List(std::move(items));
    }
    if (name == "items") {
      if (v.is_undefined()) return Value::List();
      if (!v.is_dict())
        return absl::InvalidArgumentError("items: can only get item pairs from a mapping");
      ValueList out;
      for (const auto& [k, x] : v.dict()) out.push_back(Value::Tuple({k, x}));
      return Value::List(std::move(out));
    }
    if (name == "dictsort") {
      if (!v.is_dict()) return absl::InvalidArgumentError("dictsort: can only sort a mapping");
      ValueList out;
      for (const auto& [k, x] : v.dict()) out.push_back(Value::Tuple({k, x}));
      return SortValues(std::move(out), false, "", true);
    }
    if (name == "join") {
      KVSERVE_ASSIGN_OR_RETURN(ValueList items, Iterate(v));
      Value sep = a.Get(0, "d", Value::TemplateString(""));
      Value attribute = a.Get(1, "attribute", Value::None());
      Text out;
      for (size_t i = 0; i < items.size(); ++i) {
        if (i > 0) out.Append(sep.ToText());
        Value item = items[i];
        if (!attribute.is_none()) {
          KVSERVE_ASSIGN_OR_RETURN(item, AttributeOf(item, attribute));
        }
        out.Append(item.ToText());
      }
      return Value::String(std::move(out));
    }
    if (name == "reverse") {
      if (v.is_string()) {
        KVSERVE_ASSIGN_OR_RETURN(ValueList chars, Iterate(v));
        Text out;
        for (auto it = chars.rbegin(); it != chars.rend(); ++it) out.Append(it->text());
        return Value::String(std::move(out), v.markup());
      }
      KVSERVE_ASSIGN_OR_RETURN(ValueList items, Iterate(v));
      std::reverse(items.begin(), items.end());
      return Value::List(std::move(items));
    }
    return std::nullopt;
  }

  // unique and sort (case-insensitive unless asked); nullopt for another name.
  std::optional<absl::StatusOr<Value>> OrderFilter(const std::string& name, const Value& v,
                                                   CallArgs& a) {
    if (name == "unique") {
      KVSERVE_ASSIGN_OR_RETURN(ValueList items, Iterate(v));
      const bool case_sensitive = a.Get(0, "case_sensitive", Value::Bool(false)).Truthy();
      ValueList out;
      ValueList seen;
      for (const Value& item : items) {
        Value key = item;
        if (!case_sensitive) {
          KVSERVE_ASSIGN_OR_RETURN(key, FoldCase(item));
        }
        if (std::find(seen.begin(), seen.end(), key) != seen.end()) continue;
        seen.push_back(key);
        out.push_back(item);
      }
      return Value::List(std::move(out));
    }
    if (name == "sort") {
      KVSERVE_ASSIGN_OR_RETURN(ValueList items, Iterate(v));
      const bool reverse = a.Get(0, "reverse", Value::Bool(false)).Truthy();
      const bool case_sensitive = a.Get(1, "case_sensitive", Value::Bool(false)).Truthy();
      Value attribute = a.Get(2, "attribute", Value::None());
      if (!case_sensitive) {
        for (const Value& item : items) {
          if (item.is_string() && !IsAscii(item.str())) {
            return absl::UnimplementedError("sort of non-ASCII strings is not supported");
          }
        }
      }
      return SortValues(std::move(items), reverse,
                        attribute.is_none() ? std::string() : attribute.ToText().str(),
                        case_sensitive);
    }
    return std::nullopt;
  }

  // Filters that apply a filter, a test or an attribute to each item, and aggregates;
  // nullopt for another name.
  std::optional<absl::StatusOr<Value>> HigherOrderFilter(const std::string& name, const Value& v,
                                                         CallArgs& a) {
    if (name == "map") return MapFilter(v, a);
    if (name == "select" || name == "reject" || name == "selectattr" || name == "rejectattr") {
      return SelectFilter(name, v, a);
    }
    if (name == "sum" || name == "min" || name == "max") return AggregateFilter(name, v, a);
    return std::nullopt;
  }

  // map(attribute=..., default=...) or map("filter", args...).
  absl::StatusOr<Value> MapFilter(const Value& v, CallArgs& a) {
    KVSERVE_ASSIGN_OR_RETURN(ValueList items, Iterate(v));
    ValueList out;
    Value attribute = a.Get(99, "attribute", Value::None());
    if (!attribute.is_none()) {
      Value fallback = a.Get(99, "default");
      for (const Value& item : items) {
        KVSERVE_ASSIGN_OR_RETURN(Value x, AttributeOf(item, attribute));
        if (x.is_undefined() && !fallback.is_undefined()) x = fallback;
        out.push_back(x);
      }
      return Value::List(std::move(out));
    }
    if (a.positional.empty() || !a.positional[0].is_string()) {
      return absl::InvalidArgumentError("map: expected a filter name or attribute=");
    }
    const std::string filter = a.positional[0].str();
    if (!FilterNames().count(filter)) {
      return absl::InvalidArgumentError(absl::StrCat("no filter named '", filter, "'"));
    }
    CallArgs rest;
    rest.positional.assign(a.positional.begin() + 1, a.positional.end());
    rest.keyword = a.keyword;
    for (const Value& item : items) {
      KVSERVE_ASSIGN_OR_RETURN(Value x, RunFilter(filter, item, rest));
      out.push_back(x);
    }
    return Value::List(std::move(out));
  }

  // select/reject (by a test, or truthiness) and selectattr/rejectattr (of an attribute).
  absl::StatusOr<Value> SelectFilter(const std::string& name, const Value& v, CallArgs& a) {
    KVSERVE_ASSIGN_OR_RETURN(ValueList items, Iterate(v));
    const bool by_attr = name == "selectattr" || name == "rejectattr";
    const bool keep_when = name == "select" || name == "selectattr";
    size_t next = 0;
    Value attribute;
    if (by_attr) {
      if (a.positional.empty()) return absl::InvalidArgumentError(name + ": missing attribute");
      attribute = a.positional[next++];
    }
    std::string test;
    if (next < a.positional.size()) {
      if (!a.positional[next].is_string()) return absl::InvalidArgumentError(name + ": bad test");
      test = a.positional[next++].str();
      if (!TestNames().count(test)) {
        return absl::InvalidArgumentError(absl::StrCat("no test named '", test, "'"));
      }
    }
    CallArgs test_args;
    test_args.positional.assign(a.positional.begin() + next, a.positional.end());
    ValueList out;
    for (const Value& item : items) {
      Value x = item;
      if (by_attr) {
        KVSERVE_ASSIGN_OR_RETURN(x, AttributeOf(item, attribute));
      }
      bool r;
      if (test.empty()) {
        r = x.Truthy();
      } else {
        KVSERVE_ASSIGN_OR_RETURN(r, RunTest(test, x, test_args));
      }
      if (r == keep_when) out.push_back(item);
    }
    return Value::List(std::move(out));
  }

  // sum (from start=, by +), min and max (case-insensitive unless asked).
  absl::StatusOr<Value> AggregateFilter(const std::string& name, const Value& v, CallArgs& a) {
    KVSERVE_ASSIGN_OR_RETURN(ValueList items, Iterate(v));
    if (name == "sum") {
      if (!a.Get(0, "attribute", Value::None()).is_none()) {
        return absl::UnimplementedError("sum: attribute= is not supported");
      }
      Value total = a.Get(1, "start", Value::Int(0));
      for (const Value& item : items) {
        KVSERVE_ASSIGN_OR_RETURN(total, Arithmetic("+", total, item));
      }
      return total;
    }
    if (items.empty()) return Value::Undefined("No aggregated item, sequence was empty.");
    const bool case_sensitive = a.Get(0, "case_sensitive", Value::Bool(false)).Truthy();
    Value best = items[0];
    for (const Value& item : items) {
      Value x = item, y = best;
      if (!case_sensitive) {
        KVSERVE_ASSIGN_OR_RETURN(x, FoldCase(item));
        KVSERVE_ASSIGN_OR_RETURN(y, FoldCase(best));
      }
      KVSERVE_ASSIGN_OR_RETURN(int c, Compare(x, y, "<"));
      if ((name == "min" && c < 0) || (name == "max" && c > 0)) best = item;
    }
    return best;
  }

  absl::StatusOr<Value> SortValues(ValueList items, bool reverse, const std::string& attribute,
                                   bool case_sensitive) {
    absl::Status error;
    auto key = [&](const Value& x) -> Value {
      Value k = x;
      if (!attribute.empty()) {
        absl::StatusOr<Value> r = AttributeOf(x, Value::TemplateString(attribute));
        k = r.ok() ? *r : Value();
      }
      if (!case_sensitive && k.is_string()) {
        return Value::String(MapAscii(k.text(), [](size_t, char c) { return Lower(c); }));
      }
      return k;
    };
    std::stable_sort(items.begin(), items.end(), [&](const Value& x, const Value& y) {
      absl::StatusOr<int> c = Compare(key(x), key(y), "<");
      if (!c.ok()) {
        error = c.status();
        return false;
      }
      return reverse ? *c > 0 : *c < 0;
    });
    KVSERVE_RETURN_IF_ERROR(error);
    return Value::List(std::move(items));
  }

  // jinja2's make_attrgetter: "a.b.0" looks up each part (integers as indexes).
  absl::StatusOr<Value> AttributeOf(const Value& item, const Value& attribute) {
    if (attribute.is_int()) return GetItem(item, attribute);
    std::string path = attribute.ToText().str();
    Value cur = item;
    size_t start = 0;
    while (true) {
      size_t dot = path.find('.', start);
      std::string part =
          path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
      Value key = Value::TemplateString(part);
      if (!part.empty() &&
          std::all_of(part.begin(), part.end(), [](char c) { return c >= '0' && c <= '9'; })) {
        key = Value::Int(std::stoll(part));
      }
      KVSERVE_ASSIGN_OR_RETURN(cur, GetItem(cur, key));
      if (dot == std::string::npos) break;
      start = dot + 1;
    }
    return cur;
  }

  absl::StatusOr<Value> Indent(const Value& v, CallArgs& a) {
    Value width = a.Get(0, "width", Value::Int(4));
    const bool first = a.Get(1, "first", Value::Bool(false)).Truthy();
    const bool blank = a.Get(2, "blank", Value::Bool(false)).Truthy();
    Text indention;
    if (width.is_string()) {
      indention = width.text();
    } else if (width.is_int()) {
      indention =
          Text(std::string(static_cast<size_t>(std::max<int64_t>(0, width.as_int())), ' '), true);
    } else {
      return absl::InvalidArgumentError("indent: width must be an integer or a string");
    }
    Text s = SoftStr(v).text();
    s.Append("\n", true);
    Value lines_v = SplitLines(s);
    ValueList& lines = lines_v.list();
    Text out;
    if (blank) {
      for (size_t i = 0; i < lines.size(); ++i) {
        if (i > 0) {
          out.Append("\n", true);
          out.Append(indention);
        }
        out.Append(lines[i].text());
      }
    } else {
      if (!lines.empty()) out.Append(lines[0].text());
      for (size_t i = 1; i < lines.size(); ++i) {
        out.Append("\n", true);
        if (!lines[i].text().empty()) out.Append(indention);
        out.Append(lines[i].text());
      }
    }
    if (first) {
      Text prefixed = indention;
      prefixed.Append(out);
      out = std::move(prefixed);
    }
    return Value::String(std::move(out));
  }

  // ---- tests ----

  absl::StatusOr<bool> RunTest(const std::string& name, const Value& v, const CallArgs& a) {
    auto arg = [&]() { return a.Get(0, "other"); };
    if (name == "defined") return !v.is_undefined();
    if (name == "undefined") return v.is_undefined();
    if (name == "none") return v.is_none();
    if (name == "string") return v.is_string();
    if (name == "mapping") return v.is_dict();
    if (name == "number") return v.is_number();
    if (name == "integer") return v.is_int();
    if (name == "float") return v.is_float();
    if (name == "boolean") return v.is_bool();
    if (name == "true") return v.is_bool() && v.as_bool();
    if (name == "false") return v.is_bool() && !v.as_bool();
    if (name == "callable") return v.is_callable();
    if (name == "iterable") return v.is_undefined() || v.is_string() || v.is_list() || v.is_dict();
    if (name == "sequence") return v.is_undefined() || v.is_string() || v.is_list() || v.is_dict();
    if (name == "sameas") {
      Value o = arg();
      if (v.kind() != o.kind()) return false;
      if (v.is_none() || v.is_undefined()) return true;
      if (v.is_bool()) return v.as_bool() == o.as_bool();
      return v == o && (v.is_int() || v.is_string());
    }
    if (name == "eq" || name == "equalto" || name == "==") return v == arg();
    if (name == "ne" || name == "!=") return !(v == arg());
    if (name == "lt" || name == "lessthan" || name == "<" || name == "le" || name == "<=" ||
        name == "gt" || name == "greaterthan" || name == ">" || name == "ge" || name == ">=") {
      KVSERVE_ASSIGN_OR_RETURN(int c, Compare(v, arg(), name));
      if (name == "lt" || name == "lessthan" || name == "<") return c < 0;
      if (name == "le" || name == "<=") return c <= 0;
      if (name == "gt" || name == "greaterthan" || name == ">") return c > 0;
      return c >= 0;
    }
    if (name == "in") return Contains(a.Get(0, "seq"), v);
    if (name == "odd" || name == "even" || name == "divisibleby") {
      if (v.is_undefined()) return UndefinedError(v);
      if (!v.is_int() && !v.is_bool()) {
        return absl::InvalidArgumentError(absl::StrCat("test '", name, "' needs an integer"));
      }
      if (name == "odd") return FloorMod(v.as_int(), 2) == 1;
      if (name == "even") return FloorMod(v.as_int(), 2) == 0;
      Value n = a.Get(0, "num");
      if (!n.is_int() || n.as_int() == 0) {
        return absl::InvalidArgumentError("divisibleby needs a non-zero integer");
      }
      return FloorMod(v.as_int(), n.as_int()) == 0;
    }
    if (name == "lower" || name == "upper") {
      if (!v.is_string()) return false;
      if (!IsAscii(v.str())) {
        return absl::UnimplementedError("the '" + name +
                                        "' test of non-ASCII text is not supported");
      }
      bool cased = false;
      for (char c : v.str()) {
        if (!IsAlpha(c)) continue;
        cased = true;
        if (name == "lower" ? (c >= 'A' && c <= 'Z') : (c >= 'a' && c <= 'z')) return false;
      }
      return cased;
    }
    return absl::UnimplementedError(absl::StrCat("no test named '", name, "'"));
  }

  std::vector<std::shared_ptr<Frame>> scopes_;
  Flow flow_ = Flow::kNormal;
  int call_depth_ = 0;
};

absl::Status CheckExpr(const Expr* e) {
  if (e == nullptr) return absl::OkStatus();
  if (e->kind == Expr::Kind::kFilter && !FilterNames().count(e->name)) {
    return absl::InvalidArgumentError(absl::StrCat("template error at line ", e->line, ", column ",
                                                   e->column, ": no filter named '", e->name, "'"));
  }
  if (e->kind == Expr::Kind::kTest && !TestNames().count(e->name)) {
    return absl::InvalidArgumentError(absl::StrCat("template error at line ", e->line, ", column ",
                                                   e->column, ": no test named '", e->name, "'"));
  }
  for (const auto& a : e->args) KVSERVE_RETURN_IF_ERROR(CheckExpr(a.get()));
  for (const auto& [k, a] : e->kwargs) KVSERVE_RETURN_IF_ERROR(CheckExpr(a.get()));
  return absl::OkStatus();
}

}  // namespace

Text PythonStrip(const Text& text, const Value& chars, bool left, bool right) {
  return StripImpl(text, chars, left, right);
}

absl::Status CheckNames(const StmtList& program) {
  for (const auto& s : program) {
    KVSERVE_RETURN_IF_ERROR(CheckExpr(s->expr.get()));
    KVSERVE_RETURN_IF_ERROR(CheckExpr(s->condition.get()));
    KVSERVE_RETURN_IF_ERROR(CheckExpr(s->attr_target.get()));
    for (const auto& c : s->conditions) KVSERVE_RETURN_IF_ERROR(CheckExpr(c.get()));
    for (const auto& d : s->defaults) KVSERVE_RETURN_IF_ERROR(CheckExpr(d.get()));
    for (const auto& b : s->bodies) KVSERVE_RETURN_IF_ERROR(CheckNames(b));
    KVSERVE_RETURN_IF_ERROR(CheckNames(s->body));
    KVSERVE_RETURN_IF_ERROR(CheckNames(s->else_body));
  }
  return absl::OkStatus();
}

absl::StatusOr<Text> RenderProgram(const StmtList& program,
                                   const std::vector<std::pair<std::string, Value>>& variables) {
  Evaluator evaluator(variables);
  return evaluator.Render(program);
}

}  // namespace kvserve::engine::chat
