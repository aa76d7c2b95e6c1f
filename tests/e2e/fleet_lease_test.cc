// Fleet leases across two sidecars' cores: two real PollHubs, each with its
// own real FleetPollGate, on one real redis-server (started on a free
// loopback port), with the real scheduler threads and clock. The upstream
// and the archiver are stand-ins (FakeUpstream, HeldArchiver below) so the
// test decides when each answer comes and counts, per sidecar, every poll
// and every download: the UpstreamClient and Archiver interfaces are what
// the sidecar's CurlUpstreamClient and FileArchiver implement.
//
// poll_interval is 1 s, so a lease is 1.5 s: each test holds the situation
// for more than two leases.
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "server/archive/archiver.h"
#include "server/base/clock.h"
#include "server/fleet/fleet_gate.h"
#include "server/fleet/redis_url.h"
#include "server/hub/poll_hub.h"
#include "server/upstream/upstream_client.h"
#include "tests/testing/redis_server.h"

namespace videotask {
namespace {

using ::videotask::testing::RedisServer;
using videotask::v1::VideoTask;
using videotask::v1::VideoTaskStatus;
using videotask::v1::WatchVideoTaskResponse;

constexpr auto kProcessing = videotask::v1::VIDEO_TASK_STATUS_PROCESSING;
constexpr auto kCompleted = videotask::v1::VIDEO_TASK_STATUS_COMPLETED;
constexpr absl::Duration kInterval = absl::Seconds(1);

// Stand-in for the vendor client: requests wait until the test answers.
class FakeUpstream : public UpstreamClient {
 public:
  void Fetch(const std::string& id, Callback done) override {
    absl::MutexLock lock(&mu_);
    pending_.push_back({id, std::move(done)});
    ++count_;
    times_.push_back(absl::Now());
  }
  bool Reply(UpstreamResult result) {
    Callback cb;
    {
      absl::MutexLock lock(&mu_);
      if (pending_.empty()) return false;
      cb = std::move(pending_.front().second);
      pending_.pop_front();
    }
    std::move(cb)(std::move(result));
    return true;
  }
  int count() {
    absl::MutexLock lock(&mu_);
    return count_;
  }
  size_t pending() {
    absl::MutexLock lock(&mu_);
    return pending_.size();
  }
  std::vector<absl::Time> times() {
    absl::MutexLock lock(&mu_);
    return times_;
  }

 private:
  absl::Mutex mu_;
  std::deque<std::pair<std::string, Callback>> pending_ ABSL_GUARDED_BY(mu_);
  int count_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<absl::Time> times_ ABSL_GUARDED_BY(mu_);
};

// Stand-in for the archiver: a download that lasts until the test ends it.
class HeldArchiver : public Archiver {
 public:
  void Archive(const VideoTask& task, Done done) override {
    absl::MutexLock lock(&mu_);
    held_.push_back({task, std::move(done)});
    ++count_;
  }
  int count() {
    absl::MutexLock lock(&mu_);
    return count_;
  }
  void FinishAll(const std::string& uri) {
    std::deque<std::pair<VideoTask, Done>> held;
    {
      absl::MutexLock lock(&mu_);
      held.swap(held_);
    }
    for (auto& [task, done] : held) {
      VideoTask t = task;
      t.mutable_archive()->set_uri(uri);
      std::move(done)(std::move(t));
    }
  }

 private:
  absl::Mutex mu_;
  std::deque<std::pair<VideoTask, Done>> held_ ABSL_GUARDED_BY(mu_);
  int count_ ABSL_GUARDED_BY(mu_) = 0;
};

class Sink : public WatchSink {
 public:
  void OnEvent(std::shared_ptr<const TaskEvent> e) override {
    absl::MutexLock lock(&mu_);
    events_.push_back(e->response);
  }
  void OnError(const absl::Status& s) override {
    absl::MutexLock lock(&mu_);
    error_ = s;
  }
  std::vector<WatchVideoTaskResponse> events() {
    absl::MutexLock lock(&mu_);
    return events_;
  }

 private:
  absl::Mutex mu_;
  std::vector<WatchVideoTaskResponse> events_ ABSL_GUARDED_BY(mu_);
  absl::Status error_ ABSL_GUARDED_BY(mu_);
};

UpstreamResult Ok(VideoTaskStatus s) {
  UpstreamResult r;
  r.outcome = UpstreamOutcome::kOk;
  r.code = "200";
  r.task.set_status(s);
  if (s == kCompleted) r.task.set_video_url("https://cdn.invalid/t.mp4");
  return r;
}

UpstreamResult Unavailable() {
  UpstreamResult r;
  r.outcome = UpstreamOutcome::kTransient;
  r.code = "503";
  r.detail = "stand-in 503";
  return r;
}

template <typename P>
bool Eventually(P p, absl::Duration limit = absl::Seconds(5)) {
  const absl::Time end = absl::Now() + limit;
  while (absl::Now() < end) {
    if (p()) return true;
    absl::SleepFor(absl::Milliseconds(5));
  }
  return p();
}

// One sidecar's core: gate, hub, upstream and archiver stand-ins.
struct Pod {
  FakeUpstream upstream;
  HeldArchiver archiver;
  std::unique_ptr<fleet::FleetPollGate> gate;
  std::unique_ptr<PollHub> hub;

  ~Pod() {
    if (hub != nullptr) hub->Shutdown();
    archiver.FinishAll("file:///end");
    gate.reset();  // after the hub's Shutdown, as the sidecar does
    hub.reset();
  }
};

class FleetLeaseTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto s = RedisServer::Start();
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = *std::move(s);
  }
  std::unique_ptr<Pod> StartPod(bool archive) {
    auto pod = std::make_unique<Pod>();
    fleet::FleetGateOptions go;
    go.redis.url = *fleet::RedisUrl::Parse(server_->Url());
    go.api_key = "sk-lease-test";
    go.upstream_host = "vendor.example";
    go.poll_interval = kInterval;
    auto gate = fleet::FleetPollGate::Create(std::move(go));
    EXPECT_TRUE(gate.ok()) << gate.status();
    if (!gate.ok()) return nullptr;
    pod->gate = std::move(*gate);
    EXPECT_TRUE(pod->gate->client()->WaitUntilUp(absl::Seconds(5)));
    PollHubOptions ho;
    ho.poll_interval = kInterval;
    ho.poll_jitter = 0;
    ho.heartbeat_interval = absl::Seconds(10);
    ho.backoff_max = absl::Seconds(30);
    auto hub = PollHub::Create(ho, &pod->upstream, RealClock::Get(), nullptr, pod->gate.get(),
                               archive ? &pod->archiver : nullptr);
    EXPECT_TRUE(hub.ok()) << hub.status();
    if (!hub.ok()) return nullptr;
    pod->hub = std::move(*hub);
    return pod;
  }
  // A holds the task (polled once, PROCESSING shared); B follows it.
  void HolderAndFollower(Pod& a, Pod& b, std::shared_ptr<Sink>* sa, std::shared_ptr<Sink>* sb,
                         PollHub::WatchId* wa) {
    *sa = std::make_shared<Sink>();
    *sb = std::make_shared<Sink>();
    auto w = a.hub->Watch("t", *sa);
    ASSERT_TRUE(w.ok());
    *wa = *w;
    ASSERT_TRUE(Eventually([&] { return a.upstream.pending() == 1; }));
    a.upstream.Reply(Ok(kProcessing));
    ASSERT_TRUE(b.hub->Watch("t", *sb).ok());
    ASSERT_TRUE(Eventually([&] { return !(*sb)->events().empty(); })) << "B follows A's state";
    ASSERT_EQ(b.upstream.count(), 0);
  }
  std::unique_ptr<RedisServer> server_;
};

// The holder archives the video for longer than two leases, and its only
// watcher leaves meanwhile: the other sidecar neither polls nor downloads;
// it gets the archived COMPLETED from the fleet when the holder is done.
TEST_F(FleetLeaseTest, HolderArchivingLongerThanTheLeaseKeepsTheTask) {
  auto a = StartPod(/*archive=*/true);
  auto b = StartPod(/*archive=*/true);
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  std::shared_ptr<Sink> sa, sb;
  PollHub::WatchId wa = 0;
  HolderAndFollower(*a, *b, &sa, &sb, &wa);
  ASSERT_TRUE(Eventually([&] { return a->upstream.pending() == 1; }));
  a->upstream.Reply(Ok(kCompleted));
  ASSERT_TRUE(Eventually([&] { return a->archiver.count() == 1; }));
  absl::SleepFor(kInterval);
  a->hub->Unwatch(wa);
  absl::SleepFor(2 * kInterval);
  EXPECT_EQ(b->upstream.count(), 0) << "B polled a task A is archiving";
  EXPECT_EQ(b->archiver.count(), 0) << "B downloaded the video A is archiving";
  a->archiver.FinishAll("file:///archive/t.mp4");
  ASSERT_TRUE(Eventually([&] {
    const auto events = sb->events();
    return !events.empty() && events.back().task().status() == kCompleted;
  }));
  EXPECT_EQ(sb->events().back().task().archive().uri(), "file:///archive/t.mp4");
  EXPECT_EQ(b->upstream.count(), 0);
  EXPECT_EQ(b->archiver.count(), 0);
  // Let go right after the archived state is stored (which B may hear first).
  EXPECT_TRUE(Eventually([&] { return a->gate->leases_held() == 0; }));
}

// The holder's polls fail (503) and it backs off 2, 4, ... intervals, longer
// than its lease: the follower still does not poll.
TEST_F(FleetLeaseTest, HolderBackingOffLongerThanTheLeaseKeepsTheTask) {
  auto a = StartPod(false);
  auto b = StartPod(false);
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  std::shared_ptr<Sink> sa, sb;
  PollHub::WatchId wa = 0;
  HolderAndFollower(*a, *b, &sa, &sb, &wa);
  const absl::Time end = absl::Now() + 4 * kInterval;
  while (absl::Now() < end) {
    a->upstream.Reply(Unavailable());
    absl::SleepFor(absl::Milliseconds(5));
  }
  EXPECT_GE(a->upstream.count(), 2) << "the holder kept polling, with backoff";
  EXPECT_EQ(b->upstream.count(), 0) << "B polled a task A still holds";
}

// The holder drains (SIGTERM, the sidecar's drain): its leases go at once,
// that of a task it was archiving too (the archive is abandoned), and the
// follower polls each at its next ask, within one interval.
TEST_F(FleetLeaseTest, DrainedHolderIsReplacedWithinOneInterval) {
  auto a = StartPod(/*archive=*/true);
  auto b = StartPod(/*archive=*/true);
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  // "u": A polls it, it is COMPLETED, A archives; B follows.
  auto su = std::make_shared<Sink>();
  ASSERT_TRUE(a->hub->Watch("u", su).ok());
  ASSERT_TRUE(Eventually([&] { return a->upstream.pending() == 1; }));
  a->upstream.Reply(Ok(kCompleted));
  ASSERT_TRUE(Eventually([&] { return a->archiver.count() == 1; }));
  ASSERT_TRUE(b->hub->Watch("u", std::make_shared<Sink>()).ok());
  ASSERT_TRUE(Eventually([&] { return b->hub->GetStats().following == 1; }));
  // "t": A holds it, B follows.
  std::shared_ptr<Sink> sa, sb;
  PollHub::WatchId wa = 0;
  HolderAndFollower(*a, *b, &sa, &sb, &wa);
  ASSERT_EQ(b->hub->GetStats().following, 2);
  const absl::Time drained = absl::Now();
  a->hub->Drain();
  ASSERT_TRUE(Eventually([&] { return b->upstream.count() == 2; }, 3 * kInterval))
      << "B never took over both";
  for (absl::Time polled : b->upstream.times()) {
    EXPECT_LE(polled - drained, kInterval + absl::Milliseconds(300))
        << "B took over after " << polled - drained;
  }
}

}  // namespace
}  // namespace videotask
