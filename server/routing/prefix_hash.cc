#include "server/routing/prefix_hash.h"

#include <xxhash.h>

#include <cstdio>

namespace kvserve::server {

size_t PrefixHashLength(std::string_view text, size_t prefix_bytes) {
  if (text.size() <= prefix_bytes) return text.size();
  size_t n = prefix_bytes;
  // text[n] is the first byte left out: while it is a continuation byte (10xxxxxx), the cut
  // falls inside a character, so end before that character's lead byte.
  while (n > 0 && (static_cast<unsigned char>(text[n]) & 0xC0) == 0x80) --n;
  return n;
}

uint64_t PrefixHash(std::string_view text, std::string_view cache_salt, size_t prefix_bytes) {
  XXH3_state_t* state = XXH3_createState();
  XXH3_64bits_reset(state);
  XXH3_64bits_update(state, cache_salt.data(), cache_salt.size());
  XXH3_64bits_update(state, "\n", 1);
  XXH3_64bits_update(state, text.data(), PrefixHashLength(text, prefix_bytes));
  const uint64_t hash = XXH3_64bits_digest(state);
  XXH3_freeState(state);
  return hash;
}

std::string PrefixHashHeaderValue(std::string_view text, std::string_view cache_salt,
                                  size_t prefix_bytes) {
  char hex[17];
  std::snprintf(hex, sizeof(hex), "%016llx",
                static_cast<unsigned long long>(PrefixHash(text, cache_salt, prefix_bytes)));
  return std::string(hex, 16);
}

}  // namespace kvserve::server
