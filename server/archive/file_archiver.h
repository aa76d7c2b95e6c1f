// FileArchiver: the Archiver for `--archive_dir=PATH`, a volume the worker
// mounts too. It copies a COMPLETED task's video from its video_url to
// PATH/<id>.<ext> and describes the copy in PATH/<id>.meta.json (a name no
// video extension can take).
//
// How a copy is made:
// - Streamed with libcurl on a worker thread of its own (at most
//   `max_concurrent` downloads at once; Archive() never blocks) into a
//   temporary file in the same directory (`.<id>.<random>.part`), with the
//   SHA-256 computed on the way; the video is never held in memory. The file
//   is fsync'd, renamed to its final name and the directory fsync'd, so no
//   partial file ever carries the final name. Then the metadata (uri,
//   sha256, size, content type, archive time) is written the same way. A
//   failed directory fsync fails the attempt (io_error, retried): `archive`
//   is only reported once the names are durable.
// - The extension comes from the URL's path, else from the Content-Type,
//   else `mp4`.
// - No header the sidecar does not need is sent: no Authorization (the
//   vendor's key never reaches the video host), no proxy. Redirects are
//   followed by hand, at most `max_redirects`, each only to https://.
//   Plain http:// is followed only for the first URL, to a loopback host,
//   with `allow_loopback`. Every address libcurl is about to connect to
//   (after DNS) is checked in its open-socket callback: loopback, link-local
//   (169.254/16, the cloud metadata address, fe80::/10), private (10/8,
//   172.16/12, 192.168/16, 100.64/10, fc00::/7), unspecified, multicast and
//   reserved addresses are refused, the check being on the very address the
//   socket connects to (no second lookup a rebinding DNS could answer
//   differently). `allow_loopback` lets the first URL (never a redirect)
//   reach a loopback address; private addresses are refused always.
// - More than `max_bytes` (by Content-Length or as counted) aborts the copy;
//   a full disk (ENOSPC, EFBIG, also from RLIMIT_FSIZE) too. Both end the
//   archive at once with `archive_error`, the partial file removed.
// - Other failures (connection errors, cut transfers, 5xx, a stall of
//   `stall_timeout`, fewer than `min_bytes_per_second` on average over any
//   `stall_timeout` of the transfer, by the injected clock) are retried
//   after `initial_backoff`, doubling (+-20% jitter) up to `max_backoff`,
//   until `timeout` of the archive's own time has passed (time spent waiting
//   for a free download slot does not count); then `archive_error` says what
//   went wrong last. Client errors (4xx but 408 and 429) end it after
//   `max_client_error_attempts` in a row.
// - Sidecars sharing PATH (pods on one volume) claim a task before
//   downloading it: an flock() on PATH/.archive-state/<id>.claim, which the
//   kernel (or, on NFS, the server when a crashed client's lease ends) drops
//   with its holder. Who finds the claim held waits (looks again every
//   `initial_backoff`, within its timeout) and then answers from the
//   holder's copy. After a copy is published, PATH/.archive-state/<id>.done
//   (a hard link of the metadata) records it, so a sidecar that comes later
//   and finds the worker has already removed the copy answers with that
//   record instead of downloading it again. Published names are never
//   unlinked by the archiver. Records older than a day are removed at start.
// - A task whose metadata and file are already there (a restart, another
//   pod sharing the volume) is reused when the file's size and SHA-256 match
//   the metadata: no download.
// - Archive() of an id already in progress joins it: one download.
//
// Time comes from the injected Clock: Monotonic() for the timeout, backoffs,
// the throughput floor and durations, Now() for archive_time (record ages
// are file times, compared with the real clock). The scheduler re-reads the
// clock at least once a second and on Kick(), so tests advancing a
// SimulatedClock call Kick(). Metrics: videotask_archive_bytes_total,
// videotask_archive_duration_seconds, videotask_archive_failures_total{reason}.
//
// Destroying the archiver aborts transfers in progress and runs every
// pending `done` with `archive_error` ("archiving stopped"), on the
// destroying thread: destroy it before whatever those callbacks use (e.g.
// after PollHub::Shutdown(), before the hub).
#ifndef VIDEOTASK_SERVER_ARCHIVE_FILE_ARCHIVER_H_
#define VIDEOTASK_SERVER_ARCHIVE_FILE_ARCHIVER_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <sys/socket.h>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/random/random.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "proto/videotask/v1/video_task.pb.h"
#include "server/archive/archiver.h"
#include "server/base/clock.h"
#include "server/base/loopback.h"  // IsLoopbackAddress
#include "server/base/metrics.h"

namespace videotask {

struct FileArchiverOptions {
  std::string dir;  // an existing, writable directory
  int64_t max_bytes = int64_t{2} << 30;
  // From Archive() to `done`, retries included.
  absl::Duration timeout = absl::Minutes(30);
  int max_concurrent = 4;
  absl::Duration initial_backoff = absl::Seconds(1);
  absl::Duration max_backoff = absl::Seconds(60);
  absl::Duration connect_timeout = absl::Seconds(30);
  // An attempt that receives no byte for this long fails (and is retried).
  absl::Duration stall_timeout = absl::Seconds(60);
  // An attempt that receives fewer bytes than this per second on average
  // over a `stall_timeout` fails too (and is retried); 0: no floor.
  int64_t min_bytes_per_second = 32 << 10;
  // The first URL (never a redirect) may be plain http:// to a loopback
  // host, or resolve to a loopback address (a video host in the pod, tests).
  bool allow_loopback = false;
  int max_redirects = 5;
  int max_client_error_attempts = 3;
  std::string ca_file;  // empty: the system's CA bundle
  std::string user_agent = "videotask-sidecar";
  // Tests only. `resolve`: libcurl CURLOPT_RESOLVE entries ("host:port:addr"),
  // a stand-in for DNS answers. `fsync_dir`: replaces ::fsync() of the
  // directory (returns 0 or -1 with errno set).
  std::vector<std::string> resolve;
  std::function<int(int fd)> fsync_dir;
};

// Why `addr` may not be connected to by the archiver ("loopback",
// "link-local", "private", "unspecified", "multicast", "reserved"), or ""
// for a public address. IPv4-mapped, NAT64 and 6to4 IPv6 addresses are
// judged by the IPv4 address they carry.
std::string NonPublicAddressKind(const struct sockaddr* addr);

// The extension the archive's file name takes from `url`'s path (1-8
// alphanumerics, lowercased), or "" when its last segment has none (the
// Content-Type decides then).
std::string VideoExtensionFromUrl(const std::string& url);

// OK, or INVALID_ARGUMENT naming the bad option (as the sidecar's flag).
absl::Status ValidateFileArchiverOptions(const FileArchiverOptions& options);

class FileArchiver : public Archiver {
 public:
  // Checks the options and the directory (exists, writable); removes
  // temporary files that a crashed run left (older than the timeout). Sets
  // SIGXFSZ to ignored when it has its default action, so that a file-size
  // limit (RLIMIT_FSIZE) fails a write with EFBIG instead of killing the
  // process.
  // `clock` and `metrics` (may be null) must outlive the archiver.
  static absl::StatusOr<std::unique_ptr<FileArchiver>> Create(FileArchiverOptions options,
                                                              Clock* clock,
                                                              MetricsRegistry* metrics);
  ~FileArchiver() override;

  void Archive(const videotask::v1::VideoTask& task, Done done) override;
  // Archive() that also ends by `deadline` (the clock's Monotonic()), waiting
  // for a free download slot included: `done` runs with archive_error by
  // then (a caller with its own, earlier deadline: the S3 archiver). Joining
  // an id in progress keeps that job's time.
  void ArchiveBy(const videotask::v1::VideoTask& task, absl::Time deadline, Done done);

  // Makes the scheduler re-read the clock now.
  void Kick();

  struct Stats {
    int64_t pending = 0;    // archives not finished (waiting or running)
    int64_t running = 0;    // attempts under way
    int64_t downloads = 0;  // transfers started since creation (redirect hops not counted)
    int64_t reused = 0;     // archives answered from an existing copy
  };
  Stats GetStats();

  // The absolute directory (as used in `file://` URIs).
  const std::string& dir() const { return options_.dir; }

 private:
  struct Waiter {
    videotask::v1::VideoTask task;
    Done done;
  };
  struct Job {
    std::string id;
    std::string url;
    std::vector<Waiter> waiters;
    absl::Time start;     // Monotonic()
    absl::Time deadline;  // start + timeout
    // ArchiveBy()'s deadline: the slot wait does not move `deadline` past it.
    absl::Time limit = absl::InfiniteFuture();
    absl::Time next_try;
    uint64_t seq = 0;  // arrival order: ties of next_try go first come, first served
    int attempts = 0;
    int client_errors = 0;  // in a row
    bool running = false;
    std::string last_error;
    std::string last_reason;
  };
  struct Outcome;
  class Transfer;

  FileArchiver(FileArchiverOptions options, Clock* clock, MetricsRegistry* metrics);
  void SchedulerLoop();
  void WorkerLoop();
  // One attempt for `job` (a copy taken under the lock); no lock held.
  Outcome RunAttempt(const std::string& id, const std::string& url, absl::Time deadline);
  Outcome Download(const std::string& id, const std::string& url, absl::Time deadline);
  Outcome TryReuse(const std::string& id);
  Outcome FromRecord(const std::string& id);
  // 0, or the errno of a failed fsync of the archive directory.
  int SyncDir() const;
  // Removes the job and runs its waiters with `archive` or `error`.
  void Finish(std::unique_ptr<Job> job, const videotask::v1::VideoArchive* archive,
              const std::string& error, const std::string& reason) ABSL_LOCKS_EXCLUDED(mu_);
  absl::Duration Backoff(int attempts) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool Aborted(absl::Time deadline) const;

  const FileArchiverOptions options_;
  Clock* const clock_;
  Counter* bytes_total_ = nullptr;
  Histogram* duration_ = nullptr;
  MetricsRegistry* metrics_ = nullptr;

  std::atomic<bool> stopping_{false};
  absl::Mutex mu_;
  absl::flat_hash_map<std::string, std::unique_ptr<Job>> jobs_ ABSL_GUARDED_BY(mu_);
  std::deque<std::string> ready_ ABSL_GUARDED_BY(mu_);  // ids handed to workers
  int running_ ABSL_GUARDED_BY(mu_) = 0;
  bool kicked_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t next_seq_ ABSL_GUARDED_BY(mu_) = 0;
  std::atomic<int64_t> downloads_{0};
  std::atomic<int64_t> reused_{0};
  absl::BitGen rng_ ABSL_GUARDED_BY(mu_);
  std::thread scheduler_;
  std::vector<std::thread> workers_;
};

}  // namespace videotask

#endif  // VIDEOTASK_SERVER_ARCHIVE_FILE_ARCHIVER_H_
