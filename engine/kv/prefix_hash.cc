#include "engine/kv/prefix_hash.h"

#include <xxhash.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/kv/sha256.h"

namespace kvserve::engine {

absl::string_view PrefixHashAlgorithmName(PrefixHashAlgorithm algorithm) {
  switch (algorithm) {
    case PrefixHashAlgorithm::kXxh3_128:
      return "xxh3_128";
    case PrefixHashAlgorithm::kXxh64:
      return "xxh64";
    case PrefixHashAlgorithm::kSha256:
      return "sha256";
  }
  return "unknown";
}

absl::StatusOr<PrefixHashAlgorithm> ParsePrefixHashAlgorithm(absl::string_view name) {
  for (PrefixHashAlgorithm a : {PrefixHashAlgorithm::kXxh3_128, PrefixHashAlgorithm::kXxh64,
                                PrefixHashAlgorithm::kSha256}) {
    if (name == PrefixHashAlgorithmName(a)) return a;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown prefix hash '", name, "'; known: xxh3_128, xxh64, sha256"));
}

PrefixHashFunction MakePrefixHashFunction(PrefixHashAlgorithm algorithm) {
  switch (algorithm) {
    case PrefixHashAlgorithm::kXxh64:
      return [](absl::Span<const uint8_t> bytes) {
        BlockHash h;
        h.words[0] = XXH64(bytes.data(), bytes.size(), /*seed=*/0);
        return h;
      };
    case PrefixHashAlgorithm::kSha256:
      return [](absl::Span<const uint8_t> bytes) {
        const Sha256Digest d = Sha256::Hash(bytes);
        BlockHash h;
        for (int w = 0; w < 4; ++w) {
          uint64_t v = 0;
          for (int i = 0; i < 8; ++i) v = (v << 8) | d[8 * w + i];
          h.words[w] = v;
        }
        return h;
      };
    case PrefixHashAlgorithm::kXxh3_128:
      break;
  }
  return [](absl::Span<const uint8_t> bytes) {
    const XXH128_hash_t x = XXH3_128bits(bytes.data(), bytes.size());
    BlockHash h;
    h.words[0] = x.high64;
    h.words[1] = x.low64;
    return h;
  };
}

std::string BlockHashHex(const BlockHash& hash) {
  std::string s;
  s.reserve(64);
  for (uint64_t w : hash.words) absl::StrAppend(&s, absl::Hex(w, absl::kZeroPad16));
  return s;
}

}  // namespace kvserve::engine
