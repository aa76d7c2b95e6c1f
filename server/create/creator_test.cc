// Creator with the memory key store, a stand-in vendor client (counts calls,
// may block until released) and a stand-in budget (always a slot).
#include "server/create/creator.h"

#include <atomic>
#include <memory>
#include <thread>

#include "absl/synchronization/notification.h"
#include "gtest/gtest.h"
#include "server/base/clock.h"
#include "server/create/memory_create_key_store.h"
#include "server/create/spend_guard.h"

namespace videotask {
namespace {

// Stand-in vendor: answers kCreated; when `block` is set, waits for `release`
// and signals `entered` first.
class StandInVendor : public VendorCreateClient {
 public:
  VendorCreateResult Create(const std::string&, const std::string&) override {
    calls.fetch_add(1);
    if (block) {
      entered.Notify();
      release.WaitForNotification();
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
};

class FreeBudget : public UpstreamBudget {
 public:
  absl::StatusOr<absl::Duration> Acquire() override { return absl::ZeroDuration(); }
  void Release(bool, std::optional<absl::Duration>) override {}
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
  SimulatedClock clock_;
  StandInVendor vendor_;
  WatchedStore keys_{MemoryCreateKeyStore::Options{}, &clock_};
  FreeBudget budget_;
  MemorySpendGuard spend_{0, &clock_};
  Creator creator_{CreatorOptions(), &vendor_, &keys_, &budget_, &spend_, &clock_, nullptr};
};

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
