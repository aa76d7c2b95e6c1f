// Archiving to a bucket end to end: the real sidecar binary with
// --archive_url against the simulated upstream (also the video host) and the
// STAND-IN S3 (tests/testing/s3_standin.py: every request's SigV4 signature
// and payload hash recomputed with botocore, as S3 does), over loopback; the
// object read back with Debian's AWS CLI; two sidecars of a fleet sharing a
// real redis-server; a restart.
#include <dirent.h>
#include <signal.h>
#include <stdlib.h>

#include <sys/stat.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "httplib.h"
#include "nlohmann/json.hpp"
#include "proto/videotask/v1/video_task.grpc.pb.h"
#include "tests/sim/sim_upstream.h"
#include "tests/testing/listeners.h"
#include "tests/testing/redis_server.h"
#include "tests/testing/s3_standin.h"
#include "tests/testing/sha256.h"
#include "tests/testing/subprocess.h"

namespace videotask {
namespace {

using sim::SimUpstream;
using sim::TaskScript;
using sim::VideoScript;
using testing::FileSha256;
using testing::Runfile;
using testing::S3Standin;
using testing::SimVideoSha256;
using testing::Subprocess;
using v1::VideoTask;
using v1::WatchVideoTaskResponse;

constexpr char kKey[] = "sk-archive-s3-SECRET-77a1";
constexpr char kKeyId[] = "AKIASTANDIN";
constexpr char kSecret[] = "standin-secret-key";
constexpr char kArchiveHealth[] = "videotask.v1.VideoTaskService.archive";

std::string LogField(const std::string& log, const std::string& key) {
  size_t at = log.find(key);
  if (at == std::string::npos) return "";
  at += key.size();
  while (at < log.size() && (log[at] == '=' || log[at] == '"' || log[at] == ':')) ++at;
  const size_t end = log.find_first_of(" \"\n", at);
  return log.substr(at, end == std::string::npos ? std::string::npos : end - at);
}

int CountOps(const nlohmann::json& requests, const std::string& op) {
  int n = 0;
  for (const auto& r : requests) n += r["op"] == op ? 1 : 0;
  return n;
}

// One sidecar process and its clients.
struct Sidecar {
  std::unique_ptr<Subprocess> process;
  std::string target;
  int metrics_port = 0;
  std::unique_ptr<v1::VideoTaskService::Stub> stub;

  grpc::Status Get(const std::string& id, VideoTask* task) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    v1::GetVideoTaskRequest req;
    req.set_id(id);
    return stub->GetVideoTask(&ctx, req, task);
  }
  // The last event of a watch of `id` (it ends at the terminal state).
  VideoTask Watch(const std::string& id) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    v1::WatchVideoTaskRequest req;
    req.set_id(id);
    auto reader = stub->WatchVideoTask(&ctx, req);
    WatchVideoTaskResponse msg, last;
    while (reader->Read(&msg)) {
      if (msg.task().status() == v1::VIDEO_TASK_STATUS_COMPLETED) {
        EXPECT_TRUE(msg.task().has_archive() || !msg.task().archive_error().empty())
            << "a COMPLETED event without the archive's outcome";
      }
      last = msg;
    }
    EXPECT_TRUE(reader->Finish().ok());
    return last.task();
  }
  std::string Metrics() {
    httplib::Client c("127.0.0.1", metrics_port);
    auto res = c.Get("/metrics");
    return res && res->status == 200 ? res->body : "";
  }
  grpc::health::v1::HealthCheckResponse::ServingStatus Health(const std::string& service) {
    auto health = grpc::health::v1::Health::NewStub(
        grpc::CreateChannel(target, grpc::InsecureChannelCredentials()));
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    grpc::health::v1::HealthCheckRequest req;
    req.set_service(service);
    grpc::health::v1::HealthCheckResponse res;
    if (!health->Check(&ctx, req, &res).ok()) return grpc::health::v1::HealthCheckResponse::UNKNOWN;
    return res.status();
  }
  void Stop() {
    stub.reset();
    process->Signal(SIGTERM);
    EXPECT_EQ(process->Wait(absl::Seconds(20)), 0) << process->Stderr();
  }
};

class ArchiveS3E2eTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto s = S3Standin::Start();
    ASSERT_TRUE(s.ok()) << s.status();
    standin_ = *std::move(s);
    SimUpstream::Options o;
    o.api_key = kKey;
    o.video_urls_on_sim = true;
    auto sim = SimUpstream::Start(o);
    ASSERT_TRUE(sim.ok()) << sim.status();
    sim_ = std::move(*sim);
    tmp_ = std::getenv("TEST_TMPDIR");
    staging_ = tmp_ + "/staging";
    mkdir(staging_.c_str(), 0755);
    WriteKeys(kSecret);
  }

  void WriteKeys(const std::string& secret) {
    std::ofstream(tmp_ + "/key-id") << kKeyId << "\n";
    std::ofstream(tmp_ + "/secret") << secret << "\n";
  }

  std::vector<std::string> Args(std::vector<std::string> extra = {}) {
    std::vector<std::string> a = {Runfile("server/videotask_sidecar"),
                                  "--listen=127.0.0.1:0",
                                  "--metrics_listen=127.0.0.1:0",
                                  "--upstream_url=" + sim_->base_url(),
                                  "--poll_interval=200ms",
                                  "--heartbeat_interval=300ms",
                                  "--max_upstream_qps=100",
                                  "--archive_url=s3://videos/archive",
                                  "--archive_s3_endpoint=" + standin_->S3Endpoint(),
                                  "--archive_s3_path_style",
                                  "--archive_s3_access_key_id_file=" + tmp_ + "/key-id",
                                  "--archive_s3_secret_access_key_file=" + tmp_ + "/secret",
                                  // The sim plays the video host, on loopback.
                                  "--archive_allow_loopback"};
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  }

  Sidecar Start(std::vector<std::string> args,
                std::map<std::string, std::string> env = {}) {
    env["VIDEOTASK_API_KEY"] = kKey;
    env["TMPDIR"] = staging_;
    Sidecar s;
    auto p = Subprocess::Start(std::move(args), env);
    EXPECT_TRUE(p.ok()) << p.status();
    if (!p.ok()) return s;
    s.process = std::make_unique<Subprocess>(std::move(*p));
    EXPECT_TRUE(s.process->WaitForStderr("sidecar_started", absl::Seconds(20)))
        << s.process->Stderr();
    s.target = LogField(s.process->Stderr(), "grpc_target");
    absl::SimpleAtoi(LogField(s.process->Stderr(), "metrics_port"), &s.metrics_port);
    s.stub = v1::VideoTaskService::NewStub(
        grpc::CreateChannel(s.target, grpc::InsecureChannelCredentials()));
    return s;
  }

  void Script(const std::string& id, int64_t size, int processing_polls = 0) {
    TaskScript t;
    t.queued_polls = 0;
    t.processing_polls = processing_polls;
    sim_->SetTask(id, t);
    VideoScript v;
    v.size_bytes = size;
    sim_->SetVideo(id, v);
  }

  int StagedFiles() {
    int n = 0;
    if (DIR* d = opendir(staging_.c_str())) {
      while (dirent* e = readdir(d)) {
        const std::string name = e->d_name;
        if (name == "." || name == "..") continue;
        // The sidecar's staging directory: empty but for the claims' dir
        // and the lock that marks it in use.
        const std::string sub = staging_ + "/" + name;
        if (DIR* s = opendir(sub.c_str())) {
          while (dirent* f = readdir(s)) {
            const std::string fname = f->d_name;
            if (fname != "." && fname != ".." && fname != ".archive-state" &&
                fname != ".staging.lock") {
              ++n;
            }
          }
          closedir(s);
        }
      }
      closedir(d);
    }
    return n;
  }

  std::unique_ptr<S3Standin> standin_;
  std::unique_ptr<SimUpstream> sim_;
  std::string tmp_;
  std::string staging_;
};

TEST_F(ArchiveS3E2eTest, CompletedTaskIsInTheBucketAndAwsCliReadsTheSameBytes) {
  Script("bucketed", 6 << 20, /*processing_polls=*/1);
  Sidecar s = Start(Args());
  EXPECT_TRUE(absl::StrContains(s.process->Stderr(), "archive_url=s3://videos/archive"))
      << s.process->Stderr();
  EXPECT_EQ(s.Health(kArchiveHealth), grpc::health::v1::HealthCheckResponse::SERVING);
  VideoTask t = s.Watch("bucketed");
  ASSERT_EQ(t.status(), v1::VIDEO_TASK_STATUS_COMPLETED);
  ASSERT_TRUE(t.has_archive()) << t.archive_error();
  const std::string sha = SimVideoSha256("bucketed", 6 << 20);
  EXPECT_EQ(t.archive().uri(), "s3://videos/archive/bucketed.mp4");
  EXPECT_EQ(t.archive().sha256(), sha);
  EXPECT_EQ(t.archive().size_bytes(), 6 << 20);
  EXPECT_EQ(t.archive().content_type(), "video/mp4");
  EXPECT_EQ(StagedFiles(), 0) << "the staged download stays after the upload";
  const std::string metrics = s.Metrics();
  EXPECT_TRUE(absl::StrContains(metrics,
                                "videotask_archive_s3_objects_total{result=\"uploaded\"} 1"))
      << metrics;
  EXPECT_TRUE(absl::StrContains(metrics, "videotask_archive_credentials_ok 1")) << metrics;

  const std::string aws = testing::DebianAwsCli();
  if (aws.empty()) GTEST_SKIP() << "Debian's awscli is not installed (./dev deps installs it)";
  const std::string config = tmp_ + "/aws-config";
  std::ofstream(config) << "[default]\nregion = us-east-1\ns3 =\n  addressing_style = path\n";
  const std::string out = tmp_ + "/read-back.mp4";
  auto cli = Subprocess::Start(
      {aws, "s3api", "get-object", "--endpoint-url", standin_->S3Endpoint(), "--bucket", "videos",
       "--key", "archive/bucketed.mp4", out},
      {{"AWS_ACCESS_KEY_ID", kKeyId}, {"AWS_SECRET_ACCESS_KEY", kSecret},
       {"AWS_CONFIG_FILE", config}, {"AWS_SHARED_CREDENTIALS_FILE", config + ".none"},
       {"HOME", tmp_}});
  ASSERT_TRUE(cli.ok()) << cli.status();
  ASSERT_EQ(cli->Wait(absl::Seconds(60)), 0) << cli->Stderr();
  EXPECT_EQ(FileSha256(out), sha);
  EXPECT_TRUE(absl::StrContains(cli->Stdout(), sha)) << "the object's sha256 metadata";
  const std::string log = s.process->Stderr();
  EXPECT_FALSE(absl::StrContains(log, kSecret));
  EXPECT_FALSE(absl::StrContains(log, kKey));
}

// The sidecar's peak RSS (VmHWM) in KiB, -1 when unknown.
int64_t PeakRssKiB(pid_t pid) {
  std::ifstream status(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(status, line)) {
    if (absl::StartsWith(line, "VmHWM:")) {
      int64_t kib = -1;
      std::string digits;
      for (char c : line) {
        if (c >= '0' && c <= '9') digits.push_back(c);
      }
      return absl::SimpleAtoi(digits, &kib) ? kib : -1;
    }
  }
  return -1;
}

// 96 MiB through the real binary: downloaded to the staging file, uploaded
// in 12 parts of 8 MiB; the process's peak RSS stays far below the video.
TEST_F(ArchiveS3E2eTest, NinetySixMiBGoThroughMultipartWithBoundedMemory) {
  const int64_t size = int64_t{96} << 20;
  Script("large", size);
  Sidecar s = Start(Args());
  const int64_t before = PeakRssKiB(s.process->pid());
  VideoTask t;
  ASSERT_TRUE(s.Get("large", &t).ok());
  ASSERT_TRUE(t.has_archive()) << t.archive_error();
  EXPECT_EQ(t.archive().sha256(), SimVideoSha256("large", size));
  EXPECT_EQ(t.archive().size_bytes(), size);
  const nlohmann::json requests = standin_->Requests();
  EXPECT_EQ(CountOps(requests, "UploadPart"), 12);
  EXPECT_EQ(CountOps(requests, "CompleteMultipartUpload"), 1);
  const nlohmann::json state = standin_->State();
  ASSERT_EQ(state["objects"].size(), 1u);
  EXPECT_EQ(state["objects"][0]["sha256"], SimVideoSha256("large", size));
  const int64_t after = PeakRssKiB(s.process->pid());
  std::printf("sidecar VmHWM before %lld KiB, after %lld KiB\n", static_cast<long long>(before),
              static_cast<long long>(after));
  ASSERT_GT(after, 0);
  // One 8 MiB part buffer and libcurl's buffers: the growth stays under a
  // third of the video (a whole-video buffer would be 96 MiB).
  EXPECT_LT(after - before, 32 * 1024) << "peak RSS grew by " << (after - before) << " KiB";
  EXPECT_EQ(StagedFiles(), 0);
}

TEST_F(ArchiveS3E2eTest, ARestartReusesTheObject) {
  Script("kept", 500000);
  Sidecar first = Start(Args());
  VideoTask a;
  ASSERT_TRUE(first.Get("kept", &a).ok());
  ASSERT_TRUE(a.has_archive()) << a.archive_error();
  first.Stop();
  Sidecar second = Start(Args());
  VideoTask b;
  ASSERT_TRUE(second.Get("kept", &b).ok());
  ASSERT_TRUE(b.has_archive()) << b.archive_error();
  EXPECT_EQ(b.archive().uri(), a.archive().uri());
  EXPECT_EQ(b.archive().sha256(), a.archive().sha256());
  EXPECT_EQ(b.archive().size_bytes(), a.archive().size_bytes());
  EXPECT_EQ(sim_->VideoRequestCount("kept"), 1);  // not downloaded again
  EXPECT_EQ(CountOps(standin_->Requests(), "PutObject"), 1);  // nor uploaded
  EXPECT_TRUE(absl::StrContains(second.Metrics(),
                                "videotask_archive_s3_objects_total{result=\"reused\"} 1"));
}

TEST_F(ArchiveS3E2eTest, AWrongSecretIsArchiveErrorWithSignatureDoesNotMatchAndHealthSaysSo) {
  Script("denied", 1000);
  WriteKeys("a-wrong-secret-value");
  Sidecar s = Start(Args());
  VideoTask t = s.Watch("denied");
  EXPECT_EQ(t.status(), v1::VIDEO_TASK_STATUS_COMPLETED);  // the watchers still get it
  EXPECT_FALSE(t.has_archive());
  EXPECT_TRUE(absl::StrContains(t.archive_error(), "SignatureDoesNotMatch")) << t.archive_error();
  EXPECT_EQ(t.video_url(), sim_->VideoUrl("denied"));
  EXPECT_EQ(s.Health(kArchiveHealth), grpc::health::v1::HealthCheckResponse::NOT_SERVING);
  EXPECT_EQ(s.Health(""), grpc::health::v1::HealthCheckResponse::SERVING);
  EXPECT_TRUE(absl::StrContains(s.Metrics(), "videotask_archive_credentials_ok 0"));
  EXPECT_TRUE(absl::StrContains(s.process->Stderr(), "archive_failed")) << s.process->Stderr();
  EXPECT_FALSE(absl::StrContains(s.process->Stderr(), "a-wrong-secret-value"));
  // The Secret is fixed (re-read at each use): the next task is archived.
  WriteKeys(kSecret);
  Script("fixed", 1000);
  VideoTask u = s.Watch("fixed");
  EXPECT_TRUE(u.has_archive()) << u.archive_error();
  EXPECT_EQ(s.Health(kArchiveHealth), grpc::health::v1::HealthCheckResponse::SERVING);
}

TEST_F(ArchiveS3E2eTest, NoCredentialsAtAllStartsButEachArchiveSaysSo) {
  Script("nocreds", 1000);
  std::vector<std::string> args = Args();
  args.erase(std::remove_if(args.begin(), args.end(),
                            [](const std::string& a) { return absl::StrContains(a, "_file="); }),
             args.end());
  Sidecar s = Start(args);
  EXPECT_TRUE(absl::StrContains(s.process->Stderr(), "archive_credentials_missing"))
      << s.process->Stderr();
  EXPECT_EQ(s.Health(kArchiveHealth), grpc::health::v1::HealthCheckResponse::NOT_SERVING);
  VideoTask t = s.Watch("nocreds");
  EXPECT_EQ(t.status(), v1::VIDEO_TASK_STATUS_COMPLETED);
  EXPECT_TRUE(absl::StrContains(t.archive_error(), "no usable credentials")) << t.archive_error();
  EXPECT_EQ(sim_->VideoRequestCount("nocreds"), 0);
}

TEST_F(ArchiveS3E2eTest, IrsaCredentialsFromTheEnvironmentSignTheUpload) {
  Script("irsa", 2000);
  const std::string token = tmp_ + "/web-identity-token";
  std::ofstream(token) << "standin-web-identity-token";
  std::vector<std::string> args = Args();
  args.erase(std::remove_if(args.begin(), args.end(),
                            [](const std::string& a) { return absl::StrContains(a, "_file="); }),
             args.end());
  Sidecar s = Start(args, {{"AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/videotask"},
                           {"AWS_WEB_IDENTITY_TOKEN_FILE", token},
                           {"AWS_ENDPOINT_URL_STS", standin_->StsEndpoint()}});
  EXPECT_TRUE(absl::StrContains(s.process->Stderr(), "IRSA")) << s.process->Stderr();
  VideoTask t = s.Watch("irsa");
  ASSERT_TRUE(t.has_archive()) << t.archive_error();
  EXPECT_EQ(t.archive().uri(), "s3://videos/archive/irsa.mp4");
  EXPECT_GE(standin_->State()["sts_calls"].get<int>(), 1);
  EXPECT_FALSE(absl::StrContains(s.process->Stderr(), "standin-web-identity-token"));
}

TEST_F(ArchiveS3E2eTest, TwoSidecarsOfAFleetUploadOnce) {
  auto redis = testing::RedisServer::Start();
  ASSERT_TRUE(redis.ok()) << redis.status();
  Script("shared", 300000, /*processing_polls=*/2);
  const std::vector<std::string> fleet = {"--redis_url=" + (*redis)->Url(),
                                          "--poll_interval=1s"};
  Sidecar a = Start(Args(fleet));
  Sidecar b = Start(Args(fleet));
  VideoTask from_a, from_b;
  std::thread ta([&] { from_a = a.Watch("shared"); });
  std::thread tb([&] { from_b = b.Watch("shared"); });
  ta.join();
  tb.join();
  for (const VideoTask* t : {&from_a, &from_b}) {
    ASSERT_TRUE(t->has_archive()) << t->archive_error();
    EXPECT_EQ(t->archive().uri(), "s3://videos/archive/shared.mp4");
    EXPECT_EQ(t->archive().sha256(), SimVideoSha256("shared", 300000));
  }
  EXPECT_EQ(CountOps(standin_->Requests(), "PutObject"), 1);
  EXPECT_EQ(CountOps(standin_->Requests(), "CreateMultipartUpload"), 0);
  EXPECT_EQ(sim_->VideoRequestCount("shared"), 1);
}

// A store that accepts the connection and never answers: SIGTERM still
// ends the sidecar within its grace (the request in flight is cut), and the
// waiting Get ends.
TEST_F(ArchiveS3E2eTest, SigtermWhileTheStoreNeverAnswersExitsWithinTheGrace) {
  testing::SilentListener silent;
  Script("hung", 1000);
  std::vector<std::string> args = Args({"--shutdown_grace=2s"});
  for (std::string& a : args) {
    if (absl::StartsWith(a, "--archive_s3_endpoint=")) {
      a = "--archive_s3_endpoint=http://" + silent.target();
    }
  }
  Sidecar s = Start(args);
  std::thread get([&s] {
    VideoTask ignored;
    s.Get("hung", &ignored);  // ends when the sidecar stops
  });
  // The task is polled (COMPLETED at once) and its HEAD is waiting.
  const absl::Time give_up = absl::Now() + absl::Seconds(20);
  while (sim_->RequestCount("hung") == 0 && absl::Now() < give_up) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  absl::SleepFor(absl::Milliseconds(500));
  const absl::Time start = absl::Now();
  s.process->Signal(SIGTERM);
  EXPECT_EQ(s.process->Wait(absl::Seconds(10)), 0) << s.process->Stderr();
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  get.join();
  EXPECT_EQ(sim_->VideoRequestCount("hung"), 0);  // it never got past the HEAD
  EXPECT_EQ(StagedFiles(), 0);
}

TEST_F(ArchiveS3E2eTest, BadBucketFlagsStopStartUpWithExitCodeTwo) {
  for (const std::vector<std::string>& extra :
       {std::vector<std::string>{"--archive_url=videos/archive"},
        std::vector<std::string>{"--archive_url=s3://Not_A_Bucket/x"},
        std::vector<std::string>{"--archive_s3_endpoint=http://s3.example.com"},
        std::vector<std::string>{"--archive_s3_region=us east"},
        std::vector<std::string>{"--archive_url=", "--archive_s3_region=eu-west-1"}}) {
    SCOPED_TRACE(extra[0]);
    auto p = Subprocess::Start(Args(extra), {{"VIDEOTASK_API_KEY", kKey}});
    ASSERT_TRUE(p.ok());
    EXPECT_EQ(p->Wait(absl::Seconds(20)), 2) << p->Stderr();
    EXPECT_TRUE(absl::StrContains(p->Stderr(), "--archive_")) << p->Stderr();
  }
}

}  // namespace
}  // namespace videotask
