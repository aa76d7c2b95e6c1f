// The videotask_sidecar's flags, defined once (with their --help text) for
// the binary and the flags fuzzer. Each can also be set by the environment
// variable VIDEOTASK_<FLAG_IN_CAPS>; a flag on the command line wins.
#ifndef VIDEOTASK_SERVER_SIDECAR_FLAGS_H_
#define VIDEOTASK_SERVER_SIDECAR_FLAGS_H_

#include <string>

#include "absl/flags/declare.h"
#include "absl/status/status.h"
#include "absl/time/time.h"
#include "server/sidecar.h"

// Read by main() itself; the rest become a SidecarConfig.
ABSL_DECLARE_FLAG(absl::Duration, shutdown_grace);
ABSL_DECLARE_FLAG(std::string, log_format);

namespace videotask {

// Sets every flag whose VIDEOTASK_<FLAG> variable is set. Call before
// parsing argv. INVALID_ARGUMENT naming the variable on a bad value.
absl::Status ApplyFlagEnvironment();

// The SidecarConfig the flags describe (check it with ValidateSidecarConfig).
SidecarConfig SidecarConfigFromFlags();

}  // namespace videotask

#endif  // VIDEOTASK_SERVER_SIDECAR_FLAGS_H_
