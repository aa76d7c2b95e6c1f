// Archiving end to end: the real sidecar binary (--archive_dir) against the
// simulated upstream, which also plays the video host, over loopback; gRPC
// watchers and Gets, a restart of the process, and the real CLI.
#include <dirent.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "httplib.h"
#include "nlohmann/json.hpp"
#include "proto/videotask/v1/video_task.grpc.pb.h"
#include "tests/sim/sim_upstream.h"
#include "tests/testing/redis_server.h"
#include "tests/testing/sha256.h"
#include "tests/testing/subprocess.h"

namespace videotask {
namespace {

using sim::SimUpstream;
using sim::TaskScript;
using sim::VideoScript;
using testing::FileSha256;
using testing::Runfile;
using testing::SimVideoSha256;
using testing::Subprocess;
using v1::VideoTask;
using v1::WatchVideoTaskResponse;

constexpr char kKey[] = "sk-archive-SECRET-91c2";

// A `key=VALUE` (text) or `"key":"VALUE"` (JSON) field of the start-up line.
std::string LogField(const std::string& log, const std::string& key) {
  size_t at = log.find(key);
  if (at == std::string::npos) return "";
  at += key.size();
  while (at < log.size() && (log[at] == '=' || log[at] == '"' || log[at] == ':')) ++at;
  const size_t end = log.find_first_of(" \"\n", at);
  return log.substr(at, end == std::string::npos ? std::string::npos : end - at);
}

class ArchiveE2eTest : public ::testing::Test {
 protected:
  void SetUp() override {
    SimUpstream::Options o;
    o.api_key = kKey;
    o.video_urls_on_sim = true;
    auto sim = SimUpstream::Start(o);
    ASSERT_TRUE(sim.ok()) << sim.status();
    sim_ = std::move(*sim);
    std::string templ = ::testing::TempDir() + "/archive-e2e.XXXXXX";
    ASSERT_NE(mkdtemp(templ.data()), nullptr);
    char* real = realpath(templ.c_str(), nullptr);
    ASSERT_NE(real, nullptr);
    dir_ = real;
    free(real);
  }

  void TearDown() override {
    stub_.reset();
    sidecar_.reset();
    sim_.reset();
  }

  std::vector<std::string> Args(std::vector<std::string> extra = {}) {
    std::vector<std::string> a = {Runfile("server/videotask_sidecar"),
                                  "--listen=127.0.0.1:0",
                                  "--metrics_listen=127.0.0.1:0",
                                  "--upstream_url=" + sim_->base_url(),
                                  "--poll_interval=200ms",
                                  "--heartbeat_interval=300ms",
                                  "--max_upstream_qps=100",
                                  "--archive_dir=" + dir_,
                                  // The sim plays the video host, on loopback.
                                  "--archive_allow_loopback"};
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  }

  void StartSidecar(std::vector<std::string> extra = {}) {
    stub_.reset();
    sidecar_.reset();
    auto p = Subprocess::Start(Args(extra), {{"VIDEOTASK_API_KEY", kKey}});
    ASSERT_TRUE(p.ok()) << p.status();
    sidecar_ = std::make_unique<Subprocess>(std::move(*p));
    ASSERT_TRUE(sidecar_->WaitForStderr("sidecar_started", absl::Seconds(20)))
        << sidecar_->Stderr();
    target_ = LogField(sidecar_->Stderr(), "grpc_target");
    ASSERT_TRUE(absl::SimpleAtoi(LogField(sidecar_->Stderr(), "metrics_port"), &metrics_port_));
    stub_ = v1::VideoTaskService::NewStub(
        grpc::CreateChannel(target_, grpc::InsecureChannelCredentials()));
  }

  void StopSidecar() {
    stub_.reset();
    sidecar_->Signal(SIGTERM);
    EXPECT_EQ(sidecar_->Wait(absl::Seconds(20)), 0) << sidecar_->Stderr();
  }

  // Scripts `id` to complete at once with a video whose first chunk never
  // comes (until the sim stops), starts the sidecar with `extra`, opens a
  // watch of `id` that must end UNAVAILABLE (drained), and returns once the
  // copy has started. Join the thread after stopping the sidecar.
  std::thread StartStuckCopy(const std::string& id, std::vector<std::string> extra) {
    TaskScript done;
    done.queued_polls = 0;
    done.processing_polls = 0;
    sim_->SetTask(id, done);
    VideoScript v;
    v.size_bytes = 4 << 20;
    v.chunk_delay = absl::Hours(1);
    sim_->SetVideo(id, v);
    StartSidecar(std::move(extra));
    std::thread watch([this, id] {
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
      v1::WatchVideoTaskRequest req;
      req.set_id(id);
      auto reader = stub_->WatchVideoTask(&ctx, req);
      WatchVideoTaskResponse msg;
      while (reader->Read(&msg)) {
      }
      EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::UNAVAILABLE);  // drained
    });
    const absl::Time give_up = absl::Now() + absl::Seconds(20);
    while (sim_->VideoRequestCount(id) == 0 && absl::Now() < give_up) {
      absl::SleepFor(absl::Milliseconds(10));
    }
    EXPECT_EQ(sim_->VideoRequestCount(id), 1);
    return watch;
  }

  grpc::Status Get(const std::string& id, VideoTask* task) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    v1::GetVideoTaskRequest req;
    req.set_id(id);
    return stub_->GetVideoTask(&ctx, req, task);
  }

  std::string Metrics() {
    httplib::Client c("127.0.0.1", metrics_port_);
    auto res = c.Get("/metrics");
    return res && res->status == 200 ? res->body : "";
  }

  std::unique_ptr<SimUpstream> sim_;
  std::unique_ptr<Subprocess> sidecar_;
  std::unique_ptr<v1::VideoTaskService::Stub> stub_;
  std::string target_;
  int metrics_port_ = 0;
  std::string dir_;
};

TEST_F(ArchiveE2eTest, FiftyWatchersOneDownloadAndTheKeyNeverReachesTheVideoHost) {
  TaskScript held;
  held.queued_polls = 1;
  held.advances = false;  // until Complete()
  sim_->SetTask("many", held);
  VideoScript v;
  v.size_bytes = 3 << 20;
  v.chunk_delay = absl::Milliseconds(5);  // ~0.25 s: the watchers wait for it
  sim_->SetVideo("many", v);
  StartSidecar();

  constexpr int kWatchers = 50;
  struct Result {
    std::vector<WatchVideoTaskResponse> events;
    grpc::Status status;
  };
  std::vector<Result> results(kWatchers);
  absl::Mutex mu;
  int snapshots = 0;
  std::vector<std::thread> threads;
  for (int i = 0; i < kWatchers; ++i) {
    threads.emplace_back([&, i] {
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
      v1::WatchVideoTaskRequest req;
      req.set_id("many");
      auto reader = stub_->WatchVideoTask(&ctx, req);
      WatchVideoTaskResponse msg;
      bool first = true;
      while (reader->Read(&msg)) {
        results[i].events.push_back(msg);
        if (first) {
          first = false;
          absl::MutexLock lock(&mu);
          ++snapshots;
        }
      }
      results[i].status = reader->Finish();
    });
  }
  {
    absl::MutexLock lock(&mu);
    auto all = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return snapshots == kWatchers; };
    EXPECT_TRUE(mu.AwaitWithTimeout(absl::Condition(&all), absl::Seconds(30)));
  }
  sim_->Complete("many");
  for (std::thread& t : threads) t.join();

  const std::string sha = SimVideoSha256("many", v.size_bytes);
  const std::string uri = "file://" + dir_ + "/many.mp4";
  for (int i = 0; i < kWatchers; ++i) {
    SCOPED_TRACE(i);
    EXPECT_TRUE(results[i].status.ok()) << results[i].status.error_message();
    ASSERT_FALSE(results[i].events.empty());
    for (const WatchVideoTaskResponse& e : results[i].events) {
      if (e.task().status() == v1::VIDEO_TASK_STATUS_COMPLETED) {
        EXPECT_TRUE(e.task().has_archive()) << "a COMPLETED event without the archive";
      }
    }
    const VideoTask& last = results[i].events.back().task();
    ASSERT_EQ(last.status(), v1::VIDEO_TASK_STATUS_COMPLETED);
    EXPECT_EQ(last.archive().uri(), uri);
    EXPECT_EQ(last.archive().sha256(), sha);
    EXPECT_EQ(last.archive().size_bytes(), v.size_bytes);
    EXPECT_EQ(last.archive().content_type(), "video/mp4");
    EXPECT_TRUE(last.archive().has_archive_time());
    EXPECT_EQ(last.archive_error(), "");
  }
  EXPECT_EQ(FileSha256(dir_ + "/many.mp4"), sha);
  // One download, and no Authorization header, although the upstream got
  // the key with every poll.
  EXPECT_EQ(sim_->VideoRequestCount("many"), 1);
  EXPECT_EQ(sim_->VideoAuthorizationCount(), 0);
  EXPECT_GE(sim_->ServedCount("many", "completed"), 1);
  // Get answers with the archive too, without another download.
  VideoTask got;
  ASSERT_TRUE(Get("many", &got).ok());
  EXPECT_EQ(got.archive().sha256(), sha);
  EXPECT_EQ(sim_->VideoRequestCount("many"), 1);
  const std::string metrics = Metrics();
  EXPECT_TRUE(
      absl::StrContains(metrics, absl::StrCat("videotask_archive_bytes_total ", v.size_bytes)))
      << metrics;
  EXPECT_TRUE(absl::StrContains(metrics, "videotask_archive_duration_seconds_count 1")) << metrics;
  EXPECT_FALSE(absl::StrContains(sidecar_->Stderr(), kKey));
}

TEST_F(ArchiveE2eTest, ARestartReusesTheFinishedFile) {
  TaskScript done;
  done.queued_polls = 0;
  done.processing_polls = 0;
  sim_->SetTask("kept", done);
  VideoScript v;
  v.size_bytes = 1500000;
  sim_->SetVideo("kept", v);
  StartSidecar();
  VideoTask first;
  ASSERT_TRUE(Get("kept", &first).ok());
  ASSERT_TRUE(first.has_archive()) << first.archive_error();
  EXPECT_EQ(first.archive().sha256(), SimVideoSha256("kept", v.size_bytes));
  StopSidecar();

  const int polls = sim_->RequestCount("kept");
  StartSidecar();  // a new process: nothing cached, the same directory
  VideoTask again;
  ASSERT_TRUE(Get("kept", &again).ok());
  EXPECT_GT(sim_->RequestCount("kept"), polls);   // it asked the upstream again...
  EXPECT_EQ(sim_->VideoRequestCount("kept"), 1);  // ...but did not download again
  EXPECT_EQ(again.archive().SerializeAsString(), first.archive().SerializeAsString());
  EXPECT_TRUE(absl::StrContains(Metrics(), "videotask_archive_duration_seconds_count 1"));
}

TEST_F(ArchiveE2eTest, AVideoThatCannotBeArchivedStillCompletesWithArchiveError) {
  TaskScript done;
  done.queued_polls = 0;
  done.processing_polls = 0;
  sim_->SetTask("huge", done);
  VideoScript v;
  v.size_bytes = 200000;
  sim_->SetVideo("huge", v);
  StartSidecar({"--archive_max_bytes=100000"});
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  v1::WatchVideoTaskRequest req;
  req.set_id("huge");
  auto reader = stub_->WatchVideoTask(&ctx, req);
  WatchVideoTaskResponse msg, last;
  while (reader->Read(&msg)) last = msg;
  ASSERT_TRUE(reader->Finish().ok());
  EXPECT_EQ(last.task().status(), v1::VIDEO_TASK_STATUS_COMPLETED);
  EXPECT_FALSE(last.task().has_archive());
  EXPECT_TRUE(absl::StrContains(last.task().archive_error(), "--archive_max_bytes"))
      << last.task().archive_error();
  EXPECT_EQ(last.task().video_url(), sim_->VideoUrl("huge"));
  struct stat st;
  EXPECT_NE(stat((dir_ + "/huge.mp4").c_str(), &st), 0);
  EXPECT_TRUE(
      absl::StrContains(Metrics(), "videotask_archive_failures_total{reason=\"too_large\"} 1"));
}

TEST_F(ArchiveE2eTest, TheCliPrintsTheArchiveInItsJson) {
  TaskScript done;
  done.queued_polls = 0;
  done.processing_polls = 0;
  sim_->SetTask("cli", done);
  VideoScript v;
  v.size_bytes = 12345;
  sim_->SetVideo("cli", v);
  StartSidecar();
  for (const std::string command : {"get", "watch"}) {
    SCOPED_TRACE(command);
    auto p = Subprocess::Start({Runfile("plugin/videotask"), command, "cli"},
                               {{"VIDEOTASK_TARGET", target_}});
    ASSERT_TRUE(p.ok());
    ASSERT_EQ(p->Wait(absl::Seconds(30)), 0) << p->Stderr();
    std::vector<std::string> lines = absl::StrSplit(p->Stdout(), '\n', absl::SkipEmpty());
    ASSERT_FALSE(lines.empty());
    nlohmann::json j = nlohmann::json::parse(lines.back(), nullptr, false);
    ASSERT_TRUE(j.is_object()) << lines.back();
    const nlohmann::json& task = command == "get" ? j : j["task"];
    EXPECT_EQ(task["status"], "VIDEO_TASK_STATUS_COMPLETED");
    EXPECT_EQ(task["archive"]["uri"], "file://" + dir_ + "/cli.mp4");
    EXPECT_EQ(task["archive"]["sha256"], SimVideoSha256("cli", v.size_bytes));
    EXPECT_EQ(task["archive"]["sizeBytes"], "12345");  // int64: a string in JSON
    EXPECT_EQ(task["archive"]["contentType"], "video/mp4");
    EXPECT_TRUE(task["archive"]["archiveTime"].is_string());
  }
}

TEST_F(ArchiveE2eTest, WatchersThatLeaveDuringTheDownloadDoNotStopIt) {
  TaskScript done;
  done.queued_polls = 0;
  done.processing_polls = 1;  // watchers have a PROCESSING state while it is archived
  sim_->SetTask("left", done);
  VideoScript v;
  v.size_bytes = 2 << 20;
  v.chunk_delay = absl::Milliseconds(60);  // ~2 s
  sim_->SetVideo("left", v);
  StartSidecar();
  for (int i = 0; i < 5; ++i) {  // each gives up long before the copy is made
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(100));
    v1::WatchVideoTaskRequest req;
    req.set_id("left");
    auto reader = stub_->WatchVideoTask(&ctx, req);
    WatchVideoTaskResponse msg;
    while (reader->Read(&msg)) {
      EXPECT_NE(msg.task().status(), v1::VIDEO_TASK_STATUS_COMPLETED);
    }
    EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  }
  // A watcher that stays gets heartbeats while the copy is made, then it.
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  v1::WatchVideoTaskRequest req;
  req.set_id("left");
  auto reader = stub_->WatchVideoTask(&ctx, req);
  WatchVideoTaskResponse msg, last;
  int heartbeats = 0;
  while (reader->Read(&msg)) {
    if (msg.type() == WatchVideoTaskResponse::EVENT_TYPE_HEARTBEAT) ++heartbeats;
    last = msg;
  }
  ASSERT_TRUE(reader->Finish().ok());
  EXPECT_GE(heartbeats, 1);
  ASSERT_TRUE(last.task().has_archive()) << last.task().archive_error();
  EXPECT_EQ(last.task().archive().sha256(), SimVideoSha256("left", v.size_bytes));
  VideoTask got;
  ASSERT_TRUE(Get("left", &got).ok());
  EXPECT_EQ(got.archive().sha256(), SimVideoSha256("left", v.size_bytes));
  EXPECT_EQ(sim_->VideoRequestCount("left"), 1);
}

TEST_F(ArchiveE2eTest, AKilledSidecarNeverLeavesAPartialFileUnderTheFinalName) {
  TaskScript done;
  done.queued_polls = 0;
  done.processing_polls = 0;
  sim_->SetTask("crash", done);
  VideoScript slow;
  slow.size_bytes = 4 << 20;
  slow.chunk_delay = absl::Hours(1);  // the first chunk never comes
  sim_->SetVideo("crash", slow);
  StartSidecar();
  std::thread get([this] {
    VideoTask ignored;
    Get("crash", &ignored);  // ends when the sidecar dies
  });
  const absl::Time give_up = absl::Now() + absl::Seconds(20);
  while (sim_->VideoRequestCount("crash") == 0 && absl::Now() < give_up) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  ASSERT_EQ(sim_->VideoRequestCount("crash"), 1);
  sidecar_->Signal(SIGKILL);
  sidecar_->Wait(absl::Seconds(10));
  get.join();
  struct stat st;
  EXPECT_NE(stat((dir_ + "/crash.mp4").c_str(), &st), 0);
  EXPECT_NE(stat((dir_ + "/crash.meta.json").c_str(), &st), 0);
  // The next run downloads it again, whole.
  VideoScript fast;
  fast.size_bytes = 4 << 20;
  sim_->SetVideo("crash", fast);
  StartSidecar();
  VideoTask got;
  ASSERT_TRUE(Get("crash", &got).ok());
  ASSERT_TRUE(got.has_archive()) << got.archive_error();
  EXPECT_EQ(FileSha256(dir_ + "/crash.mp4"), SimVideoSha256("crash", fast.size_bytes));
}

TEST_F(ArchiveE2eTest, SigtermDuringAStuckDownloadExitsWithinTheGrace) {
  std::thread watch = StartStuckCopy("stuck", {"--shutdown_grace=2s"});
  const absl::Time start = absl::Now();
  sidecar_->Signal(SIGTERM);
  EXPECT_EQ(sidecar_->Wait(absl::Seconds(10)), 0) << sidecar_->Stderr();
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  watch.join();
  EXPECT_TRUE(absl::StrContains(sidecar_->Stderr(), "archiving stopped")) << sidecar_->Stderr();
  // Nothing is left behind: the partial file was removed.
  int entries = 0;
  if (DIR* d = opendir(dir_.c_str())) {
    while (dirent* e = readdir(d)) {
      const std::string name = e->d_name;
      if (name != "." && name != ".." && name != ".archive-state") ++entries;
    }
    closedir(d);
  }
  EXPECT_EQ(entries, 0);
}

// Issue 16: in fleet mode a SIGTERM during a copy crashed the sidecar
// (SIGSEGV): teardown destroyed the fleet gate first, then the archiver,
// whose destructor aborts the copy with archive_error "shutting down"; the
// hub applied that and told the freed gate. Now the process exits 0 and the
// aborted copy never becomes the fleet's state in Redis (another pod would
// otherwise serve it as the task's cached terminal state).
TEST_F(ArchiveE2eTest, SigtermMidCopyInFleetModeExitsCleanAndTheFleetCachesNoAbortedArchive) {
  auto redis = testing::RedisServer::Start();
  ASSERT_TRUE(redis.ok()) << redis.status();
  std::thread watch =
      StartStuckCopy("fleet-stop", {"--redis_url=" + (*redis)->Url(), "--shutdown_grace=2s"});
  // Connected to Redis by now (the copy stalls for as long as the test
  // needs), so a state the hub told the gate late would be stored.
  const absl::Time up_by = absl::Now() + absl::Seconds(20);
  while (!absl::StrContains(Metrics(), "videotask_redis_up 1") && absl::Now() < up_by) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_TRUE(absl::StrContains(Metrics(), "videotask_redis_up 1")) << Metrics();
  stub_.reset();
  sidecar_->Signal(SIGTERM);
  EXPECT_EQ(sidecar_->Wait(absl::Seconds(10)), 0) << sidecar_->Stderr();
  watch.join();
  // The copy really was aborted by the shutdown...
  EXPECT_TRUE(absl::StrContains(sidecar_->Stderr(), "archiving stopped")) << sidecar_->Stderr();
  // ...and no value in Redis (signed states carry the task serialized, so
  // the error text would appear in the bytes) holds that error.
  auto keys = (*redis)->Command({"KEYS", "*"});
  ASSERT_TRUE(keys.ok()) << keys.status();
  for (absl::string_view key : absl::StrSplit(*keys, '\n', absl::SkipEmpty())) {
    SCOPED_TRACE(key);
    auto type = (*redis)->Command({"TYPE", std::string(key)});
    ASSERT_TRUE(type.ok()) << type.status();
    absl::StatusOr<std::string> value;
    if (*type == "string") {
      value = (*redis)->Command({"GET", std::string(key)});
    } else if (*type == "hash") {
      value = (*redis)->Command({"HGETALL", std::string(key)});
    } else {
      continue;
    }
    ASSERT_TRUE(value.ok()) << value.status();
    EXPECT_FALSE(absl::StrContains(*value, "shutting down"))
        << "the fleet caches the aborted archive under " << key;
  }
}

TEST_F(ArchiveE2eTest, BadArchiveFlagsStopStartUpWithExitCodeTwo) {
  for (const std::vector<std::string>& extra :
       {std::vector<std::string>{"--archive_dir=/nonexistent/videotask/archive"},
        std::vector<std::string>{"--archive_timeout=0s"},
        std::vector<std::string>{"--archive_max_bytes=-1"},
        std::vector<std::string>{"--archive_min_bytes_per_second=-1"}}) {
    SCOPED_TRACE(extra[0]);
    auto p = Subprocess::Start(Args(extra), {{"VIDEOTASK_API_KEY", kKey}});
    ASSERT_TRUE(p.ok());
    EXPECT_EQ(p->Wait(absl::Seconds(20)), 2) << p->Stderr();
    EXPECT_TRUE(absl::StrContains(p->Stderr(), "archive")) << p->Stderr();
  }
}

// The video host redirects to another service in the pod (here a second
// sim, on loopback): refused even though --archive_allow_loopback is set (the
// first URL is on loopback), not retried, nothing fetched from the service;
// and without the flag a loopback video_url itself is refused.
TEST_F(ArchiveE2eTest, LoopbackIsRefusedOnARedirectAlwaysAndOnTheFirstUrlWithoutTheFlag) {
  auto internal = SimUpstream::Start(SimUpstream::Options());
  ASSERT_TRUE(internal.ok());
  TaskScript done;
  done.queued_polls = 0;
  done.processing_polls = 0;
  sim_->SetTask("ssrf", done);
  VideoScript v;
  v.redirect_location = absl::StrCat("http://127.0.0.1:", (*internal)->port(), "/_sim/counts");
  sim_->SetVideo("ssrf", v);
  StartSidecar();
  VideoTask got;
  ASSERT_TRUE(Get("ssrf", &got).ok());
  EXPECT_EQ(got.status(), v1::VIDEO_TASK_STATUS_COMPLETED);
  EXPECT_FALSE(got.has_archive()) << "another service's answer was stored as the video";
  EXPECT_TRUE(absl::StrContains(got.archive_error(), "refused")) << got.archive_error();
  EXPECT_EQ(sim_->VideoRequestCount("ssrf"), 1);
  EXPECT_EQ((*internal)->TotalRequests(), 0);
  EXPECT_TRUE(absl::StrContains(Metrics(),
                                "videotask_archive_failures_total{reason=\"insecure_url\"} 1"));
  StopSidecar();

  sim_->SetTask("plain", done);
  VideoScript ok;
  ok.size_bytes = 1000;
  sim_->SetVideo("plain", ok);
  std::vector<std::string> args = Args();
  args.pop_back();  // no --archive_allow_loopback
  auto p = Subprocess::Start(args, {{"VIDEOTASK_API_KEY", kKey}});
  ASSERT_TRUE(p.ok());
  sidecar_ = std::make_unique<Subprocess>(std::move(*p));
  ASSERT_TRUE(sidecar_->WaitForStderr("sidecar_started", absl::Seconds(20)));
  stub_ = v1::VideoTaskService::NewStub(grpc::CreateChannel(
      LogField(sidecar_->Stderr(), "grpc_target"), grpc::InsecureChannelCredentials()));
  VideoTask plain;
  ASSERT_TRUE(Get("plain", &plain).ok());
  EXPECT_FALSE(plain.has_archive());
  EXPECT_TRUE(absl::StrContains(plain.archive_error(), "--archive_allow_loopback"))
      << plain.archive_error();
  EXPECT_EQ(sim_->VideoRequestCount("plain"), 0);
}

}  // namespace
}  // namespace videotask
