// RedisCreateKeyStore and RedisSpendGuard against a real redis-server: one
// claimant among several sidecars' stores, signed records, a claimer that
// dies, Redis down, and the fleet-wide spend guard.
#include "server/fleet/redis_create_key_store.h"

#include <atomic>
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
#include "gtest/gtest.h"
#include "server/base/clock.h"
#include "server/base/metrics.h"
#include "server/fleet/fleet_keys.h"
#include "server/fleet/redis_client.h"
#include "server/fleet/redis_spend_guard.h"
#include "tests/testing/hold_proxy.h"
#include "tests/testing/redis_server.h"

namespace videotask::fleet {
namespace {

using ::videotask::testing::HoldProxy;
using ::videotask::testing::RedisServer;
using State = CreateRecord::State;

CreateRecord Created(const std::string& id) {
  CreateRecord r;
  r.state = State::kCreated;
  r.task.set_id(id);
  r.task.set_status(videotask::v1::VIDEO_TASK_STATUS_QUEUED);
  return r;
}

class RedisCreateKeyStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto s = RedisServer::Start();
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = *std::move(s);
  }
  // One "sidecar": its own connection and store.
  struct Member {
    std::unique_ptr<RedisClient> client;
    std::unique_ptr<RedisCreateKeyStore> store;
  };
  Member Join(RedisCreateKeyStore::Options o = {}, const FleetKeys* keys = nullptr,
              const std::string& url = "") {
    RedisClientOptions co;
    co.url = *RedisUrl::Parse(url.empty() ? server_->Url() : url);
    Member m;
    m.client = std::make_unique<RedisClient>(co);
    EXPECT_TRUE(m.client->WaitUntilUp(absl::Seconds(5)));
    m.store = std::make_unique<RedisCreateKeyStore>(m.client.get(), keys ? *keys : keys_, o,
                                                    RealClock::Get(), &metrics_);
    return m;
  }
  std::string Redis(const std::vector<std::string>& argv) {
    auto r = server_->Command(argv);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : "";
  }

  const FleetKeys keys_{"fleet-a", "api.example.com", "sk-SECRET-1"};
  MetricsRegistry metrics_;
  std::unique_ptr<RedisServer> server_;
};

TEST_F(RedisCreateKeyStoreTest, OneClaimantAmongManyCallersOfThreeSidecars) {
  std::vector<Member> ms;
  for (int i = 0; i < 3; ++i) ms.push_back(Join());
  std::atomic<int> claimed{0}, pending{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 24; ++i) {
    threads.emplace_back([&, i] {
      auto r = ms[i % 3].store->Claim("wf/run/act", "fp-1");
      ASSERT_TRUE(r.ok()) << r.status();
      if (!r->has_value()) {
        ++claimed;
      } else {
        EXPECT_EQ((*r)->state, State::kPending);
        EXPECT_EQ((*r)->fingerprint, "fp-1");
        ++pending;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(claimed.load(), 1);
  EXPECT_EQ(pending.load(), 23);
  // Whoever claimed records; every sidecar then reads the task.
  int recorded = 0;
  for (Member& m : ms) recorded += m.store->Record("wf/run/act", Created("video_1")).ok();
  EXPECT_EQ(recorded, 1);
  for (Member& m : ms) {
    auto r = m.store->Claim("wf/run/act", "fp-1");
    ASSERT_TRUE(r.ok() && r->has_value());
    EXPECT_EQ((*r)->state, State::kCreated);
    EXPECT_EQ((*r)->task.id(), "video_1");
    EXPECT_EQ((*r)->fingerprint, "fp-1");
  }
  // Another body sees the first one's fingerprint (the Creator's ALREADY_EXISTS).
  auto other = ms[1].store->Claim("wf/run/act", "fp-2");
  ASSERT_TRUE(other.ok() && other->has_value());
  EXPECT_EQ((*other)->fingerprint, "fp-1");
}

TEST_F(RedisCreateKeyStoreTest, RecordedOutcomesLastTheTtlAndTheKeyIsNotInClear) {
  Member m = Join({.ttl = absl::Hours(2)});
  ASSERT_FALSE(m.store->Claim("my-request-id", "fp")->has_value());
  const std::string pttl_pending = Redis({"PTTL", m.store->RecordKey("my-request-id")});
  EXPECT_GT(std::stoll(pttl_pending), 0);
  CreateRecord unknown;
  unknown.state = State::kUnknown;
  unknown.detail = "the answer was lost";
  ASSERT_TRUE(m.store->Record("my-request-id", unknown).ok());
  const int64_t pttl = std::stoll(Redis({"PTTL", m.store->RecordKey("my-request-id")}));
  EXPECT_GT(pttl, absl::ToInt64Milliseconds(absl::Hours(2) - absl::Minutes(1)));
  EXPECT_LE(pttl, absl::ToInt64Milliseconds(absl::Hours(2)));
  EXPECT_EQ(Redis({"EXISTS", m.store->LeaseKey("my-request-id")}), "0");
  const std::string keys = Redis({"KEYS", "*"});
  EXPECT_FALSE(absl::StrContains(keys, "my-request-id")) << keys;
  EXPECT_TRUE(absl::StrContains(keys, absl::StrCat("vt:{", keys_.fingerprint(), "}:create:")));
  auto again = Join().store->Lookup("my-request-id");
  ASSERT_TRUE(again.ok() && again->has_value());
  EXPECT_EQ((*again)->state, State::kUnknown);
  EXPECT_EQ((*again)->detail, "the answer was lost");
}

TEST_F(RedisCreateKeyStoreTest, ReleaseFreesTheKeyAndOnlyTheClaimantSettles) {
  Member a = Join(), b = Join();
  ASSERT_FALSE(a.store->Claim("k", "fp")->has_value());
  EXPECT_EQ(b.store->Release("k").code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(b.store->Record("k", Created("x")).code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(a.store->Release("k").ok());
  EXPECT_FALSE(b.store->Lookup("k")->has_value());
  EXPECT_FALSE(b.store->Claim("k", "fp")->has_value()) << "a released key is free again";
}

TEST_F(RedisCreateKeyStoreTest, RecordsThatFailVerificationAreAbortedNeverAbsent) {
  Member m = Join();
  const std::string rk = m.store->RecordKey("forged");
  // Garbage, a record signed by another fleet's key, a record copied from
  // another request_id: each refuses, none is "absent" (which would create).
  FleetKeys other("fleet-a", "api.example.com", "sk-OTHER");
  Member o = Join({}, &other);
  ASSERT_FALSE(o.store->Claim("forged", "fp")->has_value());
  ASSERT_TRUE(o.store->Record("forged", Created("evil")).ok());
  auto foreign = m.store->Claim("forged", "fp");
  EXPECT_EQ(foreign.status().code(), absl::StatusCode::kAborted) << foreign.status();
  EXPECT_TRUE(absl::StrContains(foreign.status().message(), "fails verification"));

  ASSERT_FALSE(m.store->Claim("genuine", "fp")->has_value());
  ASSERT_TRUE(m.store->Record("genuine", Created("video_9")).ok());
  Redis({"COPY", m.store->RecordKey("genuine"), m.store->RecordKey("copied")});
  EXPECT_EQ(m.store->Lookup("copied").status().code(), absl::StatusCode::kAborted);

  Redis({"SET", rk, "vtc1 not a record"});
  EXPECT_EQ(m.store->Claim("forged", "fp").status().code(), absl::StatusCode::kAborted);
  EXPECT_EQ(Redis({"GET", rk}), "vtc1 not a record") << "a refused record was overwritten";
  EXPECT_GE(metrics_.GetCounter("videotask_fleet_entries_rejected_total",
                                "Shared task states from Redis that failed verification and "
                                "were ignored.")->value(),
            3u);
  // A rotation: the previous key's records still verify.
  FleetKeys rotated("fleet-a", "api.example.com", "sk-SECRET-2", {"sk-SECRET-1"});
  auto after = Join({}, &rotated).store->Lookup("genuine");
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ((*after)->task.id(), "video_9");
}

TEST_F(RedisCreateKeyStoreTest, AClaimerThatDiesLeavesAnUnknownOutcomeNeverAFreeKey) {
  Member dead = Join({.renew = false});
  Member alive = Join();
  ASSERT_FALSE(dead.store->Claim("k", "fp")->has_value());
  auto r = alive.store->Claim("k", "fp");
  ASSERT_TRUE(r.ok() && r->has_value());
  EXPECT_EQ((*r)->state, State::kPending);
  // Its lease lapses (played at once: the lease key goes).
  Redis({"DEL", dead.store->LeaseKey("k")});
  r = alive.store->Claim("k", "fp");
  ASSERT_TRUE(r.ok() && r->has_value());
  EXPECT_EQ((*r)->state, State::kUnknown);
  EXPECT_TRUE(absl::StrContains((*r)->detail, "stopped")) << (*r)->detail;
  r = alive.store->AwaitSettled("k", RealClock::Get()->Monotonic() + absl::Seconds(5));
  ASSERT_TRUE(r.ok() && r->has_value());
  EXPECT_EQ((*r)->state, State::kUnknown) << "a waiter must not wait for a dead claimer";
  // A claimer that was only slow still records, and its answer wins.
  ASSERT_TRUE(dead.store->Record("k", Created("video_late")).ok());
  r = alive.store->Lookup("k");
  ASSERT_TRUE(r.ok() && r->has_value());
  EXPECT_EQ((*r)->task.id(), "video_late");
}

TEST_F(RedisCreateKeyStoreTest, ALiveClaimIsRenewedAndAnUnrenewedOneLapses) {
  Member live = Join({.lease = absl::Milliseconds(400)});
  Member dead = Join({.lease = absl::Milliseconds(400), .renew = false});
  ASSERT_FALSE(live.store->Claim("live", "fp")->has_value());
  ASSERT_FALSE(dead.store->Claim("dead", "fp")->has_value());
  // Redis expires leases on its own clock: this test waits for real.
  absl::SleepFor(absl::Milliseconds(1200));
  EXPECT_EQ(live.store->Lookup("live").value()->state, State::kPending);
  EXPECT_EQ(live.store->Lookup("dead").value()->state, State::kUnknown);
}

TEST_F(RedisCreateKeyStoreTest, WaitersWakeWhenTheClaimSettlesOrTheirDeadlineComes) {
  Member a = Join({.poll_interval = absl::Seconds(10)});  // only the PUBLISH can wake it
  Member b = Join();
  ASSERT_FALSE(b.store->Claim("k", "fp")->has_value());
  Clock* clock = RealClock::Get();
  auto early = a.store->AwaitSettled("k", clock->Monotonic() + absl::Milliseconds(100));
  ASSERT_TRUE(early.ok() && early->has_value());
  EXPECT_EQ((*early)->state, State::kPending);
  std::thread recorder([&] {
    absl::SleepFor(absl::Milliseconds(200));
    ASSERT_TRUE(b.store->Record("k", Created("video_2")).ok());
  });
  const absl::Time start = absl::Now();
  auto r = a.store->AwaitSettled("k", clock->Monotonic() + absl::Seconds(8));
  recorder.join();
  ASSERT_TRUE(r.ok() && r->has_value());
  EXPECT_EQ((*r)->task.id(), "video_2");
  EXPECT_LT(absl::Now() - start, absl::Seconds(3)) << "woken by the poll, not the PUBLISH";
  // A release wakes them too, with nothing held.
  ASSERT_FALSE(b.store->Claim("k2", "fp")->has_value());
  std::thread releaser([&] {
    absl::SleepFor(absl::Milliseconds(200));
    ASSERT_TRUE(b.store->Release("k2").ok());
  });
  auto released = a.store->AwaitSettled("k2", clock->Monotonic() + absl::Seconds(8));
  releaser.join();
  ASSERT_TRUE(released.ok());
  EXPECT_FALSE(released->has_value());
}

TEST_F(RedisCreateKeyStoreTest, RedisDownIsUnavailableNeverAbsent) {
  Member m = Join();
  ASSERT_FALSE(m.store->Claim("held", "fp")->has_value());
  server_->Kill();
  auto claim = m.store->Claim("new", "fp");
  EXPECT_EQ(claim.status().code(), absl::StatusCode::kUnavailable) << claim.status();
  EXPECT_TRUE(absl::StrContains(claim.status().message(), "nothing was sent"));
  EXPECT_EQ(m.store->Lookup("held").status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(m.store->AwaitSettled("held", RealClock::Get()->Monotonic() + absl::Seconds(1))
                .status()
                .code(),
            absl::StatusCode::kUnavailable);
  EXPECT_EQ(m.store->Record("held", Created("v")).code(), absl::StatusCode::kUnavailable);
  // Redis returns empty (a restart without persistence): the store works
  // again; what was held is gone with it (docs: use persistence).
  ASSERT_TRUE(server_->Restart().ok());
  ASSERT_TRUE(m.client->WaitUntilUp(absl::Seconds(10)));
  EXPECT_FALSE(m.store->Claim("new", "fp")->has_value());
}

TEST_F(RedisCreateKeyStoreTest, WritesThatFailAreRetriedInTheBackground) {
  Member m = Join({.lease = absl::Milliseconds(400)});
  ASSERT_FALSE(m.store->Claim("k", "fp")->has_value());
  ASSERT_FALSE(m.store->Claim("k2", "fp")->has_value());
  // Redis refuses writes (NOREPLICAS) for a while.
  Redis({"CONFIG", "SET", "min-replicas-to-write", "1"});
  EXPECT_EQ(m.store->Record("k", Created("video_r")).code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(m.store->Release("k2").code(), absl::StatusCode::kUnavailable);
  Redis({"CONFIG", "SET", "min-replicas-to-write", "0"});
  const absl::Time end = absl::Now() + absl::Seconds(20);
  bool settled = false;
  while (!settled && absl::Now() < end) {
    auto k = m.store->Lookup("k");
    auto k2 = m.store->Lookup("k2");
    settled = k.ok() && k->has_value() && (*k)->state == State::kCreated && k2.ok() &&
              !k2->has_value();
    if (!settled) absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_TRUE(settled) << "the failed Record and Release were not retried";
  EXPECT_EQ(m.store->Lookup("k").value()->task.id(), "video_r");
}

// The reviewer's case: a Claim whose answer never came (UNAVAILABLE, so
// nothing is sent) reaches Redis only after its undo ran and found nothing.
// The undo is repeated, so the late claim is removed and the request_id is
// free, not left pending until its lease lapses and then "unknown" (ABORTED)
// for the TTL.
TEST_F(RedisCreateKeyStoreTest, AClaimThatReachesRedisAfterItsUndoIsUndoneToo) {
  absl::StatusOr<std::unique_ptr<HoldProxy>> proxy = HoldProxy::Start(server_->port());
  ASSERT_TRUE(proxy.ok()) << proxy.status();
  Member m = Join({.lease = absl::Milliseconds(400)},
                  /*keys=*/nullptr, absl::StrCat("redis://127.0.0.1:", (*proxy)->port()));
  const auto evals = [&] {
    int64_t n = 0;
    for (absl::string_view line : absl::StrSplit(Redis({"INFO", "commandstats"}), '\n')) {
      if (!absl::StartsWith(line, "cmdstat_eval")) continue;  // eval, evalsha
      const size_t at = line.find("calls=");
      int64_t calls = 0;
      if (at != absl::string_view::npos &&
          absl::SimpleAtoi(line.substr(at + 6, line.find(',', at) - at - 6), &calls)) {
        n += calls;
      }
    }
    return n;
  };
  // Redis knows the scripts (a late EVALSHA of an unknown one fails alone).
  ASSERT_FALSE(m.store->Claim("warm", "fp")->has_value());
  ASSERT_TRUE(m.store->Release("warm").ok());
  const int64_t before = evals();
  (*proxy)->Hold();
  EXPECT_EQ(m.store->Claim("late", "fp").status().code(), absl::StatusCode::kUnavailable);
  ASSERT_GT((*proxy)->held_bytes(), 0u) << "the claim was not held up";
  // The client reconnects past the hold; the undo runs and finds no claim.
  const absl::Time end = absl::Now() + absl::Seconds(10);
  while (evals() == before && absl::Now() < end) absl::SleepFor(absl::Milliseconds(20));
  ASSERT_GT(evals(), before) << "the undo never ran";
  EXPECT_EQ(Redis({"EXISTS", m.store->RecordKey("late")}), "0");
  (*proxy)->Release();  // the claim lands now
  bool free = false;
  while (!free && absl::Now() < end) {
    auto held = m.store->Lookup("late");
    free = held.ok() && !held->has_value();
    if (!free) absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_TRUE(free) << "the late claim was not undone";
  // Past its lease it does not come back as "unknown".
  absl::SleepFor(absl::Milliseconds(600));
  auto held = m.store->Lookup("late");
  ASSERT_TRUE(held.ok()) << held.status();
  EXPECT_FALSE(held->has_value());
}

TEST_F(RedisCreateKeyStoreTest, PausedRedisIsUnavailableWithinTheCommandTimeout) {
  Member m = Join();
  server_->Pause();
  const absl::Time start = absl::Now();
  EXPECT_EQ(m.store->Claim("k", "fp").status().code(), absl::StatusCode::kUnavailable);
  EXPECT_LT(absl::Now() - start, absl::Seconds(2));
  server_->Resume();
}

class RedisSpendGuardTest : public RedisCreateKeyStoreTest {};

TEST_F(RedisSpendGuardTest, OneSlidingHourForTheWholeFleet) {
  int64_t now_us = int64_t{1761635478} * 1000000;
  auto now = [&now_us] { return now_us; };
  RedisClientOptions co;
  co.url = *RedisUrl::Parse(server_->Url());
  RedisClient c1(co), c2(co);
  ASSERT_TRUE(c1.WaitUntilUp(absl::Seconds(5)) && c2.WaitUntilUp(absl::Seconds(5)));
  SimulatedClock clock;
  RedisSpendGuard a(&c1, keys_, {.max_per_hour = 2, .now_us = now}, &clock);
  RedisSpendGuard b(&c2, keys_, {.max_per_hour = 2, .now_us = now}, &clock);
  auto first = a.Take();
  ASSERT_TRUE(first.ok() && first->has_value());
  now_us += 30LL * 60 * 1000000;
  auto second = b.Take();
  ASSERT_TRUE(second.ok() && second->has_value());
  EXPECT_FALSE(a.Take()->has_value());
  EXPECT_FALSE(b.Take()->has_value());
  b.GiveBack(**second);  // created nothing (sent before b's next command)
  auto third = b.Take();
  ASSERT_TRUE(third.ok() && third->has_value());
  EXPECT_FALSE(a.Take()->has_value());
  now_us += 30LL * 60 * 1000000;  // the first is an hour old
  EXPECT_TRUE(b.Take()->has_value());
  EXPECT_FALSE(a.Take()->has_value());
  // Off: no Redis needed.
  RedisSpendGuard off(&c1, keys_, {.max_per_hour = 0}, &clock);
  server_->Kill();
  EXPECT_TRUE(off.Take()->has_value());
  auto down = a.Take();
  EXPECT_EQ(down.status().code(), absl::StatusCode::kUnavailable) << down.status();
  EXPECT_TRUE(absl::StrContains(down.status().message(), "--max_creates_per_hour"));
}

}  // namespace
}  // namespace videotask::fleet

