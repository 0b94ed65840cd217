// Prefix-affinity routing key: the `x-kvserve-prefix-hash` request header.
//
// When several kvserve replicas sit behind a load balancer, a request should reach the replica
// whose prefix cache already holds its prompt's first blocks. Clients put a hash of the prompt's
// beginning in this header; a consistent-hash load balancer (Envoy's ring_hash on the header, see
// deploy/envoy/envoy.yaml and docs/scaling.md) maps equal values to the same replica, and moves
// only about 1/N of the keys when a replica joins or leaves.
//
// Definition (the API contract; docs/scaling.md repeats it):
//   key   = cache_salt + "\n" + the first `prefix_bytes` bytes of the prompt text (UTF-8), cut back
//           to the start of a character so that no character is split; the whole prompt when it
//           is shorter
//   value = XXH3-64 (seed 0) of key, 16 lowercase hex digits
// The server does not read the header; it only matters to the router. A request that shares its
// first `prefix_bytes` bytes with earlier ones lands where their KV blocks are cached.
#ifndef KVSERVE_SERVER_ROUTING_PREFIX_HASH_H_
#define KVSERVE_SERVER_ROUTING_PREFIX_HASH_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace kvserve::server {

// gRPC metadata key (lowercase, as HTTP/2 requires).
inline constexpr char kPrefixHashHeader[] = "x-kvserve-prefix-hash";
// Prompt bytes hashed by default: about 64 tokens of English text for a 512-32000 token vocabulary,
// i.e. the first few KV blocks of 16 tokens.
inline constexpr size_t kDefaultPrefixHashBytes = 256;

// The hashed length: min(prefix_bytes, text.size()), moved back so as not to end inside a UTF-8
// multi-byte character.
size_t PrefixHashLength(std::string_view text, size_t prefix_bytes);

// XXH3-64 of cache_salt + "\n" + the first PrefixHashLength(text, prefix_bytes) bytes of text.
uint64_t PrefixHash(std::string_view text, std::string_view cache_salt = "",
                    size_t prefix_bytes = kDefaultPrefixHashBytes);

// PrefixHash as the header value: 16 lowercase hex digits.
std::string PrefixHashHeaderValue(std::string_view text, std::string_view cache_salt = "",
                                  size_t prefix_bytes = kDefaultPrefixHashBytes);

}  // namespace kvserve::server

#endif  // KVSERVE_SERVER_ROUTING_PREFIX_HASH_H_
