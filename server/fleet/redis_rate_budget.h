// RedisRateBudget: one upstream rate budget shared by every sidecar of a
// fleet, plus the fleet-wide 429 pause.
//
// GCRA (generic cell rate algorithm) in one Lua script (RedisScript:
// EVALSHA, SCRIPT LOAD on NOSCRIPT), with Redis `TIME` as the only clock, so
// sidecars' clocks never matter. State: the theoretical arrival time in
// microseconds at FleetKeys::RateKey(), with a TTL in ms rounded up so an
// idle fleet leaves nothing behind.
//
// The bound at the vendor. A grant is not an arrival: the request reaches
// the vendor some lag later (the grant's way back from Redis, the hub, a
// connect and TLS handshake), and lags differ, so arrivals can bunch closer
// than grants. With burst 1 (the default) grants are spaced by
// (1 s + arrival_margin) / rate plus 1 us, so any closed window of
// 1 s + arrival_margin holds at most `rate` grants; hence while the lags of
// requests differ by at most arrival_margin, the vendor sees at most `rate`
// of the fleet's requests in any closed one-second window (not rate + 1,
// the bound of plain 1/rate spacing). The cost: the fleet spends at most
// rate / (1 + arrival_margin) requests a second (4 at rate 5 and 250 ms).
// A request that lags more can add one more to a second: the local window
// (PollHub: a slot held from start to 1 s after the end) still bounds each
// pod on its own.
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

#include <cstdint>
#include <functional>
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
    // Spread of grant-to-arrival lags the bound tolerates (see above), >= 0.
    absl::Duration arrival_margin = absl::Milliseconds(250);
    // Tests: the clock the script uses instead of Redis TIME (microseconds).
    std::function<int64_t()> now_us;
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
  const std::function<int64_t()> now_us_;
  const RedisScript acquire_;
  const RedisScript pause_;
};

}  // namespace videotask::fleet

#endif  // VIDEOTASK_SERVER_FLEET_REDIS_RATE_BUDGET_H_
