// ApiKeySource: where the sidecar's vendor API key comes from.
//
//   FromFile(path, clock)  a file, e.g. a mounted Kubernetes secret. Re-read
//                          when it changes: at most once per second (by the
//                          injected Clock) Get() stats the path (following
//                          symlinks) and re-reads it when the inode, device,
//                          size, mtime or ctime differ from the last read.
//                          Kubernetes rotates a secret by swapping a symlink,
//                          which this catches. If a re-read fails (file gone,
//                          unreadable, empty) Get() keeps returning the last
//                          good key and the failure is reported once (until a
//                          read succeeds again); the read is retried on the
//                          next check.
//   FromEnv(var)           an environment variable, read once.
//   FromValue(key)         a fixed key (tests, flags).
//
// Keys are trimmed of surrounding whitespace (a trailing newline is usual in
// secret files); an empty key, or one with whitespace or control characters
// inside, is an error. Error messages name the file or variable, never its
// contents. Thread-safe.
#ifndef VIDEOTASK_SERVER_API_KEY_H_
#define VIDEOTASK_SERVER_API_KEY_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/clock.h"

namespace videotask {

class ApiKeySource {
 public:
  // Receives a re-read failure of a file source (once per failure streak),
  // on the thread that called Get(), without internal locks held. The default
  // logs an `api_key_reload_failed` warning.
  using ErrorReporter = std::function<void(const absl::Status&)>;

  // Largest key file read, to keep a wrong path from pulling in a huge file.
  static constexpr size_t kMaxFileBytes = 64 * 1024;
  // How often a file source checks the file for changes.
  static constexpr absl::Duration kCheckInterval = absl::Seconds(1);

  // Reads `path` now (an error if that fails). `clock` may be null (the real
  // clock); it must outlive the source.
  static absl::StatusOr<std::unique_ptr<ApiKeySource>> FromFile(
      std::string path, Clock* clock, ErrorReporter reporter = nullptr);
  static absl::StatusOr<std::unique_ptr<ApiKeySource>> FromEnv(std::string var);
  static absl::StatusOr<std::unique_ptr<ApiKeySource>> FromValue(std::string key);

  virtual ~ApiKeySource() = default;

  // The current key. Never empty when OK.
  virtual absl::StatusOr<std::string> Get();

  // Trims `raw` and checks it is a plausible key; `what` names the source in
  // the error ("API key file /path"). Never echoes the contents.
  static absl::StatusOr<std::string> CleanKey(absl::string_view raw,
                                              absl::string_view what);

 protected:
  // For subclasses (e.g. test fakes) that override Get().
  ApiKeySource() = default;

 private:
  struct FileId {
    uint64_t dev = 0, ino = 0;
    int64_t size = -1;
    int64_t mtime_ns = 0, ctime_ns = 0;
    bool operator==(const FileId& o) const {
      return dev == o.dev && ino == o.ino && size == o.size &&
             mtime_ns == o.mtime_ns && ctime_ns == o.ctime_ns;
    }
  };

  // Reads and cleans the file; sets *id to what was read.
  absl::StatusOr<std::string> ReadFile(FileId* id) const;
  // Re-reads the file when due and changed. Returns a failure to report
  // (at most once per failure streak), else OK.
  absl::Status MaybeReload() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  std::string path_;  // empty for fixed keys
  Clock* clock_ = nullptr;
  ErrorReporter reporter_;

  absl::Mutex mu_;
  std::string key_ ABSL_GUARDED_BY(mu_);
  FileId file_id_ ABSL_GUARDED_BY(mu_);
  absl::Time last_check_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  bool failure_reported_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace videotask

#endif  // VIDEOTASK_SERVER_API_KEY_H_
