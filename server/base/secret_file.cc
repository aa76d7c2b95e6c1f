#include "server/base/secret_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace videotask {
namespace {

std::string ErrnoText(int err) {
  char buf[128];
  // GNU strerror_r may return a static string instead of filling buf.
  const char* s = strerror_r(err, buf, sizeof buf);
  return s != nullptr ? std::string(s) : absl::StrCat("errno ", err);
}

void Wipe(std::string& s) { std::fill(s.begin(), s.end(), '\0'); }

}  // namespace

absl::StatusOr<std::string> ReadSecretFile(const std::string& path, absl::string_view what,
                                           FileVersion* version) {
  auto failed = [&](absl::string_view reason) {
    return absl::FailedPreconditionError(absl::StrCat(what, ": ", reason));
  };
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return failed(ErrnoText(errno));
  struct stat st;
  if (fstat(fd, &st) != 0) {
    const int err = errno;
    close(fd);
    return failed(ErrnoText(err));
  }
  if (!S_ISREG(st.st_mode)) {
    close(fd);
    return failed("not a regular file");
  }
  std::string data;
  char buf[4096];
  absl::Status error;
  while (true) {
    const ssize_t n = read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      error = failed(ErrnoText(errno));
      break;
    }
    if (n == 0) break;
    data.append(buf, static_cast<size_t>(n));
    if (data.size() > kMaxSecretFileBytes) {
      error = failed(absl::StrCat("larger than ", kMaxSecretFileBytes / 1024, " KiB"));
      break;
    }
  }
  std::fill(buf, buf + sizeof buf, '\0');
  close(fd);
  if (!error.ok()) {
    Wipe(data);
    return error;
  }
  if (version != nullptr) *version = FileVersion::Of(st);
  return data;
}

}  // namespace videotask
