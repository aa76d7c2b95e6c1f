// Clock: the only way server components read the time.
//
// Components take a `Clock*` so tests can drive time by hand. RealClock reads
// the system clock; SimulatedClock only moves when a test calls Advance().
// Both are thread-safe.
#ifndef VIDEOTASK_SERVER_CLOCK_H_
#define VIDEOTASK_SERVER_CLOCK_H_

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace videotask {

class Clock {
 public:
  virtual ~Clock() = default;
  virtual absl::Time Now() const = 0;
};

// The system clock. `RealClock::Get()` is a process-wide instance.
class RealClock : public Clock {
 public:
  absl::Time Now() const override { return absl::Now(); }
  static Clock* Get();
};

// A clock for tests: starts at `start` and moves only through Advance/SetTime.
class SimulatedClock : public Clock {
 public:
  explicit SimulatedClock(absl::Time start = absl::FromUnixSeconds(1761635478))
      : now_(start) {}
  absl::Time Now() const override {
    absl::MutexLock lock(&mu_);
    return now_;
  }
  void Advance(absl::Duration d) {
    absl::MutexLock lock(&mu_);
    now_ += d;
  }
  void SetTime(absl::Time t) {
    absl::MutexLock lock(&mu_);
    now_ = t;
  }

 private:
  mutable absl::Mutex mu_;
  absl::Time now_ ABSL_GUARDED_BY(mu_);
};

}  // namespace videotask

#endif  // VIDEOTASK_SERVER_CLOCK_H_
