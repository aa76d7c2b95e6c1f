// ApiKeySource: where the sidecar's vendor API key comes from.
//
// Get() returns the key held in memory and never touches the file system, so
// it is cheap and cannot block: the upstream client calls it on its I/O
// thread for every request, and a hung mount or a blocking path must not
// stall requests.
//
//   FromFile(path, options)  a file, e.g. a mounted Kubernetes secret. Read
//                          once by FromFile (an error if that fails); after
//                          that only Refresh() touches the file, and a
//                          thread of the source's own calls it every
//                          `check_interval` (1 s). Refresh() stats the path
//                          (following symlinks) and re-reads it when the
//                          inode, device, size, mtime or ctime differ from
//                          the last read. Kubernetes rotates a secret by
//                          swapping a symlink, which this catches. If a
//                          re-read fails (file gone, unreadable, empty) Get()
//                          keeps returning the last good key and the failure
//                          is reported once (until a read succeeds again);
//                          the read is retried at the next check. If the file
//                          system hangs, only the checker thread waits: Get()
//                          keeps returning the last good key, and destroying
//                          the source does not wait for the hung thread (it
//                          is left to end on its own and then touches nothing
//                          the source's owner owns: no report, no reporter).
//   FromEnv(var)           an environment variable, read once.
//   FromValue(key)         a fixed key (tests, flags).
//
// Keys are trimmed of surrounding whitespace (a trailing newline is usual in
// secret files); an empty key, or one with whitespace or control characters
// inside, is an error. Error messages name the file or variable, never its
// contents, and the key is never logged. Thread-safe.
#ifndef VIDEOTASK_SERVER_UPSTREAM_API_KEY_H_
#define VIDEOTASK_SERVER_UPSTREAM_API_KEY_H_

#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "server/base/secret_file.h"

namespace videotask {

// Receives a re-read failure of a file source (once per failure streak), on
// the thread that ran the check (the checker thread, or a caller of
// Refresh()), without internal locks held. Never called once the source's
// destructor has begun. The default logs an `api_key_reload_failed` warning.
using ApiKeyErrorReporter = std::function<void(const absl::Status&)>;

struct ApiKeyFileOptions {
  ApiKeyErrorReporter reporter;  // null: the default (a log line)
  // Period of the checker thread. Zero: no thread; the file is checked only
  // when the owner calls Refresh() (tests drive checks this way).
  absl::Duration check_interval = absl::Seconds(1);
};

class ApiKeySource {
 public:
  using ErrorReporter = ApiKeyErrorReporter;

  // Largest key file read, to keep a wrong path from pulling in a huge file.
  static constexpr size_t kMaxFileBytes = kMaxSecretFileBytes;
  // How long the destructor waits for a checker thread that is inside a
  // file system call before leaving it behind.
  static constexpr absl::Duration kStopWait = absl::Milliseconds(250);

  // Reads `path` now (an error if that fails), then starts the checker
  // thread unless options.check_interval is zero.
  static absl::StatusOr<std::unique_ptr<ApiKeySource>> FromFile(
      std::string path, ApiKeyFileOptions options = ApiKeyFileOptions());
  static absl::StatusOr<std::unique_ptr<ApiKeySource>> FromEnv(std::string var);
  static absl::StatusOr<std::unique_ptr<ApiKeySource>> FromValue(std::string key);

  // Stops the checker thread (see the file comment for a hung one).
  virtual ~ApiKeySource();

  // The current key, from memory. Never empty when OK. Must not block:
  // overrides (test fakes) must keep it so, since it runs on the upstream
  // client's I/O thread.
  virtual absl::StatusOr<std::string> Get();

  // Checks the file now, as the checker thread does every check_interval,
  // and reports a failure (once per streak) to the reporter. Blocks on the
  // file system; concurrent calls run one at a time. No-op for sources that
  // are not files.
  void Refresh();

  // Trims `raw` and checks it is a plausible key; `what` names the source in
  // the error ("API key file /path"). Never echoes the contents.
  static absl::StatusOr<std::string> CleanKey(absl::string_view raw,
                                              absl::string_view what);

 protected:
  // For subclasses (e.g. test fakes) that override Get().
  ApiKeySource();

 private:
  // Everything the checker thread uses; shared with it, so a thread left
  // behind in a hung file system call never touches a freed source.
  struct State;

  std::shared_ptr<State> state_;
  std::thread checker_;
};

}  // namespace videotask

#endif  // VIDEOTASK_SERVER_UPSTREAM_API_KEY_H_
