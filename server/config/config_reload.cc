#include "server/config/config_reload.h"

#include "server/config/config_schema.h"

namespace kvserve::server {

bool IsReloadableConfigKey(std::string_view key) {
  return key == "logging.level" || key == "server.api_keys_file";
}

ConfigChanges DiffServerConfigs(const ServerConfig& running, const ServerConfig& loaded) {
  ConfigChanges changes;
  for (const ConfigKey& key : ServerConfigKeys()) {
    if (key.get(running) == key.get(loaded)) continue;
    (IsReloadableConfigKey(key.path) ? changes.reloadable : changes.not_reloadable)
        .push_back(key.path);
  }
  return changes;
}

}  // namespace kvserve::server
