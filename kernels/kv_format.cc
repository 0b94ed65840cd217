#include "kernels/kv_format.h"

namespace kvserve::kernels {

std::string_view KvFormatName(KvFormat f) {
  switch (f) {
    case KvFormat::kFp32:
      return "fp32";
    case KvFormat::kFp16:
      return "fp16";
    case KvFormat::kBf16:
      return "bf16";
    case KvFormat::kFp8:
      return "fp8";
    case KvFormat::kInt8:
      return "int8";
    case KvFormat::kInt4:
      return "int4";
    case KvFormat::kNvfp4:
      return "nvfp4";
    case KvFormat::kInt2:
      return "int2";
    case KvFormat::kLowrank:
      return "lowrank";
  }
  return "?";
}

std::optional<KvFormat> ParseKvFormat(std::string_view name) {
  for (int i = 0; i < kNumKvFormats; ++i) {
    const auto f = static_cast<KvFormat>(i);
    if (KvFormatName(f) == name) return f;
  }
  return std::nullopt;
}

}  // namespace kvserve::kernels
