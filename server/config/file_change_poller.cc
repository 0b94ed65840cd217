#include "server/config/file_change_poller.h"

#include <fstream>
#include <sstream>
#include <utility>

namespace kvserve::server {
namespace {

std::optional<std::string> ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return std::nullopt;
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return std::nullopt;
  return ss.str();
}

}  // namespace

FileChangePoller::FileChangePoller(std::string path) { Reset(std::move(path)); }

void FileChangePoller::Reset(std::string path) {
  path_ = std::move(path);
  content_ = path_.empty() ? std::nullopt : ReadAll(path_);
}

bool FileChangePoller::Changed() {
  if (path_.empty()) return false;
  std::optional<std::string> now = ReadAll(path_);
  if (!now.has_value() || now == content_) return false;
  content_ = std::move(now);
  return true;
}

}  // namespace kvserve::server
