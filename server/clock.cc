#include "server/clock.h"

namespace videotask {

Clock* RealClock::Get() {
  static RealClock* const clock = new RealClock();
  return clock;
}

}  // namespace videotask
