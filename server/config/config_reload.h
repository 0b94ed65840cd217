// What a config reload (SIGHUP to `kvserve serve`) may change while the server runs.
//
// A reload reads the same file with the same --set overrides. A file that does not load (bad
// YAML, an unknown key, a value out of range, a missing file it names) changes nothing: the
// server keeps its running config and logs the loader's error, which names the key, file and
// line. Otherwise:
//   - reloadable keys take effect at once: logging.level, and server.api_keys_file, whose file is
//     read again on every reload (key rotation: edit the file, send SIGHUP). A keys file that
//     cannot be read or holds no key fails the reload as a whole, and the old keys stay;
//   - every other key (addresses, TLS, model, KV cache, scheduler, engine, limits, metrics)
//     shapes objects built at start; a change to one is reported by name and not applied
//     (restart to apply it), while the reloadable keys of the same file still are.
// Whether API keys are required at all (a keys file set or not, server.auth_on_loopback) is
// decided at start and is not reloadable either.
//
// Thread-safety: stateless functions.
#ifndef KVSERVE_SERVER_CONFIG_CONFIG_RELOAD_H_
#define KVSERVE_SERVER_CONFIG_CONFIG_RELOAD_H_

#include <string>
#include <string_view>
#include <vector>

#include "server/config/server_config.h"

namespace kvserve::server {

// The keys a reload applies while the server runs.
bool IsReloadableConfigKey(std::string_view key);

struct ConfigChanges {
  std::vector<std::string> reloadable;      // changed keys that a reload applies
  std::vector<std::string> not_reloadable;  // changed keys that need a restart
};

// The keys (dotted paths, in the order of the key table) whose effective values differ.
ConfigChanges DiffServerConfigs(const ServerConfig& running, const ServerConfig& loaded);

}  // namespace kvserve::server

#endif  // KVSERVE_SERVER_CONFIG_CONFIG_RELOAD_H_
