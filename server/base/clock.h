// Clock: the only way server components read the time.
//
// Two readings: Now() is wall time, for what users see (timestamps in
// messages and logs, HTTP dates); Monotonic() never jumps (NTP steps, VM
// resume, an operator's `date -s`) and is what every timer, deadline, rate
// window and age is measured with. A Monotonic() instant is an absl::Time
// from an arbitrary epoch: compare and subtract such instants only with each
// other, never with Now().
//
// Components take a `Clock*` so tests can drive time by hand. RealClock reads
// the system clocks; SimulatedClock only moves when a test calls Advance()
// (both readings) or StepWall() (wall time only, as a clock step would).
// Both are thread-safe.
#ifndef VIDEOTASK_SERVER_BASE_CLOCK_H_
#define VIDEOTASK_SERVER_BASE_CLOCK_H_

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace videotask {

class Clock {
 public:
  virtual ~Clock() = default;
  // Wall time.
  virtual absl::Time Now() const = 0;
  // Monotonic time (never goes back, does not follow clock steps).
  virtual absl::Time Monotonic() const = 0;
};

// The system clocks. `RealClock::Get()` is a process-wide instance.
class RealClock : public Clock {
 public:
  absl::Time Now() const override { return absl::Now(); }
  absl::Time Monotonic() const override;
  static Clock* Get();
};

// A clock for tests: wall time starts at `start`, monotonic time at an
// unrelated epoch; both move only through Advance(), wall time alone through
// StepWall().
class SimulatedClock : public Clock {
 public:
  explicit SimulatedClock(absl::Time start = absl::FromUnixSeconds(1761635478))
      : wall_(start) {}
  absl::Time Now() const override {
    absl::MutexLock lock(&mu_);
    return wall_;
  }
  absl::Time Monotonic() const override {
    absl::MutexLock lock(&mu_);
    return mono_;
  }
  // Time passes (negative durations are ignored: time does not go back).
  void Advance(absl::Duration d) {
    if (d <= absl::ZeroDuration()) return;
    absl::MutexLock lock(&mu_);
    wall_ += d;
    mono_ += d;
  }
  // Advances to the monotonic instant `t` (no-op if it is not later).
  void AdvanceTo(absl::Time t) {
    absl::MutexLock lock(&mu_);
    if (t <= mono_) return;
    wall_ += t - mono_;
    mono_ = t;
  }
  // The wall clock is stepped by `d` (either way); no time passes.
  void StepWall(absl::Duration d) {
    absl::MutexLock lock(&mu_);
    wall_ += d;
  }

 private:
  mutable absl::Mutex mu_;
  absl::Time wall_ ABSL_GUARDED_BY(mu_);
  absl::Time mono_ ABSL_GUARDED_BY(mu_) = absl::UnixEpoch() + absl::Hours(1000);
};

}  // namespace videotask

#endif  // VIDEOTASK_SERVER_BASE_CLOCK_H_
