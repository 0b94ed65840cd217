// Notices when a file's content changes, by reading it again when asked (a poll).
//
// `kvserve serve` polls server.api_keys_file every server.api_keys_poll_seconds and reloads the
// keys when the content changed, so that keys rotate without a SIGHUP: edit or replace the file
// (Kubernetes updates a mounted Secret by swapping a symlink; any atomic rename works the same).
// Content is compared, not timestamps, so a rewrite within the same second is seen too.
//
// Thread-safety: not thread-safe (one polling thread).
#ifndef KVSERVE_SERVER_CONFIG_FILE_CHANGE_POLLER_H_
#define KVSERVE_SERVER_CONFIG_FILE_CHANGE_POLLER_H_

#include <optional>
#include <string>

namespace kvserve::server {

class FileChangePoller {
 public:
  // Watches `path`, taking its current content (if readable) as the baseline.
  explicit FileChangePoller(std::string path);

  // Reads the file; true when its content differs from the baseline, which becomes the new
  // baseline. A file that cannot be read (absent, mid-replacement) is not a change: it is read
  // again at the next poll.
  bool Changed();

  // Watches another file from now on (its current content is the baseline).
  void Reset(std::string path);
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::optional<std::string> content_;
};

}  // namespace kvserve::server

#endif  // KVSERVE_SERVER_CONFIG_FILE_CHANGE_POLLER_H_
