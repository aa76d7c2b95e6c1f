#include "server/base/file_version.h"

namespace videotask {
namespace {

int64_t Nanos(const struct timespec& ts) {
  return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

}  // namespace

FileVersion FileVersion::Of(const struct stat& st) {
  FileVersion v;
  v.dev = st.st_dev;
  v.ino = st.st_ino;
  v.size = st.st_size;
  v.mtime_ns = Nanos(st.st_mtim);
  v.ctime_ns = Nanos(st.st_ctim);
  return v;
}

FileVersion FileVersion::At(const std::string& path) {
  struct stat st;
  if (path.empty() || stat(path.c_str(), &st) != 0) return FileVersion();
  return Of(st);
}

}  // namespace videotask
