// The syntax tree of the Jinja subset chat templates use, and its parser.
//
// The lexer follows jinja2's with trim_blocks=True and lstrip_blocks=True (what Hugging Face
// renders chat templates with): "\r\n" and "\r" become "\n", one trailing newline of the source
// is dropped, `{%-`/`{{-`/`{#-` strip all whitespace before the tag and `-%}`/`-}}`/`-#}` all
// whitespace after it, a block or comment tag removes the newline right after it, and spaces and
// tabs between a line start and a block or comment tag are removed (`{%+` keeps them).
//
// Statements: for (with tuple targets, `if` filtering, `else`), if/elif/else, set (names, tuples,
// `ns.attr`, and block set), macro, break/continue, filter blocks and `generation` blocks.
// Everything else (include, extends, import, raw, call blocks, recursive loops ...) is a syntax
// error naming the tag, line and column.
#ifndef KVSERVE_ENGINE_CHAT_JINJA_SYNTAX_H_
#define KVSERVE_ENGINE_CHAT_JINJA_SYNTAX_H_

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/chat/value.h"

namespace kvserve::engine::chat {

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Expr {
  enum class Kind {
    kLiteral,    // value
    kName,       // name
    kList,       // args
    kTuple,      // args
    kDict,       // args: key, value, key, value ...
    kGetAttr,    // args[0] . name
    kGetItem,    // args[0] [ args[1] ]
    kSlice,      // args[0] [ args[1] : args[2] : args[3] ] (null children for omitted parts)
    kCall,       // args[0] ( args[1..], kwargs )
    kFilter,     // args[0] | name ( args[1..], kwargs ); args[0] null in a filter block
    kTest,       // args[0] is [not] name ( args[1..] )
    kUnary,      // op args[0]: "-", "+", "not"
    kBinary,     // args[0] op args[1]: + - * / // % ** ~ and or in notin == != < <= > >=
    kCondition,  // args[1] if args[0] else args[2] (args[2] null: undefined)
  };
  Kind kind = Kind::kLiteral;
  int line = 0;
  int column = 0;
  Value value;
  std::string name;  // name, attribute, filter, test or operator
  bool negated = false;
  int height = 1;  // of the subtree (bounded by the parser)
  std::vector<ExprPtr> args;
  std::vector<std::pair<std::string, ExprPtr>> kwargs;
};

struct Stmt;
using StmtList = std::vector<std::unique_ptr<Stmt>>;

struct Stmt {
  enum class Kind {
    kText,      // text (template data)
    kOutput,    // {{ expr }}
    kIf,        // conditions[i] -> bodies[i]; bodies.size() == conditions.size() + 1 with else
    kFor,       // for targets in expr [if condition] body [else else_body]
    kSet,       // set targets = expr; or target expr `ns.attr` (attr_target)
    kSetBlock,  // set targets[0] body
    kMacro,     // macro name(params = defaults) body
    kBreak,
    kContinue,
    kFilterBlock,  // filter expr (kFilter chain with a null base) body
    kScope,        // generation blocks: body
  };
  Kind kind = Kind::kText;
  int line = 0;
  int column = 0;
  std::string text;
  ExprPtr expr;
  ExprPtr condition;
  ExprPtr attr_target;  // set ns.attr: the namespace expression; name in targets[0]
  std::vector<std::string> targets;
  std::vector<ExprPtr> conditions;
  std::vector<StmtList> bodies;
  StmtList body;
  StmtList else_body;
  std::vector<std::string> params;
  std::vector<ExprPtr> defaults;  // one per param, null when none
};

// Parses a template. InvalidArgument "line L, column C: ..." on a syntax error or an unsupported
// construct.
absl::StatusOr<StmtList> ParseTemplate(std::string_view source);

}  // namespace kvserve::engine::chat

#endif  // KVSERVE_ENGINE_CHAT_JINJA_SYNTAX_H_
