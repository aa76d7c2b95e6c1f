#include "server/upstream/api_key.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "server/base/file_version.h"
#include "server/base/secret_file.h"
#include "server/base/log.h"

namespace videotask {
namespace {

std::string ErrnoText(int err) {
  char buf[128];
  // GNU strerror_r may return a static string instead of filling buf.
  const char* s = strerror_r(err, buf, sizeof buf);
  return s ? std::string(s) : std::string("errno ") + std::to_string(err);
}

void Wipe(std::string& s) { std::fill(s.begin(), s.end(), '\0'); }

// Reads and cleans the key file; sets *id to what was read. May block (a
// FIFO without a writer, a hung mount): never call it on a request path.
absl::StatusOr<std::string> ReadKeyFile(const std::string& path, FileVersion* id) {
  const std::string what = absl::StrCat("API key file ", path);
  absl::StatusOr<std::string> data = ReadSecretFile(path, what, id);
  if (!data.ok()) return data.status();
  absl::StatusOr<std::string> key = ApiKeySource::CleanKey(*data, what);
  // Wipe the raw copy; the cleaned key is what we keep.
  Wipe(*data);
  return key;
}

}  // namespace

struct ApiKeySource::State {
  std::string path;  // empty for fixed keys
  ApiKeyErrorReporter reporter;
  absl::Duration check_interval = absl::ZeroDuration();

  // Never held during file system calls or the reporter.
  absl::Mutex mu;
  std::string key ABSL_GUARDED_BY(mu);
  bool stopping ABSL_GUARDED_BY(mu) = false;      // the destructor has begun
  bool checker_done ABSL_GUARDED_BY(mu) = false;  // the checker thread ended
  int reporting ABSL_GUARDED_BY(mu) = 0;          // reporter calls running

  // The checker's sleep, on std::condition_variable, whose wait_for runs on
  // the steady clock: a wall clock step cannot stretch it.
  std::mutex sleep_mu;
  std::condition_variable wake;
  bool wake_stop = false;  // guarded by sleep_mu

  // Serializes checks; held across the file system calls of one.
  absl::Mutex refresh_mu ABSL_ACQUIRED_BEFORE(mu);
  FileVersion file_id ABSL_GUARDED_BY(refresh_mu);
  bool failure_reported ABSL_GUARDED_BY(refresh_mu) = false;

  void SetKey(std::string k) {
    absl::MutexLock lock(&mu);
    Wipe(key);
    key = std::move(k);
  }

  // One check of the file; see ApiKeySource::Refresh().
  void Check() {
    absl::Status to_report;
    {
      absl::MutexLock lock(&refresh_mu);
      absl::Status failure;
      struct stat st;
      if (::stat(path.c_str(), &st) != 0) {
        failure = absl::FailedPreconditionError(absl::StrCat(
            "cannot stat API key file ", path, ": ", ErrnoText(errno)));
      } else if (FileVersion::Of(st) == file_id) {
        // Unchanged: the key in memory is the file's, so any failure streak
        // (e.g. a mount that was briefly unreachable) is over.
        failure_reported = false;
        return;
      } else {
        FileVersion read_id;
        absl::StatusOr<std::string> read = ReadKeyFile(path, &read_id);
        if (read.ok()) {
          SetKey(*std::move(read));
          file_id = read_id;
          failure_reported = false;
          return;
        }
        failure = read.status();
      }
      // Keep the last good key; file_id is unchanged so the next check
      // retries.
      if (failure_reported) return;
      failure_reported = true;
      to_report = std::move(failure);
    }
    {
      absl::MutexLock lock(&mu);
      if (stopping || !reporter) return;
      ++reporting;
    }
    reporter(to_report);
    absl::MutexLock lock(&mu);
    --reporting;
  }

  // The checker thread: Check() every check_interval until stopping.
  static void Run(std::shared_ptr<State> s) {
    const auto interval = absl::ToChronoNanoseconds(s->check_interval);
    while (true) {
      {
        std::unique_lock<std::mutex> lock(s->sleep_mu);
        if (s->wake.wait_for(lock, interval, [&s] { return s->wake_stop; })) break;
      }
      s->Check();
    }
    absl::MutexLock lock(&s->mu);
    s->checker_done = true;
  }
};

ApiKeySource::ApiKeySource() : state_(std::make_shared<State>()) {}

ApiKeySource::~ApiKeySource() {
  if (!checker_.joinable()) return;
  {
    std::lock_guard<std::mutex> lock(state_->sleep_mu);
    state_->wake_stop = true;
  }
  state_->wake.notify_all();
  bool done = false;
  {
    absl::MutexLock lock(&state_->mu);
    state_->stopping = true;
    done = state_->mu.AwaitWithTimeout(absl::Condition(&state_->checker_done),
                                       kStopWait);
    if (!done) {
      // The thread is stuck in a file system call (or a slow reporter, which
      // must end before the reporter's owner may go away).
      State* s = state_.get();
      state_->mu.Await(absl::Condition(
          +[](State* st) ABSL_EXCLUSIVE_LOCKS_REQUIRED(st->mu) {
            return st->reporting == 0;
          },
          s));
      done = state_->checker_done;
    }
  }
  if (done) {
    checker_.join();
  } else {
    // It holds its own reference to the state and, once its call returns,
    // sees `stopping` and ends without reporting.
    checker_.detach();
  }
}

absl::StatusOr<std::string> ApiKeySource::CleanKey(absl::string_view raw,
                                                   absl::string_view what) {
  const absl::string_view key = absl::StripAsciiWhitespace(raw);
  if (key.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(what, " is empty"));
  }
  for (char c : key) {
    const unsigned char u = static_cast<unsigned char>(c);
    if (u <= 0x20 || u == 0x7f) {
      return absl::FailedPreconditionError(absl::StrCat(
          what, " contains whitespace or control characters inside the key"));
    }
  }
  return std::string(key);
}

absl::StatusOr<std::unique_ptr<ApiKeySource>> ApiKeySource::FromValue(
    std::string key) {
  absl::StatusOr<std::string> clean = CleanKey(key, "API key");
  Wipe(key);
  if (!clean.ok()) return clean.status();
  std::unique_ptr<ApiKeySource> src(new ApiKeySource());
  src->state_->SetKey(*std::move(clean));
  return src;
}

absl::StatusOr<std::unique_ptr<ApiKeySource>> ApiKeySource::FromEnv(
    std::string var) {
  const char* value = var.empty() ? nullptr : std::getenv(var.c_str());
  if (value == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat("environment variable ", var, " is not set"));
  }
  absl::StatusOr<std::string> clean =
      CleanKey(value, absl::StrCat("environment variable ", var));
  if (!clean.ok()) return clean.status();
  std::unique_ptr<ApiKeySource> src(new ApiKeySource());
  src->state_->SetKey(*std::move(clean));
  return src;
}

absl::StatusOr<std::unique_ptr<ApiKeySource>> ApiKeySource::FromFile(
    std::string path, ApiKeyFileOptions options) {
  if (path.empty()) {
    return absl::InvalidArgumentError("API key file path is empty");
  }
  if (options.check_interval < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("API key check interval is negative");
  }
  std::unique_ptr<ApiKeySource> src(new ApiKeySource());
  State& s = *src->state_;
  s.path = std::move(path);
  s.check_interval = options.check_interval;
  if (options.reporter) {
    s.reporter = std::move(options.reporter);
  } else {
    s.reporter = [](const absl::Status& status) {
      LogEvent(LogLevel::kWarning, "api_key_reload_failed",
               {{"error", std::string(status.message())},
                {"action", "keeping the last good key"}});
    };
  }
  FileVersion id;
  absl::StatusOr<std::string> key = ReadKeyFile(s.path, &id);
  if (!key.ok()) return key.status();
  s.SetKey(*std::move(key));
  {
    absl::MutexLock lock(&s.refresh_mu);
    s.file_id = id;
  }
  if (s.check_interval > absl::ZeroDuration()) {
    src->checker_ = std::thread(&State::Run, src->state_);
  }
  return src;
}

void ApiKeySource::Refresh() {
  if (state_->path.empty()) return;
  state_->Check();
}

absl::StatusOr<std::string> ApiKeySource::Get() {
  absl::MutexLock lock(&state_->mu);
  if (state_->key.empty()) {
    return absl::FailedPreconditionError("API key is not available");
  }
  return state_->key;
}

}  // namespace videotask
