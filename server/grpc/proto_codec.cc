#include "server/grpc/proto_codec.h"

#include <cstdint>
#include <map>
#include <optional>
#include <vector>

#include "absl/strings/str_cat.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/unknown_field_set.h"
#include "grpcpp/impl/codegen/proto_utils.h"
#include "server/grpc/sanitize.h"

namespace kvserve::server {
namespace {

using google::protobuf::Descriptor;
using google::protobuf::FieldDescriptor;
using google::protobuf::UnknownField;
using google::protobuf::UnknownFieldSet;

constexpr int kMaxNesting = 16;

std::string Flatten(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  std::string bytes;
  if (!buffer.Dump(&slices).ok()) return bytes;
  bytes.reserve(buffer.Length());
  for (const grpc::Slice& s : slices) {
    bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  }
  return bytes;
}

// The first string field (at any depth) that is not UTF-8, as "path: not valid UTF-8 (byte N)".
// Reads the wire format without the descriptor-driven parser, which would stop at that field.
std::optional<std::string> FindBadString(const Descriptor* descriptor, const UnknownFieldSet& set,
                                         const std::string& prefix, int depth) {
  if (depth > kMaxNesting) return std::nullopt;
  std::map<int, int> seen;
  for (int i = 0; i < set.field_count(); ++i) {
    const UnknownField& field = set.field(i);
    const int index = seen[field.number()]++;
    const FieldDescriptor* fd = descriptor->FindFieldByNumber(field.number());
    if (fd == nullptr || field.type() != UnknownField::TYPE_LENGTH_DELIMITED) continue;
    std::string path = prefix + fd->name();
    if (fd->is_repeated()) absl::StrAppend(&path, "[", index, "]");
    if (fd->type() == FieldDescriptor::TYPE_STRING) {
      const size_t bad = FindInvalidUtf8(field.length_delimited());
      if (bad != std::string_view::npos) {
        return absl::StrCat(path, ": not valid UTF-8 (byte ", bad, ")");
      }
    } else if (fd->type() == FieldDescriptor::TYPE_MESSAGE) {
      UnknownFieldSet nested;
      if (nested.ParseFromString(field.length_delimited())) {
        auto found = FindBadString(fd->message_type(), nested, path + ".", depth + 1);
        if (found) return found;
      }
    }
  }
  return std::nullopt;
}

}  // namespace

absl::Status ParseRequest(const grpc::ByteBuffer& buffer, google::protobuf::Message* message) {
  const std::string bytes = Flatten(buffer);
  if (message->ParseFromString(bytes)) return absl::OkStatus();
  const Descriptor* descriptor = message->GetDescriptor();
  UnknownFieldSet fields;
  if (fields.ParseFromString(bytes)) {
    if (auto bad = FindBadString(descriptor, fields, "", 0)) {
      return absl::InvalidArgumentError(*bad);
    }
  }
  return absl::InvalidArgumentError(
      absl::StrCat("the request is not a valid ", descriptor->full_name(), " message"));
}

bool SerializeResponse(const google::protobuf::Message& message, grpc::ByteBuffer* buffer) {
  buffer->Clear();  // the serializer requires an empty buffer
  bool own_buffer = false;
  return grpc::SerializationTraits<google::protobuf::Message>::Serialize(message, buffer,
                                                                         &own_buffer)
      .ok();
}

size_t FindInvalidUtf8(std::string_view text) {
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  const size_t n = text.size();
  size_t i = 0;
  while (i < n) {
    const unsigned char c = s[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    int len = 0;
    unsigned char lo = 0x80;
    unsigned char hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      if (c == 0xE0) lo = 0xA0;  // no overlong forms
      if (c == 0xED) hi = 0x9F;  // no surrogates
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      if (c == 0xF0) lo = 0x90;  // no overlong forms
      if (c == 0xF4) hi = 0x8F;  // nothing above U+10FFFF
    } else {
      return i;
    }
    if (i + len > n) return i;
    if (s[i + 1] < lo || s[i + 1] > hi) return i;
    for (int k = 2; k < len; ++k) {
      if (s[i + k] < 0x80 || s[i + k] > 0xBF) return i;
    }
    i += len;
  }
  return std::string_view::npos;
}

std::string ToValidUtf8(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  while (!text.empty()) {
    const size_t bad = FindInvalidUtf8(text);
    if (bad == std::string_view::npos) {
      out.append(text);
      break;
    }
    out.append(text.substr(0, bad));
    out.append("\xEF\xBF\xBD");
    text.remove_prefix(bad + 1);
  }
  return out;
}

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  static_assert(static_cast<int>(absl::StatusCode::kInvalidArgument) ==
                static_cast<int>(grpc::StatusCode::INVALID_ARGUMENT));
  static_assert(static_cast<int>(absl::StatusCode::kResourceExhausted) ==
                static_cast<int>(grpc::StatusCode::RESOURCE_EXHAUSTED));
  static_assert(static_cast<int>(absl::StatusCode::kUnauthenticated) ==
                static_cast<int>(grpc::StatusCode::UNAUTHENTICATED));
  int code = static_cast<int>(status.code());
  if (code < 0 || code > static_cast<int>(grpc::StatusCode::UNAUTHENTICATED)) {
    code = static_cast<int>(grpc::StatusCode::UNKNOWN);
  }
  // Messages may echo request fields (a policy name, a stop string): escaped, as in the log.
  return grpc::Status(static_cast<grpc::StatusCode>(code),
                      SanitizeForLog(std::string(status.message())));
}

v1::FinishReason ToProtoFinishReason(engine::FinishReason reason) {
  switch (reason) {
    case engine::FinishReason::kLength:
      return v1::FINISH_REASON_LENGTH;
    case engine::FinishReason::kStop:
      return v1::FINISH_REASON_STOP;
    case engine::FinishReason::kEos:
      return v1::FINISH_REASON_EOS;
    case engine::FinishReason::kCancelled:
      return v1::FINISH_REASON_CANCELLED;
    case engine::FinishReason::kNone:
      break;
  }
  return v1::FINISH_REASON_UNSPECIFIED;
}

v1::KvFormat ToProtoKvFormat(kernels::KvFormat format) {
  // By name, so that formats added to the kernels map without touching this switch's callers.
  const std::string_view name = kernels::KvFormatName(format);
  if (name == "fp32") return v1::KV_FORMAT_FP32;
  if (name == "fp16") return v1::KV_FORMAT_FP16;
  if (name == "bf16") return v1::KV_FORMAT_BF16;
  if (name == "fp8" || name == "fp8_e4m3" || name == "fp8-e4m3") return v1::KV_FORMAT_FP8_E4M3;
  if (name == "int8") return v1::KV_FORMAT_INT8;
  if (name == "int4") return v1::KV_FORMAT_INT4;
  if (name == "nvfp4") return v1::KV_FORMAT_NVFP4;
  if (name == "int2") return v1::KV_FORMAT_INT2;
  if (name == "lowrank") return v1::KV_FORMAT_LOWRANK;
  return v1::KV_FORMAT_UNSPECIFIED;
}

void ToProtoDuration(absl::Duration d, google::protobuf::Duration* out) {
  constexpr int64_t kMaxSeconds = 315576000000;  // the proto's documented range
  if (d >= absl::Seconds(kMaxSeconds)) {
    out->set_seconds(kMaxSeconds);
    out->set_nanos(0);
    return;
  }
  if (d <= absl::Seconds(-kMaxSeconds)) {
    out->set_seconds(-kMaxSeconds);
    out->set_nanos(0);
    return;
  }
  const int64_t ns = absl::ToInt64Nanoseconds(d);
  out->set_seconds(ns / 1000000000);
  out->set_nanos(static_cast<int32_t>(ns % 1000000000));
}

absl::Duration FromProtoDuration(const google::protobuf::Duration& d) {
  return absl::Seconds(d.seconds()) + absl::Nanoseconds(d.nanos());
}

}  // namespace kvserve::server
