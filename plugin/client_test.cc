// VideoTaskClient against the real sidecar (in process) and the simulated
// upstream over loopback, including a sidecar restart in the middle of a watch.
#include "plugin/client.h"

#include <algorithm>
#include <cstdlib>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "server/sidecar.h"
#include "tests/sim/sim_upstream.h"
#include "tests/testing/listeners.h"

namespace videotask {
namespace {

using testing::ClosedPortTarget;
using testing::SilentListener;
using v1::VideoTaskStatus;
using v1::WatchVideoTaskResponse;

// Waits for `done` until `timeout`; the condition is polled (it reads state
// that has no notification of its own).
bool Eventually(const std::function<bool()>& done, absl::Duration timeout) {
  const absl::Time end = absl::Now() + timeout;
  while (!done()) {
    if (absl::Now() >= end) return false;
    absl::SleepFor(absl::Milliseconds(5));
  }
  return true;
}

class ClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    setenv("VIDEOTASK_CLIENT_TEST_KEY", "sk-client-test", 1);
    sim::SimUpstream::Options o;
    o.api_key = "sk-client-test";
    auto sim = sim::SimUpstream::Start(o);
    ASSERT_TRUE(sim.ok());
    sim_ = std::move(*sim);
    StartSidecar("127.0.0.1:0");
    client_ = VideoTaskClient::Create(sidecar_->target());
  }

  void StartSidecar(const std::string& listen) {
    SidecarConfig c;
    c.listen = listen;
    c.metrics_listen = "";
    c.upstream_url = sim_->base_url();
    c.api_key_env = "VIDEOTASK_CLIENT_TEST_KEY";
    c.hub.poll_interval = absl::Milliseconds(100);
    c.hub.heartbeat_interval = absl::Milliseconds(150);
    c.hub.max_upstream_qps = 100;
    auto sc = Sidecar::Start(c);
    ASSERT_TRUE(sc.ok()) << sc.status();
    sidecar_ = std::move(*sc);
  }

  struct Recorder {
    absl::Mutex mu;
    std::vector<WatchVideoTaskResponse> events;
    void Add(const WatchVideoTaskResponse& e) {
      absl::MutexLock lock(&mu);
      events.push_back(e);
    }
    std::vector<WatchVideoTaskResponse> Get() {
      absl::MutexLock lock(&mu);
      return events;
    }
    // Waits until `n` events arrived (true) or `timeout` passed.
    bool WaitFor(size_t n, absl::Duration timeout) {
      absl::MutexLock lock(&mu);
      auto enough = [this, n]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return events.size() >= n; };
      return mu.AwaitWithTimeout(absl::Condition(&enough), timeout);
    }
    std::vector<VideoTaskStatus> Changes() {
      std::vector<VideoTaskStatus> out;
      for (const auto& e : Get()) {
        if (e.type() != WatchVideoTaskResponse::EVENT_TYPE_HEARTBEAT) out.push_back(e.task().status());
      }
      return out;
    }
  };

  std::unique_ptr<sim::SimUpstream> sim_;
  std::unique_ptr<Sidecar> sidecar_;
  std::unique_ptr<VideoTaskClient> client_;
};

TEST_F(ClientTest, AwaitReturnsTheCompletedTaskAndReportsEveryEventOnce) {
  sim::TaskScript s;
  s.queued_polls = 2;
  s.processing_polls = 2;
  sim_->SetTask("t", s);
  Recorder rec;
  AwaitOptions o;
  o.timeout = absl::Seconds(20);
  o.on_event = [&](const WatchVideoTaskResponse& e) { rec.Add(e); };
  auto task = client_->Await("t", o);
  ASSERT_TRUE(task.ok()) << task.status();
  EXPECT_EQ(task->status(), v1::VIDEO_TASK_STATUS_COMPLETED);
  EXPECT_FALSE(task->video_url().empty());
  EXPECT_EQ(rec.Changes(), (std::vector<VideoTaskStatus>{v1::VIDEO_TASK_STATUS_QUEUED,
                                                          v1::VIDEO_TASK_STATUS_PROCESSING,
                                                          v1::VIDEO_TASK_STATUS_COMPLETED}));
}

TEST_F(ClientTest, FailedVideoIsAResultNotAnError) {
  sim::TaskScript s;
  s.fails = true;
  sim_->SetTask("f", s);
  auto task = client_->Await("f", {});
  ASSERT_TRUE(task.ok()) << task.status();
  EXPECT_EQ(task->status(), v1::VIDEO_TASK_STATUS_FAILED);
}

TEST_F(ClientTest, FinalErrorsAreNotRetried) {
  EXPECT_EQ(client_->Await("no-such-task", {}).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(client_->Await("../x", {}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(sim_->RequestCount("no-such-task"), 2) << "the sidecar's confirming retry only";
}

TEST_F(ClientTest, SurvivesASidecarRestartWithoutDuplicateReports) {
  sim::TaskScript hold;
  hold.advances = false;
  sim_->SetTask("r", hold);
  Recorder rec;
  AwaitOptions o;
  o.timeout = absl::Seconds(30);
  o.initial_backoff = absl::Milliseconds(50);
  o.on_event = [&](const WatchVideoTaskResponse& e) { rec.Add(e); };
  absl::StatusOr<v1::VideoTask> result;
  std::thread waiter([&] { result = client_->Await("r", o); });
  ASSERT_TRUE(rec.WaitFor(2, absl::Seconds(10)));
  const std::string target = sidecar_->target();
  sidecar_->Shutdown(absl::Seconds(1));  // the stream ends with UNAVAILABLE
  sidecar_.reset();
  absl::SleepFor(absl::Milliseconds(300));  // the client retries against nothing
  StartSidecar(target);                     // same address, fresh state
  const absl::Time restarted = absl::Now();
  // The client is back when the new sidecar holds its watch.
  EXPECT_TRUE(Eventually([&] { return sidecar_->hub()->GetStats().active_watches == 1; },
                         absl::Seconds(5)));
  sim_->Complete("r");
  waiter.join();
  // The client waits for the channel to reconnect, not out a growing backoff.
  EXPECT_LT(absl::Now() - restarted, absl::Seconds(2));
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->status(), v1::VIDEO_TASK_STATUS_COMPLETED);
  // QUEUED once (the new stream's SNAPSHOT is not reported again), then the
  // completion as a TRANSITION from it.
  EXPECT_EQ(rec.Changes(), (std::vector<VideoTaskStatus>{v1::VIDEO_TASK_STATUS_QUEUED,
                                                          v1::VIDEO_TASK_STATUS_COMPLETED}));
  const auto events = rec.Get();
  EXPECT_EQ(events.back().type(), WatchVideoTaskResponse::EVENT_TYPE_TRANSITION);
  EXPECT_EQ(events.back().previous_status(), v1::VIDEO_TASK_STATUS_QUEUED);
}

TEST_F(ClientTest, CancellationEndsTheWatchAtOnce) {
  sim::TaskScript hold;
  hold.advances = false;
  sim_->SetTask("c", hold);
  AwaitOptions o;
  o.cancellation = std::make_shared<Cancellation>();
  absl::StatusOr<v1::VideoTask> result;
  std::thread waiter([&] { result = client_->Await("c", o); });
  ASSERT_TRUE(Eventually([&] { return sidecar_->hub()->GetStats().active_watches == 1; },
                         absl::Seconds(5)));
  const absl::Time cancelled = absl::Now();
  o.cancellation->Cancel();
  waiter.join();
  // At once: without the cancellation the wait would not end (or only at
  // give_up_after, 60 s).
  EXPECT_LT(absl::Now() - cancelled, absl::Seconds(3));
  EXPECT_EQ(result.status().code(), absl::StatusCode::kCancelled);
  EXPECT_TRUE(Eventually([&] { return sidecar_->hub()->GetStats().active_watches == 0; },
                         absl::Seconds(5)))
      << "the sidecar unsubscribed";
}

TEST_F(ClientTest, TimeoutIsDeadlineExceeded) {
  sim::TaskScript hold;
  hold.advances = false;
  sim_->SetTask("slow", hold);
  AwaitOptions o;
  o.timeout = absl::Milliseconds(400);
  EXPECT_EQ(client_->Await("slow", o).status().code(), absl::StatusCode::kDeadlineExceeded);
}

// The error of an Await/Get/Health that never reached the sidecar: UNAVAILABLE
// naming the address and how long, never DEADLINE_EXCEEDED (which reads as
// "the vendor is slow").
void ExpectUnreachable(const absl::Status& status, const std::string& target,
                       const std::string& duration) {
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
  EXPECT_TRUE(absl::StrContains(
      status.message(), absl::StrCat("sidecar at ", target, " unreachable for ", duration)))
      << status;
}

// A closed port, a listener that never answers: when the timeout ends (or
// give_up_after, whichever is first) and no stream was ever opened, Await
// is UNAVAILABLE "unreachable", on time.
TEST(ClientUnreachableTest, NoStreamEverOpenedIsUnreachableNotATimeout) {
  SilentListener silent;
  for (const std::string& target : {ClosedPortTarget(), silent.target()}) {
    SCOPED_TRACE(target);
    auto client = VideoTaskClient::Create(target);
    AwaitOptions o;
    o.initial_backoff = absl::Milliseconds(20);
    o.timeout = absl::Milliseconds(800);  // before give_up_after (60 s)
    absl::Time start = absl::Now();
    ExpectUnreachable(client->Await("x", o).status(), target, "800ms");
    EXPECT_GE(absl::Now() - start, absl::Milliseconds(800));
    EXPECT_LT(absl::Now() - start, absl::Seconds(3));

    o.timeout = absl::Seconds(30);  // give_up_after first
    o.give_up_after = absl::Milliseconds(500);
    start = absl::Now();
    ExpectUnreachable(client->Await("x", o).status(), target, "500ms");
    EXPECT_LT(absl::Now() - start, absl::Seconds(3))
        << "a connection that never answers must not hold Await past give_up_after";

    ExpectUnreachable(client->Get("x", absl::Milliseconds(500)).status(), target, "500ms");
    ExpectUnreachable(client->Health(absl::Milliseconds(500)), target, "500ms");
  }
}

// Waiting for a sidecar that never answers still ends at once on Cancel().
TEST(ClientUnreachableTest, CancellationEndsTheWaitForTheChannel) {
  SilentListener silent;
  auto client = VideoTaskClient::Create(silent.target());
  AwaitOptions o;
  o.cancellation = std::make_shared<Cancellation>();
  absl::Notification started;
  absl::StatusOr<v1::VideoTask> result;
  std::thread waiter([&] {
    started.Notify();
    result = client->Await("x", o);
  });
  started.WaitForNotification();
  const absl::Time cancelled = absl::Now();
  o.cancellation->Cancel();
  waiter.join();
  // At once: without the cancellation the wait would not end (or only at
  // give_up_after, 60 s).
  EXPECT_LT(absl::Now() - cancelled, absl::Seconds(3));
  EXPECT_EQ(result.status().code(), absl::StatusCode::kCancelled) << result.status();
}

TEST(ClientUnreachableTest, BadDurationsAreInvalidArgument) {
  auto client = VideoTaskClient::Create(ClosedPortTarget());
  AwaitOptions o;
  o.timeout = absl::ZeroDuration();
  EXPECT_EQ(client->Await("x", o).status().code(), absl::StatusCode::kInvalidArgument);
  o.timeout = absl::Seconds(1);
  o.give_up_after = -absl::Seconds(1);
  EXPECT_EQ(client->Await("x", o).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(client->Get("x", absl::ZeroDuration()).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(client->Health(-absl::Seconds(1)).code(), absl::StatusCode::kInvalidArgument);
}

// Reachable, then gone until the timeout: the task did not finish while the
// sidecar was there, so DEADLINE_EXCEEDED, and the message says the sidecar
// has been unreachable since.
TEST_F(ClientTest, SidecarGoneUntilTheTimeoutIsATimeoutThatSaysSo) {
  sim::TaskScript hold;
  hold.advances = false;
  sim_->SetTask("gone", hold);
  Recorder rec;
  AwaitOptions o;
  o.timeout = absl::Seconds(2);
  o.initial_backoff = absl::Milliseconds(20);
  o.on_event = [&](const WatchVideoTaskResponse& e) { rec.Add(e); };
  absl::StatusOr<v1::VideoTask> result;
  std::thread waiter([&] { result = client_->Await("gone", o); });
  EXPECT_TRUE(rec.WaitFor(1, absl::Seconds(2)));
  sidecar_->Shutdown(absl::Milliseconds(100));
  waiter.join();
  EXPECT_EQ(result.status().code(), absl::StatusCode::kDeadlineExceeded) << result.status();
  EXPECT_TRUE(absl::StrContains(result.status().message(), "was unreachable for its last"))
      << result.status();
}

// A stand-in sidecar whose WatchVideoTask misbehaves on purpose: each call
// runs the next scripted step (the last one repeats).
class ScriptedSidecar final : public v1::VideoTaskService::Service {
 public:
  using Writer = grpc::ServerWriter<WatchVideoTaskResponse>;
  // `stopping` is notified when the stand-in shuts down (steps that hold a
  // stream open wait for it).
  using Step = std::function<grpc::Status(Writer*, const absl::Notification& stopping)>;

  explicit ScriptedSidecar(std::vector<Step> steps) : steps_(std::move(steps)) {
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(this);
    server_ = builder.BuildAndStart();
    target_ = absl::StrCat("127.0.0.1:", port);
  }
  ~ScriptedSidecar() override {
    stopping_.Notify();
    server_->Shutdown();
  }

  grpc::Status WatchVideoTask(grpc::ServerContext*, const v1::WatchVideoTaskRequest*,
                              Writer* writer) override {
    Step step;
    {
      absl::MutexLock lock(&mu_);
      step = steps_[std::min(calls_, steps_.size() - 1)];
      ++calls_;
    }
    return step(writer, stopping_);
  }
  size_t calls() {
    absl::MutexLock lock(&mu_);
    return calls_;
  }
  const std::string& target() const { return target_; }

  static WatchVideoTaskResponse Snapshot(VideoTaskStatus status) {
    WatchVideoTaskResponse r;
    r.set_type(WatchVideoTaskResponse::EVENT_TYPE_SNAPSHOT);
    r.mutable_task()->set_id("x");
    r.mutable_task()->set_status(status);
    return r;
  }

 private:
  const std::vector<Step> steps_;
  absl::Notification stopping_;
  absl::Mutex mu_;
  size_t calls_ ABSL_GUARDED_BY(mu_) = 0;
  std::unique_ptr<grpc::Server> server_;
  std::string target_;
};

// A sidecar that sends a SNAPSHOT and drops the stream, over and over, or
// ends streams without a final state: each stream is "something", but the
// task never moves, so the outage budget runs out all the same.
TEST(ClientOutageTest, StreamsThatBringNothingNewRunOutTheOutageBudget) {
  for (const grpc::Status& end :
       {grpc::Status(grpc::StatusCode::UNAVAILABLE, "flap"), grpc::Status::OK}) {
    ScriptedSidecar fake({[&end](ScriptedSidecar::Writer* w, const absl::Notification&) {
      w->Write(ScriptedSidecar::Snapshot(v1::VIDEO_TASK_STATUS_PROCESSING));
      return end;
    }});
    auto client = VideoTaskClient::Create(fake.target());
    std::vector<VideoTaskStatus> seen;
    AwaitOptions o;
    o.give_up_after = absl::Seconds(1);
    o.initial_backoff = absl::Milliseconds(20);
    o.timeout = absl::Seconds(20);
    o.on_event = [&seen](const WatchVideoTaskResponse& e) { seen.push_back(e.task().status()); };
    const absl::Time start = absl::Now();
    absl::StatusOr<v1::VideoTask> r = client->Await("x", o);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable) << r.status();
    EXPECT_GE(absl::Now() - start, absl::Seconds(1));
    EXPECT_LT(absl::Now() - start, absl::Seconds(3));
    EXPECT_GE(fake.calls(), 3u);
    EXPECT_EQ(seen, std::vector<VideoTaskStatus>{v1::VIDEO_TASK_STATUS_PROCESSING})
        << "reported once, not once per stream";
  }
}

// DEADLINE_EXCEEDED from the server side (a proxy's timeout) is not the
// caller's timeout: it is retried.
TEST(ClientOutageTest, DeadlineExceededFromTheServerIsRetried) {
  ScriptedSidecar fake(
      {[](ScriptedSidecar::Writer*, const absl::Notification&) {
         return grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "proxy timeout");
       },
       [](ScriptedSidecar::Writer* w, const absl::Notification&) {
         w->Write(ScriptedSidecar::Snapshot(v1::VIDEO_TASK_STATUS_COMPLETED));
         return grpc::Status::OK;
       }});
  auto client = VideoTaskClient::Create(fake.target());
  AwaitOptions o;
  o.initial_backoff = absl::Milliseconds(20);
  o.timeout = absl::Seconds(20);
  absl::StatusOr<v1::VideoTask> r = client->Await("x", o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status(), v1::VIDEO_TASK_STATUS_COMPLETED);
  EXPECT_EQ(fake.calls(), 2u);
}

// A sidecar that refuses every stream (draining, full) never opened one:
// when the timeout ends that is UNAVAILABLE too, with the sidecar's reason.
TEST(ClientOutageTest, RefusedStreamsUntilTheTimeoutAreUnreachable) {
  ScriptedSidecar fake({[](ScriptedSidecar::Writer*, const absl::Notification&) {
    return grpc::Status(grpc::StatusCode::UNAVAILABLE, "sidecar is draining");
  }});
  auto client = VideoTaskClient::Create(fake.target());
  AwaitOptions o;
  o.initial_backoff = absl::Milliseconds(20);
  o.timeout = absl::Milliseconds(600);
  absl::Status st = client->Await("x", o).status();
  ExpectUnreachable(st, fake.target(), "600ms");
  EXPECT_TRUE(absl::StrContains(st.message(), "sidecar is draining")) << st;
  EXPECT_GE(fake.calls(), 2u);
}

// A sidecar that takes the stream and sends nothing yet (its first upstream
// poll is slow), with or without early headers, is reachable: the timeout is
// DEADLINE_EXCEEDED, not "unreachable".
TEST(ClientOutageTest, AStreamHeldOpenWithoutMessagesIsATimeout) {
  for (bool headers : {false, true}) {
    SCOPED_TRACE(headers ? "headers sent" : "nothing sent");
    ScriptedSidecar fake(
        {[headers](ScriptedSidecar::Writer* w, const absl::Notification& stopping) {
          if (headers) w->SendInitialMetadata();
          stopping.WaitForNotificationWithTimeout(absl::Seconds(30));
          return grpc::Status::OK;
        }});
    auto client = VideoTaskClient::Create(fake.target());
    AwaitOptions o;
    o.timeout = absl::Milliseconds(600);
    absl::Status st = client->Await("x", o).status();
    EXPECT_EQ(st.code(), absl::StatusCode::kDeadlineExceeded) << st;
    EXPECT_TRUE(absl::StrContains(st.message(), "did not finish within the timeout")) << st;
    EXPECT_FALSE(absl::StrContains(st.message(), "unreachable")) << st;
  }
}

TEST(ClientUnreachableTest, UnavailableAfterOpenedStreamsSaysAfterRetries) {
  // The first stream brings a status, then every stream is refused.
  ScriptedSidecar fake(
      {[](ScriptedSidecar::Writer* w, const absl::Notification&) {
         w->Write(ScriptedSidecar::Snapshot(v1::VIDEO_TASK_STATUS_QUEUED));
         return grpc::Status(grpc::StatusCode::UNAVAILABLE, "draining");
       },
       [](ScriptedSidecar::Writer*, const absl::Notification&) {
         return grpc::Status(grpc::StatusCode::UNAVAILABLE, "draining");
       }});
  auto client = VideoTaskClient::Create(fake.target());
  AwaitOptions o;
  o.initial_backoff = absl::Milliseconds(20);
  o.give_up_after = absl::Milliseconds(500);
  absl::Status st = client->Await("x", o).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable) << st;
  EXPECT_TRUE(absl::StrContains(st.message(), absl::StrCat("sidecar at ", fake.target(),
                                                           " unavailable after retries: ")))
      << st;
}

TEST_F(ClientTest, GetAndHealth) {
  sim_->SetTask("g", sim::TaskScript{});
  auto t = client_->Get("g", absl::Seconds(5));
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->status(), v1::VIDEO_TASK_STATUS_QUEUED);
  EXPECT_TRUE(client_->Health(absl::Seconds(5)).ok());
}

}  // namespace
}  // namespace videotask
