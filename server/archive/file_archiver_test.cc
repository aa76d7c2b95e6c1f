// FileArchiver against a real HTTP video host: the simulated upstream on
// loopback. Time is a SimulatedClock that the tests advance (Pump) while
// they wait; downloads themselves are real.
#include "server/archive/file_archiver.h"

#include <dirent.h>
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <spawn.h>
#include <stdlib.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <fstream>
#include <functional>
#include <memory>
#include <set>
#include <sstream>
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
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "proto/videotask/v1/video_task.pb.h"
#include "server/base/clock.h"
#include "server/base/metrics.h"
#include "tests/sim/sim_upstream.h"
#include "tests/testing/sha256.h"

extern char** environ;

namespace videotask {
namespace {

using sim::SimUpstream;
using sim::VideoFault;
using sim::VideoScript;
using testing::FileSha256;
using testing::SimVideoSha256;
using videotask::v1::VideoTask;

constexpr char kChildEnv[] = "FILE_ARCHIVER_TEST_CHILD";

std::set<std::string> ListDir(const std::string& dir) {
  std::set<std::string> out;
  if (DIR* d = opendir(dir.c_str())) {
    while (dirent* e = readdir(d)) {
      const std::string name = e->d_name;
      // The claims and records of sidecars sharing the dir are checked apart.
      if (name != "." && name != ".." && name != ".archive-state") out.insert(name);
    }
    closedir(d);
  }
  return out;
}

int64_t FileSize(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 ? st.st_size : -1;
}

// What the archiver's `done` callbacks delivered.
struct Results {
  absl::Mutex mu;
  std::vector<VideoTask> tasks ABSL_GUARDED_BY(mu);
  std::vector<std::thread::id> threads ABSL_GUARDED_BY(mu);

  Archiver::Done Callback() {
    return [this](VideoTask t) {
      absl::MutexLock lock(&mu);
      tasks.push_back(std::move(t));
      threads.push_back(std::this_thread::get_id());
    };
  }
  size_t size() {
    absl::MutexLock lock(&mu);
    return tasks.size();
  }
};

VideoTask Completed(const std::string& id, const std::string& url) {
  VideoTask t;
  t.set_id(id);
  t.set_status(videotask::v1::VIDEO_TASK_STATUS_COMPLETED);
  t.set_video_url(url);
  t.set_model("videos");
  return t;
}

class FileArchiverTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string templ = ::testing::TempDir() + "/archive.XXXXXX";
    ASSERT_NE(mkdtemp(templ.data()), nullptr);
    dir_ = templ;
    SimUpstream::Options o;
    o.video_urls_on_sim = true;
    auto sim = SimUpstream::Start(o);
    ASSERT_TRUE(sim.ok()) << sim.status();
    sim_ = std::move(*sim);
    options_.dir = dir_;
    options_.initial_backoff = absl::Seconds(1);
    options_.max_backoff = absl::Seconds(8);
    options_.allow_loopback = true;  // the sim is the video host, on loopback
  }

  void TearDown() override {
    archiver_.reset();
    sim_.reset();
  }

  void StartArchiver() {
    archiver_.reset();
    auto a = FileArchiver::Create(options_, &clock_, &metrics_);
    ASSERT_TRUE(a.ok()) << a.status();
    archiver_ = std::move(*a);
  }

  // Waits (real time, bounded) for `n` results, advancing the simulated
  // clock by `step` whenever nothing arrives for a few milliseconds and no
  // attempt is under way, so backoffs, waits for a claim and timeouts pass
  // without sleeping through them. The clock stands still while a download
  // runs: a transfer takes real time, and a simulated clock racing ahead of
  // it (by `step` every few milliseconds, more so on a loaded machine) would
  // make it look slower than --archive_min_bytes_per_second. The tests of
  // the floor and of timeouts cutting a download advance the clock by hand.
  std::vector<VideoTask> Await(Results& r, size_t n = 1,
                               absl::Duration step = absl::Milliseconds(250)) {
    const absl::Time give_up = absl::Now() + absl::Seconds(120);
    while (absl::Now() < give_up) {
      {
        absl::MutexLock lock(&r.mu);
        auto enough = [&r, n]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(r.mu) { return r.tasks.size() >= n; };
        if (r.mu.AwaitWithTimeout(absl::Condition(&enough), absl::Milliseconds(5))) {
          return r.tasks;
        }
      }
      if (archiver_->GetStats().running == 0) {
        clock_.Advance(step);
        archiver_->Kick();
      }
    }
    ADD_FAILURE() << "no result within 120 s";
    return {};
  }

  // Waits (real time, bounded generously: nothing here waits on the
  // machine's speed) until `done` holds; the simulated clock does not move.
  // Starts the archiver with one download slot and fills it with `id`, a
  // video that stalls after its headers (for an hour); returns once the sim
  // has its request. Call it under ASSERT_NO_FATAL_FAILURE.
  void FillTheOnlySlot(const std::string& id, Results& r) {
    VideoScript v;
    v.size_bytes = 10 << 20;
    v.chunk_delay = absl::Hours(1);
    sim_->SetVideo(id, v);
    options_.max_concurrent = 1;
    StartArchiver();
    archiver_->Archive(Completed(id, sim_->VideoUrl(id)), r.Callback());
    ASSERT_TRUE(WaitUntil([&] { return sim_->VideoRequestCount(id) > 0; }));
  }

  bool WaitUntil(const std::function<bool()>& done, absl::Duration bound = absl::Seconds(45)) {
    const absl::Time give_up = absl::Now() + bound;
    while (!done()) {
      if (absl::Now() >= give_up) return false;
      absl::SleepFor(absl::Milliseconds(2));
    }
    return true;
  }

  VideoTask ArchiveOne(const std::string& id, const std::string& url) {
    Results r;
    archiver_->Archive(Completed(id, url), r.Callback());
    std::vector<VideoTask> out = Await(r);
    EXPECT_EQ(out.size(), 1u);
    return out.empty() ? VideoTask() : out[0];
  }

  uint64_t Failures(const std::string& reason) {
    return metrics_
        .GetCounter("videotask_archive_failures_total", "", absl::StrCat("reason=\"", reason, "\""))
        ->value();
  }

  std::string dir_;
  std::unique_ptr<SimUpstream> sim_;
  SimulatedClock clock_;
  MetricsRegistry metrics_;
  FileArchiverOptions options_;
  std::unique_ptr<FileArchiver> archiver_;
};

TEST(IsLoopbackAddressTest, OnlyRealLoopbackAddresses) {
  for (const char* yes : {"127.0.0.1", "127.1.2.3", "localhost", "LOCALHOST", "::1", "[::1]"}) {
    EXPECT_TRUE(IsLoopbackAddress(yes)) << yes;
  }
  for (const char* no : {"127.evil.example", "127.0.0.1.nip.io", "10.0.0.1", "::2", "",
                         "localhost.evil.example", "localhost.", "0.0.0.0",
                         "[::ffff:10.0.0.1]"}) {
    EXPECT_FALSE(IsLoopbackAddress(no)) << no;
  }
}

TEST(FileArchiverOptionsTest, BadOptionsAndDirectoriesAreRefused) {
  SimulatedClock clock;
  FileArchiverOptions o;
  EXPECT_EQ(FileArchiver::Create(o, &clock, nullptr).status().code(),
            absl::StatusCode::kInvalidArgument);
  o.dir = "/nonexistent/archive/dir";
  auto missing = FileArchiver::Create(o, &clock, nullptr);
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(missing.status().message(), "--archive_dir"));
  o.dir = "/proc/self/status";  // not a directory
  EXPECT_EQ(FileArchiver::Create(o, &clock, nullptr).status().code(),
            absl::StatusCode::kInvalidArgument);
  o.dir = ::testing::TempDir();
  o.max_bytes = 0;
  EXPECT_EQ(FileArchiver::Create(o, &clock, nullptr).status().code(),
            absl::StatusCode::kInvalidArgument);
  o.max_bytes = 1;
  o.timeout = absl::ZeroDuration();
  EXPECT_TRUE(absl::StrContains(ValidateFileArchiverOptions(o).message(), "--archive_timeout"));
}

TEST_F(FileArchiverTest, CopiesTheVideoWithItsSha256AndMetadata) {
  VideoScript v;
  v.size_bytes = (3 << 20) + 12345;
  sim_->SetVideo("proj_1", v);
  StartArchiver();
  const absl::Time before = clock_.Now();
  Results r;
  archiver_->Archive(Completed("proj_1", sim_->VideoUrl("proj_1")), r.Callback());
  std::vector<VideoTask> got = Await(r);
  ASSERT_EQ(got.size(), 1u);
  const VideoTask& t = got[0];
  EXPECT_EQ(t.id(), "proj_1");
  EXPECT_EQ(t.model(), "videos");  // the rest of the task is kept
  EXPECT_EQ(t.status(), videotask::v1::VIDEO_TASK_STATUS_COMPLETED);
  EXPECT_EQ(t.archive_error(), "");
  ASSERT_TRUE(t.has_archive());
  const std::string final_path = archiver_->dir() + "/proj_1.mp4";
  EXPECT_EQ(t.archive().uri(), "file://" + final_path);
  EXPECT_EQ(t.archive().size_bytes(), v.size_bytes);
  EXPECT_EQ(t.archive().sha256(), SimVideoSha256("proj_1", v.size_bytes));
  EXPECT_EQ(FileSha256(final_path), t.archive().sha256());
  EXPECT_EQ(t.archive().content_type(), "video/mp4");
  const absl::Time at = absl::FromUnixSeconds(t.archive().archive_time().seconds()) +
                        absl::Nanoseconds(t.archive().archive_time().nanos());
  EXPECT_GE(at, before);  // the injected clock's wall time
  EXPECT_LE(at, clock_.Now());
  {
    absl::MutexLock lock(&r.mu);
    EXPECT_NE(r.threads[0], std::this_thread::get_id());  // never inline
  }
  // Metadata next to it; nothing else left in the directory.
  EXPECT_EQ(ListDir(dir_), (std::set<std::string>{"proj_1.mp4", "proj_1.meta.json"}));
  std::ifstream meta(dir_ + "/proj_1.meta.json");
  std::stringstream text;
  text << meta.rdbuf();
  nlohmann::json j = nlohmann::json::parse(text.str(), nullptr, false);
  ASSERT_TRUE(j.is_object()) << text.str();
  EXPECT_EQ(j["uri"], t.archive().uri());
  EXPECT_EQ(j["sha256"], t.archive().sha256());
  EXPECT_EQ(j["size_bytes"], v.size_bytes);
  EXPECT_EQ(j["content_type"], "video/mp4");
  EXPECT_TRUE(j["archive_time"].is_string());
  // No key, no header of any kind that would carry one.
  EXPECT_EQ(sim_->VideoAuthorizationCount(), 0);
  EXPECT_EQ(sim_->VideoRequestCount("proj_1"), 1);
  EXPECT_EQ(metrics_.GetCounter("videotask_archive_bytes_total", "")->value(),
            static_cast<uint64_t>(v.size_bytes));
  EXPECT_NE(metrics_.Render().find("videotask_archive_duration_seconds_count 1"),
            std::string::npos);
}

TEST_F(FileArchiverTest, ExtensionFromUrlThenContentTypeThenMp4) {
  StartArchiver();
  VideoScript webm;
  webm.size_bytes = 1000;
  webm.content_type = "video/webm; codecs=vp9";
  sim_->SetVideo("a", webm);
  VideoTask a = ArchiveOne("a", sim_->VideoUrl("a", ""));  // no extension in the URL
  EXPECT_TRUE(absl::EndsWith(a.archive().uri(), "/a.webm")) << a.archive().uri();
  EXPECT_EQ(a.archive().content_type(), "video/webm; codecs=vp9");
  sim_->SetVideo("b", webm);
  VideoTask b = ArchiveOne("b", sim_->VideoUrl("b", ".MOV"));
  EXPECT_TRUE(absl::EndsWith(b.archive().uri(), "/b.mov")) << b.archive().uri();
  VideoScript plain;
  plain.size_bytes = 10;
  plain.content_type = "";
  sim_->SetVideo("c", plain);
  VideoTask c = ArchiveOne("c", sim_->VideoUrl("c", "") + "?sig=abc.def");
  EXPECT_TRUE(absl::EndsWith(c.archive().uri(), "/c.mp4")) << c.archive().uri();
  EXPECT_EQ(c.archive().sha256(), SimVideoSha256("c", 10));
}

TEST_F(FileArchiverTest, NoPartialFileEverHasTheFinalName) {
  VideoScript v;
  v.size_bytes = 2 << 20;
  v.chunk_delay = absl::Milliseconds(15);  // 32 chunks: about half a second
  sim_->SetVideo("slow", v);
  StartArchiver();
  const std::string final_path = dir_ + "/slow.mp4";
  std::atomic<bool> stop{false};
  std::atomic<int> partial_seen{0}, wrong_final{0}, looks{0};
  std::thread watcher([&] {
    while (!stop) {
      const int64_t size = FileSize(final_path);
      if (size >= 0 && size != v.size_bytes) ++wrong_final;
      for (const std::string& name : ListDir(dir_)) {
        if (absl::StartsWith(name, ".slow.") && absl::EndsWith(name, ".part")) ++partial_seen;
      }
      ++looks;
    }
  });
  VideoTask t = ArchiveOne("slow", sim_->VideoUrl("slow"));
  stop = true;
  watcher.join();
  EXPECT_EQ(t.archive().sha256(), SimVideoSha256("slow", v.size_bytes));
  EXPECT_EQ(wrong_final, 0) << "the final name held a partial file";
  EXPECT_GT(partial_seen, 0) << "the watcher never saw the download under way";
  EXPECT_GT(looks, 100);
  EXPECT_EQ(ListDir(dir_), (std::set<std::string>{"slow.mp4", "slow.meta.json"}));
}

// Runs this test binary again with only `test` and the child marker set;
// returns its exit status (0: the child's test passed).
int RunChild(const std::string& test) {
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    const std::string kv = *e;
    // The child must not write the parent's XML report or premature-exit marker.
    if (absl::StartsWith(kv, "XML_OUTPUT_FILE=") || absl::StartsWith(kv, "GTEST_OUTPUT=") ||
        absl::StartsWith(kv, "TEST_PREMATURE_EXIT_FILE=") || absl::StartsWith(kv, "GTEST_SHARD") ||
        absl::StartsWith(kv, "TEST_SHARD_STATUS_FILE=") ||
        absl::StartsWith(kv, "TEST_TOTAL_SHARDS=")) {
      continue;
    }
    env.push_back(kv);
  }
  env.push_back(absl::StrCat(kChildEnv, "=1"));
  std::vector<char*> envp;
  for (std::string& s : env) envp.push_back(s.data());
  envp.push_back(nullptr);
  std::string exe = "/proc/self/exe";
  std::string filter = "--gtest_filter=" + test;
  char* argv[] = {exe.data(), filter.data(), nullptr};
  pid_t pid;
  if (posix_spawn(&pid, exe.c_str(), nullptr, nullptr, argv, envp.data()) != 0) return -1;
  int status = 0;
  if (waitpid(pid, &status, 0) != pid) return -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

bool InChild() { return std::getenv(kChildEnv) != nullptr; }

int64_t VmHwmKib() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line)) {
    if (absl::StartsWith(line, "VmHWM:")) {
      int64_t kib = 0;
      std::vector<std::string> parts = absl::StrSplit(line, ' ', absl::SkipEmpty());
      if (parts.size() >= 2 && absl::SimpleAtoi(parts[1], &kib)) return kib;
    }
  }
  return -1;
}

// In a fresh process (the child below), a 200 MiB video raises the peak RSS
// by little: the video streams through a small buffer.
TEST(FileArchiverProcessTest, PeakRssStaysSmallFor200MiB) {
  EXPECT_EQ(RunChild("FileArchiverChild.PeakRss"), 0);
}

TEST(FileArchiverChild, PeakRss) {
  if (!InChild()) GTEST_SKIP() << "runs in the subprocess of PeakRssStaysSmallFor200MiB";
#if defined(__SANITIZE_ADDRESS__)
  GTEST_SKIP() << "AddressSanitizer's quarantine keeps freed buffers resident";
#endif
  std::string templ = ::testing::TempDir() + "/rss.XXXXXX";
  ASSERT_NE(mkdtemp(templ.data()), nullptr);
  SimUpstream::Options so;
  so.threads = 2;
  auto sim = SimUpstream::Start(so);
  ASSERT_TRUE(sim.ok());
  constexpr int64_t kBig = int64_t{200} << 20;
  VideoScript big;
  big.size_bytes = kBig;
  (*sim)->SetVideo("big", big);
  VideoScript small;
  small.size_bytes = 1 << 20;
  (*sim)->SetVideo("warm", small);
  FileArchiverOptions o;
  o.dir = templ;
  o.allow_loopback = true;
  auto a = FileArchiver::Create(o, RealClock::Get(), nullptr);
  ASSERT_TRUE(a.ok());
  auto archive = [&](const std::string& id) {
    Results r;
    (*a)->Archive(Completed(id, (*sim)->VideoUrl(id)), r.Callback());
    absl::MutexLock lock(&r.mu);
    auto one = [&r]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(r.mu) { return !r.tasks.empty(); };
    EXPECT_TRUE(r.mu.AwaitWithTimeout(absl::Condition(&one), absl::Seconds(100)));
    return r.tasks.empty() ? VideoTask() : r.tasks[0];
  };
  archive("warm");  // libcurl, threads and the sim's buffers are counted before
  const int64_t before = VmHwmKib();
  VideoTask t = archive("big");
  const int64_t after = VmHwmKib();
  ASSERT_TRUE(t.has_archive()) << t.archive_error();
  EXPECT_EQ(t.archive().size_bytes(), kBig);
  EXPECT_EQ(t.archive().sha256(), SimVideoSha256("big", kBig));
  std::printf("VmHWM before %lld KiB, after %lld KiB\n", static_cast<long long>(before),
              static_cast<long long>(after));
  ASSERT_GT(before, 0);
  EXPECT_LT(after - before, 24 << 10) << "peak RSS grew by " << (after - before) << " KiB";
  unlink((templ + "/big.mp4").c_str());
}

// A file-size limit (RLIMIT_FSIZE, set in a subprocess) stands in for a
// full disk: the write fails with EFBIG.
TEST(FileArchiverProcessTest, FullDiskGivesArchiveErrorAndRemovesThePartialFile) {
  EXPECT_EQ(RunChild("FileArchiverChild.FullDisk"), 0);
}

TEST(FileArchiverChild, FullDisk) {
  if (!InChild()) GTEST_SKIP() << "runs in the subprocess of FullDiskGivesArchiveError...";
  std::string templ = ::testing::TempDir() + "/full.XXXXXX";
  ASSERT_NE(mkdtemp(templ.data()), nullptr);
  auto sim = SimUpstream::Start(SimUpstream::Options());
  ASSERT_TRUE(sim.ok());
  VideoScript v;
  v.size_bytes = 8 << 20;
  (*sim)->SetVideo("full", v);
  MetricsRegistry metrics;
  FileArchiverOptions o;
  o.dir = templ;
  o.allow_loopback = true;
  auto a = FileArchiver::Create(o, RealClock::Get(), &metrics);  // ignores SIGXFSZ
  ASSERT_TRUE(a.ok());
  rlimit lim{2 << 20, RLIM_INFINITY};
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &lim), 0);
  Results r;
  (*a)->Archive(Completed("full", (*sim)->VideoUrl("full")), r.Callback());
  {
    absl::MutexLock lock(&r.mu);
    auto one = [&r]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(r.mu) { return !r.tasks.empty(); };
    ASSERT_TRUE(r.mu.AwaitWithTimeout(absl::Condition(&one), absl::Seconds(30)));
    EXPECT_FALSE(r.tasks[0].has_archive());
    EXPECT_TRUE(absl::StrContains(r.tasks[0].archive_error(), "full"))
        << r.tasks[0].archive_error();
  }
  EXPECT_EQ(ListDir(templ), std::set<std::string>{});  // the partial file is gone
  EXPECT_EQ((*sim)->VideoRequestCount("full"), 1);     // not retried
  EXPECT_EQ(
      metrics.GetCounter("videotask_archive_failures_total", "", "reason=\"disk_full\"")->value(),
      1u);
}

TEST_F(FileArchiverTest, CutTransfersAreRetried) {
  StartArchiver();
  VideoScript v;
  v.size_bytes = 1 << 20;
  v.fault = VideoFault::kTruncated;
  v.fault_count = 2;
  sim_->SetVideo("cut", v);
  VideoTask t = ArchiveOne("cut", sim_->VideoUrl("cut"));
  ASSERT_TRUE(t.has_archive()) << t.archive_error();
  EXPECT_EQ(t.archive().sha256(), SimVideoSha256("cut", v.size_bytes));
  EXPECT_EQ(sim_->VideoRequestCount("cut"), 3);
  v.fault = VideoFault::kWrongLength;
  v.fault_count = 1;
  sim_->SetVideo("wrong", v);
  VideoTask w = ArchiveOne("wrong", sim_->VideoUrl("wrong"));
  ASSERT_TRUE(w.has_archive()) << w.archive_error();
  EXPECT_EQ(w.archive().size_bytes(), v.size_bytes);
  EXPECT_EQ(sim_->VideoRequestCount("wrong"), 2);
  v.fault = VideoFault::kServerError;
  v.fault_count = 3;
  v.chunked = true;
  sim_->SetVideo("flaky", v);
  VideoTask f = ArchiveOne("flaky", sim_->VideoUrl("flaky"));
  ASSERT_TRUE(f.has_archive()) << f.archive_error();
  EXPECT_EQ(f.archive().sha256(), SimVideoSha256("flaky", v.size_bytes));
  EXPECT_EQ(sim_->VideoRequestCount("flaky"), 4);
  EXPECT_EQ(ListDir(dir_),
            (std::set<std::string>{"cut.mp4", "cut.meta.json", "wrong.mp4", "wrong.meta.json",
                                   "flaky.mp4", "flaky.meta.json"}));
}

TEST_F(FileArchiverTest, RetriesBackOffAndStopAtTheTimeout) {
  options_.timeout = absl::Seconds(30);
  StartArchiver();
  VideoScript v;
  v.fault = VideoFault::kServerError;  // every request
  sim_->SetVideo("down", v);
  const absl::Time start = clock_.Monotonic();
  Results r;
  archiver_->Archive(Completed("down", sim_->VideoUrl("down")), r.Callback());
  std::vector<VideoTask> got = Await(r, 1, absl::Milliseconds(100));
  ASSERT_EQ(got.size(), 1u);
  EXPECT_FALSE(got[0].has_archive());
  EXPECT_TRUE(absl::StrContains(got[0].archive_error(), "HTTP 503")) << got[0].archive_error();
  EXPECT_TRUE(absl::StrContains(got[0].archive_error(), "gave up")) << got[0].archive_error();
  // Backoff 1 s doubling (+-20%), capped at 8 s, within 30 s: 5-7 attempts,
  // not one per pump.
  const int requests = sim_->VideoRequestCount("down");
  EXPECT_GE(requests, 4);
  EXPECT_LE(requests, 8);
  EXPECT_LE(clock_.Monotonic() - start, absl::Seconds(31));  // never beyond the timeout
  EXPECT_EQ(Failures("http_5xx"), 1u);
  EXPECT_EQ(ListDir(dir_), std::set<std::string>{});
  // Still exactly one result.
  for (int i = 0; i < 20; ++i) {
    clock_.Advance(absl::Seconds(5));
    archiver_->Kick();
  }
  EXPECT_EQ(r.size(), 1u);
}

TEST_F(FileArchiverTest, ClientErrorsEndEarly) {
  StartArchiver();
  VideoScript v;
  v.fault = VideoFault::kNotFound;
  sim_->SetVideo("gone", v);
  VideoTask t = ArchiveOne("gone", sim_->VideoUrl("gone"));
  EXPECT_FALSE(t.has_archive());
  EXPECT_TRUE(absl::StrContains(t.archive_error(), "HTTP 404")) << t.archive_error();
  EXPECT_EQ(sim_->VideoRequestCount("gone"), options_.max_client_error_attempts);
  EXPECT_EQ(Failures("http_4xx"), 1u);
}

TEST_F(FileArchiverTest, TooLargeIsAbortedWithAndWithoutContentLength) {
  options_.max_bytes = 1 << 20;
  StartArchiver();
  VideoScript v;
  v.size_bytes = (1 << 20) + 1;
  sim_->SetVideo("big", v);
  VideoTask t = ArchiveOne("big", sim_->VideoUrl("big"));
  EXPECT_FALSE(t.has_archive());
  EXPECT_TRUE(absl::StrContains(t.archive_error(), "--archive_max_bytes")) << t.archive_error();
  v.chunked = true;  // no Content-Length: counted while streaming
  v.size_bytes = 5 << 20;
  sim_->SetVideo("chunked", v);
  VideoTask c = ArchiveOne("chunked", sim_->VideoUrl("chunked"));
  EXPECT_TRUE(absl::StrContains(c.archive_error(), "--archive_max_bytes")) << c.archive_error();
  EXPECT_EQ(sim_->VideoRequestCount("big") + sim_->VideoRequestCount("chunked"), 2);  // no retry
  EXPECT_EQ(Failures("too_large"), 2u);
  EXPECT_EQ(ListDir(dir_), std::set<std::string>{});
  // Exactly the cap is fine.
  v.size_bytes = 1 << 20;
  sim_->SetVideo("exact", v);
  EXPECT_TRUE(ArchiveOne("exact", sim_->VideoUrl("exact")).has_archive());
}

// Redirects are followed only to https://, never to plain http:// and never
// to a loopback address (another service in the pod), --archive_allow_loopback
// or not; the sim can only play a loopback host, so every redirect it makes
// is refused.
TEST_F(FileArchiverTest, RedirectsOnlyToHttpsAndNeverToLoopback) {
  StartArchiver();
  VideoScript v;
  v.size_bytes = 4096;
  v.redirect_location = "http://video.invalid/x.mp4";  // plain http, not loopback
  sim_->SetVideo("away", v);
  VideoTask away = ArchiveOne("away", sim_->VideoUrl("away"));
  EXPECT_FALSE(away.has_archive());
  EXPECT_TRUE(absl::StrContains(away.archive_error(), "refused http://video.invalid"))
      << away.archive_error();
  EXPECT_EQ(sim_->VideoRequestCount("away"), 1);  // not retried

  v.redirect_location = absl::StrCat("http://127.evil.invalid:", sim_->port(), "/videos/x.mp4");
  sim_->SetVideo("lookalike", v);
  EXPECT_TRUE(absl::StrContains(
      ArchiveOne("lookalike", sim_->VideoUrl("lookalike")).archive_error(), "refused"));

  // Back to the same loopback host (the sim's own hops).
  v.redirect_location = "";
  v.redirect_hops = 1;
  sim_->SetVideo("hops", v);
  VideoTask hops = ArchiveOne("hops", sim_->VideoUrl("hops"));
  EXPECT_FALSE(hops.has_archive());
  EXPECT_TRUE(absl::StrContains(hops.archive_error(), "refused http://127.0.0.1"))
      << hops.archive_error();
  EXPECT_EQ(sim_->VideoRequestCount("hops"), 1);

  // The first URL obeys the scheme rule too; nothing is fetched.
  VideoTask plain = ArchiveOne("plain", "http://video.invalid/plain.mp4");
  EXPECT_TRUE(absl::StrContains(plain.archive_error(), "refused")) << plain.archive_error();
  EXPECT_EQ(Failures("insecure_url"), 4u);
  EXPECT_EQ(sim_->VideoAuthorizationCount(), 0);
  EXPECT_EQ(ListDir(dir_), std::set<std::string>{});
}

// A video host points the sidecar at another service in the pod: refused
// even with --archive_allow_loopback, over http and over https, and nothing
// is fetched from it.
TEST_F(FileArchiverTest, ARedirectToAnotherLoopbackServiceIsRefusedEvenWithTheFlag) {
  auto internal = SimUpstream::Start(SimUpstream::Options());
  ASSERT_TRUE(internal.ok());
  VideoScript secret;
  secret.size_bytes = 100;
  (*internal)->SetVideo("secret", secret);
  ASSERT_TRUE(options_.allow_loopback);
  // A name for the internal service, as DNS would answer it.
  options_.resolve = {absl::StrCat("pod.internal.test:", (*internal)->port(), ":127.0.0.1")};
  StartArchiver();
  VideoScript v;
  const std::string targets[] = {
      (*internal)->VideoUrl("secret"),
      absl::StrCat("https://127.0.0.1:", (*internal)->port(), "/videos/secret.mp4"),
      absl::StrCat("https://pod.internal.test:", (*internal)->port(), "/videos/secret.mp4"),
  };
  int i = 0;
  for (const std::string& target : targets) {
    SCOPED_TRACE(target);
    const std::string id = absl::StrCat("ssrf", i++);
    v.redirect_location = target;
    sim_->SetVideo(id, v);
    VideoTask t = ArchiveOne(id, sim_->VideoUrl(id));
    EXPECT_FALSE(t.has_archive()) << "an internal endpoint was stored as the video";
    EXPECT_TRUE(absl::StrContains(t.archive_error(), "refused")) << t.archive_error();
    EXPECT_EQ(sim_->VideoRequestCount(id), 1);  // not retried
  }
  EXPECT_EQ((*internal)->VideoRequestCount("secret"), 0);
  EXPECT_EQ((*internal)->TotalRequests(), 0);
  EXPECT_EQ(ListDir(dir_), std::set<std::string>{});
}

// Without --archive_allow_loopback a loopback video host is refused: by its
// URL, and by the address its name resolves to (checked where the socket is
// opened, so a name that only later resolves to loopback is caught too).
TEST_F(FileArchiverTest, ALoopbackVideoHostNeedsTheFlag) {
  options_.allow_loopback = false;
  options_.resolve = {absl::StrCat("video.cdn.test:", sim_->port(), ":127.0.0.1")};
  StartArchiver();
  VideoScript v;
  v.size_bytes = 1000;
  sim_->SetVideo("lo", v);
  VideoTask lo = ArchiveOne("lo", sim_->VideoUrl("lo"));  // http://127.0.0.1:PORT/...
  EXPECT_FALSE(lo.has_archive());
  EXPECT_TRUE(absl::StrContains(lo.archive_error(), "--archive_allow_loopback"))
      << lo.archive_error();
  sim_->SetVideo("named", v);
  VideoTask named = ArchiveOne(
      "named", absl::StrCat("https://video.cdn.test:", sim_->port(), "/videos/named.mp4"));
  EXPECT_FALSE(named.has_archive());
  EXPECT_TRUE(absl::StrContains(named.archive_error(), "resolves to 127.0.0.1 (loopback)"))
      << named.archive_error();
  EXPECT_TRUE(absl::StrContains(named.archive_error(), "--archive_allow_loopback"))
      << named.archive_error();
  EXPECT_EQ(sim_->VideoRequestCount("lo") + sim_->VideoRequestCount("named"), 0);
  EXPECT_EQ(Failures("insecure_url"), 2u);
  EXPECT_EQ(ListDir(dir_), std::set<std::string>{});
}

TEST(NonPublicAddressKindTest, LoopbackLinkLocalPrivateAndTheirIpv6Forms) {
  auto kind = [](const std::string& text) {
    sockaddr_storage ss{};
    if (inet_pton(AF_INET, text.c_str(), &reinterpret_cast<sockaddr_in*>(&ss)->sin_addr) == 1) {
      ss.ss_family = AF_INET;
    } else if (inet_pton(AF_INET6, text.c_str(),
                         &reinterpret_cast<sockaddr_in6*>(&ss)->sin6_addr) == 1) {
      ss.ss_family = AF_INET6;
    } else {
      ADD_FAILURE() << text;
    }
    return NonPublicAddressKind(reinterpret_cast<sockaddr*>(&ss));
  };
  const std::pair<const char*, const char*> kCases[] = {
      {"127.0.0.1", "loopback"},
      {"127.255.0.9", "loopback"},
      {"::1", "loopback"},
      {"::ffff:127.0.0.1", "loopback"},
      {"169.254.169.254", "link-local"},  // the cloud metadata address
      {"::ffff:169.254.169.254", "link-local"},
      {"64:ff9b::a9fe:a9fe", "link-local"},  // NAT64 of 169.254.169.254
      {"2002:a9fe:a9fe::1", "link-local"},   // 6to4 of it
      {"fe80::1", "link-local"},
      {"fd00:ec2::254", "private"},  // the IPv6 metadata address of one cloud
      {"fc00::1", "private"},
      {"fec0::1", "private"},
      {"10.1.2.3", "private"},
      {"172.16.0.1", "private"},
      {"172.31.255.255", "private"},
      {"192.168.1.1", "private"},
      {"100.64.0.1", "private"},
      {"0.0.0.0", "unspecified"},
      {"::", "unspecified"},
      {"224.0.0.1", "multicast"},
      {"ff02::1", "multicast"},
      {"255.255.255.255", "reserved"},
      {"192.0.2.1", "reserved"},
      {"2001:db8::1", "reserved"},
      {"::10.0.0.1", "reserved"},
      {"8.8.8.8", ""},
      {"172.32.0.1", ""},
      {"100.128.0.1", ""},
      {"2606:4700::1111", ""},
      {"::ffff:8.8.8.8", ""},
  };
  for (const auto& [addr, want] : kCases) EXPECT_EQ(kind(addr), want) << addr;
}

TEST_F(FileArchiverTest, BadTasksGetAnArchiveErrorNotACrash) {
  StartArchiver();
  EXPECT_TRUE(absl::StrContains(ArchiveOne("nourl", "").archive_error(), "no video_url"));
  EXPECT_TRUE(absl::StrContains(ArchiveOne("../../etc/passwd", sim_->VideoUrl("x")).archive_error(),
                                "not a valid id"));
  EXPECT_FALSE(ArchiveOne("garbage", "::not a url::").has_archive());
  EXPECT_EQ(ListDir(dir_), std::set<std::string>{});
}

TEST_F(FileArchiverTest, ManyCallersOfOneIdShareOneDownload) {
  VideoScript v;
  v.size_bytes = 1 << 20;
  v.chunk_delay = absl::Milliseconds(10);
  sim_->SetVideo("shared", v);
  StartArchiver();
  Results r;
  for (int i = 0; i < 50; ++i) {
    archiver_->Archive(Completed("shared", sim_->VideoUrl("shared")), r.Callback());
  }
  std::vector<VideoTask> got = Await(r, 50);
  ASSERT_EQ(got.size(), 50u);
  for (const VideoTask& t : got) EXPECT_EQ(t.archive().sha256(), SimVideoSha256("shared", 1 << 20));
  EXPECT_EQ(sim_->VideoRequestCount("shared"), 1);
  EXPECT_EQ(archiver_->GetStats().downloads, 1);
}

TEST_F(FileArchiverTest, ARestartReusesTheFinishedCopy) {
  VideoScript v;
  v.size_bytes = 700000;
  sim_->SetVideo("kept", v);
  StartArchiver();
  VideoTask first = ArchiveOne("kept", sim_->VideoUrl("kept"));
  ASSERT_TRUE(first.has_archive()) << first.archive_error();
  clock_.Advance(absl::Hours(1));
  StartArchiver();  // a new process, the same volume
  VideoTask again = ArchiveOne("kept", sim_->VideoUrl("kept"));
  ASSERT_TRUE(again.has_archive()) << again.archive_error();
  EXPECT_EQ(again.archive().SerializeAsString(), first.archive().SerializeAsString());
  EXPECT_EQ(sim_->VideoRequestCount("kept"), 1);  // not downloaded again
  EXPECT_EQ(archiver_->GetStats().reused, 1);
  // A copy whose bytes no longer match its metadata is downloaded again.
  {
    const std::string path = dir_ + "/kept.mp4";
    const int fd = open(path.c_str(), O_WRONLY);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(pwrite(fd, "X", 1, 1000), 1);
    close(fd);
  }
  StartArchiver();
  VideoTask fixed = ArchiveOne("kept", sim_->VideoUrl("kept"));
  ASSERT_TRUE(fixed.has_archive());
  EXPECT_EQ(fixed.archive().sha256(), first.archive().sha256());
  EXPECT_EQ(FileSha256(dir_ + "/kept.mp4"), first.archive().sha256());
  EXPECT_EQ(sim_->VideoRequestCount("kept"), 2);
  // A stale temporary file of a crashed run is removed at start; a fresh one is not.
  const std::string stale = dir_ + "/.old.0123456789abcdef.part";
  const std::string fresh = dir_ + "/.new.0123456789abcdef.part";
  for (const std::string& p : {stale, fresh}) std::ofstream(p) << "partial";
  timespec times[2] = {{0, UTIME_OMIT}, {absl::ToTimeT(clock_.Now() - absl::Hours(2)), 0}};
  ASSERT_EQ(utimensat(AT_FDCWD, stale.c_str(), times, 0), 0);
  StartArchiver();
  EXPECT_EQ(FileSize(stale), -1);
  EXPECT_GT(FileSize(fresh), 0);
}

TEST_F(FileArchiverTest, DestroyingRunsEveryPendingDoneOnce) {
  Results r;
  ASSERT_NO_FATAL_FAILURE(FillTheOnlySlot("stuck", r));
  // Waits behind "stuck" (one download at a time).
  archiver_->Archive(Completed("queued", sim_->VideoUrl("queued")), r.Callback());
  archiver_->Kick();
  // Destroying aborts the transfer (at its next progress report, about once
  // a second) rather than waiting for libcurl's stall timer (60 s) or the
  // video (an hour): a bound far from both, and far above a loaded
  // machine's delays.
  const absl::Time start = absl::Now();
  archiver_.reset();
  EXPECT_LT(absl::Now() - start, absl::Seconds(30));
  absl::MutexLock lock(&r.mu);
  ASSERT_EQ(r.tasks.size(), 2u);
  for (const VideoTask& t : r.tasks) {
    EXPECT_TRUE(absl::StrContains(t.archive_error(), "stopped")) << t.archive_error();
  }
  EXPECT_EQ(ListDir(dir_), std::set<std::string>{});
  EXPECT_EQ(sim_->VideoRequestCount("queued"), 0);  // it never started
}

// ArchiveBy's deadline holds while the job waits for a download slot (the
// S3 archiver's remaining time): answered by then, never downloaded.
TEST_F(FileArchiverTest, ArchiveByEndsByItsDeadlineEvenWaitingForASlot) {
  Results r;
  ASSERT_NO_FATAL_FAILURE(FillTheOnlySlot("stuck", r));
  archiver_->ArchiveBy(Completed("queued", sim_->VideoUrl("queued")),
                       clock_.Monotonic() + absl::Seconds(5), r.Callback());
  archiver_->Kick();
  clock_.Advance(absl::Seconds(6));  // far below the 30 min timeout
  archiver_->Kick();
  ASSERT_TRUE(WaitUntil([&] {
    absl::MutexLock lock(&r.mu);
    return !r.tasks.empty();
  }));
  {
    absl::MutexLock lock(&r.mu);
    ASSERT_EQ(r.tasks.size(), 1u);
    EXPECT_EQ(r.tasks[0].id(), "queued");
    EXPECT_FALSE(r.tasks[0].has_archive());
    EXPECT_TRUE(absl::StrContains(r.tasks[0].archive_error(), "timeout"))
        << r.tasks[0].archive_error();
  }
  EXPECT_EQ(sim_->VideoRequestCount("queued"), 0);
  archiver_.reset();  // answers "stuck" while `r` lives
}

// A video_url ending in ".json": the video keeps its name, the metadata has
// its own (ID.meta.json), and both are what they claim.
TEST_F(FileArchiverTest, AJsonExtensionDoesNotCollideWithTheMetadata) {
  StartArchiver();
  VideoScript v;
  v.size_bytes = 100000;
  sim_->SetVideo("jv", v);
  VideoTask t = ArchiveOne("jv", sim_->VideoUrl("jv", ".json"));
  ASSERT_TRUE(t.has_archive()) << t.archive_error();
  const std::string path = archiver_->dir() + "/jv.json";
  EXPECT_EQ(t.archive().uri(), "file://" + path);
  EXPECT_EQ(t.archive().sha256(), SimVideoSha256("jv", v.size_bytes));
  EXPECT_EQ(FileSha256(path), t.archive().sha256()) << "the published file is not the video";
  EXPECT_EQ(ListDir(dir_), (std::set<std::string>{"jv.json", "jv.meta.json"}));
  // And a restart reuses it.
  StartArchiver();
  VideoTask again = ArchiveOne("jv", sim_->VideoUrl("jv", ".json"));
  EXPECT_EQ(again.archive().SerializeAsString(), t.archive().SerializeAsString());
  EXPECT_EQ(sim_->VideoRequestCount("jv"), 1);
}

// Two pods on one shared archive dir archive the same id at once: the second
// waits for the first's claim and answers with its copy; after the worker
// removed that copy, nothing brings it back. One download.
TEST_F(FileArchiverTest, TwoArchiversOnOneDirDownloadOnceAndNeverRecreateARemovedCopy) {
  VideoScript v;
  v.size_bytes = 2 << 20;
  v.chunk_delay = absl::Milliseconds(20);
  sim_->SetVideo("dup", v);
  StartArchiver();
  auto b = FileArchiver::Create(options_, &clock_, &metrics_);  // "pod B", same dir
  ASSERT_TRUE(b.ok());
  Results ra, rb;
  archiver_->Archive(Completed("dup", sim_->VideoUrl("dup")), ra.Callback());
  const absl::Time give_up = absl::Now() + absl::Seconds(20);
  while (sim_->VideoRequestCount("dup") == 0 && absl::Now() < give_up) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  (*b)->Archive(Completed("dup", sim_->VideoUrl("dup")), rb.Callback());
  std::vector<VideoTask> a_got = Await(ra, 1, absl::Milliseconds(20));
  ASSERT_EQ(a_got.size(), 1u);
  ASSERT_TRUE(a_got[0].has_archive()) << a_got[0].archive_error();
  // The worker got A's COMPLETED, copied the video, and removes it.
  ASSERT_EQ(::unlink((dir_ + "/dup.mp4").c_str()), 0);
  ASSERT_EQ(::unlink((dir_ + "/dup.meta.json").c_str()), 0);
  const absl::Time b_give_up = absl::Now() + absl::Seconds(60);
  while (rb.size() == 0 && absl::Now() < b_give_up) {
    clock_.Advance(absl::Milliseconds(100));
    (*b)->Kick();
    absl::SleepFor(absl::Milliseconds(5));
  }
  {
    absl::MutexLock lock(&rb.mu);
    ASSERT_EQ(rb.tasks.size(), 1u);
    ASSERT_TRUE(rb.tasks[0].has_archive()) << rb.tasks[0].archive_error();
    EXPECT_EQ(rb.tasks[0].archive().SerializeAsString(), a_got[0].archive().SerializeAsString());
  }
  EXPECT_EQ(sim_->VideoRequestCount("dup"), 1);
  EXPECT_EQ(ListDir(dir_), std::set<std::string>{}) << "a removed copy came back";
  // No claim is left; the record of the copy is.
  EXPECT_EQ(ListDir(dir_ + "/.archive-state"), std::set<std::string>{"dup.done"});
}

// A claim file that a dead sidecar left (no lock on it) does not block; one
// that is held (flock, as another sidecar's) is waited for, within the
// timeout, without a download.
TEST_F(FileArchiverTest, ALeftoverClaimIsTakenAndAHeldOneWaitedFor) {
  options_.timeout = absl::Seconds(20);
  StartArchiver();
  VideoScript v;
  v.size_bytes = 5000;
  sim_->SetVideo("orphan", v);
  sim_->SetVideo("held", v);
  const std::string left = dir_ + "/.archive-state/orphan.claim";
  std::ofstream(left) << "crashed-pod pid 1\n";
  VideoTask orphan = ArchiveOne("orphan", sim_->VideoUrl("orphan"));
  ASSERT_TRUE(orphan.has_archive()) << orphan.archive_error();
  EXPECT_EQ(FileSize(left), -1);

  const std::string claim = dir_ + "/.archive-state/held.claim";
  const int fd = open(claim.c_str(), O_RDWR | O_CREAT, 0644);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(flock(fd, LOCK_EX | LOCK_NB), 0);
  VideoTask held = ArchiveOne("held", sim_->VideoUrl("held"));
  EXPECT_FALSE(held.has_archive());
  EXPECT_TRUE(absl::StrContains(held.archive_error(), "another sidecar")) << held.archive_error();
  EXPECT_EQ(sim_->VideoRequestCount("held"), 0);
  EXPECT_EQ(Failures("claimed"), 1u);
  close(fd);  // the holder goes: now it is ours
  VideoTask after = ArchiveOne("held", sim_->VideoUrl("held"));
  EXPECT_TRUE(after.has_archive()) << after.archive_error();
}

// A failed fsync of the directory fails the attempt (io_error, retried), and
// `archive` is only reported once one succeeded; the published file is never
// unlinked for it.
TEST_F(FileArchiverTest, AFailedDirectoryFsyncIsRetriedAndNeverReportedAsDurable) {
  auto failures = std::make_shared<std::atomic<int>>(1);
  options_.fsync_dir = [failures](int fd) {
    if (failures->fetch_sub(1) > 0) {
      errno = EIO;
      return -1;
    }
    return ::fsync(fd);
  };
  StartArchiver();
  VideoScript v;
  v.size_bytes = 20000;
  sim_->SetVideo("sync", v);
  VideoTask t = ArchiveOne("sync", sim_->VideoUrl("sync"));
  ASSERT_TRUE(t.has_archive()) << t.archive_error();
  EXPECT_EQ(sim_->VideoRequestCount("sync"), 2);  // the first attempt failed at the fsync

  // Every fsync fails: archive_error naming it, after retries; the copy
  // that was renamed into place stays (complete) but is not reported.
  failures->store(1000000);
  options_.timeout = absl::Seconds(10);
  StartArchiver();
  sim_->SetVideo("never", v);
  VideoTask never = ArchiveOne("never", sim_->VideoUrl("never"));
  EXPECT_FALSE(never.has_archive());
  EXPECT_TRUE(absl::StrContains(never.archive_error(), "fsync of the archive dir"))
      << never.archive_error();
  EXPECT_GE(sim_->VideoRequestCount("never"), 2);
  EXPECT_EQ(Failures("io_error") + Failures("timeout"), 1u);  // the timeout may cut the last try
  EXPECT_EQ(FileSha256(dir_ + "/never.mp4"), SimVideoSha256("never", v.size_bytes));
}

// A slow video host holds its slot only until the throughput floor (on the
// injected clock) fails the attempt: retried, then archive_error naming it.
// The clock moves only by hand, at known points, so the outcome does not
// depend on how fast the machine runs the test: real time matters only to
// libcurl's own stall timer (LOW_SPEED_TIME, a real `stall_timeout` of 60 s
// here) and to the progress callback, which libcurl calls about once a
// second on an idle transfer; the test waits for it without moving the clock.
TEST_F(FileArchiverTest, ASlowHostIsCutOffByTheThroughputFloor) {
  constexpr absl::Duration kWindow = absl::Seconds(60);   // stall_timeout
  constexpr absl::Duration kBackoff = absl::Seconds(10);  // every retry: 8-12 s (+-20%)
  options_.stall_timeout = kWindow;
  options_.min_bytes_per_second = 64 << 10;
  options_.initial_backoff = kBackoff;
  options_.max_backoff = kBackoff;
  // Attempt 1 runs [0, 61 s], attempt 2 [73 s, 134 s]; the deadline (135 s,
  // moved on by at most 4 s while the retry was due: the backoff was 8-12 s
  // and the clock jumped 12 s) lies inside the backoff after attempt 2 (at
  // least 8 s), so the job ends there, with attempt 2's error.
  options_.timeout = 2 * kWindow + absl::Seconds(15);
  StartArchiver();
  VideoScript slow;
  slow.size_bytes = 4 << 20;
  slow.chunk_delay = absl::Hours(1);  // headers, then nothing
  sim_->SetVideo("slow", slow);
  Results r;
  const absl::Time t0 = clock_.Monotonic();
  archiver_->Archive(Completed("slow", sim_->VideoUrl("slow")), r.Callback());
  auto requests = [this] { return sim_->VideoRequestCount("slow"); };
  auto running = [this] { return archiver_->GetStats().running; };

  // Attempt 1: one byte-less window goes by; the next progress report fails it.
  ASSERT_TRUE(WaitUntil([&] { return requests() == 1; }));
  clock_.AdvanceTo(t0 + kWindow + absl::Seconds(1));
  ASSERT_TRUE(WaitUntil([&] { return running() == 0; })) << "the floor did not end attempt 1";
  EXPECT_EQ(r.size(), 0u) << "not retried";
  // Its backoff passes: attempt 2, which the floor fails too.
  const absl::Time retry = t0 + kWindow + absl::Seconds(1) + kBackoff * 1.2;
  clock_.AdvanceTo(retry);
  archiver_->Kick();
  ASSERT_TRUE(WaitUntil([&] { return requests() == 2; })) << "no retry after the backoff";
  clock_.AdvanceTo(retry + kWindow + absl::Seconds(1));
  ASSERT_TRUE(WaitUntil([&] { return r.size() == 1; })) << "the floor did not end attempt 2";

  absl::MutexLock lock(&r.mu);
  const VideoTask& t = r.tasks[0];
  EXPECT_FALSE(t.has_archive());
  EXPECT_TRUE(absl::StrContains(t.archive_error(), "--archive_min_bytes_per_second"))
      << t.archive_error();
  EXPECT_TRUE(absl::StrContains(t.archive_error(), "gave up after 2 attempts"))
      << t.archive_error();
  EXPECT_EQ(requests(), 2);
  EXPECT_EQ(Failures("slow"), 1u);
  EXPECT_EQ(Failures("stalled") + Failures("timeout"), 0u);
  EXPECT_EQ(ListDir(dir_), std::set<std::string>{});
}

// A job queued behind a download that holds the only slot does not spend its
// timeout waiting for the slot.
TEST_F(FileArchiverTest, AQueuedJobKeepsItsTimeoutWhileItWaitsForASlot) {
  options_.timeout = absl::Seconds(30);
  options_.min_bytes_per_second = 0;  // the hog is only cut by its own timeout
  VideoScript fast;
  fast.size_bytes = 50000;
  sim_->SetVideo("queued", fast);
  Results r_hog, r_queued;
  ASSERT_NO_FATAL_FAILURE(FillTheOnlySlot("hog", r_hog));
  archiver_->Archive(Completed("queued", sim_->VideoUrl("queued")), r_queued.Callback());
  clock_.Advance(absl::Seconds(45));  // past both timeouts
  archiver_->Kick();
  std::vector<VideoTask> h = Await(r_hog, 1, absl::Milliseconds(100));
  ASSERT_EQ(h.size(), 1u);
  EXPECT_TRUE(absl::StrContains(h[0].archive_error(), "timeout")) << h[0].archive_error();
  std::vector<VideoTask> q = Await(r_queued, 1, absl::Milliseconds(100));
  ASSERT_EQ(q.size(), 1u);
  EXPECT_TRUE(q[0].has_archive()) << q[0].archive_error();
  EXPECT_EQ(sim_->VideoRequestCount("queued"), 1);
}

}  // namespace
}  // namespace videotask
