// End-to-end tests of fleet mode: real videotask_sidecar processes sharing a
// real redis-server (started by the test on a free loopback port) and the
// simulated upstream, watched through real gRPC streams. FleetModesTest runs
// its cases twice: over plain TCP and over TLS (rediss://, a TLS-only
// redis-server with a CA made by openssl for the test).
#include <algorithm>
#include <atomic>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "proto/videotask/v1/video_task.grpc.pb.h"
#include "tests/sim/sim_upstream.h"
#include "tests/testing/redis_server.h"
#include "tests/testing/sidecar_fleet.h"
#include "tests/testing/test_pki.h"

namespace videotask {
namespace {

using testing::BusiestSecond;
using testing::RedisServer;
using testing::Runfile;
using testing::SidecarProcess;
using testing::TestPki;
using Member = testing::SidecarProcess;
using Watcher = testing::StreamWatcher;
using v1::VideoTaskStatus;
using v1::WatchVideoTaskResponse;

constexpr char kKey[] = "sk-fleet-SECRET-5d1e";

// SNAPSHOT first, statuses strictly forward, nothing after the terminal
// event, which is COMPLETED; no status twice.
void ExpectCleanSequence(const std::vector<WatchVideoTaskResponse>& events, const std::string& who) {
  ASSERT_FALSE(events.empty()) << who;
  EXPECT_EQ(events[0].type(), WatchVideoTaskResponse::EVENT_TYPE_SNAPSHOT) << who;
  VideoTaskStatus last = v1::VIDEO_TASK_STATUS_UNSPECIFIED;
  for (size_t i = 0; i < events.size(); ++i) {
    const auto& e = events[i];
    if (e.type() == WatchVideoTaskResponse::EVENT_TYPE_HEARTBEAT) {
      EXPECT_EQ(e.task().status(), last) << who << " heartbeat " << i;
      continue;
    }
    if (i > 0) {
      EXPECT_EQ(e.type(), WatchVideoTaskResponse::EVENT_TYPE_TRANSITION) << who << " event " << i;
      EXPECT_EQ(e.previous_status(), last) << who << " event " << i;
    }
    EXPECT_GT(static_cast<int>(e.task().status()), static_cast<int>(last))
        << who << " repeated or went back at event " << i;
    last = e.task().status();
  }
  EXPECT_EQ(last, v1::VIDEO_TASK_STATUS_COMPLETED) << who;
}

class FleetTest : public ::testing::Test {
 protected:
  // Over TLS: a TLS-only Redis, and sidecars with --redis_ca_file.
  virtual bool Tls() const { return false; }

  void SetUp() override {
    RedisServer::Options ro;
    if (Tls()) {
      auto pki = TestPki::Create(std::getenv("TEST_TMPDIR"));
      ASSERT_TRUE(pki.ok()) << pki.status();
      pki_ = *std::move(pki);
      ro.tls = RedisServer::Options::Tls{pki_.server_pem, pki_.server_key, pki_.ca_pem, false};
    }
    auto redis = RedisServer::Start(ro);
    ASSERT_TRUE(redis.ok()) << redis.status();
    redis_ = std::move(*redis);
    sim::SimUpstream::Options o;
    o.api_key = kKey;
    o.threads = 32;
    auto sim = sim::SimUpstream::Start(o);
    ASSERT_TRUE(sim.ok()) << sim.status();
    sim_ = std::move(*sim);
    key_file_ = absl::StrCat(std::getenv("TEST_TMPDIR"), "/api-key");
    std::ofstream(key_file_) << kKey << "\n";
  }

  Member* StartMember(std::vector<std::string> extra = {}, const std::string& redis_url = "") {
    std::vector<std::string> args = {"--listen=127.0.0.1:0",
                                     "--metrics_listen=127.0.0.1:0",
                                     absl::StrCat("--upstream_url=", sim_->base_url()),
                                     absl::StrCat("--api_key_file=", key_file_),
                                     absl::StrCat("--redis_url=",
                                                  redis_url.empty() ? redis_->Url() : redis_url),
                                     "--poll_interval=500ms",
                                     "--heartbeat_interval=1s",
                                     "--max_upstream_qps=100",
                                     "--max_inflight=64",
                                     "--max_backoff=5s",
                                     "--shutdown_grace=1s"};
    if (Tls() && redis_url.empty()) args.push_back(absl::StrCat("--redis_ca_file=", pki_.ca_pem));
    args.insert(args.end(), extra.begin(), extra.end());
    auto m = SidecarProcess::Start(Runfile("server/videotask_sidecar"), args);
    EXPECT_TRUE(m.ok()) << m.status();
    if (!m.ok()) return nullptr;
    members_.push_back(std::move(*m));
    return members_.back().get();
  }

  // Waits (bounded) until `pred` holds.
  template <typename Pred>
  static bool Eventually(Pred pred, absl::Duration limit = absl::Seconds(15)) {
    const absl::Time end = absl::Now() + limit;
    while (absl::Now() < end) {
      if (pred()) return true;
      absl::SleepFor(absl::Milliseconds(20));
    }
    return pred();
  }

  TestPki pki_;
  std::unique_ptr<RedisServer> redis_;
  std::unique_ptr<sim::SimUpstream> sim_;
  std::string key_file_;
  std::vector<std::unique_ptr<Member>> members_;
};

// The cases that run over plain TCP and over TLS.
class FleetModesTest : public FleetTest, public ::testing::WithParamInterface<bool> {
 protected:
  bool Tls() const override { return GetParam(); }
};

INSTANTIATE_TEST_SUITE_P(TcpAndTls, FleetModesTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& i) {
                           return std::string(i.param ? "Tls" : "Tcp");
                         });

std::unique_ptr<v1::VideoTaskService::Stub> Stub(const Member& m) {
  return v1::VideoTaskService::NewStub(m.channel());
}

// Three sidecars, one key, one Redis, a fleet budget of 20 requests a
// second: 300 distinct tasks watched across them never make the upstream
// see more than 20 requests in a second, and every watcher completes. The
// bound holds while request lags (grant to arrival) differ by at most
// --fleet_arrival_margin; a test machine under load can starve a sidecar's
// threads for longer than the default 250 ms (33 in a second were seen at
// load average 9), so this test gives the budget a margin of 1 s.
TEST_P(FleetModesTest, FleetBudgetHoldsAcrossSidecars) {
  std::vector<Member*> ms;
  for (int i = 0; i < 3; ++i) {
    ms.push_back(StartMember({"--fleet_max_upstream_qps=20", "--fleet_arrival_margin=1s"}));
  }
  for (Member* m : ms) ASSERT_NE(m, nullptr);
  for (Member* m : ms) ASSERT_TRUE(Eventually([&] { return m->Metric("videotask_redis_up") == 1; }));
  sim::TaskScript now;
  now.queued_polls = 0;
  now.processing_polls = 0;
  std::vector<std::unique_ptr<v1::VideoTaskService::Stub>> stubs;
  for (Member* m : ms) stubs.push_back(Stub(*m));
  std::vector<std::unique_ptr<Watcher>> watchers;
  const absl::Time start = absl::Now();
  for (int i = 0; i < 300; ++i) {
    const std::string id = absl::StrCat("budget-", i);
    sim_->SetTask(id, now);
    watchers.push_back(std::make_unique<Watcher>(stubs[i % 3].get(), id, absl::Seconds(90)));
  }
  for (auto& w : watchers) ASSERT_TRUE(w->WaitDone(absl::Seconds(90)));
  for (size_t i = 0; i < watchers.size(); ++i) {
    EXPECT_TRUE(watchers[i]->status().ok()) << i << ": " << watchers[i]->status().error_message();
    const auto events = watchers[i]->events();
    ASSERT_FALSE(events.empty()) << i;
    EXPECT_EQ(events.back().task().status(), v1::VIDEO_TASK_STATUS_COMPLETED) << i;
  }
  // RedisRateBudget's bound: at most the rate in any second at the vendor.
  // (A Redis fault in between would fall back to the local budget: say so.)
  std::string faults;
  for (Member* m : ms) {
    const std::string log = m->process().Stderr();
    for (size_t at = log.find("fleet_mode_off"); at != std::string::npos;
         at = log.find("fleet_mode_off", at + 1)) {
      const size_t begin = log.rfind('\n', at) == std::string::npos ? 0 : log.rfind('\n', at) + 1;
      faults += log.substr(begin, log.find('\n', at) - begin) + "\n";
    }
  }
  EXPECT_LE(BusiestSecond(sim_->RequestTimes()), 20) << "started " << start << ", faults:\n" << faults;
  double denied = 0;
  for (Member* m : ms) denied += m->Metric("videotask_fleet_tokens_denied_total");
  EXPECT_GT(denied, 0) << "the fleet budget never said wait";
}

// The same 20 tasks watched through all three sidecars (50 watchers each
// per sidecar) cost what one sidecar costs: one poll per task per interval,
// and every watcher sees every transition once, in order.
TEST_P(FleetModesTest, OnePollPerTaskAcrossTheFleet) {
  std::vector<Member*> ms;
  for (int i = 0; i < 3; ++i) ms.push_back(StartMember());
  for (Member* m : ms) ASSERT_NE(m, nullptr);
  for (Member* m : ms) ASSERT_TRUE(Eventually([&] { return m->Metric("videotask_redis_up") == 1; }));
  sim::TaskScript timed;
  timed.queued_polls = 0;
  timed.processing_polls = 0;
  timed.queued_for = absl::Seconds(3);
  timed.processing_for = absl::Seconds(3);
  std::vector<std::unique_ptr<v1::VideoTaskService::Stub>> stubs;
  for (Member* m : ms) stubs.push_back(Stub(*m));
  std::vector<std::unique_ptr<Watcher>> watchers;
  const absl::Time start = absl::Now();
  for (int t = 0; t < 20; ++t) sim_->SetTask(absl::StrCat("shared-", t), timed);
  for (int t = 0; t < 20; ++t) {
    for (int s = 0; s < 3; ++s) {
      for (int w = 0; w < 50; ++w) {
        watchers.push_back(
            std::make_unique<Watcher>(stubs[s].get(), absl::StrCat("shared-", t), absl::Seconds(40)));
      }
    }
  }
  for (auto& w : watchers) ASSERT_TRUE(w->WaitDone(absl::Seconds(40)));
  const absl::Duration lifetime = absl::Now() - start;
  for (size_t i = 0; i < watchers.size(); ++i) {
    EXPECT_TRUE(watchers[i]->status().ok()) << i;
    ExpectCleanSequence(watchers[i]->events(), absl::StrCat("watcher ", i));
    if (HasFailure()) break;
  }
  // One sidecar polls a task at once and then every 450-550 ms (500 ms
  // +-10%) until the first poll at or after 6 s, which sees it completed.
  // One poller therefore makes 1 + 12 or 13 requests (13.5 on average) and
  // never more than 1 + ceil(6 s / 450 ms) = 15; a second poller of the same
  // task would make it about 27.
  int requests = 0;
  for (int t = 0; t < 20; ++t) {
    const int n = sim_->RequestCount(absl::StrCat("shared-", t));
    EXPECT_LE(n, 15) << "shared-" << t;
    requests += n;
  }
  // And not an extra poll per task now and then (at startup, say): the mean
  // stays within half a request of one poller's 13.5 (its spread is ~0.1).
  EXPECT_LE(requests / 20.0, 14.0) << requests << " requests over " << lifetime;
}

// A 429 with Retry-After: 2 received by one sidecar silences the fleet.
TEST_F(FleetTest, A429PausesEverySidecar) {
  std::vector<Member*> ms;
  for (int i = 0; i < 3; ++i) ms.push_back(StartMember());
  for (Member* m : ms) ASSERT_NE(m, nullptr);
  for (Member* m : ms) ASSERT_TRUE(Eventually([&] { return m->Metric("videotask_redis_up") == 1; }));
  sim::TaskScript hold;
  hold.advances = false;
  std::vector<std::unique_ptr<v1::VideoTaskService::Stub>> stubs;
  for (Member* m : ms) stubs.push_back(Stub(*m));
  std::vector<std::unique_ptr<Watcher>> watchers;
  for (int s = 0; s < 3; ++s) {
    for (int t = 0; t < 3; ++t) {
      const std::string id = absl::StrCat("rl-", s, "-", t);
      sim_->SetTask(id, hold);
      watchers.push_back(std::make_unique<Watcher>(stubs[s].get(), id, absl::Seconds(30)));
    }
  }
  ASSERT_TRUE(Eventually([&] { return sim_->TotalRequests() >= 30; }));
  sim::Fault f;
  f.kind = sim::FaultKind::kRateLimit;
  f.retry_after_header = "2";
  sim_->InjectFault("rl-0-0", f);  // only sidecar 0 watches this one
  ASSERT_TRUE(Eventually([&] { return ms[0]->Metric("videotask_rate_limited_total") >= 1; }));
  absl::SleepFor(absl::Seconds(3));
  for (auto& w : watchers) w->Cancel();
  for (auto& w : watchers) w->WaitDone(absl::Seconds(10));
  std::vector<absl::Time> times = sim_->RequestTimes();
  std::sort(times.begin(), times.end());
  // The 429 is the request before the longest silence.
  absl::Duration longest;
  absl::Time limited;
  for (size_t i = 1; i < times.size(); ++i) {
    if (times[i] - times[i - 1] > longest) {
      longest = times[i] - times[i - 1];
      limited = times[i - 1];
    }
  }
  // Requests already on their way when the 429 reached the fleet (a few ms)
  // are not counted: the window starts 100 ms after it.
  int during = 0;
  for (absl::Time t : times) {
    if (t > limited + absl::Milliseconds(100) && t < limited + absl::Milliseconds(1950)) ++during;
  }
  EXPECT_EQ(during, 0) << "requests during the fleet's 2 s pause";
  EXPECT_GE(longest, absl::Milliseconds(1800));
}

// A task seen finishing by sidecar A: Get and Watch on sidecar B cost zero
// upstream requests.
TEST_F(FleetTest, TerminalStateIsSharedAcrossSidecars) {
  Member* a = StartMember();
  Member* b = StartMember();
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  ASSERT_TRUE(Eventually([&] { return a->Metric("videotask_redis_up") == 1; }));
  ASSERT_TRUE(Eventually([&] { return b->Metric("videotask_redis_up") == 1; }));
  sim::TaskScript quick;
  quick.queued_polls = 1;
  quick.processing_polls = 1;
  sim_->SetTask("done", quick);
  auto sa = Stub(*a);
  Watcher wa(sa.get(), "done", absl::Seconds(20));
  ASSERT_TRUE(wa.WaitDone(absl::Seconds(20)));
  ExpectCleanSequence(wa.events(), "watcher on A");
  const int requests = sim_->RequestCount("done");
  auto sb = Stub(*b);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  v1::GetVideoTaskRequest req;
  req.set_id("done");
  v1::VideoTask got;
  ASSERT_TRUE(sb->GetVideoTask(&ctx, req, &got).ok());
  EXPECT_EQ(got.status(), v1::VIDEO_TASK_STATUS_COMPLETED);
  Watcher wb(sb.get(), "done", absl::Seconds(10));
  ASSERT_TRUE(wb.WaitDone(absl::Seconds(10)));
  ASSERT_EQ(wb.events().size(), 1u);
  EXPECT_EQ(wb.events()[0].task().status(), v1::VIDEO_TASK_STATUS_COMPLETED);
  EXPECT_EQ(wb.events()[0].task().video_url(), wa.events().back().task().video_url());
  EXPECT_EQ(sim_->RequestCount("done"), requests) << "sidecar B asked the upstream";
}

// kill -9 of the lease holder mid-lifecycle: the watchers on the other two
// see the remaining transitions within two intervals, exactly once.
TEST_F(FleetTest, LeaseHolderKilledAnotherTakesOver) {
  std::vector<Member*> ms;
  for (int i = 0; i < 3; ++i) ms.push_back(StartMember());
  for (Member* m : ms) ASSERT_NE(m, nullptr);
  for (Member* m : ms) ASSERT_TRUE(Eventually([&] { return m->Metric("videotask_redis_up") == 1; }));
  sim::TaskScript hold;
  hold.advances = false;
  sim_->SetTask("lease", hold);
  std::vector<std::unique_ptr<v1::VideoTaskService::Stub>> stubs;
  std::vector<std::unique_ptr<Watcher>> watchers;
  for (Member* m : ms) {
    stubs.push_back(Stub(*m));
    watchers.push_back(std::make_unique<Watcher>(stubs.back().get(), "lease", absl::Seconds(40)));
  }
  // The holder is the one that does not follow.
  int holder = -1;
  ASSERT_TRUE(Eventually([&] {
    int followers = 0;
    holder = -1;
    for (int i = 0; i < 3; ++i) {
      const double f = ms[i]->Metric("videotask_fleet_follower_tasks");
      if (f == 1) ++followers;
      if (f == 0) holder = i;
    }
    return followers == 2 && holder >= 0;
  })) << "no single lease holder";
  for (auto& w : watchers) ASSERT_TRUE(Eventually([&] { return !w->events().empty(); }));
  ms[holder]->Kill();
  sim_->Complete("lease");
  const absl::Time completed = absl::Now();
  for (int i = 0; i < 3; ++i) {
    if (i == holder) continue;
    ASSERT_TRUE(watchers[i]->WaitDone(absl::Seconds(10)));
    EXPECT_TRUE(watchers[i]->status().ok()) << watchers[i]->status().error_message();
    const auto events = watchers[i]->events();
    EXPECT_EQ(events.back().task().status(), v1::VIDEO_TASK_STATUS_COMPLETED);
    int completions = 0;
    for (const auto& e : events) completions += e.task().status() == v1::VIDEO_TASK_STATUS_COMPLETED;
    EXPECT_EQ(completions, 1);
  }
  // Lease 1.5 intervals after the holder's last renewal, plus one follower
  // interval: within about 2.5 intervals, well under 2 s here.
  EXPECT_LT(absl::Now() - completed, absl::Seconds(3));
}

// Redis killed mid-run: streams keep flowing in local mode, without errors;
// fleet mode is back within a few seconds of the restart.
TEST_P(FleetModesTest, RedisDownFallsBackToLocalAndRecovers) {
  Member* a = StartMember();
  ASSERT_NE(a, nullptr);
  ASSERT_TRUE(Eventually([&] { return a->Metric("videotask_fleet_mode") == 1; }));
  sim::TaskScript hold;
  hold.advances = false;
  sim_->SetTask("through", hold);
  auto stub = Stub(*a);
  Watcher w(stub.get(), "through", absl::Seconds(40));
  ASSERT_TRUE(Eventually([&] { return !w.events().empty(); }));
  redis_->Kill();
  ASSERT_TRUE(Eventually([&] { return a->Metric("videotask_fleet_mode") == 0; }, absl::Seconds(5)));
  const int before = sim_->RequestCount("through");
  ASSERT_TRUE(Eventually([&] { return sim_->RequestCount("through") >= before + 3; }))
      << "polling stopped with Redis down";
  ASSERT_TRUE(redis_->Restart().ok());
  EXPECT_TRUE(Eventually([&] { return a->Metric("videotask_fleet_mode") == 1; }, absl::Seconds(10)));
  sim_->Complete("through");
  ASSERT_TRUE(w.WaitDone(absl::Seconds(10)));
  EXPECT_TRUE(w.status().ok()) << w.status().error_message();
  ExpectCleanSequence(w.events(), "watcher through the outage");
  const std::string log = a->process().Stderr();
  EXPECT_TRUE(absl::StrContains(log, "fleet_mode_off")) << log;
  EXPECT_FALSE(absl::StrContains(log, kKey));
}

// A Redis that answers but does not serve (issue 16 item 2): first a
// primary demoted to a replica (REPLICAOF: every script gets READONLY), then
// a write stall (CLIENT PAUSE WRITE: every script times out). Each is a
// fleet fault like Redis down: fleet_mode and redis_up go to 0, the fault is
// counted and logged once, and polling goes on under each sidecar's local
// budget (--max_upstream_qps=3: at most 6 a second from the two), never
// unbudgeted; fleet mode comes back when Redis serves again.
TEST_F(FleetTest, ReadOnlyOrStalledRedisFallsBackToTheLocalBudget) {
  std::vector<Member*> ms;
  for (int i = 0; i < 2; ++i) {
    ms.push_back(StartMember({"--fleet_max_upstream_qps=50", "--max_upstream_qps=3"}));
  }
  for (Member* m : ms) ASSERT_NE(m, nullptr);
  for (Member* m : ms) ASSERT_TRUE(Eventually([&] { return m->Metric("videotask_fleet_mode") == 1; }));
  sim::TaskScript hold;
  hold.advances = false;
  std::vector<std::unique_ptr<v1::VideoTaskService::Stub>> stubs;
  for (Member* m : ms) stubs.push_back(Stub(*m));
  std::vector<std::unique_ptr<Watcher>> watchers;
  // However the test ends, the streams end before their watchers go.
  absl::Cleanup end_streams = [&] {
    for (Member* m : ms) m->Kill();
    for (auto& w : watchers) w->WaitDone(absl::Seconds(10));
  };
  for (int i = 0; i < 40; ++i) {
    const std::string id = absl::StrCat("fault-", i);
    sim_->SetTask(id, hold);
    watchers.push_back(std::make_unique<Watcher>(stubs[i % 2].get(), id, absl::Seconds(60)));
  }
  auto requests_between = [&](absl::Time from, absl::Time to) {
    std::vector<absl::Time> in;
    for (absl::Time t : sim_->RequestTimes()) {
      if (t >= from && t <= to) in.push_back(t);
    }
    return in;
  };
  auto fault_phase = [&](const std::string& what, const std::string& kind) {
    for (Member* m : ms) {
      ASSERT_TRUE(Eventually([&] { return m->Metric("videotask_fleet_mode") == 0; }, absl::Seconds(5)))
          << what;
      EXPECT_EQ(m->Metric("videotask_redis_up"), 0) << what;
    }
    const absl::Time from = absl::Now();
    absl::SleepFor(absl::Seconds(3));
    const std::vector<absl::Time> in = requests_between(from, absl::Now());
    EXPECT_GE(in.size(), 6u) << what << ": polling stopped";
    EXPECT_LE(BusiestSecond(in), 6) << what << ": more than the local budgets";
    for (Member* m : ms) {
      EXPECT_TRUE(absl::StrContains(
          m->Metrics(), absl::StrCat("videotask_fleet_faults_total{kind=\"", kind, "\"} ")))
          << what;
    }
  };
  ASSERT_TRUE(redis_->Command({"REPLICAOF", "127.0.0.1", "1"}).ok());
  fault_phase("read-only Redis", "error_reply");
  ASSERT_TRUE(redis_->Command({"REPLICAOF", "NO", "ONE"}).ok());
  for (Member* m : ms) {
    ASSERT_TRUE(Eventually([&] { return m->Metric("videotask_fleet_mode") == 1; }, absl::Seconds(40)));
  }
  for (Member* m : ms) {
    const std::string log = m->process().Stderr();
    EXPECT_TRUE(absl::StrContains(log, "READONLY")) << log;
  }
  ASSERT_TRUE(redis_->Command({"CLIENT", "PAUSE", "6000", "WRITE"}).ok());
  fault_phase("stalled Redis", "timeout");
  ASSERT_TRUE(redis_->Command({"CLIENT", "UNPAUSE"}).ok());
  for (Member* m : ms) {
    ASSERT_TRUE(Eventually([&] { return m->Metric("videotask_fleet_mode") == 1; }, absl::Seconds(40)));
    // Once per fault, not per command: one line each way per phase.
    const std::string log = m->process().Stderr();
    size_t offs = 0;
    for (size_t at = log.find("fleet_mode_off"); at != std::string::npos;
         at = log.find("fleet_mode_off", at + 1)) {
      ++offs;
    }
    EXPECT_EQ(offs, 2u) << log;
    EXPECT_FALSE(absl::StrContains(log, kKey));
  }
  for (auto& w : watchers) {
    EXPECT_FALSE(w->WaitDone(absl::ZeroDuration())) << "a stream ended: " << w->status().error_message();
  }
}

// A wrong Redis password or an unreachable Redis at start: the sidecar
// starts in local mode, says so in one log line and in the metric, and
// serves.
TEST_F(FleetTest, BadRedisAtStartMeansLocalMode) {
  auto pw = RedisServer::Start(RedisServer::Options{"right-password", 0, ""});
  ASSERT_TRUE(pw.ok()) << pw.status();
  const std::string wrong_pw = absl::StrCat("redis://:wrong@127.0.0.1:", (*pw)->port());
  const std::string unreachable = absl::StrCat("redis://127.0.0.1:", redis_->port());
  redis_->Kill();
  for (const std::string& url : {wrong_pw, unreachable}) {
    Member* m = StartMember({}, url);
    ASSERT_NE(m, nullptr);
    ASSERT_TRUE(Eventually([&] { return m->process().Stderr().find("fleet_mode_off") !=
                                        std::string::npos; }))
        << m->process().Stderr();
    EXPECT_EQ(m->Metric("videotask_redis_up"), 0) << url;
    EXPECT_FALSE(absl::StrContains(m->process().Stderr(), "wrong")) << "password in the log";
    sim::TaskScript quick;
    quick.queued_polls = 1;
    quick.processing_polls = 0;
    const std::string id = absl::StrCat("local-", m->metrics_port());
    sim_->SetTask(id, quick);
    auto stub = Stub(*m);
    Watcher w(stub.get(), id, absl::Seconds(20));
    ASSERT_TRUE(w.WaitDone(absl::Seconds(20)));
    EXPECT_TRUE(w.status().ok()) << w.status().error_message();
  }
}

class FleetTlsTest : public FleetTest {
 protected:
  bool Tls() const override { return true; }
};

// A TLS handshake that fails at start (a CA that did not sign the server's
// certificate, a name the certificate does not have): the sidecar starts in
// local mode, says why in one log line and in the metric, and serves.
TEST_F(FleetTlsTest, FailedHandshakeAtStartMeansLocalMode) {
  const std::string url = absl::StrCat("rediss://:pw-", kKey, "@127.0.0.1:", redis_->port());
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{absl::StrCat("--redis_ca_file=", pki_.other_ca_pem)}, "certificate verify failed"},
      {{absl::StrCat("--redis_ca_file=", pki_.ca_pem), "--redis_tls_server_name=redis.example.com"},
       "hostname mismatch"},
  };
  for (const auto& [flags, reason] : cases) {
    Member* m = StartMember(flags, url);
    ASSERT_NE(m, nullptr);
    ASSERT_TRUE(Eventually([&] { return m->process().Stderr().find("fleet_mode_off") !=
                                        std::string::npos; }))
        << m->process().Stderr();
    EXPECT_EQ(m->Metric("videotask_redis_up"), 0);
    EXPECT_EQ(m->Metric("videotask_fleet_mode"), 0);
    sim::TaskScript quick;
    quick.queued_polls = 1;
    quick.processing_polls = 0;
    const std::string id = absl::StrCat("local-tls-", m->metrics_port());
    sim_->SetTask(id, quick);
    auto stub = Stub(*m);
    Watcher w(stub.get(), id, absl::Seconds(20));
    ASSERT_TRUE(w.WaitDone(absl::Seconds(20)));
    EXPECT_TRUE(w.status().ok()) << w.status().error_message();
    const std::string log = m->process().Stderr();
    size_t offs = 0;
    for (size_t at = log.find("fleet_mode_off"); at != std::string::npos;
         at = log.find("fleet_mode_off", at + 1)) {
      ++offs;
    }
    EXPECT_EQ(offs, 1u) << "one line, not one per attempt: " << log;
    EXPECT_TRUE(absl::StrContains(log, reason)) << log;
    EXPECT_FALSE(absl::StrContains(log, kKey)) << "password in the log";
  }
}

}  // namespace
}  // namespace videotask
