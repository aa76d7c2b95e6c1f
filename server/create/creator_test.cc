// Creator with the memory key store, a stand-in vendor client (counts calls,
// answers from a script, may block until released) and a stand-in budget
// (scripted waits, a 429's pause as the real budget holds it). Waits run on
// the simulated clock through CreatorOptions::sleep.
#include "server/create/creator.h"

#include <atomic>
#include <deque>
#include <memory>
#include <optional>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "gtest/gtest.h"
#include "server/base/clock.h"
#include "server/create/memory_create_key_store.h"
#include "server/create/spend_guard.h"

namespace videotask {
namespace {

// Stand-in vendor: the next answer of `script`, then kCreated; when `block`
// is set, waits for `release` and signals `entered` first.
class StandInVendor : public VendorCreateClient {
 public:
  VendorCreateResult Create(const std::string&, const std::string&) override {
    calls.fetch_add(1);
    if (block) {
      entered.Notify();
      release.WaitForNotification();
    }
    {
      absl::MutexLock lock(&mu);
      if (!script.empty()) {
        VendorCreateResult r = script.front();
        script.pop_front();
        return r;
      }
    }
    VendorCreateResult r;
    r.kind = VendorCreateResult::Kind::kCreated;
    r.task.set_id("proj_1");
    r.code = "200";
    return r;
  }
  std::atomic<int> calls{0};
  bool block = false;
  absl::Notification entered;
  absl::Notification release;
  absl::Mutex mu;
  std::deque<VendorCreateResult> script ABSL_GUARDED_BY(mu);
};

// A kNotSent answer (nothing was created): "503", "connect_error", or a 429
// with its Retry-After.
VendorCreateResult NotSent(const std::string& code,
                           std::optional<absl::Duration> retry_after = std::nullopt) {
  VendorCreateResult r;
  r.kind = VendorCreateResult::Kind::kNotSent;
  r.code = code;
  r.message = "the vendor answered " + code;
  r.rate_limited = code == "429";
  r.retry_after = retry_after;
  return r;
}

// Stand-in budget: Acquire() answers the next of `waits` (then a slot at
// once); a released 429 with a Retry-After becomes the next wait, as the
// hub's budget holds the pause.
class ScriptedBudget : public UpstreamBudget {
 public:
  absl::StatusOr<absl::Duration> Acquire() override {
    absl::MutexLock lock(&mu);
    if (waits.empty()) return absl::ZeroDuration();
    const absl::Duration d = waits.front();
    waits.pop_front();
    return d;
  }
  void Release(bool rate_limited, std::optional<absl::Duration> retry_after) override {
    absl::MutexLock lock(&mu);
    ++releases;
    if (rate_limited && retry_after.has_value()) waits.push_back(*retry_after);
  }
  absl::Mutex mu;
  std::deque<absl::Duration> waits ABSL_GUARDED_BY(mu);
  int releases ABSL_GUARDED_BY(mu) = 0;
};

// The memory store, telling when a caller starts waiting for a pending key.
class WatchedStore : public MemoryCreateKeyStore {
 public:
  using MemoryCreateKeyStore::MemoryCreateKeyStore;
  absl::StatusOr<std::optional<CreateRecord>> AwaitSettled(const std::string& key,
                                                           absl::Time deadline) override {
    if (!waiting.HasBeenNotified()) waiting.Notify();
    return MemoryCreateKeyStore::AwaitSettled(key, deadline);
  }
  absl::Notification waiting;
};

videotask::v1::CreateVideoTaskRequest Request(const std::string& key) {
  videotask::v1::CreateVideoTaskRequest r;
  r.set_request_id(key);
  r.set_family("veo");
  (*r.mutable_body()->mutable_fields())["prompt"].set_string_value("a cat");
  return r;
}

class CreatorTest : public ::testing::Test {
 protected:
  // Default options, waiting on the simulated clock (each wait recorded).
  CreatorOptions Options() {
    CreatorOptions o;
    o.sleep = [this](absl::Duration d) {
      {
        absl::MutexLock lock(&sleeps_mu_);
        sleeps_.push_back(d);
      }
      clock_.Advance(d);
    };
    return o;
  }
  std::vector<absl::Duration> Sleeps() {
    absl::MutexLock lock(&sleeps_mu_);
    return sleeps_;
  }

  SimulatedClock clock_;
  absl::Mutex sleeps_mu_;
  std::vector<absl::Duration> sleeps_ ABSL_GUARDED_BY(sleeps_mu_);
  StandInVendor vendor_;
  WatchedStore keys_{MemoryCreateKeyStore::Options{}, &clock_};
  ScriptedBudget budget_;
  MemorySpendGuard spend_{0, &clock_};
  Creator creator_{Options(), &vendor_, &keys_, &budget_, &spend_, &clock_, nullptr};
};

using Durations = std::vector<absl::Duration>;

TEST_F(CreatorTest, UnsentAnswersAreRetriedWithBackoffThatDoublesToItsCap) {
  {
    absl::MutexLock lock(&vendor_.mu);
    for (int i = 0; i < 7; ++i) vendor_.script.push_back(NotSent(i % 2 ? "connect_error" : "503"));
  }
  const absl::Time start = clock_.Monotonic();
  absl::StatusOr<videotask::v1::VideoTask> r =
      creator_.Create(Request("k"), start + absl::Seconds(60));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->id(), "proj_1");
  EXPECT_EQ(vendor_.calls.load(), 8);
  // 250 ms doubling, capped at retry_max (5 s).
  EXPECT_EQ(Sleeps(), (Durations{absl::Milliseconds(250), absl::Milliseconds(500),
                                 absl::Seconds(1), absl::Seconds(2), absl::Seconds(4),
                                 absl::Seconds(5), absl::Seconds(5)}));
  EXPECT_EQ(clock_.Monotonic() - start, absl::Milliseconds(17750));
  // The outcome is the key's: a repeat sends nothing.
  ASSERT_TRUE(creator_.Create(Request("k"), clock_.Monotonic() + absl::Seconds(4)).ok());
  EXPECT_EQ(vendor_.calls.load(), 8);
}

TEST_F(CreatorTest, RetriesEndBeforeTheDeadlineWithTheKeyReleased) {
  {
    absl::MutexLock lock(&vendor_.mu);
    for (int i = 0; i < 20; ++i) vendor_.script.push_back(NotSent("503"));
  }
  const absl::Time start = clock_.Monotonic();
  absl::StatusOr<videotask::v1::VideoTask> r =
      creator_.Create(Request("k"), start + absl::Seconds(2));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable) << r.status();
  EXPECT_NE(r.status().message().find("retried until the deadline"), std::string::npos);
  EXPECT_NE(r.status().message().find("the vendor answered 503"), std::string::npos);
  // 0.25 + 0.5 + 1 s waited; the next backoff (2 s) would pass the deadline.
  EXPECT_EQ(Sleeps(), (Durations{absl::Milliseconds(250), absl::Milliseconds(500),
                                 absl::Seconds(1)}));
  EXPECT_EQ(vendor_.calls.load(), 4);
  EXPECT_FALSE(keys_.Lookup("k")->has_value()) << "nothing was created: the key is free";
}

TEST_F(CreatorTest, A429WaitsForTheBudgetsPauseAlone) {
  {
    absl::MutexLock lock(&vendor_.mu);
    vendor_.script.push_back(NotSent("429", absl::Seconds(3)));
  }
  absl::StatusOr<videotask::v1::VideoTask> r =
      creator_.Create(Request("k"), clock_.Monotonic() + absl::Seconds(30));
  ASSERT_TRUE(r.ok()) << r.status();
  // The pause the budget holds, and no backoff on top of it.
  EXPECT_EQ(Sleeps(), (Durations{absl::Seconds(3)}));
  EXPECT_EQ(vendor_.calls.load(), 2);
  absl::MutexLock lock(&budget_.mu);
  EXPECT_EQ(budget_.releases, 2) << "each slot taken is given back";
}

TEST_F(CreatorTest, ABudgetWaitPastTheDeadlineSendsNothing) {
  {
    absl::MutexLock lock(&budget_.mu);
    budget_.waits = {absl::Seconds(1), absl::Seconds(10)};
  }
  absl::StatusOr<videotask::v1::VideoTask> r =
      creator_.Create(Request("k"), clock_.Monotonic() + absl::Seconds(5));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable) << r.status();
  EXPECT_NE(r.status().message().find("rate budget"), std::string::npos);
  EXPECT_EQ(Sleeps(), (Durations{absl::Seconds(1)})) << "the first wait fits, the second not";
  EXPECT_EQ(vendor_.calls.load(), 0);
  EXPECT_FALSE(keys_.Lookup("k")->has_value());
}

TEST_F(CreatorTest, ShutdownEndsAWaitForAnotherCallersPendingKey) {
  vendor_.block = true;
  absl::StatusOr<videotask::v1::VideoTask> claimant_result;
  std::thread claimant([&] {
    claimant_result = creator_.Create(Request("k"), clock_.Monotonic() + absl::Seconds(4));
  });
  vendor_.entered.WaitForNotification();  // the claimant's create is under way
  absl::StatusOr<videotask::v1::VideoTask> waiter_result;
  absl::Notification waiter_done;
  std::thread waiter([&] {
    waiter_result = creator_.Create(Request("k"), clock_.Monotonic() + absl::Seconds(4));
    waiter_done.Notify();
  });
  keys_.waiting.WaitForNotification();
  const absl::Time shutdown = absl::Now();
  creator_.Shutdown();
  // The simulated clock does not move: only Shutdown() can end the wait.
  EXPECT_TRUE(waiter_done.WaitForNotificationWithTimeout(absl::Seconds(2)))
      << "the waiter is still blocked after Shutdown()";
  EXPECT_LT(absl::Now() - shutdown, absl::Seconds(2));
  vendor_.release.Notify();
  waiter.join();
  claimant.join();
  EXPECT_EQ(waiter_result.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(waiter_result.status().message().find("shutting down"), std::string::npos);
  ASSERT_TRUE(claimant_result.ok()) << "a request that was sent finishes";
  EXPECT_EQ(vendor_.calls.load(), 1);
  // Later calls are UNAVAILABLE, nothing sent.
  EXPECT_EQ(creator_.Create(Request("other"), clock_.Monotonic() + absl::Seconds(4)).status().code(),
            absl::StatusCode::kUnavailable);
  EXPECT_EQ(vendor_.calls.load(), 1);
}

TEST_F(CreatorTest, NothingIsSentOnceTheDeadlineHasPassed) {
  absl::StatusOr<videotask::v1::VideoTask> r =
      creator_.Create(Request("late"), clock_.Monotonic() - absl::Seconds(1));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDeadlineExceeded) << r.status();
  EXPECT_NE(r.status().message().find("nothing was sent"), std::string::npos);
  EXPECT_EQ(vendor_.calls.load(), 0);
  EXPECT_FALSE(keys_.Lookup("late")->has_value()) << "the key is released";
  // The same request_id with time left is sent.
  EXPECT_TRUE(creator_.Create(Request("late"), clock_.Monotonic() + absl::Seconds(4)).ok());
  EXPECT_EQ(vendor_.calls.load(), 1);
}

}  // namespace
}  // namespace videotask
