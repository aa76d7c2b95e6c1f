#include "server/hub/poll_hub.h"

#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "gtest/gtest.h"
#include "server/archive/archiver.h"
#include "server/base/clock.h"
#include "server/base/metrics.h"
#include "server/hub/poll_gate.h"

namespace videotask {
namespace {

using videotask::v1::VideoTask;
using videotask::v1::VideoTaskStatus;
using videotask::v1::WatchVideoTaskResponse;
constexpr auto kQueued = videotask::v1::VIDEO_TASK_STATUS_QUEUED;
constexpr auto kProcessing = videotask::v1::VIDEO_TASK_STATUS_PROCESSING;
constexpr auto kCompleted = videotask::v1::VIDEO_TASK_STATUS_COMPLETED;
constexpr auto kFailed = videotask::v1::VIDEO_TASK_STATUS_FAILED;
constexpr auto kUnspecified = videotask::v1::VIDEO_TASK_STATUS_UNSPECIFIED;
constexpr auto kSnapshot = WatchVideoTaskResponse::EVENT_TYPE_SNAPSHOT;
constexpr auto kTransition = WatchVideoTaskResponse::EVENT_TYPE_TRANSITION;
constexpr auto kHeartbeat = WatchVideoTaskResponse::EVENT_TYPE_HEARTBEAT;

// An upstream whose requests stay open until the test answers them.
class FakeUpstream : public UpstreamClient {
 public:
  void Fetch(const std::string& id, Callback done) override {
    absl::MutexLock lock(&mu_);
    pending_.push_back({id, std::move(done)});
    ++counts_[id];
    ++total_;
  }
  void Reply(const std::string& id, UpstreamResult result) {
    Callback cb;
    {
      absl::MutexLock lock(&mu_);
      for (auto it = pending_.begin(); it != pending_.end(); ++it) {
        if (it->first == id) {
          cb = std::move(it->second);
          pending_.erase(it);
          break;
        }
      }
    }
    ASSERT_TRUE(cb) << "no request in flight for " << id;
    std::move(cb)(std::move(result));
  }
  std::vector<std::string> PendingIds() {
    absl::MutexLock lock(&mu_);
    std::vector<std::string> ids;
    for (const auto& p : pending_) ids.push_back(p.first);
    return ids;
  }
  int Count(const std::string& id) {
    absl::MutexLock lock(&mu_);
    return counts_[id];
  }
  int Total() {
    absl::MutexLock lock(&mu_);
    return total_;
  }

 private:
  absl::Mutex mu_;
  std::deque<std::pair<std::string, Callback>> pending_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, int> counts_ ABSL_GUARDED_BY(mu_);
  int total_ ABSL_GUARDED_BY(mu_) = 0;
};

UpstreamResult Ok(VideoTaskStatus status) {
  UpstreamResult r;
  r.outcome = UpstreamOutcome::kOk;
  r.code = "200";
  r.task.set_status(status);
  if (status == kCompleted) r.task.set_video_url("https://cdn.invalid/v.mp4");
  return r;
}

UpstreamResult Outcome(UpstreamOutcome outcome, std::string code) {
  UpstreamResult r;
  r.outcome = outcome;
  r.code = std::move(code);
  r.detail = "simulated";
  return r;
}

struct Seen {
  WatchVideoTaskResponse::EventType type;
  VideoTaskStatus status;
  VideoTaskStatus previous;
};

class RecordingSink : public WatchSink {
 public:
  void OnEvent(std::shared_ptr<const TaskEvent> event) override {
    absl::MutexLock lock(&mu_);
    ASSERT_FALSE(ended_) << "event after the end of the watch";
    events_.push_back({event->response.type(), event->response.task().status(),
                       event->response.previous_status()});
    VideoTask parsed;
    EXPECT_TRUE(parsed.ParseFromString(event->serialized));
    if (event->terminal()) ended_ = true;
  }
  void OnError(const absl::Status& status) override {
    absl::MutexLock lock(&mu_);
    ASSERT_FALSE(ended_) << "error after the end of the watch";
    error_ = status;
    ended_ = true;
  }
  std::vector<Seen> events() {
    absl::MutexLock lock(&mu_);
    return events_;
  }
  absl::Status error() {
    absl::MutexLock lock(&mu_);
    return error_;
  }
  bool ended() {
    absl::MutexLock lock(&mu_);
    return ended_;
  }

 private:
  absl::Mutex mu_;
  std::vector<Seen> events_ ABSL_GUARDED_BY(mu_);
  absl::Status error_ ABSL_GUARDED_BY(mu_);
  bool ended_ ABSL_GUARDED_BY(mu_) = false;
};

class PollHubTest : public ::testing::Test {
 protected:
  void MakeHub(PollHubOptions options = {}) {
    auto hub = PollHub::CreateForTest(options, &upstream_, &clock_, &metrics_, 42);
    ASSERT_TRUE(hub.ok()) << hub.status();
    hub_ = std::move(*hub);
  }
  std::shared_ptr<RecordingSink> WatchOk(const std::string& id) {
    auto sink = std::make_shared<RecordingSink>();
    auto wid = hub_->Watch(id, sink);
    EXPECT_TRUE(wid.ok()) << wid.status();
    last_watch_ = wid.ok() ? *wid : 0;
    return sink;
  }
  void Advance(absl::Duration d) {
    clock_.Advance(d);
    hub_->RunDue();
  }
  // Advances the clock to the hub's next wakeup and runs it.
  absl::Duration AdvanceToNextWakeup() {
    const absl::Time next = hub_->NextWakeup();
    EXPECT_NE(next, absl::InfiniteFuture());
    const absl::Duration d = next - clock_.Monotonic();
    clock_.AdvanceTo(next);
    hub_->RunDue();
    return d;
  }

  SimulatedClock clock_;
  FakeUpstream upstream_;
  MetricsRegistry metrics_;
  std::unique_ptr<PollHub> hub_;
  PollHub::WatchId last_watch_ = 0;
};

TEST_F(PollHubTest, FirstPollAtOnceThenEveryIntervalWithinJitter) {
  PollHubOptions o;
  o.poll_interval = absl::Seconds(30);
  o.poll_jitter = 0.1;
  MakeHub(o);
  WatchOk("t1");
  hub_->RunDue();
  ASSERT_EQ(upstream_.Count("t1"), 1);  // at once, no clock movement
  upstream_.Reply("t1", Ok(kQueued));
  for (int i = 0; i < 20; ++i) {
    const absl::Duration wait = AdvanceToNextWakeup();
    // Heartbeats (15 s) may wake the hub in between; only count polls.
    if (upstream_.PendingIds().empty()) continue;
    upstream_.Reply("t1", Ok(kQueued));
    (void)wait;
  }
  EXPECT_GT(upstream_.Count("t1"), 5);
}

TEST_F(PollHubTest, JitterKeepsPollsWithinBoundsAndOutOfLockStep) {
  PollHubOptions o;
  o.poll_interval = absl::Seconds(30);
  o.poll_jitter = 0.1;
  o.max_upstream_qps = 1000;
  o.max_inflight = 1000;
  o.heartbeat_interval = absl::Hours(1);
  MakeHub(o);
  const absl::Time start = clock_.Now();
  for (int i = 0; i < 50; ++i) WatchOk("t" + std::to_string(i));
  hub_->RunDue();
  ASSERT_EQ(upstream_.Total(), 50);
  for (int i = 0; i < 50; ++i) upstream_.Reply("t" + std::to_string(i), Ok(kQueued));
  // Walk time in 100 ms steps and record when each task is polled again.
  std::map<std::string, absl::Duration> second_poll;
  while (second_poll.size() < 50 && clock_.Now() - start < absl::Seconds(40)) {
    Advance(absl::Milliseconds(100));
    for (const std::string& id : upstream_.PendingIds()) {
      second_poll[id] = clock_.Now() - start;
      upstream_.Reply(id, Ok(kQueued));
    }
  }
  ASSERT_EQ(second_poll.size(), 50u);
  std::set<int64_t> distinct;
  for (const auto& [id, d] : second_poll) {
    EXPECT_GE(d, absl::Seconds(27)) << id;
    EXPECT_LE(d, absl::Seconds(33) + absl::Milliseconds(100)) << id;
    distinct.insert(absl::ToInt64Milliseconds(d));
  }
  EXPECT_GT(distinct.size(), 10u) << "polls are in lock-step";
}

TEST_F(PollHubTest, ManyWatchersOneRequestAndEveryTransitionInOrder) {
  PollHubOptions o;
  o.poll_interval = absl::Seconds(1);
  MakeHub(o);
  std::vector<std::shared_ptr<RecordingSink>> sinks;
  for (int i = 0; i < 100; ++i) sinks.push_back(WatchOk("same"));
  hub_->RunDue();
  EXPECT_EQ(upstream_.Count("same"), 1);
  upstream_.Reply("same", Ok(kQueued));
  // A late watcher gets the current state at once.
  auto late = WatchOk("same");
  ASSERT_EQ(late->events().size(), 1u);
  EXPECT_EQ(late->events()[0].type, kSnapshot);
  for (VideoTaskStatus s : {kProcessing, kProcessing, kCompleted}) {
    Advance(absl::Milliseconds(1100));
    ASSERT_EQ(upstream_.PendingIds().size(), 1u);
    upstream_.Reply("same", Ok(s));
  }
  EXPECT_EQ(upstream_.Count("same"), 4);
  sinks.push_back(late);
  for (auto& sink : sinks) {
    const auto ev = sink->events();
    ASSERT_EQ(ev.size(), 3u);
    EXPECT_EQ(ev[0].type, kSnapshot);
    EXPECT_EQ(ev[0].status, kQueued);
    EXPECT_EQ(ev[1].type, kTransition);
    EXPECT_EQ(ev[1].status, kProcessing);
    EXPECT_EQ(ev[1].previous, kQueued);
    EXPECT_EQ(ev[2].type, kTransition);
    EXPECT_EQ(ev[2].status, kCompleted);
    EXPECT_EQ(ev[2].previous, kProcessing);
    EXPECT_TRUE(sink->ended());
  }
  // Terminal: never polled again.
  Advance(absl::Seconds(60));
  EXPECT_EQ(upstream_.Count("same"), 4);
  EXPECT_EQ(hub_->GetStats().active_watches, 0);
}

TEST_F(PollHubTest, RateCapHoldsInEverySlidingWindowAndEarliestGoFirst) {
  PollHubOptions o;
  o.poll_interval = absl::Seconds(1);
  o.max_upstream_qps = 5;
  o.max_inflight = 100;
  MakeHub(o);
  for (int i = 0; i < 20; ++i) {
    WatchOk("t" + std::to_string(i));
    clock_.Advance(absl::Milliseconds(1));  // t0 is due earliest
  }
  std::vector<absl::Time> starts;
  std::vector<std::string> order;
  const absl::Time start = clock_.Now();
  while (clock_.Now() - start < absl::Seconds(10)) {
    hub_->RunDue();
    for (const std::string& id : upstream_.PendingIds()) {
      starts.push_back(clock_.Now());
      order.push_back(id);
      upstream_.Reply(id, Ok(kQueued));
    }
    clock_.Advance(absl::Milliseconds(50));
  }
  ASSERT_GT(starts.size(), 40u);
  for (size_t i = 5; i < starts.size(); ++i) {
    EXPECT_GE(starts[i] - starts[i - 5], absl::Seconds(1)) << "request " << i;
  }
  // The first 20 requests cover every task once, earliest due first.
  for (int i = 0; i < 20; ++i) EXPECT_EQ(order[i], "t" + std::to_string(i));
  // Nobody starves: each task was polled at least twice in 10 s.
  for (int i = 0; i < 20; ++i) EXPECT_GE(upstream_.Count("t" + std::to_string(i)), 2);
}

TEST_F(PollHubTest, ARequestHoldsItsRateSlotUntilOneSecondAfterItEnds) {
  PollHubOptions o;
  o.max_upstream_qps = 2;
  o.max_inflight = 10;
  MakeHub(o);
  WatchOk("a");
  WatchOk("b");
  WatchOk("c");
  hub_->RunDue();
  EXPECT_EQ(upstream_.Total(), 2);
  Advance(absl::Milliseconds(1500));
  EXPECT_EQ(upstream_.Total(), 2) << "both slots are held while in flight";
  upstream_.Reply("a", Ok(kQueued));
  hub_->RunDue();
  EXPECT_EQ(upstream_.Total(), 2) << "a's slot is held for 1 s after it ended";
  EXPECT_EQ(hub_->NextWakeup(), clock_.Monotonic() + absl::Seconds(1));
  Advance(absl::Seconds(1));
  EXPECT_EQ(upstream_.Total(), 3);
}

TEST_F(PollHubTest, MaxInflightBoundsConcurrentRequests) {
  PollHubOptions o;
  o.max_upstream_qps = 100;
  o.max_inflight = 3;
  MakeHub(o);
  for (int i = 0; i < 10; ++i) WatchOk("t" + std::to_string(i));
  hub_->RunDue();
  EXPECT_EQ(upstream_.PendingIds().size(), 3u);
  upstream_.Reply("t0", Ok(kQueued));
  hub_->RunDue();
  EXPECT_EQ(upstream_.PendingIds().size(), 3u);
  EXPECT_EQ(upstream_.Total(), 4);
}

TEST_F(PollHubTest, RateLimitPausesAllTrafficForRetryAfter) {
  PollHubOptions o;
  o.poll_interval = absl::Seconds(1);
  o.max_upstream_qps = 1;
  MakeHub(o);
  WatchOk("a");
  WatchOk("b");
  hub_->RunDue();
  ASSERT_EQ(upstream_.PendingIds(), std::vector<std::string>{"a"});
  UpstreamResult r = Outcome(UpstreamOutcome::kRateLimited, "429");
  r.retry_after = absl::Seconds(2);
  upstream_.Reply("a", r);
  EXPECT_EQ(hub_->NextWakeup(), clock_.Monotonic() + absl::Seconds(2));
  for (int i = 0; i < 19; ++i) {
    Advance(absl::Milliseconds(100));
    EXPECT_EQ(upstream_.Total(), 1) << "request during the pause";
  }
  Advance(absl::Milliseconds(100));
  EXPECT_EQ(upstream_.Total(), 2);
  EXPECT_EQ(metrics_.GetCounter("videotask_rate_limited_total", "")->value(), 1u);
}

// UpstreamBudget: a create holds a slot of the same window as polls.
TEST_F(PollHubTest, BudgetSlotsComeFromThePollWindow) {
  PollHubOptions o;
  o.poll_interval = absl::Seconds(1);
  o.max_upstream_qps = 2;
  MakeHub(o);
  ASSERT_EQ(*hub_->Acquire(), absl::ZeroDuration());  // a create in flight
  WatchOk("a");
  WatchOk("b");
  hub_->RunDue();
  ASSERT_EQ(upstream_.PendingIds(), std::vector<std::string>{"a"}) << "the create's slot";
  // Full: the next create waits, then gets the slot the first one frees
  // one second after it ends.
  absl::StatusOr<absl::Duration> wait = hub_->Acquire();
  ASSERT_TRUE(wait.ok());
  EXPECT_GT(*wait, absl::ZeroDuration());
  hub_->Release(false, std::nullopt);
  EXPECT_EQ(*hub_->Acquire(), absl::Seconds(1));
  Advance(absl::Milliseconds(999));
  EXPECT_EQ(upstream_.PendingIds().size(), 1u) << "b polled in the create's slot";
  Advance(absl::Milliseconds(1));
  EXPECT_EQ(upstream_.PendingIds().size(), 2u) << "b gets the slot the create freed";
  EXPECT_GT(*hub_->Acquire(), absl::ZeroDuration());
  upstream_.Reply("a", Ok(kFailed));  // final: "a" is not polled again
  EXPECT_EQ(*hub_->Acquire(), absl::Seconds(1));
  Advance(absl::Seconds(1));
  EXPECT_EQ(*hub_->Acquire(), absl::ZeroDuration());
  hub_->Release(false, std::nullopt);
}

// UpstreamBudget: a create's 429 pauses polls, and a poll's 429 pauses creates.
TEST_F(PollHubTest, BudgetRateLimitPausesPollsAndCreates) {
  PollHubOptions o;
  o.poll_interval = absl::Seconds(1);
  o.max_upstream_qps = 5;
  MakeHub(o);
  ASSERT_EQ(*hub_->Acquire(), absl::ZeroDuration());
  hub_->Release(true, absl::Seconds(3));
  EXPECT_EQ(*hub_->Acquire(), absl::Seconds(3));
  WatchOk("a");
  hub_->RunDue();
  EXPECT_EQ(upstream_.Total(), 0) << "poll during a create's 429 pause";
  Advance(absl::Seconds(3));
  ASSERT_EQ(upstream_.Total(), 1);
  UpstreamResult r = Outcome(UpstreamOutcome::kRateLimited, "429");
  r.retry_after = absl::Seconds(2);
  upstream_.Reply("a", r);
  EXPECT_EQ(*hub_->Acquire(), absl::Seconds(2)) << "create during a poll's 429 pause";
  EXPECT_EQ(metrics_.GetCounter("videotask_rate_limited_total", "")->value(), 2u);
  hub_->Drain();
  EXPECT_EQ(hub_->Acquire().status().code(), absl::StatusCode::kUnavailable);
}

TEST_F(PollHubTest, RateLimitWithoutRetryAfterBacksOffExponentially) {
  PollHubOptions o;
  o.poll_interval = absl::Seconds(1);
  MakeHub(o);
  WatchOk("a");
  hub_->RunDue();
  std::vector<absl::Duration> pauses;
  for (int i = 0; i < 3; ++i) {
    upstream_.Reply("a", Outcome(UpstreamOutcome::kRateLimited, "429"));
    pauses.push_back(AdvanceToNextWakeup());
    ASSERT_EQ(upstream_.PendingIds().size(), 1u);
  }
  EXPECT_GE(pauses[0], absl::Seconds(4));
  EXPECT_LE(pauses[0], absl::Seconds(6));
  EXPECT_GE(pauses[1], absl::Seconds(8));
  EXPECT_LE(pauses[1], absl::Seconds(12));
  EXPECT_GE(pauses[2], absl::Seconds(16));
  EXPECT_LE(pauses[2], absl::Seconds(24));
}

TEST_F(PollHubTest, TransientErrorsBackOffAndWatchersOnlySeeHeartbeats) {
  PollHubOptions o;
  o.poll_interval = absl::Seconds(10);
  o.heartbeat_interval = absl::Seconds(5);
  o.backoff_max = absl::Seconds(60);
  MakeHub(o);
  auto sink = WatchOk("t");
  hub_->RunDue();
  upstream_.Reply("t", Ok(kQueued));
  Advance(absl::Seconds(11));
  ASSERT_EQ(upstream_.PendingIds().size(), 1u);
  const absl::Time failed_at = clock_.Now();
  upstream_.Reply("t", Outcome(UpstreamOutcome::kTransient, "503"));
  // Next poll after 10 s * 2 (+-20%), not after the interval.
  absl::Time next_poll = absl::InfiniteFuture();
  while (clock_.Now() - failed_at < absl::Seconds(30)) {
    Advance(absl::Milliseconds(250));
    if (!upstream_.PendingIds().empty()) {
      next_poll = clock_.Now();
      break;
    }
  }
  EXPECT_GE(next_poll - failed_at, absl::Seconds(16));
  EXPECT_LE(next_poll - failed_at, absl::Seconds(24) + absl::Milliseconds(250));
  upstream_.Reply("t", Outcome(UpstreamOutcome::kTransient, "timeout"));
  const absl::Duration second = AdvanceToNextWakeup();
  (void)second;
  for (const Seen& s : sink->events()) {
    EXPECT_TRUE(s.type == kSnapshot || s.type == kHeartbeat);
    EXPECT_EQ(s.status, kQueued);
  }
  EXPECT_GE(sink->events().size(), 3u) << "heartbeats continue during backoff";
  EXPECT_FALSE(sink->ended());
}

TEST_F(PollHubTest, CappedBackoff) {
  PollHubOptions o;
  o.poll_interval = absl::Seconds(10);
  o.heartbeat_interval = absl::Hours(1);
  o.backoff_max = absl::Seconds(30);
  MakeHub(o);
  WatchOk("t");
  hub_->RunDue();
  for (int i = 0; i < 6; ++i) {
    upstream_.Reply("t", Outcome(UpstreamOutcome::kTransient, "500"));
    const absl::Duration wait = AdvanceToNextWakeup();
    EXPECT_LE(wait, absl::Seconds(36));
    ASSERT_EQ(upstream_.PendingIds().size(), 1u);
  }
}

TEST_F(PollHubTest, HeartbeatsAtTheConfiguredInterval) {
  PollHubOptions o;
  o.poll_interval = absl::Seconds(30);
  o.heartbeat_interval = absl::Seconds(15);
  MakeHub(o);
  auto sink = WatchOk("t");
  hub_->RunDue();
  upstream_.Reply("t", Ok(kProcessing));
  Advance(absl::Seconds(14));
  EXPECT_EQ(sink->events().size(), 1u);
  Advance(absl::Seconds(1));
  ASSERT_EQ(sink->events().size(), 2u);
  EXPECT_EQ(sink->events()[1].type, kHeartbeat);
  EXPECT_EQ(sink->events()[1].status, kProcessing);
  Advance(absl::Seconds(15));
  EXPECT_EQ(sink->events().size(), 3u);
}

TEST_F(PollHubTest, TerminalIsStickyCachedAndServedWithoutUpstream) {
  PollHubOptions o;
  o.poll_interval = absl::Seconds(1);
  o.terminal_cache_ttl = absl::Minutes(10);
  MakeHub(o);
  WatchOk("t");
  hub_->RunDue();
  upstream_.Reply("t", Ok(kFailed));
  Advance(absl::Seconds(5));
  EXPECT_EQ(upstream_.Count("t"), 1);
  // A later watcher: one SNAPSHOT, then done.
  auto late = WatchOk("t");
  ASSERT_EQ(late->events().size(), 1u);
  EXPECT_EQ(late->events()[0].status, kFailed);
  EXPECT_TRUE(late->ended());
  // Get: no upstream request.
  absl::StatusOr<VideoTask> got;
  hub_->Get("t", [&](absl::StatusOr<VideoTask> r) { got = std::move(r); });
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->status(), kFailed);
  EXPECT_EQ(upstream_.Count("t"), 1);
  EXPECT_EQ(hub_->GetStats().tasks, 1);
  // Expiry releases it.
  Advance(absl::Minutes(10));
  EXPECT_EQ(hub_->GetStats().tasks, 0);
}

TEST_F(PollHubTest, StatusNeverMovesBackward) {
  PollHubOptions o;
  o.poll_interval = absl::Seconds(1);
  MakeHub(o);
  auto sink = WatchOk("t");
  hub_->RunDue();
  upstream_.Reply("t", Ok(kProcessing));
  Advance(absl::Seconds(2));
  upstream_.Reply("t", Ok(kQueued));
  Advance(absl::Seconds(2));
  upstream_.Reply("t", Ok(kCompleted));
  const auto ev = sink->events();
  ASSERT_EQ(ev.size(), 2u);
  EXPECT_EQ(ev[1].previous, kProcessing);
  EXPECT_EQ(ev[1].status, kCompleted);
}

TEST_F(PollHubTest, NotFoundIsConfirmedOnceThenEndsEveryWatcher) {
  PollHubOptions o;
  o.poll_interval = absl::Seconds(30);
  MakeHub(o);
  auto a = WatchOk("gone");
  auto b = WatchOk("gone");
  hub_->RunDue();
  upstream_.Reply("gone", Outcome(UpstreamOutcome::kNotFound, "404"));
  EXPECT_FALSE(a->ended());
  AdvanceToNextWakeup();
  ASSERT_EQ(upstream_.Count("gone"), 2);
  upstream_.Reply("gone", Outcome(UpstreamOutcome::kNotFound, "404"));
  EXPECT_EQ(a->error().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(b->error().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(hub_->GetStats().tasks, 0);
  EXPECT_EQ(hub_->GetStats().active_watches, 0);
}

TEST_F(PollHubTest, RejectedCredentialsEndWatchersWithFailedPrecondition) {
  MakeHub();
  auto a = WatchOk("t");
  hub_->RunDue();
  upstream_.Reply("t", Outcome(UpstreamOutcome::kRejected, "401"));
  EXPECT_EQ(a->error().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(hub_->GetStats().active_watches, 0);
}

TEST_F(PollHubTest, LastWatcherLeavingStopsPollingAndReleasesMemory) {
  PollHubOptions o;
  o.poll_interval = absl::Seconds(1);
  MakeHub(o);
  WatchOk("t");
  const auto w1 = last_watch_;
  WatchOk("t");
  const auto w2 = last_watch_;
  hub_->RunDue();
  upstream_.Reply("t", Ok(kQueued));
  hub_->Unwatch(w1);
  Advance(absl::Seconds(2));
  EXPECT_EQ(upstream_.Count("t"), 2) << "one watcher left: still polled";
  upstream_.Reply("t", Ok(kQueued));
  hub_->Unwatch(w2);
  // The state lingers for one poll interval, then the memory is released.
  EXPECT_EQ(hub_->GetStats().tasks, 1);
  Advance(absl::Seconds(1));
  EXPECT_EQ(hub_->GetStats().tasks, 0);
  Advance(absl::Seconds(10));
  EXPECT_EQ(upstream_.Count("t"), 2);
  EXPECT_EQ(hub_->NextWakeup(), absl::InfiniteFuture());
}

TEST_F(PollHubTest, UnwatchWhileInFlightReleasesAfterTheAnswer) {
  MakeHub();
  WatchOk("t");
  hub_->RunDue();
  hub_->Unwatch(last_watch_);
  EXPECT_EQ(hub_->GetStats().tasks, 1);
  upstream_.Reply("t", Ok(kQueued));
  EXPECT_EQ(hub_->GetStats().inflight, 0);
  EXPECT_EQ(hub_->GetStats().tasks, 1) << "the answer lingers for one poll interval";
  Advance(PollHubOptions().poll_interval);
  EXPECT_EQ(hub_->GetStats().tasks, 0);
}

TEST_F(PollHubTest, GetOfUnwatchedIdMakesOneRequestAndStartsNoPolling) {
  PollHubOptions o;
  o.poll_interval = absl::Seconds(1);
  MakeHub(o);
  int answers = 0;
  absl::StatusOr<VideoTask> got;
  auto cb = [&](absl::StatusOr<VideoTask> r) {
    ++answers;
    got = std::move(r);
  };
  hub_->Get("t", cb);
  hub_->Get("t", cb);  // shares the request
  hub_->RunDue();
  ASSERT_EQ(upstream_.Count("t"), 1);
  upstream_.Reply("t", Ok(kProcessing));
  EXPECT_EQ(answers, 2);
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->status(), kProcessing);
  EXPECT_EQ(got->id(), "t");
  // Within the next poll interval another Get is answered from that state.
  hub_->Get("t", cb);
  EXPECT_EQ(answers, 3);
  EXPECT_EQ(upstream_.Count("t"), 1);
  Advance(absl::Seconds(30));
  EXPECT_EQ(upstream_.Count("t"), 1);
  EXPECT_EQ(hub_->GetStats().tasks, 0);
}

TEST_F(PollHubTest, GetOfWatchedIdUsesTheHubState) {
  MakeHub();
  WatchOk("t");
  hub_->RunDue();
  upstream_.Reply("t", Ok(kProcessing));
  absl::StatusOr<VideoTask> got;
  hub_->Get("t", [&](absl::StatusOr<VideoTask> r) { got = std::move(r); });
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(upstream_.Count("t"), 1);
}

// A Get of a watched task that has no state yet (its first poll failed and
// waits out a backoff) is answered by a poll at once, and still is when the
// last watcher leaves before that poll.
TEST_F(PollHubTest, GetOfWatchedTaskWithoutStateIsAnsweredEvenWhenTheWatcherLeaves) {
  PollHubOptions o;
  o.poll_interval = absl::Seconds(10);
  o.backoff_max = absl::Seconds(60);
  MakeHub(o);
  WatchOk("t");
  hub_->RunDue();
  upstream_.Reply("t", Outcome(UpstreamOutcome::kTransient, "503"));
  ASSERT_TRUE(upstream_.PendingIds().empty());

  int answers = 0;
  absl::StatusOr<VideoTask> got;
  hub_->Get("t", [&](absl::StatusOr<VideoTask> r) {
    ++answers;
    got = std::move(r);
  });
  hub_->Unwatch(last_watch_);
  hub_->RunDue();  // no time passes: the poll is not the backed-off one
  ASSERT_EQ(upstream_.PendingIds().size(), 1u);
  upstream_.Reply("t", Ok(kProcessing));
  EXPECT_EQ(answers, 1);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->status(), kProcessing);
  // Nobody watches: no more polling, and the task is released.
  Advance(absl::Minutes(5));
  EXPECT_EQ(upstream_.Count("t"), 2);
  EXPECT_EQ(hub_->GetStats().tasks, 0);
}

TEST_F(PollHubTest, GetErrorsMapToStatusCodes) {
  MakeHub();
  std::map<std::string, absl::StatusCode> codes;
  for (auto [id, outcome] : std::vector<std::pair<std::string, UpstreamOutcome>>{
           {"nf", UpstreamOutcome::kNotFound},
           {"rej", UpstreamOutcome::kRejected},
           {"tr", UpstreamOutcome::kTransient}}) {
    hub_->Get(id, [&codes, id = id](absl::StatusOr<VideoTask> r) { codes[id] = r.status().code(); });
    hub_->RunDue();
    upstream_.Reply(id, Outcome(outcome, "x"));
  }
  EXPECT_EQ(codes["nf"], absl::StatusCode::kNotFound);
  EXPECT_EQ(codes["rej"], absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(codes["tr"], absl::StatusCode::kUnavailable);
}

TEST_F(PollHubTest, DrainEndsWatchesWithUnavailableAndRefusesNewOnes) {
  MakeHub();
  auto a = WatchOk("t");
  hub_->RunDue();
  upstream_.Reply("t", Ok(kQueued));
  hub_->Drain();
  EXPECT_EQ(a->error().code(), absl::StatusCode::kUnavailable);
  auto refused = hub_->Watch("u", std::make_shared<RecordingSink>());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(hub_->GetStats().active_watches, 0);
}

TEST_F(PollHubTest, MaxWatchesRefusesWithResourceExhausted) {
  PollHubOptions o;
  o.max_watches = 2;
  MakeHub(o);
  WatchOk("a");
  WatchOk("b");
  auto refused = hub_->Watch("c", std::make_shared<RecordingSink>());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted);
}

TEST_F(PollHubTest, InvalidOptionsAreRejected) {
  PollHubOptions o;
  o.max_upstream_qps = 0;
  EXPECT_FALSE(PollHub::CreateForTest(o, &upstream_, &clock_, nullptr, 1).ok());
  o = {};
  o.poll_jitter = 1.5;
  EXPECT_FALSE(PollHub::CreateForTest(o, &upstream_, &clock_, nullptr, 1).ok());
}


// Issue: callers who gave up kept spending the vendor's budget. A cancelled
// Get leaves the queue; its request is never sent.
TEST_F(PollHubTest, CancelledGetsNeverReachTheUpstream) {
  PollHubOptions o;
  o.max_upstream_qps = 5;
  MakeHub(o);
  std::vector<PollHub::GetId> gets;
  std::map<std::string, absl::StatusCode> codes;
  for (int i = 0; i < 400; ++i) {
    const std::string id = "g" + std::to_string(i);
    gets.push_back(hub_->Get(id, [&codes, id](absl::StatusOr<VideoTask> r) {
      codes[id] = r.status().code();
    }));
  }
  EXPECT_EQ(hub_->GetStats().pending_gets, 400);
  hub_->RunDue();
  ASSERT_EQ(upstream_.Total(), 5);
  for (PollHub::GetId g : gets) hub_->CancelGet(g);
  EXPECT_EQ(codes.size(), 400u);
  for (const auto& [id, code] : codes) EXPECT_EQ(code, absl::StatusCode::kCancelled) << id;
  EXPECT_EQ(hub_->GetStats().pending_gets, 0);
  for (const std::string& id : upstream_.PendingIds()) upstream_.Reply(id, Ok(kQueued));
  Advance(absl::Seconds(100));
  EXPECT_EQ(upstream_.Total(), 5) << "requests sent for callers who had left";
  EXPECT_EQ(hub_->GetStats().tasks, 0);
  hub_->CancelGet(gets[0]);  // twice: ignored
}

TEST_F(PollHubTest, PendingGetsAreCapped) {
  PollHubOptions o;
  o.max_pending_gets = 3;
  MakeHub(o);
  absl::StatusOr<VideoTask> fourth;
  for (int i = 0; i < 3; ++i) hub_->Get("g" + std::to_string(i), [](absl::StatusOr<VideoTask>) {});
  hub_->Get("g3", [&](absl::StatusOr<VideoTask> r) { fourth = std::move(r); });
  EXPECT_EQ(fourth.status().code(), absl::StatusCode::kResourceExhausted);
  // Once answered, the places are free again.
  hub_->RunDue();
  for (int i = 0; i < 3; ++i) upstream_.Reply("g" + std::to_string(i), Ok(kQueued));
  EXPECT_EQ(hub_->GetStats().pending_gets, 0);
  absl::StatusOr<VideoTask> later;
  hub_->Get("g4", [&](absl::StatusOr<VideoTask> r) { later = std::move(r); });
  hub_->RunDue();
  upstream_.Reply("g4", Ok(kQueued));
  EXPECT_TRUE(later.ok()) << later.status();
}

// A burst of Gets must not delay a watcher's first poll.
TEST_F(PollHubTest, WatchersPollBeforeAGetBacklog) {
  PollHubOptions o;
  o.max_upstream_qps = 5;
  MakeHub(o);
  for (int i = 0; i < 200; ++i) hub_->Get("g" + std::to_string(i), [](absl::StatusOr<VideoTask>) {});
  Advance(absl::Milliseconds(10));
  WatchOk("w");
  hub_->RunDue();
  for (const std::string& id : upstream_.PendingIds()) upstream_.Reply(id, Ok(kQueued));
  Advance(absl::Seconds(1));
  EXPECT_EQ(upstream_.Count("w"), 1) << "the watch waited behind the Gets";
}

// A Retry-After of a year must not stop all traffic for a year.
TEST_F(PollHubTest, RetryAfterIsCappedAtMaxBackoff) {
  PollHubOptions o;
  o.poll_interval = absl::Seconds(10);
  o.backoff_max = absl::Seconds(60);
  o.heartbeat_interval = absl::Hours(10);
  MakeHub(o);
  WatchOk("a");
  hub_->RunDue();
  UpstreamResult r = Outcome(UpstreamOutcome::kRateLimited, "429");
  r.retry_after = absl::Hours(24 * 365);
  upstream_.Reply("a", r);
  EXPECT_EQ(hub_->NextWakeup(), clock_.Monotonic() + absl::Seconds(60));
  Advance(absl::Seconds(59));
  EXPECT_EQ(upstream_.Total(), 1);
  Advance(absl::Seconds(1));
  EXPECT_EQ(upstream_.Total(), 2);
}

// Timers run on the monotonic clock: wall clock steps (NTP, VM resume) in
// either direction change neither polls nor heartbeats.
TEST_F(PollHubTest, WallClockStepsDoNotMoveTimers) {
  PollHubOptions o;
  o.poll_interval = absl::Seconds(10);
  o.poll_jitter = 0;
  o.heartbeat_interval = absl::Seconds(4);
  MakeHub(o);
  auto sink = WatchOk("t");
  hub_->RunDue();
  upstream_.Reply("t", Ok(kQueued));
  clock_.StepWall(-absl::Hours(1));
  Advance(absl::Seconds(4));
  EXPECT_EQ(sink->events().size(), 2u) << "heartbeat after a step back";
  Advance(absl::Seconds(6));
  EXPECT_EQ(upstream_.Count("t"), 2) << "poll after a step back";
  upstream_.Reply("t", Ok(kQueued));
  const size_t events = sink->events().size();
  const absl::Time wakeup = hub_->NextWakeup();
  clock_.StepWall(absl::Hours(2));
  hub_->RunDue();
  EXPECT_EQ(upstream_.Count("t"), 2) << "a step forward made a poll due";
  EXPECT_EQ(sink->events().size(), events) << "a step forward made a heartbeat due";
  EXPECT_EQ(hub_->NextWakeup(), wakeup);
}

// Reconnects within a poll interval cost no upstream request: the state and
// the schedule linger for one interval after the last watcher leaves.
TEST_F(PollHubTest, ReconnectsWithinAPollIntervalCostNothing) {
  PollHubOptions o;
  o.poll_interval = absl::Seconds(10);
  o.poll_jitter = 0;
  o.heartbeat_interval = absl::Hours(1);
  MakeHub(o);
  WatchOk("t");
  hub_->RunDue();
  upstream_.Reply("t", Ok(kProcessing));
  for (int i = 0; i < 10; ++i) {
    hub_->Unwatch(last_watch_);
    Advance(absl::Milliseconds(500));
    auto sink = WatchOk("t");
    ASSERT_EQ(sink->events().size(), 1u) << "SNAPSHOT from the kept state";
    EXPECT_EQ(sink->events()[0].status, kProcessing);
    hub_->RunDue();
  }
  EXPECT_EQ(upstream_.Count("t"), 1) << "a reconnect cost an upstream request";
  // A Get of the lingering task is answered from its state, too.
  hub_->Unwatch(last_watch_);
  absl::StatusOr<VideoTask> got;
  hub_->Get("t", [&](absl::StatusOr<VideoTask> r) { got = std::move(r); });
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->status(), kProcessing);
  EXPECT_EQ(upstream_.Count("t"), 1);
  // The schedule was kept: back after the poll was due, it polls at once.
  Advance(absl::Seconds(5) + absl::Milliseconds(100));
  WatchOk("t");
  hub_->RunDue();
  EXPECT_EQ(upstream_.Count("t"), 2);
  upstream_.Reply("t", Ok(kProcessing));
  // Gone for longer than an interval: forgotten.
  hub_->Unwatch(last_watch_);
  Advance(absl::Seconds(10));
  EXPECT_EQ(hub_->GetStats().tasks, 0);
}

// A watch whose first poll fails waits seconds, not poll_interval * 2, for
// its SNAPSHOT; the retries grow to the poll interval.
TEST_F(PollHubTest, FailedFirstPollIsRetriedSoon) {
  PollHubOptions o;
  o.poll_interval = absl::Seconds(30);
  o.heartbeat_interval = absl::Hours(1);
  MakeHub(o);
  auto sink = WatchOk("t");
  hub_->RunDue();
  std::vector<absl::Duration> waits;
  for (int i = 0; i < 7; ++i) {
    upstream_.Reply("t", Outcome(UpstreamOutcome::kTransient, "503"));
    waits.push_back(AdvanceToNextWakeup());
    ASSERT_EQ(upstream_.PendingIds().size(), 1u);
  }
  EXPECT_GE(waits[0], absl::Milliseconds(800));
  EXPECT_LE(waits[0], absl::Milliseconds(1200));
  EXPECT_GE(waits[1], absl::Milliseconds(1600));
  EXPECT_LE(waits[1], absl::Milliseconds(2400));
  EXPECT_LE(waits[6], absl::Seconds(36));
  EXPECT_GE(waits[6], absl::Seconds(24));
  upstream_.Reply("t", Ok(kQueued));
  ASSERT_EQ(sink->events().size(), 1u);
  // With a state, failures back off from the poll interval as before.
  AdvanceToNextWakeup();
  upstream_.Reply("t", Outcome(UpstreamOutcome::kTransient, "503"));
  const absl::Time failed = clock_.Monotonic();
  absl::Time next = hub_->NextWakeup();
  while (upstream_.PendingIds().empty() && next != absl::InfiniteFuture()) {
    AdvanceToNextWakeup();
    next = hub_->NextWakeup();
  }
  EXPECT_GE(clock_.Monotonic() - failed, absl::Seconds(48));
}


// A gate whose admissions wait until the test answers them.
class FakeGate : public PollGate {
 public:
  void Admit(const std::string& id, bool watched, AdmitDone done) override {
    absl::MutexLock lock(&mu_);
    pending_.push_back({id, watched, std::move(done)});
  }
  void Observed(const VideoTask& task) override {
    absl::MutexLock lock(&mu_);
    observed_.push_back(task);
  }
  void RateLimited(absl::Duration pause) override {
    absl::MutexLock lock(&mu_);
    pauses_.push_back(pause);
  }
  void Released(const std::string& id) override {
    absl::MutexLock lock(&mu_);
    released_.push_back(id);
  }
  void Archiving(const std::string& id) override {
    absl::MutexLock lock(&mu_);
    archiving_.push_back(id);
  }
  void Drain() override {
    absl::MutexLock lock(&mu_);
    ++drains_;
  }
  void SetListener(Listener listener) override { listener_ = std::move(listener); }
  void SetTakeover(Takeover takeover) override { takeover_ = std::move(takeover); }
  void TakeOver(const std::string& id) { takeover_(id); }

  // Answers the oldest admission; returns whether it was for watchers.
  bool Answer(Admission a) {
    Asked p;
    {
      absl::MutexLock lock(&mu_);
      EXPECT_FALSE(pending_.empty());
      if (pending_.empty()) return false;
      p = std::move(pending_.front());
      pending_.pop_front();
    }
    std::move(p.done)(std::move(a));
    return p.watched;
  }
  size_t Pending() {
    absl::MutexLock lock(&mu_);
    return pending_.size();
  }
  void Share(VideoTask t) { listener_(std::move(t)); }
  std::vector<VideoTask> observed() {
    absl::MutexLock lock(&mu_);
    return observed_;
  }
  std::vector<absl::Duration> pauses() {
    absl::MutexLock lock(&mu_);
    return pauses_;
  }
  std::vector<std::string> released() {
    absl::MutexLock lock(&mu_);
    return released_;
  }
  std::vector<std::string> archiving() {
    absl::MutexLock lock(&mu_);
    return archiving_;
  }
  int drains() {
    absl::MutexLock lock(&mu_);
    return drains_;
  }

 private:
  struct Asked {
    std::string id;
    bool watched = false;
    AdmitDone done;
  };
  absl::Mutex mu_;
  std::deque<Asked> pending_ ABSL_GUARDED_BY(mu_);
  std::vector<VideoTask> observed_ ABSL_GUARDED_BY(mu_);
  std::vector<absl::Duration> pauses_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> released_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> archiving_ ABSL_GUARDED_BY(mu_);
  int drains_ ABSL_GUARDED_BY(mu_) = 0;
  Listener listener_;
  Takeover takeover_;
};

VideoTask State(const std::string& id, VideoTaskStatus status) {
  VideoTask t;
  t.set_id(id);
  t.set_status(status);
  return t;
}

PollGate::Admission Admit(PollGate::Admission::Kind kind,
                          std::optional<VideoTask> shared = std::nullopt,
                          absl::Duration wait = absl::ZeroDuration()) {
  PollGate::Admission a;
  a.kind = kind;
  a.shared = std::move(shared);
  a.wait = wait;
  return a;
}

class PollHubGateTest : public PollHubTest {
 protected:
  void MakeGatedHub(PollHubOptions options = {}) {
    options.poll_jitter = 0;
    auto hub = PollHub::CreateForTest(options, &upstream_, &clock_, &metrics_, 42, &gate_);
    ASSERT_TRUE(hub.ok()) << hub.status();
    hub_ = std::move(*hub);
  }
  // The hub tells its gate about the drain in its destructor: it goes first.
  void TearDown() override { hub_.reset(); }
  FakeGate gate_;
};

// Another sidecar polls the task: no request here; the fleet's state is the
// SNAPSHOT, shared transitions are forwarded in order, forward only, and the
// gate is asked again every interval.
TEST_F(PollHubGateTest, FollowerForwardsSharedStatesWithoutRequests) {
  PollHubOptions o;
  o.poll_interval = absl::Seconds(10);
  o.heartbeat_interval = absl::Hours(1);
  MakeGatedHub(o);
  auto sink = WatchOk("t");
  hub_->RunDue();
  ASSERT_EQ(gate_.Pending(), 1u);
  EXPECT_TRUE(gate_.Answer(Admit(PollGate::Admission::Kind::kFollow, State("t", kQueued))));
  EXPECT_EQ(hub_->GetStats().inflight, 0);
  EXPECT_EQ(hub_->GetStats().following, 1);
  gate_.Share(State("t", kProcessing));
  gate_.Share(State("t", kQueued));  // behind: ignored
  Advance(absl::Seconds(10));
  ASSERT_EQ(gate_.Pending(), 1u) << "asked again after an interval";
  gate_.Answer(Admit(PollGate::Admission::Kind::kFollow, State("t", kProcessing)));
  gate_.Share(State("t", kCompleted));
  EXPECT_EQ(upstream_.Total(), 0);
  const std::vector<Seen> seen = sink->events();
  ASSERT_EQ(seen.size(), 3u);
  EXPECT_EQ(seen[0].type, kSnapshot);
  EXPECT_EQ(seen[0].status, kQueued);
  EXPECT_EQ(seen[1].type, kTransition);
  EXPECT_EQ(seen[1].status, kProcessing);
  EXPECT_EQ(seen[2].status, kCompleted);
  EXPECT_EQ(seen[2].previous, kProcessing);
  EXPECT_TRUE(sink->ended());
  // Shared states of tasks nobody here holds are not kept.
  gate_.Share(State("other", kQueued));
  EXPECT_EQ(hub_->GetStats().tasks, 1);  // "t", cached terminal
}

// The gate admits with the fleet's state: SNAPSHOT at once, then the
// request; its answer is shared, and a 429 pauses the fleet.
TEST_F(PollHubGateTest, AdmittedPollsShareWhatTheyObserve) {
  PollHubOptions o;
  o.poll_interval = absl::Seconds(10);
  MakeGatedHub(o);
  auto sink = WatchOk("t");
  hub_->RunDue();
  gate_.Answer(Admit(PollGate::Admission::Kind::kPoll, State("t", kQueued)));
  ASSERT_EQ(sink->events().size(), 1u);
  ASSERT_EQ(upstream_.Count("t"), 1);
  upstream_.Reply("t", Ok(kProcessing));
  ASSERT_EQ(gate_.observed().size(), 1u);
  EXPECT_EQ(gate_.observed()[0].status(), kProcessing);
  EXPECT_EQ(gate_.observed()[0].id(), "t");
  EXPECT_EQ(sink->events().size(), 2u);
  Advance(absl::Seconds(10));
  gate_.Answer(Admit(PollGate::Admission::Kind::kPoll));
  UpstreamResult r = Outcome(UpstreamOutcome::kRateLimited, "429");
  r.retry_after = absl::Seconds(3);
  upstream_.Reply("t", r);
  EXPECT_EQ(gate_.pauses(), std::vector<absl::Duration>{absl::Seconds(3)});
  hub_->Unwatch(last_watch_);
  EXPECT_EQ(gate_.released(), std::vector<std::string>{"t"});
}

// The fleet's budget says wait: nothing starts before then, and the slot is
// free meanwhile.
TEST_F(PollHubGateTest, FleetWaitHoldsEveryRequest) {
  PollHubOptions o;
  o.poll_interval = absl::Seconds(10);
  o.heartbeat_interval = absl::Hours(1);
  MakeGatedHub(o);
  WatchOk("a");
  hub_->RunDue();
  gate_.Answer(Admit(PollGate::Admission::Kind::kWait, std::nullopt, absl::Seconds(2)));
  EXPECT_EQ(hub_->GetStats().inflight, 0);
  WatchOk("b");
  hub_->RunDue();
  EXPECT_EQ(gate_.Pending(), 0u) << "a request started during the fleet's wait";
  EXPECT_EQ(hub_->NextWakeup(), clock_.Monotonic() + absl::Seconds(2));
  Advance(absl::Seconds(2));
  EXPECT_EQ(gate_.Pending(), 2u);
  gate_.Answer(Admit(PollGate::Admission::Kind::kPoll));
  gate_.Answer(Admit(PollGate::Admission::Kind::kPoll));
  EXPECT_EQ(upstream_.Total(), 2);
}

// A Get answered by the fleet's state costs no request.
TEST_F(PollHubGateTest, GetAnsweredFromTheFleetsState) {
  MakeGatedHub();
  absl::StatusOr<VideoTask> got;
  hub_->Get("t", [&](absl::StatusOr<VideoTask> r) { got = std::move(r); });
  hub_->RunDue();
  EXPECT_FALSE(gate_.Answer(Admit(PollGate::Admission::Kind::kFollow, State("t", kCompleted))))
      << "a Get must not take the lease";
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->status(), kCompleted);
  EXPECT_EQ(upstream_.Total(), 0);
  EXPECT_EQ(hub_->GetStats().pending_gets, 0);
}


// An archiver whose copies finish when the test says.
class FakeArchiver : public Archiver {
 public:
  void Archive(const VideoTask& task, Done done) override {
    absl::MutexLock lock(&mu_);
    calls_.push_back({task, std::move(done)});
  }
  size_t calls() {
    absl::MutexLock lock(&mu_);
    return calls_.size();
  }
  // Finishes the oldest copy with `archive_uri` (success) or `error`.
  void Finish(const std::string& archive_uri, const std::string& error = "") {
    std::pair<VideoTask, Done> call;
    {
      absl::MutexLock lock(&mu_);
      ASSERT_FALSE(calls_.empty());
      call = std::move(calls_.front());
      calls_.pop_front();
    }
    VideoTask t = call.first;
    if (error.empty()) {
      t.mutable_archive()->set_uri(archive_uri);
    } else {
      t.set_archive_error(error);
    }
    std::move(call.second)(std::move(t));
  }

 private:
  absl::Mutex mu_;
  std::deque<std::pair<VideoTask, Done>> calls_ ABSL_GUARDED_BY(mu_);
};

// One archive per task however many watchers; COMPLETED waits for it and
// carries it; polling stops meanwhile; later watchers and Gets get it.
TEST_F(PollHubTest, CompletedWaitsForItsArchive) {
  PollHubOptions o;
  o.poll_interval = absl::Seconds(1);
  o.poll_jitter = 0;
  o.heartbeat_interval = absl::Seconds(2);
  FakeArchiver archiver;
  auto hub = PollHub::CreateForTest(o, &upstream_, &clock_, &metrics_, 42, nullptr, &archiver);
  ASSERT_TRUE(hub.ok());
  hub_ = std::move(*hub);
  std::vector<std::shared_ptr<RecordingSink>> sinks;
  for (int i = 0; i < 50; ++i) sinks.push_back(WatchOk("t"));
  hub_->RunDue();
  upstream_.Reply("t", Ok(kProcessing));
  Advance(absl::Seconds(1));
  upstream_.Reply("t", Ok(kCompleted));
  EXPECT_EQ(archiver.calls(), 1u);
  Advance(absl::Seconds(5));
  EXPECT_EQ(upstream_.Count("t"), 2) << "polled while archiving";
  for (auto& sink : sinks) {
    EXPECT_FALSE(sink->ended());
    EXPECT_EQ(sink->events().back().type, kHeartbeat);
    EXPECT_EQ(sink->events().back().status, kProcessing);
  }
  archiver.Finish("file:///archive/t.mp4");
  for (auto& sink : sinks) {
    ASSERT_TRUE(sink->ended());
    EXPECT_EQ(sink->events().back().type, kTransition);
    EXPECT_EQ(sink->events().back().status, kCompleted);
  }
  absl::StatusOr<VideoTask> got;
  hub_->Get("t", [&](absl::StatusOr<VideoTask> r) { got = std::move(r); });
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->archive().uri(), "file:///archive/t.mp4");
  EXPECT_EQ(archiver.calls(), 0u);
  // A failed archive still completes the task, with the error.
  auto other = WatchOk("u");
  hub_->RunDue();
  upstream_.Reply("u", Ok(kCompleted));
  EXPECT_TRUE(other->events().empty()) << "the SNAPSHOT waits for the archive too";
  archiver.Finish("", "video host answered 404");
  ASSERT_TRUE(other->ended());
  EXPECT_EQ(other->events().back().status, kCompleted);
  hub_->Get("u", [&](absl::StatusOr<VideoTask> r) { got = std::move(r); });
  EXPECT_EQ(got->archive_error(), "video host answered 404");
}

// Issue 16: after Shutdown() the hub never calls the gate again. The
// sidecar destroys the client, the archiver and the fleet gate after it; the
// archiver's destructor aborts copies in progress ("shutting down") and the
// client completes requests in flight. Such late results stay in this hub:
// the gate may already be gone, and an aborted archive's archive_error must
// never become the fleet's cached terminal state. Nothing new is archived.
TEST_F(PollHubGateTest, AfterShutdownLateResultsNeverReachTheGate) {
  PollHubOptions o;
  o.poll_interval = absl::Seconds(10);
  o.heartbeat_interval = absl::Hours(1);
  FakeArchiver archiver;
  auto hub = PollHub::CreateForTest(o, &upstream_, &clock_, &metrics_, 42, &gate_, &archiver);
  ASSERT_TRUE(hub.ok());
  hub_ = std::move(*hub);
  for (const char* id : {"archived", "late", "limited"}) WatchOk(id);
  hub_->RunDue();
  ASSERT_EQ(gate_.Pending(), 3u);
  for (int i = 0; i < 3; ++i) gate_.Answer(Admit(PollGate::Admission::Kind::kPoll));
  ASSERT_EQ(upstream_.Total(), 3);
  upstream_.Reply("archived", Ok(kCompleted));
  ASSERT_EQ(archiver.calls(), 1u);
  ASSERT_TRUE(gate_.observed().empty()) << "COMPLETED waits for its archive";

  hub_->Shutdown();
  archiver.Finish("", "archiving stopped: the sidecar is shutting down");
  upstream_.Reply("late", Ok(kCompleted));
  UpstreamResult r = Outcome(UpstreamOutcome::kRateLimited, "429");
  r.retry_after = absl::Seconds(3);
  upstream_.Reply("limited", r);
  for (const VideoTask& t : gate_.observed()) {
    ADD_FAILURE() << "the gate was told " << t.ShortDebugString() << " after Shutdown()";
  }
  EXPECT_TRUE(gate_.pauses().empty()) << "a 429 after Shutdown() reached the gate";
  EXPECT_EQ(archiver.calls(), 0u) << "a copy was started after Shutdown()";
}

// The gate hands over the lease of a followed task: the hub asks now, not
// at the next interval; a task it polls itself is left alone.
TEST_F(PollHubGateTest, TakeoverAsksTheGateNow) {
  PollHubOptions o;
  o.poll_interval = absl::Seconds(10);
  o.heartbeat_interval = absl::Hours(1);
  MakeGatedHub(o);
  WatchOk("t");
  hub_->RunDue();
  gate_.Answer(Admit(PollGate::Admission::Kind::kFollow, State("t", kQueued)));
  ASSERT_EQ(hub_->GetStats().following, 1);
  Advance(absl::Seconds(1));
  EXPECT_EQ(gate_.Pending(), 0u);
  gate_.TakeOver("t");
  gate_.TakeOver("unknown");
  hub_->RunDue();
  ASSERT_EQ(gate_.Pending(), 1u) << "not asked at once";
  gate_.Answer(Admit(PollGate::Admission::Kind::kPoll));
  EXPECT_EQ(upstream_.Count("t"), 1);
  gate_.TakeOver("t");  // polled here now: nothing to do
  hub_->RunDue();
  EXPECT_EQ(gate_.Pending(), 0u);
}

// What the hub tells the gate about leases: an archive in progress (so the
// fleet waits for it), a task that ended for its watchers (released), and a
// drain (everything let go at once).
TEST_F(PollHubGateTest, TellsTheGateAboutArchivesEndsAndDrain) {
  PollHubOptions o;
  o.poll_interval = absl::Seconds(1);
  o.poll_jitter = 0;
  FakeArchiver archiver;
  auto hub = PollHub::CreateForTest(o, &upstream_, &clock_, &metrics_, 42, &gate_, &archiver);
  ASSERT_TRUE(hub.ok());
  hub_ = std::move(*hub);
  WatchOk("a");
  WatchOk("nf");
  WatchOk("d");
  hub_->RunDue();
  for (int i = 0; i < 3; ++i) gate_.Answer(Admit(PollGate::Admission::Kind::kPoll));
  upstream_.Reply("a", Ok(kCompleted));
  EXPECT_EQ(gate_.archiving(), std::vector<std::string>{"a"});
  EXPECT_TRUE(gate_.observed().empty()) << "the fleet waits for the archived state";
  upstream_.Reply("nf", Outcome(UpstreamOutcome::kNotFound, "404"));
  Advance(absl::Seconds(1));
  gate_.Answer(Admit(PollGate::Admission::Kind::kPoll));
  upstream_.Reply("nf", Outcome(UpstreamOutcome::kNotFound, "404"));
  EXPECT_EQ(gate_.released(), std::vector<std::string>{"nf"}) << "an ended task keeps no lease";
  EXPECT_EQ(gate_.drains(), 0);
  hub_->Drain();
  EXPECT_EQ(gate_.drains(), 1);
  hub_->Drain();
  EXPECT_EQ(gate_.drains(), 1) << "once";
  archiver.Finish("", "end");
}

TEST(PollHubThreadTest, SchedulerThreadPollsOnItsOwn) {
  // The real scheduler thread with the real clock and a short interval.
  FakeUpstream upstream;
  PollHubOptions o;
  o.poll_interval = absl::Milliseconds(20);
  auto hub = PollHub::Create(o, &upstream, RealClock::Get(), nullptr);
  ASSERT_TRUE(hub.ok());
  auto sink = std::make_shared<RecordingSink>();
  ASSERT_TRUE((*hub)->Watch("t", sink).ok());
  for (int i = 0; i < 3; ++i) {
    const absl::Time deadline = absl::Now() + absl::Seconds(10);
    while (upstream.PendingIds().empty() && absl::Now() < deadline) {
      absl::SleepFor(absl::Milliseconds(1));
    }
    upstream.Reply("t", Ok(i < 2 ? kQueued : kCompleted));
  }
  // Results are applied on the hub's thread.
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (!sink->ended() && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(1));
  EXPECT_TRUE(sink->ended());
  (*hub)->Shutdown();
}

// The fan-out runs on the hub's thread, not on the thread that delivered the
// upstream result (the client's I/O thread, here the test's).
TEST(PollHubThreadTest, ResultsAreFannedOutOffTheClientThread) {
  FakeUpstream upstream;
  PollHubOptions o;
  o.poll_interval = absl::Seconds(30);
  auto hub = PollHub::Create(o, &upstream, RealClock::Get(), nullptr);
  ASSERT_TRUE(hub.ok());
  struct ThreadSink : WatchSink {
    void OnEvent(std::shared_ptr<const TaskEvent>) override {
      absl::MutexLock lock(&mu);
      threads.push_back(std::this_thread::get_id());
    }
    void OnError(const absl::Status&) override {}
    absl::Mutex mu;
    std::vector<std::thread::id> threads ABSL_GUARDED_BY(mu);
  };
  auto sink = std::make_shared<ThreadSink>();
  ASSERT_TRUE((*hub)->Watch("t", sink).ok());
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (upstream.PendingIds().empty() && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(1));
  }
  upstream.Reply("t", Ok(kQueued));
  {
    absl::MutexLock lock(&sink->mu);
    ASSERT_TRUE(sink->mu.AwaitWithTimeout(
        absl::Condition(+[](std::vector<std::thread::id>* t) { return !t->empty(); },
                        &sink->threads),
        absl::Seconds(10)));
    EXPECT_NE(sink->threads[0], std::this_thread::get_id())
        << "the client's thread delivered the fan-out";
  }
  (*hub)->Shutdown();
}

// A gate for the threaded hub that admits every request inline and records
// the threads that ask it (only the scheduler thread does). While held,
// Admit waits until released: the test can then act while the scheduler
// thread sits between applying a result and delivering its events.
class HoldingGate : public PollGate {
 public:
  void Admit(const std::string&, bool, AdmitDone done) override {
    {
      absl::MutexLock lock(&mu_);
      admit_threads_.insert(std::this_thread::get_id());
      if (hold_) {
        held_ = true;
        mu_.Await(absl::Condition(+[](bool* hold) { return !*hold; }, &hold_));
        held_ = false;
      }
    }
    std::move(done)(Admission{});
  }
  void Observed(const VideoTask&) override {}
  void RateLimited(absl::Duration) override {}
  void Released(const std::string&) override {}
  void Archiving(const std::string&) override {}
  void Drain() override {}
  void SetListener(Listener listener) override { listener_ = std::move(listener); }
  void SetTakeover(Takeover) override {}

  void Hold() {
    absl::MutexLock lock(&mu_);
    hold_ = true;
  }
  void Release() {
    absl::MutexLock lock(&mu_);
    hold_ = false;
  }
  // Waits until an Admit is held; false after 10 s.
  bool WaitHeld() {
    absl::MutexLock lock(&mu_);
    return mu_.AwaitWithTimeout(absl::Condition(&held_), absl::Seconds(10));
  }
  // A state another sidecar observed, brought by the calling thread (as the
  // Redis subscriber's thread would).
  void Share(VideoTask t) { listener_(std::move(t)); }
  std::set<std::thread::id> admit_threads() {
    absl::MutexLock lock(&mu_);
    return admit_threads_;
  }

 private:
  absl::Mutex mu_;
  bool hold_ ABSL_GUARDED_BY(mu_) = false;
  bool held_ ABSL_GUARDED_BY(mu_) = false;
  std::set<std::thread::id> admit_threads_ ABSL_GUARDED_BY(mu_);
  Listener listener_;
};

// Issue 16: only the scheduler thread delivers. Results and shared states
// arrive on other threads (the client's and the gate's I/O threads, here
// `io`); those only queue work and wake the scheduler, even when events of
// other tasks are waiting to be delivered at that moment.
TEST(PollHubThreadTest, OnlyTheSchedulerThreadDelivers) {
  FakeUpstream upstream;
  HoldingGate gate;
  PollHubOptions o;
  o.poll_interval = absl::Seconds(30);
  o.heartbeat_interval = absl::Hours(1);
  o.max_inflight = 1;  // "b" starts only once "a" has its answer
  auto hub = PollHub::Create(o, &upstream, RealClock::Get(), nullptr, &gate);
  ASSERT_TRUE(hub.ok());
  struct ThreadSink : WatchSink {
    void OnEvent(std::shared_ptr<const TaskEvent>) override {
      absl::MutexLock lock(&mu);
      threads.push_back(std::this_thread::get_id());
    }
    void OnError(const absl::Status&) override {
      absl::MutexLock lock(&mu);
      threads.push_back(std::this_thread::get_id());
    }
    absl::Mutex mu;
    std::vector<std::thread::id> threads ABSL_GUARDED_BY(mu);
  };
  auto sink = std::make_shared<ThreadSink>();
  absl::Mutex get_mu;
  std::optional<std::thread::id> get_thread;
  ASSERT_TRUE((*hub)->Watch("a", sink).ok());
  (*hub)->Get("a", [&](absl::StatusOr<VideoTask>) {
    absl::MutexLock lock(&get_mu);
    get_thread = std::this_thread::get_id();
  });
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (upstream.PendingIds().empty() && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(1));
  }
  ASSERT_EQ(upstream.PendingIds(), std::vector<std::string>{"a"});
  ASSERT_TRUE((*hub)->Watch("b", std::make_shared<ThreadSink>()).ok());
  gate.Hold();
  std::thread::id io_id;
  std::thread io([&] {
    io_id = std::this_thread::get_id();
    // The scheduler applies the answer (SNAPSHOT and the Get's answer
    // queued), starts "b" and is held in Admit before it delivers.
    upstream.Reply("a", Ok(kQueued));
    ASSERT_TRUE(gate.WaitHeld());
    // Work arriving now must not make this thread deliver what is queued.
    gate.Share(State("unrelated", kProcessing));
  });
  io.join();
  gate.Release();
  {
    absl::MutexLock lock(&sink->mu);
    ASSERT_TRUE(sink->mu.AwaitWithTimeout(
        absl::Condition(+[](std::vector<std::thread::id>* t) { return !t->empty(); },
                        &sink->threads),
        absl::Seconds(10)));
  }
  {
    absl::MutexLock lock(&get_mu);
    ASSERT_TRUE(get_mu.AwaitWithTimeout(
        absl::Condition(+[](std::optional<std::thread::id>* t) { return t->has_value(); },
                        &get_thread),
        absl::Seconds(10)));
  }
  const std::set<std::thread::id> scheduler = gate.admit_threads();
  ASSERT_EQ(scheduler.size(), 1u) << "Admit is called on the scheduler thread only";
  const std::thread::id scheduler_id = *scheduler.begin();
  EXPECT_NE(scheduler_id, io_id);
  {
    absl::MutexLock lock(&sink->mu);
    for (std::thread::id t : sink->threads) {
      EXPECT_NE(t, io_id) << "the I/O thread delivered a watcher's event";
      EXPECT_EQ(t, scheduler_id) << "a watcher's event was delivered off the scheduler thread";
    }
  }
  {
    absl::MutexLock lock(&get_mu);
    EXPECT_NE(*get_thread, io_id) << "the I/O thread answered a Get";
    EXPECT_EQ(*get_thread, scheduler_id);
  }
  (*hub)->Shutdown();
}

}  // namespace
}  // namespace videotask
