// Fleet benchmark: N sidecar processes sharing one Redis (fleet mode) or
// not (independent), W watchers over T held tasks spread across them, for a
// measured window. Prints upstream requests per task per poll interval, the
// busiest one-second window at the upstream, and the Redis commands per
// second (all, those run inside scripts too), the requests the sidecars
// send (EVALSHA, MGET, PTTL, SCRIPT LOAD) and Redis CPU (percent of one
// core) the fleet costs.
//
//   bazel run -c opt //tests/bench:fleet_bench -- --sidecars=3
//       --watchers=5000 --tasks=500 --interval=2s --window=20s
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "tests/sim/sim_upstream.h"
#include "tests/testing/redis_server.h"
#include "tests/testing/sidecar_fleet.h"
#include "tests/testing/test_pki.h"
#include "tests/testing/subprocess.h"

ABSL_FLAG(int, sidecars, 3, "sidecar processes");
ABSL_FLAG(int, watchers, 5000, "watch streams per sidecar");
ABSL_FLAG(int, tasks, 500, "distinct tasks, each watched through every sidecar");
ABSL_FLAG(absl::Duration, interval, absl::Seconds(2), "--poll_interval of the sidecars");
ABSL_FLAG(absl::Duration, window, absl::Seconds(20), "measured time");
ABSL_FLAG(double, fleet_qps, 0, "--fleet_max_upstream_qps (0: off)");
ABSL_FLAG(std::string, modes, "fleet,independent",
          "which runs, comma-separated: fleet, fleet_tls (rediss:// to a TLS-only Redis), "
          "independent");

namespace videotask {
namespace {

using testing::BusiestSecond;
using testing::RedisServer;
using testing::SidecarProcess;
using testing::StreamWatcher;

constexpr char kKey[] = "sk-bench-fleet-3c0d";

// A number field of INFO `section` (-1 when absent).
double RedisInfo(const RedisServer& redis, const std::string& section, absl::string_view field) {
  auto info = redis.Command({"INFO", section});
  if (!info.ok()) return -1;
  for (absl::string_view line : absl::StrSplit(*info, '\n')) {
    if (absl::ConsumePrefix(&line, field) && absl::ConsumePrefix(&line, ":")) {
      double v = 0;
      if (absl::SimpleAtod(absl::StripAsciiWhitespace(line), &v)) return v;
    }
  }
  return -1;
}

double RedisCommands(const RedisServer& redis) {
  return RedisInfo(redis, "stats", "total_commands_processed");
}

// Commands the sidecars send themselves (their client uses only these at
// the top level; GET, SET, PEXPIRE, PUBLISH... run inside its scripts and
// count in total_commands_processed too).
double RedisRequests(const RedisServer& redis) {
  auto stats = redis.Command({"INFO", "commandstats"});
  if (!stats.ok()) return -1;
  double total = 0;
  for (absl::string_view line : absl::StrSplit(*stats, '\n')) {
    for (absl::string_view cmd : {"evalsha", "mget", "pttl", "script|load"}) {
      const std::string prefix = absl::StrCat("cmdstat_", cmd, ":calls=");
      if (!absl::ConsumePrefix(&line, prefix)) continue;
      double v = 0;
      if (absl::SimpleAtod(line.substr(0, line.find(',')), &v)) total += v;
    }
  }
  return total;
}

// CPU seconds the Redis process used (user + system, all its threads).
double RedisCpu(const RedisServer& redis) {
  return RedisInfo(redis, "cpu", "used_cpu_user") + RedisInfo(redis, "cpu", "used_cpu_sys");
}

// CPU seconds (user + system) a process has used so far, from /proc.
double CpuSeconds(pid_t pid) {
  std::ifstream f(absl::StrCat("/proc/", pid, "/stat"));
  std::string text((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  const size_t close = text.rfind(')');
  if (close == std::string::npos) return 0;
  std::vector<std::string> fields = absl::StrSplit(text.substr(close + 2), ' ');
  // After "pid (comm) ": state is field 0, utime 11, stime 12 (clock ticks).
  double utime = 0, stime = 0;
  if (fields.size() < 13 || !absl::SimpleAtod(fields[11], &utime) ||
      !absl::SimpleAtod(fields[12], &stime)) {
    return 0;
  }
  return (utime + stime) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

int Run(absl::string_view mode) {
  const bool fleet = mode != "independent";
  const bool tls = mode == "fleet_tls";
  const int n = absl::GetFlag(FLAGS_sidecars);
  const int tasks = absl::GetFlag(FLAGS_tasks);
  const absl::Duration interval = absl::GetFlag(FLAGS_interval);
  const absl::Duration window = absl::GetFlag(FLAGS_window);
  RedisServer::Options ro;
  testing::TestPki pki;
  if (tls) {
    const std::string dir = absl::StrCat(getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp",
                                         "/fleet-bench-pki-", getpid());
    mkdir(dir.c_str(), 0700);
    auto made = testing::TestPki::Create(dir);
    if (!made.ok()) {
      std::fprintf(stderr, "pki: %s\n", std::string(made.status().message()).c_str());
      return 1;
    }
    pki = *std::move(made);
    ro.tls = RedisServer::Options::Tls{pki.server_pem, pki.server_key, pki.ca_pem, false};
  }
  auto redis = RedisServer::Start(ro);
  if (!redis.ok()) {
    std::fprintf(stderr, "redis: %s\n", std::string(redis.status().message()).c_str());
    return 1;
  }
  sim::SimUpstream::Options so;
  so.api_key = kKey;
  so.threads = 32;
  auto sim = sim::SimUpstream::Start(so);
  if (!sim.ok()) return 1;
  const std::string key_file = absl::StrCat(getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp",
                                            "/fleet-bench-key-", getpid());
  std::ofstream(key_file) << kKey << "\n";
  sim::TaskScript hold;
  hold.advances = false;
  for (int t = 0; t < tasks; ++t) (*sim)->SetTask(absl::StrCat("bench-", t), hold);

  std::vector<std::unique_ptr<SidecarProcess>> sidecars;
  for (int i = 0; i < n; ++i) {
    std::vector<std::string> args = {"--listen=127.0.0.1:0",
                                     "--metrics_listen=127.0.0.1:0",
                                     absl::StrCat("--upstream_url=", (*sim)->base_url()),
                                     absl::StrCat("--api_key_file=", key_file),
                                     absl::StrCat("--poll_interval=", absl::FormatDuration(interval)),
                                     "--heartbeat_interval=15s",
                                     "--max_upstream_qps=1000",
                                     "--max_inflight=64",
                                     "--log_format=text"};
    if (fleet) {
      args.push_back(absl::StrCat("--redis_url=", (*redis)->Url()));
      if (tls) args.push_back(absl::StrCat("--redis_ca_file=", pki.ca_pem));
      if (absl::GetFlag(FLAGS_fleet_qps) > 0) {
        args.push_back(absl::StrCat("--fleet_max_upstream_qps=", absl::GetFlag(FLAGS_fleet_qps)));
      }
    }
    auto s = SidecarProcess::Start(testing::Runfile("server/videotask_sidecar"), args);
    if (!s.ok()) {
      std::fprintf(stderr, "%s\n", std::string(s.status().message()).c_str());
      return 1;
    }
    sidecars.push_back(std::move(*s));
  }
  std::vector<std::unique_ptr<videotask::v1::VideoTaskService::Stub>> stubs;
  for (auto& s : sidecars) stubs.push_back(videotask::v1::VideoTaskService::NewStub(s->channel()));
  std::vector<std::unique_ptr<StreamWatcher>> watchers;
  const int per = absl::GetFlag(FLAGS_watchers);
  for (int i = 0; i < n; ++i) {
    for (int w = 0; w < per; ++w) {
      watchers.push_back(std::make_unique<StreamWatcher>(
          stubs[i].get(), absl::StrCat("bench-", w % tasks), window + absl::Minutes(2)));
    }
  }
  // Warm-up: every task polled once, every stream has its SNAPSHOT.
  const absl::Time warm_end = absl::Now() + absl::Minutes(2);
  for (auto& w : watchers) {
    while (w->events().empty() && absl::Now() < warm_end) absl::SleepFor(absl::Milliseconds(5));
  }
  absl::SleepFor(interval);
  (*sim)->ResetCounts();
  const double redis_before = RedisCommands(**redis);
  const double cpu_before = RedisCpu(**redis);
  const double requests_before = RedisRequests(**redis);
  double sidecar_cpu_before = 0;
  for (auto& s : sidecars) sidecar_cpu_before += CpuSeconds(s->process().pid());
  const absl::Time start = absl::Now();
  absl::SleepFor(window);
  const absl::Duration measured = absl::Now() - start;
  const double redis_after = RedisCommands(**redis);
  const double cpu_after = RedisCpu(**redis);
  const double requests_after = RedisRequests(**redis);
  double sidecar_cpu_after = 0;
  for (auto& s : sidecars) sidecar_cpu_after += CpuSeconds(s->process().pid());

  const std::vector<absl::Time> times = (*sim)->RequestTimes();
  const int requests = (*sim)->TotalRequests();
  for (int t = 0; t < tasks; ++t) (*sim)->Complete(absl::StrCat("bench-", t));
  int completed = 0;
  for (auto& w : watchers) {
    if (w->WaitDone(absl::Seconds(30)) && w->status().ok()) ++completed;
  }
  const double intervals = absl::FDivDuration(measured, interval);
  std::printf(
      "%-11s sidecars=%d streams=%d tasks=%d interval=%s window=%s: requests=%d "
      "per_task_per_interval=%.3f busiest_second=%d redis_commands_per_second=%.0f "
      "redis_requests_per_second=%.0f sidecar_cpu_percent=%.1f redis_cpu_percent=%.1f "
      "streams_completed=%d/%zu\n",
      std::string(mode).c_str(), n, n * per, tasks,
      absl::FormatDuration(interval).c_str(), absl::FormatDuration(measured).c_str(), requests,
      requests / (tasks * intervals), BusiestSecond(times),
      fleet ? (redis_after - redis_before) / absl::ToDoubleSeconds(measured) : 0.0,
      fleet ? (requests_after - requests_before) / absl::ToDoubleSeconds(measured) : 0.0,
      100 * (sidecar_cpu_after - sidecar_cpu_before) / absl::ToDoubleSeconds(measured),
      fleet ? 100 * (cpu_after - cpu_before) / absl::ToDoubleSeconds(measured) : 0.0, completed,
      watchers.size());
  watchers.clear();
  std::remove(key_file.c_str());
  return completed == static_cast<int>(n * per) ? 0 : 1;
}

}  // namespace
}  // namespace videotask

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  int rc = 0;
  for (absl::string_view mode : absl::StrSplit(absl::GetFlag(FLAGS_modes), ',')) {
    rc |= videotask::Run(mode);
  }
  return rc;
}
