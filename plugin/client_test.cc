// VideoTaskClient against the real sidecar (in process) and the simulated
// upstream over loopback, including a sidecar restart in the middle of a watch.
#include "plugin/client.h"

#include <algorithm>
#include <cstdlib>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "server/sidecar.h"
#include "tests/sim/sim_upstream.h"

namespace videotask {
namespace {

using v1::VideoTaskStatus;
using v1::WatchVideoTaskResponse;

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
  const absl::Time end = absl::Now() + absl::Seconds(10);
  while (rec.Get().size() < 2 && absl::Now() < end) absl::SleepFor(absl::Milliseconds(10));
  ASSERT_GE(rec.Get().size(), 2u);
  const std::string target = sidecar_->target();
  sidecar_->Shutdown(absl::Seconds(1));  // the stream ends with UNAVAILABLE
  sidecar_.reset();
  absl::SleepFor(absl::Milliseconds(300));  // the client retries against nothing
  StartSidecar(target);                     // same address, fresh state
  const absl::Time restarted = absl::Now();
  absl::SleepFor(absl::Milliseconds(500));
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
  absl::SleepFor(absl::Milliseconds(300));
  const absl::Time cancelled = absl::Now();
  o.cancellation->Cancel();
  waiter.join();
  EXPECT_LT(absl::Now() - cancelled, absl::Seconds(1));
  EXPECT_EQ(result.status().code(), absl::StatusCode::kCancelled);
  const absl::Time end = absl::Now() + absl::Seconds(5);
  while (sidecar_->hub()->GetStats().active_watches > 0 && absl::Now() < end) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_EQ(sidecar_->hub()->GetStats().active_watches, 0) << "the sidecar unsubscribed";
}

TEST_F(ClientTest, TimeoutIsDeadlineExceeded) {
  sim::TaskScript hold;
  hold.advances = false;
  sim_->SetTask("slow", hold);
  AwaitOptions o;
  o.timeout = absl::Milliseconds(400);
  EXPECT_EQ(client_->Await("slow", o).status().code(), absl::StatusCode::kDeadlineExceeded);
}

TEST_F(ClientTest, UnreachableSidecarIsUnavailableAfterRetries) {
  auto nowhere = VideoTaskClient::Create("127.0.0.1:1");
  AwaitOptions o;
  o.give_up_after = absl::Milliseconds(500);
  o.initial_backoff = absl::Milliseconds(20);
  EXPECT_EQ(nowhere->Await("x", o).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(nowhere->Health(absl::Milliseconds(500)).code(), absl::StatusCode::kUnavailable);
}

// A stand-in sidecar whose WatchVideoTask misbehaves on purpose: each call
// runs the next scripted step (the last one repeats).
class ScriptedSidecar final : public v1::VideoTaskService::Service {
 public:
  using Writer = grpc::ServerWriter<WatchVideoTaskResponse>;
  using Step = std::function<grpc::Status(Writer*)>;

  explicit ScriptedSidecar(std::vector<Step> steps) : steps_(std::move(steps)) {
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(this);
    server_ = builder.BuildAndStart();
    target_ = absl::StrCat("127.0.0.1:", port);
  }
  ~ScriptedSidecar() override { server_->Shutdown(); }

  grpc::Status WatchVideoTask(grpc::ServerContext*, const v1::WatchVideoTaskRequest*,
                              Writer* writer) override {
    Step step;
    {
      absl::MutexLock lock(&mu_);
      step = steps_[std::min(calls_, steps_.size() - 1)];
      ++calls_;
    }
    return step(writer);
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
    ScriptedSidecar fake({[&end](ScriptedSidecar::Writer* w) {
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
      {[](ScriptedSidecar::Writer*) {
         return grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "proxy timeout");
       },
       [](ScriptedSidecar::Writer* w) {
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

TEST_F(ClientTest, GetAndHealth) {
  sim_->SetTask("g", sim::TaskScript{});
  auto t = client_->Get("g", absl::Seconds(5));
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->status(), v1::VIDEO_TASK_STATUS_QUEUED);
  EXPECT_TRUE(client_->Health(absl::Seconds(5)).ok());
}

}  // namespace
}  // namespace videotask
