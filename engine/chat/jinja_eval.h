// Evaluates a parsed template (jinja_syntax.h) the way jinja2's default environment does with
// default Undefined (falsy, prints "", iterates as empty; any attribute, item, call or arithmetic
// on it is an error), autoescape off, and the `loopcontrols` extension on.
#ifndef KVSERVE_ENGINE_CHAT_JINJA_EVAL_H_
#define KVSERVE_ENGINE_CHAT_JINJA_EVAL_H_

#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/chat/jinja_syntax.h"
#include "engine/chat/value.h"

namespace kvserve::engine::chat {

// Renders `program` with `variables` as the template's globals (plus range, namespace, dict and
// raise_exception). raise_exception(msg) fails with InvalidArgument whose message is `msg`;
// other failures are InvalidArgument naming the line and column, or Unimplemented for a
// construct outside the subset.
absl::StatusOr<Text> RenderProgram(const StmtList& program,
                                   const std::vector<std::pair<std::string, Value>>& variables);

// OK when every filter and test the program names is implemented; otherwise an error naming the
// first unknown one with its line and column.
absl::Status CheckNames(const StmtList& program);

// Python str methods and jinja2 filters used by the evaluator, exposed for tests.
Text PythonStrip(const Text& text, const Value& chars, bool left, bool right);

}  // namespace kvserve::engine::chat

#endif  // KVSERVE_ENGINE_CHAT_JINJA_EVAL_H_
