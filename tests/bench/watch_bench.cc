// watch_bench: what a watcher costs the sidecar, and what the sidecar saves
// the vendor, measured on this machine.
//
// Starts the simulated upstream (in this process) and the real sidecar (a
// child process, so its RSS, threads and CPU are its own), opens --streams
// WatchVideoTask streams over --tasks task ids with gRPC's callback client
// API (no thread per stream), holds them idle, then flips every task to
// completed upstream and times the fan-out. Then runs the naive baseline:
// every watcher polling the upstream itself at the same interval. Finally
// measures the upstream client's raw throughput (libcurl multi, one I/O
// thread). Prints one table, plus `key=value` lines for scripts; exits
// non-zero when a count is wrong (a watcher missed COMPLETED, or the sidecar
// polled more than once per task per interval).
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <fstream>
#include <functional>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "proto/videotask/v1/video_task.grpc.pb.h"
#include "server/upstream/api_key.h"
#include "server/base/clock.h"
#include "server/upstream/curl_upstream_client.h"
#include "tests/sim/sim_upstream.h"
#include "tests/testing/subprocess.h"

ABSL_FLAG(int, streams, 2000, "Concurrent WatchVideoTask streams.");
ABSL_FLAG(int, tasks, 100, "Distinct task ids the streams are spread over.");
ABSL_FLAG(absl::Duration, interval, absl::Seconds(5), "The sidecar's --poll_interval.");
ABSL_FLAG(absl::Duration, heartbeat, absl::Seconds(15), "The sidecar's --heartbeat_interval.");
ABSL_FLAG(absl::Duration, idle_window, absl::Seconds(30),
          "How long the open streams are held idle while CPU and upstream requests are counted.");
ABSL_FLAG(int, channels, 8, "gRPC channels (connections) the streams share.");
ABSL_FLAG(bool, baseline, true, "Also run the naive baseline (every watcher polls itself).");
ABSL_FLAG(int, throughput_requests, 20000,
          "Requests for the upstream-client throughput run (0 skips it).");
ABSL_FLAG(std::string, sidecar, "",
          "Path of videotask_sidecar (default: the one in this binary's runfiles).");

namespace videotask {
namespace {

using v1::WatchVideoTaskResponse;

constexpr char kKey[] = "bench-key";

struct ProcStats {
  int64_t rss_kib = 0;
  int threads = 0;
  double cpu_seconds = 0;
};

ProcStats ReadProc(pid_t pid) {
  ProcStats s;
  std::ifstream status(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmRSS:", 0) == 0) s.rss_kib = std::stoll(line.substr(6));
    if (line.rfind("Threads:", 0) == 0) s.threads = std::stoi(line.substr(8));
  }
  std::ifstream stat(absl::StrCat("/proc/", pid, "/stat"));
  std::string all((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
  // Fields after the command name (which may contain spaces) start at ')'.
  std::istringstream rest(all.substr(all.rfind(')') + 2));
  std::vector<std::string> f;
  std::string tok;
  while (rest >> tok) f.push_back(tok);
  if (f.size() > 13) {
    const double ticks = static_cast<double>(sysconf(_SC_CLK_TCK));
    s.cpu_seconds = (std::stod(f[11]) + std::stod(f[12])) / ticks;  // utime, stime
  }
  return s;
}

// One stream, on the callback API: no thread of its own.
class Watcher : public grpc::ClientReadReactor<WatchVideoTaskResponse> {
 public:
  struct Shared {
    std::atomic<int> snapshots{0};
    std::atomic<int> completed{0};
    std::atomic<int> done{0};
    std::atomic<int> errors{0};
    absl::Notification all_done;
    int total = 0;
  };

  Watcher(v1::VideoTaskService::Stub* stub, std::string id, Shared* shared)
      : id_(std::move(id)), shared_(shared) {
    req_.set_id(id_);
    stub->async()->WatchVideoTask(&ctx_, &req_, this);
    StartRead(&msg_);
    StartCall();
  }
  void OnReadDone(bool ok) override {
    if (!ok) return;  // OnDone follows
    if (msg_.type() == WatchVideoTaskResponse::EVENT_TYPE_SNAPSHOT) ++shared_->snapshots;
    if (msg_.task().status() == v1::VIDEO_TASK_STATUS_COMPLETED) {
      completed_at_ = absl::Now();
      ++shared_->completed;
    }
    StartRead(&msg_);
  }
  void OnDone(const grpc::Status& s) override {
    if (!s.ok()) ++shared_->errors;
    if (++shared_->done == shared_->total) shared_->all_done.Notify();
  }
  void Cancel() { ctx_.TryCancel(); }
  const std::string& id() const { return id_; }
  absl::Time completed_at() const { return completed_at_; }

 private:
  std::string id_;
  Shared* shared_;
  grpc::ClientContext ctx_;
  v1::WatchVideoTaskRequest req_;
  WatchVideoTaskResponse msg_;
  absl::Time completed_at_ = absl::InfiniteFuture();
};

std::string TaskId(int i) { return absl::StrCat("bench-", i); }

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t i = std::min(v.size() - 1, static_cast<size_t>(p * (v.size() - 1) + 0.5));
  return v[i];
}

struct Row {
  std::string name, sidecar, baseline;
};

int Run() {
  const int n = absl::GetFlag(FLAGS_streams);
  const int m = std::max(1, std::min(absl::GetFlag(FLAGS_tasks), n));
  const absl::Duration interval = absl::GetFlag(FLAGS_interval);
  const absl::Duration idle = absl::GetFlag(FLAGS_idle_window);
  std::vector<std::string> kv;  // key=value lines
  auto Record = [&kv](const std::string& k, const std::string& v) { kv.push_back(k + "=" + v); };
  int failures = 0;
  const absl::Time bench_start = absl::Now();
  auto Phase = [&bench_start](const char* name) {
    std::cerr << absl::StrFormat("bench: +%.1fs %s\n",
                                 absl::ToDoubleSeconds(absl::Now() - bench_start), name);
  };

  sim::SimUpstream::Options so;
  so.api_key = kKey;
  // httplib holds a thread per open keep-alive connection: more threads than
  // connections the sidecar and the baseline open.
  so.threads = 64;
  auto sim = sim::SimUpstream::Start(so);
  if (!sim.ok()) {
    std::cerr << "bench: " << sim.status() << "\n";
    return 1;
  }
  sim::TaskScript hold;
  hold.advances = false;
  for (int i = 0; i < m; ++i) (*sim)->SetTask(TaskId(i), hold);

  // The sidecar, as a separate process. Enough rate budget for one poll of
  // every task per interval, with room for jitter.
  const int qps = std::max<int>(5, static_cast<int>(2.0 * m / absl::ToDoubleSeconds(interval)) + 5);
  std::string path = absl::GetFlag(FLAGS_sidecar);
  if (path.empty()) path = testing::Runfile("server/videotask_sidecar");
  auto proc = testing::Subprocess::Start(
      {path, "--listen=127.0.0.1:0", "--metrics_listen=",
       absl::StrCat("--upstream_url=", (*sim)->base_url()),
       absl::StrCat("--poll_interval=", absl::FormatDuration(interval)),
       absl::StrCat("--heartbeat_interval=", absl::FormatDuration(absl::GetFlag(FLAGS_heartbeat))),
       absl::StrCat("--max_upstream_qps=", qps), "--max_inflight=16",
       absl::StrCat("--max_watches=", std::max(100000, n + 1))},
      {{"VIDEOTASK_API_KEY", kKey}});
  if (!proc.ok() || !proc->WaitForStderr("sidecar_started", absl::Seconds(20))) {
    std::cerr << "bench: the sidecar did not start\n" << (proc.ok() ? proc->Stderr() : "");
    return 1;
  }
  const std::string log = proc->Stderr();
  const size_t at = log.find("grpc_target=") + sizeof("grpc_target=") - 1;
  const std::string target = log.substr(at, log.find(' ', at) - at);
  const pid_t pid = proc->pid();

  std::vector<std::unique_ptr<v1::VideoTaskService::Stub>> stubs;
  for (int c = 0; c < absl::GetFlag(FLAGS_channels); ++c) {
    grpc::ChannelArguments args;
    args.SetInt("videotask.bench.channel", c);  // distinct args: a connection each
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    stubs.push_back(v1::VideoTaskService::NewStub(
        grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args)));
  }
  // Warm up: one finished watch so code paths and pools are in the baseline.
  {
    sim::TaskScript done_at_once;  // completed on its first poll
    done_at_once.queued_polls = 0;
    done_at_once.processing_polls = 0;
    (*sim)->SetTask("bench-warmup", done_at_once);
    grpc::ClientContext ctx;
    v1::WatchVideoTaskRequest req;
    req.set_id("bench-warmup");
    auto reader = stubs[0]->WatchVideoTask(&ctx, req);
    WatchVideoTaskResponse msg;
    while (reader->Read(&msg)) {
    }
    reader->Finish();
  }
  absl::SleepFor(absl::Milliseconds(500));
  const ProcStats before = ReadProc(pid);
  Phase("sidecar up; opening streams");

  Watcher::Shared shared;
  shared.total = n;
  std::vector<std::unique_ptr<Watcher>> watchers;
  watchers.reserve(n);
  const absl::Time open_start = absl::Now();
  for (int i = 0; i < n; ++i) {
    watchers.push_back(
        std::make_unique<Watcher>(stubs[i % stubs.size()].get(), TaskId(i % m), &shared));
  }
  const absl::Time open_deadline = absl::Now() + absl::Seconds(120) + interval;
  while (shared.snapshots.load() < n && absl::Now() < open_deadline) {
    absl::SleepFor(absl::Milliseconds(50));
  }
  const absl::Duration open_time = absl::Now() - open_start;
  if (shared.snapshots.load() < n) {
    std::cerr << "bench: only " << shared.snapshots.load() << " of " << n << " streams opened\n";
    ++failures;
  }
  absl::SleepFor(absl::Seconds(1));
  const ProcStats after_open = ReadProc(pid);

  Phase("streams open; idle window");
  // Idle: CPU and upstream requests while the streams are held.
  (*sim)->ResetCounts();
  const ProcStats idle_start = ReadProc(pid);
  absl::SleepFor(idle);
  const ProcStats idle_end = ReadProc(pid);
  const int idle_requests = (*sim)->TotalRequests();
  const double intervals = absl::ToDoubleSeconds(idle) / absl::ToDoubleSeconds(interval);
  const double per_task_interval = idle_requests / static_cast<double>(m) / intervals;
  const double idle_cpu = idle_end.cpu_seconds - idle_start.cpu_seconds;

  Phase("completing every task");
  // Flip every task to completed and time the fan-out.
  for (int i = 0; i < m; ++i) (*sim)->Complete(TaskId(i));
  shared.all_done.WaitForNotificationWithTimeout(interval * 2 + absl::Seconds(60));
  std::vector<double> latency_ms;
  for (const auto& w : watchers) {
    const absl::Time served = (*sim)->TerminalServedAt(w->id());
    if (w->completed_at() != absl::InfiniteFuture() && served != absl::InfiniteFuture()) {
      latency_ms.push_back(absl::ToDoubleMilliseconds(w->completed_at() - served));
    }
  }
  if (shared.completed.load() != n) {
    std::cerr << "bench: " << shared.completed.load() << " of " << n << " watchers saw COMPLETED\n";
    ++failures;
  }
  if (per_task_interval > 1.25) {
    std::cerr << "bench: the sidecar polled " << per_task_interval
              << " times per task per interval (expected 1)\n";
    ++failures;
  }
  for (auto& w : watchers) w->Cancel();
  shared.all_done.WaitForNotificationWithTimeout(absl::Seconds(30));
  watchers.clear();
  proc->Signal(SIGTERM);
  proc->Wait(absl::Seconds(15));

  Phase("baseline");
  // Baseline: each watcher polls the upstream itself every interval.
  double base_per_task_interval = 0, base_cpu = 0;
  int base_threads = 0;
  if (absl::GetFlag(FLAGS_baseline)) {
    (*sim)->ResetCounts();
    auto key = ApiKeySource::FromValue(kKey);
    CurlUpstreamClient::Options co;
    co.base_url = (*sim)->base_url();
    co.max_host_connections = 16;
    auto client = CurlUpstreamClient::Create(co, std::move(*key), RealClock::Get());
    rusage ru0{};
    getrusage(RUSAGE_SELF, &ru0);
    const absl::Time start = absl::Now();
    // Each naive watcher polls at its own phase within the interval.
    std::atomic<int> outstanding{0}, base_failed{0};
    int64_t k = 0;
    while (absl::Now() - start < idle) {
      const absl::Duration t = absl::Now() - start;
      const int64_t due = static_cast<int64_t>(n * absl::FDivDuration(t, interval));
      for (; k < due; ++k) {
        ++outstanding;
        (*client)->Fetch(TaskId(static_cast<int>(k % n) % m),
                         [&outstanding, &base_failed](UpstreamResult r) {
                           if (r.outcome != UpstreamOutcome::kOk) ++base_failed;
                           --outstanding;
                         });
      }
      absl::SleepFor(absl::Milliseconds(5));
    }
    while (outstanding.load() > 0) absl::SleepFor(absl::Milliseconds(5));
    base_threads = ReadProc(getpid()).threads;
    rusage ru1{};
    getrusage(RUSAGE_SELF, &ru1);
    auto secs = [](const timeval& tv) { return tv.tv_sec + tv.tv_usec / 1e6; };
    base_cpu = secs(ru1.ru_utime) + secs(ru1.ru_stime) - secs(ru0.ru_utime) - secs(ru0.ru_stime);
    base_per_task_interval = (*sim)->TotalRequests() / static_cast<double>(m) / intervals;
    if (base_failed.load() > 0) {
      std::cerr << "bench: baseline: " << base_failed.load() << " requests failed\n";
      ++failures;
    }
  }

  Phase("upstream client throughput");
  // Raw upstream-client throughput: libcurl multi on one I/O thread.
  double rps = 0;
  const int tn = absl::GetFlag(FLAGS_throughput_requests);
  if (tn > 0) {
    sim::TaskScript s;
    (*sim)->SetTask("bench-throughput", s);
    auto key = ApiKeySource::FromValue(kKey);
    CurlUpstreamClient::Options co;
    co.base_url = (*sim)->base_url();
    co.max_host_connections = 16;
    auto client = CurlUpstreamClient::Create(co, std::move(*key), RealClock::Get());
    // Keep a fixed number in flight: each answer starts the next request.
    constexpr int kWindow = 64;
    std::atomic<int> started{0}, finished{0}, ok{0};
    absl::Notification all;
    UpstreamClient* c = client->get();
    std::function<void()> next = [&, c, tn] {
      if (started.fetch_add(1) >= tn) return;
      c->Fetch("bench-throughput", [&, tn](UpstreamResult r) {
        if (r.outcome == UpstreamOutcome::kOk) ++ok;
        // Start the next request before the last answer wakes the waiter,
        // which destroys `next` when it leaves this scope.
        next();
        if (++finished == tn) all.Notify();
      });
    };
    const absl::Time t0 = absl::Now();
    for (int i = 0; i < kWindow; ++i) next();
    all.WaitForNotificationWithTimeout(absl::Seconds(120));
    rps = tn / absl::ToDoubleSeconds(absl::Now() - t0);
    if (ok.load() != tn) {
      std::cerr << "bench: throughput run: " << tn - ok.load() << " requests failed\n";
      ++failures;
    }
  }

  const double kib_per_stream = (after_open.rss_kib - before.rss_kib) / static_cast<double>(n);
  const double idle_core_pct = 100.0 * idle_cpu / absl::ToDoubleSeconds(idle);
  std::vector<Row> rows = {
      {"streams / tasks", absl::StrCat(n, " / ", m), absl::StrCat(n, " / ", m)},
      {"time to open all streams", absl::StrFormat("%.1f s", absl::ToDoubleSeconds(open_time)), ""},
      {"sidecar RSS before -> after opening", absl::StrFormat("%d -> %d KiB", before.rss_kib, after_open.rss_kib), ""},
      {"sidecar RSS per stream", absl::StrFormat("%.2f KiB", kib_per_stream), ""},
      {"sidecar threads before / after", absl::StrCat(before.threads, " / ", after_open.threads),
       absl::StrCat(base_threads, " (client process)")},
      {absl::StrFormat("CPU while idle (%s window)", absl::FormatDuration(idle)),
       absl::StrFormat("%.2f s = %.2f%% of a core", idle_cpu, idle_core_pct),
       absl::StrFormat("%.2f s = %.2f%% of a core (client)", base_cpu,
                       100.0 * base_cpu / absl::ToDoubleSeconds(idle))},
      {"upstream requests per task per interval", absl::StrFormat("%.2f", per_task_interval),
       absl::StrFormat("%.2f", base_per_task_interval)},
      {"poll -> last watcher COMPLETED p50 / p99 / max",
       absl::StrFormat("%.1f / %.1f / %.1f ms", Percentile(latency_ms, 0.5),
                       Percentile(latency_ms, 0.99), Percentile(latency_ms, 1.0)),
       ""},
      {"upstream client throughput (libcurl multi, 1 I/O thread)", absl::StrFormat("%.0f req/s", rps), ""},
  };
  std::cout << "\n| measure | sidecar | naive baseline |\n|---|---|---|\n";
  for (const Row& r : rows) std::cout << "| " << r.name << " | " << r.sidecar << " | " << r.baseline << " |\n";
  Record("streams", absl::StrCat(n));
  Record("tasks", absl::StrCat(m));
  Record("streams_opened", absl::StrCat(shared.snapshots.load()));
  Record("completed_watchers", absl::StrCat(shared.completed.load()));
  Record("watch_errors", absl::StrCat(shared.errors.load()));
  Record("kib_per_stream", absl::StrFormat("%.2f", kib_per_stream));
  Record("threads_before", absl::StrCat(before.threads));
  Record("threads_after", absl::StrCat(after_open.threads));
  Record("idle_core_percent", absl::StrFormat("%.3f", idle_core_pct));
  Record("upstream_per_task_per_interval", absl::StrFormat("%.3f", per_task_interval));
  Record("baseline_per_task_interval", absl::StrFormat("%.3f", base_per_task_interval));
  Record("latency_p50_ms", absl::StrFormat("%.2f", Percentile(latency_ms, 0.5)));
  Record("latency_p99_ms", absl::StrFormat("%.2f", Percentile(latency_ms, 0.99)));
  Record("latency_max_ms", absl::StrFormat("%.2f", Percentile(latency_ms, 1.0)));
  Record("client_requests_per_second", absl::StrFormat("%.0f", rps));
  Record("failures", absl::StrCat(failures));
  std::cout << "\n";
  for (const std::string& line : kv) std::cout << line << "\n";
  return failures == 0 ? 0 : 1;
}

}  // namespace
}  // namespace videotask

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return videotask::Run();
}
