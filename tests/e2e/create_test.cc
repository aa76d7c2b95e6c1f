// End-to-end tests of CreateVideoTask: the real Sidecar in process (gRPC
// server, Creator, libcurl vendor client, poll hub) against the simulated
// vendor over loopback, driven by a real gRPC client; and, in fleet mode
// (CreateFleetTest), real videotask_sidecar processes sharing a real
// redis-server started by the test on a free loopback port.
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "google/protobuf/util/json_util.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "httplib.h"
#include "proto/videotask/v1/video_task.grpc.pb.h"
#include "server/sidecar.h"
#include "tests/sim/sim_upstream.h"
#include "tests/testing/redis_server.h"
#include "tests/testing/sidecar_fleet.h"
#include "tests/testing/subprocess.h"

namespace videotask {
namespace {

using sim::Fault;
using sim::FaultKind;
using sim::SimUpstream;
using v1::VideoTask;

constexpr char kKey[] = "sk-create-SECRET-91c2";
constexpr char kBody[] = R"({"model":"videos","prompt":"a cat on a skateboard","duration":10,)"
                         R"("ratio":"16:9","resolution":"720p"})";

struct Created {
  grpc::Status status;
  VideoTask task;
};

class CreateTest : public ::testing::Test {
 protected:
  void SetUp() override { setenv("VIDEOTASK_CREATE_E2E_KEY", kKey, 1); }

  void StartAll(SidecarConfig config = DefaultConfig()) {
    SimUpstream::Options sim_options;
    sim_options.api_key = kKey;
    sim_options.default_script.queued_polls = 1;
    sim_options.default_script.processing_polls = 1;
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
    c.api_key_env = "VIDEOTASK_CREATE_E2E_KEY";
    c.hub.poll_interval = absl::Milliseconds(100);
    c.hub.heartbeat_interval = absl::Milliseconds(300);
    c.hub.max_upstream_qps = 100;
    c.hub.backoff_max = absl::Seconds(2);
    c.upstream_timeout = absl::Seconds(2);
    c.create_timeout = absl::Seconds(2);
    return c;
  }

  Created Create(const std::string& key, const std::string& family, const std::string& body,
                 absl::Duration deadline = absl::Seconds(10)) {
    v1::CreateVideoTaskRequest req;
    req.set_request_id(key);
    req.set_family(family);
    EXPECT_TRUE(google::protobuf::util::JsonStringToMessage(body, req.mutable_body()).ok()) << body;
    return Send(req, deadline);
  }

  Created Send(const v1::CreateVideoTaskRequest& req, absl::Duration deadline = absl::Seconds(10)) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + absl::ToChronoMilliseconds(deadline));
    Created out;
    out.status = stub_->CreateVideoTask(&ctx, req, &out.task);
    return out;
  }

  std::string Metrics() {
    httplib::Client cli("127.0.0.1", sidecar_->metrics_port());
    auto res = cli.Get("/metrics");
    return res && res->status == 200 ? res->body : "";
  }

  bool HasMetric(const std::string& line) {
    return absl::StrContains(Metrics(), absl::StrCat(line, "\n"));
  }

  static Fault MakeFault(FaultKind kind, int http_status = 503) {
    Fault f;
    f.kind = kind;
    f.http_status = http_status;
    return f;
  }

  std::unique_ptr<SimUpstream> sim_;
  std::unique_ptr<Sidecar> sidecar_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::VideoTaskService::Stub> stub_;
};

TEST_F(CreateTest, SixteenConcurrentCreatesOfOneKeyMakeOneVendorCreate) {
  StartAll();
  Fault slow = MakeFault(FaultKind::kSlow);
  slow.delay = absl::Milliseconds(300);  // every caller arrives while it is under way
  sim_->InjectCreateFault("", slow);
  constexpr int kCallers = 16;
  std::vector<Created> results(kCallers);
  std::vector<std::thread> threads;
  for (int i = 0; i < kCallers; ++i) {
    threads.emplace_back([&, i] { results[i] = Create("wf-1/run-1/act-1", "videos", kBody); });
  }
  for (auto& t : threads) t.join();
  ASSERT_EQ(sim_->Creates().size(), 1u);
  ASSERT_EQ(sim_->CreatedCount(), 1);
  const std::string id = sim_->Creates()[0].id;
  for (const Created& r : results) {
    ASSERT_TRUE(r.status.ok()) << r.status.error_message();
    EXPECT_EQ(r.task.id(), id);
    EXPECT_EQ(r.task.status(), v1::VIDEO_TASK_STATUS_QUEUED);
  }
  // Later repeats too, without a request; then the id is watched to its end.
  EXPECT_EQ(Create("wf-1/run-1/act-1", "videos", kBody).task.id(), id);
  EXPECT_EQ(sim_->Creates().size(), 1u);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  v1::WatchVideoTaskRequest watch;
  watch.set_id(id);
  auto reader = stub_->WatchVideoTask(&ctx, watch);
  v1::WatchVideoTaskResponse event;
  v1::VideoTaskStatus last = v1::VIDEO_TASK_STATUS_UNSPECIFIED;
  while (reader->Read(&event)) last = event.task().status();
  EXPECT_TRUE(reader->Finish().ok());
  EXPECT_EQ(last, v1::VIDEO_TASK_STATUS_COMPLETED);
  EXPECT_TRUE(HasMetric("videotask_creates_total{outcome=\"created\"} 1"));
  EXPECT_TRUE(HasMetric("videotask_creates_total{outcome=\"deduplicated\"} 16"));
}

TEST_F(CreateTest, AcceptedThenDroppedIsAbortedAndNeverSentAgain) {
  StartAll();
  sim_->InjectCreateFault("", MakeFault(FaultKind::kAcceptedThenDropped));
  Created first = Create("k-dropped", "sora", R"({"prompt":"p","duration":5})");
  EXPECT_EQ(first.status.error_code(), grpc::StatusCode::ABORTED);
  EXPECT_TRUE(absl::StrContains(first.status.error_message(), "may have created"))
      << first.status.error_message();
  Created again = Create("k-dropped", "sora", R"({"prompt":"p","duration":5})");
  EXPECT_EQ(again.status.error_code(), grpc::StatusCode::ABORTED);
  EXPECT_EQ(sim_->Creates().size(), 1u) << "a retry of the key sent it again";
  EXPECT_EQ(sim_->CreatedCount(), 1);
  // A new key accepts the possible duplicate.
  EXPECT_TRUE(Create("k-dropped-2", "sora", R"({"prompt":"p","duration":5})").status.ok());
  EXPECT_TRUE(HasMetric("videotask_creates_total{outcome=\"unknown\"} 1"));
}

TEST_F(CreateTest, OtherServerErrorsAndAnswersWithoutAnIdAreUnknown) {
  StartAll();
  sim_->InjectCreateFault("", MakeFault(FaultKind::kServerError, 500));
  sim_->InjectCreateFault("", MakeFault(FaultKind::kNoId));
  EXPECT_EQ(Create("k500", "sora", R"({"prompt":"p"})").status.error_code(),
            grpc::StatusCode::ABORTED);
  EXPECT_EQ(Create("knoid", "sora", R"({"prompt":"p"})").status.error_code(),
            grpc::StatusCode::ABORTED);
  EXPECT_EQ(Create("k500", "sora", R"({"prompt":"p"})").status.error_code(),
            grpc::StatusCode::ABORTED);
  EXPECT_EQ(sim_->Creates().size(), 2u);
}

TEST_F(CreateTest, RateLimitThenUnavailableThenSuccessMakesOneTask) {
  StartAll();
  Fault limited = MakeFault(FaultKind::kRateLimit);
  limited.retry_after_header = "1";
  sim_->InjectCreateFault("", limited);
  sim_->InjectCreateFault("", MakeFault(FaultKind::kServerError, 503));
  const absl::Time start = absl::Now();
  Created r = Create("k-retry", "videos", kBody);
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_GE(absl::Now() - start, absl::Seconds(1)) << "the 429's Retry-After was not honoured";
  std::vector<sim::ReceivedCreate> creates = sim_->Creates();
  ASSERT_EQ(creates.size(), 3u);
  EXPECT_EQ(creates[0].answer, "429");
  EXPECT_EQ(creates[1].answer, "503");
  EXPECT_EQ(creates[2].id, r.task.id());
  EXPECT_EQ(sim_->CreatedCount(), 1);
  EXPECT_TRUE(HasMetric("videotask_rate_limited_total 1")) << "the pause is the hub's";
}

TEST_F(CreateTest, SurelyNotCreatedUntilTheDeadlineIsUnavailableAndFreesTheKey) {
  StartAll();
  Fault down = MakeFault(FaultKind::kServerError, 503);
  down.count = -1;
  sim_->InjectCreateFault("", down);
  Created r = Create("k-down", "videos", kBody, absl::Seconds(1));
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::UNAVAILABLE) << r.status.error_message();
  EXPECT_TRUE(absl::StrContains(r.status.error_message(), "nothing was created"));
  EXPECT_EQ(sim_->CreatedCount(), 0);
  sim_->ClearFaults();
  Created later = Create("k-down", "videos", kBody);
  EXPECT_TRUE(later.status.ok()) << later.status.error_message();
  EXPECT_EQ(sim_->CreatedCount(), 1);
}

TEST_F(CreateTest, RefusalsAreInvalidArgumentWithTheVendorsMessageAndNotRetried) {
  StartAll();
  // The `videos` shape: 200 with code "400".
  Created a = Create("k-ref-1", "videos", R"({"model":"videos","duration":10})");
  EXPECT_EQ(a.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_TRUE(absl::StrContains(a.status.error_message(), "prompt")) << a.status.error_message();
  // A 4xx with a message.
  Fault refuse = MakeFault(FaultKind::kRefuse, 422);
  refuse.message = "duration must be 5 or 10";
  sim_->InjectCreateFault("sora", refuse);
  Created b = Create("k-ref-2", "sora", R"({"prompt":"p","duration":7})");
  EXPECT_EQ(b.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_TRUE(absl::StrContains(b.status.error_message(), "duration must be 5 or 10"));
  EXPECT_EQ(sim_->Creates().size(), 2u) << "a refusal was retried";
  // Nothing was created: the key is free for a corrected body.
  EXPECT_TRUE(Create("k-ref-2", "sora", R"({"prompt":"p","duration":5})").status.ok());
  EXPECT_TRUE(HasMetric("videotask_creates_total{outcome=\"refused\"} 2"));
}

TEST_F(CreateTest, ARejectedKeyIsFailedPreconditionWithoutTheKey) {
  StartAll();
  sim_->InjectCreateFault("", MakeFault(FaultKind::kServerError, 401));
  Created r = Create("k-401", "videos", kBody);
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_FALSE(absl::StrContains(r.status.error_message(), kKey));
  EXPECT_EQ(sim_->Creates().size(), 1u);
}

TEST_F(CreateTest, BadRequestsNeverReachTheVendor) {
  StartAll();
  auto code = [&](const std::string& key, const std::string& family, const std::string& body) {
    return Create(key, family, body).status.error_code();
  };
  constexpr auto kInvalid = grpc::StatusCode::INVALID_ARGUMENT;
  EXPECT_EQ(code("", "videos", kBody), kInvalid);
  EXPECT_EQ(code(std::string(129, 'k'), "videos", kBody), kInvalid);
  EXPECT_EQ(code("bad\nkey", "videos", kBody), kInvalid);
  EXPECT_EQ(code("k", "", kBody), kInvalid);
  EXPECT_EQ(code("k", "Videos", kBody), kInvalid);
  EXPECT_EQ(code("k", "../result", kBody), kInvalid);
  EXPECT_EQ(code("k", std::string(33, 'a'), kBody), kInvalid);
  EXPECT_EQ(code("k", "videos", absl::StrCat(R"({"prompt":")", std::string(70000, 'a'), "\"}")),
            kInvalid);
  v1::CreateVideoTaskRequest nan;
  nan.set_request_id("k");
  nan.set_family("videos");
  (*nan.mutable_body()->mutable_fields())["duration"].set_number_value(std::nan(""));
  EXPECT_EQ(Send(nan).status.error_code(), kInvalid);
  // Bytes that are not a request: SidecarTest.MalformedRequestsAreInvalidArgument.
  EXPECT_EQ(sim_->Creates().size(), 0u);
  EXPECT_EQ(sim_->TotalRequests(), 0);
}

TEST_F(CreateTest, AKeyWithAnotherBodyIsAlreadyExists) {
  StartAll();
  ASSERT_TRUE(Create("k-same", "videos", kBody).status.ok());
  EXPECT_EQ(Create("k-same", "videos", R"({"model":"videos","prompt":"a dog"})").status.error_code(),
            grpc::StatusCode::ALREADY_EXISTS);
  EXPECT_EQ(Create("k-same", "sora", kBody).status.error_code(), grpc::StatusCode::ALREADY_EXISTS);
  EXPECT_EQ(sim_->Creates().size(), 1u);
}

TEST_F(CreateTest, TheSpendGuardCapsNewCreatesAndRepeatsAreFree) {
  SidecarConfig c = DefaultConfig();
  c.max_creates_per_hour = 2;
  StartAll(c);
  ASSERT_TRUE(Create("k1", "videos", kBody).status.ok());
  // A refusal gives its place back.
  EXPECT_EQ(Create("k-refused", "videos", R"({"model":"videos"})").status.error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  ASSERT_TRUE(Create("k2", "videos", kBody).status.ok());
  Created third = Create("k3", "videos", kBody);
  EXPECT_EQ(third.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_TRUE(absl::StrContains(third.status.error_message(), "--max_creates_per_hour"));
  EXPECT_TRUE(Create("k1", "videos", kBody).status.ok()) << "a repeat is free";
  EXPECT_EQ(sim_->Creates().size(), 3u);
  EXPECT_TRUE(HasMetric("videotask_creates_total{outcome=\"budget\"} 1"));
}

// The sidecar's limit on creates at once is transient (UNAVAILABLE, retry),
// not the spend guard's RESOURCE_EXHAUSTED (CLI exit 10).
TEST_F(CreateTest, TooManyCreatesAtOnceIsUnavailableNotTheSpendGuard) {
  SidecarConfig c = DefaultConfig();
  c.service.max_concurrent_creates = 1;
  StartAll(c);
  Fault slow = MakeFault(FaultKind::kSlow);
  slow.delay = absl::Milliseconds(1500);
  sim_->InjectCreateFault("", slow);
  Created first;
  std::thread t([&] { first = Create("k-first", "videos", kBody); });
  absl::SleepFor(absl::Milliseconds(500));  // the first is under way at the vendor
  Created second = Create("k-second", "videos", kBody);
  t.join();
  ASSERT_TRUE(first.status.ok()) << first.status.error_message();
  EXPECT_EQ(second.status.error_code(), grpc::StatusCode::UNAVAILABLE)
      << second.status.error_message();
  EXPECT_TRUE(absl::StrContains(second.status.error_message(), "nothing was sent"));
  EXPECT_EQ(sim_->Creates().size(), 1u);
  EXPECT_TRUE(Create("k-second", "videos", kBody).status.ok()) << "a retry goes through";
}

TEST_F(CreateTest, TheBodysIntegersReachTheVendorAsIntegers) {
  StartAll();
  ASSERT_TRUE(Create("k-int", "kyyvideo2",
                     R"({"model":"kyyvideo2_fast","prompt":"p","duration":5,"seed":12345678901,)"
                     R"("aspect_ratio":"16:9","generateAudio":true,"cfg":7.5,"frames":[1,2]})")
                  .status.ok());
  ASSERT_EQ(sim_->Creates().size(), 1u);
  const std::string body = sim_->Creates()[0].body;
  EXPECT_TRUE(absl::StrContains(body, R"("duration":5,)")) << body;
  EXPECT_TRUE(absl::StrContains(body, R"("seed":12345678901})")) << body;
  EXPECT_TRUE(absl::StrContains(body, R"("frames":[1,2])")) << body;
  EXPECT_TRUE(absl::StrContains(body, R"("cfg":7.5,)")) << body;
  EXPECT_TRUE(absl::StrContains(body, R"("generateAudio":true)")) << body;
  EXPECT_FALSE(absl::StrContains(body, ".0")) << body;
}

TEST_F(CreateTest, ListeningBeyondLoopbackRefusesCreatesUnlessAllowed) {
  SidecarConfig c = DefaultConfig();
  c.listen = "0.0.0.0:0";
  StartAll(c);
  Created r = Create("k-remote", "videos", kBody);
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_TRUE(absl::StrContains(r.status.error_message(), "--allow_remote_create"));
  EXPECT_EQ(sim_->Creates().size(), 0u);
  sidecar_.reset();
  c.allow_remote_create = true;
  StartAll(c);
  EXPECT_TRUE(Create("k-remote", "videos", kBody).status.ok());
}

TEST(CreateRefusalTest, ByListenAddressNotFleetMode) {
  SidecarConfig c;
  for (const char* ok : {"127.0.0.1:1", "localhost:1", "[::1]:1", "127.8.9.10:1", "unix:/x.sock"}) {
    c.listen = ok;
    EXPECT_TRUE(CreateRefusal(c).ok()) << ok;
  }
  for (const char* remote : {"0.0.0.0:1", "[::]:1", "10.0.0.5:1", "pod.example:1"}) {
    c.listen = remote;
    EXPECT_EQ(CreateRefusal(c).code(), absl::StatusCode::kPermissionDenied) << remote;
  }
  c.allow_remote_create = true;
  EXPECT_TRUE(CreateRefusal(c).ok());
  // Fleet mode creates too (request_ids in Redis: CreateFleetTest).
  c.listen = "127.0.0.1:1";
  c.redis_url = "redis://127.0.0.1:6379";
  EXPECT_TRUE(CreateRefusal(c).ok());
}

// Fleet mode: real sidecar processes, one redis-server, the simulated vendor.
class CreateFleetTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto redis = testing::RedisServer::Start();
    ASSERT_TRUE(redis.ok()) << redis.status();
    redis_ = std::move(*redis);
    SimUpstream::Options o;
    o.api_key = kKey;
    o.threads = 32;
    auto sim = SimUpstream::Start(o);
    ASSERT_TRUE(sim.ok()) << sim.status();
    sim_ = std::move(*sim);
    key_file_ = absl::StrCat(std::getenv("TEST_TMPDIR"), "/api-key");
    std::ofstream(key_file_) << kKey << "\n";
  }

  testing::SidecarProcess* StartMember(std::vector<std::string> extra = {}) {
    std::vector<std::string> args = {"--listen=127.0.0.1:0",
                                     "--metrics_listen=127.0.0.1:0",
                                     absl::StrCat("--upstream_url=", sim_->base_url()),
                                     absl::StrCat("--api_key_file=", key_file_),
                                     absl::StrCat("--redis_url=", redis_->Url()),
                                     "--poll_interval=500ms",
                                     "--max_upstream_qps=100",
                                     "--upstream_timeout=5s",
                                     "--shutdown_grace=1s"};
    args.insert(args.end(), extra.begin(), extra.end());
    auto m = testing::SidecarProcess::Start(testing::Runfile("server/videotask_sidecar"), args);
    EXPECT_TRUE(m.ok()) << m.status();
    if (!m.ok()) return nullptr;
    testing::SidecarProcess* p = m->get();
    EXPECT_TRUE(Eventually([p] { return p->Metric("videotask_redis_up") == 1; }));
    members_.push_back(std::move(*m));
    return p;
  }

  template <typename Pred>
  static bool Eventually(Pred pred, absl::Duration limit = absl::Seconds(15)) {
    const absl::Time end = absl::Now() + limit;
    while (absl::Now() < end) {
      if (pred()) return true;
      absl::SleepFor(absl::Milliseconds(20));
    }
    return pred();
  }

  static Created Create(testing::SidecarProcess* m, const std::string& key,
                        const std::string& body = kBody,
                        absl::Duration deadline = absl::Seconds(10)) {
    auto stub = v1::VideoTaskService::NewStub(m->channel());
    v1::CreateVideoTaskRequest req;
    req.set_request_id(key);
    req.set_family("videos");
    EXPECT_TRUE(google::protobuf::util::JsonStringToMessage(body, req.mutable_body()).ok());
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + absl::ToChronoMilliseconds(deadline));
    Created out;
    out.status = stub->CreateVideoTask(&ctx, req, &out.task);
    return out;
  }

  std::unique_ptr<testing::RedisServer> redis_;
  std::unique_ptr<SimUpstream> sim_;
  std::string key_file_;
  std::vector<std::unique_ptr<testing::SidecarProcess>> members_;
};

TEST_F(CreateFleetTest, ThreeSidecarsOneRequestIdCreateOnceAlsoAfterARestart) {
  std::vector<testing::SidecarProcess*> ms;
  for (int i = 0; i < 3; ++i) ms.push_back(StartMember());
  for (auto* m : ms) ASSERT_NE(m, nullptr);
  Fault slow;
  slow.kind = FaultKind::kSlow;
  slow.delay = absl::Milliseconds(500);  // every caller arrives while it is under way
  sim_->InjectCreateFault("", slow);
  std::vector<Created> results(12);
  std::vector<std::thread> threads;
  for (int i = 0; i < 12; ++i) {
    threads.emplace_back([&, i] { results[i] = Create(ms[i % 3], "wf-7/run-1/generate"); });
  }
  for (auto& t : threads) t.join();
  ASSERT_EQ(sim_->Creates().size(), 1u) << "the fleet created more than once";
  const std::string id = sim_->Creates()[0].id;
  for (const Created& r : results) {
    ASSERT_TRUE(r.status.ok()) << r.status.error_message();
    EXPECT_EQ(r.task.id(), id);
  }
  // A restarted sidecar (and a new one) still knows the key: Redis has it.
  members_[0]->Kill();
  testing::SidecarProcess* restarted = StartMember();
  ASSERT_NE(restarted, nullptr);
  for (auto* m : {restarted, ms[1], ms[2]}) {
    Created again = Create(m, "wf-7/run-1/generate");
    ASSERT_TRUE(again.status.ok()) << again.status.error_message();
    EXPECT_EQ(again.task.id(), id);
  }
  EXPECT_EQ(Create(ms[2], "wf-7/run-1/generate", R"({"model":"videos","prompt":"a dog"})")
                .status.error_code(),
            grpc::StatusCode::ALREADY_EXISTS);
  EXPECT_EQ(sim_->Creates().size(), 1u);
  double created = 0, deduplicated = 0;
  for (auto* m : {restarted, ms[1], ms[2]}) {
    const std::string metrics = m->Metrics();
    created += absl::StrContains(metrics, "videotask_creates_total{outcome=\"created\"} 1\n");
    deduplicated += !absl::StrContains(metrics, "videotask_creates_total{outcome=\"deduplicated\"} 0\n");
  }
  EXPECT_LE(created, 1);
  EXPECT_EQ(deduplicated, 3) << "every sidecar answered a repeat from Redis";
}

TEST_F(CreateFleetTest, RedisDownIsUnavailableAndNothingIsSent) {
  testing::SidecarProcess* m = StartMember();
  ASSERT_NE(m, nullptr);
  ASSERT_TRUE(Create(m, "before").status.ok());
  redis_->Kill();
  ASSERT_TRUE(Eventually([m] { return m->Metric("videotask_redis_up") == 0; }));
  Created down = Create(m, "while-down");
  EXPECT_EQ(down.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_TRUE(absl::StrContains(down.status.error_message(), "Redis"))
      << down.status.error_message();
  EXPECT_TRUE(absl::StrContains(down.status.error_message(), "nothing was sent"));
  EXPECT_EQ(Create(m, "before").status.error_code(), grpc::StatusCode::UNAVAILABLE)
      << "a known key must not be answered (or created) from memory either";
  EXPECT_FALSE(absl::StrContains(down.status.error_message(), kKey));
  EXPECT_EQ(sim_->Creates().size(), 1u) << "a create was sent without Redis";
  // Redis back: creates work again.
  ASSERT_TRUE(redis_->Restart().ok());
  ASSERT_TRUE(Eventually([m] { return m->Metric("videotask_redis_up") == 1; }));
  EXPECT_TRUE(Create(m, "while-down").status.ok());
  EXPECT_EQ(sim_->Creates().size(), 2u);
}

TEST_F(CreateFleetTest, TheSpendGuardIsTheFleets) {
  testing::SidecarProcess* a = StartMember({"--max_creates_per_hour=2"});
  testing::SidecarProcess* b = StartMember({"--max_creates_per_hour=2"});
  ASSERT_TRUE(a != nullptr && b != nullptr);
  ASSERT_TRUE(Create(a, "k1").status.ok());
  ASSERT_TRUE(Create(b, "k2").status.ok());
  for (auto* m : {a, b}) {
    Created over = Create(m, "k3");
    EXPECT_EQ(over.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
    EXPECT_TRUE(absl::StrContains(over.status.error_message(), "--max_creates_per_hour"));
  }
  EXPECT_TRUE(Create(b, "k1").status.ok()) << "a repeat is free, from any sidecar";
  EXPECT_EQ(sim_->Creates().size(), 2u);
}

TEST_F(CreateFleetTest, CreatesTakeTheFleetBudget) {
  testing::SidecarProcess* a = StartMember({"--fleet_max_upstream_qps=1"});
  testing::SidecarProcess* b = StartMember({"--fleet_max_upstream_qps=1"});
  ASSERT_TRUE(a != nullptr && b != nullptr);
  const absl::Time start = absl::Now();
  std::vector<std::thread> threads;
  std::atomic<int> ok{0};
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&, i] { ok += Create(i % 2 ? a : b, absl::StrCat("budget-", i)).status.ok(); });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok.load(), 4);
  // One token per 1.25 s (1 s plus the arrival margin): the fourth after 3.75 s.
  EXPECT_GE(absl::Now() - start, absl::Seconds(3));
  EXPECT_GE(a->Metric("videotask_fleet_tokens_denied_total") +
                b->Metric("videotask_fleet_tokens_denied_total"),
            1);
}

TEST_F(CreateFleetTest, AClaimerKilledMidCreateIsAnUnknownOutcomeNeverASecondCreate) {
  testing::SidecarProcess* a = StartMember();
  testing::SidecarProcess* b = StartMember();
  ASSERT_TRUE(a != nullptr && b != nullptr);
  Fault slow;
  slow.kind = FaultKind::kSlow;
  slow.delay = absl::Seconds(3);
  sim_->InjectCreateFault("", slow);
  std::thread first([&] { (void)Create(a, "k-orphan"); });
  ASSERT_TRUE(Eventually([&] { return sim_->TotalRequests() >= 1; }));  // at the vendor
  members_[0]->Kill();
  first.join();
  // b waits for the claim; its lease lapses (10 s): unknown, not re-created.
  Created r = Create(b, "k-orphan", kBody, absl::Seconds(30));
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::ABORTED) << r.status.error_message();
  EXPECT_TRUE(absl::StrContains(r.status.error_message(), "may have created"))
      << r.status.error_message();
  EXPECT_EQ(sim_->Creates().size(), 1u) << "the vendor did create it, once";
  EXPECT_EQ(sim_->TotalRequests(), 1);
}

}  // namespace
}  // namespace videotask
