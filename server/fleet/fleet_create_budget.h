// FleetCreateBudget: the UpstreamBudget creates use in fleet mode. A create
// takes the fleet's share first (the fleet-wide 429 pause, then a token of
// --fleet_max_upstream_qps, through FleetPollGate::AcquireForCreate, as a
// poll's admission does), then the local slot (the hub's rate window,
// in-flight cap and 429 pause). Release is the local one, whose 429 the hub
// shares with the fleet (PollGate::RateLimited).
//
// Guarantees: a create is counted by the same fleet budget as polls; while
// Redis is down or faulted the local caps alone apply (as for polls; creates
// themselves then fail earlier, in the key store). A token granted while the
// local slot is refused is spent unused (conservative). Unlike the hub's
// Acquire, this waits for one Redis round trip (bounded by the client's
// command timeout): creates are blocking calls already. Thread-safe.
#ifndef VIDEOTASK_SERVER_FLEET_FLEET_CREATE_BUDGET_H_
#define VIDEOTASK_SERVER_FLEET_FLEET_CREATE_BUDGET_H_

#include <optional>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "server/fleet/fleet_gate.h"
#include "server/hub/upstream_budget.h"

namespace videotask::fleet {

class FleetCreateBudget : public UpstreamBudget {
 public:
  // Both must outlive this.
  FleetCreateBudget(UpstreamBudget* local, FleetPollGate* gate) : local_(local), gate_(gate) {}

  absl::StatusOr<absl::Duration> Acquire() override;
  void Release(bool rate_limited, std::optional<absl::Duration> retry_after) override {
    local_->Release(rate_limited, retry_after);
  }

 private:
  UpstreamBudget* const local_;
  FleetPollGate* const gate_;
};

}  // namespace videotask::fleet

#endif  // VIDEOTASK_SERVER_FLEET_FLEET_CREATE_BUDGET_H_
