// FleetPollGate under Redis faults, key rotation and lost subscriptions,
// against a real redis-server (issue 16 items 2, 3 and 12).
#include <atomic>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "server/base/metrics.h"
#include "server/fleet/fleet_gate.h"
#include "server/fleet/fleet_keys.h"
#include "server/fleet/redis_url.h"
#include "tests/testing/redis_server.h"

namespace videotask::fleet {
namespace {

using ::videotask::testing::RedisServer;
using videotask::v1::VideoTask;
using Kind = PollGate::Admission::Kind;

constexpr char kOldKey[] = "sk-old-SECRET-11";
constexpr char kNewKey[] = "sk-new-SECRET-22";

VideoTask Task(const std::string& id, videotask::v1::VideoTaskStatus s) {
  VideoTask t;
  t.set_id(id);
  t.set_status(s);
  return t;
}

// The value of one metric line ("name{labels} value"), -1 when absent.
double MetricValue(const std::string& text, const std::string& series) {
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (absl::StartsWith(line, absl::StrCat(series, " "))) {
      return std::stod(std::string(line.substr(series.size() + 1)));
    }
  }
  return -1;
}

int Count(const std::string& haystack, const std::string& needle) {
  int n = 0;
  for (size_t at = haystack.find(needle); at != std::string::npos;
       at = haystack.find(needle, at + 1)) {
    ++n;
  }
  return n;
}

template <typename Pred>
bool Eventually(Pred pred, absl::Duration limit = absl::Seconds(5)) {
  const absl::Time end = absl::Now() + limit;
  while (absl::Now() < end) {
    if (pred()) return true;
    absl::SleepFor(absl::Milliseconds(5));
  }
  return pred();
}

// What a gate's listener heard: the last shared state, if any.
struct Heard {
  absl::Mutex mu;
  std::optional<VideoTask> last ABSL_GUARDED_BY(mu);

  PollGate::Listener Listener() {
    return [this](VideoTask t) {
      absl::MutexLock lock(&mu);
      last = std::move(t);
    };
  }
  std::optional<VideoTask> Last() {
    absl::MutexLock lock(&mu);
    return last;
  }
};

class FleetFaultTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto s = RedisServer::Start();
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = *std::move(s);
  }
  FleetGateOptions Options(double qps = 0, const std::string& key = kOldKey) {
    FleetGateOptions o;
    o.redis.url = *RedisUrl::Parse(server_->Url());
    o.redis.min_backoff = absl::Milliseconds(50);
    o.redis.max_backoff = absl::Milliseconds(200);
    o.redis.max_fault_backoff = absl::Milliseconds(200);
    o.api_key = key;
    o.upstream_host = "vendor.example";
    o.fleet_qps = qps;
    o.poll_interval = absl::Seconds(2);
    return o;
  }
  static std::unique_ptr<FleetPollGate> Gate(FleetGateOptions o) {
    auto g = FleetPollGate::Create(std::move(o));
    EXPECT_TRUE(g.ok()) << g.status();
    EXPECT_TRUE((*g)->client()->WaitUntilUp(absl::Seconds(5)));
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
  std::unique_ptr<RedisServer> server_;
};

// Item 2: a primary demoted to a replica answers PING but refuses every
// script. That is a fleet fault like Redis down: fleet mode and redis_up go
// to 0, it is counted and logged once (not per command), admissions are
// local at once (the hub's own budget is then the limit), and fleet mode
// comes back when Redis takes writes again.
TEST_F(FleetFaultTest, ReadOnlyRedisSwitchesFleetModeOffOnce) {
  MetricsRegistry metrics;
  FleetGateOptions o = Options(/*qps=*/1);
  o.metrics = &metrics;
  ::testing::internal::CaptureStderr();
  auto g = Gate(std::move(o));
  EXPECT_EQ(MetricValue(metrics.Render(), "videotask_fleet_mode"), 1);
  ASSERT_TRUE(server_->Command({"REPLICAOF", "127.0.0.1", "1"}).ok());
  Admit(*g, "w", true);  // the scripts fail: this one is local, and the fault is seen
  ASSERT_TRUE(Eventually([&] { return !g->up(); }));
  const absl::Time start = absl::Now();
  for (int i = 0; i < 20; ++i) {
    EXPECT_EQ(Admit(*g, absl::StrCat("t", i), i % 2 == 0).kind, Kind::kPoll);
  }
  // Waiting for Redis would take 20 command timeouts (5 s).
  EXPECT_LT(absl::Now() - start, absl::Milliseconds(2500)) << "local admissions wait on nothing";
  absl::SleepFor(absl::Milliseconds(600));  // several reconnect attempts, each refused
  const std::string text = metrics.Render();
  EXPECT_EQ(MetricValue(text, "videotask_fleet_mode"), 0) << text;
  EXPECT_EQ(MetricValue(text, "videotask_redis_up"), 0) << text;
  EXPECT_EQ(MetricValue(text, "videotask_fleet_faults_total{kind=\"error_reply\"}"), 1) << text;
  ASSERT_TRUE(server_->Command({"REPLICAOF", "NO", "ONE"}).ok());
  ASSERT_TRUE(Eventually([&] { return g->up(); }));
  EXPECT_EQ(Admit(*g, "w", true).kind, Kind::kPoll);
  EXPECT_EQ(MetricValue(metrics.Render(), "videotask_fleet_mode"), 1);
  g.reset();
  const std::string log = ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(Count(log, "fleet_mode_off"), 1) << log;
  EXPECT_TRUE(absl::StrContains(log, "READONLY")) << log;
  EXPECT_EQ(Count(log, "fleet_mode_on"), 2) << log;
  EXPECT_FALSE(absl::StrContains(log, kOldKey));
}

// Item 2: a command stall past the command timeout (DEBUG SLEEP) is a fault
// too: the admission is local within about the timeout, the fleet is down
// (counted as a timeout), and it comes back after the stall.
TEST_F(FleetFaultTest, CommandStallIsAFault) {
  MetricsRegistry metrics;
  FleetGateOptions o = Options(/*qps=*/1);
  o.metrics = &metrics;
  auto g = Gate(std::move(o));
  // Redis holds every command for 2 s, from when this returns (no race with
  // the admission, as a DEBUG SLEEP sent from another thread had). The
  // admission is local after the 250 ms command timeout; waiting for the
  // reply would take 2 s.
  ASSERT_TRUE(server_->Command({"CLIENT", "PAUSE", "2000", "ALL"}).ok());
  const absl::Time start = absl::Now();
  EXPECT_EQ(Admit(*g, "w", true).kind, Kind::kPoll);
  EXPECT_LT(absl::Now() - start, absl::Milliseconds(1250));
  EXPECT_FALSE(g->up());
  const std::string text = metrics.Render();
  EXPECT_EQ(MetricValue(text, "videotask_fleet_mode"), 0) << text;
  EXPECT_EQ(MetricValue(text, "videotask_fleet_faults_total{kind=\"timeout\"}"), 1) << text;
  ASSERT_TRUE(Eventually([&] { return g->up(); }));
}

// Item 3: a key rotation keeps one fleet. A pod still on the old key and a
// pod on the new one (with the old one as --api_key_previous_file) share
// one budget and read each other's states; when the old pod re-reads its
// secret it signs with the new key and still reads what it signed before.
TEST_F(FleetFaultTest, KeyRotationKeepsOneBudgetAndSharedStates) {
  absl::Mutex key_mu;
  std::string old_pod_key = kOldKey;
  FleetGateOptions oo = Options(/*qps=*/1, kOldKey);
  oo.current_api_key = [&]() -> absl::StatusOr<std::string> {
    absl::MutexLock lock(&key_mu);
    return old_pod_key;
  };
  auto old_pod = Gate(std::move(oo));
  FleetGateOptions no = Options(/*qps=*/1, kNewKey);
  no.accepted_api_keys = {kOldKey};
  auto new_pod = Gate(std::move(no));
  EXPECT_EQ(old_pod->fingerprint(), new_pod->fingerprint());
  // One budget: at 1 a second, a burst across both pods gets one grant.
  int granted = 0;
  for (int i = 0; i < 6; ++i) {
    if (Admit(i % 2 ? *old_pod : *new_pod, absl::StrCat("b", i), true).kind == Kind::kPoll) {
      ++granted;
    }
  }
  EXPECT_EQ(granted, 1);
  // States both ways.
  old_pod->Observed(Task("from-old", videotask::v1::VIDEO_TASK_STATUS_PROCESSING));
  ASSERT_TRUE(Eventually([&] { return Admit(*new_pod, "from-old", false).shared.has_value(); }));
  {
    absl::MutexLock lock(&key_mu);
    old_pod_key = kNewKey;  // the mounted secret was rotated and re-read
  }
  new_pod->Observed(Task("from-new", videotask::v1::VIDEO_TASK_STATUS_COMPLETED));
  ASSERT_TRUE(Eventually([&] { return Admit(*old_pod, "from-new", false).shared.has_value(); }));
  EXPECT_TRUE(Admit(*old_pod, "from-old", false).shared.has_value()) << "its own old-key state";
  old_pod->Observed(Task("from-old-2", videotask::v1::VIDEO_TASK_STATUS_COMPLETED));
  ASSERT_TRUE(Eventually([&] { return Admit(*new_pod, "from-old-2", false).shared.has_value(); }));
  // A pod of another key that is not accepted reads nothing.
  auto stranger = Gate(Options(0, "sk-unrelated"));
  EXPECT_FALSE(Admit(*stranger, "from-new", false).shared.has_value());
}

// Item 12: states published while the subscriber was away are re-read once
// it is subscribed again. The follower's subscriber connection is killed
// and kept from reconnecting (its Redis user is disabled; the command
// connection stays), the holder publishes a new state meanwhile, then the
// user is enabled again: the follower resubscribes and re-reads the task it
// follows.
TEST_F(FleetFaultTest, ResubscribeRereadsWhatWasMissed) {
  ASSERT_TRUE(server_->Command({"ACL", "SETUSER", "follower", "on", ">pw", "~*", "&*", "+@all"}).ok());
  auto holder = Gate(Options());
  FleetGateOptions fo = Options();
  fo.redis.url.username = "follower";
  fo.redis.url.password = "pw";
  auto follower = Gate(std::move(fo));
  Heard heard;
  follower->SetListener(heard.Listener());
  holder->SetListener([](VideoTask) {});
  ASSERT_TRUE(Eventually([&] { return follower->client()->stats().subscribes == 1; }));
  ASSERT_EQ(Admit(*holder, "t", true).kind, Kind::kPoll);
  ASSERT_EQ(Admit(*follower, "t", true).kind, Kind::kFollow);
  absl::SleepFor(absl::Milliseconds(50));  // the SUBSCRIBE is answered
  ASSERT_TRUE(server_->Command({"ACL", "SETUSER", "follower", "off"}).ok());
  ASSERT_TRUE(server_->Command({"CLIENT", "KILL", "TYPE", "pubsub", "USER", "follower"}).ok());
  holder->Observed(Task("t", videotask::v1::VIDEO_TASK_STATUS_PROCESSING));
  ASSERT_TRUE(Eventually([&] { return Admit(*holder, "t", false).shared.has_value(); }));
  absl::SleepFor(absl::Milliseconds(100));
  ASSERT_FALSE(heard.Last().has_value())
      << "the follower heard the publication it should have missed";
  ASSERT_TRUE(server_->Command({"ACL", "SETUSER", "follower", "on"}).ok());
  ASSERT_TRUE(Eventually([&] { return follower->client()->stats().subscribes == 2; }));
  ASSERT_TRUE(Eventually([&] { return heard.Last().has_value(); }))
      << "the missed state was not re-read";
  EXPECT_EQ(heard.Last()->id(), "t");
  EXPECT_EQ(heard.Last()->status(), videotask::v1::VIDEO_TASK_STATUS_PROCESSING);
}

// Managed Redis with ACL users: fleet mode needs no more than the commands
// and key/channel patterns docs/fleet.md lists. A user with exactly those
// runs the budget, leases, shared states and pub/sub without one NOPERM
// (which would be an error-reply fault).
TEST_F(FleetFaultTest, LeastPrivilegeAclUserRunsTheFleet) {
  ASSERT_TRUE(server_
                  ->Command({"ACL", "SETUSER", "videotask", "on", ">pw", "resetkeys", "~vt:*",
                             "resetchannels", "&vt:*", "&videotask:keepalive", "-@all", "+ping",
                             "+select", "+get", "+set", "+del", "+pttl", "+pexpire", "+time",
                             "+publish", "+subscribe", "+evalsha", "+script|load", "+mget",
                             "+zadd", "+zcard", "+zremrangebyscore", "+zrem"})
                  .ok());
  auto options = [&] {
    FleetGateOptions o = Options(/*qps=*/50);
    o.redis.url.username = "videotask";
    o.redis.url.password = "pw";
    return o;
  };
  auto holder = Gate(options());
  auto follower = Gate(options());
  Heard heard;
  follower->SetListener(heard.Listener());
  holder->SetListener([](VideoTask) {});
  ASSERT_TRUE(Eventually([&] { return follower->client()->stats().subscribes == 1; }));
  ASSERT_EQ(Admit(*holder, "t", true).kind, Kind::kPoll);
  ASSERT_EQ(Admit(*follower, "t", true).kind, Kind::kFollow);
  absl::SleepFor(absl::Milliseconds(50));  // the SUBSCRIBE is answered
  holder->Observed(Task("t", videotask::v1::VIDEO_TASK_STATUS_PROCESSING));
  ASSERT_TRUE(Eventually([&] { return heard.Last().has_value(); }));
  for (int i = 0; i < 5; ++i) Admit(*holder, absl::StrCat("b", i), true);
  EXPECT_EQ(holder->client()->stats().faults, 0);
  EXPECT_EQ(follower->client()->stats().faults, 0);
  EXPECT_TRUE(holder->up());
  EXPECT_TRUE(follower->up());
}

}  // namespace
}  // namespace videotask::fleet
