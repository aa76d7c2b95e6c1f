#include "server/api_key.h"

#include <stdlib.h>
#include <sys/stat.h>
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
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "server/clock.h"

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

TEST(ApiKeyTest, FromFileTrimsTrailingNewline) {
  const std::string dir = MakeDir("trim");
  const std::string path = dir + "/key";
  WriteFile(path, "sk-SECRET-1234\n");
  SimulatedClock clock;
  auto src = ApiKeySource::FromFile(path, &clock);
  ASSERT_TRUE(src.ok()) << src.status();
  EXPECT_EQ(*(*src)->Get(), "sk-SECRET-1234");
}

TEST(ApiKeyTest, FromFileErrorsNamePathNotContents) {
  const std::string dir = MakeDir("errors");
  SimulatedClock clock;

  auto missing = ApiKeySource::FromFile(dir + "/missing", &clock);
  ASSERT_FALSE(missing.ok());
  EXPECT_TRUE(absl::StrContains(missing.status().message(), dir + "/missing"))
      << missing.status();

  WriteFile(dir + "/empty", "\n\n");
  auto empty = ApiKeySource::FromFile(dir + "/empty", &clock);
  ASSERT_FALSE(empty.ok());
  EXPECT_TRUE(absl::StrContains(empty.status().message(), dir + "/empty"));

  WriteFile(dir + "/two_lines", "sk-SECRET-1234\nsk-SECRET-5678\n");
  auto two = ApiKeySource::FromFile(dir + "/two_lines", &clock);
  ASSERT_FALSE(two.ok());
  EXPECT_TRUE(absl::StrContains(two.status().message(), dir + "/two_lines"));
  EXPECT_FALSE(absl::StrContains(two.status().message(), "SECRET"));

  WriteFile(dir + "/huge", std::string(ApiKeySource::kMaxFileBytes + 10, 'k'));
  EXPECT_FALSE(ApiKeySource::FromFile(dir + "/huge", &clock).ok());

  auto is_dir = ApiKeySource::FromFile(dir, &clock);
  EXPECT_FALSE(is_dir.ok());

  EXPECT_FALSE(ApiKeySource::FromFile("", &clock).ok());
}

TEST(ApiKeyTest, ReReadsAtMostOncePerSecond) {
  const std::string dir = MakeDir("throttle");
  const std::string path = dir + "/key";
  WriteFile(path, "key-1\n");
  SimulatedClock clock;
  auto src = ApiKeySource::FromFile(path, &clock);
  ASSERT_TRUE(src.ok()) << src.status();
  ApiKeySource& s = **src;
  EXPECT_EQ(*s.Get(), "key-1");

  ReplaceFile(path, "key-2\n");
  EXPECT_EQ(*s.Get(), "key-1");  // not checked yet
  clock.Advance(absl::Milliseconds(999));
  EXPECT_EQ(*s.Get(), "key-1");
  clock.Advance(absl::Milliseconds(1));
  EXPECT_EQ(*s.Get(), "key-2");

  // A change right after a check waits for the next second.
  ReplaceFile(path, "key-3\n");
  clock.Advance(absl::Milliseconds(500));
  EXPECT_EQ(*s.Get(), "key-2");
  clock.Advance(absl::Milliseconds(500));
  EXPECT_EQ(*s.Get(), "key-3");
}

TEST(ApiKeyTest, DetectsInPlaceRewriteOfSameSize) {
  const std::string dir = MakeDir("inplace");
  const std::string path = dir + "/key";
  WriteFile(path, "aaaa");
  SimulatedClock clock;
  auto src = ApiKeySource::FromFile(path, &clock);
  ASSERT_TRUE(src.ok()) << src.status();
  // File timestamps are coarse (a clock tick); make sure mtime moves.
  absl::SleepFor(absl::Milliseconds(30));
  WriteFile(path, "bbbb");
  clock.Advance(absl::Seconds(1));
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

  SimulatedClock clock;
  auto src = ApiKeySource::FromFile(dir + "/key", &clock);
  ASSERT_TRUE(src.ok()) << src.status();
  EXPECT_EQ(*(*src)->Get(), "sk-v1");

  ASSERT_EQ(::symlink("..v2", (dir + "/..data_tmp").c_str()), 0);
  ASSERT_EQ(std::rename((dir + "/..data_tmp").c_str(), (dir + "/..data").c_str()),
            0);
  clock.Advance(absl::Seconds(1));
  EXPECT_EQ(*(*src)->Get(), "sk-v2");
}

TEST(ApiKeyTest, FailedReReadKeepsLastGoodKeyAndReportsOnce) {
  const std::string dir = MakeDir("failures");
  const std::string path = dir + "/key";
  WriteFile(path, "sk-good\n");
  SimulatedClock clock;
  std::vector<absl::Status> reports;
  auto src = ApiKeySource::FromFile(
      path, &clock, [&](const absl::Status& s) { reports.push_back(s); });
  ASSERT_TRUE(src.ok()) << src.status();
  ApiKeySource& s = **src;

  ASSERT_EQ(::unlink(path.c_str()), 0);
  for (int i = 0; i < 5; ++i) {
    clock.Advance(absl::Seconds(2));
    absl::StatusOr<std::string> key = s.Get();
    ASSERT_TRUE(key.ok()) << key.status();
    EXPECT_EQ(*key, "sk-good");
  }
  ASSERT_EQ(reports.size(), 1u);
  EXPECT_TRUE(absl::StrContains(reports[0].message(), path)) << reports[0];

  // Still the same failure streak: an empty file is not reported again.
  WriteFile(path, "\n");
  clock.Advance(absl::Seconds(2));
  EXPECT_EQ(*s.Get(), "sk-good");
  EXPECT_EQ(reports.size(), 1u);

  // Recovery, then a new failure is reported again.
  ReplaceFile(path, "sk-new\n");
  clock.Advance(absl::Seconds(2));
  EXPECT_EQ(*s.Get(), "sk-new");
  ReplaceFile(path, "sk-SECRET bad\n");
  clock.Advance(absl::Seconds(2));
  EXPECT_EQ(*s.Get(), "sk-new");
  ASSERT_EQ(reports.size(), 2u);
  EXPECT_FALSE(absl::StrContains(reports[1].message(), "SECRET"));

  // A failed read is retried at the next check even if the file is unchanged
  // since (e.g. permissions fixed later): here, fix the content.
  ReplaceFile(path, "sk-fixed\n");
  clock.Advance(absl::Seconds(1));
  EXPECT_EQ(*s.Get(), "sk-fixed");
}

TEST(ApiKeyTest, UnreadableFileIsRetriedWithoutChange) {
  if (::geteuid() == 0) GTEST_SKIP() << "root ignores file permissions";
  const std::string dir = MakeDir("perm");
  const std::string path = dir + "/key";
  WriteFile(path, "sk-one\n");
  SimulatedClock clock;
  int reports = 0;
  auto src = ApiKeySource::FromFile(path, &clock,
                                    [&](const absl::Status&) { ++reports; });
  ASSERT_TRUE(src.ok());
  ReplaceFile(path, "sk-two\n");
  ASSERT_EQ(::chmod(path.c_str(), 0), 0);
  clock.Advance(absl::Seconds(1));
  EXPECT_EQ(*(*src)->Get(), "sk-one");
  EXPECT_EQ(reports, 1);
  ASSERT_EQ(::chmod(path.c_str(), 0600), 0);  // changes ctime only
  clock.Advance(absl::Seconds(1));
  EXPECT_EQ(*(*src)->Get(), "sk-two");
}

TEST(ApiKeyTest, ConcurrentGetDuringRotation) {
  const std::string dir = MakeDir("concurrent");
  const std::string path = dir + "/key";
  WriteFile(path, "sk-0\n");
  SimulatedClock clock;
  auto src = ApiKeySource::FromFile(path, &clock);
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
    clock.Advance(absl::Seconds(1));
  }
  stop.store(true);
  for (auto& t : readers) t.join();
  EXPECT_EQ(bad.load(), 0);
  clock.Advance(absl::Seconds(1));
  EXPECT_EQ(*s.Get(), "sk-50");
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
