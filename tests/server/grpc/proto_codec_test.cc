#include "server/grpc/proto_codec.h"

#include <string>

#include "gtest/gtest.h"
#include "kvserve/v1/generation.pb.h"

namespace kvserve::server {
namespace {

grpc::ByteBuffer Bytes(const std::string& bytes) {
  grpc::Slice slice(bytes);
  return grpc::ByteBuffer(&slice, 1);
}

TEST(ProtoCodecTest, FindInvalidUtf8) {
  constexpr size_t kOk = std::string_view::npos;
  EXPECT_EQ(FindInvalidUtf8(""), kOk);
  EXPECT_EQ(FindInvalidUtf8("plain ascii"), kOk);
  EXPECT_EQ(FindInvalidUtf8("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80"), kOk);
  EXPECT_EQ(FindInvalidUtf8("\xf4\x8f\xbf\xbf"), kOk);  // U+10FFFF
  EXPECT_EQ(FindInvalidUtf8("ab\xff"), 2u);
  EXPECT_EQ(FindInvalidUtf8("a\xc3"), 1u);             // truncated
  EXPECT_EQ(FindInvalidUtf8("\xc0\x80"), 0u);          // overlong
  EXPECT_EQ(FindInvalidUtf8("\xe0\x80\x80"), 0u);      // overlong
  EXPECT_EQ(FindInvalidUtf8("x\xed\xa0\x80"), 1u);     // surrogate
  EXPECT_EQ(FindInvalidUtf8("\xf4\x90\x80\x80"), 0u);  // above U+10FFFF
  EXPECT_EQ(FindInvalidUtf8("\x80"), 0u);              // lone continuation
  EXPECT_EQ(ToValidUtf8("a\xffz"), "a\xef\xbf\xbdz");
  EXPECT_EQ(ToValidUtf8("ok"), "ok");
}

TEST(ProtoCodecTest, ParseRequestNamesTheFieldThatIsNotUtf8) {
  v1::GenerateRequest request;
  request.set_text("fine");
  request.add_stop("ok");
  request.add_stop("bad\xfe");
  std::string bytes;
  ASSERT_TRUE(request.SerializePartialToString(&bytes));
  v1::GenerateRequest parsed;
  absl::Status s = ParseRequest(Bytes(bytes), &parsed);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(std::string(s.message()), "stop[1]: not valid UTF-8 (byte 3)");

  request.Clear();
  request.set_text("\xc3(");
  ASSERT_TRUE(request.SerializePartialToString(&bytes));
  s = ParseRequest(Bytes(bytes), &parsed);
  EXPECT_EQ(std::string(s.message()), "text: not valid UTF-8 (byte 0)");
}

TEST(ProtoCodecTest, ParseRequestRoundTripAndGarbage) {
  v1::GenerateRequest request;
  request.set_text("Once upon a time");
  request.set_max_tokens(5);
  std::string bytes;
  ASSERT_TRUE(request.SerializeToString(&bytes));
  v1::GenerateRequest parsed;
  ASSERT_TRUE(ParseRequest(Bytes(bytes), &parsed).ok());
  EXPECT_EQ(parsed.text(), "Once upon a time");
  EXPECT_EQ(parsed.max_tokens(), 5);

  absl::Status s = ParseRequest(Bytes("\xff\xff\xff"), &parsed);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(s.message()).find("kvserve.v1.GenerateRequest"), std::string::npos);

  grpc::ByteBuffer out;
  ASSERT_TRUE(SerializeResponse(request, &out));
  ASSERT_TRUE(SerializeResponse(request, &out));  // reusing a buffer is fine
  ASSERT_TRUE(ParseRequest(out, &parsed).ok());
  EXPECT_EQ(parsed.text(), "Once upon a time");
}

TEST(ProtoCodecTest, Conversions) {
  EXPECT_EQ(ToGrpcStatus(absl::OkStatus()).error_code(), grpc::StatusCode::OK);
  const grpc::Status s = ToGrpcStatus(absl::ResourceExhaustedError("queue full"));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(s.error_message(), "queue full");
  EXPECT_EQ(ToGrpcStatus(absl::DeadlineExceededError("")).error_code(),
            grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_EQ(ToGrpcStatus(absl::UnavailableError("")).error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(ToGrpcStatus(absl::CancelledError("")).error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_EQ(ToGrpcStatus(absl::UnauthenticatedError("")).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(ToGrpcStatus(absl::InternalError("")).error_code(), grpc::StatusCode::INTERNAL);
  EXPECT_EQ(ToGrpcStatus(absl::InvalidArgumentError("")).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);

  EXPECT_EQ(ToProtoFinishReason(engine::FinishReason::kLength), v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(ToProtoFinishReason(engine::FinishReason::kStop), v1::FINISH_REASON_STOP);
  EXPECT_EQ(ToProtoFinishReason(engine::FinishReason::kEos), v1::FINISH_REASON_EOS);
  EXPECT_EQ(ToProtoFinishReason(engine::FinishReason::kCancelled), v1::FINISH_REASON_CANCELLED);
  EXPECT_EQ(ToProtoFinishReason(engine::FinishReason::kNone), v1::FINISH_REASON_UNSPECIFIED);
  EXPECT_EQ(ToProtoKvFormat(kernels::KvFormat::kFp32), v1::KV_FORMAT_FP32);
  EXPECT_EQ(ToProtoKvFormat(kernels::KvFormat::kFp16), v1::KV_FORMAT_FP16);
  EXPECT_EQ(ToProtoKvFormat(kernels::KvFormat::kBf16), v1::KV_FORMAT_BF16);
  EXPECT_EQ(ToProtoKvFormat(kernels::KvFormat::kFp8), v1::KV_FORMAT_FP8_E4M3);
  EXPECT_EQ(ToProtoKvFormat(kernels::KvFormat::kInt8), v1::KV_FORMAT_INT8);
  EXPECT_EQ(ToProtoKvFormat(kernels::KvFormat::kInt4), v1::KV_FORMAT_INT4);
  EXPECT_EQ(ToProtoKvFormat(kernels::KvFormat::kNvfp4), v1::KV_FORMAT_NVFP4);
  EXPECT_EQ(ToProtoKvFormat(kernels::KvFormat::kInt2), v1::KV_FORMAT_INT2);
  EXPECT_EQ(ToProtoKvFormat(kernels::KvFormat::kLowrank), v1::KV_FORMAT_LOWRANK);
  // Every format the kernels define has its own enum value.
  for (int f = 0; f < kernels::kNumKvFormats; ++f) {
    const kernels::KvFormat format = static_cast<kernels::KvFormat>(f);
    EXPECT_NE(ToProtoKvFormat(format), v1::KV_FORMAT_UNSPECIFIED) << kernels::KvFormatName(format);
  }

  google::protobuf::Duration d;
  ToProtoDuration(absl::Milliseconds(1500), &d);
  EXPECT_EQ(d.seconds(), 1);
  EXPECT_EQ(d.nanos(), 500000000);
  EXPECT_EQ(FromProtoDuration(d), absl::Milliseconds(1500));
  ToProtoDuration(absl::InfiniteDuration(), &d);
  EXPECT_EQ(d.seconds(), 315576000000);
}

}  // namespace
}  // namespace kvserve::server
