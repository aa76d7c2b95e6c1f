#include "server/fleet/redis_task_store.h"

#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "server/base/clock.h"
#include "server/fleet/fleet_keys.h"
#include "server/fleet/redis_client.h"
#include "server/fleet/signed_state.h"
#include "tests/testing/redis_server.h"

namespace videotask::fleet {
namespace {

using ::videotask::testing::RedisServer;
using videotask::v1::VideoTask;
using videotask::v1::VideoTaskStatus;
using PutResult = RedisTaskStore::PutResult;

constexpr VideoTaskStatus kQueued = videotask::v1::VIDEO_TASK_STATUS_QUEUED;
constexpr VideoTaskStatus kProcessing = videotask::v1::VIDEO_TASK_STATUS_PROCESSING;
constexpr VideoTaskStatus kCompleted = videotask::v1::VIDEO_TASK_STATUS_COMPLETED;
constexpr VideoTaskStatus kFailed = videotask::v1::VIDEO_TASK_STATUS_FAILED;

VideoTask Task(const std::string& id, VideoTaskStatus s) {
  VideoTask t;
  t.set_id(id);
  t.set_status(s);
  if (s == kCompleted) t.set_video_url("https://cdn.example.com/" + id + ".mp4");
  return t;
}

template <typename T, typename F>
absl::StatusOr<T> Sync(F&& start) {
  absl::Notification n;
  absl::StatusOr<T> out = absl::InternalError("lost");
  start([&](absl::StatusOr<T> r) {
    out = std::move(r);
    n.Notify();
  });
  if (!n.WaitForNotificationWithTimeout(absl::Seconds(5))) ADD_FAILURE() << "done never ran";
  return out;
}

int64_t c_commands(RedisClient& c) { return c.stats().commands; }

class RedisTaskStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto s = RedisServer::Start();
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = *std::move(s);
  }
  std::unique_ptr<RedisClient> Connect() {
    RedisClientOptions o;
    o.url = *RedisUrl::Parse(server_->Url());
    auto c = std::make_unique<RedisClient>(o);
    EXPECT_TRUE(c->WaitUntilUp(absl::Seconds(5)));
    return c;
  }
  absl::StatusOr<PutResult> Put(RedisTaskStore& s, const VideoTask& t) {
    return Sync<PutResult>([&](auto done) { s.Put(t, std::move(done)); });
  }
  absl::StatusOr<std::optional<VideoTask>> Get(RedisTaskStore& s, const std::string& id) {
    return Sync<std::optional<VideoTask>>([&](auto done) { s.Get(id, std::move(done)); });
  }
  absl::StatusOr<bool> Lease(RedisTaskStore& s, const std::string& op, const std::string& id) {
    return Sync<bool>([&](auto done) {
      if (op == "acquire") s.AcquireLease(id, std::move(done));
      if (op == "renew") s.RenewLease(id, std::move(done));
      if (op == "release") s.ReleaseLease(id, std::move(done));
    });
  }

  // The deletion of a rejected entry follows its read (another connection
  // here): bounded wait.
  bool Gone(const std::string& key) {
    const absl::Time end = absl::Now() + absl::Seconds(5);
    while (*server_->Command({"EXISTS", key}) != "0") {
      if (absl::Now() > end) return false;
      absl::SleepFor(absl::Milliseconds(2));
    }
    return true;
  }

  const FleetKeys keys_{"api-key", "api.example.com"};
  std::unique_ptr<RedisServer> server_;
};

TEST_F(RedisTaskStoreTest, PutGetAndTtls) {
  auto c = Connect();
  RedisTaskStore::Options o;
  o.running_ttl = absl::Seconds(90);
  o.terminal_ttl = absl::Hours(1);
  RedisTaskStore store(c.get(), keys_, o);
  auto missing = Get(store, "proj_1");
  ASSERT_TRUE(missing.ok()) << missing.status();
  EXPECT_FALSE(missing->has_value());
  EXPECT_EQ(*Put(store, Task("proj_1", kProcessing)), PutResult::kPublished);
  auto got = Get(store, "proj_1");
  ASSERT_TRUE(got.ok() && got->has_value()) << got.status();
  EXPECT_EQ((*got)->status(), kProcessing);
  int pttl = std::stoi(*server_->Command({"PTTL", keys_.StateKey("proj_1")}));
  EXPECT_GT(pttl, 80000);
  EXPECT_LE(pttl, 90000);
  EXPECT_EQ(*Put(store, Task("proj_1", kCompleted)), PutResult::kPublished);
  pttl = std::stoi(*server_->Command({"PTTL", keys_.StateKey("proj_1")}));
  EXPECT_GT(pttl, 3500 * 1000);
  got = Get(store, "proj_1");
  ASSERT_TRUE(got.ok() && got->has_value());
  EXPECT_EQ((*got)->video_url(), "https://cdn.example.com/proj_1.mp4");
  EXPECT_EQ(Put(store, VideoTask()).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(RedisTaskStoreTest, StatusOnlyMovesForwardAndTerminalIsSticky) {
  auto c = Connect();
  RedisTaskStore store(c.get(), keys_, {});
  EXPECT_EQ(*Put(store, Task("t", kQueued)), PutResult::kPublished);
  EXPECT_EQ(*Put(store, Task("t", kQueued)), PutResult::kRefreshed);
  EXPECT_EQ(*Put(store, Task("t", kProcessing)), PutResult::kPublished);
  EXPECT_EQ(*Put(store, Task("t", kQueued)), PutResult::kIgnored);
  EXPECT_EQ(*Put(store, Task("t", kFailed)), PutResult::kPublished);
  EXPECT_EQ(*Put(store, Task("t", kCompleted)), PutResult::kIgnored);
  EXPECT_EQ(*Put(store, Task("t", kFailed)), PutResult::kIgnored);
  EXPECT_EQ(*Put(store, Task("t", kProcessing)), PutResult::kIgnored);
  auto got = Get(store, "t");
  ASSERT_TRUE(got.ok() && got->has_value());
  EXPECT_EQ((*got)->status(), kFailed);
}

TEST_F(RedisTaskStoreTest, ForgedOrMovedEntriesAreRejected) {
  auto c = Connect();
  RedisTaskStore store(c.get(), keys_, {});
  // Someone with write access to Redis but not the API key.
  VideoTask forged = Task("a", kCompleted);
  forged.set_video_url("https://evil.example.com/x.mp4");
  std::string body;
  forged.SerializeToString(&body);
  ASSERT_TRUE(server_->Command({"SET", keys_.StateKey("a"), "3" + body}).ok());
  EXPECT_EQ(Get(store, "a").status().code(), absl::StatusCode::kDataLoss);
  const SignedState other_fleet(FleetKeys("other-key", "api.example.com").signing_key());
  ASSERT_TRUE(server_->Command({"SET", keys_.StateKey("a"), "3" + other_fleet.Sign(forged)}).ok());
  EXPECT_EQ(Get(store, "a").status().code(), absl::StatusCode::kPermissionDenied);
  // A genuine entry of task b copied under task a's key.
  EXPECT_EQ(*Put(store, Task("b", kCompleted)), PutResult::kPublished);
  const std::string b_value = *server_->Command({"GET", keys_.StateKey("b")});
  ASSERT_TRUE(server_->Command({"SET", keys_.StateKey("a"), b_value}).ok());
  EXPECT_EQ(Get(store, "a").status().code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(server_->Command({"SET", keys_.StateKey("a"), ""}).ok());
  EXPECT_EQ(Get(store, "a").status().code(), absl::StatusCode::kDataLoss);
}

// Anyone who can write to Redis can write back an older signed entry, or
// change the status digit the Put script trusts (outside the MAC): a stored
// terminal state still answers, an entry older than its TTL by its signed
// observe time is rejected, a digit that differs from the signed status is
// rejected, and both are deleted so the Put script is not pinned by them.
TEST_F(RedisTaskStoreTest, ReplayedOrRedigitedEntriesAreRejected) {
  auto c = Connect();
  SimulatedClock clock;
  RedisTaskStore::Options o;
  o.running_ttl = absl::Seconds(90);
  o.clock = &clock;
  RedisTaskStore store(c.get(), keys_, o);
  ASSERT_EQ(*Put(store, Task("r", kQueued)), PutResult::kPublished);
  const std::string queued = *server_->Command({"GET", keys_.StateKey("r")});
  ASSERT_EQ(*Put(store, Task("r", kCompleted)), PutResult::kPublished);
  // Written back at once: the terminal key still answers COMPLETED.
  ASSERT_TRUE(server_->Command({"SET", keys_.StateKey("r"), queued}).ok());
  auto got = Get(store, "r");
  ASSERT_TRUE(got.ok() && got->has_value()) << got.status();
  EXPECT_EQ((*got)->status(), kCompleted);
  // ... and only a terminal entry is believed at the terminal key.
  ASSERT_TRUE(server_->Command({"SET", keys_.StateKey("r"), "3" + queued.substr(1)}).ok());
  ASSERT_TRUE(server_->Command({"SET", keys_.TerminalKey("r"), queued}).ok());
  EXPECT_EQ(Get(store, "r").status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(Gone(keys_.TerminalKey("r")));
  EXPECT_TRUE(Gone(keys_.StateKey("r")));

  // An entry older than its TTL by its signed observe time: a replay.
  ASSERT_EQ(*Put(store, Task("s", kProcessing)), PutResult::kPublished);
  const std::string processing = *server_->Command({"GET", keys_.StateKey("s")});
  clock.Advance(absl::Seconds(90) + o.clock_skew - absl::Seconds(1));
  ASSERT_TRUE(Get(store, "s").ok()) << "still within its TTL";
  clock.Advance(absl::Seconds(2));
  EXPECT_EQ(Get(store, "s").status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(Gone(keys_.StateKey("s")));
  ASSERT_TRUE(server_->Command({"SET", keys_.StateKey("s"), processing}).ok());
  EXPECT_EQ(Get(store, "s").status().code(), absl::StatusCode::kFailedPrecondition);

  // A terminal digit on a running entry would pin it against every later
  // Put: rejected and deleted, so the next Put is stored.
  ASSERT_EQ(*Put(store, Task("p", kQueued)), PutResult::kPublished);
  const std::string p_queued = *server_->Command({"GET", keys_.StateKey("p")});
  ASSERT_TRUE(server_->Command({"SET", keys_.StateKey("p"), "4" + p_queued.substr(1)}).ok());
  EXPECT_EQ(Get(store, "p").status().code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(Gone(keys_.StateKey("p")));
  EXPECT_EQ(*Put(store, Task("p", kProcessing)), PutResult::kPublished);
  got = Get(store, "p");
  ASSERT_TRUE(got.ok() && got->has_value()) << got.status();
  EXPECT_EQ((*got)->status(), kProcessing);
}

TEST_F(RedisTaskStoreTest, RenewsManyLeasesInOneCall) {
  auto ca = Connect();
  auto cb = Connect();
  RedisTaskStore::Options o;
  o.lease_ttl = absl::Seconds(30);
  RedisTaskStore a(ca.get(), keys_, o);
  RedisTaskStore b(cb.get(), keys_, o);
  EXPECT_EQ(*Lease(a, "acquire", "x"), true);
  EXPECT_EQ(*Lease(b, "acquire", "y"), true);
  EXPECT_EQ(*Lease(a, "acquire", "z"), true);
  ASSERT_TRUE(server_->Command({"PEXPIRE", keys_.LeaseKey("x"), "100"}).ok());
  const int64_t before = c_commands(*ca);
  auto ours = Sync<std::vector<bool>>(
      [&](auto done) { a.RenewLeases({"x", "y", "z", "gone"}, std::move(done)); });
  ASSERT_TRUE(ours.ok()) << ours.status();
  EXPECT_EQ(*ours, (std::vector<bool>{true, false, true, false}));
  EXPECT_GT(std::stoi(*server_->Command({"PTTL", keys_.LeaseKey("x")})), 29000);
  EXPECT_EQ(*server_->Command({"GET", keys_.LeaseKey("y")}), b.owner());
  // One EVALSHA; the first time NOSCRIPT, then SCRIPT LOAD and EVALSHA.
  EXPECT_LE(c_commands(*ca) - before, 3);
}

// A follower's round: one script call for many tasks takes each free lease
// and reads each state (the terminal one first), verified.
TEST_F(RedisTaskStoreTest, FollowRoundTakesFreeLeasesAndReadsStates) {
  auto ca = Connect();
  auto cb = Connect();
  RedisTaskStore a(ca.get(), keys_, {});
  RedisTaskStore b(cb.get(), keys_, {});
  ASSERT_TRUE(*Lease(a, "acquire", "held"));
  ASSERT_EQ(*Put(a, Task("held", kProcessing)), PutResult::kPublished);
  ASSERT_EQ(*Put(a, Task("done", kCompleted)), PutResult::kPublished);
  ASSERT_TRUE(server_->Command({"SET", keys_.StateKey("bad"), "2vts1-forged"}).ok());
  const int64_t before = cb->stats().commands;
  auto round = Sync<std::vector<RedisTaskStore::Followed>>([&](auto done) {
    b.FollowRound({"held", "free", "done", "bad"}, std::move(done));
  });
  ASSERT_TRUE(round.ok()) << round.status();
  ASSERT_EQ(round->size(), 4u);
  EXPECT_FALSE((*round)[0].acquired);
  ASSERT_TRUE((*round)[0].state.has_value());
  EXPECT_EQ((*round)[0].state->status(), kProcessing);
  EXPECT_TRUE((*round)[1].acquired);
  EXPECT_FALSE((*round)[1].state.has_value());
  EXPECT_EQ(*server_->Command({"GET", keys_.LeaseKey("free")}), b.owner());
  ASSERT_TRUE((*round)[2].state.has_value());
  EXPECT_EQ((*round)[2].state->status(), kCompleted);
  EXPECT_FALSE((*round)[3].state.has_value());
  EXPECT_EQ((*round)[3].rejected.code(), absl::StatusCode::kDataLoss);
  // One EVALSHA; the first time NOSCRIPT, then SCRIPT LOAD and EVALSHA.
  EXPECT_LE(cb->stats().commands - before, 3);
  EXPECT_EQ(*server_->Command({"GET", keys_.LeaseKey("held")}), a.owner());
}

// A release is published for followers; someone else's release is not.
TEST_F(RedisTaskStoreTest, ReleasesArePublished) {
  auto ca = Connect();
  auto cb = Connect();
  RedisTaskStore a(ca.get(), keys_, {});
  RedisTaskStore b(cb.get(), keys_, {});
  absl::Mutex mu;
  std::vector<std::string> released;
  b.SubscribeReleases([&](const std::string& id) {
    absl::MutexLock lock(&mu);
    released.push_back(id);
  });
  absl::SleepFor(absl::Milliseconds(200));  // subscribed
  ASSERT_TRUE(*Lease(a, "acquire", "x"));
  EXPECT_FALSE(*Lease(b, "release", "x"));
  EXPECT_TRUE(*Lease(a, "release", "x"));
  absl::MutexLock lock(&mu);
  auto one = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return !released.empty(); };
  ASSERT_TRUE(mu.AwaitWithTimeout(absl::Condition(&one), absl::Seconds(5)));
  EXPECT_EQ(released, std::vector<std::string>{"x"});
}

TEST_F(RedisTaskStoreTest, OtherSidecarsSeePublishedStatesInOrder) {
  auto ca = Connect();
  auto cb = Connect();
  RedisTaskStore a(ca.get(), keys_, {});
  RedisTaskStore b(cb.get(), keys_, {});
  absl::Mutex mu;
  std::vector<std::string> seen;
  int rejected = 0;
  bool subscribed = false;
  b.Subscribe(
      [&](const VideoTask& t) {
        absl::MutexLock lock(&mu);
        seen.push_back(absl::StrCat(t.id(), ":", t.status()));
      },
      [&](const absl::Status&) {
        absl::MutexLock lock(&mu);
        ++rejected;
      },
      [&] {
        absl::MutexLock lock(&mu);
        subscribed = true;
      });
  {
    absl::MutexLock lock(&mu);
    ASSERT_TRUE(mu.AwaitWithTimeout(absl::Condition(&subscribed), absl::Seconds(5)));
  }
  for (VideoTaskStatus s : {kQueued, kQueued, kProcessing, kCompleted, kProcessing}) {
    ASSERT_TRUE(Put(a, Task("p", s)).ok());
  }
  // A forged message on the channel.
  ASSERT_TRUE(server_->Command({"PUBLISH", keys_.StatesChannel(), "vts1forged"}).ok());
  absl::MutexLock lock(&mu);
  auto cond = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return seen.size() >= 3 && rejected >= 1; };
  ASSERT_TRUE(mu.AwaitWithTimeout(absl::Condition(&cond), absl::Seconds(5)));
  EXPECT_EQ(seen, (std::vector<std::string>{"p:1", "p:2", "p:3"}));
  EXPECT_EQ(rejected, 1);
}

TEST_F(RedisTaskStoreTest, LeaseOnlyForItsOwnerAndExpires) {
  auto ca = Connect();
  auto cb = Connect();
  RedisTaskStore::Options o;
  o.lease_ttl = absl::Milliseconds(300);
  RedisTaskStore a(ca.get(), keys_, o);
  RedisTaskStore b(cb.get(), keys_, o);
  ASSERT_NE(a.owner(), b.owner());
  EXPECT_EQ(*Lease(a, "acquire", "t"), true);
  EXPECT_EQ(*Lease(a, "acquire", "t"), true);  // already ours: extended
  EXPECT_EQ(*Lease(b, "acquire", "t"), false);
  EXPECT_EQ(*Lease(b, "renew", "t"), false);
  EXPECT_EQ(*Lease(b, "release", "t"), false);
  EXPECT_EQ(*Lease(a, "renew", "t"), true);
  EXPECT_EQ(*Lease(a, "release", "t"), true);
  EXPECT_EQ(*Lease(a, "release", "t"), false);
  EXPECT_EQ(*Lease(b, "acquire", "t"), true);
  // b dies (stops renewing): the lease lapses and a takes it; b cannot
  // renew or release a's lease afterwards.
  absl::SleepFor(absl::Milliseconds(400));
  EXPECT_EQ(*Lease(a, "acquire", "t"), true);
  EXPECT_EQ(*Lease(b, "renew", "t"), false);
  EXPECT_EQ(*Lease(b, "release", "t"), false);
  EXPECT_EQ(*server_->Command({"GET", keys_.LeaseKey("t")}), a.owner());
  const int pttl = std::stoi(*server_->Command({"PTTL", keys_.LeaseKey("t")}));
  EXPECT_GT(pttl, 0);
  EXPECT_LE(pttl, 300);
}

TEST_F(RedisTaskStoreTest, RedisDownFailsFast) {
  auto c = Connect();
  RedisTaskStore store(c.get(), keys_, {});
  server_->Kill();
  const absl::Time end = absl::Now() + absl::Seconds(2);
  while (c->up() && absl::Now() < end) absl::SleepFor(absl::Milliseconds(10));
  EXPECT_EQ(Put(store, Task("x", kQueued)).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(Get(store, "x").status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(Lease(store, "acquire", "x").status().code(), absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace videotask::fleet
