// Test helpers for RedisClient (testonly): StateLog records the client's
// on_state calls and waits for one; Call() runs one command and waits for
// its callback, failing the test if the callback never runs.
#ifndef VIDEOTASK_SERVER_FLEET_REDIS_CLIENT_TESTING_H_
#define VIDEOTASK_SERVER_FLEET_REDIS_CLIENT_TESTING_H_

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "server/fleet/redis_client.h"

namespace videotask::fleet {

struct StateLog {
  absl::Mutex mu;
  std::vector<std::pair<bool, absl::Status>> events ABSL_GUARDED_BY(mu);

  std::function<void(bool, const absl::Status&)> Callback() {
    return [this](bool up, const absl::Status& why) {
      absl::MutexLock lock(&mu);
      events.emplace_back(up, why);
    };
  }
  size_t size() {
    absl::MutexLock lock(&mu);
    return events.size();
  }
  // Waits until the last event is `up`.
  bool WaitFor(bool up, absl::Duration timeout) {
    absl::MutexLock lock(&mu);
    auto cond = [this, up]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
      return !events.empty() && events.back().first == up;
    };
    return mu.AwaitWithTimeout(absl::Condition(&cond), timeout);
  }
  // The reason of the last event (OK when there is none).
  absl::Status LastReason() {
    absl::MutexLock lock(&mu);
    return events.empty() ? absl::OkStatus() : events.back().second;
  }
};

// The client bounds every command by `timeout`; the wait here only catches
// a callback that never runs.
inline absl::StatusOr<RedisReply> Call(RedisClient& c, std::vector<std::string> argv,
                                       absl::Duration timeout = absl::Milliseconds(250)) {
  absl::Notification done;
  absl::StatusOr<RedisReply> out;
  c.Command(std::move(argv), timeout, [&](absl::StatusOr<RedisReply> r) {
    out = std::move(r);
    done.Notify();
  });
  if (!done.WaitForNotificationWithTimeout(timeout + absl::Seconds(5))) {
    ADD_FAILURE() << "done never ran";
    return absl::InternalError("done never ran");
  }
  return out;
}

}  // namespace videotask::fleet

#endif  // VIDEOTASK_SERVER_FLEET_REDIS_CLIENT_TESTING_H_
