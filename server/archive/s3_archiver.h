// S3Archiver: the Archiver for `--archive_url=s3://BUCKET/PREFIX`. It stores
// a COMPLETED task's video as the object PREFIX/<id>.<ext> in an S3 or
// S3-compatible bucket and reports it as archive.uri = s3://BUCKET/KEY, with
// the SHA-256 and size (the object carries them too: metadata sha256, and
// Content-Type).
//
// How an archive is made, per task (Archive() of an id in progress joins it):
// 1. Credentials: a credential that is missing or refused ends the archive at
//    once with archive_error (reason `credentials`), an error log line, and
//    credentials_ok() false (the sidecar's health for the archive and a
//    gauge) until credentials work again.
// 2. Reuse: when the URL's path gives the extension, a HEAD of the key; an
//    object there with a SHA-256 in its metadata (only a sidecar stores one,
//    after S3 checked every byte's signed hash) is the archive: nothing is
//    downloaded or uploaded (a restart, another pod of the fleet).
// 3. Download: by the FileArchiver given to Create(), with all its rules
//    (redirects, loopback and private addresses, size limit, throughput
//    floor, retries until the timeout, the claim of a shared directory); its
//    archive_error is the answer. Its directory is --archive_dir (the local
//    copy is kept, as without S3) or a staging directory this archiver owns
//    (the file is removed once uploaded or failed, the directory at the end).
// 4. Upload: S3Client::Upload from the file (HEAD reuse by SHA-256, one
//    PutObject up to a part, multipart above, one part buffered at a time),
//    retried on transient errors with backoff (doubling, capped) until
//    `timeout` from Archive(); errors that will not heal (403 AccessDenied or
//    SignatureDoesNotMatch, NoSuchBucket, other 4xx) end it at once with S3's
//    error code in archive_error (reason `s3`).
// At most `max_concurrent` HEADs and `max_concurrent` uploads run at once
// (apart: uploads stuck on a failing store do not hold back HEADs and
// downloads); Archive() never blocks. No secret is ever in a log line or an
// error.
//
// `timeout` is a hard bound from Archive() to `done`: the download gets what
// is left of it, not a fresh one, and a job whose time runs out (waiting for
// a slot, downloading or uploading) is answered then with archive_error
// (reason `timeout`); a multipart abort still under way runs after that.
//
// Destroying the archiver cancels HEADs and uploads (a request in flight
// too; a multipart upload is aborted, briefly), destroys the
// FileArchiver (aborting downloads) and runs every pending `done` with
// archive_error "archiving stopped", on the destroying thread.
#ifndef VIDEOTASK_SERVER_ARCHIVE_S3_ARCHIVER_H_
#define VIDEOTASK_SERVER_ARCHIVE_S3_ARCHIVER_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "proto/videotask/v1/video_task.pb.h"
#include "server/archive/archiver.h"
#include "server/archive/file_archiver.h"
#include "server/archive/s3/credentials.h"
#include "server/archive/s3/s3_client.h"
#include "server/base/clock.h"
#include "server/base/metrics.h"

namespace videotask {

struct S3ArchiverOptions {
  std::string url;       // s3://BUCKET or s3://BUCKET/PREFIX
  std::string endpoint;  // empty: AWS S3 for the region; https, or http to loopback
  std::string region;    // empty: AWS_REGION from `env`, else us-east-1
  bool path_style = false;
  std::string ca_file;
  // Static keys from files (a mounted Secret); else the environment's chain.
  std::string access_key_id_file;
  std::string secret_access_key_file;
  std::string session_token_file;
  // The environment for the credential chain (the sidecar passes
  // s3::ProcessEnvironment()).
  std::map<std::string, std::string> env;
  // From Archive() to `done`, a hard bound: queue waits, the HEAD, the
  // download and the upload all come out of it.
  absl::Duration timeout = absl::Minutes(30);
  int max_concurrent = 4;  // HEADs at once; uploads at once (separately)
  // Tests: smaller parts and backoffs, and the waits between retries.
  size_t part_size = s3::kPartSize;
  absl::Duration initial_backoff = absl::Seconds(1);
  absl::Duration max_backoff = absl::Seconds(30);
  std::function<void(absl::Duration)> sleep;  // empty: wait on the real clock
};

struct S3Location {
  std::string bucket;
  std::string prefix;  // no leading or trailing '/'; may be empty
};

// s3://BUCKET[/PREFIX][/] -> bucket and prefix; INVALID_ARGUMENT naming
// --archive_url otherwise.
absl::StatusOr<S3Location> ParseS3Url(const std::string& url);

// The region: `flag`, else AWS_REGION in `env`, else us-east-1.
std::string ResolveS3Region(const std::string& flag, const std::map<std::string, std::string>& env);

// OK, or INVALID_ARGUMENT naming the bad flag (--archive_url, --archive_s3_*).
// Checks no credential.
absl::Status ValidateS3ArchiverOptions(const S3ArchiverOptions& options);

class S3Archiver : public Archiver {
 public:
  // `local` (its options; the directory empty: a staging directory is made
  // in $TMPDIR, else /tmp, and flock()ed while the archiver lives; the
  // staging directories there that no live process holds, left by a crash,
  // are removed first) makes the downloads. `credentials` null: the
  // chain from the options (a misconfigured one is INVALID_ARGUMENT; none at
  // all is not an error here: each archive then fails with `credentials`).
  // `clock` and `metrics` (may be null) must outlive the archiver.
  static absl::StatusOr<std::unique_ptr<S3Archiver>> Create(
      S3ArchiverOptions options, FileArchiverOptions local, Clock* clock,
      MetricsRegistry* metrics, std::shared_ptr<s3::CredentialsProvider> credentials = nullptr);
  ~S3Archiver() override;

  void Archive(const videotask::v1::VideoTask& task, Done done) override;

  // False after a credential was missing or refused, until one works.
  bool credentials_ok() const { return credentials_ok_->load(); }
  // Called with credentials_ok() whenever it changes (and once when set).
  void SetCredentialsListener(std::function<void(bool)> listener);

  struct Stats {
    int64_t pending = 0;   // archives not finished
    int64_t uploads = 0;   // objects stored (PutObject or multipart)
    int64_t reused = 0;    // archives answered by an object already there
    int64_t downloads = 0; // the FileArchiver's downloads
  };
  Stats GetStats();

  // "s3://bucket/prefix"; where the credentials come from; the download dir.
  std::string Describe() const;
  std::string CredentialsSource() const { return credentials_->Describe(); }
  const std::string& local_dir() const { return local_dir_; }
  bool keeps_local_copy() const { return keep_local_; }

 private:
  struct Waiter {
    videotask::v1::VideoTask task;
    Done done;
  };
  struct Job {
    std::string id;
    videotask::v1::VideoTask task;
    std::vector<Waiter> waiters;
    absl::Time start;     // Monotonic()
    absl::Time deadline;  // start + timeout
    // Set once the download is done: the upload's input.
    bool downloaded = false;
    videotask::v1::VideoArchive local;
    bool queued = true;      // waiting for a worker (not in a HEAD or upload)
    int attempts = 0;        // uploads tried
    std::string last_error;  // of the last upload attempt
  };

  S3Archiver(S3ArchiverOptions options, S3Location where, Clock* clock,
             MetricsRegistry* metrics);
  void WorkerLoop(bool uploads);
  // Answers the jobs whose deadline has passed (archive_error), at once.
  void SweeperLoop();
  void Begin(const std::string& id);
  void Upload(const std::string& id);
  void OnDownloaded(const std::string& id, videotask::v1::VideoTask result);
  // Removes the job and runs its waiters; `reason` empty on success.
  void Finish(const std::string& id, const videotask::v1::VideoArchive* archive,
              const std::string& error, const std::string& reason);
  // Stores `ok` and tells the listener of a change, both under listener_mu_
  // (the listener's calls alternate and its last one is credentials_ok()).
  void SetCredentialsOk(bool ok);
  friend class S3ArchiverTestPeer;
  void RemoveStaged(const std::string& path, const std::string& id);
  void Wait(absl::Duration d);
  std::string KeyFor(const std::string& file_name) const;

  const S3ArchiverOptions options_;
  const S3Location where_;
  Clock* const clock_;
  MetricsRegistry* const metrics_;
  std::shared_ptr<s3::CredentialsProvider> credentials_;
  std::unique_ptr<s3::S3Client> client_;
  std::unique_ptr<FileArchiver> local_;
  std::string local_dir_;
  bool keep_local_ = false;
  std::string staging_dir_;  // ours to remove; empty with --archive_dir
  int staging_lock_ = -1;    // flock()ed: the staging dir is in use
  Counter* uploaded_ = nullptr;
  Counter* reused_ = nullptr;

  std::atomic<bool> stopping_{false};
  // Shared with the metrics gauge, which may be read after the archiver is gone.
  std::shared_ptr<std::atomic<bool>> credentials_ok_ = std::make_shared<std::atomic<bool>>(true);
  std::atomic<int64_t> uploads_{0};
  std::atomic<int64_t> reuses_{0};
  absl::Mutex listener_mu_;
  std::function<void(bool)> listener_ ABSL_GUARDED_BY(listener_mu_);
  absl::Mutex mu_;
  absl::flat_hash_map<std::string, std::unique_ptr<Job>> jobs_ ABSL_GUARDED_BY(mu_);
  // Work for the workers: ids to begin (HEAD, download), ids to upload.
  std::deque<std::string> begin_queue_ ABSL_GUARDED_BY(mu_);
  std::deque<std::string> upload_queue_ ABSL_GUARDED_BY(mu_);
  bool kicked_ ABSL_GUARDED_BY(mu_) = false;  // wakes the sweeper
  std::vector<std::thread> workers_;
};

}  // namespace videotask

#endif  // VIDEOTASK_SERVER_ARCHIVE_S3_ARCHIVER_H_
