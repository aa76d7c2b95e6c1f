// CheckCommandLineFlags: validates the flags in argv against the registered
// Abseil flags before absl::ParseCommandLine runs. ParseCommandLine exits
// with code 1 on an unknown flag or a bad value, and 1 means something else
// to the callers of our binaries (the CLI's "video failed"); with this check
// first, a binary can exit with its own usage code instead.
//
// Returns OK, or INVALID_ARGUMENT naming the first unknown flag, bad value or
// missing value. Leaves every flag's value as it was. Abseil's own flags
// (--help, --flagfile, ...) and everything after "--" are left to
// ParseCommandLine.
#ifndef VIDEOTASK_SERVER_BASE_COMMAND_LINE_H_
#define VIDEOTASK_SERVER_BASE_COMMAND_LINE_H_

#include "absl/status/status.h"

namespace videotask {

absl::Status CheckCommandLineFlags(int argc, char** argv);

}  // namespace videotask

#endif  // VIDEOTASK_SERVER_BASE_COMMAND_LINE_H_
