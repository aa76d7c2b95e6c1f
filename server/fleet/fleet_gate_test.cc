#include "server/fleet/fleet_gate.h"

#include <memory>
#include <string>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "server/base/clock.h"
#include "server/fleet/redis_url.h"
#include "tests/testing/redis_server.h"

namespace videotask::fleet {
namespace {

using ::videotask::testing::RedisServer;
using videotask::v1::VideoTask;
using Kind = PollGate::Admission::Kind;

constexpr char kKey[] = "sk-gate-SECRET-0a9b";

VideoTask Task(const std::string& id, videotask::v1::VideoTaskStatus s) {
  VideoTask t;
  t.set_id(id);
  t.set_status(s);
  return t;
}

class FleetGateTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto s = RedisServer::Start();
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = *std::move(s);
  }
  std::unique_ptr<FleetPollGate> Gate(double qps = 0, const std::string& key = kKey,
                                      Clock* clock = nullptr) {
    FleetGateOptions o;
    o.redis.url = *RedisUrl::Parse(server_->Url());
    o.redis.command_timeout = command_timeout_;
    o.api_key = key;
    o.upstream_host = "vendor.example";
    o.fleet_qps = qps;
    o.poll_interval = absl::Seconds(2);
    o.clock = clock;
    o.renew_thread = clock == nullptr;  // a simulated clock: the test renews
    auto g = FleetPollGate::Create(std::move(o));
    EXPECT_TRUE(g.ok()) << g.status();
    EXPECT_TRUE((*g)->client()->WaitUntilUp(absl::Seconds(5)));
    // As the hub does: published states and released leases are heard.
    (*g)->SetListener([](VideoTask) {});
    (*g)->SetTakeover([](const std::string&) {});
    return std::move(*g);
  }
  static PollGate::Admission Admit(PollGate& gate, const std::string& id, bool watched) {
    absl::Notification n;
    PollGate::Admission out;
    out.kind = Kind::kWait;
    gate.Admit(id, watched, [&](PollGate::Admission a) {
      out = std::move(a);
      n.Notify();
    });
    EXPECT_TRUE(n.WaitForNotificationWithTimeout(absl::Seconds(5)));
    return out;
  }
  // Waits (bounded) until a PTTL/GET-style check on Redis holds.
  template <typename Pred>
  static bool Eventually(Pred pred) {
    const absl::Time end = absl::Now() + absl::Seconds(5);
    while (absl::Now() < end) {
      if (pred()) return true;
      absl::SleepFor(absl::Milliseconds(5));
    }
    return pred();
  }
  std::unique_ptr<RedisServer> server_;
  absl::Duration command_timeout_ = absl::Milliseconds(250);  // Gate()'s
};

// One poller per watched task: the lease holder polls, the other follows
// with what the holder shared; Gets never take the lease.
TEST_F(FleetGateTest, OneSidecarPollsTheOthersFollow) {
  auto a = Gate();
  auto b = Gate();
  EXPECT_EQ(Admit(*b, "t", /*watched=*/false).kind, Kind::kPoll) << "a Get with nothing shared";
  EXPECT_EQ(Admit(*a, "t", true).kind, Kind::kPoll);
  EXPECT_EQ(Admit(*a, "t", true).kind, Kind::kPoll) << "the holder renews";
  PollGate::Admission follow = Admit(*b, "t", true);
  EXPECT_EQ(follow.kind, Kind::kFollow);
  EXPECT_FALSE(follow.shared.has_value());
  a->Observed(Task("t", videotask::v1::VIDEO_TASK_STATUS_PROCESSING));
  ASSERT_TRUE(Eventually([&] { return Admit(*b, "t", true).shared.has_value(); }));
  follow = Admit(*b, "t", true);
  EXPECT_EQ(follow.kind, Kind::kFollow);
  EXPECT_EQ(follow.shared->status(), videotask::v1::VIDEO_TASK_STATUS_PROCESSING);
  // A Get on B is answered by the shared state.
  PollGate::Admission get = Admit(*b, "t", false);
  EXPECT_EQ(get.kind, Kind::kFollow);
  ASSERT_TRUE(get.shared.has_value());
  // The holder lets go: the other takes over at its next ask.
  a->Released("t");
  ASSERT_TRUE(Eventually([&] { return Admit(*b, "t", true).kind == Kind::kPoll; }));
  EXPECT_EQ(Admit(*a, "t", true).kind, Kind::kFollow);
}

// A terminal shared state answers watchers too: nobody polls again.
TEST_F(FleetGateTest, TerminalStateAnswersEveryone) {
  auto a = Gate();
  auto b = Gate();
  a->Observed(Task("done", videotask::v1::VIDEO_TASK_STATUS_COMPLETED));
  ASSERT_TRUE(Eventually([&] { return Admit(*b, "done", true).shared.has_value(); }));
  PollGate::Admission x = Admit(*b, "done", true);
  EXPECT_EQ(x.kind, Kind::kFollow);
  EXPECT_EQ(x.shared->status(), videotask::v1::VIDEO_TASK_STATUS_COMPLETED);
}

// Published states reach the other sidecar's listener; another fleet (a
// different key) shares nothing.
TEST_F(FleetGateTest, PublishedStatesReachTheFleetOnly) {
  auto a = Gate();
  auto b = Gate();
  auto stranger = Gate(0, "sk-another-fleet");
  absl::Mutex mu;
  std::vector<VideoTask> got_b, got_stranger;
  b->SetListener([&](VideoTask t) {
    absl::MutexLock lock(&mu);
    got_b.push_back(t);
  });
  stranger->SetListener([&](VideoTask t) {
    absl::MutexLock lock(&mu);
    got_stranger.push_back(t);
  });
  a->SetListener([](VideoTask) {});
  absl::SleepFor(absl::Milliseconds(200));  // subscriptions established
  a->Observed(Task("p", videotask::v1::VIDEO_TASK_STATUS_QUEUED));
  a->Observed(Task("p", videotask::v1::VIDEO_TASK_STATUS_PROCESSING));
  ASSERT_TRUE(Eventually([&] {
    absl::MutexLock lock(&mu);
    return got_b.size() == 2;
  }));
  absl::MutexLock lock(&mu);
  EXPECT_EQ(got_b[1].status(), videotask::v1::VIDEO_TASK_STATUS_PROCESSING);
  EXPECT_TRUE(got_stranger.empty());
  EXPECT_EQ(Admit(*stranger, "p", false).kind, Kind::kPoll) << "another fleet's state was used";
}

// The shared pause and the fleet budget make requests wait; a forged entry
// is ignored and counted.
TEST_F(FleetGateTest, PauseBudgetAndForgedEntries) {
  auto a = Gate(/*qps=*/2);
  auto b = Gate(2);
  a->RateLimited(absl::Seconds(3));
  ASSERT_TRUE(Eventually([&] { return Admit(*b, "x", true).kind == Kind::kWait; }));
  PollGate::Admission w = Admit(*b, "x", true);
  EXPECT_GT(w.wait, absl::Seconds(1));
  EXPECT_LE(w.wait, absl::Seconds(3));
  ASSERT_TRUE(server_->Command({"DEL", "vt:{" + a->fingerprint() + "}:pause"}).ok());
  // Budget: 2 a second across both; a burst of asks gets waits.
  int granted = 0, waited = 0;
  for (int i = 0; i < 6; ++i) {
    const PollGate::Admission r = Admit(i % 2 ? *a : *b, "y" + std::to_string(i), true);
    (r.kind == Kind::kPoll ? granted : waited)++;
  }
  EXPECT_LE(granted, 2);
  EXPECT_GE(waited, 4);
  // Anyone with write access to Redis but not the key cannot feed a state.
  ASSERT_TRUE(server_->Command({"SET", "vt:{" + a->fingerprint() + "}:state:forged",
                                "vts1-not-signed-COMPLETED"})
                  .ok());
  PollGate::Admission f = Admit(*a, "forged", false);
  EXPECT_FALSE(f.shared.has_value());
}

// The holder renews its lease on its own timer (half the lease, 1.5 s of
// the 3 s here), not only when it polls: a holder backing off or archiving
// keeps the task. A lease someone else took is dropped at the renewal.
TEST_F(FleetGateTest, HeldLeasesAreRenewedOnTheirOwnTimer) {
  SimulatedClock clock;
  auto a = Gate(0, kKey, &clock);
  auto b = Gate();
  const std::string lease = "vt:{" + a->fingerprint() + "}:lease:t";
  ASSERT_EQ(Admit(*a, "t", true).kind, Kind::kPoll);
  ASSERT_EQ(Admit(*a, "u", true).kind, Kind::kPoll);
  auto pttl = [&](const std::string& key) { return std::stoi(*server_->Command({"PTTL", key})); };
  // Time passes in Redis (the lease is about to lapse), none on the gate's
  // clock yet: nothing is due.
  ASSERT_TRUE(server_->Command({"PEXPIRE", lease, "200"}).ok());
  a->RenewDue();
  absl::SleepFor(absl::Milliseconds(50));
  EXPECT_LE(pttl(lease), 200);
  clock.Advance(absl::Milliseconds(1500));
  a->RenewDue();
  ASSERT_TRUE(Eventually([&] { return pttl(lease) > 2500; })) << "not renewed";
  // Taken over while we were not looking (a Redis restart, an operator):
  // the next renewal finds out and the lease is no longer counted as held.
  ASSERT_TRUE(server_->Command({"SET", lease, "someone-else"}).ok());
  clock.Advance(absl::Milliseconds(1500));
  // (Again while the last round's answers may still be on their way.)
  ASSERT_TRUE(Eventually([&] {
    a->RenewDue();
    return a->leases_held() == 1;
  }));
  EXPECT_EQ(*server_->Command({"GET", lease}), "someone-else");
  EXPECT_EQ(Admit(*a, "t", true).kind, Kind::kFollow);
  EXPECT_EQ(Admit(*b, "u", true).kind, Kind::kFollow) << "u is still a's";
}

// While the holder archives the task's video its lease stays, even when its
// watchers leave, until the archived state is stored; then it is let go.
TEST_F(FleetGateTest, ArchivingKeepsTheLeaseUntilTheArchivedStateIsStored) {
  auto a = Gate();
  auto b = Gate();
  ASSERT_EQ(Admit(*a, "v", true).kind, Kind::kPoll);
  a->Observed(Task("v", videotask::v1::VIDEO_TASK_STATUS_PROCESSING));
  a->Archiving("v");
  a->Released("v");  // its last watcher left meanwhile
  EXPECT_EQ(a->leases_held(), 1u);
  PollGate::Admission x = Admit(*b, "v", true);
  EXPECT_EQ(x.kind, Kind::kFollow) << "another sidecar would poll and download again";
  VideoTask archived = Task("v", videotask::v1::VIDEO_TASK_STATUS_COMPLETED);
  archived.mutable_archive()->set_uri("file:///archive/v.mp4");
  a->Observed(archived);
  EXPECT_EQ(a->leases_held(), 0u);
  ASSERT_TRUE(Eventually([&] {
    x = Admit(*b, "v", true);
    return x.shared.has_value() && x.shared->status() == videotask::v1::VIDEO_TASK_STATUS_COMPLETED;
  }));
  EXPECT_EQ(x.kind, Kind::kFollow);
  EXPECT_EQ(x.shared->archive().uri(), "file:///archive/v.mp4");
  ASSERT_TRUE(Eventually([&] {
    return *server_->Command({"EXISTS", "vt:{" + a->fingerprint() + "}:lease:v"}) == "0";
  }));
}

// Draining lets go of every lease at once (archives in progress too): a
// follower takes over at its next ask instead of after the lease lapses.
TEST_F(FleetGateTest, DrainReleasesEveryLease) {
  auto a = Gate();
  auto b = Gate();
  ASSERT_EQ(Admit(*a, "d1", true).kind, Kind::kPoll);
  ASSERT_EQ(Admit(*a, "d2", true).kind, Kind::kPoll);
  a->Archiving("d2");
  ASSERT_EQ(Admit(*b, "d1", true).kind, Kind::kFollow);
  a->Drain();
  EXPECT_EQ(a->leases_held(), 0u);
  // Released in the order asked, on a's connection: once d2's is gone, both are.
  const std::string prefix = "vt:{" + a->fingerprint() + "}:lease:";
  ASSERT_TRUE(Eventually([&] { return *server_->Command({"EXISTS", prefix + "d2"}) == "0"; }));
  // b follows d1: the published release makes it take the lease at once.
  EXPECT_TRUE(Eventually([&] { return Admit(*b, "d1", true).kind == Kind::kPoll; }));
  EXPECT_EQ(Admit(*b, "d2", true).kind, Kind::kPoll);
  Admit(*a, "d3", true);
  EXPECT_EQ(a->leases_held(), 0u) << "a drained gate takes no new lease";
  EXPECT_EQ(*server_->Command({"EXISTS", prefix + "d3"}), "0");
}

// An older signed QUEUED written back over a stored COMPLETED (by anyone
// with write access to Redis): a Get on another sidecar still answers
// COMPLETED, from the fleet, without a request.
TEST_F(FleetGateTest, ReplayedOlderStateDoesNotUndoCompleted) {
  auto a = Gate();
  auto b = Gate();
  const std::string key = "vt:{" + a->fingerprint() + "}:state:r";
  a->Observed(Task("r", videotask::v1::VIDEO_TASK_STATUS_QUEUED));
  ASSERT_TRUE(Eventually([&] { return server_->Command({"GET", key}).ok() &&
                                      !server_->Command({"GET", key})->empty(); }));
  const std::string queued = *server_->Command({"GET", key});
  a->Observed(Task("r", videotask::v1::VIDEO_TASK_STATUS_COMPLETED));
  ASSERT_TRUE(Eventually([&] { return *server_->Command({"GET", key}) != queued; }));
  ASSERT_TRUE(server_->Command({"SET", key, queued}).ok());
  PollGate::Admission get = Admit(*b, "r", false);
  EXPECT_EQ(get.kind, Kind::kFollow);
  ASSERT_TRUE(get.shared.has_value());
  EXPECT_EQ(get.shared->status(), videotask::v1::VIDEO_TASK_STATUS_COMPLETED);
}

// Scale: a follower's admissions cost Redis nothing; once per interval one
// script reads every task it follows (and takes a lease that is free, e.g.
// after the holder died, telling the hub to poll now).
TEST_F(FleetGateTest, FollowersCostOneBatchedReadPerInterval) {
  SimulatedClock clock;
  auto a = Gate();
  auto b = Gate(0, kKey, &clock);  // the test runs b's rounds
  absl::Mutex mu;
  std::vector<std::string> took;
  b->SetTakeover([&](const std::string& id) {
    absl::MutexLock lock(&mu);
    took.push_back(id);
  });
  constexpr int kTasks = 40;
  auto id = [](int i) { return "f" + std::to_string(i); };
  for (int i = 0; i < kTasks; ++i) {
    ASSERT_EQ(Admit(*a, id(i), true).kind, Kind::kPoll);
    a->Observed(Task(id(i), videotask::v1::VIDEO_TASK_STATUS_PROCESSING));
  }
  for (int i = 0; i < kTasks; ++i) ASSERT_EQ(Admit(*b, id(i), true).kind, Kind::kFollow);
  EXPECT_EQ(b->tasks_followed(), static_cast<size_t>(kTasks));
  // One round, its answers in (the next one waits for them).
  auto one_round = [&] {
    b->FollowRound();
    ASSERT_TRUE(Eventually([&] { return !b->follow_round_running(); }));
  };
  one_round();  // loads the script
  ASSERT_TRUE(Eventually([&] {
    for (int i = 0; i < kTasks; ++i) {
      if (!Admit(*b, id(i), true).shared.has_value()) return false;
    }
    return true;
  }));
  const int64_t before = b->client()->stats().commands;
  for (int round = 0; round < 3; ++round) {
    for (int i = 0; i < kTasks; ++i) {
      PollGate::Admission x = Admit(*b, id(i), true);
      EXPECT_EQ(x.kind, Kind::kFollow);
      ASSERT_TRUE(x.shared.has_value());
      EXPECT_EQ(x.shared->status(), videotask::v1::VIDEO_TASK_STATUS_PROCESSING);
    }
    clock.Advance(absl::Seconds(2));
    one_round();
  }
  ASSERT_TRUE(Eventually([&] { return b->client()->stats().commands - before == 3; }))
      << b->client()->stats().commands - before << " commands for 3 intervals of " << kTasks
      << " followed tasks";
  // The holder dies: its leases lapse (deleted here rather than waited
  // for). The next round takes them and tells the hub.
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(server_->Command({"DEL", "vt:{" + a->fingerprint() + "}:lease:" + id(i)}).ok());
  }
  clock.Advance(absl::Seconds(2));
  one_round();
  ASSERT_TRUE(Eventually([&] {
    absl::MutexLock lock(&mu);
    return took.size() == 3;
  }));
  for (int i = 0; i < 3; ++i) EXPECT_EQ(Admit(*b, id(i), true).kind, Kind::kPoll);
  EXPECT_EQ(Admit(*b, id(3), true).kind, Kind::kFollow);
  EXPECT_EQ(b->tasks_followed(), static_cast<size_t>(kTasks - 3));
}

// Redis gone: every admission is a local poll, at once.
TEST_F(FleetGateTest, RedisDownAdmitsLocally) {
  // "At once": well within the command timeout (3 s) that asking Redis
  // would take.
  command_timeout_ = absl::Seconds(3);
  auto a = Gate();
  server_->Kill();
  ASSERT_TRUE(Eventually([&] { return !a->up(); }));
  const absl::Time start = absl::Now();
  EXPECT_EQ(Admit(*a, "t", true).kind, Kind::kPoll);
  EXPECT_LT(absl::Now() - start, absl::Milliseconds(1500));
}

}  // namespace
}  // namespace videotask::fleet
