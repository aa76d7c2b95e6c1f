// Subprocess: runs one of the project's binaries for a test, with extra
// environment variables, its stdout and stderr captured to files, and
// signals and bounded waits. Runfiles() resolves a binary declared in a
// test's `data`. The process is killed when the object is destroyed.
#ifndef VIDEOTASK_TESTS_TESTING_SUBPROCESS_H_
#define VIDEOTASK_TESTS_TESTING_SUBPROCESS_H_

#include <sys/types.h>

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace videotask::testing {

// The path of `workspace_path` (e.g. "server/videotask_sidecar") in the
// test's runfiles.
std::string Runfile(const std::string& workspace_path);

class Subprocess {
 public:
  static absl::StatusOr<Subprocess> Start(std::vector<std::string> argv,
                                          std::map<std::string, std::string> env = {});
  Subprocess(Subprocess&& other) noexcept;
  Subprocess& operator=(Subprocess&&) = delete;
  ~Subprocess();

  void Signal(int sig);
  // The exit code (128 + signal when killed by one), or nullopt on timeout.
  std::optional<int> Wait(absl::Duration timeout);
  std::string Stdout() const;
  std::string Stderr() const;
  // Waits until stderr contains `text`; false on timeout or exit.
  bool WaitForStderr(const std::string& text, absl::Duration timeout);
  pid_t pid() const { return pid_; }

 private:
  Subprocess() = default;
  pid_t pid_ = -1;
  std::optional<int> exit_code_;
  std::string stdout_path_;
  std::string stderr_path_;
};

}  // namespace videotask::testing

#endif  // VIDEOTASK_TESTS_TESTING_SUBPROCESS_H_
