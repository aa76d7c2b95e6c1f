#include "server/create/memory_create_key_store.h"

#include <atomic>
#include <thread>
#include <vector>

#include "absl/synchronization/notification.h"
#include "gtest/gtest.h"
#include "server/base/clock.h"
#include "server/create/spend_guard.h"

namespace videotask {
namespace {

using State = CreateRecord::State;

CreateRecord Created(const std::string& id) {
  CreateRecord r;
  r.state = State::kCreated;
  r.task.set_id(id);
  return r;
}

class MemoryCreateKeyStoreTest : public ::testing::Test {
 protected:
  SimulatedClock clock_;
};

TEST_F(MemoryCreateKeyStoreTest, ClaimIsExclusiveUntilRecordedOrReleased) {
  MemoryCreateKeyStore store({}, &clock_);
  auto first = store.Claim("k", "fp");
  ASSERT_TRUE(first.ok());
  EXPECT_FALSE(first->has_value()) << "the first caller claims";
  auto second = store.Claim("k", "fp");
  ASSERT_TRUE(second.ok() && second->has_value());
  EXPECT_EQ((*second)->state, State::kPending);
  EXPECT_EQ((*second)->fingerprint, "fp");
  ASSERT_TRUE(store.Record("k", Created("proj_1")).ok());
  auto third = store.Claim("k", "other");
  ASSERT_TRUE(third.ok() && third->has_value());
  EXPECT_EQ((*third)->state, State::kCreated);
  EXPECT_EQ((*third)->task.id(), "proj_1");
  EXPECT_EQ((*third)->fingerprint, "fp") << "the claim's fingerprint is kept";
  EXPECT_FALSE(store.Record("k", Created("proj_2")).ok()) << "one outcome per claim";
  // Released: free again.
  ASSERT_FALSE(store.Claim("r", "fp")->has_value());
  ASSERT_TRUE(store.Release("r").ok());
  EXPECT_FALSE(store.Lookup("r")->has_value());
  EXPECT_FALSE(store.Claim("r", "fp")->has_value());
}

TEST_F(MemoryCreateKeyStoreTest, OutcomesExpireAfterTheTtlOnTheMonotonicClock) {
  MemoryCreateKeyStore store({.ttl = absl::Hours(24), .max_keys = 10}, &clock_);
  ASSERT_FALSE(store.Claim("k", "fp")->has_value());
  clock_.Advance(absl::Hours(30));  // a pending claim does not expire
  EXPECT_EQ((*store.Lookup("k"))->state, State::kPending);
  CreateRecord unknown;
  unknown.state = State::kUnknown;
  unknown.detail = "timeout";
  ASSERT_TRUE(store.Record("k", unknown).ok());
  clock_.StepWall(absl::Hours(48));  // a wall clock step changes nothing
  clock_.Advance(absl::Hours(24) - absl::Seconds(1));
  EXPECT_EQ((*store.Lookup("k"))->state, State::kUnknown);
  clock_.Advance(absl::Seconds(1));
  EXPECT_FALSE(store.Lookup("k")->has_value());
  EXPECT_EQ(store.size(), 0);
  EXPECT_FALSE(store.Claim("k", "fp")->has_value()) << "forgotten: a new claim";
}

TEST_F(MemoryCreateKeyStoreTest, BoundedWithoutEvictingRememberedKeys) {
  MemoryCreateKeyStore store({.ttl = absl::Hours(1), .max_keys = 2}, &clock_);
  ASSERT_FALSE(store.Claim("a", "fp")->has_value());
  ASSERT_TRUE(store.Record("a", Created("p1")).ok());
  ASSERT_FALSE(store.Claim("b", "fp")->has_value());
  EXPECT_EQ(store.Claim("c", "fp").status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ((*store.Claim("a", "fp"))->task.id(), "p1") << "known keys still answer";
  clock_.Advance(absl::Hours(1));  // a expires; b is still pending
  EXPECT_FALSE(store.Claim("c", "fp")->has_value());
  EXPECT_EQ((*store.Lookup("b"))->state, State::kPending);
}

TEST_F(MemoryCreateKeyStoreTest, WaitersGetTheFirstCallersOutcome) {
  MemoryCreateKeyStore store({}, &clock_);
  ASSERT_FALSE(store.Claim("k", "fp")->has_value());
  constexpr int kWaiters = 8;
  std::atomic<int> waiting{0};
  std::vector<std::thread> threads;
  std::vector<std::string> ids(kWaiters);
  for (int i = 0; i < kWaiters; ++i) {
    threads.emplace_back([&, i] {
      ++waiting;
      auto r = store.AwaitSettled("k", absl::InfiniteFuture());
      ASSERT_TRUE(r.ok() && r->has_value());
      ids[i] = (*r)->task.id();
    });
  }
  while (waiting.load() < kWaiters) std::this_thread::yield();
  ASSERT_TRUE(store.Record("k", Created("proj_7")).ok());
  for (auto& t : threads) t.join();
  for (const std::string& id : ids) EXPECT_EQ(id, "proj_7");
}

TEST_F(MemoryCreateKeyStoreTest, AWaiterSeesARelease) {
  MemoryCreateKeyStore store({}, &clock_);
  ASSERT_FALSE(store.Claim("k", "fp")->has_value());
  absl::Notification started;
  std::optional<CreateRecord> seen = CreateRecord();
  std::thread waiter([&] {
    started.Notify();
    seen = *store.AwaitSettled("k", absl::InfiniteFuture());
  });
  started.WaitForNotification();
  ASSERT_TRUE(store.Release("k").ok());
  waiter.join();
  EXPECT_FALSE(seen.has_value());
}

TEST_F(MemoryCreateKeyStoreTest, APastDeadlineAnswersAtOnce) {
  MemoryCreateKeyStore store({}, &clock_);
  ASSERT_FALSE(store.Claim("k", "fp")->has_value());
  auto r = store.AwaitSettled("k", clock_.Monotonic());
  ASSERT_TRUE(r.ok() && r->has_value());
  EXPECT_EQ((*r)->state, State::kPending);
}

TEST(SpendGuardTest, SlidingHourAndGiveBack) {
  SimulatedClock clock;
  MemorySpendGuard guard(2, &clock);
  auto take = [&] { return *guard.Take(); };
  auto a = take();
  clock.Advance(absl::Minutes(30));
  auto b = take();
  ASSERT_TRUE(a && b);
  EXPECT_FALSE(take().has_value());
  guard.GiveBack(*b);  // b created nothing
  auto c = take();
  ASSERT_TRUE(c.has_value());
  EXPECT_FALSE(take().has_value());
  clock.Advance(absl::Minutes(30));  // a is an hour old
  EXPECT_TRUE(take().has_value());
  EXPECT_FALSE(take().has_value());
  MemorySpendGuard off(0, &clock);
  for (int i = 0; i < 1000; ++i) ASSERT_TRUE(off.Take()->has_value());
}

}  // namespace
}  // namespace videotask
