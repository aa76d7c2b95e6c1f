// The chaos soak: the real videotask_sidecar binary (child processes) against
// the simulated upstream (in this process) with random faults, random watch
// and Get churn with random deadlines and cancels, and SIGTERM + restart of
// a sidecar every so often. It checks, and exits 1 on any violation:
// - every watch stream's sequence and every Get's answer (sequence_check.h:
//   SNAPSHOT first, transitions in order and forward only, terminal last,
//   nothing made up: each status seen was served by the sim for that id);
// - the vendor-side request rate: never more than --qps requests in any
//   one-second window (request arrival times recorded by the sim);
// - the sidecars drain and exit 0 within their grace on SIGTERM, never log
//   the API key, answer GET /metrics, and hold no watch or stream once every
//   caller has gone;
// - RSS, open fds and threads of the sidecar that is never restarted level
//   off: the last quarter of the run stays near the level of its second
//   quarter;
// - archiving (--archive_dir, videos served by the sim on loopback with
//   --archive_allow_loopback): a video URL that redirects to a loopback
//   service (another sim standing for a service in the pod; fault "redirect
//   to loopback") is never followed: that service gets no request and no
//   file of that task is archived.
//
// - in fleet mode (--redis, the default: both sidecars use one redis-server
//   the soak starts, each lane its own --fleet_name and a fleet budget of
//   --qps), Redis faults: Redis turns read-only (REPLICAOF, as a failover
//   does to a demoted primary) or stalls (CLIENT PAUSE), for up to 3 s; the
//   rate check above then holds on the local budget (and is also reported
//   for the fault windows alone), and the steady sidecar must notice them
//   (videotask_fleet_faults_total).
//
// Two lanes, each its own sim and sidecar: "steady" (never restarted; its
// resource figures are the levelling-off check) and "restart" (SIGTERM and a
// restart every --restart_every on average; after each exit the soak waits
// over a second before the next start, so no rate window spans two processes).
// Loopback only; stops by itself after --duration (a watchdog ends it, and
// its children, if it hangs).
//
//   bazel run //tests/soak:soak -- --duration=60s [--seed=N]
#include <dirent.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/random/random.h"
#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "httplib.h"
#include "proto/videotask/v1/video_task.grpc.pb.h"
#include "tests/sim/sim_upstream.h"
#include "tests/soak/sequence_check.h"
#include "tests/testing/redis_server.h"
#include "tests/testing/subprocess.h"
#include "tests/testing/test_pki.h"

ABSL_FLAG(absl::Duration, duration, absl::Seconds(60), "How long the churn runs.");
ABSL_FLAG(uint64_t, seed, 0, "Random seed; 0 picks one (printed).");
ABSL_FLAG(int, tasks, 24, "Live tasks per lane; finished ones are replaced.");
ABSL_FLAG(int, watchers, 16, "Threads opening watch streams, one at a time each.");
ABSL_FLAG(int, getters, 4, "Threads calling GetVideoTask.");
ABSL_FLAG(int, qps, 8, "Each sidecar's --max_upstream_qps; the sim checks it.");
ABSL_FLAG(absl::Duration, restart_every, absl::Seconds(20),
          "Mean time between SIGTERM + restart of the restart lane's sidecar; 0 disables.");
ABSL_FLAG(std::string, sidecar, "",
          "The videotask_sidecar binary; default: the one in this target's runfiles.");
ABSL_FLAG(std::vector<std::string>, without, {},
          "Fault kinds to leave out, by the names the summary prints (e.g. reset,hang).");
ABSL_FLAG(bool, redis, true,
          "Run the sidecars in fleet mode on a redis-server the soak starts, with Redis faults "
          "(\"redis read-only\", \"redis stall\"; --without takes these names too).");
ABSL_FLAG(bool, redis_tls, true,
          "Fleet mode over TLS: a TLS-only redis-server (rediss://) with a test CA that openssl "
          "makes at start, verified by the sidecars (--redis_ca_file); false: plain TCP.");
ABSL_FLAG(bool, verbose, false, "Log restarts and samples as they happen.");

namespace videotask::soak {
namespace {

using testing::Subprocess;
using v1::WatchVideoTaskResponse;

constexpr absl::Duration kGrace = absl::Seconds(2);
constexpr absl::Duration kHeartbeat = absl::Milliseconds(700);
// A stream with a SNAPSHOT that gets nothing for this long has stalled.
constexpr absl::Duration kMaxSilence = absl::Seconds(10);

std::atomic<bool> g_stop{false};

double Secs(absl::Duration d) { return absl::ToDoubleSeconds(d); }

// ---- violations and counters ---------------------------------------------------

class Report {
 public:
  void Violation(const std::string& what) {
    absl::MutexLock lock(&mu_);
    ++violations_;
    if (violations_ <= 50) std::cerr << "soak: VIOLATION: " << what << "\n";
    if (violations_ == 50) std::cerr << "soak: (further violations are only counted)\n";
  }
  void Count(const std::string& what, int64_t n = 1) {
    absl::MutexLock lock(&mu_);
    counts_[what] += n;
  }
  int64_t violations() {
    absl::MutexLock lock(&mu_);
    return violations_;
  }
  std::map<std::string, int64_t> counts() {
    absl::MutexLock lock(&mu_);
    return counts_;
  }

 private:
  absl::Mutex mu_;
  int64_t violations_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<std::string, int64_t> counts_ ABSL_GUARDED_BY(mu_);
};

Report g_report;

// ---- cancelling callers at random times -------------------------------------------

class Canceller {
 public:
  Canceller() : thread_([this] { Loop(); }) {}
  ~Canceller() {
    {
      absl::MutexLock lock(&mu_);
      done_ = true;
    }
    thread_.join();
  }
  uint64_t Add(std::shared_ptr<grpc::ClientContext> ctx, absl::Time at) {
    absl::MutexLock lock(&mu_);
    if (all_) ctx->TryCancel();
    entries_[++next_] = {std::move(ctx), at};
    return next_;
  }
  void Remove(uint64_t token) {
    absl::MutexLock lock(&mu_);
    entries_.erase(token);
  }
  // Cancels every call, now and from now on.
  void CancelAll() {
    absl::MutexLock lock(&mu_);
    all_ = true;
    for (auto& [token, e] : entries_) e.ctx->TryCancel();
  }

 private:
  struct Entry {
    std::shared_ptr<grpc::ClientContext> ctx;
    absl::Time at;
  };
  void Loop() {
    absl::MutexLock lock(&mu_);
    while (!done_) {
      mu_.AwaitWithTimeout(absl::Condition(&done_), absl::Milliseconds(10));
      const absl::Time now = absl::Now();
      for (auto it = entries_.begin(); it != entries_.end();) {
        if (it->second.at <= now) {
          it->second.ctx->TryCancel();
          it = entries_.erase(it);
        } else {
          ++it;
        }
      }
    }
  }
  absl::Mutex mu_;
  std::map<uint64_t, Entry> entries_ ABSL_GUARDED_BY(mu_);
  uint64_t next_ ABSL_GUARDED_BY(mu_) = 0;
  bool all_ ABSL_GUARDED_BY(mu_) = false;
  bool done_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

// ---- /proc figures ---------------------------------------------------------------------

struct ProcSample {
  absl::Duration at;  // since the soak started
  int64_t rss_kib = 0;
  int threads = 0;
  int fds = 0;
};

std::optional<ProcSample> ReadProc(pid_t pid) {
  ProcSample s;
  std::ifstream status(absl::StrCat("/proc/", pid, "/status"));
  if (!status) return std::nullopt;
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmRSS:", 0) == 0) s.rss_kib = std::stoll(line.substr(6));
    if (line.rfind("Threads:", 0) == 0) s.threads = std::stoi(line.substr(8));
  }
  DIR* dir = opendir(absl::StrCat("/proc/", pid, "/fd").c_str());
  if (dir == nullptr) return std::nullopt;
  while (struct dirent* e = readdir(dir)) {
    if (e->d_name[0] != '.') ++s.fds;
  }
  closedir(dir);
  if (s.rss_kib == 0) return std::nullopt;  // a zombie
  return s;
}

// The value of an unlabelled metric in a /metrics page; -1 when absent.
double MetricValue(const std::string& page, const std::string& name) {
  size_t at = 0;
  while ((at = page.find(name + " ", at)) != std::string::npos) {
    if (at == 0 || page[at - 1] == '\n') {
      const size_t end = page.find('\n', at);
      double v;
      if (absl::SimpleAtod(page.substr(at + name.size() + 1, end - at - name.size() - 1), &v)) {
        return v;
      }
    }
    at += name.size();
  }
  return -1;
}

// The value after `key=` in a text log line ("" when absent).
std::string LogField(const std::string& log, const std::string& key) {
  const size_t at = log.find(key + "=");
  if (at == std::string::npos) return "";
  const size_t start = at + key.size() + 1;
  return log.substr(start, log.find_first_of(" \n", start) - start);
}

// ---- a lane: a sim and a sidecar ----------------------------------------------------

class Lane {
 public:
  Lane(std::string name, bool restarts, std::string sidecar, std::string dir, uint64_t seed)
      : name_(std::move(name)),
        restarts_(restarts),
        sidecar_(std::move(sidecar)),
        dir_(std::move(dir)),
        gen_(std::seed_seq{static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)}) {}

  const std::string& name() const { return name_; }
  bool restarts() const { return restarts_; }
  // Fleet mode: before Init. `ca_file`: the CA of a TLS Redis, or empty.
  void set_redis(std::string url, std::string ca_file) {
    redis_url_ = std::move(url);
    redis_ca_file_ = std::move(ca_file);
  }
  sim::SimUpstream& sim() { return *sim_; }
  ServedFn served() {
    sim::SimUpstream* s = sim_.get();
    return [s](const std::string& id, const std::string& what) { return s->ServedCount(id, what); };
  }

  bool Init() {
    sim::SimUpstream::Options o;
    key_ = absl::StrFormat("soak-%s-key-%016x", name_, absl::Uniform<uint64_t>(gen_));
    o.api_key = key_;
    o.threads = 64;  // hangs hold a thread each until their delay ends
    o.video_urls_on_sim = true;
    o.default_video.size_bytes = 16 << 10;
    auto sim = sim::SimUpstream::Start(o);
    if (!sim.ok()) {
      std::cerr << "soak: " << sim.status() << "\n";
      return false;
    }
    sim_ = std::move(*sim);
    // A service in the pod that a video host must never reach.
    auto internal = sim::SimUpstream::Start(sim::SimUpstream::Options());
    if (!internal.ok()) {
      std::cerr << "soak: " << internal.status() << "\n";
      return false;
    }
    internal_ = std::move(*internal);
    archive_dir_ = absl::StrCat(dir_, "/", name_, "-archive");
    if (mkdir(archive_dir_.c_str(), 0755) != 0) {
      std::cerr << "soak: cannot make " << archive_dir_ << "\n";
      return false;
    }
    key_file_ = absl::StrCat(dir_, "/", name_, ".key");
    std::ofstream(key_file_) << key_ << "\n";
    absl::MutexLock lock(&mu_);
    for (int i = 0; i < absl::GetFlag(FLAGS_tasks); ++i) NewTaskLocked();
    return StartSidecarLocked();
  }

  // The current channel; null while the sidecar restarts.
  std::shared_ptr<grpc::Channel> channel() {
    absl::MutexLock lock(&mu_);
    return channel_;
  }
  pid_t pid() {
    absl::MutexLock lock(&mu_);
    return proc_ ? proc_->pid() : -1;
  }
  int generation() {
    absl::MutexLock lock(&mu_);
    return generation_;
  }
  int metrics_port() {
    absl::MutexLock lock(&mu_);
    return proc_ ? metrics_port_ : -1;
  }

  // An id to call with: mostly live tasks, some finished ones, ids the
  // upstream does not know, and invalid ids. Sets *valid.
  std::string PickId(absl::BitGen& gen, bool* valid) {
    *valid = true;
    const double r = absl::Uniform(gen, 0.0, 1.0);
    if (r < 0.02) {
      *valid = false;
      static const char* const kBad[] = {"", "has space", "semi;colon", "ünïcode", "a/b"};
      if (absl::Uniform(gen, 0, 6) == 5) return std::string(129, 'x');
      return kBad[absl::Uniform(gen, 0, 5)];
    }
    if (r < 0.05) return absl::StrCat(name_, "-ghost-", absl::Uniform(gen, 0, 1000));
    absl::MutexLock lock(&mu_);
    if (r < 0.12 && !retired_.empty()) return retired_[absl::Uniform<size_t>(gen, 0, retired_.size())];
    return live_[absl::Uniform<size_t>(gen, 0, live_.size())].id;
  }

  // The fault "redirect to loopback": a live task's video redirects to the
  // in-pod service, and the task completes within 2 s. Returns false when
  // no live task is short of its end.
  bool RedirectVideoToLoopback(absl::BitGen& gen) {
    absl::MutexLock lock(&mu_);
    std::vector<Task*> open;  // not yet served completed or failed
    for (Task& t : live_) {
      if (sim_->TerminalServedAt(t.id) == absl::InfiniteFuture()) open.push_back(&t);
    }
    if (open.empty()) return false;
    Task& task = *open[absl::Uniform<size_t>(gen, 0, open.size())];
    const std::string id = task.id;
    // It completes soon, so that the sidecar archives it within the run.
    task.force_at = std::min(task.force_at, absl::Now() + absl::Milliseconds(
                                                              absl::Uniform(gen, 0, 2000)));
    task.force_fail = false;
    sim::VideoScript v;
    v.size_bytes = 16 << 10;
    v.redirect_location = absl::Bernoulli(gen, 0.5)
                              ? internal_->VideoUrl(id)
                              : absl::StrCat("https://127.0.0.1:", internal_->port(), "/videos/",
                                             id, ".mp4");
    sim_->SetVideo(id, v);
    // Still not terminal once the redirect is in place: any download of its
    // video comes after, and meets the redirect.
    if (sim_->TerminalServedAt(id) != absl::InfiniteFuture()) return false;
    redirected_.push_back(id);
    return true;
  }

  // Nothing was fetched from the in-pod service, and no task whose video
  // redirected there has a file in the archive.
  void CheckNoLoopbackArchive() {
    std::vector<std::string> ids;
    {
      absl::MutexLock lock(&mu_);
      ids = redirected_;
    }
    int reached = internal_->TotalRequests();
    for (const std::string& id : ids) reached += internal_->VideoRequestCount(id);
    if (reached != 0) {
      g_report.Violation(absl::StrCat(name_, ": the in-pod service got ", reached,
                                      " requests (redirects to it were followed)"));
    }
    std::vector<std::string> files;
    if (DIR* d = opendir(archive_dir_.c_str())) {
      while (struct dirent* e = readdir(d)) files.push_back(e->d_name);
      closedir(d);
    }
    for (const std::string& id : ids) {
      for (const std::string& f : files) {
        if (absl::StartsWith(f, id + ".")) {
          g_report.Violation(absl::StrCat(name_, ": ", f, " archived from a redirect to loopback"));
        }
      }
    }
    g_report.Count("videos redirected to loopback", static_cast<int64_t>(ids.size()));
    int64_t archived = 0;
    for (const std::string& f : files) archived += absl::EndsWith(f, ".meta.json") ? 1 : 0;
    g_report.Count("videos archived", archived);
  }

  // Replaces finished tasks, forces held ones to their end.
  void ManageTasks() {
    absl::MutexLock lock(&mu_);
    const absl::Time now = absl::Now();
    for (size_t i = 0; i < live_.size();) {
      Task& t = live_[i];
      if (t.force_at <= now) {
        if (t.force_fail) {
          sim_->Fail(t.id, "failed by the soak");
        } else {
          sim_->Complete(t.id);
        }
        t.force_at = absl::InfiniteFuture();
      }
      const absl::Time ended = sim_->TerminalServedAt(t.id);
      if (ended + absl::Seconds(5) < now || t.created + absl::Seconds(120) < now) {
        retired_.push_back(t.id);
        if (retired_.size() > 64) retired_.erase(retired_.begin());
        live_.erase(live_.begin() + i);
        NewTaskLocked();
        continue;
      }
      ++i;
    }
  }

  // SIGTERM, check the exit, wait out the rate window, start again.
  void Restart() {
    std::unique_ptr<Subprocess> old;
    {
      absl::MutexLock lock(&mu_);
      channel_.reset();
      old = std::move(proc_);
    }
    Stop(*old, "restart");
    old.reset();
    absl::SleepFor(absl::Milliseconds(1100));
    for (int attempt = 0; attempt < 5; ++attempt) {
      absl::MutexLock lock(&mu_);
      if (StartSidecarLocked()) {
        g_report.Count("sidecar restarts");
        return;
      }
    }
    g_report.Violation(absl::StrCat(name_, ": the sidecar did not start again"));
  }

  // The final stop.
  void Shutdown() {
    std::unique_ptr<Subprocess> p;
    {
      absl::MutexLock lock(&mu_);
      channel_.reset();
      p = std::move(proc_);
    }
    if (p) Stop(*p, "end");
  }

  absl::Duration max_drain() {
    absl::MutexLock lock(&mu_);
    return max_drain_;
  }

 private:
  struct Task {
    std::string id;
    absl::Time created;
    absl::Time force_at = absl::InfiniteFuture();
    bool force_fail = false;
  };

  void NewTaskLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    Task t;
    t.id = absl::StrCat(name_, "-", next_task_++, "-", absl::Uniform<uint32_t>(gen_) % 100000);
    t.created = absl::Now();
    sim::TaskScript s;
    s.fails = absl::Bernoulli(gen_, 0.25);
    const double r = absl::Uniform(gen_, 0.0, 1.0);
    if (r < 0.6) {  // by polls
      s.queued_polls = absl::Uniform(gen_, 0, 5);
      s.processing_polls = absl::Uniform(gen_, 1, 7);
    } else if (r < 0.8) {  // by time
      s.queued_for = absl::Milliseconds(absl::Uniform(gen_, 200, 5000));
      s.processing_for = absl::Milliseconds(absl::Uniform(gen_, 500, 10000));
    } else {  // held until the soak ends it
      s.advances = false;
      t.force_at = t.created + absl::Milliseconds(absl::Uniform(gen_, 2000, 20000));
      t.force_fail = absl::Bernoulli(gen_, 0.3);
    }
    sim_->SetTask(t.id, s);
    live_.push_back(std::move(t));
  }

  bool StartSidecarLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    std::vector<std::string> args = {
        sidecar_,
        "--listen=127.0.0.1:0",
        "--metrics_listen=127.0.0.1:0",
        absl::StrCat("--upstream_url=", sim_->base_url()),
        absl::StrCat("--api_key_file=", key_file_),
        "--poll_interval=1s",
        absl::StrCat("--heartbeat_interval=", absl::FormatDuration(kHeartbeat)),
        "--upstream_timeout=1500ms",
        "--upstream_connect_timeout=1s",
        absl::StrCat("--max_upstream_qps=", absl::GetFlag(FLAGS_qps)),
        "--max_inflight=4",
        "--terminal_cache_ttl=10s",
        "--max_backoff=3s",
        "--slow_watcher_timeout=30s",
        absl::StrCat("--archive_dir=", archive_dir_),
        "--archive_allow_loopback",  // the sim plays the video host
        "--archive_timeout=20s",
        absl::StrCat("--shutdown_grace=", absl::FormatDuration(kGrace)),
    };
    if (!redis_url_.empty()) {
      args.push_back(absl::StrCat("--redis_url=", redis_url_));
      if (!redis_ca_file_.empty()) {
        args.push_back(absl::StrCat("--redis_ca_file=", redis_ca_file_));
      }
      args.push_back(absl::StrCat("--fleet_name=soak-", name_));
      args.push_back(absl::StrCat("--fleet_max_upstream_qps=", absl::GetFlag(FLAGS_qps)));
    }
    auto p = Subprocess::Start(args);
    if (!p.ok()) {
      std::cerr << "soak: " << p.status() << "\n";
      return false;
    }
    auto proc = std::make_unique<Subprocess>(std::move(*p));
    if (!proc->WaitForStderr("sidecar_started", absl::Seconds(20))) {
      std::cerr << "soak: " << name_ << ": the sidecar did not start:\n" << proc->Stderr();
      return false;
    }
    const std::string log = proc->Stderr();
    const std::string target = LogField(log, "grpc_target");
    int metrics_port = 0;
    if (target.empty() || !absl::SimpleAtoi(LogField(log, "metrics_port"), &metrics_port)) {
      std::cerr << "soak: " << name_ << ": no grpc_target/metrics_port in:\n" << log;
      return false;
    }
    grpc::ChannelArguments ch_args;
    ch_args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    channel_ = grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), ch_args);
    metrics_port_ = metrics_port;
    proc_ = std::move(proc);
    ++generation_;
    if (absl::GetFlag(FLAGS_verbose)) {
      std::cerr << "soak: " << name_ << ": sidecar pid " << proc_->pid() << " at " << target << "\n";
    }
    return true;
  }

  void Stop(Subprocess& p, const std::string& why) {
    const absl::Time start = absl::Now();
    p.Signal(SIGTERM);
    std::optional<int> code = p.Wait(kGrace + absl::Seconds(5));
    const absl::Duration took = absl::Now() - start;
    if (!code.has_value()) {
      g_report.Violation(absl::StrCat(name_, " (", why, "): still running ", Secs(took),
                                      " s after SIGTERM (grace ", Secs(kGrace), " s)"));
      p.Signal(SIGKILL);
      p.Wait(absl::Seconds(5));
    } else if (*code != 0) {
      g_report.Violation(absl::StrCat(name_, " (", why, "): exit code ", *code, " after SIGTERM"));
    } else if (took > kGrace + absl::Seconds(1)) {
      g_report.Violation(absl::StrCat(name_, " (", why, "): drained in ", Secs(took), " s"));
    }
    {
      absl::MutexLock lock(&mu_);
      max_drain_ = std::max(max_drain_, took);
    }
    const std::string log = p.Stderr();
    if (absl::StrContains(log, key_) || absl::StrContains(p.Stdout(), key_)) {
      g_report.Violation(absl::StrCat(name_, ": the API key appears in the sidecar's output"));
    }
    if (code == 0 && !absl::StrContains(log, "sidecar_stopped")) {
      g_report.Violation(absl::StrCat(name_, ": no sidecar_stopped line after SIGTERM"));
    }
  }

  const std::string name_;
  const bool restarts_;
  const std::string sidecar_;
  const std::string dir_;
  std::string key_;
  std::string key_file_;
  std::string redis_url_;
  std::string redis_ca_file_;
  std::unique_ptr<sim::SimUpstream> sim_;
  std::unique_ptr<sim::SimUpstream> internal_;  // a service in the pod
  std::string archive_dir_;

  absl::Mutex mu_;
  absl::BitGen gen_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<Subprocess> proc_ ABSL_GUARDED_BY(mu_);
  std::shared_ptr<grpc::Channel> channel_ ABSL_GUARDED_BY(mu_);
  int metrics_port_ ABSL_GUARDED_BY(mu_) = 0;
  int generation_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Duration max_drain_ ABSL_GUARDED_BY(mu_);
  std::vector<Task> live_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> retired_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> redirected_ ABSL_GUARDED_BY(mu_);
  int next_task_ ABSL_GUARDED_BY(mu_) = 0;
};

// ---- churn ------------------------------------------------------------------------------

absl::Status FromGrpc(const grpc::Status& s) {
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
}

void Record(const std::vector<std::string>& violations) {
  for (const std::string& v : violations) g_report.Violation(v);
}

void WatchLoop(std::vector<Lane*> lanes, Canceller* canceller, uint64_t seed) {
  absl::BitGen gen(std::seed_seq{static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)});
  while (!g_stop) {
    Lane& lane = *lanes[absl::Uniform<size_t>(gen, 0, lanes.size())];
    std::shared_ptr<grpc::Channel> channel = lane.channel();
    if (channel == nullptr) {  // restarting
      absl::SleepFor(absl::Milliseconds(50));
      continue;
    }
    bool valid;
    const std::string id = lane.PickId(gen, &valid);
    auto ctx = std::make_shared<grpc::ClientContext>();
    const absl::Time now = absl::Now();
    if (absl::Bernoulli(gen, 0.6)) {
      ctx->set_deadline(absl::ToChronoTime(now + absl::Milliseconds(absl::Uniform(gen, 300, 12000))));
    }
    const absl::Time cancel_at = absl::Bernoulli(gen, 0.3)
                                     ? now + absl::Milliseconds(absl::Uniform(gen, 20, 8000))
                                     : absl::InfiniteFuture();
    // Some readers are slow (never for long enough to be cut off).
    const bool slow = absl::Bernoulli(gen, 0.1);
    const uint64_t token = canceller->Add(ctx, cancel_at);
    auto stub = v1::VideoTaskService::NewStub(channel);
    v1::WatchVideoTaskRequest req;
    req.set_id(id);
    SequenceCheck check(id, valid, lane.served());
    auto reader = stub->WatchVideoTask(ctx.get(), req);
    WatchVideoTaskResponse msg;
    absl::Time last = absl::Now();
    g_report.Count("watches opened");
    while (reader->Read(&msg)) {
      const absl::Time t = absl::Now();
      if (check.snapshotted() && !check.terminal() && t - last > kMaxSilence) {
        g_report.Violation(absl::StrCat("watch ", id, " on ", lane.name(), ": nothing for ",
                                        Secs(t - last), " s (heartbeat ", Secs(kHeartbeat), " s)"));
      }
      last = t;
      check.OnMessage(msg);
      g_report.Count(absl::StrCat("events ", WatchVideoTaskResponse::EventType_Name(msg.type())));
      if (slow) absl::SleepFor(absl::Milliseconds(absl::Uniform(gen, 0, 300)));
    }
    const grpc::Status st = reader->Finish();
    canceller->Remove(token);
    check.OnEnd(FromGrpc(st));
    g_report.Count(absl::StrCat("watch ended ", absl::StatusCodeToString(FromGrpc(st).code())));
    if (check.terminal()) g_report.Count("watches that saw their task end");
    Record(check.violations());
  }
}

void GetLoop(std::vector<Lane*> lanes, Canceller* canceller, uint64_t seed) {
  absl::BitGen gen(std::seed_seq{static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)});
  while (!g_stop) {
    Lane& lane = *lanes[absl::Uniform<size_t>(gen, 0, lanes.size())];
    std::shared_ptr<grpc::Channel> channel = lane.channel();
    if (channel == nullptr) {
      absl::SleepFor(absl::Milliseconds(50));
      continue;
    }
    bool valid;
    const std::string id = lane.PickId(gen, &valid);
    auto ctx = std::make_shared<grpc::ClientContext>();
    const absl::Time now = absl::Now();
    ctx->set_deadline(absl::ToChronoTime(now + absl::Milliseconds(absl::Uniform(gen, 50, 4000))));
    const absl::Time cancel_at = absl::Bernoulli(gen, 0.2)
                                     ? now + absl::Milliseconds(absl::Uniform(gen, 5, 1000))
                                     : absl::InfiniteFuture();
    const uint64_t token = canceller->Add(ctx, cancel_at);
    auto stub = v1::VideoTaskService::NewStub(channel);
    v1::GetVideoTaskRequest req;
    req.set_id(id);
    v1::VideoTask task;
    const absl::Status st = FromGrpc(stub->GetVideoTask(ctx.get(), req, &task));
    canceller->Remove(token);
    g_report.Count(absl::StrCat("get ", absl::StatusCodeToString(st.code())));
    Record(CheckGet(id, valid, lane.served(), st, st.ok() ? &task : nullptr));
    absl::SleepFor(absl::Milliseconds(absl::Uniform(gen, 0, 100)));
  }
}

// One random fault for `lane`; returns its name.
std::string InjectRandomFault(Lane& lane, absl::BitGen& gen) {
  using sim::FaultKind;
  sim::Fault f;
  f.count = absl::Uniform(gen, 1, 4);
  std::string name;
  struct Choice {
    int weight;
    const char* name;
  };
  static const Choice kChoices[] = {
      {14, "5xx"},          {4, "429"},           {4, "429 retry-after 1s"},
      {2, "429 retry-after 1 day"},               {1, "429 retry-after past date"},
      {1, "429 retry-after garbage"},             {6, "truncated JSON"},
      {6, "truncated body"}, {3, "html"},         {4, "huge body"},
      {4, "unknown status"}, {3, "unknown HTTP code"},
      {6, "slow"},           {3, "hang"},         {5, "reset"},
      {8, "status flap"},    {1, "terminal flap"}, {3, "404 once"},
      {1, "404 twice"},      {1, "401"},          {6, "redirect to loopback"},
  };
  static const std::vector<std::string> without = absl::GetFlag(FLAGS_without);
  auto weight = [](const Choice& c) {
    return std::find(without.begin(), without.end(), c.name) == without.end() ? c.weight : 0;
  };
  int total = 0;
  for (const Choice& c : kChoices) total += weight(c);
  if (total == 0) return "";
  int pick = absl::Uniform(gen, 0, total);
  for (const Choice& c : kChoices) {
    if (pick < weight(c)) {
      name = c.name;
      break;
    }
    pick -= weight(c);
  }
  if (name == "redirect to loopback") {  // the video host, not the upstream
    return lane.RedirectVideoToLoopback(gen) ? name : "";
  }
  if (name == "5xx") {
    f.kind = FaultKind::kServerError;
    static const int kCodes[] = {500, 502, 503, 504};
    f.http_status = kCodes[absl::Uniform(gen, 0, 4)];
  } else if (absl::StartsWith(name, "429")) {
    f.kind = FaultKind::kRateLimit;
    f.count = 1;
    if (name == "429 retry-after 1s") f.retry_after_header = "1";
    if (name == "429 retry-after 1 day") f.retry_after_header = "86400";
    if (name == "429 retry-after past date") f.retry_after_header = "Wed, 21 Oct 2015 07:28:00 GMT";
    if (name == "429 retry-after garbage") f.retry_after_header = "soon";
  } else if (name == "truncated JSON") {
    f.kind = FaultKind::kMalformedJson;
  } else if (name == "truncated body") {
    f.kind = FaultKind::kTruncated;
  } else if (name == "html") {
    f.kind = FaultKind::kHtml;
  } else if (name == "huge body") {
    f.kind = FaultKind::kOversized;
    f.count = 1;
    f.body_bytes = absl::Uniform<size_t>(gen, (3 << 20) / 2, 16 << 20);
  } else if (name == "unknown status") {
    f.kind = FaultKind::kUnknownStatus;
  } else if (name == "unknown HTTP code") {
    f.kind = FaultKind::kServerError;
    static const int kCodes[] = {207, 302, 418, 451};
    f.http_status = kCodes[absl::Uniform(gen, 0, 4)];
  } else if (name == "slow") {
    f.kind = FaultKind::kSlow;
    f.delay = absl::Milliseconds(absl::Uniform(gen, 100, 2500));  // some beyond the timeout
  } else if (name == "hang") {
    f.kind = FaultKind::kHang;
    f.count = 1;
    f.delay = absl::Milliseconds(absl::Uniform(gen, 3000, 6000));
  } else if (name == "reset") {
    f.kind = FaultKind::kReset;
  } else if (name == "status flap") {
    f.kind = FaultKind::kStatus;  // backwards, or forwards then back
    f.status = absl::Bernoulli(gen, 0.5) ? "queued" : "processing";
  } else if (name == "terminal flap") {
    f.kind = FaultKind::kStatus;
    f.count = 1;
    f.status = absl::Bernoulli(gen, 0.5) ? "completed" : "failed";
  } else if (name == "404 once") {
    f.kind = FaultKind::kNotFound;
    f.count = 1;
  } else if (name == "404 twice") {
    f.kind = FaultKind::kNotFound;
    f.count = 2;
  } else {
    f.kind = FaultKind::kUnauthorized;
    f.count = 1;
  }
  bool valid;
  std::string id = lane.PickId(gen, &valid);
  // Faults for one id mostly; some hit whichever request comes next. The
  // 404 and 401 faults always name an id (else any task could end).
  if (!valid || (absl::Bernoulli(gen, 0.3) && name.find("40") == std::string::npos)) id = "";
  lane.sim().InjectFault(id, f);
  return name;
}

// ---- checks at the end ---------------------------------------------------------------

// The most requests that arrived within any one second.
int MaxPerSecond(std::vector<absl::Time> times, absl::Time* at) {
  std::sort(times.begin(), times.end());
  // Tolerance for the two clocks involved (the sidecar's monotonic one
  // schedules, the sim stamps arrivals with the wall clock).
  const absl::Duration window = absl::Seconds(1) - absl::Milliseconds(5);
  int max = 0;
  size_t j = 0;
  for (size_t i = 0; i < times.size(); ++i) {
    while (times[i] - times[j] >= window) ++j;
    const int n = static_cast<int>(i - j + 1);
    if (n > max) {
      max = n;
      *at = times[j];
    }
  }
  return max;
}

std::string Scrape(int port) {
  if (port <= 0) return "";
  httplib::Client cli("127.0.0.1", port);
  cli.set_connection_timeout(2);
  cli.set_read_timeout(5);
  auto res = cli.Get("/metrics");
  if (!res || res->status != 200) return "";
  return res->body;
}

struct Levels {
  int64_t rss_kib = 0;
  int threads = 0;
  int fds = 0;
};

Levels MaxIn(const std::vector<ProcSample>& s, absl::Duration from, absl::Duration to) {
  Levels l;
  for (const ProcSample& p : s) {
    if (p.at < from || p.at > to) continue;
    l.rss_kib = std::max(l.rss_kib, p.rss_kib);
    l.threads = std::max(l.threads, p.threads);
    l.fds = std::max(l.fds, p.fds);
  }
  return l;
}

int Main() {
  signal(SIGPIPE, SIG_IGN);
  const absl::Duration duration = absl::GetFlag(FLAGS_duration);
  uint64_t seed = absl::GetFlag(FLAGS_seed);
  if (seed == 0) seed = absl::Uniform<uint64_t>(absl::BitGen(), 1, UINT64_MAX);
  if (duration < absl::Seconds(5) || absl::GetFlag(FLAGS_tasks) < 1 ||
      absl::GetFlag(FLAGS_watchers) < 1 || absl::GetFlag(FLAGS_getters) < 0 ||
      absl::GetFlag(FLAGS_qps) < 1 || absl::GetFlag(FLAGS_restart_every) < absl::ZeroDuration()) {
    std::cerr << "soak: --duration must be at least 5s, --tasks, --watchers and --qps at least 1\n";
    return 2;
  }
  std::string sidecar = absl::GetFlag(FLAGS_sidecar);
  if (sidecar.empty()) sidecar = testing::Runfile("server/videotask_sidecar");
  if (access(sidecar.c_str(), X_OK) != 0) {
    std::cerr << "soak: no sidecar binary at " << sidecar << " (--sidecar)\n";
    return 2;
  }
  // Child output files and key files go to a directory removed at the end.
  const char* base = std::getenv("TEST_TMPDIR");
  std::string tmpl =
      absl::StrCat(base != nullptr ? std::string(base)
                                   : std::filesystem::temp_directory_path().string(),
                   "/videotask-soak.XXXXXX");
  if (mkdtemp(tmpl.data()) == nullptr) {
    std::cerr << "soak: cannot make a temp directory\n";
    return 2;
  }
  const std::string dir = tmpl;
  setenv("TEST_TMPDIR", dir.c_str(), 1);  // where Subprocess puts child output

  std::printf("soak: %s, seed %llu, %d tasks per lane, %d watchers, %d getters, cap %d qps, "
              "restart every ~%s\n",
              absl::FormatDuration(duration).c_str(), static_cast<unsigned long long>(seed),
              absl::GetFlag(FLAGS_tasks), absl::GetFlag(FLAGS_watchers),
              absl::GetFlag(FLAGS_getters), absl::GetFlag(FLAGS_qps),
              absl::FormatDuration(absl::GetFlag(FLAGS_restart_every)).c_str());
  std::fflush(stdout);

  Lane steady("steady", false, sidecar, dir, seed + 1);
  Lane restart("restart", true, sidecar, dir, seed + 2);
  std::vector<Lane*> lanes = {&steady, &restart};
  std::unique_ptr<testing::RedisServer> redis;
  if (absl::GetFlag(FLAGS_redis)) {
    testing::RedisServer::Options ro;
    std::string ca_file;
    if (absl::GetFlag(FLAGS_redis_tls)) {
      const std::string pki_dir = absl::StrCat(dir, "/pki");
      absl::StatusOr<testing::TestPki> pki =
          mkdir(pki_dir.c_str(), 0700) == 0
              ? testing::TestPki::Create(pki_dir)
              : absl::StatusOr<testing::TestPki>(absl::InternalError("cannot make " + pki_dir));
      if (!pki.ok()) {
        std::cerr << "soak: cannot make the test CA for TLS: " << pki.status() << "\n";
        return 2;
      }
      ro.tls = testing::RedisServer::Options::Tls{pki->server_pem, pki->server_key, pki->ca_pem,
                                                  false};
      ca_file = pki->ca_pem;
    }
    auto r = testing::RedisServer::Start(ro);
    if (!r.ok()) {
      std::cerr << "soak: cannot start redis-server: " << r.status() << "\n";
      return 2;
    }
    redis = std::move(*r);
    std::printf("soak: fleet mode on %s\n", ca_file.empty() ? "Redis over TCP"
                                                             : "Redis over TLS (rediss://)");
    for (Lane* lane : lanes) lane->set_redis(redis->Url(), ca_file);
  }
  for (Lane* lane : lanes) {
    if (!lane->Init()) return 1;
  }

  // Stops everything if the soak itself hangs: kills the sidecars first.
  std::thread watchdog([&lanes, duration] {
    const absl::Time end = absl::Now() + duration + absl::Seconds(120);
    while (absl::Now() < end) absl::SleepFor(absl::Milliseconds(200));
    std::cerr << "soak: did not finish within its duration + 120 s; killing the sidecars\n";
    for (Lane* lane : lanes) {
      const pid_t pid = lane->pid();
      if (pid > 0) kill(pid, SIGKILL);
    }
    _exit(3);
  });
  watchdog.detach();

  const absl::Time start = absl::Now();
  const absl::Time end = start + duration;
  auto canceller = std::make_unique<Canceller>();
  std::vector<std::thread> threads;
  for (int i = 0; i < absl::GetFlag(FLAGS_watchers); ++i) {
    threads.emplace_back(WatchLoop, lanes, canceller.get(), seed * 7919 + 100 + i);
  }
  for (int i = 0; i < absl::GetFlag(FLAGS_getters); ++i) {
    threads.emplace_back(GetLoop, lanes, canceller.get(), seed * 7919 + 200 + i);
  }
  // Faults and task turnover.
  threads.emplace_back([&lanes, seed] {
    absl::BitGen gen(std::seed_seq{static_cast<uint32_t>(seed), 3u});
    absl::Time clear_at = absl::Now() + absl::Seconds(30);
    while (!g_stop) {
      absl::SleepFor(absl::Milliseconds(absl::Uniform(gen, 100, 700)));
      Lane& lane = *lanes[absl::Uniform<size_t>(gen, 0, lanes.size())];
      const std::string fault = InjectRandomFault(lane, gen);
      if (!fault.empty()) {
        g_report.Count(absl::StrCat("fault ", fault));
        g_report.Count("faults injected");
      }
      for (Lane* l : lanes) l->ManageTasks();
      if (absl::Now() > clear_at) {  // faults for ids nobody asks about any more
        for (Lane* l : lanes) l->sim().ClearFaults();
        clear_at = absl::Now() + absl::Seconds(30);
      }
    }
  });
  // Redis faults (fleet mode): read-only or stalled for a while, one at a
  // time; their windows (plus a second) are checked on their own below.
  absl::Mutex redis_mu;
  std::vector<std::pair<absl::Time, absl::Time>> redis_windows;  // guarded by redis_mu
  if (redis != nullptr) {
    threads.emplace_back([&redis, &redis_mu, &redis_windows, end, seed] {
      absl::BitGen gen(std::seed_seq{static_cast<uint32_t>(seed), 5u});
      static const std::vector<std::string> without = absl::GetFlag(FLAGS_without);
      std::vector<std::string> kinds;
      for (const char* k : {"redis read-only", "redis stall"}) {
        if (std::find(without.begin(), without.end(), k) == without.end()) kinds.push_back(k);
      }
      auto sleep = [](absl::Duration d) {
        const absl::Time until = absl::Now() + d;
        while (!g_stop && absl::Now() < until) absl::SleepFor(absl::Milliseconds(20));
      };
      while (!g_stop && !kinds.empty()) {
        sleep(absl::Milliseconds(absl::Uniform(gen, 2000, 6000)));
        // None in the last seconds: the end checks want a settled fleet.
        if (g_stop || absl::Now() + absl::Seconds(8) > end) break;
        const std::string kind = kinds[absl::Uniform<size_t>(gen, 0, kinds.size())];
        const absl::Duration hold = absl::Milliseconds(absl::Uniform(gen, 300, 3000));
        const absl::Time from = absl::Now();
        absl::Status st;
        if (kind == "redis read-only") {
          st = redis->Command({"REPLICAOF", "127.0.0.1", "1"}).status();
          sleep(hold);
          absl::Status back = redis->Command({"REPLICAOF", "NO", "ONE"}).status();
          if (st.ok()) st = back;
        } else {
          const bool all = absl::Bernoulli(gen, 0.5);  // else writes (every script) only
          st = redis->Command({"CLIENT", "PAUSE", absl::StrCat(absl::ToInt64Milliseconds(hold)),
                               all ? "ALL" : "WRITE"})
                   .status();
          sleep(hold);
        }
        if (!st.ok()) {
          g_report.Violation(absl::StrCat("soak: injecting ", kind, " failed: ", st.message()));
          break;
        }
        {
          absl::MutexLock lock(&redis_mu);
          redis_windows.emplace_back(from, absl::Now() + absl::Seconds(1));
        }
        g_report.Count(absl::StrCat("fault ", kind));
        g_report.Count("faults injected");
        g_report.Count("redis faults");
      }
    });
  }
  // Restarts.
  const absl::Duration restart_every = absl::GetFlag(FLAGS_restart_every);
  if (restart_every > absl::ZeroDuration()) {
    threads.emplace_back([&restart, restart_every, end, seed] {
      absl::BitGen gen(std::seed_seq{static_cast<uint32_t>(seed), 4u});
      while (!g_stop) {
        const absl::Time next = absl::Now() + restart_every * absl::Uniform(gen, 0.5, 1.5);
        while (!g_stop && absl::Now() < next) absl::SleepFor(absl::Milliseconds(50));
        // No restart in the last seconds: the end checks want a settled sidecar.
        if (g_stop || absl::Now() + absl::Seconds(5) > end) break;
        if (absl::GetFlag(FLAGS_verbose)) std::cerr << "soak: restarting the restart lane\n";
        restart.Restart();
      }
    });
  }

  // Samples the steady sidecar every second; scrapes /metrics every 5 s.
  std::vector<ProcSample> samples;
  absl::Time next_scrape = start + absl::Seconds(5);
  int64_t last_report = 0;
  while (absl::Now() < end) {
    absl::SleepFor(std::min(absl::Seconds(1), end - absl::Now()));
    if (std::optional<ProcSample> s = ReadProc(steady.pid()); s.has_value()) {
      s->at = absl::Now() - start;
      samples.push_back(*s);
    } else {
      g_report.Violation("the steady sidecar is gone");
      break;
    }
    if (absl::Now() >= next_scrape) {
      next_scrape += absl::Seconds(5);
      for (Lane* lane : lanes) {
        const int gen_before = lane->generation();
        const std::string page = Scrape(lane->metrics_port());
        if (MetricValue(page, "videotask_active_watches") < 0 && lane->generation() == gen_before &&
            lane->channel() != nullptr) {
          g_report.Violation(absl::StrCat(lane->name(), ": GET /metrics failed"));
        }
      }
      g_report.Count("metrics scrapes");
    }
    const int64_t elapsed = absl::ToInt64Seconds(absl::Now() - start);
    if (elapsed - last_report >= 60) {
      last_report = elapsed;
      const ProcSample& s = samples.back();
      std::printf("soak: %llds: %lld requests, %lld faults, %lld violations; steady sidecar "
                  "RSS %.1f MiB, %d fds, %d threads\n",
                  static_cast<long long>(elapsed),
                  static_cast<long long>(steady.sim().TotalRequests() +
                                         restart.sim().TotalRequests()),
                  static_cast<long long>(g_report.counts()["faults injected"]),
                  static_cast<long long>(g_report.violations()), s.rss_kib / 1024.0, s.fds,
                  s.threads);
      std::fflush(stdout);
    }
  }

  // Every caller leaves; then the sidecars must hold nothing.
  g_stop = true;
  canceller->CancelAll();
  for (std::thread& t : threads) t.join();
  canceller.reset();
  for (Lane* lane : lanes) lane->sim().ClearFaults();
  for (Lane* lane : lanes) {
    double watches = -1, streams = -1;
    const absl::Time deadline = absl::Now() + absl::Seconds(10);
    while (absl::Now() < deadline) {
      const std::string page = Scrape(lane->metrics_port());
      watches = MetricValue(page, "videotask_active_watches");
      streams = MetricValue(page, "videotask_open_streams");
      if (watches == 0 && streams == 0) break;
      absl::SleepFor(absl::Milliseconds(100));
    }
    if (watches != 0 || streams != 0) {
      g_report.Violation(absl::StrCat(lane->name(), ": ", watches, " watches and ", streams,
                                      " streams left after every caller went"));
    }
  }
  const std::optional<ProcSample> after = ReadProc(steady.pid());

  // The rate cap, per sidecar (each is its own client of its own sim).
  std::map<std::string, std::pair<int, int64_t>> rates;
  for (Lane* lane : lanes) {
    absl::Time at;
    const int max = MaxPerSecond(lane->sim().RequestTimes(), &at);
    rates[lane->name()] = {max, lane->sim().TotalRequests()};
    if (max > absl::GetFlag(FLAGS_qps)) {
      g_report.Violation(absl::StrCat(lane->name(), ": ", max, " upstream requests within one "
                                      "second from ", absl::FormatTime(at), " (cap ",
                                      absl::GetFlag(FLAGS_qps), ")"));
    }
  }

  // Redis faults: the rate within their windows alone (already inside the
  // check above; reported so a run shows the budget held through them), and
  // the steady sidecar saw them as fleet faults.
  if (redis != nullptr) {
    absl::MutexLock lock(&redis_mu);
    for (Lane* lane : lanes) {
      std::vector<absl::Time> in;
      for (absl::Time t : lane->sim().RequestTimes()) {
        for (const auto& [from, to] : redis_windows) {
          if (t >= from && t <= to) {
            in.push_back(t);
            break;
          }
        }
      }
      absl::Time at;
      const int max = in.empty() ? 0 : MaxPerSecond(in, &at);
      g_report.Count(absl::StrCat("requests during redis faults, ", lane->name()),
                     static_cast<int64_t>(in.size()));
      g_report.Count(absl::StrCat("busiest second during redis faults, ", lane->name()), max);
      if (max > absl::GetFlag(FLAGS_qps)) {
        g_report.Violation(absl::StrCat(lane->name(), ": ", max,
                                        " upstream requests within one second during a Redis "
                                        "fault (cap ", absl::GetFlag(FLAGS_qps), ")"));
      }
    }
    const std::string page = Scrape(steady.metrics_port());
    const double seen =
        std::max(0.0, MetricValue(page, "videotask_fleet_faults_total{kind=\"error_reply\"}")) +
        std::max(0.0, MetricValue(page, "videotask_fleet_faults_total{kind=\"timeout\"}"));
    g_report.Count("redis faults seen by the steady sidecar", static_cast<int64_t>(seen));
    if (redis_windows.size() >= 2 && seen == 0) {
      g_report.Violation(absl::StrCat(redis_windows.size(), " Redis faults injected, none seen "
                                      "by the steady sidecar (videotask_fleet_faults_total)"));
    }
    // Back in fleet mode by itself: at once, or after the reconnect backoff
    // that recurring faults grow to (at most 30 s, docs/fleet.md).
    const absl::Time back_by = absl::Now() + absl::Seconds(35);
    double mode = MetricValue(page, "videotask_fleet_mode");
    const absl::Time waited_from = absl::Now();
    while (mode != 1 && absl::Now() < back_by) {
      absl::SleepFor(absl::Milliseconds(200));
      mode = MetricValue(Scrape(steady.metrics_port()), "videotask_fleet_mode");
    }
    g_report.Count("ms waited for the steady sidecar's fleet mode at the end",
                   absl::ToInt64Milliseconds(absl::Now() - waited_from));
    if (mode != 1) {
      g_report.Violation("the steady sidecar is not back in fleet mode 35 s after the end");
    }
  }

  // Levelling off: the last quarter against the second one.
  const Levels mid = MaxIn(samples, duration * 0.2, duration * 0.5);
  const Levels last = MaxIn(samples, duration * 0.75, duration);
  const int64_t rss_allowed = mid.rss_kib + mid.rss_kib / 10 + 8 * 1024;
  if (last.rss_kib > rss_allowed) {
    g_report.Violation(absl::StrFormat("steady RSS grows: %.1f MiB in the last quarter, %.1f MiB "
                                       "in the second (allowed %.1f)",
                                       last.rss_kib / 1024.0, mid.rss_kib / 1024.0,
                                       rss_allowed / 1024.0));
  }
  if (last.fds > mid.fds + 8) {
    g_report.Violation(absl::StrCat("steady fds grow: ", last.fds, " in the last quarter, ",
                                    mid.fds, " in the second"));
  }
  if (last.threads > mid.threads + 4) {
    g_report.Violation(absl::StrCat("steady threads grow: ", last.threads,
                                    " in the last quarter, ", mid.threads, " in the second"));
  }

  for (Lane* lane : lanes) lane->Shutdown();
  for (Lane* lane : lanes) lane->CheckNoLoopbackArchive();

  // ---- summary ----
  std::map<std::string, int64_t> c = g_report.counts();
  auto count = [&c](const std::string& k) { return static_cast<long long>(c[k]); };
  std::printf("\n==== soak summary ====\n");
  std::printf("duration            %s (seed %llu)\n", absl::FormatDuration(duration).c_str(),
              static_cast<unsigned long long>(seed));
  long long requests = 0;
  for (const auto& [name, r] : rates) {
    std::printf("upstream requests   %s: %lld, max %d in any 1 s (cap %d)\n", name.c_str(),
                static_cast<long long>(r.second), r.first, absl::GetFlag(FLAGS_qps));
    requests += r.second;
  }
  std::printf("faults injected     %lld:", count("faults injected"));
  for (const auto& [k, v] : c) {
    if (absl::StartsWith(k, "fault ")) std::printf(" %s %lld;", k.substr(6).c_str(), static_cast<long long>(v));
  }
  std::printf("\nsidecar restarts    %lld (SIGTERM; longest drain %.2f s, grace %.0f s)\n",
              count("sidecar restarts"), Secs(restart.max_drain()), Secs(kGrace));
  std::printf("watches             %lld opened, %lld saw their task end; ended:",
              count("watches opened"), count("watches that saw their task end"));
  for (const auto& [k, v] : c) {
    if (absl::StartsWith(k, "watch ended ")) std::printf(" %s %lld;", k.substr(12).c_str(), static_cast<long long>(v));
  }
  const long long events = count("events EVENT_TYPE_SNAPSHOT") + count("events EVENT_TYPE_TRANSITION") +
                           count("events EVENT_TYPE_HEARTBEAT");
  std::printf("\nevents checked      %lld (SNAPSHOT %lld, TRANSITION %lld, HEARTBEAT %lld)\n",
              events, count("events EVENT_TYPE_SNAPSHOT"), count("events EVENT_TYPE_TRANSITION"),
              count("events EVENT_TYPE_HEARTBEAT"));
  std::printf("gets                ");
  for (const auto& [k, v] : c) {
    if (absl::StartsWith(k, "get ")) std::printf(" %s %lld;", k.substr(4).c_str(), static_cast<long long>(v));
  }
  std::printf("\n");
  if (!samples.empty()) {
    const ProcSample& first = samples.front();
    const ProcSample& final = samples.back();
    std::printf("steady sidecar      RSS %.1f -> %.1f MiB (2nd-quarter max %.1f, last-quarter max "
                "%.1f); fds %d -> %d (%d, %d); threads %d -> %d (%d, %d)\n",
                first.rss_kib / 1024.0, final.rss_kib / 1024.0, mid.rss_kib / 1024.0,
                last.rss_kib / 1024.0, first.fds, final.fds, mid.fds, last.fds, first.threads,
                final.threads, mid.threads, last.threads);
    if (after.has_value()) {
      std::printf("                    idle after the callers left: RSS %.1f MiB, %d fds, %d "
                  "threads\n",
                  after->rss_kib / 1024.0, after->fds, after->threads);
    }
  }
  std::printf("archive             %lld copies; %lld videos redirected to loopback\n",
              count("videos archived"), count("videos redirected to loopback"));
  if (redis != nullptr) {
    std::printf("redis faults        %lld injected, %lld seen by the steady sidecar; requests during "
                "them: steady %lld (max %lld in 1 s), restart %lld (max %lld in 1 s)\n",
                count("redis faults"), count("redis faults seen by the steady sidecar"),
                count("requests during redis faults, steady"),
                count("busiest second during redis faults, steady"),
                count("requests during redis faults, restart"),
                count("busiest second during redis faults, restart"));
    std::printf("                    over %s; the steady sidecar back in fleet mode %.1f s "
                "after the end\n",
                absl::GetFlag(FLAGS_redis_tls) ? "TLS" : "TCP",
                count("ms waited for the steady sidecar's fleet mode at the end") / 1000.0);
  }
  std::printf("metrics scrapes     %lld\n", count("metrics scrapes"));
  const int64_t violations = g_report.violations();
  std::printf("violations          %lld\n", static_cast<long long>(violations));
  std::printf("soak: %s\n", violations == 0 ? "PASS" : "FAIL");
  std::fflush(stdout);
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
  return violations == 0 ? 0 : 1;
}

}  // namespace
}  // namespace videotask::soak

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return videotask::soak::Main();
}
