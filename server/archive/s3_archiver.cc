#include "server/archive/s3_archiver.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <optional>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "server/base/log.h"
#include "server/base/task_id.h"

namespace videotask {

using videotask::v1::VideoArchive;
using videotask::v1::VideoTask;

namespace {

constexpr char kFlags[] = "--archive_url";
// How long the HEAD before a download may take (retries included): the
// upload looks again anyway.
constexpr absl::Duration kReuseCheckTime = absl::Seconds(30);

// Never asked: only for checking settings.
class NoCredentials : public s3::CredentialsProvider {
 public:
  explicit NoCredentials(absl::Status why) : why_(std::move(why)) {}
  absl::StatusOr<s3::AwsCredentials> Get() override { return why_; }
  std::string Describe() const override { return "none"; }

 private:
  absl::Status why_;
};

// The file behind the archive's bytes, read one buffer at a time.
class FileSource : public s3::ByteSource {
 public:
  explicit FileSource(int fd) : fd_(fd) {}
  absl::StatusOr<size_t> Read(char* buf, size_t n) override {
    while (true) {
      const ssize_t r = ::read(fd_, buf, n);
      if (r >= 0) return static_cast<size_t>(r);
      if (errno != EINTR) {
        return absl::DataLossError(absl::StrCat("reading the downloaded video: ", strerror(errno)));
      }
    }
  }

 private:
  int fd_;
};

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// file:///a%20b -> "/a b" ("" when not a file URI).
std::string PathFromFileUri(absl::string_view uri) {
  if (!absl::ConsumePrefix(&uri, "file://")) return "";
  std::string out;
  for (size_t i = 0; i < uri.size(); ++i) {
    if (uri[i] == '%' && i + 2 < uri.size() + 0 && HexValue(uri[i + 1]) >= 0 &&
        HexValue(uri[i + 2]) >= 0) {
      out.push_back(static_cast<char>(HexValue(uri[i + 1]) * 16 + HexValue(uri[i + 2])));
      i += 2;
    } else {
      out.push_back(uri[i]);
    }
  }
  return out;
}

bool IsHexSha256(absl::string_view s) {
  return s.size() == 64 && std::all_of(s.begin(), s.end(), [](char c) {
           return absl::ascii_isdigit(c) || (c >= 'a' && c <= 'f');
         });
}

void ToTimestamp(absl::Time t, google::protobuf::Timestamp* out) {
  const int64_t nanos = absl::ToUnixNanos(t);
  int64_t secs = nanos / 1000000000;
  int64_t rem = nanos % 1000000000;
  if (rem < 0) {
    rem += 1000000000;
    --secs;
  }
  out->set_seconds(secs);
  out->set_nanos(static_cast<int32_t>(rem));
}

// The transient failures: retried until the deadline.
bool Retryable(const absl::Status& s) {
  return absl::IsUnavailable(s) || absl::IsDeadlineExceeded(s) || absl::IsInternal(s) ||
         absl::IsAborted(s) || absl::IsResourceExhausted(s) || absl::IsUnknown(s);
}

// Whether `s` (from S3Client) came from the credential provider.
bool IsCredentialError(const absl::Status& s) {
  return absl::StrContains(s.message(), ": no credentials: ");
}

s3::S3Client::Options ClientOptions(const S3ArchiverOptions& o, const S3Location& where) {
  s3::S3Client::Options co;
  co.bucket = where.bucket;
  co.region = ResolveS3Region(o.region, o.env);
  co.endpoint = o.endpoint;
  co.path_style = o.path_style;
  co.ca_file = o.ca_file;
  co.part_size = o.part_size;
  co.initial_backoff = o.initial_backoff;
  co.max_backoff = o.max_backoff;
  if (o.sleep) co.sleep = o.sleep;
  return co;
}

// The flag a setting error of S3Client::Create is about.
absl::Status Named(const absl::Status& s) {
  const absl::string_view m = s.message();
  std::string flag = "--archive_url";
  if (absl::StrContains(m, "region")) {
    flag = "--archive_s3_region";
  } else if (absl::StrContains(m, "endpoint") || absl::StrContains(m, "path style")) {
    flag = "--archive_s3_endpoint";
  } else if (absl::StrContains(m, "part size")) {
    flag = "archive part size";
  }
  return absl::InvalidArgumentError(absl::StrCat(flag, ": ", m));
}

// In our staging directory, flock()ed for as long as the archiver lives: a
// sibling whose lock can be taken belongs to no live process.
constexpr char kStagingLock[] = ".staging.lock";
constexpr char kStagingPrefix[] = "videotask-archive-";
// A sibling without a lock file is removed only when older than this (it may
// be another process's, made just now, before its lock file).
constexpr absl::Duration kUnlockedStagingAge = absl::Minutes(10);

// Removes `dir`'s files, its .archive-state's, and both directories.
void RemoveStagingDir(const std::string& dir) {
  const std::string state = absl::StrCat(dir, "/.archive-state");
  for (const std::string& d : {state, dir}) {
    if (DIR* h = ::opendir(d.c_str())) {
      while (struct dirent* e = ::readdir(h)) {
        const std::string name = e->d_name;
        if (name == "." || name == ".." || name == ".archive-state") continue;
        ::unlink(absl::StrCat(d, "/", name).c_str());
      }
      ::closedir(h);
    }
    ::rmdir(d.c_str());
  }
}

// Removes the staging directories in `parent` that crashed runs left (no
// live process holds their lock); returns how many.
int RemoveLeftStagingDirs(const std::string& parent) {
  int removed = 0;
  DIR* h = ::opendir(parent.c_str());
  if (h == nullptr) return 0;
  std::vector<std::string> names;
  while (struct dirent* e = ::readdir(h)) {
    const std::string name = e->d_name;
    if (absl::StartsWith(name, kStagingPrefix)) names.push_back(name);
  }
  ::closedir(h);
  for (const std::string& name : names) {
    const std::string dir = absl::StrCat(parent, "/", name);
    struct stat st;
    if (::lstat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode) || st.st_uid != ::geteuid()) {
      continue;
    }
    const int fd = ::open(absl::StrCat(dir, "/", kStagingLock).c_str(),
                          O_RDWR | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) {
      if (errno != ENOENT) continue;
      // No lock file: from before locks, or being made right now.
      if (absl::Now() - absl::FromTimeT(st.st_mtime) < kUnlockedStagingAge) continue;
    } else if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
      ::close(fd);  // in use
      continue;
    }
    RemoveStagingDir(dir);  // the lock, held, goes with it
    if (fd >= 0) ::close(fd);
    ++removed;
  }
  return removed;
}

// The object's Content-Type (a signed header): the video host's when it is
// printable ASCII of a sane length, else application/octet-stream.
std::string ObjectContentType(absl::string_view from_host) {
  constexpr size_t kMaxContentType = 200;
  const bool usable =
      !from_host.empty() && from_host.size() <= kMaxContentType &&
      std::all_of(from_host.begin(), from_host.end(),
                  [](char c) { return c >= 0x20 && c <= 0x7e; }) &&
      !absl::StripAsciiWhitespace(from_host).empty();
  return usable ? std::string(absl::StripAsciiWhitespace(from_host))
                : std::string("application/octet-stream");
}

// The archive_error of a job whose deadline passed while it was queued for
// a worker: an upload slot once downloaded, else an S3 (check/download) one.
std::string SlotWaitTimedOut(bool upload_slot) {
  return absl::StrCat("the archive timeout (--archive_timeout) ran out while waiting for a free ",
                      upload_slot ? "upload" : "S3", " slot");
}

}  // namespace

absl::StatusOr<S3Location> ParseS3Url(const std::string& url) {
  absl::string_view rest = url;
  if (!absl::ConsumePrefix(&rest, "s3://")) {
    return absl::InvalidArgumentError(
        absl::StrCat(kFlags, " must be s3://BUCKET or s3://BUCKET/PREFIX, got \"",
                     s3::Excerpt(url, 100), "\""));
  }
  S3Location out;
  const size_t slash = rest.find('/');
  out.bucket = std::string(rest.substr(0, slash));
  absl::string_view prefix = slash == absl::string_view::npos ? "" : rest.substr(slash + 1);
  while (absl::ConsumeSuffix(&prefix, "/")) {
  }
  if (out.bucket.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(kFlags, " has no bucket: ", s3::Excerpt(url)));
  }
  if (prefix.size() > 512) {
    return absl::InvalidArgumentError(absl::StrCat(kFlags, ": the prefix is too long"));
  }
  if (!prefix.empty()) {
    for (absl::string_view seg : absl::StrSplit(prefix, '/')) {
      if (seg.empty() || seg == "." || seg == "..") {
        return absl::InvalidArgumentError(absl::StrCat(
            kFlags, ": the prefix must not have empty, \".\" or \"..\" segments: ",
            s3::Excerpt(url)));
      }
    }
    for (char c : prefix) {
      if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f || c == '\\' || c == '?' ||
          c == '#') {
        return absl::InvalidArgumentError(
            absl::StrCat(kFlags, ": the prefix holds a control character, '\\', '?' or '#'"));
      }
    }
  }
  out.prefix = std::string(prefix);
  return out;
}

std::string ResolveS3Region(const std::string& flag,
                            const std::map<std::string, std::string>& env) {
  if (!flag.empty()) return flag;
  auto it = env.find("AWS_REGION");
  if (it != env.end() && !it->second.empty()) return it->second;
  return "us-east-1";
}

absl::Status ValidateS3ArchiverOptions(const S3ArchiverOptions& o) {
  absl::StatusOr<S3Location> where = ParseS3Url(o.url);
  if (!where.ok()) return where.status();
  if (o.timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("--archive_timeout must be positive");
  }
  if (o.max_concurrent < 1 || o.max_concurrent > 256) {
    return absl::InvalidArgumentError("archive max_concurrent must be in [1, 256]");
  }
  if (o.initial_backoff <= absl::ZeroDuration() || o.max_backoff < o.initial_backoff) {
    return absl::InvalidArgumentError("archive backoff: need 0 < initial_backoff <= max_backoff");
  }
  if (o.access_key_id_file.empty() != o.secret_access_key_file.empty()) {
    return absl::InvalidArgumentError(
        "--archive_s3_access_key_id_file and --archive_s3_secret_access_key_file go together");
  }
  if (!o.session_token_file.empty() && o.access_key_id_file.empty()) {
    return absl::InvalidArgumentError(
        "--archive_s3_session_token_file needs --archive_s3_access_key_id_file and "
        "--archive_s3_secret_access_key_file");
  }
  auto client = s3::S3Client::Create(
      ClientOptions(o, *where),
      std::make_shared<NoCredentials>(absl::FailedPreconditionError("settings check")));
  if (!client.ok()) return Named(client.status());
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<S3Archiver>> S3Archiver::Create(
    S3ArchiverOptions options, FileArchiverOptions local, Clock* clock,
    MetricsRegistry* metrics, std::shared_ptr<s3::CredentialsProvider> credentials) {
  if (absl::Status s = ValidateS3ArchiverOptions(options); !s.ok()) return s;
  if (clock == nullptr) return absl::InvalidArgumentError("archiver: no clock");
  bool missing = false;
  if (credentials == nullptr) {
    s3::CredentialsOptions co;
    co.env = options.env;
    co.access_key_id_file = options.access_key_id_file;
    co.secret_access_key_file = options.secret_access_key_file;
    co.session_token_file = options.session_token_file;
    co.region = ResolveS3Region(options.region, options.env);
    co.ca_file = options.ca_file;
    co.clock = clock;
    auto chain = s3::CredentialsFromEnvironment(std::move(co));
    if (chain.ok()) {
      credentials = std::move(*chain);
    } else if (absl::IsNotFound(chain.status())) {
      // Not fatal: the watchers still get COMPLETED, with archive_error.
      LogEvent(LogLevel::kError, "archive_credentials_missing",
               {{"archive_url", options.url}, {"error", std::string(chain.status().message())}});
      credentials = std::make_shared<NoCredentials>(absl::FailedPreconditionError(
          std::string(chain.status().message())));
      missing = true;
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("archive S3 credentials: ", chain.status().message()));
    }
  }
  S3Location where = *ParseS3Url(options.url);

  std::string staging;
  int staging_lock = -1;
  const bool keep_local = !local.dir.empty();
  if (!keep_local) {
    const char* tmp = std::getenv("TMPDIR");
    const std::string parent = tmp != nullptr && tmp[0] != '\0' ? tmp : "/tmp";
    if (const int n = RemoveLeftStagingDirs(parent); n > 0) {
      LogEvent(LogLevel::kInfo, "archive_staging_removed",
               {{"dir", parent}, {"count", absl::StrCat(n)}});
    }
    std::string templ = absl::StrCat(parent, "/", kStagingPrefix, "XXXXXX");
    if (::mkdtemp(templ.data()) == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--archive_url: cannot make a staging directory for downloads in ", parent,
          " (set TMPDIR to a writable one): ", strerror(errno)));
    }
    staging = templ;
    staging_lock = ::open(absl::StrCat(staging, "/", kStagingLock).c_str(),
                          O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (staging_lock < 0 || ::flock(staging_lock, LOCK_EX | LOCK_NB) != 0) {
      const std::string why = strerror(errno);
      if (staging_lock >= 0) ::close(staging_lock);
      RemoveStagingDir(staging);
      return absl::InvalidArgumentError(absl::StrCat(
          "--archive_url: cannot lock the staging directory in ", parent, ": ", why));
    }
    local.dir = staging;
  }
  local.timeout = options.timeout;
  local.max_concurrent = options.max_concurrent;
  auto file_archiver = FileArchiver::Create(std::move(local), clock, metrics);
  if (!file_archiver.ok()) {
    if (!staging.empty()) {
      RemoveStagingDir(staging);
      ::close(staging_lock);
    }
    return file_archiver.status();
  }
  std::unique_ptr<S3Archiver> a(new S3Archiver(std::move(options), std::move(where), clock,
                                               metrics));
  a->staging_lock_ = staging_lock;
  // From here on the archiver's destructor cleans up (the staging dir too).
  a->local_ = std::move(*file_archiver);
  a->local_dir_ = a->local_->dir();
  a->keep_local_ = keep_local;
  a->staging_dir_ = a->local_->dir();
  if (keep_local) a->staging_dir_.clear();
  s3::S3Client::Options co = ClientOptions(a->options_, a->where_);
  // Waits between retries end early when the archiver stops.
  co.sleep = [p = a.get()](absl::Duration d) { p->Wait(d); };
  auto client = s3::S3Client::Create(std::move(co), credentials, clock);
  if (!client.ok()) return Named(client.status());
  a->client_ = std::move(*client);
  a->credentials_ = std::move(credentials);
  if (missing) a->credentials_ok_->store(false);
  for (int i = 0; i < a->options_.max_concurrent; ++i) {
    a->workers_.emplace_back([p = a.get()] { p->WorkerLoop(false); });
    a->workers_.emplace_back([p = a.get()] { p->WorkerLoop(true); });
  }
  a->workers_.emplace_back([p = a.get()] { p->SweeperLoop(); });
  return a;
}

S3Archiver::S3Archiver(S3ArchiverOptions options, S3Location where, Clock* clock,
                       MetricsRegistry* metrics)
    : options_(std::move(options)), where_(std::move(where)), clock_(clock), metrics_(metrics) {
  if (metrics_ != nullptr) {
    uploaded_ = metrics_->GetCounter("videotask_archive_s3_objects_total",
                                     "Archives stored in the bucket, by how: uploaded or reused "
                                     "(an object with the same SHA-256 was there).",
                                     "result=\"uploaded\"");
    reused_ = metrics_->GetCounter("videotask_archive_s3_objects_total",
                                   "Archives stored in the bucket, by how: uploaded or reused "
                                   "(an object with the same SHA-256 was there).",
                                   "result=\"reused\"");
    metrics_->AddGauge("videotask_archive_credentials_ok",
                       "1 while the bucket's credentials work (or were not needed yet); 0 "
                       "after one was missing or refused.",
                       [ok = credentials_ok_] { return ok->load() ? 1.0 : 0.0; });
  }
}

S3Archiver::~S3Archiver() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  for (std::thread& w : workers_) w.join();
  // Aborts the downloads; their callbacks (archiving stopped) finish jobs.
  local_.reset();
  std::vector<std::string> left;
  {
    absl::MutexLock lock(&mu_);
    for (auto& [id, job] : jobs_) left.push_back(id);
    begin_queue_.clear();
    upload_queue_.clear();
  }
  for (const std::string& id : left) {
    Finish(id, nullptr, "archiving stopped: the sidecar is shutting down", "shutdown");
  }
  // Whatever the FileArchiver left (it removes its partial files), the lock
  // too (held until the directory is gone).
  if (!staging_dir_.empty()) RemoveStagingDir(staging_dir_);
  if (staging_lock_ >= 0) ::close(staging_lock_);
}

std::string S3Archiver::Describe() const {
  return absl::StrCat("s3://", where_.bucket, where_.prefix.empty() ? "" : "/", where_.prefix);
}

std::string S3Archiver::KeyFor(const std::string& file_name) const {
  return where_.prefix.empty() ? file_name : absl::StrCat(where_.prefix, "/", file_name);
}

void S3Archiver::SetCredentialsListener(std::function<void(bool)> listener) {
  absl::MutexLock lock(&listener_mu_);
  listener_ = std::move(listener);
  if (listener_) listener_(credentials_ok_->load());
}

void S3Archiver::SetCredentialsOk(bool ok) {
  // The exchange under the lock: two changes racing could otherwise reach
  // the listener in the other order and leave health on the wrong value.
  absl::MutexLock lock(&listener_mu_);
  if (credentials_ok_->exchange(ok) == ok) return;
  if (listener_) listener_(ok);
}

S3Archiver::Stats S3Archiver::GetStats() {
  Stats s;
  {
    absl::MutexLock lock(&mu_);
    s.pending = static_cast<int64_t>(jobs_.size());
  }
  s.uploads = uploads_.load();
  s.reused = reuses_.load();
  if (local_ != nullptr) s.downloads = local_->GetStats().downloads;
  return s;
}

void S3Archiver::Archive(const VideoTask& task, Done done) {
  absl::MutexLock lock(&mu_);
  auto it = jobs_.find(task.id());
  if (it != jobs_.end()) {
    it->second->waiters.push_back({task, std::move(done)});
    return;
  }
  auto job = std::make_unique<Job>();
  job->id = task.id();
  job->task = task;
  job->start = clock_->Monotonic();
  job->deadline = job->start + options_.timeout;
  job->waiters.push_back({task, std::move(done)});
  jobs_.emplace(task.id(), std::move(job));
  begin_queue_.push_back(task.id());
  kicked_ = true;
}

void S3Archiver::WorkerLoop(bool uploads) {
  std::deque<std::string>& queue = uploads ? upload_queue_ : begin_queue_;
  while (true) {
    std::string id;
    bool expired = false;
    {
      absl::MutexLock lock(&mu_);
      auto has_work = [this, &queue]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return !queue.empty() || stopping_.load();
      };
      mu_.Await(absl::Condition(&has_work));
      if (stopping_) return;
      id = std::move(queue.front());
      queue.pop_front();
      auto it = jobs_.find(id);
      if (it == jobs_.end()) continue;
      it->second->queued = false;
      expired = clock_->Monotonic() >= it->second->deadline;
    }
    if (expired) {
      Finish(id, nullptr, SlotWaitTimedOut(uploads), "timeout");
    } else if (uploads) {
      Upload(id);
    } else {
      Begin(id);
    }
  }
}

void S3Archiver::SweeperLoop() {
  while (true) {
    std::vector<std::pair<std::string, std::string>> expired;  // id, error
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) return;
      const absl::Time now = clock_->Monotonic();
      absl::Time wake = now + absl::Milliseconds(200);
      for (auto& [id, job] : jobs_) {
        if (now < job->deadline) {
          wake = std::min(wake, job->deadline);
          continue;
        }
        std::string error;
        if (job->queued) {
          error = SlotWaitTimedOut(/*upload_slot=*/job->downloaded);
        } else if (!job->last_error.empty()) {
          error = absl::StrCat("gave up after ", job->attempts,
                               " upload attempts (--archive_timeout): ", job->last_error);
        } else {
          error = absl::StrCat("the archive timeout (--archive_timeout) ran out while ",
                               job->downloaded ? "uploading" : "checking or downloading");
        }
        expired.emplace_back(id, std::move(error));
      }
      if (expired.empty()) {
        kicked_ = false;
        auto woken = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
          return kicked_ || stopping_.load();
        };
        // The clock is re-read at least every 200 ms (a simulated one too).
        mu_.AwaitWithTimeout(absl::Condition(&woken),
                             std::clamp(wake - now, absl::Milliseconds(1),
                                        absl::Milliseconds(200)));
      }
    }
    for (auto& [id, error] : expired) Finish(id, nullptr, error, "timeout");
  }
}

void S3Archiver::Begin(const std::string& id) {
  VideoTask task;
  absl::Time deadline;
  {
    absl::MutexLock lock(&mu_);
    auto it = jobs_.find(id);
    if (it == jobs_.end()) return;
    task = it->second->task;
    deadline = it->second->deadline;
  }
  // 1. Credentials: missing or refused ends it now (a transient failure to
  // reach STS or the agent is retried by the upload).
  absl::StatusOr<s3::AwsCredentials> creds = credentials_->Get();
  if (!creds.ok() && !absl::IsUnavailable(creds.status())) {
    SetCredentialsOk(false);
    Finish(id, nullptr,
           absl::StrCat("no usable credentials for ", Describe(), " (",
                        credentials_->Describe(), "): ", creds.status().message()),
           "credentials");
    return;
  }
  // (Whether they work is known once S3 answers: a HEAD or an upload.)
  // 2. An object already there (a restart, another pod).
  const std::string ext = VideoExtensionFromUrl(task.video_url());
  if (!ext.empty() && ValidateTaskId(id).ok()) {
    const std::string key = KeyFor(absl::StrCat(id, ".", ext));
    absl::StatusOr<std::optional<s3::ObjectInfo>> there =
        client_->Head(key, std::min(deadline, clock_->Monotonic() + kReuseCheckTime),
                      [this] { return stopping_.load(); });
    if (there.ok()) SetCredentialsOk(true);
    if (there.ok() && there->has_value() && IsHexSha256((*there)->sha256) &&
        (*there)->size >= 0) {
      VideoArchive a;
      a.set_uri(client_->Uri(key));
      a.set_sha256((*there)->sha256);
      a.set_size_bytes((*there)->size);
      a.set_content_type((*there)->content_type);
      ToTimestamp(clock_->Now(), a.mutable_archive_time());
      reuses_.fetch_add(1);
      if (reused_ != nullptr) reused_->Increment();
      Finish(id, &a, "", "");
      return;
    }
  }
  if (stopping_.load()) return;  // the destructor finishes it
  // 3. The download, with every rule of the directory archiver.
  // It gets what is left of this job's time, not a timeout of its own.
  local_->ArchiveBy(task, deadline,
                    [this, id](VideoTask result) { OnDownloaded(id, std::move(result)); });
}

void S3Archiver::OnDownloaded(const std::string& id, VideoTask result) {
  if (!result.has_archive()) {
    // The FileArchiver counted and logged it.
    Finish(id, nullptr, result.archive_error(), "");
    return;
  }
  {
    absl::MutexLock lock(&mu_);
    auto it = jobs_.find(id);
    if (it != jobs_.end()) {
      it->second->downloaded = true;
      it->second->local = result.archive();
      it->second->queued = true;
      if (stopping_.load()) return;  // the destructor finishes it
      upload_queue_.push_back(id);
      return;
    }
  }
  // Answered already (its time ran out): the staged copy is not needed.
  RemoveStaged(PathFromFileUri(result.archive().uri()), id);
}

void S3Archiver::Wait(absl::Duration d) {
  if (options_.sleep) {
    options_.sleep(d);
    return;
  }
  absl::MutexLock lock(&mu_);
  auto stop = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_.load(); };
  mu_.AwaitWithTimeout(absl::Condition(&stop), d);
}

void S3Archiver::RemoveStaged(const std::string& path, const std::string& id) {
  if (keep_local_) return;
  ::unlink(path.c_str());
  ::unlink(absl::StrCat(local_dir_, "/", id, ".meta.json").c_str());
  ::unlink(absl::StrCat(local_dir_, "/.archive-state/", id, ".done").c_str());
}

void S3Archiver::Upload(const std::string& id) {
  VideoArchive local;
  absl::Time deadline;
  {
    absl::MutexLock lock(&mu_);
    auto it = jobs_.find(id);
    if (it == jobs_.end()) return;
    local = it->second->local;
    deadline = it->second->deadline;
  }
  const std::string path = PathFromFileUri(local.uri());
  const size_t slash = path.rfind('/');
  const std::string file_name = slash == std::string::npos ? path : path.substr(slash + 1);
  if (path.empty() || file_name.empty()) {
    Finish(id, nullptr, "the downloaded copy has no file path", "s3");
    return;
  }
  s3::ObjectSpec spec;
  spec.key = KeyFor(file_name);
  spec.size = local.size_bytes();
  spec.sha256 = local.sha256();
  spec.content_type = ObjectContentType(local.content_type());
  spec.deadline = deadline;
  spec.cancelled = [this] { return stopping_.load(); };
  absl::Duration backoff = options_.initial_backoff;
  int attempts = 0;
  absl::Status last;
  while (true) {
    ++attempts;
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      const std::string why = strerror(errno);
      // The FileArchiver may answer from a shared directory's record of a
      // copy the worker has removed since: the object may be there already.
      absl::StatusOr<std::optional<s3::ObjectInfo>> there =
          client_->Head(spec.key, deadline, spec.cancelled);
      if (there.ok() && there->has_value() && (*there)->sha256 == spec.sha256 &&
          (*there)->size == spec.size) {
        SetCredentialsOk(true);
        VideoArchive a = local;
        a.set_uri(client_->Uri(spec.key));
        ToTimestamp(clock_->Now(), a.mutable_archive_time());
        reuses_.fetch_add(1);
        if (reused_ != nullptr) reused_->Increment();
        Finish(id, &a, "", "");
        return;
      }
      RemoveStaged(path, id);
      Finish(id, nullptr,
             absl::StrCat("the downloaded copy ", file_name, " cannot be read: ", why), "s3");
      return;
    }
    FileSource source(fd);
    absl::StatusOr<s3::UploadResult> r = client_->Upload(spec, source);
    ::close(fd);
    if (r.ok()) {
      SetCredentialsOk(true);
      VideoArchive a = local;
      a.set_uri(r->uri);
      a.set_content_type(spec.content_type);  // what the object carries
      ToTimestamp(clock_->Now(), a.mutable_archive_time());
      if (r->reused) {
        reuses_.fetch_add(1);
        if (reused_ != nullptr) reused_->Increment();
      } else {
        uploads_.fetch_add(1);
        if (uploaded_ != nullptr) uploaded_->Increment();
      }
      RemoveStaged(path, id);
      LogEvent(LogLevel::kInfo, "archive_uploaded",
               {{"task", id},
                {"uri", a.uri()},
                {"reused", r->reused ? "true" : "false"},
                {"parts", absl::StrCat(r->parts)},
                {"requests", absl::StrCat(r->requests)},
                {"attempts", absl::StrCat(attempts)}});
      Finish(id, &a, "", "");
      return;
    }
    last = r.status();
    {
      absl::MutexLock lock(&mu_);
      auto it = jobs_.find(id);
      if (it != jobs_.end()) {
        it->second->attempts = attempts;
        it->second->last_error = std::string(last.message());
      }
    }
    const bool credential = IsCredentialError(last);
    if (credential && !absl::IsUnavailable(last)) SetCredentialsOk(false);
    if (absl::IsPermissionDenied(last) && !credential) {
      // S3 refused the signature or the access: the credentials are not usable.
      SetCredentialsOk(false);
    }
    const absl::Duration left = deadline - clock_->Monotonic();
    if (stopping_.load() || absl::IsCancelled(last)) {
      RemoveStaged(path, id);
      return;  // the destructor finishes it
    }
    if (!Retryable(last) || left <= absl::ZeroDuration() || backoff >= left) {
      RemoveStaged(path, id);
      std::string error = std::string(last.message());
      if (Retryable(last)) {
        error = absl::StrCat("gave up after ", attempts, " upload attempts (--archive_timeout): ",
                             error);
      }
      Finish(id, nullptr, error, credential ? "credentials" : "s3");
      return;
    }
    LogEvent(LogLevel::kWarning, "archive_upload_retry",
             {{"task", id},
              {"attempt", absl::StrCat(attempts)},
              {"error", std::string(last.message())},
              {"retry_in", absl::FormatDuration(backoff)}});
    Wait(backoff);
    backoff = std::min(backoff * 2, options_.max_backoff);
  }
}

void S3Archiver::Finish(const std::string& id, const VideoArchive* archive,
                        const std::string& error, const std::string& reason) {
  std::unique_ptr<Job> job;
  {
    absl::MutexLock lock(&mu_);
    auto it = jobs_.find(id);
    if (it == jobs_.end()) return;
    job = std::move(it->second);
    jobs_.erase(it);
  }
  if (archive == nullptr && !reason.empty()) {
    // Failures of the download were counted and logged by the FileArchiver.
    if (metrics_ != nullptr) {
      metrics_
          ->GetCounter("videotask_archive_failures_total",
                       "Archives that ended with archive_error, by the last failure's reason.",
                       absl::StrCat("reason=\"", reason, "\""))
          ->Increment();
    }
    LogEvent(LogLevel::kError, "archive_failed",
             {{"task", id}, {"archive_url", Describe()}, {"reason", reason}, {"error", error}});
  }
  for (Waiter& w : job->waiters) {
    std::move(w.done)(WithArchiveOutcome(std::move(w.task), archive, error));
  }
}

}  // namespace videotask
