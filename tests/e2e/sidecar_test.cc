// End-to-end tests of the sidecar in process: the real Sidecar (gRPC server,
// poll hub, libcurl client, metrics endpoint) against the simulated upstream
// over loopback, driven by a real gRPC client.
#include <unistd.h>

#include <atomic>
#include <cstdlib>
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
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "httplib.h"
#include "proto/videotask/v1/video_task.grpc.pb.h"
#include "server/sidecar.h"
#include "tests/sim/sim_upstream.h"
#include "tests/testing/listeners.h"

namespace videotask {
namespace {

using sim::Fault;
using sim::FaultKind;
using sim::SimUpstream;
using sim::TaskScript;
using testing::CanListenOn;
using testing::ConnectProbe;
using testing::FreePort;
using testing::ListenOn;
using testing::PortOf;
using v1::VideoTask;
using v1::WatchVideoTaskResponse;

constexpr char kKey[] = "sk-e2e-SECRET-7f3a";

struct WatchResult {
  std::vector<WatchVideoTaskResponse> events;
  std::vector<absl::Time> times;
  grpc::Status status;
};

// Real time, with a wall clock that a test can step (NTP, VM resume).
class SteppedClock : public Clock {
 public:
  absl::Time Now() const override {
    absl::MutexLock lock(&mu_);
    return absl::Now() + offset_;
  }
  absl::Time Monotonic() const override { return RealClock::Get()->Monotonic(); }
  void Step(absl::Duration d) {
    absl::MutexLock lock(&mu_);
    offset_ += d;
  }

 private:
  mutable absl::Mutex mu_;
  absl::Duration offset_ ABSL_GUARDED_BY(mu_);
};

class SidecarTest : public ::testing::Test {
 protected:
  void SetUp() override { setenv("VIDEOTASK_E2E_KEY", kKey, 1); }

  void StartAll(SidecarConfig config = DefaultConfig(), SimUpstream::Options sim_options = {}) {
    sim_options.api_key = kKey;
    auto sim = SimUpstream::Start(sim_options);
    ASSERT_TRUE(sim.ok()) << sim.status();
    sim_ = std::move(*sim);
    config.upstream_url = sim_->base_url();
    auto sidecar = Sidecar::Start(config);
    ASSERT_TRUE(sidecar.ok()) << sidecar.status();
    sidecar_ = std::move(*sidecar);
    channel_ = grpc::CreateChannel(sidecar_->target(), grpc::InsecureChannelCredentials());
    stub_ = v1::VideoTaskService::NewStub(channel_);
  }

  static SidecarConfig DefaultConfig() {
    SidecarConfig c;
    c.listen = "127.0.0.1:0";
    c.metrics_listen = "127.0.0.1:0";
    c.api_key_env = "VIDEOTASK_E2E_KEY";
    c.hub.poll_interval = absl::Milliseconds(200);
    c.hub.heartbeat_interval = absl::Milliseconds(300);
    c.hub.max_upstream_qps = 100;
    c.hub.max_inflight = 64;
    c.hub.backoff_max = absl::Seconds(1);
    c.upstream_timeout = absl::Seconds(2);
    return c;
  }

  WatchResult Watch(const std::string& id, absl::Duration deadline = absl::Seconds(20),
                    grpc::ClientContext* given = nullptr) {
    grpc::ClientContext local;
    grpc::ClientContext* ctx = given != nullptr ? given : &local;
    ctx->set_deadline(std::chrono::system_clock::now() + absl::ToChronoMilliseconds(deadline));
    v1::WatchVideoTaskRequest req;
    req.set_id(id);
    auto reader = stub_->WatchVideoTask(ctx, req);
    WatchResult out;
    WatchVideoTaskResponse msg;
    while (reader->Read(&msg)) {
      out.events.push_back(msg);
      out.times.push_back(absl::Now());
    }
    out.status = reader->Finish();
    return out;
  }

  grpc::Status Get(const std::string& id, VideoTask* task) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    v1::GetVideoTaskRequest req;
    req.set_id(id);
    return stub_->GetVideoTask(&ctx, req, task);
  }

  std::string Metrics() {
    httplib::Client cli("127.0.0.1", sidecar_->metrics_port());
    auto res = cli.Get("/metrics");
    if (!res || res->status != 200) return "";
    return res->body;
  }

  // Waits (bounded) until `pred` holds; for conditions set by other threads.
  template <typename Pred>
  bool Eventually(Pred pred, absl::Duration limit = absl::Seconds(10)) {
    const absl::Time end = absl::Now() + limit;
    while (absl::Now() < end) {
      if (pred()) return true;
      absl::SleepFor(absl::Milliseconds(10));
    }
    return pred();
  }

  SteppedClock stepped_clock_;  // outlives the sidecar that may use it
  std::unique_ptr<SimUpstream> sim_;
  std::unique_ptr<Sidecar> sidecar_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::VideoTaskService::Stub> stub_;
};

TaskScript Script(int queued, int processing, bool fails = false) {
  TaskScript s;
  s.queued_polls = queued;
  s.processing_polls = processing;
  s.fails = fails;
  return s;
}

TEST_F(SidecarTest, FullLifecycleWithVideoUrlAndDuration) {
  StartAll();
  TaskScript s = Script(2, 2);
  s.video_url = "https://cdn.invalid/out/full.mp4";
  s.actual_duration = 12.5;
  sim_->SetTask("full", s);
  WatchResult r = Watch("full");
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  std::vector<WatchVideoTaskResponse> changes;
  for (const auto& e : r.events) {
    if (e.type() != WatchVideoTaskResponse::EVENT_TYPE_HEARTBEAT) changes.push_back(e);
  }
  ASSERT_EQ(changes.size(), 3u);
  EXPECT_EQ(changes[0].type(), WatchVideoTaskResponse::EVENT_TYPE_SNAPSHOT);
  EXPECT_EQ(changes[0].task().status(), v1::VIDEO_TASK_STATUS_QUEUED);
  EXPECT_EQ(changes[0].task().model(), "videos");
  EXPECT_EQ(changes[0].task().create_time().seconds(), 1761635478);
  EXPECT_EQ(changes[1].type(), WatchVideoTaskResponse::EVENT_TYPE_TRANSITION);
  EXPECT_EQ(changes[1].previous_status(), v1::VIDEO_TASK_STATUS_QUEUED);
  EXPECT_EQ(changes[1].task().status(), v1::VIDEO_TASK_STATUS_PROCESSING);
  EXPECT_EQ(changes[2].previous_status(), v1::VIDEO_TASK_STATUS_PROCESSING);
  const VideoTask& done = changes[2].task();
  EXPECT_EQ(done.status(), v1::VIDEO_TASK_STATUS_COMPLETED);
  EXPECT_EQ(done.id(), "full");
  EXPECT_EQ(done.video_url(), "https://cdn.invalid/out/full.mp4");
  EXPECT_EQ(done.actual_duration().seconds(), 12);
  EXPECT_EQ(done.actual_duration().nanos(), 500000000);
  EXPECT_GT(done.observe_time().seconds(), 0);
  EXPECT_EQ(r.events.back().task().status(), v1::VIDEO_TASK_STATUS_COMPLETED) << "terminal is last";
  EXPECT_EQ(sim_->RequestCount("full"), 5);
}

TEST_F(SidecarTest, FailedVideoIsAnEventNotAnRpcError) {
  StartAll();
  TaskScript s = Script(1, 1, /*fails=*/true);
  s.error = "prompt rejected";
  sim_->SetTask("bad", s);
  WatchResult r = Watch("bad");
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  ASSERT_FALSE(r.events.empty());
  EXPECT_EQ(r.events.back().task().status(), v1::VIDEO_TASK_STATUS_FAILED);
  EXPECT_EQ(r.events.back().task().error(), "prompt rejected");
  EXPECT_TRUE(r.events.back().task().video_url().empty());
}

TEST_F(SidecarTest, TwoHundredWatchersCostTheUpstreamWhatOneCosts) {
  StartAll();
  sim_->SetTask("alone", Script(2, 3));
  sim_->SetTask("shared", Script(2, 3));
  WatchResult alone = Watch("alone");
  ASSERT_TRUE(alone.status.ok());
  std::vector<WatchResult> results(200);
  std::vector<std::thread> threads;
  for (int i = 0; i < 200; ++i) {
    threads.emplace_back([&, i] { results[i] = Watch("shared"); });
  }
  for (auto& t : threads) t.join();
  for (const auto& r : results) {
    ASSERT_TRUE(r.status.ok()) << r.status.error_message();
    EXPECT_EQ(r.events.back().task().status(), v1::VIDEO_TASK_STATUS_COMPLETED);
  }
  EXPECT_EQ(sim_->RequestCount("shared"), sim_->RequestCount("alone"));
  EXPECT_EQ(sim_->RequestCount("shared"), 6);
}

TEST_F(SidecarTest, ThreeHundredTasksNeverExceedTheRateCap) {
  SidecarConfig c = DefaultConfig();
  c.hub.max_upstream_qps = 20;
  c.hub.poll_interval = absl::Milliseconds(500);
  StartAll(c);
  TaskScript hold;
  hold.advances = false;
  std::vector<std::unique_ptr<grpc::ClientContext>> contexts;
  std::vector<std::thread> threads;
  for (int i = 0; i < 300; ++i) {
    const std::string id = absl::StrCat("cap", i);
    sim_->SetTask(id, hold);
    contexts.push_back(std::make_unique<grpc::ClientContext>());
    grpc::ClientContext* ctx = contexts.back().get();
    threads.emplace_back([this, id, ctx] { Watch(id, absl::Seconds(30), ctx); });
  }
  absl::SleepFor(absl::Seconds(5));
  for (auto& ctx : contexts) ctx->TryCancel();
  for (auto& t : threads) t.join();
  std::vector<absl::Time> times = sim_->RequestTimes();
  std::sort(times.begin(), times.end());
  ASSERT_GE(times.size(), 60u);
  // Requests are counted on arrival; allow 50 ms of loopback skew.
  for (size_t i = 20; i < times.size(); ++i) {
    EXPECT_GE(times[i] - times[i - 20], absl::Milliseconds(950)) << "window ending at " << i;
  }
}

TEST_F(SidecarTest, RateLimitWithRetryAfterSilencesAllTraffic) {
  SidecarConfig c = DefaultConfig();
  c.hub.backoff_max = absl::Seconds(5);  // the cap of every pause: above 2 s
  StartAll(c);
  TaskScript hold;
  hold.advances = false;
  std::vector<std::unique_ptr<grpc::ClientContext>> contexts;
  std::vector<std::thread> threads;
  for (int i = 0; i < 5; ++i) {
    const std::string id = absl::StrCat("rl", i);
    sim_->SetTask(id, hold);
    contexts.push_back(std::make_unique<grpc::ClientContext>());
    grpc::ClientContext* ctx = contexts.back().get();
    threads.emplace_back([this, id, ctx] { Watch(id, absl::Seconds(30), ctx); });
  }
  ASSERT_TRUE(Eventually([&] { return sim_->TotalRequests() >= 10; }));
  const size_t before = sim_->RequestTimes().size();
  Fault f;
  f.kind = FaultKind::kRateLimit;
  f.retry_after_header = "2";
  sim_->InjectFault("", f);
  absl::SleepFor(absl::Seconds(3));
  for (auto& ctx : contexts) ctx->TryCancel();
  for (auto& t : threads) t.join();
  std::vector<absl::Time> times = sim_->RequestTimes();
  std::sort(times.begin(), times.end());
  ASSERT_GT(times.size(), before + 1);
  const absl::Time limited = times[before];  // the request answered with 429
  // Requests already sent when the 429 reached the sidecar (another task's
  // poll a few milliseconds later) are not the sidecar ignoring the pause:
  // the first 100 ms after the 429 are not counted.
  int during = 0;
  for (size_t i = before + 1; i < times.size(); ++i) {
    if (times[i] > limited + absl::Milliseconds(100) &&
        times[i] < limited + absl::Milliseconds(1950)) {
      ++during;
    }
  }
  EXPECT_EQ(during, 0) << "requests during the 2 s pause";
  EXPECT_GT(times.size(), before + 3) << "traffic resumed after the pause";
  EXPECT_TRUE(absl::StrContains(Metrics(), "videotask_rate_limited_total 1"));
}

TEST_F(SidecarTest, BadResponsesEndInCompletedOnceUpstreamRecovers) {
  SidecarConfig c = DefaultConfig();
  // Long enough for the simulated vendor to start sending 4 MiB on a loaded
  // machine (at 500 ms the oversized case timed out at load average 9), short
  // enough for the hanging case's two timeouts.
  c.upstream_timeout = absl::Seconds(2);
  StartAll(c);
  std::vector<std::pair<std::string, Fault>> cases;
  Fault f;
  f.kind = FaultKind::kServerError;
  f.http_status = 503;
  cases.push_back({"f503", f});
  f = {};
  f.kind = FaultKind::kMalformedJson;
  cases.push_back({"fmalformed", f});
  f = {};
  f.kind = FaultKind::kHtml;
  cases.push_back({"fhtml", f});
  f = {};
  f.kind = FaultKind::kOversized;
  f.body_bytes = 4 << 20;
  cases.push_back({"foversized", f});
  f = {};
  f.kind = FaultKind::kHang;
  f.delay = absl::Seconds(30);
  cases.push_back({"fhang", f});
  f = {};
  f.kind = FaultKind::kUnknownStatus;
  cases.push_back({"funknown", f});
  for (auto& [id, fault] : cases) {
    sim_->SetTask(id, Script(1, 1));
    fault.count = 2;
    sim_->InjectFault(id, fault);
  }
  std::vector<WatchResult> results(cases.size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < cases.size(); ++i) {
    threads.emplace_back([&, i] { results[i] = Watch(cases[i].first, absl::Seconds(30)); });
  }
  for (auto& t : threads) t.join();
  for (size_t i = 0; i < cases.size(); ++i) {
    SCOPED_TRACE(cases[i].first);
    ASSERT_TRUE(results[i].status.ok()) << results[i].status.error_message();
    for (const auto& e : results[i].events) {
      EXPECT_NE(e.task().status(), v1::VIDEO_TASK_STATUS_UNSPECIFIED);
    }
    EXPECT_EQ(results[i].events.back().task().status(), v1::VIDEO_TASK_STATUS_COMPLETED);
    EXPECT_EQ(sim_->RequestCount(cases[i].first), 5) << "2 faults + 3 good answers";
  }
  const std::string metrics = Metrics();
  EXPECT_TRUE(absl::StrContains(metrics, "code=\"503\"")) << metrics;
  EXPECT_TRUE(absl::StrContains(metrics, "code=\"timeout\"")) << metrics;
  EXPECT_TRUE(absl::StrContains(metrics, "code=\"body_too_large\"")) << metrics;
  // Memory is bounded: only the finished tasks' cached states remain.
  EXPECT_EQ(sidecar_->hub()->GetStats().active_watches, 0);
  EXPECT_LE(sidecar_->hub()->GetStats().tasks, static_cast<int64_t>(cases.size()));
}

TEST_F(SidecarTest, UnknownIdEndsWithNotFoundAfterOneConfirmingRetry) {
  StartAll();
  WatchResult r = Watch("nobody-knows");
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::NOT_FOUND) << r.status.error_message();
  EXPECT_TRUE(r.events.empty());
  EXPECT_EQ(sim_->RequestCount("nobody-knows"), 2);
  VideoTask t;
  EXPECT_EQ(Get("nobody-at-all", &t).error_code(), grpc::StatusCode::NOT_FOUND);
}

TEST_F(SidecarTest, RejectedKeyIsFailedPrecondition) {
  SimUpstream::Options so;
  StartAll(DefaultConfig(), so);
  // Restart the sidecar with a wrong key against the same upstream.
  setenv("VIDEOTASK_E2E_WRONG_KEY", "sk-wrong", 1);
  SidecarConfig c = DefaultConfig();
  c.api_key_env = "VIDEOTASK_E2E_WRONG_KEY";
  c.upstream_url = sim_->base_url();
  auto wrong = Sidecar::Start(c);
  ASSERT_TRUE(wrong.ok());
  auto stub = v1::VideoTaskService::NewStub(
      grpc::CreateChannel((*wrong)->target(), grpc::InsecureChannelCredentials()));
  sim_->SetTask("k", Script(1, 1));
  grpc::ClientContext ctx;
  v1::WatchVideoTaskRequest req;
  req.set_id("k");
  auto reader = stub->WatchVideoTask(&ctx, req);
  WatchVideoTaskResponse msg;
  while (reader->Read(&msg)) {
  }
  const grpc::Status st = reader->Finish();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << st.error_message();
  EXPECT_FALSE(absl::StrContains(st.error_message(), "sk-wrong"));
}

TEST_F(SidecarTest, BadIdsAreInvalidArgumentWithoutUpstreamRequests) {
  StartAll();
  for (const std::string& id : {std::string("../admin"), std::string("a/b"), std::string("%2F"),
                                std::string(""), std::string(1000, 'a'), std::string("a b"),
                                std::string("x\ny"), std::string("..")}) {
    WatchResult r = Watch(id);
    EXPECT_EQ(r.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << id;
    EXPECT_TRUE(r.events.empty());
    VideoTask t;
    EXPECT_EQ(Get(id, &t).error_code(), grpc::StatusCode::INVALID_ARGUMENT) << id;
  }
  EXPECT_EQ(sim_->TotalRequests(), 0);
}

// Requests whose bytes are not the request message (a client built from
// another proto, a broken proxy) get INVALID_ARGUMENT from every method.
TEST_F(SidecarTest, MalformedRequestsAreInvalidArgument) {
  StartAll();
  grpc::GenericStub generic(channel_);
  grpc::CompletionQueue cq;
  const std::string garbage("\x0a\xff\xff\xff\xff\x0f", 6);  // a field longer than the message
  for (const char* method : {"/videotask.v1.VideoTaskService/GetVideoTask",
                             "/videotask.v1.VideoTaskService/WatchVideoTask",
                             "/videotask.v1.VideoTaskService/CreateVideoTask"}) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    grpc::Slice slice(garbage);
    grpc::ByteBuffer request(&slice, 1), response;
    auto call = generic.PrepareUnaryCall(&ctx, method, request, &cq);
    call->StartCall();
    grpc::Status status;
    call->Finish(&response, &status, reinterpret_cast<void*>(1));
    void* tag = nullptr;
    bool ok = false;
    ASSERT_TRUE(cq.Next(&tag, &ok));
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
        << method << ": " << status.error_message();
  }
  cq.Shutdown();
  void* tag = nullptr;
  bool ok = false;
  while (cq.Next(&tag, &ok)) {
  }
  EXPECT_EQ(sim_->TotalRequests(), 0);
}

TEST_F(SidecarTest, HeartbeatsAtTheConfiguredInterval) {
  StartAll();
  TaskScript hold;
  hold.advances = false;
  sim_->SetTask("hb", hold);
  WatchResult r = Watch("hb", absl::Milliseconds(1700));
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  ASSERT_GE(r.events.size(), 4u);
  EXPECT_EQ(r.events[0].type(), WatchVideoTaskResponse::EVENT_TYPE_SNAPSHOT);
  for (size_t i = 1; i < r.events.size(); ++i) {
    EXPECT_EQ(r.events[i].type(), WatchVideoTaskResponse::EVENT_TYPE_HEARTBEAT);
    EXPECT_EQ(r.events[i].task().status(), v1::VIDEO_TASK_STATUS_QUEUED);
    const absl::Duration gap = r.times[i] - r.times[i - 1];
    EXPECT_GE(gap, absl::Milliseconds(150)) << i;
    EXPECT_LE(gap, absl::Milliseconds(600)) << i;
  }
  EXPECT_LE(r.events.size(), 7u);
}

TEST_F(SidecarTest, PollingStopsWhenAllWatchersCancel) {
  StartAll();
  TaskScript hold;
  hold.advances = false;
  sim_->SetTask("quit", hold);
  std::vector<std::unique_ptr<grpc::ClientContext>> contexts;
  std::vector<std::thread> threads;
  for (int i = 0; i < 3; ++i) {
    contexts.push_back(std::make_unique<grpc::ClientContext>());
    grpc::ClientContext* ctx = contexts.back().get();
    threads.emplace_back([this, ctx] { Watch("quit", absl::Seconds(30), ctx); });
  }
  ASSERT_TRUE(Eventually([&] { return sim_->RequestCount("quit") >= 3; }));
  for (auto& ctx : contexts) ctx->TryCancel();
  for (auto& t : threads) t.join();
  ASSERT_TRUE(Eventually([&] { return sidecar_->hub()->GetStats().active_watches == 0; }));
  const int after_cancel = sim_->RequestCount("quit");
  absl::SleepFor(absl::Seconds(1));  // five poll intervals
  EXPECT_LE(sim_->RequestCount("quit"), after_cancel + 1) << "at most the poll in flight";
  EXPECT_EQ(sidecar_->hub()->GetStats().tasks, 0);
}

TEST_F(SidecarTest, GetOfFinishedTaskMakesNoUpstreamRequest) {
  StartAll();
  sim_->SetTask("fin", Script(1, 1));
  ASSERT_TRUE(Watch("fin").status.ok());
  const int polls = sim_->RequestCount("fin");
  VideoTask t;
  ASSERT_TRUE(Get("fin", &t).ok());
  EXPECT_EQ(t.status(), v1::VIDEO_TASK_STATUS_COMPLETED);
  EXPECT_EQ(sim_->RequestCount("fin"), polls);
  // A watcher of the finished task gets one SNAPSHOT and OK.
  WatchResult again = Watch("fin");
  ASSERT_TRUE(again.status.ok());
  ASSERT_EQ(again.events.size(), 1u);
  EXPECT_EQ(again.events[0].type(), WatchVideoTaskResponse::EVENT_TYPE_SNAPSHOT);
  EXPECT_EQ(sim_->RequestCount("fin"), polls);
}

TEST_F(SidecarTest, GetOfUnwatchedIdMakesOneRequestAndNoPolling) {
  StartAll();
  sim_->SetTask("once", Script(5, 5));
  VideoTask t;
  ASSERT_TRUE(Get("once", &t).ok());
  EXPECT_EQ(t.status(), v1::VIDEO_TASK_STATUS_QUEUED);
  absl::SleepFor(absl::Milliseconds(800));
  EXPECT_EQ(sim_->RequestCount("once"), 1);
}

// Clients that give up at once (cancel, or a deadline already past) on watches
// of good and bad ids: the server sees cancellations racing every early end.
// The sidecar must stay up and serve the next watch.
TEST_F(SidecarTest, WatchesCancelledAtOnceNeverTakeTheServerDown) {
  StartAll();
  sim_->SetTask("quick", Script(0, 0));
  std::vector<std::thread> clients;
  for (int c = 0; c < 4; ++c) {
    clients.emplace_back([this, c] {
      for (int i = 0; i < 400; ++i) {
        grpc::ClientContext ctx;
        ctx.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::microseconds((i % 4) * 100));
        v1::WatchVideoTaskRequest req;
        req.set_id((i + c) % 2 == 0 ? "quick" : "bad id!");
        auto reader = stub_->WatchVideoTask(&ctx, req);
        if (i % 3 == 0) ctx.TryCancel();
        WatchVideoTaskResponse msg;
        while (reader->Read(&msg)) {
        }
        reader->Finish();
      }
    });
  }
  for (std::thread& t : clients) t.join();

  WatchResult r = Watch("quick");
  EXPECT_TRUE(r.status.ok()) << r.status.error_message();
  ASSERT_FALSE(r.events.empty());
  EXPECT_EQ(r.events.back().task().status(), v1::VIDEO_TASK_STATUS_COMPLETED);
  EXPECT_TRUE(Eventually([&] { return sidecar_->service()->open_streams() == 0; }));
}

TEST_F(SidecarTest, HealthIsServing) {
  StartAll();
  auto health = grpc::health::v1::Health::NewStub(channel_);
  for (const std::string& service : {std::string(""), std::string(kServiceName)}) {
    grpc::ClientContext ctx;
    grpc::health::v1::HealthCheckRequest req;
    req.set_service(service);
    grpc::health::v1::HealthCheckResponse res;
    ASSERT_TRUE(health->Check(&ctx, req, &res).ok());
    EXPECT_EQ(res.status(), grpc::health::v1::HealthCheckResponse::SERVING) << service;
  }
  sidecar_->Drain();
  grpc::ClientContext ctx;
  grpc::health::v1::HealthCheckRequest req;
  grpc::health::v1::HealthCheckResponse res;
  ASSERT_TRUE(health->Check(&ctx, req, &res).ok());
  EXPECT_EQ(res.status(), grpc::health::v1::HealthCheckResponse::NOT_SERVING);
}

TEST_F(SidecarTest, MetricsCountRequests) {
  StartAll();
  sim_->SetTask("m", Script(1, 1));
  ASSERT_TRUE(Watch("m").status.ok());
  const std::string m = Metrics();
  EXPECT_TRUE(absl::StrContains(m, "videotask_upstream_requests_total{code=\"200\"} 3")) << m;
  for (const char* name :
       {"videotask_upstream_request_duration_seconds_bucket", "videotask_active_watches",
        "videotask_watched_tasks", "videotask_events_sent_total{type=\"transition\"} 2",
        "videotask_rate_limited_total"}) {
    EXPECT_TRUE(absl::StrContains(m, name)) << name;
  }
}

TEST_F(SidecarTest, DrainEndsOpenWatchesWithUnavailable) {
  StartAll();
  TaskScript hold;
  hold.advances = false;
  sim_->SetTask("d", hold);
  WatchResult r;
  std::thread watcher([&] { r = Watch("d"); });
  absl::Cleanup join = [&] {
    sidecar_->Shutdown(absl::Seconds(2));
    watcher.join();
  };
  ASSERT_TRUE(Eventually([&] {
    return absl::StrContains(Metrics(), "videotask_events_sent_total{type=\"snapshot\"} 1");
  }));
  std::move(join).Invoke();
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::UNAVAILABLE) << r.status.error_message();
  EXPECT_FALSE(r.events.empty());
}

TEST_F(SidecarTest, WatchesBeyondMaxWatchesAreResourceExhausted) {
  SidecarConfig c = DefaultConfig();
  c.hub.max_watches = 2;
  StartAll(c);
  TaskScript hold;
  hold.advances = false;
  sim_->SetTask("held", hold);
  grpc::ClientContext first_ctx, second_ctx;
  WatchResult first, second;
  std::thread a([&] { first = Watch("held", absl::Seconds(20), &first_ctx); });
  std::thread b([&] { second = Watch("held", absl::Seconds(20), &second_ctx); });
  std::thread c3;
  // On any exit (a failed ASSERT included): end the watches, then join.
  absl::Cleanup join = [&] {
    sim_->Complete("held");
    for (std::thread* t : {&a, &b, &c3}) {
      if (t->joinable()) t->join();
    }
  };
  ASSERT_TRUE(Eventually([&] { return sidecar_->hub()->GetStats().active_watches == 2; }));

  WatchResult refused = Watch("held");
  EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
      << refused.status.error_message();
  EXPECT_TRUE(refused.events.empty());

  // A watch that ends frees its place.
  first_ctx.TryCancel();
  a.join();
  ASSERT_TRUE(Eventually([&] { return sidecar_->hub()->GetStats().active_watches == 1; }));
  WatchResult third;
  c3 = std::thread([&] { third = Watch("held"); });
  ASSERT_TRUE(Eventually([&] { return sidecar_->hub()->GetStats().active_watches == 2; }));
  std::move(join).Invoke();
  EXPECT_TRUE(third.status.ok()) << third.status.error_message();
  EXPECT_TRUE(second.status.ok()) << second.status.error_message();
  EXPECT_EQ(third.events.back().task().status(), v1::VIDEO_TASK_STATUS_COMPLETED);
}

// A watch whose client reads its SNAPSHOT and then stops reading, on a
// channel without BDP probing, so that large events (a 256 KiB model name,
// set up by the caller) fill the HTTP/2 flow-control window in a few writes.
struct StalledWatch {
  grpc::ClientContext ctx;
  std::unique_ptr<grpc::ClientReader<WatchVideoTaskResponse>> reader;

  StalledWatch(const std::string& target, const std::string& id) {
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_HTTP2_BDP_PROBE, 0);
    args.SetInt(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 65535);
    stub_ = v1::VideoTaskService::NewStub(
        grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args));
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    v1::WatchVideoTaskRequest req;
    req.set_id(id);
    reader = stub_->WatchVideoTask(&ctx, req);
  }
  // Reads what was buffered; returns the stream's status.
  grpc::Status Drain() {
    WatchVideoTaskResponse msg;
    while (reader->Read(&msg)) {
      EXPECT_NE(msg.type(), WatchVideoTaskResponse::EVENT_TYPE_TRANSITION);
    }
    return reader->Finish();
  }

 private:
  std::unique_ptr<v1::VideoTaskService::Stub> stub_;
};

TaskScript BigHeldTask() {
  TaskScript hold;
  hold.advances = false;
  hold.model = std::string(256 * 1024, 'm');
  return hold;
}

// A watcher that stops reading is ended with RESOURCE_EXHAUSTED (and counted)
// once its write has been stuck for slow_watcher_timeout, and gets that status
// when it reads again; the watcher beside it on the same task is not held up.
TEST_F(SidecarTest, WatcherThatStopsReadingIsEndedWithResourceExhausted) {
  SidecarConfig c = DefaultConfig();
  c.hub.heartbeat_interval = absl::Milliseconds(20);
  c.service.slow_watcher_timeout = absl::Seconds(1);
  StartAll(c);
  sim_->SetTask("big", BigHeldTask());

  StalledWatch slow(sidecar_->target(), "big");
  WatchVideoTaskResponse msg;
  ASSERT_TRUE(slow.reader->Read(&msg));
  EXPECT_EQ(msg.type(), WatchVideoTaskResponse::EVENT_TYPE_SNAPSHOT);

  // The reading watcher keeps getting heartbeats while the other one stalls.
  WatchResult fast;
  std::atomic<int> fast_heartbeats{0};
  std::thread reader([&] {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    v1::WatchVideoTaskRequest req;
    req.set_id("big");
    auto r = stub_->WatchVideoTask(&ctx, req);
    WatchVideoTaskResponse m;
    while (r->Read(&m)) {
      if (m.type() == WatchVideoTaskResponse::EVENT_TYPE_HEARTBEAT) ++fast_heartbeats;
      fast.events.push_back(m);
    }
    fast.status = r->Finish();
  });
  // On any exit (a failed ASSERT included): end the reading watch, then join.
  absl::Cleanup join = [&] {
    sim_->Complete("big");
    reader.join();
  };
  ASSERT_TRUE(Eventually(
      [&] { return absl::StrContains(Metrics(), "videotask_slow_watchers_total 1"); },
      absl::Seconds(20)))
      << Metrics();
  const int heartbeats_then = fast_heartbeats.load();
  ASSERT_TRUE(Eventually([&] { return fast_heartbeats.load() > heartbeats_then + 3; }));

  // Whatever was buffered is still readable; then the stream's error, not OK.
  const grpc::Status st = slow.Drain();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << st.error_message();

  std::move(join).Invoke();
  EXPECT_TRUE(fast.status.ok()) << fast.status.error_message();
  ASSERT_FALSE(fast.events.empty());
  EXPECT_EQ(fast.events.back().task().status(), v1::VIDEO_TASK_STATUS_COMPLETED);
}

// A client that never reads again (but stays connected and answers pings)
// does not keep its watch: after another slow_watcher_timeout the stream is
// reset, the hub drops the watch and polling of the task stops.
TEST_F(SidecarTest, WatcherThatNeverReadsAgainIsCutAndFreesItsWatch) {
  SidecarConfig c = DefaultConfig();
  c.hub.heartbeat_interval = absl::Milliseconds(20);
  c.service.slow_watcher_timeout = absl::Milliseconds(300);
  StartAll(c);
  sim_->SetTask("big", BigHeldTask());

  StalledWatch slow(sidecar_->target(), "big");
  WatchVideoTaskResponse msg;
  ASSERT_TRUE(slow.reader->Read(&msg));
  ASSERT_TRUE(Eventually(
      [&] { return absl::StrContains(Metrics(), "videotask_slow_watchers_total 1"); },
      absl::Seconds(20)))
      << Metrics();
  EXPECT_TRUE(Eventually([&] {
    return sidecar_->hub()->GetStats().active_watches == 0 &&
           sidecar_->service()->open_streams() == 0;
  })) << "the stalled stream still holds its watch";
  const int polls = sim_->RequestCount("big");
  absl::SleepFor(absl::Milliseconds(600));  // three poll intervals
  EXPECT_EQ(sim_->RequestCount("big"), polls) << "the task is still polled for nobody";

  const grpc::Status st = slow.Drain();
  EXPECT_FALSE(st.ok());
}

// Abandoned Gets: 40 Gets of distinct unwatched ids whose callers give up
// after 300 ms, with a budget of one request a second. Once every caller has
// left, no request is sent for them, and a watch opened then polls at once.
TEST_F(SidecarTest, GetsWhoseCallersLeftNeverReachTheVendor) {
  SidecarConfig c = DefaultConfig();
  c.hub.max_upstream_qps = 1;
  SimUpstream::Options so;
  so.serve_unknown_ids = true;
  StartAll(c, so);
  std::vector<std::thread> callers;
  std::atomic<int> deadline_exceeded{0};
  for (int i = 0; i < 40; ++i) {
    callers.emplace_back([&, i] {
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(300));
      v1::GetVideoTaskRequest req;
      req.set_id(absl::StrCat("abandoned-", i));
      VideoTask task;
      if (stub_->GetVideoTask(&ctx, req, &task).error_code() ==
          grpc::StatusCode::DEADLINE_EXCEEDED) {
        ++deadline_exceeded;
      }
    });
  }
  for (std::thread& t : callers) t.join();
  EXPECT_GE(deadline_exceeded.load(), 35);
  ASSERT_TRUE(Eventually([&] { return sidecar_->hub()->GetStats().pending_gets == 0; }))
      << "the hub still holds Gets whose callers left";
  const int sent = sim_->TotalRequests();
  EXPECT_LE(sent, 2);
  // A watch now is not queued behind the abandoned Gets.
  sim_->SetTask("after-gets", Script(1, 1));
  WatchResult r = Watch("after-gets", absl::Seconds(10));
  EXPECT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(sim_->TotalRequests() - sim_->RequestCount("after-gets"), sent)
      << "requests were sent for callers who had left";
}

// A task whose terminal event arrives while the stream's write is stuck (the
// client stopped reading) is not fed by the hub any more; the stream is
// still ended and then reset, instead of living while the client stays
// connected.
TEST_F(SidecarTest, StuckStreamWhoseTaskEndsIsReset) {
  SidecarConfig c = DefaultConfig();
  c.hub.heartbeat_interval = absl::Hours(1);
  c.service.slow_watcher_timeout = absl::Milliseconds(500);
  StartAll(c);
  TaskScript big = BigHeldTask();
  big.advances = true;
  big.queued_polls = 1;
  big.processing_polls = 1;
  sim_->SetTask("big", big);
  StalledWatch slow(sidecar_->target(), "big");
  WatchVideoTaskResponse msg;
  ASSERT_TRUE(slow.reader->Read(&msg));
  // The TRANSITION is stuck behind the client; COMPLETED queues behind it.
  ASSERT_TRUE(Eventually([&] { return sim_->RequestCount("big") >= 3; }));
  EXPECT_TRUE(Eventually([&] { return sidecar_->service()->open_streams() == 0; },
                         absl::Seconds(8)))
      << "the stuck stream outlived its task";
  EXPECT_TRUE(absl::StrContains(Metrics(), "videotask_slow_watchers_total 1")) << Metrics();
  EXPECT_FALSE(slow.Drain().ok());
}

// Drain does not wait the whole grace period for a client that does not
// read its stream.
TEST_F(SidecarTest, StuckStreamDoesNotHoldUpShutdown) {
  SidecarConfig c = DefaultConfig();
  c.hub.heartbeat_interval = absl::Milliseconds(20);
  c.service.slow_watcher_timeout = absl::Seconds(60);
  StartAll(c);
  sim_->SetTask("big", BigHeldTask());
  StalledWatch slow(sidecar_->target(), "big");
  WatchVideoTaskResponse msg;
  ASSERT_TRUE(slow.reader->Read(&msg));
  absl::SleepFor(absl::Milliseconds(300));  // heartbeats fill the window
  const absl::Time start = absl::Now();
  sidecar_->Shutdown(absl::Seconds(20));
  EXPECT_LT(absl::Now() - start, absl::Seconds(5)) << "shutdown waited for a stuck stream";
  slow.Drain();
}

// The wall clock stepped back must not blind the slow-watcher check: ages
// are measured on the monotonic clock.
TEST_F(SidecarTest, SlowWatcherIsFoundAfterAWallClockStepBack) {
  SteppedClock& clock = stepped_clock_;
  SidecarConfig c = DefaultConfig();
  c.clock = &clock;
  c.hub.heartbeat_interval = absl::Milliseconds(20);
  c.service.slow_watcher_timeout = absl::Milliseconds(500);
  StartAll(c);
  sim_->SetTask("big", BigHeldTask());
  StalledWatch slow(sidecar_->target(), "big");
  WatchVideoTaskResponse msg;
  ASSERT_TRUE(slow.reader->Read(&msg));
  // Heartbeats fill the flow-control window within a few writes; the write
  // after that is stuck, stamped before the step.
  absl::SleepFor(absl::Milliseconds(200));
  clock.Step(-absl::Hours(2));
  EXPECT_TRUE(Eventually(
      [&] { return absl::StrContains(Metrics(), "videotask_slow_watchers_total 1"); },
      absl::Seconds(10)))
      << Metrics();
  EXPECT_FALSE(slow.Drain().ok());
}

// Start-up failures. Ports here are fixed (picked free first), so a test can
// tell whether the gRPC port was ever listening.

SidecarConfig StartupConfig(int grpc_port, int metrics_port) {
  SidecarConfig c;
  c.listen = absl::StrCat("127.0.0.1:", grpc_port);
  c.metrics_listen = absl::StrCat("127.0.0.1:", metrics_port);
  c.api_key_env = "VIDEOTASK_E2E_KEY";
  c.upstream_url = "http://127.0.0.1:9/v1";  // never reached: nothing is watched
  return c;
}

TEST_F(SidecarTest, TakenMetricsPortFailsStartBeforeTheGrpcPortListens) {
  for (const bool reuseport : {false, true}) {
    SCOPED_TRACE(reuseport ? "taken with SO_REUSEPORT" : "taken");
    const int taken = ListenOn(0, reuseport);
    ASSERT_GE(taken, 0);
    const int metrics_port = PortOf(taken);
    const int grpc_port = FreePort();
    ConnectProbe probe(grpc_port);
    // Repeated, so that a gRPC port that listened for a moment is caught;
    // on a loaded machine the probe may start late: go on until it has
    // tried often enough (bounded).
    for (int i = 0; i < 20 || (probe.attempts() < 20 && i < 5000); ++i) {
      auto sc = Sidecar::Start(StartupConfig(grpc_port, metrics_port));
      ASSERT_FALSE(sc.ok()) << "started on a metrics port that is taken";
      EXPECT_EQ(sc.status().code(), absl::StatusCode::kUnavailable) << sc.status();
      EXPECT_TRUE(absl::StrContains(sc.status().message(), "--metrics_listen")) << sc.status();
    }
    probe.Stop();
    EXPECT_GT(probe.attempts(), 20);
    EXPECT_EQ(probe.connects(), 0) << "the gRPC port listened";
    EXPECT_TRUE(CanListenOn(grpc_port)) << "the gRPC port is bound";
    ::close(taken);
  }
}

TEST_F(SidecarTest, TakenGrpcPortFailsStartAndReleasesTheMetricsPort) {
  const int taken = ListenOn(0, /*reuseport=*/true);
  ASSERT_GE(taken, 0);
  const int grpc_port = PortOf(taken);
  const int metrics_port = FreePort();
  for (int i = 0; i < 5; ++i) {
    const absl::Time start = absl::Now();
    auto sc = Sidecar::Start(StartupConfig(grpc_port, metrics_port));
    ASSERT_FALSE(sc.ok()) << "started on a gRPC port that is taken";
    EXPECT_EQ(sc.status().code(), absl::StatusCode::kUnavailable) << sc.status();
    EXPECT_TRUE(absl::StrContains(sc.status().message(), "--listen=")) << sc.status();
    EXPECT_LT(absl::Now() - start, absl::Seconds(5));
    // The metrics endpoint that had started is closed again.
    EXPECT_TRUE(CanListenOn(metrics_port)) << "the metrics port is still bound";
  }
  // One port for both: the second to bind fails, the first is released.
  ::close(taken);
  const int both = FreePort();
  auto sc = Sidecar::Start(StartupConfig(both, both));
  ASSERT_FALSE(sc.ok()) << "gRPC and metrics shared port " << both;
  EXPECT_TRUE(absl::StrContains(sc.status().message(), "--listen=")) << sc.status();
  EXPECT_TRUE(CanListenOn(both));
}

TEST_F(SidecarTest, StartAndImmediateDestructionIsClean) {
  // Destruction right after Start (no Shutdown) stops the metrics endpoint
  // even before its accept loop ran, and frees both ports.
  for (int i = 0; i < 20; ++i) {
    const int grpc_port = FreePort();
    int metrics_port = FreePort();
    while (metrics_port == grpc_port) metrics_port = FreePort();
    auto sc = Sidecar::Start(StartupConfig(grpc_port, metrics_port));
    ASSERT_TRUE(sc.ok()) << sc.status();
    sc->reset();
    EXPECT_TRUE(CanListenOn(grpc_port));
    EXPECT_TRUE(CanListenOn(metrics_port));
  }
}

// A name that merely starts with "127." is not loopback: plain http to it
// would send the key in clear text (found by the flags fuzzer).
TEST(SidecarConfigTest, OnlyLoopbackLiteralsMayUsePlainHttp) {
  EXPECT_TRUE(IsLoopbackHost("127.0.0.1"));
  EXPECT_TRUE(IsLoopbackHost("127.8.9.10"));
  EXPECT_TRUE(IsLoopbackHost("localhost"));
  EXPECT_TRUE(IsLoopbackHost("::1"));
  EXPECT_TRUE(IsLoopbackHost("0:0:0:0:0:0:0:1"));
  EXPECT_FALSE(IsLoopbackHost("127.attacker.example"));
  EXPECT_FALSE(IsLoopbackHost("127.0.0.1.nip.io"));
  EXPECT_FALSE(IsLoopbackHost("128.0.0.1"));
  SidecarConfig c;
  c.upstream_url = "http://127.attacker.example/v1";
  EXPECT_EQ(ValidateSidecarConfig(c).code(), absl::StatusCode::kInvalidArgument);
}

// The Redis TLS flags need a rediss:// URL, and a client certificate its key.
TEST(SidecarConfigTest, RedisTlsFlagsNeedRediss) {
  SidecarConfig c;
  c.upstream_url = "https://vendor.example/v1";
  c.redis_ca_file = "/etc/videotask/redis-ca.pem";
  EXPECT_EQ(ValidateSidecarConfig(c).code(), absl::StatusCode::kInvalidArgument);
  c.redis_url = "redis://redis.example:6379";
  EXPECT_EQ(ValidateSidecarConfig(c).code(), absl::StatusCode::kInvalidArgument);
  c.redis_url = "rediss://redis.example:6380";
  EXPECT_TRUE(ValidateSidecarConfig(c).ok()) << ValidateSidecarConfig(c);
  c.redis_cert_file = "/etc/videotask/client.pem";
  EXPECT_EQ(ValidateSidecarConfig(c).code(), absl::StatusCode::kInvalidArgument);
  c.redis_key_file = "/etc/videotask/client.key";
  EXPECT_TRUE(ValidateSidecarConfig(c).ok()) << ValidateSidecarConfig(c);
}

// --create_dedup_ttl is bounded both ways: an infinite or huge TTL overflows
// Redis's `SET ... PX` and every fleet claim would fail.
TEST(SidecarConfigTest, CreateDedupTtlIsBounded) {
  SidecarConfig c;
  c.upstream_url = "https://vendor.example/v1";
  ASSERT_TRUE(ValidateSidecarConfig(c).ok()) << ValidateSidecarConfig(c);
  c.create_dedup_ttl = absl::Seconds(59);
  EXPECT_EQ(ValidateSidecarConfig(c).code(), absl::StatusCode::kInvalidArgument);
  c.create_dedup_ttl = absl::Hours(24 * 30);
  EXPECT_TRUE(ValidateSidecarConfig(c).ok()) << ValidateSidecarConfig(c);
  c.create_dedup_ttl = absl::Hours(24 * 30) + absl::Seconds(1);
  EXPECT_EQ(ValidateSidecarConfig(c).code(), absl::StatusCode::kInvalidArgument);
  c.create_dedup_ttl = absl::InfiniteDuration();
  absl::Status s = ValidateSidecarConfig(c);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("--create_dedup_ttl"), std::string::npos) << s;
}

}  // namespace
}  // namespace videotask
