#include "server/base/clock.h"

#include <chrono>

namespace videotask {

absl::Time RealClock::Monotonic() const {
  return absl::UnixEpoch() + absl::FromChrono(std::chrono::steady_clock::now().time_since_epoch());
}

Clock* RealClock::Get() {
  static RealClock* const clock = new RealClock();
  return clock;
}

}  // namespace videotask
