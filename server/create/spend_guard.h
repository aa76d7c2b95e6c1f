// SpendGuard: the --max_creates_per_hour cap. At most `max_per_hour` new
// vendor creates start in any sliding hour (0: no cap). A create that
// surely created nothing (refused, never sent) gives its place back;
// repeats of a known request_id never take one. Measured on the clock's
// Monotonic() reading. Thread-safe. One sidecar's count: in fleet mode the
// cap would have to be the fleet's (not implemented; creates are refused
// there for now).
#ifndef VIDEOTASK_SERVER_CREATE_SPEND_GUARD_H_
#define VIDEOTASK_SERVER_CREATE_SPEND_GUARD_H_

#include <cstdint>
#include <optional>
#include <set>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/base/clock.h"

namespace videotask {

class SpendGuard {
 public:
  using Ticket = absl::Time;
  SpendGuard(int64_t max_per_hour, Clock* clock) : max_(max_per_hour), clock_(clock) {}

  // A place for one create now, or nullopt when the last hour is full.
  std::optional<Ticket> Take();
  // That create created nothing: its place is free again.
  void GiveBack(Ticket ticket);
  int64_t max_per_hour() const { return max_; }

 private:
  const int64_t max_;
  Clock* const clock_;
  absl::Mutex mu_;
  std::multiset<absl::Time> taken_ ABSL_GUARDED_BY(mu_);
};

}  // namespace videotask

#endif  // VIDEOTASK_SERVER_CREATE_SPEND_GUARD_H_
