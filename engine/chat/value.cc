#include "engine/chat/value.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/chat/utf8.h"
#include "engine/common/status_macros.h"

namespace kvserve::engine::chat {

// ---- Text -------------------------------------------------------------------------------------

bool Text::FromTemplateAt(size_t i) const {
  auto it = std::upper_bound(runs_.begin(), runs_.end(), i,
                             [](size_t pos, const auto& run) { return pos < run.first; });
  return it != runs_.end() && it->second;
}

bool Text::AllFromTemplate() const {
  return std::all_of(runs_.begin(), runs_.end(), [](const auto& run) { return run.second; });
}

void Text::AddRun(size_t end, bool from_template) {
  if (!runs_.empty() && runs_.back().second == from_template) {
    runs_.back().first = end;
  } else {
    runs_.emplace_back(end, from_template);
  }
}

void Text::Append(std::string_view text, bool from_template) {
  if (text.empty()) return;
  text_.append(text);
  AddRun(text_.size(), from_template);
}

void Text::Append(const Text& other) {
  const size_t base = text_.size();
  text_.append(other.text_);
  for (const auto& [end, from_template] : other.runs_) AddRun(base + end, from_template);
}

Text Text::Substr(size_t pos, size_t len) const {
  pos = std::min(pos, text_.size());
  len = std::min(len, text_.size() - pos);
  Text out;
  if (len == 0) return out;
  out.text_ = text_.substr(pos, len);
  const size_t end = pos + len;
  auto it = std::upper_bound(runs_.begin(), runs_.end(), pos,
                             [](size_t p, const auto& run) { return p < run.first; });
  for (; it != runs_.end(); ++it) {
    out.AddRun(std::min(it->first, end) - pos, it->second);
    if (it->first >= end) break;
  }
  return out;
}

void Text::SetProvenance(bool from_template) {
  runs_.clear();
  if (!text_.empty()) runs_.emplace_back(text_.size(), from_template);
}

std::vector<std::pair<size_t, bool>> Text::Runs() const {
  std::vector<std::pair<size_t, bool>> runs;
  size_t start = 0;
  for (const auto& [end, from_template] : runs_) {
    runs.emplace_back(end - start, from_template);
    start = end;
  }
  return runs;
}

const Text& Value::EmptyText() {
  static const Text* empty = new Text();
  return *empty;
}

// ---- Value ------------------------------------------------------------------------------------

Value Value::Undefined(std::string name) {
  Value v;
  v.name_ = std::move(name);
  return v;
}
Value Value::None() {
  Value v;
  v.kind_ = Kind::kNone;
  return v;
}
Value Value::Bool(bool b) {
  Value v;
  v.kind_ = Kind::kBool;
  v.b_ = b;
  return v;
}
Value Value::Int(int64_t i) {
  Value v;
  v.kind_ = Kind::kInt;
  v.i_ = i;
  return v;
}
Value Value::Float(double f) {
  Value v;
  v.kind_ = Kind::kFloat;
  v.f_ = f;
  return v;
}
Value Value::String(std::string s) { return String(Text(std::move(s), false)); }
Value Value::TemplateString(std::string s) { return String(Text(std::move(s), true)); }
Value Value::String(Text text, bool markup) {
  Value v;
  v.kind_ = Kind::kString;
  v.text_ = std::make_shared<const Text>(std::move(text));
  v.markup_ = markup;
  return v;
}
Value Value::List(ValueList items) {
  Value v;
  v.kind_ = Kind::kList;
  v.list_ = std::make_shared<ValueList>(std::move(items));
  return v;
}
Value Value::Tuple(ValueList items) {
  Value v = List(std::move(items));
  v.tuple_ = true;
  return v;
}
Value Value::Dict(ValueDict items) {
  Value v;
  v.kind_ = Kind::kDict;
  v.dict_ = std::make_shared<ValueDict>(std::move(items));
  return v;
}
Value Value::Namespace(ValueDict attributes) {
  Value v = Dict(std::move(attributes));
  v.kind_ = Kind::kNamespace;
  return v;
}
Value Value::Callable(std::string name, Function fn) {
  Value v;
  v.kind_ = Kind::kCallable;
  v.name_ = std::move(name);
  v.fn_ = std::make_shared<Function>(std::move(fn));
  return v;
}

const Value* Value::Find(std::string_view key) const {
  if (!dict_) return nullptr;
  for (const auto& [k, v] : *dict_) {
    if (k.is_string() && k.str() == key) return &v;
  }
  return nullptr;
}

void Value::Set(const Value& key, Value value) const {
  for (auto& [k, v] : *dict_) {
    if (k == key) {
      v = std::move(value);
      return;
    }
  }
  dict_->emplace_back(key, std::move(value));
}

bool Value::Truthy() const {
  switch (kind_) {
    case Kind::kUndefined:
    case Kind::kNone:
      return false;
    case Kind::kBool:
      return b_;
    case Kind::kInt:
      return i_ != 0;
    case Kind::kFloat:
      return f_ != 0;
    case Kind::kString:
      return !text().empty();
    case Kind::kList:
      return !list_->empty();
    case Kind::kDict:
      return !dict_->empty();
    case Kind::kNamespace:
    case Kind::kCallable:
      return true;
  }
  return false;
}

bool operator==(const Value& a, const Value& b) {
  if (a.is_number() && b.is_number()) {
    if (a.is_float() || b.is_float()) return a.as_float() == b.as_float();
    return a.as_int() == b.as_int();
  }
  if (a.kind_ != b.kind_) return false;
  switch (a.kind_) {
    case Value::Kind::kUndefined:
    case Value::Kind::kNone:
      return true;
    case Value::Kind::kString:
      return a.str() == b.str();
    case Value::Kind::kList:
      if (a.tuple_ != b.tuple_) return false;
      return *a.list_ == *b.list_;
    case Value::Kind::kDict: {
      if (a.dict_->size() != b.dict_->size()) return false;
      for (const auto& [k, v] : *a.dict_) {
        bool found = false;
        for (const auto& [k2, v2] : *b.dict_) {
          if (k == k2) {
            if (!(v == v2)) return false;
            found = true;
            break;
          }
        }
        if (!found) return false;
      }
      return true;
    }
    case Value::Kind::kNamespace:
      return a.dict_ == b.dict_;
    case Value::Kind::kCallable:
      return a.fn_ == b.fn_;
    default:
      return false;
  }
}

std::string PythonFloatRepr(double f) {
  if (std::isnan(f)) return "nan";
  if (std::isinf(f)) return f > 0 ? "inf" : "-inf";
  if (f == 0) return std::signbit(f) ? "-0.0" : "0.0";
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof(buf), f, std::chars_format::scientific);
  std::string sci(buf, res.ptr);
  bool negative = sci[0] == '-';
  if (negative) sci.erase(0, 1);
  size_t e = sci.find('e');
  std::string mantissa = sci.substr(0, e);
  int exponent = std::stoi(sci.substr(e + 1));
  std::string digits;
  for (char c : mantissa) {
    if (c != '.') digits.push_back(c);
  }
  int decpt = exponent + 1;
  std::string out = negative ? "-" : "";
  if (decpt <= -4 || decpt > 16) {
    out += digits.substr(0, 1);
    if (digits.size() > 1) out += "." + digits.substr(1);
    char exp_buf[16];
    std::snprintf(exp_buf, sizeof(exp_buf), "e%c%02d", exponent < 0 ? '-' : '+',
                  exponent < 0 ? -exponent : exponent);
    out += exp_buf;
  } else if (decpt <= 0) {
    out += "0." + std::string(-decpt, '0') + digits;
  } else if (decpt >= static_cast<int>(digits.size())) {
    out += digits + std::string(decpt - digits.size(), '0') + ".0";
  } else {
    out += digits.substr(0, decpt) + "." + digits.substr(decpt);
  }
  return out;
}

std::string PythonStringRepr(std::string_view s) {
  const bool has_single = s.find('\'') != std::string_view::npos;
  const bool has_double = s.find('"') != std::string_view::npos;
  const char quote = (has_single && !has_double) ? '"' : '\'';
  std::string out(1, quote);
  for (unsigned char c : s) {
    if (c == static_cast<unsigned char>(quote) || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  out += quote;
  return out;
}

bool AllStringsFromTemplate(const Value& v) {
  const auto AllTemplate = AllStringsFromTemplate;
  if (v.is_string()) return v.text().AllFromTemplate();
  if (v.is_list()) {
    for (const Value& x : v.list()) {
      if (!AllTemplate(x)) return false;
    }
  }
  if (v.is_dict() || v.is_namespace()) {
    for (const auto& [k, x] : v.dict()) {
      if (!AllTemplate(k) || !AllTemplate(x)) return false;
    }
  }
  return true;
}

std::string Value::Repr() const {
  switch (kind_) {
    case Kind::kUndefined:
      return "";
    case Kind::kNone:
      return "None";
    case Kind::kBool:
      return b_ ? "True" : "False";
    case Kind::kInt:
      return std::to_string(i_);
    case Kind::kFloat:
      return PythonFloatRepr(f_);
    case Kind::kString:
      return markup_ ? "Markup(" + PythonStringRepr(str()) + ")" : PythonStringRepr(str());
    case Kind::kList: {
      std::string out = tuple_ ? "(" : "[";
      for (size_t i = 0; i < list_->size(); ++i) {
        if (i > 0) out += ", ";
        out += (*list_)[i].Repr();
      }
      if (tuple_ && list_->size() == 1) out += ",";
      out += tuple_ ? ")" : "]";
      return out;
    }
    case Kind::kDict: {
      std::string out = "{";
      for (size_t i = 0; i < dict_->size(); ++i) {
        if (i > 0) out += ", ";
        out += (*dict_)[i].first.Repr() + ": " + (*dict_)[i].second.Repr();
      }
      return out + "}";
    }
    case Kind::kNamespace: {
      std::string out = "<Namespace {";
      for (size_t i = 0; i < dict_->size(); ++i) {
        if (i > 0) out += ", ";
        out += (*dict_)[i].first.Repr() + ": " + (*dict_)[i].second.Repr();
      }
      return out + "}>";
    }
    case Kind::kCallable:
      return "<function " + name_ + ">";
  }
  return "";
}

Text Value::ToText() const {
  switch (kind_) {
    case Kind::kUndefined:
      return Text();
    case Kind::kString:
      return text();
    case Kind::kNone:
    case Kind::kBool:
    case Kind::kInt:
    case Kind::kFloat:
      return Text(Repr(), true);
    default:
      return Text(Repr(), AllStringsFromTemplate(*this));
  }
}

Value CallArgs::Get(size_t index, std::string_view name, Value fallback) const {
  for (const auto& [k, v] : keyword) {
    if (k == name) return v;
  }
  if (index < positional.size()) return positional[index];
  return fallback;
}

// ---- JSON -------------------------------------------------------------------------------------

namespace {

void JsonString(std::string_view s, std::string& out) {
  out += '"';
  size_t i = 0;
  while (i < s.size()) {
    unsigned char c = s[i];
    if (c < 0x80) {
      switch (c) {
        case '"':
          out += "\\\"";
          break;
        case '\\':
          out += "\\\\";
          break;
        case '\n':
          out += "\\n";
          break;
        case '\r':
          out += "\\r";
          break;
        case '\t':
          out += "\\t";
          break;
        case '\b':
          out += "\\b";
          break;
        case '\f':
          out += "\\f";
          break;
        case '<':
          out += "\\u003c";
          break;
        case '>':
          out += "\\u003e";
          break;
        case '&':
          out += "\\u0026";
          break;
        case '\'':
          out += "\\u0027";
          break;
        default:
          if (c < 0x20 || c == 0x7f) {
            char buf[8];
            std::snprintf(buf, sizeof(buf), "\\u%04x", c);
            out += buf;
          } else {
            out += static_cast<char>(c);
          }
      }
      ++i;
      continue;
    }
    uint32_t cp = DecodeUtf8(s, &i);
    char buf[16];
    if (cp >= 0x10000) {
      cp -= 0x10000;
      std::snprintf(buf, sizeof(buf), "\\u%04x\\u%04x", 0xD800 + (cp >> 10), 0xDC00 + (cp & 0x3FF));
    } else {
      std::snprintf(buf, sizeof(buf), "\\u%04x", cp);
    }
    out += buf;
  }
  out += '"';
}

absl::Status JsonValue(const Value& v, int indent, int level, std::string& out);

// Starts a new line indented `indent * level` spaces.
void JsonNewline(int indent, int level, std::string& out) {
  out += '\n';
  out.append(static_cast<size_t>(indent) * static_cast<size_t>(level), ' ');
}

// A float as Python's json writes it: NaN, Infinity, -Infinity or its repr.
void JsonFloat(double f, std::string& out) {
  if (std::isnan(f)) {
    out += "NaN";
  } else if (std::isinf(f)) {
    out += f > 0 ? "Infinity" : "-Infinity";
  } else {
    out += PythonFloatRepr(f);
  }
}

// A list: "[]" when empty; items one per line when indent >= 0, else ", "-separated.
absl::Status JsonList(const Value& v, int indent, int level, std::string& out) {
  if (v.list().empty()) {
    out += "[]";
    return absl::OkStatus();
  }
  out += '[';
  for (size_t i = 0; i < v.list().size(); ++i) {
    if (i > 0) out += indent >= 0 ? "," : ", ";
    if (indent >= 0) JsonNewline(indent, level + 1, out);
    KVSERVE_RETURN_IF_ERROR(JsonValue(v.list()[i], indent, level + 1, out));
  }
  if (indent >= 0) JsonNewline(indent, level, out);
  out += ']';
  return absl::OkStatus();
}

// A dict key as Python's json writes it (keys of other kinds are an error).
absl::StatusOr<std::string> JsonDictKey(const Value& k) {
  if (k.is_string()) return k.str();
  if (k.is_bool()) return std::string(k.as_bool() ? "true" : "false");
  if (k.is_none()) return std::string("null");
  if (k.is_int()) return std::to_string(k.as_int());
  if (k.is_float()) return PythonFloatRepr(k.as_float());
  return absl::InvalidArgumentError("tojson: keys must be str, int, float, bool or None");
}

// A dict with its keys converted to strings and sorted (stable): "{}" when empty; items one per
// line when indent >= 0, else ", "-separated.
absl::Status JsonDict(const Value& v, int indent, int level, std::string& out) {
  if (v.dict().empty()) {
    out += "{}";
    return absl::OkStatus();
  }
  std::vector<std::pair<std::string, const Value*>> items;
  for (const auto& [k, x] : v.dict()) {
    KVSERVE_ASSIGN_OR_RETURN(std::string key, JsonDictKey(k));
    items.emplace_back(std::move(key), &x);
  }
  std::stable_sort(items.begin(), items.end(),
                   [](const auto& a, const auto& b) { return a.first < b.first; });
  out += '{';
  for (size_t i = 0; i < items.size(); ++i) {
    if (i > 0) out += indent >= 0 ? "," : ", ";
    if (indent >= 0) JsonNewline(indent, level + 1, out);
    JsonString(items[i].first, out);
    out += ": ";
    KVSERVE_RETURN_IF_ERROR(JsonValue(*items[i].second, indent, level + 1, out));
  }
  if (indent >= 0) JsonNewline(indent, level, out);
  out += '}';
  return absl::OkStatus();
}

// Appends `v` as JSON (Python's json.dumps with the given indent; < 0: one line) at nesting
// `level`; undefined values, namespaces and functions are errors.
absl::Status JsonValue(const Value& v, int indent, int level, std::string& out) {
  switch (v.kind()) {
    case Value::Kind::kNone:
      out += "null";
      return absl::OkStatus();
    case Value::Kind::kBool:
      out += v.as_bool() ? "true" : "false";
      return absl::OkStatus();
    case Value::Kind::kInt:
      out += std::to_string(v.as_int());
      return absl::OkStatus();
    case Value::Kind::kFloat:
      JsonFloat(v.as_float(), out);
      return absl::OkStatus();
    case Value::Kind::kString:
      JsonString(v.str(), out);
      return absl::OkStatus();
    case Value::Kind::kList:
      return JsonList(v, indent, level, out);
    case Value::Kind::kDict:
      return JsonDict(v, indent, level, out);
    case Value::Kind::kUndefined:
      return absl::InvalidArgumentError(
          absl::StrCat("tojson: '", v.name().empty() ? "value" : v.name(),
                       "' is undefined (Object of type Undefined is not JSON serializable)"));
    default:
      return absl::InvalidArgumentError(absl::StrCat(
          "tojson: a ", v.is_namespace() ? "namespace" : "function", " is not JSON serializable"));
  }
}

}  // namespace

absl::StatusOr<std::string> ToJson(const Value& value, int indent) {
  std::string out;
  KVSERVE_RETURN_IF_ERROR(JsonValue(value, indent, 0, out));
  return out;
}

}  // namespace kvserve::engine::chat
