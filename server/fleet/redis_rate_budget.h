// RedisRateBudget: one upstream rate budget shared by every sidecar of a
// fleet, plus the fleet-wide 429 pause.
//
// GCRA (generic cell rate algorithm) in one Lua script (RedisScript:
// EVALSHA, SCRIPT LOAD on NOSCRIPT), with Redis `TIME` as the only clock, so
// sidecars' clocks never matter. State: the theoretical arrival time in
// microseconds at FleetKeys::RateKey(), with a TTL in ms rounded up so an
// idle fleet leaves nothing behind. With burst 1 (the default) grants are at
// least 1/rate apart: never more than rate + 1 in any one-second window.
//
// The pause (FleetKeys::PauseKey()) is honoured by the same script: while it
// exists every Acquire is denied with retry_after = its remaining PTTL.
// Pause(d) sets it to d unless it already has more left (it only extends).
//
// Error contract: `done` gets zero (granted), a positive duration (denied:
// ask again after it), or the RedisClient's transport error (UNAVAILABLE,
// DEADLINE_EXCEEDED, CANCELLED), or INTERNAL for an unexpected reply; on any
// error the caller falls back to its local limits. `done` runs on the
// client's thread, never inline. Thread-safe.
#ifndef VIDEOTASK_SERVER_FLEET_REDIS_RATE_BUDGET_H_
#define VIDEOTASK_SERVER_FLEET_REDIS_RATE_BUDGET_H_

#include <string>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "server/fleet/fleet_keys.h"
#include "server/fleet/redis_client.h"
#include "server/fleet/redis_script.h"

namespace videotask::fleet {

class RedisRateBudget {
 public:
  struct Options {
    double rate_per_second = 5;  // > 0, at most 1e6
    int burst = 1;               // grants allowed back to back, >= 1
  };
  using AcquireDone = absl::AnyInvocable<void(absl::StatusOr<absl::Duration>)>;
  using PauseDone = absl::AnyInvocable<void(absl::Status)>;

  // `client` must outlive this.
  RedisRateBudget(RedisClient* client, const FleetKeys& keys, Options options);

  void Acquire(AcquireDone done);
  void Pause(absl::Duration duration, PauseDone done = nullptr);

 private:
  RedisClient* const client_;
  const std::string rate_key_;
  const std::string pause_key_;
  const std::string interval_us_;
  const std::string tolerance_us_;
  const RedisScript acquire_;
  const RedisScript pause_;
};

}  // namespace videotask::fleet

#endif  // VIDEOTASK_SERVER_FLEET_REDIS_RATE_BUDGET_H_
