#include "server/fleet/fleet_create_budget.h"

#include <memory>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace videotask::fleet {

absl::StatusOr<absl::Duration> FleetCreateBudget::Acquire() {
  struct Call {
    absl::Mutex mu;
    bool done ABSL_GUARDED_BY(mu) = false;
    absl::StatusOr<absl::Duration> wait ABSL_GUARDED_BY(mu);
  };
  auto call = std::make_shared<Call>();
  gate_->AcquireForCreate([call](absl::StatusOr<absl::Duration> wait) {
    absl::MutexLock lock(&call->mu);
    call->wait = std::move(wait);
    call->done = true;
  });
  {
    absl::MutexLock lock(&call->mu);
    call->mu.Await(absl::Condition(&call->done));
    if (call->wait.ok() && *call->wait > absl::ZeroDuration()) return *call->wait;
  }
  // Granted, or Redis failed: the local caps decide.
  return local_->Acquire();
}

}  // namespace videotask::fleet
