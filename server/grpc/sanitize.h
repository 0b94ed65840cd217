// Escaping of client-supplied text before it reaches a log line or an error message.
//
// A caller controls the strings it sends (policy names, stop strings, request fields echoed in an
// error). Written raw, a "\n" starts a forged log line and an ESC sequence drives the operator's
// terminal. SanitizeForLog keeps printable text readable, UTF-8 included, and escapes the rest:
//   - ASCII controls and DEL as \n, \r, \t or \xNN; a backslash as \\ (so an escape in the
//     output always comes from this function);
//   - bytes that are not part of well-formed UTF-8 as \xNN;
//   - the C1 controls (U+0080..U+009F), the line and paragraph separators (U+2028, U+2029) and
//     the bidirectional overrides and isolates (U+202A..U+202E, U+2066..U+2069) as \u{XXXX}.
// Every message the gRPC services return and every "rejected" log line goes through it
// (ToGrpcStatus, LogRejected), so text from the engine that echoes a request field is covered
// too.
//
// Thread-safety: stateless.
#ifndef KVSERVE_SERVER_GRPC_SANITIZE_H_
#define KVSERVE_SERVER_GRPC_SANITIZE_H_

#include <string>
#include <string_view>

namespace kvserve::server {

std::string SanitizeForLog(std::string_view text);

}  // namespace kvserve::server

#endif  // KVSERVE_SERVER_GRPC_SANITIZE_H_
