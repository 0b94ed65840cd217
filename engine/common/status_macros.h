// Status helpers shared by the engine and the server.
//
// Abseil 20220623 ships no status macros, so these are ours:
//   KVSERVE_RETURN_IF_ERROR(expr);            returns the status of `expr` when it is not OK.
//   KVSERVE_ASSIGN_OR_RETURN(lhs, expr);      evaluates a StatusOr, returns its status on error,
//                                             otherwise moves the value into `lhs`.
//   KVSERVE_CHECK(cond) << "message";         a broken invariant: logs and aborts.
#ifndef KVSERVE_ENGINE_COMMON_STATUS_MACROS_H_
#define KVSERVE_ENGINE_COMMON_STATUS_MACROS_H_

#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define KVSERVE_STATUS_CONCAT_INNER_(a, b) a##b
#define KVSERVE_STATUS_CONCAT_(a, b) KVSERVE_STATUS_CONCAT_INNER_(a, b)

#define KVSERVE_RETURN_IF_ERROR(expr)                  \
  do {                                                 \
    ::absl::Status kvserve_status_ = (expr);           \
    if (!kvserve_status_.ok()) return kvserve_status_; \
  } while (0)

#define KVSERVE_ASSIGN_OR_RETURN(lhs, expr) \
  KVSERVE_ASSIGN_OR_RETURN_IMPL_(KVSERVE_STATUS_CONCAT_(kvserve_statusor_, __LINE__), lhs, expr)

// `statusor` is a variable name and `lhs` may be a declaration (`const int x`): neither can be
// parenthesized. `expr` is.
// NOLINTBEGIN(bugprone-macro-parentheses)
#define KVSERVE_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, expr) \
  auto statusor = (expr);                                   \
  if (!statusor.ok()) return std::move(statusor).status();  \
  lhs = std::move(statusor).value()
// NOLINTEND(bugprone-macro-parentheses)

namespace kvserve::internal {

// Collects a message and aborts when destroyed. Used only through KVSERVE_CHECK.
class CheckFailure {
 public:
  CheckFailure(const char* file, int line, const char* condition) {
    stream_ << file << ":" << line << ": CHECK failed: " << condition << " ";
  }
  [[noreturn]] ~CheckFailure() {
    std::fprintf(stderr, "%s\n", stream_.str().c_str());
    std::fflush(stderr);
    std::abort();
  }
  std::ostream& stream() { return stream_; }

 private:
  std::ostringstream stream_;
};

}  // namespace kvserve::internal

#define KVSERVE_CHECK(cond) \
  if (cond) {               \
  } else                    \
    ::kvserve::internal::CheckFailure(__FILE__, __LINE__, #cond).stream()

#endif  // KVSERVE_ENGINE_COMMON_STATUS_MACROS_H_
