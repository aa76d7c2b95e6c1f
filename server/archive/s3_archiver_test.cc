// S3Archiver against real parts on loopback: the simulated upstream plays the
// video host, the stand-in S3 (tests/testing/s3_standin.py, every request's
// SigV4 signature and payload hash recomputed with botocore) the bucket.
// Waits between upload retries are recorded, not slept.
#include "server/archive/s3_archiver.h"

#include <dirent.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "proto/videotask/v1/video_task.pb.h"
#include "server/base/clock.h"
#include "server/base/metrics.h"
#include "tests/sim/sim_upstream.h"
#include "tests/testing/listeners.h"
#include "tests/testing/s3_standin.h"
#include "tests/testing/sha256.h"

namespace videotask {

class S3ArchiverTestPeer {
 public:
  static void SetCredentialsOk(S3Archiver& a, bool ok) { a.SetCredentialsOk(ok); }
};

namespace {

using sim::SimUpstream;
using sim::VideoScript;
using testing::S3Standin;
using testing::SimVideoSha256;
using v1::VideoTask;

constexpr char kKeyId[] = "AKIASTANDIN";
constexpr char kSecret[] = "standin-secret-key";

VideoTask Completed(const std::string& id, const std::string& url) {
  VideoTask t;
  t.set_id(id);
  t.set_status(v1::VIDEO_TASK_STATUS_COMPLETED);
  t.set_video_url(url);
  return t;
}

int CountOps(const nlohmann::json& requests, const std::string& op) {
  int n = 0;
  for (const auto& r : requests) n += r["op"] == op ? 1 : 0;
  return n;
}

int Entries(const std::string& dir) {
  int n = 0;
  if (DIR* d = opendir(dir.c_str())) {
    while (dirent* e = readdir(d)) {
      const std::string name = e->d_name;
      if (name != "." && name != ".." && name != ".archive-state" && name != ".staging.lock") ++n;
    }
    closedir(d);
  }
  return n;
}

class S3ArchiverTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto s = S3Standin::Start();
    ASSERT_TRUE(s.ok()) << s.status();
    standin_ = *std::move(s);
    SimUpstream::Options o;
    o.video_urls_on_sim = true;
    auto sim = SimUpstream::Start(o);
    ASSERT_TRUE(sim.ok()) << sim.status();
    sim_ = std::move(*sim);
    tmp_ = ::testing::TempDir() + "/s3-archiver.XXXXXX";
    ASSERT_NE(mkdtemp(tmp_.data()), nullptr);
    setenv("TMPDIR", tmp_.c_str(), 1);
  }

  S3ArchiverOptions Options(const std::string& secret = kSecret) {
    S3ArchiverOptions o;
    o.url = "s3://videos/archive/v1";
    o.endpoint = standin_->S3Endpoint();
    o.path_style = true;
    o.env = {{"AWS_ACCESS_KEY_ID", kKeyId}, {"AWS_SECRET_ACCESS_KEY", secret}};
    o.timeout = absl::Seconds(60);
    o.part_size = 5 << 20;
    o.sleep = [this](absl::Duration d) {
      absl::MutexLock lock(&mu_);
      sleeps_.push_back(d);
    };
    return o;
  }

  FileArchiverOptions Local(const std::string& dir = "") {
    FileArchiverOptions l;
    l.dir = dir;
    l.allow_loopback = true;  // the sim is the video host, on loopback
    return l;
  }

  std::unique_ptr<S3Archiver> Make(S3ArchiverOptions o) { return Make(std::move(o), Local()); }
  std::unique_ptr<S3Archiver> Make(S3ArchiverOptions o, FileArchiverOptions l) {
    auto a = S3Archiver::Create(std::move(o), std::move(l), RealClock::Get(), &metrics_);
    EXPECT_TRUE(a.ok()) << a.status();
    return a.ok() ? std::move(*a) : nullptr;
  }

  // Archives `id` and returns the task `done` delivered.
  VideoTask Run(S3Archiver& a, const std::string& id) {
    absl::Mutex mu;
    std::optional<VideoTask> got;
    a.Archive(Completed(id, sim_->VideoUrl(id)), [&](VideoTask t) {
      absl::MutexLock lock(&mu);
      got = std::move(t);
    });
    absl::MutexLock lock(&mu);
    auto done = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return got.has_value(); };
    EXPECT_TRUE(mu.AwaitWithTimeout(absl::Condition(&done), absl::Seconds(60)));
    return got.value_or(VideoTask());
  }

  std::unique_ptr<S3Standin> standin_;
  std::unique_ptr<SimUpstream> sim_;
  std::string tmp_;
  MetricsRegistry metrics_;
  absl::Mutex mu_;
  std::vector<absl::Duration> sleeps_;
};

TEST_F(S3ArchiverTest, UploadsTheVideoAndReportsTheObject) {
  VideoScript v;
  v.size_bytes = 12 << 20;  // multipart with 5 MiB parts
  sim_->SetVideo("t-1", v);
  auto a = Make(Options());
  ASSERT_NE(a, nullptr);
  const std::string staging = a->local_dir();
  EXPECT_FALSE(a->keeps_local_copy());
  VideoTask t = Run(*a, "t-1");
  ASSERT_TRUE(t.has_archive()) << t.archive_error();
  EXPECT_EQ(t.archive().uri(), "s3://videos/archive/v1/t-1.mp4");
  EXPECT_EQ(t.archive().sha256(), SimVideoSha256("t-1", v.size_bytes));
  EXPECT_EQ(t.archive().size_bytes(), v.size_bytes);
  EXPECT_EQ(t.archive().content_type(), "video/mp4");
  EXPECT_TRUE(t.archive().has_archive_time());
  const nlohmann::json state = standin_->State();
  ASSERT_EQ(state["objects"].size(), 1u) << state.dump();
  EXPECT_EQ(state["objects"][0]["key"], "archive/v1/t-1.mp4");
  EXPECT_EQ(state["objects"][0]["sha256"], SimVideoSha256("t-1", v.size_bytes));
  EXPECT_TRUE(state["uploads"].empty());
  EXPECT_EQ(CountOps(standin_->Requests(), "UploadPart"), 3);
  EXPECT_EQ(Entries(staging), 0) << "the staged copy stays after the upload";
  EXPECT_EQ(a->GetStats().uploads, 1);
  EXPECT_TRUE(absl::StrContains(metrics_.Render(),
                                "videotask_archive_s3_objects_total{result=\"uploaded\"} 1"));
  a.reset();
  struct stat st;
  EXPECT_NE(stat(staging.c_str(), &st), 0) << "the staging directory is removed at the end";
}

TEST_F(S3ArchiverTest, ARestartReusesTheObjectWithoutDownloadingOrUploading) {
  VideoScript v;
  v.size_bytes = 300000;
  sim_->SetVideo("kept", v);
  auto first = Make(Options());
  ASSERT_TRUE(Run(*first, "kept").has_archive());
  first.reset();
  ASSERT_EQ(sim_->VideoRequestCount("kept"), 1);
  auto second = Make(Options());
  VideoTask t = Run(*second, "kept");
  ASSERT_TRUE(t.has_archive()) << t.archive_error();
  EXPECT_EQ(t.archive().uri(), "s3://videos/archive/v1/kept.mp4");
  EXPECT_EQ(t.archive().sha256(), SimVideoSha256("kept", v.size_bytes));
  EXPECT_EQ(t.archive().size_bytes(), v.size_bytes);
  EXPECT_EQ(sim_->VideoRequestCount("kept"), 1);  // not downloaded again
  EXPECT_EQ(CountOps(standin_->Requests(), "PutObject"), 1);  // nor uploaded
  EXPECT_EQ(second->GetStats().reused, 1);
}

TEST_F(S3ArchiverTest, AWrongSecretIsArchiveErrorWithS3sCodeAtOnceAndNoSecret) {
  VideoScript v;
  v.size_bytes = 1000;
  sim_->SetVideo("denied", v);
  auto a = Make(Options("a-wrong-secret-value"));
  bool seen_ok = true;
  a->SetCredentialsListener([&seen_ok](bool ok) { seen_ok = ok; });
  VideoTask t = Run(*a, "denied");
  EXPECT_FALSE(t.has_archive());
  EXPECT_TRUE(absl::StrContains(t.archive_error(), "SignatureDoesNotMatch")) << t.archive_error();
  EXPECT_TRUE(absl::StrContains(t.archive_error(), "s3://videos/archive/v1/denied.mp4"));
  EXPECT_FALSE(absl::StrContains(t.archive_error(), "a-wrong-secret-value"));
  EXPECT_EQ(CountOps(standin_->Requests(), "PutObject"), 1);  // not retried
  EXPECT_FALSE(a->credentials_ok());
  EXPECT_FALSE(seen_ok);
  EXPECT_TRUE(absl::StrContains(metrics_.Render(), "videotask_archive_credentials_ok 0"));
  EXPECT_TRUE(
      absl::StrContains(metrics_.Render(), "videotask_archive_failures_total{reason=\"s3\"} 1"));
}

TEST_F(S3ArchiverTest, NoCredentialsAtAllFailsAtOnceWithoutADownload) {
  VideoScript v;
  v.size_bytes = 1000;
  sim_->SetVideo("nocreds", v);
  S3ArchiverOptions o = Options();
  o.env.clear();
  auto a = Make(std::move(o));
  ASSERT_NE(a, nullptr);
  VideoTask t = Run(*a, "nocreds");
  EXPECT_FALSE(t.has_archive());
  EXPECT_TRUE(absl::StrContains(t.archive_error(), "no usable credentials")) << t.archive_error();
  EXPECT_EQ(sim_->VideoRequestCount("nocreds"), 0);
  EXPECT_FALSE(a->credentials_ok());
  EXPECT_TRUE(absl::StrContains(metrics_.Render(),
                                "videotask_archive_failures_total{reason=\"credentials\"} 1"));
}

TEST_F(S3ArchiverTest, NoSuchBucketFailsAtOnce) {
  VideoScript v;
  v.size_bytes = 1000;
  sim_->SetVideo("nobucket", v);
  S3ArchiverOptions o = Options();
  o.url = "s3://missing-bucket/x";
  auto a = Make(std::move(o));
  VideoTask t = Run(*a, "nobucket");
  EXPECT_TRUE(absl::StrContains(t.archive_error(), "NoSuchBucket")) << t.archive_error();
  EXPECT_TRUE(sleeps_.empty());
}

TEST_F(S3ArchiverTest, AStoreThatFailsForAWhileIsRetriedUntilItWorks) {
  VideoScript v;
  v.size_bytes = 2000;
  sim_->SetVideo("flaky", v);
  // More failures than one upload's own attempts (5): the archiver retries.
  ASSERT_TRUE(standin_->AddFault({{"op", "PutObject"}, {"times", 7}, {"status", 503},
                                  {"code", "SlowDown"}}).ok());
  auto a = Make(Options());
  VideoTask t = Run(*a, "flaky");
  ASSERT_TRUE(t.has_archive()) << t.archive_error();
  EXPECT_EQ(CountOps(standin_->Requests(), "PutObject"), 8);
  EXPECT_EQ(sim_->VideoRequestCount("flaky"), 1);  // uploaded again, not downloaded again
  absl::MutexLock lock(&mu_);
  EXPECT_GE(sleeps_.size(), 7u);
}

TEST_F(S3ArchiverTest, AStoreThatNeverWorksEndsWithArchiveErrorAtTheTimeout) {
  VideoScript v;
  v.size_bytes = 2000;
  sim_->SetVideo("down", v);
  ASSERT_TRUE(standin_->AddFault({{"op", "PutObject"}, {"times", -1}, {"status", 500},
                                  {"code", "InternalError"}}).ok());
  S3ArchiverOptions o = Options();
  o.timeout = absl::Seconds(3);
  o.initial_backoff = absl::Milliseconds(200);
  o.max_backoff = absl::Milliseconds(400);
  o.sleep = nullptr;  // real waits: the deadline must pass
  auto a = Make(std::move(o));
  const absl::Time start = absl::Now();
  VideoTask t = Run(*a, "down");
  EXPECT_FALSE(t.has_archive());
  EXPECT_TRUE(absl::StrContains(t.archive_error(), "--archive_timeout")) << t.archive_error();
  EXPECT_TRUE(absl::StrContains(t.archive_error(), "InternalError")) << t.archive_error();
  EXPECT_LT(absl::Now() - start, absl::Seconds(10));
}

// The reviewer's case: one upload slot, a store that always fails. Both
// archives end by the timeout (no grace after the download, no waiting
// behind the other's stuck upload past the deadline).
TEST_F(S3ArchiverTest, StuckUploadsDoNotHoldAnotherArchivePastTheTimeout) {
  VideoScript v;
  v.size_bytes = 2000;
  sim_->SetVideo("ra", v);
  sim_->SetVideo("rb", v);
  ASSERT_TRUE(standin_->AddFault({{"op", "PutObject"}, {"times", -1}, {"status", 500},
                                  {"code", "InternalError"}}).ok());
  S3ArchiverOptions o = Options();
  o.timeout = absl::Seconds(2);
  o.max_concurrent = 1;
  o.initial_backoff = absl::Milliseconds(100);
  o.max_backoff = absl::Milliseconds(200);
  o.sleep = nullptr;  // real waits: the deadline must pass
  auto a = Make(std::move(o));
  ASSERT_NE(a, nullptr);
  absl::Mutex mu;
  std::map<std::string, absl::Time> done_at;
  std::map<std::string, VideoTask> got;
  const absl::Time start = absl::Now();
  for (const char* id : {"ra", "rb"}) {
    a->Archive(Completed(id, sim_->VideoUrl(id)), [&, id = std::string(id)](VideoTask t) {
      absl::MutexLock lock(&mu);
      done_at[id] = absl::Now();
      got[id] = std::move(t);
    });
  }
  {
    absl::MutexLock lock(&mu);
    auto both = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return got.size() == 2; };
    ASSERT_TRUE(mu.AwaitWithTimeout(absl::Condition(&both), absl::Seconds(20)));
  }
  for (const char* id : {"ra", "rb"}) {
    EXPECT_FALSE(got[id].has_archive()) << id;
    EXPECT_TRUE(absl::StrContains(got[id].archive_error(), "--archive_timeout"))
        << got[id].archive_error();
    EXPECT_LT(done_at[id] - start, absl::Milliseconds(3500)) << id;  // was: 60 s more
  }
}

// A job that cannot get a HEAD slot before its deadline is answered at the
// deadline, without a download.
TEST_F(S3ArchiverTest, AJobWhoseTimeRunsOutWhileQueuedFailsAtOnce) {
  VideoScript v;
  v.size_bytes = 2000;
  sim_->SetVideo("qa", v);
  sim_->SetVideo("qb", v);
  // The HEADs never answer in time: qa's holds the only HEAD slot.
  ASSERT_TRUE(standin_->AddFault({{"op", "HeadObject"}, {"times", -1}, {"status", 500},
                                  {"code", "InternalError"}}).ok());
  S3ArchiverOptions o = Options();
  o.timeout = absl::Seconds(1);
  o.max_concurrent = 1;
  o.initial_backoff = absl::Milliseconds(100);
  o.max_backoff = absl::Milliseconds(100);
  o.sleep = nullptr;
  auto a = Make(std::move(o));
  ASSERT_NE(a, nullptr);
  const absl::Time start = absl::Now();
  absl::Mutex mu;
  std::map<std::string, VideoTask> got;
  for (const char* id : {"qa", "qb"}) {
    a->Archive(Completed(id, sim_->VideoUrl(id)), [&, id = std::string(id)](VideoTask t) {
      absl::MutexLock lock(&mu);
      got[id] = std::move(t);
    });
  }
  absl::MutexLock lock(&mu);
  auto both = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return got.size() == 2; };
  ASSERT_TRUE(mu.AwaitWithTimeout(absl::Condition(&both), absl::Seconds(20)));
  EXPECT_LT(absl::Now() - start, absl::Milliseconds(2500));
  for (const char* id : {"qa", "qb"}) {
    EXPECT_FALSE(got[id].has_archive()) << id;
    EXPECT_TRUE(absl::StrContains(got[id].archive_error(), "--archive_timeout"))
        << got[id].archive_error();
  }
}

// Successes and refusals racing on several threads: the listener (the
// sidecar's health) sees alternating values and ends on credentials_ok().
TEST_F(S3ArchiverTest, CredentialHealthFollowsRacingChangesInOrder) {
  auto a = Make(Options());
  ASSERT_NE(a, nullptr);
  std::vector<bool> seen;  // under the archiver's listener lock
  a->SetCredentialsListener([&seen](bool ok) { seen.push_back(ok); });
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&a, t] {
      for (int i = 0; i < 20000; ++i) S3ArchiverTestPeer::SetCredentialsOk(*a, (i + t) % 2 == 0);
    });
  }
  for (std::thread& t : threads) t.join();
  ASSERT_FALSE(seen.empty());
  int repeats = 0;
  for (size_t i = 1; i < seen.size(); ++i) repeats += seen[i] == seen[i - 1] ? 1 : 0;
  EXPECT_EQ(repeats, 0) << "of " << seen.size() << " listener calls";
  EXPECT_EQ(seen.back(), a->credentials_ok());
}

// The vendor's Content-Type becomes a signed header of the object: only
// printable ASCII of a sane length goes; anything else is
// application/octet-stream (and the archive says so).
TEST_F(S3ArchiverTest, AnUnusableContentTypeIsStoredAsOctetStream) {
  VideoScript v;
  v.size_bytes = 2000;
  v.content_type = "video/mp4; name=\"caf\xc3\xa9\"";  // UTF-8: not ASCII
  sim_->SetVideo("ct-utf8", v);
  v.content_type = "video/" + std::string(300, 'x');
  sim_->SetVideo("ct-long", v);
  v.content_type = "video/webm";
  sim_->SetVideo("ct-ok", v);
  auto a = Make(Options());
  ASSERT_NE(a, nullptr);
  for (const char* id : {"ct-utf8", "ct-long"}) {
    VideoTask t = Run(*a, id);
    ASSERT_TRUE(t.has_archive()) << id << ": " << t.archive_error();
    EXPECT_EQ(t.archive().content_type(), "application/octet-stream") << id;
  }
  VideoTask t = Run(*a, "ct-ok");
  ASSERT_TRUE(t.has_archive()) << t.archive_error();
  EXPECT_EQ(t.archive().content_type(), "video/webm");
}

bool Exists(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0;
}

void Touch(const std::string& path) {
  const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
  ASSERT_GE(fd, 0) << path;
  close(fd);
}

// A crash leaves the staging directory behind: the next start removes those
// no live archiver holds, and nothing else.
TEST_F(S3ArchiverTest, StagingDirectoriesLeftByACrashAreRemovedAtStart) {
  // A crashed run's: its lock file, unheld, a staged copy and a record.
  const std::string crashed = tmp_ + "/videotask-archive-crash1";
  ASSERT_EQ(mkdir(crashed.c_str(), 0700), 0);
  ASSERT_EQ(mkdir((crashed + "/.archive-state").c_str(), 0700), 0);
  Touch(crashed + "/.staging.lock");
  Touch(crashed + "/t-1.mp4");
  Touch(crashed + "/.archive-state/t-1.done");
  // Held by a live process (here: a lock taken by the test).
  const std::string held = tmp_ + "/videotask-archive-held1";
  ASSERT_EQ(mkdir(held.c_str(), 0700), 0);
  Touch(held + "/.staging.lock");
  const int held_fd = open((held + "/.staging.lock").c_str(), O_RDWR | O_CLOEXEC);
  ASSERT_GE(held_fd, 0);
  ASSERT_EQ(flock(held_fd, LOCK_EX | LOCK_NB), 0);
  // Being made just now by another process (no lock file yet), and not ours.
  const std::string fresh = tmp_ + "/videotask-archive-fresh1";
  ASSERT_EQ(mkdir(fresh.c_str(), 0700), 0);
  const std::string other = tmp_ + "/something-else";
  ASSERT_EQ(mkdir(other.c_str(), 0700), 0);

  auto first = Make(Options());
  ASSERT_NE(first, nullptr);
  EXPECT_FALSE(Exists(crashed));
  EXPECT_TRUE(Exists(held + "/.staging.lock"));
  EXPECT_TRUE(Exists(fresh));
  EXPECT_TRUE(Exists(other));
  // A second archiver (another process on the same TMPDIR) leaves the
  // first's alone.
  auto second = Make(Options());
  ASSERT_NE(second, nullptr);
  EXPECT_TRUE(Exists(first->local_dir()));
  EXPECT_NE(first->local_dir(), second->local_dir());
  const std::string first_dir = first->local_dir();
  first.reset();
  EXPECT_FALSE(Exists(first_dir));
  // Released: the next start removes it.
  close(held_fd);
  auto third = Make(Options());
  ASSERT_NE(third, nullptr);
  EXPECT_FALSE(Exists(held));
  EXPECT_TRUE(Exists(second->local_dir()));
}

TEST_F(S3ArchiverTest, WithArchiveDirTheLocalCopyStays) {
  std::string dir = tmp_ + "/kept.XXXXXX";
  ASSERT_NE(mkdtemp(dir.data()), nullptr);
  VideoScript v;
  v.size_bytes = 5000;
  sim_->SetVideo("both", v);
  auto a = Make(Options(), Local(dir));
  EXPECT_TRUE(a->keeps_local_copy());
  VideoTask t = Run(*a, "both");
  ASSERT_TRUE(t.has_archive()) << t.archive_error();
  EXPECT_EQ(t.archive().uri(), "s3://videos/archive/v1/both.mp4");
  EXPECT_EQ(testing::FileSha256(dir + "/both.mp4"), SimVideoSha256("both", v.size_bytes));
  a.reset();
  struct stat st;
  EXPECT_EQ(stat((dir + "/both.mp4").c_str(), &st), 0);
}

TEST_F(S3ArchiverTest, DownloadRulesStillApplyAndTheirErrorIsTheAnswer) {
  VideoScript v;
  v.size_bytes = 5000;
  sim_->SetVideo("big", v);
  FileArchiverOptions l = Local();
  l.max_bytes = 1000;
  auto a = Make(Options(), l);
  VideoTask t = Run(*a, "big");
  EXPECT_FALSE(t.has_archive());
  EXPECT_TRUE(absl::StrContains(t.archive_error(), "--archive_max_bytes")) << t.archive_error();
  EXPECT_EQ(CountOps(standin_->Requests(), "PutObject"), 0);
}

TEST_F(S3ArchiverTest, BadSettingsNameTheirFlag) {
  struct Case {
    std::string url, endpoint, region, want;
  };
  for (const Case& c : std::vector<Case>{
           {"videos/x", "", "", "--archive_url"},
           {"s3:///x", "", "", "--archive_url"},
           {"s3://Bad_Bucket/x", "", "", "--archive_url"},
           {"s3://videos/a//b", "", "", "--archive_url"},
           {"s3://videos/../b", "", "", "--archive_url"},
           {"s3://videos/x", "http://s3.example.com", "", "--archive_s3_endpoint"},
           {"s3://videos/x", "", "us east", "--archive_s3_region"},
       }) {
    SCOPED_TRACE(c.url + " " + c.endpoint + " " + c.region);
    S3ArchiverOptions o;
    o.url = c.url;
    o.endpoint = c.endpoint;
    o.region = c.region;
    o.path_style = true;
    absl::Status s = ValidateS3ArchiverOptions(o);
    EXPECT_TRUE(absl::IsInvalidArgument(s)) << s;
    EXPECT_TRUE(absl::StrContains(s.message(), c.want)) << s;
  }
  S3ArchiverOptions ok;
  ok.url = "s3://videos";
  EXPECT_TRUE(ValidateS3ArchiverOptions(ok).ok());
  EXPECT_EQ(ResolveS3Region("", {{"AWS_REGION", "eu-west-1"}}), "eu-west-1");
  EXPECT_EQ(ResolveS3Region("", {}), "us-east-1");
  EXPECT_EQ(ResolveS3Region("ap-south-1", {{"AWS_REGION", "eu-west-1"}}), "ap-south-1");
}

TEST_F(S3ArchiverTest, ShutdownDuringADownloadAnswersArchivingStopped) {
  VideoScript v;
  v.size_bytes = 4 << 20;
  v.chunk_delay = absl::Hours(1);
  sim_->SetVideo("stuck", v);
  auto a = Make(Options());
  absl::Mutex mu;
  std::optional<VideoTask> got;
  a->Archive(Completed("stuck", sim_->VideoUrl("stuck")), [&](VideoTask t) {
    absl::MutexLock lock(&mu);
    got = std::move(t);
  });
  const absl::Time give_up = absl::Now() + absl::Seconds(20);
  while (sim_->VideoRequestCount("stuck") == 0 && absl::Now() < give_up) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  a.reset();
  absl::MutexLock lock(&mu);
  ASSERT_TRUE(got.has_value());
  EXPECT_TRUE(absl::StrContains(got->archive_error(), "archiving stopped")) << got->archive_error();
}

// A store that accepts connections and never answers: destroying the
// archiver (SIGTERM) cuts the request in flight instead of waiting for its
// timeout, and the watcher's answer is "archiving stopped".
TEST_F(S3ArchiverTest, ShutdownCutsARequestThatNeverGetsAnAnswer) {
  testing::SilentListener silent;
  VideoScript v;
  v.size_bytes = 1000;
  sim_->SetVideo("hung", v);
  S3ArchiverOptions o = Options();
  o.endpoint = absl::StrCat("http://", silent.target());
  auto a = Make(std::move(o));
  ASSERT_NE(a, nullptr);
  absl::Mutex mu;
  std::optional<VideoTask> got;
  a->Archive(Completed("hung", sim_->VideoUrl("hung")), [&](VideoTask t) {
    absl::MutexLock lock(&mu);
    got = std::move(t);
  });
  absl::SleepFor(absl::Milliseconds(500));  // the HEAD is waiting for its answer
  const absl::Time start = absl::Now();
  a.reset();
  EXPECT_LT(absl::Now() - start, absl::Seconds(3));
  absl::MutexLock lock(&mu);
  ASSERT_TRUE(got.has_value());
  EXPECT_TRUE(absl::StrContains(got->archive_error(), "archiving stopped")) << got->archive_error();
}

}  // namespace
}  // namespace videotask
