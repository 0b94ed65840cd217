#include "server/metrics/request_outcomes.h"

namespace kvserve::server {

RequestOutcome OutcomeOf(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kOk:
      return RequestOutcome::kOk;
    case absl::StatusCode::kCancelled:
      return RequestOutcome::kCancelled;
    case absl::StatusCode::kDeadlineExceeded:
      return RequestOutcome::kDeadlineExceeded;
    default:
      return RequestOutcome::kFailed;
  }
}

const char* RequestOutcomeName(RequestOutcome outcome) {
  switch (outcome) {
    case RequestOutcome::kOk:
      return "ok";
    case RequestOutcome::kCancelled:
      return "cancelled";
    case RequestOutcome::kDeadlineExceeded:
      return "deadline_exceeded";
    case RequestOutcome::kFailed:
      return "failed";
  }
  return "failed";
}

const char* ProtocolName(Protocol protocol) {
  return protocol == Protocol::kHttp ? "http" : "grpc";
}

}  // namespace kvserve::server
