// UpstreamBudget: the local vendor budget (the sliding one-second rate
// window, the in-flight cap and the 429 pause) as seen by upstream requests
// that the poll hub does not make itself (creates). The poll hub implements
// it, so those requests take their slots from the same window as polls and
// a 429 any of them gets pauses all of them; nothing is copied.
//
// Contract: every Acquire() that returns zero must be followed by exactly
// one Release() when that request has ended. Both are thread-safe, never
// block, and never call back into the caller.
#ifndef VIDEOTASK_SERVER_HUB_UPSTREAM_BUDGET_H_
#define VIDEOTASK_SERVER_HUB_UPSTREAM_BUDGET_H_

#include <optional>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace videotask {

class UpstreamBudget {
 public:
  virtual ~UpstreamBudget() = default;
  // Takes a slot for one request starting now: zero when taken, else how
  // long to wait before asking again (a 429 pause, a full rate window or
  // in-flight cap). UNAVAILABLE while the sidecar drains.
  virtual absl::StatusOr<absl::Duration> Acquire() = 0;
  // The admitted request has ended. `rate_limited`: the vendor answered 429
  // (with `retry_after` when it sent a valid one), which pauses every
  // upstream request as a poll's 429 does.
  virtual void Release(bool rate_limited, std::optional<absl::Duration> retry_after) = 0;
};

}  // namespace videotask

#endif  // VIDEOTASK_SERVER_HUB_UPSTREAM_BUDGET_H_
