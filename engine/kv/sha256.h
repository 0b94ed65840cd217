// SHA-256 (FIPS 180-4; identical to FIPS 180-2 for this function), self-contained.
//
// Used by the prefix index when a collision-resistant block hash is wanted (cache salts shared
// with untrusted tenants). Incremental: Update() any number of times, then Finish() once.
// Not thread-safe per object; distinct objects are independent.
#ifndef KVSERVE_ENGINE_KV_SHA256_H_
#define KVSERVE_ENGINE_KV_SHA256_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace kvserve::engine {

using Sha256Digest = std::array<uint8_t, 32>;

class Sha256 {
 public:
  Sha256();
  void Update(absl::Span<const uint8_t> data);
  void Update(absl::string_view data);
  // Pads, returns the digest and resets the object for a new message.
  Sha256Digest Finish();

  // One-shot helpers.
  static Sha256Digest Hash(absl::Span<const uint8_t> data);
  static Sha256Digest Hash(absl::string_view data);

 private:
  void Reset();
  void Compress(const uint8_t* block);  // one 64-byte block

  std::array<uint32_t, 8> state_;
  std::array<uint8_t, 64> buffer_;
  size_t buffered_ = 0;  // bytes in buffer_
  uint64_t length_ = 0;  // message bytes so far
};

// Lower-case hexadecimal of a digest (64 characters).
std::string Sha256Hex(const Sha256Digest& digest);

}  // namespace kvserve::engine

#endif  // KVSERVE_ENGINE_KV_SHA256_H_
