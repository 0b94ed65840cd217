// The values a chat template computes with: Python's None, bool, int, float, str, list, dict, plus
// jinja2's Undefined, its namespace() objects and callables (macros, builtins, bound methods).
//
// Strings are Text: UTF-8 bytes, each of which records whether it came from the template's own
// text (string literals, template data, bos_token/eos_token) or from a variable (message content,
// tools, extra variables). Concatenation, slicing and the string methods keep that provenance byte
// for byte, so the rendered prompt can say which spans the tokenizer may parse control tokens in
// (see chat_template.h).
//
// Lists and dicts are shared by reference, as in Python (copies of a Value alias the same list).
#ifndef KVSERVE_ENGINE_CHAT_VALUE_H_
#define KVSERVE_ENGINE_CHAT_VALUE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace kvserve::engine::chat {

// A UTF-8 string whose bytes each carry a provenance flag (true: from the template).
class Text {
 public:
  Text() = default;
  Text(std::string text, bool from_template) : text_(std::move(text)) {
    if (!text_.empty()) runs_.emplace_back(text_.size(), from_template);
  }

  const std::string& str() const { return text_; }
  size_t size() const { return text_.size(); }
  bool empty() const { return text_.empty(); }
  // REQUIRES: i < size().
  bool FromTemplateAt(size_t i) const;
  // True when every byte came from the template (an empty Text counts as such).
  bool AllFromTemplate() const;

  void Append(const Text& other);
  void Append(std::string_view text, bool from_template);
  // Bytes [pos, pos + len) with their provenance.
  Text Substr(size_t pos, size_t len = std::string::npos) const;
  // Every byte's provenance set to `from_template`.
  void SetProvenance(bool from_template);

  // Maximal runs of equal provenance, in order: (length, from_template).
  std::vector<std::pair<size_t, bool>> Runs() const;

 private:
  void AddRun(size_t end, bool from_template);

  std::string text_;
  // (end offset, from_template) of each maximal run, in order; empty iff text_ is.
  std::vector<std::pair<size_t, bool>> runs_;
};

class Value;
using ValueList = std::vector<Value>;
// Keys in insertion order (Python dicts keep it).
using ValueDict = std::vector<std::pair<Value, Value>>;

struct CallArgs;
class Value {
 public:
  enum class Kind {
    kUndefined,
    kNone,
    kBool,
    kInt,
    kFloat,
    kString,
    kList,
    kDict,
    kNamespace,
    kCallable
  };
  using Function = std::function<absl::StatusOr<Value>(CallArgs& args)>;

  Value() = default;  // undefined
  static Value Undefined(std::string name = "");
  static Value None();
  static Value Bool(bool b);
  static Value Int(int64_t i);
  static Value Float(double f);
  // A string from a variable (messages, tools, extra variables): inert by default.
  static Value String(std::string s);
  static Value String(Text text, bool markup = false);
  static Value TemplateString(std::string s);  // template text
  static Value List(ValueList items = {});
  static Value Tuple(ValueList items);
  static Value Dict(ValueDict items = {});
  static Value Namespace(ValueDict attributes = {});
  static Value Callable(std::string name, Function fn);

  Kind kind() const { return kind_; }
  bool is_undefined() const { return kind_ == Kind::kUndefined; }
  bool is_none() const { return kind_ == Kind::kNone; }
  bool is_bool() const { return kind_ == Kind::kBool; }
  bool is_int() const { return kind_ == Kind::kInt; }
  bool is_float() const { return kind_ == Kind::kFloat; }
  bool is_number() const { return is_int() || is_float() || is_bool(); }
  bool is_string() const { return kind_ == Kind::kString; }
  bool is_list() const { return kind_ == Kind::kList; }
  bool is_tuple() const { return kind_ == Kind::kList && tuple_; }
  bool is_dict() const { return kind_ == Kind::kDict; }
  bool is_namespace() const { return kind_ == Kind::kNamespace; }
  bool is_callable() const { return kind_ == Kind::kCallable; }

  bool as_bool() const { return b_; }
  int64_t as_int() const { return is_bool() ? (b_ ? 1 : 0) : i_; }
  double as_float() const { return is_float() ? f_ : static_cast<double>(as_int()); }
  const Text& text() const { return text_ ? *text_ : EmptyText(); }
  const std::string& str() const { return text().str(); }
  bool markup() const { return markup_; }  // jinja2 Markup (tojson's result)
  ValueList& list() const { return *list_; }
  ValueDict& dict() const { return *dict_; }  // dict items or namespace attributes
  const Function& function() const { return *fn_; }
  const std::string& name() const { return name_; }  // undefined: the missing name; callable

  // Dict/namespace lookup by string key; nullptr when absent.
  const Value* Find(std::string_view key) const;
  // Dict/namespace insert or replace.
  void Set(const Value& key, Value value) const;
  void Set(std::string_view key, Value value) const {
    Set(Value::String(std::string(key)), std::move(value));
  }

  // Python truthiness (undefined is false).
  bool Truthy() const;
  // Python ==.
  friend bool operator==(const Value& a, const Value& b);
  // Python str(): what `{{ value }}` prints. Undefined prints "". Containers print their repr and
  // count as variable text unless every string in them is template text.
  Text ToText() const;
  // Python repr().
  std::string Repr() const;

 private:
  Kind kind_ = Kind::kUndefined;
  bool b_ = false;
  bool tuple_ = false;
  bool markup_ = false;
  int64_t i_ = 0;
  double f_ = 0;
  static const Text& EmptyText();

  std::shared_ptr<const Text> text_;  // strings: shared, so copies of a Value are cheap
  std::string name_;
  std::shared_ptr<ValueList> list_;
  std::shared_ptr<ValueDict> dict_;
  std::shared_ptr<Function> fn_;
};

// Arguments of a call: positional, then keyword.
struct CallArgs {
  ValueList positional;
  std::vector<std::pair<std::string, Value>> keyword;

  // The argument named `name` or at `index`, else `fallback`.
  Value Get(size_t index, std::string_view name, Value fallback = Value()) const;
};

// Whether every string inside `value` (dict keys included) came from the template.
bool AllStringsFromTemplate(const Value& value);

// Python's float repr ("1.0", "0.1", "1e+16", "inf", "nan").
std::string PythonFloatRepr(double f);
// Python's repr of a str (quotes chosen as Python does).
std::string PythonStringRepr(std::string_view s);

// json.dumps(value, sort_keys=True, indent=indent) with jinja2's htmlsafe escaping of < > & ' as
// \u003c, \u003e, \u0026, \u0027 (jinja2's `tojson` filter). indent < 0: none. InvalidArgument for
// values JSON cannot hold (undefined, callables).
absl::StatusOr<std::string> ToJson(const Value& value, int indent);

}  // namespace kvserve::engine::chat

#endif  // KVSERVE_ENGINE_CHAT_VALUE_H_
