// FileVersion: what identifies one version of a file on disk (device,
// inode, size, modification and change times to the nanosecond). Files the
// sidecar re-reads when they change (the API key, the Redis password and
// TLS files, all mounted Secrets that Kubernetes swaps by symlink) compare
// the version they read with the one at the path now.
#ifndef VIDEOTASK_SERVER_BASE_FILE_VERSION_H_
#define VIDEOTASK_SERVER_BASE_FILE_VERSION_H_

#include <sys/stat.h>

#include <cstdint>
#include <string>

namespace videotask {

struct FileVersion {
  uint64_t dev = 0, ino = 0;
  int64_t size = -1;  // -1: no file (never equal to a version that was read)
  int64_t mtime_ns = 0, ctime_ns = 0;

  // The version `st` describes (e.g. from fstat() of the descriptor read).
  static FileVersion Of(const struct stat& st);
  // The version at `path` now; the default (size -1) when stat() fails or
  // the path is empty.
  static FileVersion At(const std::string& path);

  bool operator==(const FileVersion& o) const {
    return dev == o.dev && ino == o.ino && size == o.size && mtime_ns == o.mtime_ns &&
           ctime_ns == o.ctime_ns;
  }
  bool operator!=(const FileVersion& o) const { return !(*this == o); }
};

}  // namespace videotask

#endif  // VIDEOTASK_SERVER_BASE_FILE_VERSION_H_
