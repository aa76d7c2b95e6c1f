#include "server/api_key.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "server/log.h"

namespace videotask {
namespace {

int64_t ToNanos(const struct timespec& ts) {
  return static_cast<int64_t>(ts.tv_sec) * 1000000000LL + ts.tv_nsec;
}

std::string ErrnoText(int err) {
  char buf[128];
  // GNU strerror_r may return a static string instead of filling buf.
  const char* s = strerror_r(err, buf, sizeof buf);
  return s ? std::string(s) : std::string("errno ") + std::to_string(err);
}

}  // namespace

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
  if (!clean.ok()) return clean.status();
  std::unique_ptr<ApiKeySource> src(new ApiKeySource());
  absl::MutexLock lock(&src->mu_);
  src->key_ = *std::move(clean);
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
  absl::MutexLock lock(&src->mu_);
  src->key_ = *std::move(clean);
  return src;
}

absl::StatusOr<std::unique_ptr<ApiKeySource>> ApiKeySource::FromFile(
    std::string path, Clock* clock, ErrorReporter reporter) {
  if (path.empty()) {
    return absl::InvalidArgumentError("API key file path is empty");
  }
  std::unique_ptr<ApiKeySource> src(new ApiKeySource());
  src->path_ = std::move(path);
  src->clock_ = clock != nullptr ? clock : RealClock::Get();
  if (reporter) {
    src->reporter_ = std::move(reporter);
  } else {
    src->reporter_ = [](const absl::Status& status) {
      LogEvent(LogLevel::kWarning, "api_key_reload_failed",
               {{"error", std::string(status.message())},
                {"action", "keeping the last good key"}});
    };
  }
  FileId id;
  absl::StatusOr<std::string> key = src->ReadFile(&id);
  if (!key.ok()) return key.status();
  absl::MutexLock lock(&src->mu_);
  src->key_ = *std::move(key);
  src->file_id_ = id;
  src->last_check_ = src->clock_->Now();
  return src;
}

absl::StatusOr<std::string> ApiKeySource::ReadFile(FileId* id) const {
  const std::string what = absl::StrCat("API key file ", path_);
  const int fd = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot open ", what, ": ", ErrnoText(errno)));
  }
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return absl::FailedPreconditionError(
        absl::StrCat("cannot stat ", what, ": ", ErrnoText(err)));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::FailedPreconditionError(
        absl::StrCat(what, " is not a regular file"));
  }
  std::string data;
  char buf[4096];
  while (true) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      ::close(fd);
      return absl::FailedPreconditionError(
          absl::StrCat("cannot read ", what, ": ", ErrnoText(err)));
    }
    if (n == 0) break;
    data.append(buf, static_cast<size_t>(n));
    if (data.size() > kMaxFileBytes) {
      ::close(fd);
      return absl::FailedPreconditionError(
          absl::StrCat(what, " is larger than ", kMaxFileBytes, " bytes"));
    }
  }
  ::close(fd);
  id->dev = st.st_dev;
  id->ino = st.st_ino;
  id->size = st.st_size;
  id->mtime_ns = ToNanos(st.st_mtim);
  id->ctime_ns = ToNanos(st.st_ctim);
  absl::StatusOr<std::string> key = CleanKey(data, what);
  // Wipe the raw copy; the cleaned key is what we keep.
  std::fill(data.begin(), data.end(), '\0');
  return key;
}

absl::Status ApiKeySource::MaybeReload() {
  const absl::Time now = clock_->Now();
  if (now - last_check_ < kCheckInterval && now >= last_check_) {
    return absl::OkStatus();
  }
  last_check_ = now;

  absl::Status failure;
  struct stat st;
  if (::stat(path_.c_str(), &st) != 0) {
    failure = absl::FailedPreconditionError(absl::StrCat(
        "cannot stat API key file ", path_, ": ", ErrnoText(errno)));
  } else {
    FileId seen;
    seen.dev = st.st_dev;
    seen.ino = st.st_ino;
    seen.size = st.st_size;
    seen.mtime_ns = ToNanos(st.st_mtim);
    seen.ctime_ns = ToNanos(st.st_ctim);
    if (seen == file_id_) return absl::OkStatus();  // unchanged
    FileId read_id;
    absl::StatusOr<std::string> key = ReadFile(&read_id);
    if (key.ok()) {
      key_ = *std::move(key);
      file_id_ = read_id;
      failure_reported_ = false;
      return absl::OkStatus();
    }
    failure = key.status();
  }
  // Keep the last good key; file_id_ is unchanged so the next check retries.
  if (failure_reported_) return absl::OkStatus();
  failure_reported_ = true;
  return failure;
}

absl::StatusOr<std::string> ApiKeySource::Get() {
  absl::Status to_report;
  std::string key;
  {
    absl::MutexLock lock(&mu_);
    if (!path_.empty()) to_report = MaybeReload();
    key = key_;
  }
  // Outside the lock: the reporter may log.
  if (!to_report.ok() && reporter_) reporter_(to_report);
  if (key.empty()) {
    return absl::FailedPreconditionError("API key is not available");
  }
  return key;
}

}  // namespace videotask
