// Block hashes of the prefix index: the digest type and the hash functions that produce it.
//
// A BlockHash holds up to 256 bits; shorter digests (XXH64: 64 bits, XXH3-128: 128 bits) fill the
// leading words and leave the rest zero. Which function is used is a configuration choice:
//   xxh3_128 (default): fast and wide enough that accidental collisions are negligible;
//   xxh64:              fastest, 64 bits;
//   sha256:             collision resistant against an adversary who chooses prompts (tenants
//                       sharing a cache without salts); several times slower than xxHash.
// Whatever the function, the prefix index verifies every hit against the stored tokens and keys,
// so a collision costs a cache miss, never a wrong block.
//
// Thread-safety: the functions are pure; a PrefixHashFunction may be called concurrently.
#ifndef KVSERVE_ENGINE_KV_PREFIX_HASH_H_
#define KVSERVE_ENGINE_KV_PREFIX_HASH_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace kvserve::engine {

struct BlockHash {
  std::array<uint64_t, 4> words{};

  friend bool operator==(const BlockHash& a, const BlockHash& b) { return a.words == b.words; }
  friend bool operator!=(const BlockHash& a, const BlockHash& b) { return !(a == b); }
};

// For unordered containers: the digest is already uniformly distributed (for the built-in
// functions), so its words are folded rather than hashed again.
struct BlockHashHasher {
  size_t operator()(const BlockHash& h) const {
    return static_cast<size_t>(h.words[0] ^ h.words[1] ^ h.words[2] ^ h.words[3]);
  }
};

// Hashes a byte string into a BlockHash. Tests inject deliberately weak functions.
using PrefixHashFunction = std::function<BlockHash(absl::Span<const uint8_t> bytes)>;

enum class PrefixHashAlgorithm { kXxh3_128, kXxh64, kSha256 };

// "xxh3_128", "xxh64", "sha256".
absl::string_view PrefixHashAlgorithmName(PrefixHashAlgorithm algorithm);
// InvalidArgument naming the known algorithms for an unknown name.
absl::StatusOr<PrefixHashAlgorithm> ParsePrefixHashAlgorithm(absl::string_view name);

PrefixHashFunction MakePrefixHashFunction(PrefixHashAlgorithm algorithm);

// Lower-case hexadecimal of the 256-bit value, word 0 first (64 characters).
std::string BlockHashHex(const BlockHash& hash);

}  // namespace kvserve::engine

#endif  // KVSERVE_ENGINE_KV_PREFIX_HASH_H_
