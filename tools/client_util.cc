#include "tools/client_util.h"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/notification.h"
#include "google/protobuf/io/coded_stream.h"
#include "grpcpp/generic/generic_stub.h"
#include "spdlog/spdlog.h"

namespace kvserve::tools {
namespace {

double Ms(const google::protobuf::Duration& d) { return d.seconds() * 1e3 + d.nanos() / 1e6; }

}  // namespace

void AddConnectionFlags(FlagSet& flags) {
  flags.String("addr", "127.0.0.1:50051", "server address, host:port");
  flags.String("api-key", "", "API key (default: $KVSERVE_API_KEY)");
  flags.Bool("tls", "connect with TLS, trusting the system's CA certificates");
  flags.String("tls-ca", "", "connect with TLS, trusting the CA certificate(s) in this PEM file");
  flags.Float("timeout", 0, "deadline of the call in seconds; 0 = none");
}

absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(const FlagSet& flags) {
  std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::InsecureChannelCredentials();
  const std::string ca_file = flags.GetString("tls-ca");
  if (!ca_file.empty() || flags.GetBool("tls")) {
    grpc::SslCredentialsOptions ssl;
    if (!ca_file.empty()) {
      std::ifstream in(ca_file, std::ios::binary);
      if (!in) return absl::InvalidArgumentError(absl::StrCat("--tls-ca: cannot read ", ca_file));
      std::stringstream pem;
      pem << in.rdbuf();
      ssl.pem_root_certs = pem.str();
    }
    credentials = grpc::SslCredentials(ssl);
  }
  grpc::ChannelArguments arguments;
  arguments.SetMaxReceiveMessageSize(-1);
  return grpc::CreateCustomChannel(flags.GetString("addr"), credentials, arguments);
}

absl::Status PrepareContext(const FlagSet& flags, grpc::ClientContext* context) {
  std::string key = flags.GetString("api-key");
  if (key.empty()) {
    if (const char* env = std::getenv("KVSERVE_API_KEY"); env != nullptr) key = env;
  }
  if (!key.empty()) context->AddMetadata("authorization", "Bearer " + key);
  const double timeout = flags.GetFloat("timeout");
  if (timeout < 0) return absl::InvalidArgumentError("--timeout: must be >= 0");
  if (timeout > 0) {
    context->set_deadline(std::chrono::system_clock::now() +
                          std::chrono::microseconds(static_cast<int64_t>(timeout * 1e6)));
  }
  return absl::OkStatus();
}

std::string GrpcCodeName(grpc::StatusCode code) {
  static const char* const kNames[] = {"OK",
                                       "CANCELLED",
                                       "UNKNOWN",
                                       "INVALID_ARGUMENT",
                                       "DEADLINE_EXCEEDED",
                                       "NOT_FOUND",
                                       "ALREADY_EXISTS",
                                       "PERMISSION_DENIED",
                                       "RESOURCE_EXHAUSTED",
                                       "FAILED_PRECONDITION",
                                       "ABORTED",
                                       "OUT_OF_RANGE",
                                       "UNIMPLEMENTED",
                                       "INTERNAL",
                                       "UNAVAILABLE",
                                       "DATA_LOSS",
                                       "UNAUTHENTICATED"};
  const int i = static_cast<int>(code);
  if (i >= 0 && i < static_cast<int>(sizeof(kNames) / sizeof(kNames[0]))) return kNames[i];
  return absl::StrCat("CODE_", i);
}

int ReportError(const grpc::Status& status) {
  std::fprintf(stderr, "kvserve client: %s: %s\n", GrpcCodeName(status.error_code()).c_str(),
               status.error_message().c_str());
  return 1;
}

int ReportError(const absl::Status& status) {
  return ReportError(
      grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message())));
}

void LogSummary(const std::string& request_id, const v1::Usage& usage, const v1::Timings& timings,
                v1::FinishReason finish_reason) {
  spdlog::info(
      "request {}: {} prompt tokens ({} cached), {} generated; finish reason {}; "
      "first token after {:.1f} ms, total {:.1f} ms",
      request_id, usage.prompt_tokens(), usage.cached_prompt_tokens(), usage.completion_tokens(),
      v1::FinishReason_Name(finish_reason), Ms(timings.time_to_first_token()), Ms(timings.total()));
}

absl::StatusOr<std::string> CheckHealth(const std::shared_ptr<grpc::Channel>& channel,
                                        grpc::ClientContext* context, const std::string& service) {
  // grpc.health.v1.HealthCheckRequest { string service = 1; }, encoded by hand: gRPC ships the
  // health service but no C++ client for it.
  std::string request_bytes;
  if (!service.empty()) {
    request_bytes.push_back(0x0A);
    for (uint64_t n = service.size();; n >>= 7) {
      if (n < 0x80) {
        request_bytes.push_back(static_cast<char>(n));
        break;
      }
      request_bytes.push_back(static_cast<char>((n & 0x7F) | 0x80));
    }
    request_bytes += service;
  }
  grpc::Slice slice(request_bytes);
  grpc::ByteBuffer request(&slice, 1);
  grpc::ByteBuffer response;
  grpc::GenericStub stub(channel);
  absl::Notification done;
  grpc::Status status;
  stub.UnaryCall(context, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request, &response,
                 [&](grpc::Status s) {
                   status = std::move(s);
                   done.Notify();
                 });
  done.WaitForNotification();
  if (!status.ok()) {
    return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
  }
  // HealthCheckResponse { ServingStatus status = 1; }
  std::vector<grpc::Slice> slices;
  std::string bytes;
  if (response.Dump(&slices).ok()) {
    for (const grpc::Slice& s : slices)
      bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  }
  google::protobuf::io::CodedInputStream in(reinterpret_cast<const uint8_t*>(bytes.data()),
                                            static_cast<int>(bytes.size()));
  uint32_t value = 0;
  for (uint32_t tag = in.ReadTag(); tag != 0; tag = in.ReadTag()) {
    if (tag != 0x08 || !in.ReadVarint32(&value)) break;  // field 1, varint; nothing else
  }
  switch (value) {
    case 1:
      return std::string("SERVING");
    case 2:
      return std::string("NOT_SERVING");
    case 3:
      return std::string("SERVICE_UNKNOWN");
    default:
      return std::string("UNKNOWN");
  }
}

std::string FormatModelInfo(const v1::ModelInfo& info) {
  std::vector<std::string> formats;
  for (int f : info.kv_formats_available()) {
    formats.push_back(v1::KvFormat_Name(static_cast<v1::KvFormat>(f)));
  }
  std::string out;
  absl::StrAppend(&out, "architecture:        ", info.architecture(), "\n");
  absl::StrAppend(&out, "name:                ", info.name(), "\n");
  absl::StrAppend(&out, "dim:                 ", info.dim(), "\n");
  absl::StrAppend(&out, "hidden_dim:          ", info.hidden_dim(), "\n");
  absl::StrAppend(&out, "layers:              ", info.num_layers(), "\n");
  absl::StrAppend(&out, "heads:               ", info.num_heads(), "\n");
  absl::StrAppend(&out, "kv_heads:            ", info.num_kv_heads(), "\n");
  absl::StrAppend(&out, "head_dim:            ", info.head_dim(), "\n");
  absl::StrAppend(&out, "vocab_size:          ", info.vocab_size(), "\n");
  absl::StrAppend(&out, "context_length:      ", info.context_length(), "\n");
  absl::StrAppend(&out, "bos_id / eos_id:     ", info.bos_id(), " / ", info.eos_id(), "\n");
  absl::StrAppend(&out, "kv_formats:          ", absl::StrJoin(formats, ", "), "\n");
  absl::StrAppend(&out, "kv_format:           ", v1::KvFormat_Name(info.kv_format()), "\n");
  absl::StrAppend(&out, "block_size:          ", info.block_size(), " tokens\n");
  absl::StrAppend(&out, "kv_block_bytes:      ", info.kv_block_bytes(), "\n");
  absl::StrAppend(&out, "kv_budget_bytes:     ", info.kv_budget_bytes(), "\n");
  absl::StrAppend(&out, "max_prompt_tokens:   ", info.max_prompt_tokens(), "\n");
  absl::StrAppend(&out, "max_tokens_limit:    ", info.max_tokens_limit(), "\n");
  absl::StrAppend(&out, "default_max_tokens:  ", info.default_max_tokens(), "\n");
  absl::StrAppend(&out, "tokenizer:           ", info.tokenizer(),
                  info.tokenizer_pre().empty() ? "" : " (pre " + info.tokenizer_pre() + ")", "\n");
  absl::StrAppend(&out, "chat_template:       ", info.has_chat_template() ? "yes" : "no", "\n");
  absl::StrAppend(&out, "end_of_generation:   ", absl::StrJoin(info.end_of_generation_ids(), " "),
                  "\n");
  return out;
}

void SetSamplingFromFlags(const FlagSet& flags, v1::SamplingParams* sampling) {
  if (flags.IsSet("temperature")) {
    sampling->set_temperature(static_cast<float>(flags.GetFloat("temperature")));
  }
  if (flags.IsSet("top-k")) sampling->set_top_k(static_cast<int32_t>(flags.GetInt("top-k")));
  if (flags.IsSet("top-p")) sampling->set_top_p(static_cast<float>(flags.GetFloat("top-p")));
  if (flags.IsSet("min-p")) sampling->set_min_p(static_cast<float>(flags.GetFloat("min-p")));
  if (flags.IsSet("repetition-penalty")) {
    sampling->set_repetition_penalty(static_cast<float>(flags.GetFloat("repetition-penalty")));
  }
  if (flags.IsSet("presence-penalty")) {
    sampling->set_presence_penalty(static_cast<float>(flags.GetFloat("presence-penalty")));
  }
  if (flags.IsSet("frequency-penalty")) {
    sampling->set_frequency_penalty(static_cast<float>(flags.GetFloat("frequency-penalty")));
  }
  if (flags.GetInt("seed") >= 0) sampling->set_seed(static_cast<uint64_t>(flags.GetInt("seed")));
}

}  // namespace kvserve::tools
