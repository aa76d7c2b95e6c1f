// RedisSpendGuard: --max_creates_per_hour for a whole fleet. Every new
// vendor create of any sidecar of the fleet takes a place in one sorted set
// in Redis (vt:{<fleet>}:creates-hour: a random member per place, scored by
// Redis TIME in microseconds), so at most `max_per_hour` start in any
// sliding hour across the fleet, whatever the sidecars' clocks say.
//
// Take is one Lua script (drop places older than an hour, count, add): two
// sidecars never both take the last place. GiveBack removes the place (a
// create that surely created nothing), in the background. The set expires
// an hour after its last place, so an idle fleet leaves nothing behind.
// Error contract: Take is UNAVAILABLE while Redis cannot be reached or
// answers an error (never a place: the cap must hold); max_per_hour 0 is
// off (no Redis round trip). Thread-safe; the client must outlive it.
#ifndef VIDEOTASK_SERVER_FLEET_REDIS_SPEND_GUARD_H_
#define VIDEOTASK_SERVER_FLEET_REDIS_SPEND_GUARD_H_

#include <cstdint>
#include <functional>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "server/base/clock.h"
#include "server/create/spend_guard.h"
#include "server/fleet/fleet_keys.h"
#include "server/fleet/redis_client.h"
#include "server/fleet/redis_script.h"

namespace videotask::fleet {

class RedisSpendGuard : public SpendGuard {
 public:
  struct Options {
    int64_t max_per_hour = 0;
    // Tests: the clock the script uses instead of Redis TIME (microseconds).
    std::function<int64_t()> now_us;
  };
  RedisSpendGuard(RedisClient* client, const FleetKeys& keys, Options options, Clock* clock);

  absl::StatusOr<std::optional<Ticket>> Take() override;
  void GiveBack(const Ticket& ticket) override;
  int64_t max_per_hour() const override { return options_.max_per_hour; }

  const std::string& key() const { return key_; }

 private:
  RedisClient* const client_;
  const std::string key_;
  const Options options_;
  Clock* const clock_;
  const RedisScript take_;
};

}  // namespace videotask::fleet

#endif  // VIDEOTASK_SERVER_FLEET_REDIS_SPEND_GUARD_H_
