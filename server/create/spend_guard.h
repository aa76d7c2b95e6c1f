// SpendGuard: the --max_creates_per_hour cap. At most `max_per_hour` new
// vendor creates start in any sliding hour (0: no cap). A create that
// surely created nothing (refused, never sent) gives its place back;
// repeats of a known request_id never take one.
//
// Implementations: MemorySpendGuard (one sidecar's count, below) and, in
// fleet mode, the fleet's count in Redis (server/fleet/redis_spend_guard.h).
// A guard that cannot count (Redis down) answers UNAVAILABLE, never "a
// place": the cap must hold. Thread-safe.
#ifndef VIDEOTASK_SERVER_CREATE_SPEND_GUARD_H_
#define VIDEOTASK_SERVER_CREATE_SPEND_GUARD_H_

#include <cstdint>
#include <optional>
#include <set>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/base/clock.h"

namespace videotask {

class SpendGuard {
 public:
  // One place taken: when (on the guard's own scale) and, for a shared
  // guard, which entry it is.
  struct Ticket {
    absl::Time taken;
    std::string id;
  };
  virtual ~SpendGuard() = default;

  // A place for one create now, or nullopt when the last hour is full.
  // UNAVAILABLE when the count cannot be reached (nothing may be sent).
  virtual absl::StatusOr<std::optional<Ticket>> Take() = 0;
  // That create created nothing: its place is free again (best effort).
  virtual void GiveBack(const Ticket& ticket) = 0;
  virtual int64_t max_per_hour() const = 0;
};

// One sidecar's count, measured on the clock's Monotonic() reading.
class MemorySpendGuard : public SpendGuard {
 public:
  MemorySpendGuard(int64_t max_per_hour, Clock* clock) : max_(max_per_hour), clock_(clock) {}

  absl::StatusOr<std::optional<Ticket>> Take() override;
  void GiveBack(const Ticket& ticket) override;
  int64_t max_per_hour() const override { return max_; }

 private:
  const int64_t max_;
  Clock* const clock_;
  absl::Mutex mu_;
  std::multiset<absl::Time> taken_ ABSL_GUARDED_BY(mu_);
};

}  // namespace videotask

#endif  // VIDEOTASK_SERVER_CREATE_SPEND_GUARD_H_
