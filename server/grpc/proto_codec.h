// Conversions at the gRPC edge: request bytes to messages (with a clear error when a string field
// is not UTF-8), messages to response bytes, absl::Status to grpc::Status, and engine values
// (finish reasons, durations, KV formats) to their kvserve.v1 messages.
//
// Why raw bytes: proto3 string fields must hold UTF-8, and the C++ parser rejects a request that
// breaks this. gRPC's typed handlers then answer UNIMPLEMENTED with an empty message, which tells a
// client nothing. The methods whose requests carry strings are therefore registered raw, and
// ParseRequest() turns a failed parse into INVALID_ARGUMENT naming the field
// ("text: not valid UTF-8 (byte 3)").
//
// Thread-safety: every function is thread-safe.
#ifndef KVSERVE_SERVER_GRPC_PROTO_CODEC_H_
#define KVSERVE_SERVER_GRPC_PROTO_CODEC_H_

#include <cstddef>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "engine/runtime/batch_generator.h"
#include "google/protobuf/duration.pb.h"
#include "google/protobuf/message.h"
#include "grpcpp/grpcpp.h"
#include "kernels/kv_format.h"
#include "kvserve/v1/common.pb.h"

namespace kvserve::server {

// Parses `buffer` into `*message`. InvalidArgument naming the offending field when a string field
// (at any depth) is not UTF-8, or saying that the bytes are not a `message` otherwise.
absl::Status ParseRequest(const grpc::ByteBuffer& buffer, google::protobuf::Message* message);

// Serializes `message` into `*buffer` (replacing its contents). False only on a serializer fault.
bool SerializeResponse(const google::protobuf::Message& message, grpc::ByteBuffer* buffer);

// Byte offset of the first byte that is not part of well-formed UTF-8 (RFC 3629: no overlong
// forms, no surrogates, nothing above U+10FFFF), or std::string_view::npos when all is valid.
size_t FindInvalidUtf8(std::string_view text);
// `text` with every byte that is not part of well-formed UTF-8 replaced by U+FFFD.
std::string ToValidUtf8(std::string_view text);

// The same code and message. absl and gRPC share the google.rpc.Code numbering.
grpc::Status ToGrpcStatus(const absl::Status& status);

v1::FinishReason ToProtoFinishReason(engine::FinishReason reason);
v1::KvFormat ToProtoKvFormat(kernels::KvFormat format);
// A finite duration as seconds + nanos; infinite ones saturate at the proto's limits.
void ToProtoDuration(absl::Duration d, google::protobuf::Duration* out);
// InfiniteDuration() for an unset message is up to the caller; this converts set values.
absl::Duration FromProtoDuration(const google::protobuf::Duration& d);

}  // namespace kvserve::server

#endif  // KVSERVE_SERVER_GRPC_PROTO_CODEC_H_
