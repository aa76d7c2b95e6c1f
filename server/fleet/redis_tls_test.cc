// RedisClient over TLS (rediss://) against a real redis-server listening on
// TLS only, with a CA and certificates made by `openssl` for this test:
// commands, pub/sub, reconnect, each handshake failure (wrong CA, wrong
// name, expired certificate, missing client certificate) as a reasoned
// down, CA file rotation without restart, and Redis ACL users.
#include "server/fleet/redis_tls.h"

#include <stdio.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "server/fleet/redis_client.h"
#include "server/fleet/redis_client_testing.h"
#include "server/fleet/redis_url.h"
#include "tests/testing/listeners.h"
#include "tests/testing/redis_server.h"
#include "tests/testing/test_pki.h"

namespace videotask::fleet {
namespace {

using ::videotask::testing::RedisServer;
using ::videotask::testing::TestPki;

constexpr char kSecret[] = "Tls-Secret-Password-42";

// The TLS handshake and I/O get twice the default command timeout.
constexpr absl::Duration kCommandTimeout = absl::Milliseconds(500);

class RedisTlsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const char* tmp = std::getenv("TEST_TMPDIR");
    auto pki = TestPki::Create(tmp != nullptr ? tmp : "/tmp");
    ASSERT_TRUE(pki.ok()) << pki.status();
    pki_ = new TestPki(*std::move(pki));
  }
  static void TearDownTestSuite() {
    delete pki_;
    pki_ = nullptr;
  }

  static std::unique_ptr<RedisServer> Server(bool auth_clients = false,
                                             const std::string& cert = "",
                                             const std::string& password = "") {
    RedisServer::Options o;
    o.password = password;
    o.tls = RedisServer::Options::Tls{cert.empty() ? pki_->server_pem : cert, pki_->server_key,
                                      pki_->ca_pem, auth_clients};
    auto s = RedisServer::Start(o);
    EXPECT_TRUE(s.ok()) << s.status();
    return s.ok() ? *std::move(s) : nullptr;
  }

  static RedisClientOptions Options(const std::string& url, RedisTlsOptions tls, StateLog* log) {
    RedisClientOptions o;
    absl::StatusOr<RedisUrl> u = RedisUrl::Parse(url);
    EXPECT_TRUE(u.ok()) << u.status();
    if (u.ok()) o.url = *u;
    o.min_backoff = absl::Milliseconds(50);
    o.max_backoff = absl::Milliseconds(300);
    auto ctx = RedisTlsContext::Create(std::move(tls));
    EXPECT_TRUE(ctx.ok()) << ctx.status();
    if (ctx.ok()) o.tls = std::move(*ctx);
    if (log != nullptr) o.on_state = log->Callback();
    return o;
  }

  static RedisTlsOptions Trusting() {
    RedisTlsOptions t;
    t.ca_file = pki_->ca_pem;
    return t;
  }

  // Expects the client to stay down with a reason containing `want`, and
  // never the password.
  static void ExpectDown(const RedisServer& server, RedisTlsOptions tls, const std::string& want,
                         const std::string& host = "127.0.0.1") {
    StateLog log;
    RedisClient c(Options(absl::StrCat("rediss://:", kSecret, "@", host, ":", server.port()),
                          std::move(tls), &log));
    ASSERT_TRUE(log.WaitFor(false, absl::Seconds(5)));
    absl::SleepFor(absl::Milliseconds(300));  // a few more attempts
    EXPECT_FALSE(c.up());
    const std::string reason(c.last_error().message());
    EXPECT_TRUE(absl::StrContains(reason, want)) << reason;
    EXPECT_TRUE(absl::StrContains(reason, "rediss://")) << reason;
    EXPECT_FALSE(absl::StrContains(reason, kSecret)) << reason;
    EXPECT_FALSE(absl::StrContains(log.LastReason().message(), kSecret));
    auto r = Call(c, {"PING"}, kCommandTimeout);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable) << r.status();
  }

  static TestPki* pki_;
};

TestPki* RedisTlsTest::pki_ = nullptr;

TEST_F(RedisTlsTest, CommandsPubSubAndReconnect) {
  auto server = Server();
  ASSERT_NE(server, nullptr);
  StateLog log;
  RedisClient c(Options(server->Url(), Trusting(), &log));
  ASSERT_TRUE(c.WaitUntilUp(absl::Seconds(5))) << c.last_error();
  auto r = Call(c, {"SET", "k", std::string("v\0\r\n", 4)}, kCommandTimeout);
  ASSERT_TRUE(r.ok()) << r.status();
  r = Call(c, {"GET", "k"}, kCommandTimeout);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->str, std::string("v\0\r\n", 4));
  // A large value crosses many TLS records both ways.
  const std::string big(3 << 20, 'x');
  ASSERT_TRUE(Call(c, {"SET", "big", big}, kCommandTimeout).ok());
  r = Call(c, {"GET", "big"}, kCommandTimeout);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->str.size(), big.size());
  // A pipeline of many commands.
  absl::Mutex mu;
  int ok = 0;
  absl::Notification all;
  constexpr int kN = 2000;
  for (int i = 0; i < kN; ++i) {
    c.Command({"INCR", "n"}, absl::Seconds(5), [&](absl::StatusOr<RedisReply> r) {
      absl::MutexLock lock(&mu);
      if (r.ok() && !r->is_error()) ++ok;
      if (ok == kN) all.Notify();
    });
  }
  ASSERT_TRUE(all.WaitForNotificationWithTimeout(absl::Seconds(10)));

  // Pub/sub on the second TLS connection.
  absl::Mutex sub_mu;
  std::vector<std::string> messages;
  int subscribed = 0;
  c.Subscribe(
      "ch",
      [&](const std::string&, const std::string& m) {
        absl::MutexLock lock(&sub_mu);
        messages.push_back(m);
      },
      [&](const std::string&) {
        absl::MutexLock lock(&sub_mu);
        ++subscribed;
      });
  auto wait_subscribed = [&](int n) {
    absl::MutexLock lock(&sub_mu);
    auto cond = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(sub_mu) { return subscribed >= n; };
    return sub_mu.AwaitWithTimeout(absl::Condition(&cond), absl::Seconds(5));
  };
  ASSERT_TRUE(wait_subscribed(1));
  ASSERT_TRUE(server->Command({"PUBLISH", "ch", "hello"}).ok());
  {
    absl::MutexLock lock(&sub_mu);
    auto cond = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(sub_mu) { return !messages.empty(); };
    ASSERT_TRUE(sub_mu.AwaitWithTimeout(absl::Condition(&cond), absl::Seconds(5)));
    EXPECT_EQ(messages[0], "hello");
  }

  // Redis lost and back: down, then up and subscribed again.
  server->Kill();
  ASSERT_TRUE(log.WaitFor(false, absl::Seconds(5)));
  EXPECT_EQ(Call(c, {"PING"}, kCommandTimeout).status().code(), absl::StatusCode::kUnavailable);
  ASSERT_TRUE(server->Restart().ok());
  ASSERT_TRUE(log.WaitFor(true, absl::Seconds(5))) << c.last_error();
  ASSERT_TRUE(wait_subscribed(2));
  r = Call(c, {"PING"}, kCommandTimeout);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->str, "PONG");
  EXPECT_GE(c.stats().connects, 2);
}

TEST_F(RedisTlsTest, HostNameIsCheckedAndSentAsSni) {
  auto server = Server();
  ASSERT_NE(server, nullptr);
  RedisClient c(Options(absl::StrCat("rediss://localhost:", server->port()), Trusting(), nullptr));
  ASSERT_TRUE(c.WaitUntilUp(absl::Seconds(5))) << c.last_error();
  EXPECT_TRUE(Call(c, {"PING"}, kCommandTimeout).ok());
  // --redis_tls_server_name: the address differs from the certificate's name.
  RedisTlsOptions t = Trusting();
  t.server_name = "localhost";
  StateLog log;
  RedisClient by_name(Options(absl::StrCat("rediss://127.0.0.1:", server->port()), t, &log));
  ASSERT_TRUE(by_name.WaitUntilUp(absl::Seconds(5))) << by_name.last_error();
}

TEST_F(RedisTlsTest, WrongCaFallsBackWithTheReason) {
  auto server = Server();
  ASSERT_NE(server, nullptr);
  RedisTlsOptions t;
  t.ca_file = pki_->other_ca_pem;
  ExpectDown(*server, t, "TLS handshake failed: certificate verify failed");
  // The system's CAs do not know the test CA either.
  ExpectDown(*server, RedisTlsOptions{}, "certificate verify failed");
}

TEST_F(RedisTlsTest, WrongServerNameFallsBackWithTheReason) {
  auto server = Server();
  ASSERT_NE(server, nullptr);
  RedisTlsOptions t = Trusting();
  t.server_name = "redis.example.com";
  ExpectDown(*server, t, "hostname mismatch");
  // An IP address is matched as an IP: the certificate has 127.0.0.1 only.
  t.server_name = "127.0.0.2";
  ExpectDown(*server, t, "IP address mismatch");
}

TEST_F(RedisTlsTest, ExpiredCertificateFallsBackWithTheReason) {
  auto server = Server(false, pki_->expired_server_pem);
  ASSERT_NE(server, nullptr);
  ExpectDown(*server, Trusting(), "certificate has expired");
}

TEST_F(RedisTlsTest, TlsToAPlainPortFailsWithTheReason) {
  auto plain = RedisServer::Start();
  ASSERT_TRUE(plain.ok()) << plain.status();
  ExpectDown(**plain, Trusting(), "TLS");
}

// A peer that takes the connection and never answers the ClientHello: the
// attempt ends at connect_timeout, saying it was the TLS handshake.
TEST_F(RedisTlsTest, SilentPeerTimesOutInTheHandshake) {
  ::videotask::testing::SilentListener silent;
  StateLog log;
  RedisClientOptions o = Options(absl::StrCat("rediss://", silent.target()), Trusting(), &log);
  o.connect_timeout = absl::Milliseconds(300);
  const absl::Time start = absl::Now();
  RedisClient c(std::move(o));
  ASSERT_TRUE(log.WaitFor(false, absl::Seconds(5)));
  EXPECT_LT(absl::Now() - start, absl::Seconds(2));
  EXPECT_TRUE(absl::StrContains(c.last_error().message(), "TLS handshake with")) << c.last_error();
  EXPECT_TRUE(absl::StrContains(c.last_error().message(), "timed out")) << c.last_error();
}

// A TLS Redis that stops answering (SIGSTOP): the command times out, the
// client is down within about the stall timeout, and up again after.
TEST_F(RedisTlsTest, PausedServerIsAFaultAndRecovers) {
  auto server = Server();
  ASSERT_NE(server, nullptr);
  StateLog log;
  RedisClient c(Options(server->Url(), Trusting(), &log));
  ASSERT_TRUE(c.WaitUntilUp(absl::Seconds(5))) << c.last_error();
  server->Pause();
  const absl::Time start = absl::Now();
  auto r = Call(c, {"PING"}, kCommandTimeout);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDeadlineExceeded) << r.status();
  EXPECT_LT(absl::Now() - start, absl::Seconds(2));
  ASSERT_TRUE(log.WaitFor(false, absl::Seconds(3)));
  server->Resume();
  ASSERT_TRUE(log.WaitFor(true, absl::Seconds(10))) << c.last_error();
  EXPECT_TRUE(Call(c, {"PING"}, kCommandTimeout).ok());
  EXPECT_GE(c.stats().faults, 1);
}

TEST_F(RedisTlsTest, ClientCertificateRequiredByTheServer) {
  auto server = Server(/*auth_clients=*/true);
  ASSERT_NE(server, nullptr);
  // No client certificate: the server refuses it after the handshake.
  ExpectDown(*server, Trusting(), "certificate required");
  // One from a CA the server does not trust.
  RedisTlsOptions t = Trusting();
  t.cert_file = pki_->other_client_pem;
  t.key_file = pki_->other_client_key;
  ExpectDown(*server, t, "unknown ca");
  // The right one.
  t.cert_file = pki_->client_pem;
  t.key_file = pki_->client_key;
  RedisClient c(Options(server->Url(), t, nullptr));
  ASSERT_TRUE(c.WaitUntilUp(absl::Seconds(5))) << c.last_error();
  EXPECT_TRUE(Call(c, {"PING"}, kCommandTimeout).ok());
}

void CopyFile(const std::string& from, const std::string& to) {
  // Written beside and renamed, as a Kubernetes Secret update swaps files.
  const std::string tmp = to + ".tmp";
  {
    std::ifstream in(from, std::ios::binary);
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << in.rdbuf();
  }
  ASSERT_EQ(rename(tmp.c_str(), to.c_str()), 0);
}

TEST_F(RedisTlsTest, CaFileRotationWithoutRestart) {
  auto server = Server();
  ASSERT_NE(server, nullptr);
  const std::string ca = absl::StrCat(pki_->dir, "/rotating-ca.pem");
  CopyFile(pki_->other_ca_pem, ca);
  RedisTlsOptions t;
  t.ca_file = ca;
  auto ctx = RedisTlsContext::Create(t);
  ASSERT_TRUE(ctx.ok()) << ctx.status();
  std::shared_ptr<RedisTlsContext> shared = std::move(*ctx);
  RedisClientOptions o = Options(server->Url(), Trusting(), nullptr);
  o.tls = shared;
  StateLog log;
  o.on_state = log.Callback();
  RedisClient c(std::move(o));
  ASSERT_TRUE(log.WaitFor(false, absl::Seconds(5)));
  EXPECT_TRUE(absl::StrContains(c.last_error().message(), "certificate verify failed"));
  // The Secret is updated with the right CA: up without a restart.
  CopyFile(pki_->ca_pem, ca);
  ASSERT_TRUE(log.WaitFor(true, absl::Seconds(5))) << c.last_error();
  EXPECT_EQ(shared->loads(), 2);
  // A rotation to a broken file keeps the last good CA.
  {
    std::ofstream out(ca + ".tmp", std::ios::trunc);
    out << "-----BEGIN CERTIFICATE-----\ngarbage\n";
  }
  ASSERT_EQ(rename((ca + ".tmp").c_str(), ca.c_str()), 0);
  server->Kill();
  ASSERT_TRUE(log.WaitFor(false, absl::Seconds(5)));
  ASSERT_TRUE(server->Restart().ok());
  ASSERT_TRUE(log.WaitFor(true, absl::Seconds(5))) << c.last_error();
  EXPECT_TRUE(absl::StrContains(shared->last_error().message(), ca)) << shared->last_error();
}

TEST_F(RedisTlsTest, BadFilesAreNamedAtStart) {
  RedisTlsOptions t;
  t.ca_file = "/nonexistent/ca.pem";
  auto ctx = RedisTlsContext::Create(t);
  ASSERT_FALSE(ctx.ok());
  EXPECT_TRUE(absl::StrContains(ctx.status().message(), "/nonexistent/ca.pem")) << ctx.status();
  t.ca_file = pki_->ca_key;  // not a certificate
  ctx = RedisTlsContext::Create(t);
  ASSERT_FALSE(ctx.ok());
  EXPECT_TRUE(absl::StrContains(ctx.status().message(), "no PEM certificate")) << ctx.status();
  t = Trusting();
  t.cert_file = pki_->client_pem;
  t.key_file = pki_->server_key;  // the wrong key
  ctx = RedisTlsContext::Create(t);
  ASSERT_FALSE(ctx.ok());
  EXPECT_TRUE(absl::StrContains(ctx.status().message(), "does not match")) << ctx.status();
  EXPECT_FALSE(absl::StrContains(ctx.status().message(), "PRIVATE KEY"));
  t.key_file = "";
  EXPECT_FALSE(RedisTlsContext::Create(t).ok());
}

TEST_F(RedisTlsTest, AclUserOverTlsAndPlain) {
  auto server = Server(false, "", "admin-pass");
  ASSERT_NE(server, nullptr);
  ASSERT_TRUE(server->Command({"ACL", "SETUSER", "videotask", "on", std::string(">") + kSecret,
                               "~videotask:*", "&*", "+@all"})
                  .ok());
  StateLog log;
  RedisClient c(Options(absl::StrCat("rediss://videotask:", kSecret, "@127.0.0.1:", server->port()),
                        Trusting(), &log));
  ASSERT_TRUE(c.WaitUntilUp(absl::Seconds(5))) << c.last_error();
  auto r = Call(c, {"ACL", "WHOAMI"}, kCommandTimeout);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->str, "videotask");
  r = Call(c, {"SET", "videotask:k", "1"}, kCommandTimeout);
  ASSERT_TRUE(r.ok());
  EXPECT_FALSE(r->is_error()) << r->str;
  // A wrong password for the user: down with Redis' reason, not the password.
  StateLog bad_log;
  RedisClient bad(Options(
      absl::StrCat("rediss://videotask:wrong-", kSecret, "@127.0.0.1:", server->port()),
      Trusting(), &bad_log));
  ASSERT_TRUE(bad_log.WaitFor(false, absl::Seconds(5)));
  const std::string reason(bad.last_error().message());
  EXPECT_TRUE(absl::StrContains(reason, "WRONGPASS")) << reason;
  EXPECT_FALSE(absl::StrContains(reason, kSecret)) << reason;

  // The same ACL user over plain TCP.
  auto plain = RedisServer::Start();
  ASSERT_TRUE(plain.ok()) << plain.status();
  ASSERT_TRUE((*plain)->Command({"ACL", "SETUSER", "videotask", "on", std::string(">") + kSecret,
                                 "~*", "&*", "+@all"})
                  .ok());
  RedisClientOptions po;
  po.url = *RedisUrl::Parse(
      absl::StrCat("redis://videotask:", kSecret, "@127.0.0.1:", (*plain)->port()));
  RedisClient pc(std::move(po));
  ASSERT_TRUE(pc.WaitUntilUp(absl::Seconds(5))) << pc.last_error();
  r = Call(pc, {"ACL", "WHOAMI"}, kCommandTimeout);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->str, "videotask");
}

}  // namespace
}  // namespace videotask::fleet
