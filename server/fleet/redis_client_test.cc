#include "server/fleet/redis_client.h"

#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "server/fleet/redis_client_testing.h"
#include "server/fleet/redis_url.h"
#include "tests/testing/redis_server.h"

namespace videotask::fleet {
namespace {

using ::videotask::testing::RedisServer;

RedisClientOptions Options(const std::string& url, StateLog* log = nullptr) {
  RedisClientOptions o;
  absl::StatusOr<RedisUrl> u = RedisUrl::Parse(url);
  EXPECT_TRUE(u.ok()) << u.status();
  if (u.ok()) o.url = *u;
  o.min_backoff = absl::Milliseconds(50);
  o.max_backoff = absl::Milliseconds(500);
  if (log != nullptr) o.on_state = log->Callback();
  return o;
}

TEST(RedisClientTest, CommandsAndReplyTypes) {
  auto server = RedisServer::Start();
  ASSERT_TRUE(server.ok()) << server.status();
  RedisClientOptions o = Options((*server)->Url());
  o.error_reply_is_fault = false;  // this test wants the WRONGTYPE reply itself
  RedisClient c(o);
  ASSERT_TRUE(c.WaitUntilUp(absl::Seconds(5)));

  const std::string binary("a\0b\r\n", 5);
  auto r = Call(c, {"SET", "k", binary});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->type, RedisReply::Type::kStatus);
  EXPECT_EQ(r->str, "OK");
  r = Call(c, {"GET", "k"});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->type, RedisReply::Type::kString);
  EXPECT_EQ(r->str, binary);
  r = Call(c, {"GET", "missing"});
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->is_nil());
  r = Call(c, {"INCRBY", "n", "41"});
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->type, RedisReply::Type::kInteger);
  EXPECT_EQ(r->integer, 41);
  r = Call(c, {"RPUSH", "l", "x", "y"});
  r = Call(c, {"LRANGE", "l", "0", "-1"});
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->type, RedisReply::Type::kArray);
  ASSERT_EQ(r->elements.size(), 2u);
  EXPECT_EQ(r->elements[1].str, "y");
  r = Call(c, {"INCR", "l"});  // WRONGTYPE: an OK status carrying the error reply
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->is_error());
  EXPECT_TRUE(absl::StartsWith(r->str, "WRONGTYPE")) << r->str;
  r = Call(c, {});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  r = Call(c, {"PING"}, absl::ZeroDuration());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDeadlineExceeded);
}

TEST(RedisClientTest, DoneRunsOnceOnTheClientThreadNeverInline) {
  auto server = RedisServer::Start();
  ASSERT_TRUE(server.ok()) << server.status();
  RedisClient c(Options((*server)->Url()));
  ASSERT_TRUE(c.WaitUntilUp(absl::Seconds(5)));
  absl::Mutex caller_mu;
  std::atomic<int> calls{0};
  std::atomic<bool> inline_call{false};
  const std::thread::id me = std::this_thread::get_id();
  constexpr int kN = 100;
  {
    absl::MutexLock lock(&caller_mu);  // done would deadlock if it ran inline and took it
    for (int i = 0; i < kN; ++i) {
      c.Command({"PING"}, [&](absl::StatusOr<RedisReply> r) {
        if (std::this_thread::get_id() == me) inline_call = true;
        absl::MutexLock l(&caller_mu);
        ++calls;
      });
    }
    EXPECT_EQ(calls.load(), 0);
  }
  const absl::Time end = absl::Now() + absl::Seconds(5);
  while (calls.load() < kN && absl::Now() < end) absl::SleepFor(absl::Milliseconds(5));
  absl::SleepFor(absl::Milliseconds(50));
  EXPECT_EQ(calls.load(), kN);
  EXPECT_FALSE(inline_call.load());
}

// A command past its timeout is a fault (issue 16 item 2): the client goes
// down at once (not after stall_timeout), says so once, drops the
// connection (so the late PONG can never answer a later command) and comes
// back by itself when Redis answers again.
TEST(RedisClientTest, CommandTimeoutIsAFault) {
  auto server = RedisServer::Start();
  ASSERT_TRUE(server.ok()) << server.status();
  StateLog log;
  std::atomic<int> timeouts{0};
  RedisClientOptions o = Options((*server)->Url(), &log);
  o.on_fault = [&](RedisClientOptions::Fault kind, const absl::Status&) {
    if (kind == RedisClientOptions::Fault::kTimeout) ++timeouts;
  };
  o.stall_timeout = absl::Seconds(5);  // not what ends the command
  RedisClient c(o);
  ASSERT_TRUE(c.WaitUntilUp(absl::Seconds(5)));
  // Redis holds every command for 2 s, from when this returns (no race with
  // the PING below, as a DEBUG SLEEP sent from another thread had). The
  // PING's 250 ms timeout ends it; waiting for the reply would take 2 s.
  ASSERT_TRUE((*server)->Command({"CLIENT", "PAUSE", "2000", "ALL"}).ok());
  const absl::Time start = absl::Now();
  auto r = Call(c, {"PING"});
  const absl::Duration took = absl::Now() - start;
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDeadlineExceeded) << r.status();
  EXPECT_GE(took, absl::Milliseconds(240));
  EXPECT_LT(took, absl::Milliseconds(1250));
  ASSERT_TRUE(log.WaitFor(false, absl::Seconds(1)));
  EXPECT_FALSE(c.up());
  EXPECT_EQ(Call(c, {"PING"}).status().code(), absl::StatusCode::kUnavailable) << "down: fail fast";
  ASSERT_TRUE(c.WaitUntilUp(absl::Seconds(10)));
  r = Call(c, {"ECHO", "after"});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->str, "after");
  EXPECT_EQ(timeouts.load(), 1);
  EXPECT_EQ(c.stats().faults, 1);
  EXPECT_EQ(log.size(), 3u);  // up, down (once), up
}

// A Redis that answers but refuses writes (a primary demoted to a replica by
// a failover: READONLY; issue 16 item 2): the error reply is a fault, the
// client reconnects, and the handshake's probe write keeps it down, quietly
// (one "down"), however many commands come, until Redis takes writes again.
TEST(RedisClientTest, ReadOnlyReplicaIsAFaultUntilItTakesWritesAgain) {
  auto server = RedisServer::Start();
  ASSERT_TRUE(server.ok()) << server.status();
  StateLog log;
  RedisClientOptions o = Options((*server)->Url(), &log);
  o.probe = {"SET", "vt:probe", "1", "PX", "60000"};
  o.max_fault_backoff = absl::Milliseconds(200);
  RedisClient c(o);
  ASSERT_TRUE(c.WaitUntilUp(absl::Seconds(5)));
  ASSERT_TRUE((*server)->Command({"REPLICAOF", "127.0.0.1", "1"}).ok());
  auto r = Call(c, {"SET", "k", "v"});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->is_error());
  EXPECT_TRUE(absl::StartsWith(r->str, "READONLY")) << r->str;
  ASSERT_TRUE(log.WaitFor(false, absl::Seconds(1)));
  {
    absl::MutexLock lock(&log.mu);
    EXPECT_TRUE(absl::StrContains(log.events.back().second.message(), "READONLY"))
        << log.events.back().second;
  }
  // Several reconnect attempts later it is still down, and said so once.
  const int64_t connects = c.stats().connects;
  for (int i = 0; i < 20; ++i) {
    EXPECT_EQ(Call(c, {"SET", "k", "v"}).status().code(), absl::StatusCode::kUnavailable);
    absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_FALSE(c.up());
  EXPECT_EQ(c.stats().connects, connects);
  EXPECT_EQ(c.stats().faults, 1);
  EXPECT_EQ(log.size(), 2u);  // up, down
  ASSERT_TRUE((*server)->Command({"REPLICAOF", "NO", "ONE"}).ok());
  ASSERT_TRUE(c.WaitUntilUp(absl::Seconds(5)));
  r = Call(c, {"SET", "k", "v"});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->str, "OK");
}

// Out of memory under maxmemory noeviction: the same.
TEST(RedisClientTest, OutOfMemoryIsAFault) {
  auto server = RedisServer::Start();
  ASSERT_TRUE(server.ok()) << server.status();
  StateLog log;
  RedisClientOptions o = Options((*server)->Url(), &log);
  o.probe = {"SET", "vt:probe", "1", "PX", "60000"};
  RedisClient c(o);
  ASSERT_TRUE(c.WaitUntilUp(absl::Seconds(5)));
  ASSERT_TRUE((*server)->Command({"CONFIG", "SET", "maxmemory-policy", "noeviction"}).ok());
  ASSERT_TRUE((*server)->Command({"CONFIG", "SET", "maxmemory", "1"}).ok());
  auto r = Call(c, {"SET", "k", "v"});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(absl::StartsWith(r->str, "OOM")) << r->str;
  ASSERT_TRUE(log.WaitFor(false, absl::Seconds(1)));
  absl::SleepFor(absl::Milliseconds(300));
  EXPECT_FALSE(c.up()) << "the probe write keeps it down";
  ASSERT_TRUE((*server)->Command({"CONFIG", "SET", "maxmemory", "0"}).ok());
  ASSERT_TRUE(c.WaitUntilUp(absl::Seconds(5)));
}

// The subscriber connection has its own life check: a Redis that stops
// answering it (CLIENT PAUSE; no command outstanding on the command
// connection, so its stall check cannot see it) is dropped and subscribed
// again, and on_subscribed runs again.
TEST(RedisClientTest, SubscriberKeepaliveReconnectsAStalledSubscriber) {
  auto server = RedisServer::Start();
  ASSERT_TRUE(server.ok()) << server.status();
  RedisClientOptions o = Options((*server)->Url());
  o.keepalive_interval = absl::Milliseconds(100);
  o.stall_timeout = absl::Milliseconds(300);
  RedisClient c(o);
  ASSERT_TRUE(c.WaitUntilUp(absl::Seconds(5)));
  std::atomic<int> subscribed{0};
  c.Subscribe("vt:{x}:states", [](const std::string&, const std::string&) {},
              [&](const std::string&) { ++subscribed; });
  const absl::Time end = absl::Now() + absl::Seconds(5);
  while (subscribed.load() < 1 && absl::Now() < end) absl::SleepFor(absl::Milliseconds(5));
  ASSERT_EQ(subscribed.load(), 1);
  absl::SleepFor(absl::Milliseconds(400));  // several keepalives, answered
  EXPECT_EQ(c.stats().subscribes, 1);
  ASSERT_TRUE((*server)->Command({"CLIENT", "PAUSE", "800", "ALL"}).ok());
  while (subscribed.load() < 2 && absl::Now() < end + absl::Seconds(3)) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  EXPECT_EQ(subscribed.load(), 2);
  EXPECT_EQ(c.stats().subscribes, 2);
}

TEST(RedisClientTest, PausedServerGoesDownWithinASecondThenComesBack) {
  auto server = RedisServer::Start();
  ASSERT_TRUE(server.ok()) << server.status();
  StateLog log;
  RedisClient c(Options((*server)->Url(), &log));
  ASSERT_TRUE(c.WaitUntilUp(absl::Seconds(5)));
  (*server)->Pause();
  const absl::Time paused = absl::Now();
  EXPECT_EQ(Call(c, {"PING"}).status().code(), absl::StatusCode::kDeadlineExceeded);
  ASSERT_TRUE(log.WaitFor(false, absl::Seconds(3)));
  EXPECT_LT(absl::Now() - paused, absl::Milliseconds(1600));
  EXPECT_FALSE(c.up());
  // Down: fail fast (waiting would take the command's 5 s timeout).
  const absl::Time start = absl::Now();
  auto r = Call(c, {"PING"}, absl::Seconds(5));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable) << r.status();
  EXPECT_LT(absl::Now() - start, absl::Milliseconds(2500));
  (*server)->Resume();
  ASSERT_TRUE(c.WaitUntilUp(absl::Seconds(5)));
  EXPECT_TRUE(Call(c, {"PING"}).ok());
}

TEST(RedisClientTest, KillNineMidRunThenRestartRecoversByItself) {
  auto server = RedisServer::Start();
  ASSERT_TRUE(server.ok()) << server.status();
  StateLog log;
  RedisClient c(Options((*server)->Url(), &log));
  ASSERT_TRUE(c.WaitUntilUp(absl::Seconds(5)));

  std::atomic<bool> stop{false};
  std::atomic<int> issued{0}, completed{0}, ok{0}, unavailable{0}, other{0};
  std::thread load([&] {
    while (!stop.load()) {
      for (int i = 0; i < 20; ++i) {
        ++issued;
        c.Command({"INCR", "n"}, [&](absl::StatusOr<RedisReply> r) {
          if (r.ok()) {
            ++ok;
          } else if (r.status().code() == absl::StatusCode::kUnavailable) {
            ++unavailable;
          } else {
            ++other;
          }
          ++completed;
        });
      }
      absl::SleepFor(absl::Milliseconds(5));
    }
  });
  absl::SleepFor(absl::Milliseconds(300));
  (*server)->Kill();
  ASSERT_TRUE(log.WaitFor(false, absl::Seconds(2)));
  absl::SleepFor(absl::Milliseconds(300));
  ASSERT_TRUE((*server)->Restart().ok());
  ASSERT_TRUE(c.WaitUntilUp(absl::Seconds(5)));
  absl::SleepFor(absl::Milliseconds(300));
  stop = true;
  load.join();
  const absl::Time end = absl::Now() + absl::Seconds(5);
  while (completed.load() < issued.load() && absl::Now() < end) absl::SleepFor(absl::Milliseconds(5));
  EXPECT_EQ(completed.load(), issued.load());
  EXPECT_GT(ok.load(), 0);
  EXPECT_GT(unavailable.load(), 0);
  // The restarted server (empty) has counted the commands since it came back.
  auto n = Call(c, {"GET", "n"});
  ASSERT_TRUE(n.ok());
  EXPECT_FALSE(n->is_nil());
  EXPECT_GE(c.stats().connects, 2);
}

TEST(RedisClientTest, WrongPasswordStaysDownAndSaysSoOnce) {
  RedisServer::Options so;
  so.password = "right-password";
  auto server = RedisServer::Start(so);
  ASSERT_TRUE(server.ok()) << server.status();
  StateLog log;
  const std::string bad = "Bad-Secret-Value";
  RedisClient c(Options(absl::StrCat("redis://:", bad, "@127.0.0.1:", (*server)->port()), &log));
  ASSERT_TRUE(log.WaitFor(false, absl::Seconds(3)));
  absl::SleepFor(absl::Milliseconds(1200));  // several attempts
  EXPECT_FALSE(c.up());
  EXPECT_EQ(log.size(), 1u);
  {
    absl::MutexLock lock(&log.mu);
    const std::string msg(log.events[0].second.message());
    EXPECT_TRUE(absl::StrContains(msg, "WRONGPASS")) << msg;
    EXPECT_FALSE(absl::StrContains(msg, bad)) << msg;
  }
  EXPECT_EQ(Call(c, {"PING"}).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_FALSE(absl::StrContains(c.last_error().message(), bad));
}

TEST(RedisClientTest, PasswordProviderIsAskedAtEachConnect) {
  RedisServer::Options so;
  so.password = "first";
  auto server = RedisServer::Start(so);
  ASSERT_TRUE(server.ok()) << server.status();
  absl::Mutex mu;
  std::string current = "first";
  RedisClientOptions o = Options(absl::StrCat("redis://127.0.0.1:", (*server)->port()));
  o.password = [&] {
    absl::MutexLock lock(&mu);
    return current;
  };
  RedisClient c(o);
  ASSERT_TRUE(c.WaitUntilUp(absl::Seconds(5)));
  // Rotate: the server's password changes, then the provider's.
  ASSERT_TRUE((*server)->Command({"CONFIG", "SET", "requirepass", "second"}).ok());
  {
    absl::MutexLock lock(&mu);
    current = "second";
  }
  auto killed = Call(c, {"CLIENT", "KILL", "TYPE", "normal", "SKIPME", "no"});
  ASSERT_TRUE(killed.ok()) << killed.status();
  EXPECT_EQ(killed->type, RedisReply::Type::kInteger) << killed->str;
  absl::SleepFor(absl::Milliseconds(100));
  ASSERT_TRUE(c.WaitUntilUp(absl::Seconds(5)));
  auto r = Call(c, {"PING"});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->str, "PONG");
  EXPECT_GE(c.stats().connects, 2);
}

TEST(RedisClientTest, UnreachableAtStartThenServerAppears) {
  // Reserve a port by starting and stopping a server on it.
  auto probe = RedisServer::Start();
  ASSERT_TRUE(probe.ok()) << probe.status();
  const int port = (*probe)->port();
  (*probe)->Kill();
  StateLog log;
  RedisClient c(Options(absl::StrCat("redis://127.0.0.1:", port), &log));
  ASSERT_TRUE(log.WaitFor(false, absl::Seconds(3)));
  EXPECT_EQ(log.size(), 1u);
  // Fails fast (waiting would take the command's 5 s timeout).
  const absl::Time start = absl::Now();
  EXPECT_EQ(Call(c, {"PING"}, absl::Seconds(5)).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_LT(absl::Now() - start, absl::Milliseconds(2500));
  absl::SleepFor(absl::Milliseconds(500));
  EXPECT_EQ(log.size(), 1u);  // said once, not per attempt
  ASSERT_TRUE((*probe)->Restart().ok());
  ASSERT_TRUE(c.WaitUntilUp(absl::Seconds(5)));
  EXPECT_TRUE(Call(c, {"PING"}).ok());
}

TEST(RedisClientTest, BlackholedAddressTimesOutConnecting) {
  // 192.0.2.0/24 (TEST-NET-1) is never routed; the connect either hangs (the
  // connect timeout ends it) or fails at once (no route). Either way: down.
  StateLog log;
  RedisClientOptions o = Options("redis://192.0.2.1:6379", &log);
  o.connect_timeout = absl::Milliseconds(300);
  RedisClient c(o);
  ASSERT_TRUE(log.WaitFor(false, absl::Seconds(3)));
  EXPECT_EQ(Call(c, {"PING"}).status().code(), absl::StatusCode::kUnavailable);
}

TEST(RedisClientTest, TenThousandPipelinedCommands) {
  auto server = RedisServer::Start();
  ASSERT_TRUE(server.ok()) << server.status();
  RedisClient c(Options((*server)->Url()));
  ASSERT_TRUE(c.WaitUntilUp(absl::Seconds(5)));
  constexpr int kN = 10000;
  std::atomic<int> ok{0}, done{0};
  std::atomic<int64_t> last{0};
  std::atomic<bool> in_order{true};
  // All in flight at once, answered in order. How fast is the benchmark's
  // concern, not this test's: the bounds only catch a hang (and leave room
  // for sanitizers on a loaded machine).
  const absl::Time start = absl::Now();
  for (int i = 0; i < kN; ++i) {
    c.Command({"INCR", "counter"}, absl::Seconds(30), [&](absl::StatusOr<RedisReply> r) {
      if (r.ok() && r->type == RedisReply::Type::kInteger) {
        ++ok;
        if (r->integer != last.load() + 1) in_order = false;
        last = r->integer;
      }
      ++done;
    });
  }
  const absl::Time end = absl::Now() + absl::Seconds(60);
  while (done.load() < kN && absl::Now() < end) absl::SleepFor(absl::Milliseconds(2));
  const absl::Duration took = absl::Now() - start;
  EXPECT_EQ(done.load(), kN);
  EXPECT_EQ(ok.load(), kN);
  EXPECT_TRUE(in_order.load());
  auto r = Call(c, {"GET", "counter"});
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->str, absl::StrCat(kN));
  std::cerr << kN << " pipelined INCRs in " << took << "\n";
}

TEST(RedisClientTest, SelectsTheDatabase) {
  auto server = RedisServer::Start();
  ASSERT_TRUE(server.ok()) << server.status();
  RedisClient db3(Options((*server)->Url(3)));
  RedisClient db0(Options((*server)->Url(0)));
  ASSERT_TRUE(db3.WaitUntilUp(absl::Seconds(5)));
  ASSERT_TRUE(db0.WaitUntilUp(absl::Seconds(5)));
  ASSERT_TRUE(Call(db3, {"SET", "where", "three"}).ok());
  auto r = Call(db0, {"GET", "where"});
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->is_nil());
  r = Call(db3, {"GET", "where"});
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->str, "three");
  // A database the server does not have: down, with Redis' reason.
  StateLog log;
  RedisClient bad(Options((*server)->Url(999), &log));
  ASSERT_TRUE(log.WaitFor(false, absl::Seconds(3)));
  EXPECT_TRUE(absl::StrContains(bad.last_error().message(), "DB index")) << bad.last_error();
}

TEST(RedisClientTest, UnixSocketAndHostName) {
  // TEST_TMPDIR is too long for a socket path (108 bytes): a short directory.
  std::string dir = absl::StrCat(P_tmpdir, "/vtredisXXXXXX");
  ASSERT_NE(mkdtemp(dir.data()), nullptr);
  RedisServer::Options so;
  so.unix_socket = absl::StrCat(dir, "/redis.sock");
  absl::Cleanup remove_dir = [&] {
    unlink(so.unix_socket.c_str());
    rmdir(dir.c_str());
  };
  auto server = RedisServer::Start(so);
  ASSERT_TRUE(server.ok()) << server.status();
  RedisClient unix_client(Options(absl::StrCat("unix:", so.unix_socket)));
  ASSERT_TRUE(unix_client.WaitUntilUp(absl::Seconds(5)));
  EXPECT_TRUE(Call(unix_client, {"PING"}).ok());
  RedisClient named(Options(absl::StrCat("redis://localhost:", (*server)->port())));
  ASSERT_TRUE(named.WaitUntilUp(absl::Seconds(5)));
  EXPECT_TRUE(Call(named, {"PING"}).ok());
  StateLog log;
  RedisClient nowhere(Options("redis://no-such-host.invalid:6379", &log));
  ASSERT_TRUE(log.WaitFor(false, absl::Seconds(12)));
}

TEST(RedisClientTest, PubSubResubscribesAfterRestart) {
  auto server = RedisServer::Start();
  ASSERT_TRUE(server.ok()) << server.status();
  RedisClient c(Options((*server)->Url()));
  ASSERT_TRUE(c.WaitUntilUp(absl::Seconds(5)));
  absl::Mutex mu;
  std::vector<std::string> got;
  int subscribed = 0;
  c.Subscribe(
      "vt:{x}:states",
      [&](const std::string& channel, const std::string& message) {
        absl::MutexLock lock(&mu);
        got.push_back(absl::StrCat(channel, "=", message));
      },
      [&](const std::string&) {
        absl::MutexLock lock(&mu);
        ++subscribed;
      });
  auto wait_subscribed = [&](int n) {
    absl::MutexLock lock(&mu);
    auto cond = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return subscribed >= n; };
    return mu.AwaitWithTimeout(absl::Condition(&cond), absl::Seconds(5));
  };
  auto wait_got = [&](size_t n) {
    absl::MutexLock lock(&mu);
    auto cond = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return got.size() >= n; };
    return mu.AwaitWithTimeout(absl::Condition(&cond), absl::Seconds(5));
  };
  ASSERT_TRUE(wait_subscribed(1));
  auto r = Call(c, {"PUBLISH", "vt:{x}:states", "one"});
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->integer, 1);  // one subscriber: ours
  ASSERT_TRUE(wait_got(1));
  (*server)->Kill();
  ASSERT_TRUE((*server)->Restart().ok());
  ASSERT_TRUE(wait_subscribed(2));
  ASSERT_TRUE(c.WaitUntilUp(absl::Seconds(5)));
  r = Call(c, {"PUBLISH", "vt:{x}:states", std::string("two\0", 4)});
  ASSERT_TRUE(r.ok());
  ASSERT_TRUE(wait_got(2));
  absl::MutexLock lock(&mu);
  EXPECT_EQ(got[0], "vt:{x}:states=one");
  EXPECT_EQ(got[1], std::string("vt:{x}:states=two\0", 18));
}

TEST(RedisClientTest, DestroyingWithCommandsInFlightCancelsEachOnce) {
  auto server = RedisServer::Start();
  ASSERT_TRUE(server.ok()) << server.status();
  std::atomic<int> done{0}, cancelled{0};
  {
    RedisClient c(Options((*server)->Url()));
    ASSERT_TRUE(c.WaitUntilUp(absl::Seconds(5)));
    (*server)->Pause();
    for (int i = 0; i < 500; ++i) {
      c.Command({"PING"}, absl::Seconds(30), [&](absl::StatusOr<RedisReply> r) {
        if (r.status().code() == absl::StatusCode::kCancelled) ++cancelled;
        ++done;
        // A command from a callback during destruction is cancelled too.
        if (done.load() == 1) {
          c.Command({"PING"}, [&](absl::StatusOr<RedisReply> r2) {
            if (r2.status().code() == absl::StatusCode::kCancelled) ++cancelled;
            ++done;
          });
        }
      });
    }
    absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_EQ(done.load(), 501);
  EXPECT_EQ(cancelled.load(), 501);
  (*server)->Resume();
}

}  // namespace
}  // namespace videotask::fleet
