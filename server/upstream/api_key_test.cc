#include "server/upstream/api_key.h"

#include <dirent.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace videotask {
namespace {

std::string TempDir() {
  const char* d = std::getenv("TEST_TMPDIR");
  return d != nullptr ? d : "/tmp";
}

// A fresh directory per test.
std::string MakeDir(const std::string& name) {
  const std::string dir = absl::StrCat(TempDir(), "/", name, "_", ::getpid());
  ::mkdir(dir.c_str(), 0700);
  return dir;
}

void WriteFile(const std::string& path, const std::string& data) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f << data;
  ASSERT_TRUE(f.good()) << path;
}

// Replaces `path` atomically with a new file (new inode), like most writers.
void ReplaceFile(const std::string& path, const std::string& data) {
  const std::string tmp = path + ".tmp";
  WriteFile(tmp, data);
  ASSERT_EQ(std::rename(tmp.c_str(), path.c_str()), 0);
}

TEST(ApiKeyTest, FromValueTrims) {
  auto src = ApiKeySource::FromValue("  sk-abc\n");
  ASSERT_TRUE(src.ok()) << src.status();
  EXPECT_EQ(*(*src)->Get(), "sk-abc");
}

TEST(ApiKeyTest, FromValueRejectsEmptyAndInnerWhitespace) {
  EXPECT_FALSE(ApiKeySource::FromValue("").ok());
  EXPECT_FALSE(ApiKeySource::FromValue(" \n\t").ok());
  auto bad = ApiKeySource::FromValue("sk-SECRET\r\nX-Evil: 1");
  ASSERT_FALSE(bad.ok());
  EXPECT_FALSE(absl::StrContains(bad.status().message(), "SECRET"));
  EXPECT_FALSE(ApiKeySource::FromValue("sk a").ok());
  EXPECT_FALSE(ApiKeySource::FromValue(std::string("sk\0a", 4)).ok());
}

TEST(ApiKeyTest, FromEnv) {
  ::setenv("VT_TEST_KEY", "sk-SECRET-env\n", 1);
  auto src = ApiKeySource::FromEnv("VT_TEST_KEY");
  ASSERT_TRUE(src.ok()) << src.status();
  EXPECT_EQ(*(*src)->Get(), "sk-SECRET-env");

  ::unsetenv("VT_TEST_KEY_UNSET");
  auto unset = ApiKeySource::FromEnv("VT_TEST_KEY_UNSET");
  ASSERT_FALSE(unset.ok());
  EXPECT_TRUE(absl::StrContains(unset.status().message(), "VT_TEST_KEY_UNSET"));

  ::setenv("VT_TEST_KEY_EMPTY", "  \n", 1);
  auto empty = ApiKeySource::FromEnv("VT_TEST_KEY_EMPTY");
  ASSERT_FALSE(empty.ok());
  EXPECT_TRUE(absl::StrContains(empty.status().message(), "VT_TEST_KEY_EMPTY"));

  ::setenv("VT_TEST_KEY_BAD", "sk-SECRET bad", 1);
  auto bad = ApiKeySource::FromEnv("VT_TEST_KEY_BAD");
  ASSERT_FALSE(bad.ok());
  EXPECT_FALSE(absl::StrContains(bad.status().message(), "SECRET"));
}

// A file source without its checker thread: the test decides when the file
// is checked, by calling Refresh().
absl::StatusOr<std::unique_ptr<ApiKeySource>> ManualFile(
    const std::string& path, ApiKeySource::ErrorReporter reporter = nullptr) {
  ApiKeyFileOptions options;
  options.reporter = std::move(reporter);
  options.check_interval = absl::ZeroDuration();
  return ApiKeySource::FromFile(path, std::move(options));
}

TEST(ApiKeyTest, FromFileTrimsTrailingNewline) {
  const std::string dir = MakeDir("trim");
  const std::string path = dir + "/key";
  WriteFile(path, "sk-SECRET-1234\n");
  auto src = ApiKeySource::FromFile(path);
  ASSERT_TRUE(src.ok()) << src.status();
  EXPECT_EQ(*(*src)->Get(), "sk-SECRET-1234");
}

TEST(ApiKeyTest, FromFileErrorsNamePathNotContents) {
  const std::string dir = MakeDir("errors");

  auto missing = ApiKeySource::FromFile(dir + "/missing");
  ASSERT_FALSE(missing.ok());
  EXPECT_TRUE(absl::StrContains(missing.status().message(), dir + "/missing"))
      << missing.status();

  WriteFile(dir + "/empty", "\n\n");
  auto empty = ApiKeySource::FromFile(dir + "/empty");
  ASSERT_FALSE(empty.ok());
  EXPECT_TRUE(absl::StrContains(empty.status().message(), dir + "/empty"));

  WriteFile(dir + "/two_lines", "sk-SECRET-1234\nsk-SECRET-5678\n");
  auto two = ApiKeySource::FromFile(dir + "/two_lines");
  ASSERT_FALSE(two.ok());
  EXPECT_TRUE(absl::StrContains(two.status().message(), dir + "/two_lines"));
  EXPECT_FALSE(absl::StrContains(two.status().message(), "SECRET"));

  WriteFile(dir + "/huge", std::string(ApiKeySource::kMaxFileBytes + 10, 'k'));
  EXPECT_FALSE(ApiKeySource::FromFile(dir + "/huge").ok());

  auto is_dir = ApiKeySource::FromFile(dir);
  EXPECT_FALSE(is_dir.ok());

  EXPECT_FALSE(ApiKeySource::FromFile("").ok());
  ApiKeyFileOptions negative;
  negative.check_interval = absl::Seconds(-1);
  WriteFile(dir + "/ok", "sk-ok\n");
  EXPECT_FALSE(ApiKeySource::FromFile(dir + "/ok", negative).ok());
}

TEST(ApiKeyTest, GetOnlyReturnsTheKeyInMemory) {
  const std::string dir = MakeDir("memory");
  const std::string path = dir + "/key";
  WriteFile(path, "key-1\n");
  auto src = ManualFile(path);
  ASSERT_TRUE(src.ok()) << src.status();
  ApiKeySource& s = **src;
  EXPECT_EQ(*s.Get(), "key-1");

  // However often Get() is called, the file is not looked at...
  ReplaceFile(path, "key-2\n");
  for (int i = 0; i < 3; ++i) EXPECT_EQ(*s.Get(), "key-1");
  ASSERT_EQ(::unlink(path.c_str()), 0);
  EXPECT_EQ(*s.Get(), "key-1");
  // ...only a check is.
  WriteFile(path, "key-3\n");
  s.Refresh();
  EXPECT_EQ(*s.Get(), "key-3");
  // Refreshing an unchanged file changes nothing.
  s.Refresh();
  EXPECT_EQ(*s.Get(), "key-3");
}

TEST(ApiKeyTest, CheckerThreadPicksUpRotationByItself) {
  const std::string dir = MakeDir("thread");
  const std::string path = dir + "/key";
  WriteFile(path, "sk-first\n");
  ApiKeyFileOptions options;
  options.check_interval = absl::Milliseconds(10);
  auto src = ApiKeySource::FromFile(path, options);
  ASSERT_TRUE(src.ok()) << src.status();
  ReplaceFile(path, "sk-second\n");
  // Bounded wait for the thread (not a sleep the result depends on).
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (*(*src)->Get() != "sk-second" && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  EXPECT_EQ(*(*src)->Get(), "sk-second");
  // Destruction stops the thread promptly (it is waiting between checks).
  const absl::Time start = absl::Now();
  src->reset();
  EXPECT_LT(absl::Now() - start, ApiKeySource::kStopWait);
}

TEST(ApiKeyTest, DetectsInPlaceRewriteOfSameSize) {
  const std::string dir = MakeDir("inplace");
  const std::string path = dir + "/key";
  WriteFile(path, "aaaa");
  auto src = ManualFile(path);
  ASSERT_TRUE(src.ok()) << src.status();
  // File timestamps are coarse (a clock tick); make sure mtime moves.
  absl::SleepFor(absl::Milliseconds(30));
  WriteFile(path, "bbbb");
  (*src)->Refresh();
  EXPECT_EQ(*(*src)->Get(), "bbbb");
}

TEST(ApiKeyTest, KubernetesSymlinkSwap) {
  // Kubernetes layout: key -> ..data/key, ..data -> ..2024_01, and rotation
  // points ..data at a new directory by an atomic rename of a symlink.
  const std::string dir = MakeDir("k8s");
  ::mkdir((dir + "/..v1").c_str(), 0700);
  ::mkdir((dir + "/..v2").c_str(), 0700);
  WriteFile(dir + "/..v1/key", "sk-v1\n");
  WriteFile(dir + "/..v2/key", "sk-v2\n");
  ASSERT_EQ(::symlink("..v1", (dir + "/..data").c_str()), 0);
  ASSERT_EQ(::symlink("..data/key", (dir + "/key").c_str()), 0);

  auto src = ManualFile(dir + "/key");
  ASSERT_TRUE(src.ok()) << src.status();
  EXPECT_EQ(*(*src)->Get(), "sk-v1");

  ASSERT_EQ(::symlink("..v2", (dir + "/..data_tmp").c_str()), 0);
  ASSERT_EQ(std::rename((dir + "/..data_tmp").c_str(), (dir + "/..data").c_str()),
            0);
  EXPECT_EQ(*(*src)->Get(), "sk-v1");  // not checked yet
  (*src)->Refresh();
  EXPECT_EQ(*(*src)->Get(), "sk-v2");
}

TEST(ApiKeyTest, FailedReReadKeepsLastGoodKeyAndReportsOnce) {
  const std::string dir = MakeDir("failures");
  const std::string path = dir + "/key";
  WriteFile(path, "sk-good\n");
  std::vector<absl::Status> reports;
  auto src = ManualFile(path, [&](const absl::Status& s) { reports.push_back(s); });
  ASSERT_TRUE(src.ok()) << src.status();
  ApiKeySource& s = **src;

  ASSERT_EQ(::unlink(path.c_str()), 0);
  for (int i = 0; i < 5; ++i) {
    s.Refresh();
    absl::StatusOr<std::string> key = s.Get();
    ASSERT_TRUE(key.ok()) << key.status();
    EXPECT_EQ(*key, "sk-good");
  }
  ASSERT_EQ(reports.size(), 1u);
  EXPECT_TRUE(absl::StrContains(reports[0].message(), path)) << reports[0];

  // Still the same failure streak: an empty file is not reported again.
  WriteFile(path, "\n");
  s.Refresh();
  EXPECT_EQ(*s.Get(), "sk-good");
  EXPECT_EQ(reports.size(), 1u);

  // Recovery, then a new failure is reported again.
  ReplaceFile(path, "sk-new\n");
  s.Refresh();
  EXPECT_EQ(*s.Get(), "sk-new");
  ReplaceFile(path, "sk-SECRET bad\n");
  s.Refresh();
  EXPECT_EQ(*s.Get(), "sk-new");
  ASSERT_EQ(reports.size(), 2u);
  EXPECT_FALSE(absl::StrContains(reports[1].message(), "SECRET"));

  // A failed read is retried at the next check even if the file is unchanged
  // since (e.g. permissions fixed later): here, fix the content.
  ReplaceFile(path, "sk-fixed\n");
  s.Refresh();
  EXPECT_EQ(*s.Get(), "sk-fixed");
}

TEST(ApiKeyTest, UnreadableFileIsRetriedWithoutChange) {
  if (::geteuid() == 0) GTEST_SKIP() << "root ignores file permissions";
  const std::string dir = MakeDir("perm");
  const std::string path = dir + "/key";
  WriteFile(path, "sk-one\n");
  int reports = 0;
  auto src = ManualFile(path, [&](const absl::Status&) { ++reports; });
  ASSERT_TRUE(src.ok());
  ReplaceFile(path, "sk-two\n");
  ASSERT_EQ(::chmod(path.c_str(), 0), 0);
  (*src)->Refresh();
  EXPECT_EQ(*(*src)->Get(), "sk-one");
  EXPECT_EQ(reports, 1);
  ASSERT_EQ(::chmod(path.c_str(), 0600), 0);  // changes ctime only
  (*src)->Refresh();
  EXPECT_EQ(*(*src)->Get(), "sk-two");
}

TEST(ApiKeyTest, ConcurrentGetDuringRotation) {
  const std::string dir = MakeDir("concurrent");
  const std::string path = dir + "/key";
  WriteFile(path, "sk-0\n");
  auto src = ManualFile(path);
  ASSERT_TRUE(src.ok());
  ApiKeySource& s = **src;
  std::atomic<bool> stop{false};
  std::atomic<int> bad{0};
  std::vector<std::thread> readers;
  for (int t = 0; t < 4; ++t) {
    readers.emplace_back([&] {
      while (!stop.load()) {
        absl::StatusOr<std::string> k = s.Get();
        if (!k.ok() || !absl::StartsWith(*k, "sk-")) bad.fetch_add(1);
      }
    });
  }
  for (int i = 1; i <= 50; ++i) {
    ReplaceFile(path, absl::StrCat("sk-", i, "\n"));
    s.Refresh();
  }
  stop.store(true);
  for (auto& t : readers) t.join();
  EXPECT_EQ(bad.load(), 0);
  EXPECT_EQ(*s.Get(), "sk-50");
}

// The threads of this process, and whether one of them other than the
// caller is blocked in system call `nr` (from /proc/self/task/*/syscall,
// which reads "running" for a thread that is not in a system call).
std::vector<pid_t> Threads() {
  std::vector<pid_t> tids;
  DIR* d = ::opendir("/proc/self/task");
  if (d == nullptr) return tids;
  while (struct dirent* e = ::readdir(d)) {
    if (e->d_name[0] != '.') tids.push_back(static_cast<pid_t>(std::atol(e->d_name)));
  }
  ::closedir(d);
  return tids;
}

bool OtherThreadBlockedIn(long nr) {
  const pid_t self = static_cast<pid_t>(::syscall(SYS_gettid));
  for (pid_t tid : Threads()) {
    if (tid == self) continue;
    std::ifstream f(absl::StrCat("/proc/self/task/", tid, "/syscall"));
    long n = -1;
    if (f >> n && n == nr) return true;
  }
  return false;
}

// Waits (bounded) until another thread is blocked in open() (openat).
bool WaitForBlockedOpen(absl::Duration limit) {
  const absl::Time deadline = absl::Now() + limit;
  while (absl::Now() < deadline) {
    if (OtherThreadBlockedIn(SYS_openat)) return true;
    absl::SleepFor(absl::Milliseconds(2));
  }
  return false;
}

// A path whose read blocks stands in for a hung mount: a FIFO without a
// writer blocks open(). Once the good key is loaded, the key file is replaced
// by a FIFO, so the next check hangs inside open().
class HungKeyFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = MakeDir(::testing::UnitTest::GetInstance()->current_test_info()->name());
    path_ = dir_ + "/key";
    WriteFile(path_, "sk-good\n");
  }

  // Replaces the key file with a FIFO (new inode: the next check opens it).
  void HangTheFile() {
    const std::string fifo = dir_ + "/fifo";
    ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
    ASSERT_EQ(std::rename(fifo.c_str(), path_.c_str()), 0);
  }

  // Lets a check blocked in open() go on (as if the mount came back): a
  // writer appears and leaves. True when a reader was waiting.
  bool Unhang(absl::Duration limit) {
    const absl::Time deadline = absl::Now() + limit;
    while (absl::Now() < deadline) {
      const int fd = ::open(path_.c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC);
      if (fd >= 0) {
        ::close(fd);
        return true;
      }
      absl::SleepFor(absl::Milliseconds(2));  // ENXIO: no reader yet
    }
    return false;
  }

  std::string dir_;
  std::string path_;
};

TEST_F(HungKeyFileTest, GetReturnsAtOnceWhileACheckHangs) {
  absl::Mutex mu;
  std::vector<absl::Status> reports;
  auto src = ManualFile(path_, [&](const absl::Status& s) {
    absl::MutexLock lock(&mu);
    reports.push_back(s);
  });
  ASSERT_TRUE(src.ok()) << src.status();
  ApiKeySource& s = **src;
  HangTheFile();

  // A check on a thread of its own, as the checker thread runs it.
  absl::Notification checked;
  std::thread checker([&] {
    s.Refresh();
    checked.Notify();
  });
  // Get() below must really run while the file system "hangs".
  EXPECT_TRUE(WaitForBlockedOpen(absl::Seconds(10))) << "the check never blocked in open()";

  // Get() on yet another thread, with a deadline: a Get() that touched the
  // file would hang here too.
  absl::Notification got;
  absl::StatusOr<std::string> key;
  std::thread getter([&] {
    key = s.Get();
    got.Notify();
  });
  const bool prompt = got.WaitForNotificationWithTimeout(absl::Seconds(5));
  EXPECT_TRUE(prompt) << "Get() blocked on the key file";
  EXPECT_FALSE(checked.HasBeenNotified());  // the check is still hung

  // Release every open() of the FIFO until both threads are done (a Get()
  // that checked the file itself would be stuck there too), bounded.
  bool released = false;
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  while (!(checked.HasBeenNotified() && got.HasBeenNotified()) && absl::Now() < deadline) {
    released = Unhang(absl::Milliseconds(50)) || released;
  }
  EXPECT_TRUE(released) << "no reader was waiting";
  checker.join();
  getter.join();
  ASSERT_TRUE(key.ok()) << key.status();
  EXPECT_EQ(*key, "sk-good");
  // The FIFO is not a regular file: reported once, the good key kept. (The
  // FIFO goes first, so that a Get() reading the file cannot hang here.)
  ASSERT_EQ(::unlink(path_.c_str()), 0);
  EXPECT_EQ(*s.Get(), "sk-good");
  absl::MutexLock lock(&mu);
  ASSERT_GE(reports.size(), 1u);
  EXPECT_EQ(reports.size(), 1u);
  EXPECT_TRUE(absl::StrContains(reports[0].message(), "not a regular file")) << reports[0];
}

TEST_F(HungKeyFileTest, DestructorDoesNotWaitForAHungCheckerThread) {
  const size_t threads_before = Threads().size();
  std::atomic<int> reports{0};
  ApiKeyFileOptions options;
  options.check_interval = absl::Milliseconds(5);
  options.reporter = [&reports](const absl::Status&) { reports.fetch_add(1); };
  auto src = ApiKeySource::FromFile(path_, options);
  ASSERT_TRUE(src.ok()) << src.status();
  HangTheFile();
  ASSERT_TRUE(WaitForBlockedOpen(absl::Seconds(10))) << "the checker never blocked in open()";

  // Should the destructor wait for the thread, the mount "comes back" after
  // 5 s, so that this test ends (and fails) rather than hangs.
  absl::Notification destroyed;
  std::atomic<bool> watchdog_released{false};
  std::thread watchdog([&] {
    if (!destroyed.WaitForNotificationWithTimeout(absl::Seconds(5))) {
      watchdog_released = Unhang(absl::Seconds(10));
    }
  });
  const absl::Time start = absl::Now();
  src->reset();
  const absl::Duration took = absl::Now() - start;
  destroyed.Notify();
  watchdog.join();
  EXPECT_LT(took, ApiKeySource::kStopWait + absl::Seconds(2));

  // The mount "comes back": the thread left behind finishes its check, sees
  // the source is gone and ends without calling the reporter.
  ASSERT_TRUE(watchdog_released || Unhang(absl::Seconds(10)));
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (Threads().size() > threads_before && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(2));
  }
  EXPECT_EQ(Threads().size(), threads_before) << "the checker thread did not end";
  EXPECT_EQ(reports.load(), 0);
}

TEST(ApiKeyTest, OverridableForFakes) {
  class Failing : public ApiKeySource {
   public:
    absl::StatusOr<std::string> Get() override {
      return absl::UnavailableError("vault down");
    }
  };
  Failing f;
  EXPECT_FALSE(f.Get().ok());
}

}  // namespace
}  // namespace videotask
