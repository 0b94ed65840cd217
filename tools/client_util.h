// Helpers of `kvserve client`: connection flags, channels, call contexts, error reports and the
// text forms of health and model info.
#ifndef KVSERVE_TOOLS_CLIENT_UTIL_H_
#define KVSERVE_TOOLS_CLIENT_UTIL_H_

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "grpcpp/grpcpp.h"
#include "kvserve/v1/generation.pb.h"
#include "tools/flags.h"

namespace kvserve::tools {

// Declares --addr, --api-key, --tls, --tls-ca, --timeout.
void AddConnectionFlags(FlagSet& flags);
// A channel to --addr: TLS when --tls or --tls-ca is given (--tls-ca: the PEM roots to trust,
// otherwise the system's). InvalidArgument when the CA file cannot be read.
absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(const FlagSet& flags);
// Sets the API key (--api-key, else $KVSERVE_API_KEY) and the deadline (--timeout seconds).
absl::Status PrepareContext(const FlagSet& flags, grpc::ClientContext* context);

// "INVALID_ARGUMENT" for grpc::StatusCode::INVALID_ARGUMENT, and so on.
std::string GrpcCodeName(grpc::StatusCode code);
// Print "kvserve client: CODE: message" to stderr; return 1.
int ReportError(const grpc::Status& status);
int ReportError(const absl::Status& status);

// Logs usage and timings of a finished generation to stderr.
void LogSummary(const std::string& request_id, const v1::Usage& usage, const v1::Timings& timings,
                v1::FinishReason finish_reason);

// Calls grpc.health.v1.Health/Check for `service` ("" = the server) and returns the status name:
// SERVING, NOT_SERVING, UNKNOWN or SERVICE_UNKNOWN. A failed call returns its status.
absl::StatusOr<std::string> CheckHealth(const std::shared_ptr<grpc::Channel>& channel,
                                        grpc::ClientContext* context, const std::string& service);

// Model info as "key: value" lines.
std::string FormatModelInfo(const v1::ModelInfo& info);

// Sets the fields of `sampling` whose flags (AddSamplingFlags) were given; the others stay unset,
// so the server's defaults apply. A negative --seed leaves the seed to the server.
void SetSamplingFromFlags(const FlagSet& flags, v1::SamplingParams* sampling);

}  // namespace kvserve::tools

#endif  // KVSERVE_TOOLS_CLIENT_UTIL_H_
