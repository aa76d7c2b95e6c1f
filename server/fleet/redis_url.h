// RedisUrl: where fleet mode's Redis is and how to log in to it.
//
//   redis://[[user]:password@]host[:port][/db]   TCP; port 6379 and db 0 by
//                                                default; host is a name, an
//                                                IPv4 address or [IPv6]
//   rediss://...                                 the same over TLS (see
//                                                redis_tls.h); port 6379 by
//                                                default too
//   unix:PATH  (or unix://PATH)                  a Unix socket, db 0
//
// The user and password may be percent-encoded (%40 for '@'); the password
// part is split at the last '@', so a raw '@' or '/' in it also works.
// Whitespace and control characters are refused anywhere (percent-encode
// them).
//
// RedisPasswordFile reads the password from a file instead (a mounted
// Secret), trimmed of surrounding whitespace, and re-reads it whenever the
// file changes (inode, device, size, mtime or ctime), so a rotated Secret
// needs no restart.
//
// Error contract: malformed input gives INVALID_ARGUMENT with one sentence
// that names what is wrong and never contains the password (nor any other
// part of the URL); a password file that cannot be read gives the error of
// the read naming the path, never the contents. Thread-safe.
#ifndef VIDEOTASK_SERVER_FLEET_REDIS_URL_H_
#define VIDEOTASK_SERVER_FLEET_REDIS_URL_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "server/base/file_version.h"
#include "server/base/secret_file.h"

namespace videotask::fleet {

struct RedisUrl {
  enum class Kind { kTcp, kUnix };
  Kind kind = Kind::kTcp;
  bool tls = false;       // rediss://
  std::string host;       // kTcp: name or address, without IPv6 brackets
  int port = 6379;        // kTcp
  std::string unix_path;  // kUnix
  std::string username;   // empty: the default user (AUTH password)
  std::string password;   // empty: no AUTH
  int db = 0;             // SELECT db after connecting when not 0

  static absl::StatusOr<RedisUrl> Parse(absl::string_view url);

  // For logs: the URL with the password replaced by "***" (or absent).
  std::string Redacted() const;
};

class RedisPasswordFile {
 public:
  // Largest file read, so a wrong path cannot pull in a huge file.
  static constexpr size_t kMaxFileBytes = kMaxSecretFileBytes;

  // Reads `path` now: an error if it cannot be read or holds no password.
  static absl::StatusOr<std::unique_ptr<RedisPasswordFile>> Open(std::string path);

  // The current password, re-read first if the file changed. When a re-read
  // fails (file gone, empty, unreadable) the last good password is returned
  // and the failure is kept in last_error() until a read succeeds.
  std::string Get();
  absl::Status last_error() const;
  const std::string& path() const { return path_; }

 private:
  explicit RedisPasswordFile(std::string path) : path_(std::move(path)) {}
  absl::StatusOr<std::string> Read(FileVersion* id) const;

  const std::string path_;
  mutable absl::Mutex mu_;
  std::string password_ ABSL_GUARDED_BY(mu_);
  FileVersion id_ ABSL_GUARDED_BY(mu_);
  absl::Status last_error_ ABSL_GUARDED_BY(mu_);
};

}  // namespace videotask::fleet

#endif  // VIDEOTASK_SERVER_FLEET_REDIS_URL_H_
