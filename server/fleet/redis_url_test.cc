#include "server/fleet/redis_url.h"

#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace videotask::fleet {
namespace {

TEST(RedisUrlTest, HostPortDb) {
  absl::StatusOr<RedisUrl> u = RedisUrl::Parse("redis://redis.default.svc:6380/3");
  ASSERT_TRUE(u.ok()) << u.status();
  EXPECT_EQ(u->kind, RedisUrl::Kind::kTcp);
  EXPECT_EQ(u->host, "redis.default.svc");
  EXPECT_EQ(u->port, 6380);
  EXPECT_EQ(u->db, 3);
  EXPECT_EQ(u->password, "");
  EXPECT_EQ(u->username, "");
}

TEST(RedisUrlTest, Defaults) {
  absl::StatusOr<RedisUrl> u = RedisUrl::Parse("redis://127.0.0.1");
  ASSERT_TRUE(u.ok()) << u.status();
  EXPECT_EQ(u->port, 6379);
  EXPECT_EQ(u->db, 0);
  u = RedisUrl::Parse("REDIS://h:1/");
  ASSERT_TRUE(u.ok()) << u.status();
  EXPECT_EQ(u->port, 1);
  EXPECT_EQ(u->db, 0);
}

TEST(RedisUrlTest, Password) {
  absl::StatusOr<RedisUrl> u = RedisUrl::Parse("redis://:s3cr%40t@h:7000/1");
  ASSERT_TRUE(u.ok()) << u.status();
  EXPECT_EQ(u->password, "s3cr@t");
  EXPECT_EQ(u->username, "");
  EXPECT_EQ(u->Redacted(), "redis://:***@h:7000/1");
}

TEST(RedisUrlTest, RawAtAndSlashInPasswordSplitAtLastAt) {
  absl::StatusOr<RedisUrl> u = RedisUrl::Parse("redis://:p@ss/w?rd@h:7000/2");
  ASSERT_TRUE(u.ok()) << u.status();
  EXPECT_EQ(u->password, "p@ss/w?rd");
  EXPECT_EQ(u->host, "h");
  EXPECT_EQ(u->db, 2);
}

TEST(RedisUrlTest, UserAndPassword) {
  absl::StatusOr<RedisUrl> u = RedisUrl::Parse("redis://videotask:pw@h:1");
  ASSERT_TRUE(u.ok()) << u.status();
  EXPECT_EQ(u->username, "videotask");
  EXPECT_EQ(u->password, "pw");
  EXPECT_EQ(u->Redacted(), "redis://videotask:***@h:1/0");
}

TEST(RedisUrlTest, Ipv6) {
  absl::StatusOr<RedisUrl> u = RedisUrl::Parse("redis://[::1]:6390/4");
  ASSERT_TRUE(u.ok()) << u.status();
  EXPECT_EQ(u->host, "::1");
  EXPECT_EQ(u->port, 6390);
  EXPECT_EQ(u->Redacted(), "redis://[::1]:6390/4");
  u = RedisUrl::Parse("redis://[fe80::1]");
  ASSERT_TRUE(u.ok()) << u.status();
  EXPECT_EQ(u->port, 6379);
}

TEST(RedisUrlTest, Unix) {
  absl::StatusOr<RedisUrl> u = RedisUrl::Parse("unix:/run/redis/redis.sock");
  ASSERT_TRUE(u.ok()) << u.status();
  EXPECT_EQ(u->kind, RedisUrl::Kind::kUnix);
  EXPECT_EQ(u->unix_path, "/run/redis/redis.sock");
  u = RedisUrl::Parse("unix:///run/redis.sock");
  ASSERT_TRUE(u.ok()) << u.status();
  EXPECT_EQ(u->unix_path, "/run/redis.sock");
  EXPECT_EQ(u->Redacted(), "unix:/run/redis.sock");
}

TEST(RedisUrlTest, Tls) {
  auto u = RedisUrl::Parse("rediss://app:pw@cache.example.net:6380/2");
  ASSERT_TRUE(u.ok()) << u.status();
  EXPECT_TRUE(u->tls);
  EXPECT_EQ(u->kind, RedisUrl::Kind::kTcp);
  EXPECT_EQ(u->host, "cache.example.net");
  EXPECT_EQ(u->port, 6380);
  EXPECT_EQ(u->username, "app");
  EXPECT_EQ(u->password, "pw");
  EXPECT_EQ(u->db, 2);
  EXPECT_EQ(u->Redacted(), "rediss://app:***@cache.example.net:6380/2");
  u = RedisUrl::Parse("REDISS://[::1]");
  ASSERT_TRUE(u.ok()) << u.status();
  EXPECT_TRUE(u->tls);
  EXPECT_EQ(u->port, 6379);
  EXPECT_EQ(u->Redacted(), "rediss://[::1]:6379/0");
  u = RedisUrl::Parse("redis://h");
  ASSERT_TRUE(u.ok()) << u.status();
  EXPECT_FALSE(u->tls);
}

TEST(RedisUrlTest, MalformedIsOneSentenceWithoutThePassword) {
  const std::string secret = "Hunter2SecretValue";
  const std::string long_host(5000, 'a');
  const std::string cases[] = {
      "",
      "localhost:6379",
      "http://h:1",
      "rediss://:" + secret + "@h:0",
      "rediss://:" + secret + "@",
      "redis://",
      "redis://:" + secret + "@",
      "redis://:" + secret + "@:6379",
      "redis://:" + secret + "@h:",
      "redis://:" + secret + "@h:0",
      "redis://:" + secret + "@h:65536",
      "redis://:" + secret + "@h:99999999999999999999",
      "redis://:" + secret + "@h:-1",
      "redis://:" + secret + "@h:6379/x",
      "redis://:" + secret + "@h:6379/-1",
      "redis://:" + secret + "@h:6379/2147483648",
      "redis://:" + secret + "@h:6379/1/2",
      "redis://:" + secret + "@h:6379?db=1",
      "redis://" + secret + "@h:6379",
      "redis://:@h:6379",
      "redis://:" + secret + "%@h",
      "redis://:" + secret + "%zz@h",
      "redis://:" + secret + "%00@h",
      "redis://:" + secret + " x@h",
      "redis://:" + secret + "\n@h",
      "redis://:" + secret + "@h\t:1",
      "redis://:" + secret + "@h$t:1",
      "redis://:" + secret + "@[::1:1",
      "redis://:" + secret + "@[zz]:1",
      "redis://:" + secret + "@[::1]x",
      "redis://:" + secret + "@[::1]:",
      "redis://" + long_host,
      "unix:",
      "unix:/run/x?db=1",
      "unix:/" + std::string(200, 's'),
      std::string("redis://h\0:1", 12),
  };
  for (const std::string& c : cases) {
    absl::StatusOr<RedisUrl> u = RedisUrl::Parse(c);
    ASSERT_FALSE(u.ok()) << "accepted: " << c;
    EXPECT_EQ(u.status().code(), absl::StatusCode::kInvalidArgument) << c;
    const std::string msg(u.status().message());
    EXPECT_FALSE(absl::StrContains(msg, secret)) << msg;
    EXPECT_FALSE(absl::StrContains(msg, "\n")) << msg;
    EXPECT_TRUE(absl::StartsWith(msg, "redis URL: ")) << msg;
    EXPECT_TRUE(absl::EndsWith(msg, ".")) << msg;
  }
}

TEST(RedisUrlTest, AbsurdBytesNeverCrash) {
  // Every byte value at every position of a valid URL.
  const std::string base = "redis://u:p@h:1/2";
  for (size_t i = 0; i < base.size(); ++i) {
    for (int b = 0; b < 256; ++b) {
      std::string s = base;
      s[i] = static_cast<char>(b);
      (void)RedisUrl::Parse(s);
      (void)RedisUrl::Parse(s.substr(0, i));
    }
  }
}

class PasswordFileTest : public ::testing::Test {
 protected:
  std::string Path(const std::string& name) {
    const char* dir = std::getenv("TEST_TMPDIR");
    return absl::StrCat(dir != nullptr ? dir : ".", "/", name);
  }
  static void Write(const std::string& path, const std::string& text) {
    std::ofstream(path, std::ios::trunc) << text;
  }
};

TEST_F(PasswordFileTest, ReadsTrimmedAndRereadsOnChange) {
  const std::string path = Path("pw1");
  Write(path, "first\n");
  auto f = RedisPasswordFile::Open(path);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ((*f)->Get(), "first");
  EXPECT_EQ((*f)->Get(), "first");
  Write(path, "second-longer\n");
  EXPECT_EQ((*f)->Get(), "second-longer");
  // Symlink swap, as Kubernetes rotates a Secret.
  const std::string target = Path("pw1.new");
  Write(target, "third\n");
  ASSERT_EQ(std::rename(target.c_str(), path.c_str()), 0);
  EXPECT_EQ((*f)->Get(), "third");
  EXPECT_TRUE((*f)->last_error().ok());
}

TEST_F(PasswordFileTest, KeepsLastGoodOnFailureAndNeverLeaksContents) {
  const std::string path = Path("pw2");
  Write(path, "good-password\n");
  auto f = RedisPasswordFile::Open(path);
  ASSERT_TRUE(f.ok()) << f.status();
  Write(path, "   \n");
  EXPECT_EQ((*f)->Get(), "good-password");
  EXPECT_FALSE((*f)->last_error().ok());
  EXPECT_FALSE(absl::StrContains((*f)->last_error().message(), "good-password"));
  ASSERT_EQ(unlink(path.c_str()), 0);
  EXPECT_EQ((*f)->Get(), "good-password");
  Write(path, "new\n");
  EXPECT_EQ((*f)->Get(), "new");
  EXPECT_TRUE((*f)->last_error().ok());
}

TEST_F(PasswordFileTest, OpenErrors) {
  EXPECT_FALSE(RedisPasswordFile::Open("").ok());
  EXPECT_FALSE(RedisPasswordFile::Open(Path("missing")).ok());
  const std::string empty = Path("empty");
  Write(empty, "\n\n");
  EXPECT_FALSE(RedisPasswordFile::Open(empty).ok());
  const std::string ctl = Path("ctl");
  Write(ctl, "a\x01secretbit");
  auto r = RedisPasswordFile::Open(ctl);
  ASSERT_FALSE(r.ok());
  EXPECT_FALSE(absl::StrContains(r.status().message(), "secretbit"));
  const std::string big = Path("big");
  Write(big, std::string(RedisPasswordFile::kMaxFileBytes + 1, 'x'));
  EXPECT_FALSE(RedisPasswordFile::Open(big).ok());
  EXPECT_FALSE(RedisPasswordFile::Open(Path("")).ok());  // a directory
}

}  // namespace
}  // namespace videotask::fleet
