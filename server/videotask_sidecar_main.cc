// videotask_sidecar: the gRPC sidecar. Flags in sidecar_flags.cc; each can also be set
// by the environment variable VIDEOTASK_<FLAG_IN_CAPS> (a flag given on the
// command line wins). SIGTERM/SIGINT drain and exit 0 within --shutdown_grace.
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/reflection.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "server/base/command_line.h"
#include "server/base/log.h"
#include "server/sidecar.h"
#include "server/sidecar_flags.h"

namespace {

[[noreturn]] void Die(const std::string& message) {
  std::fprintf(stderr, "videotask_sidecar: %s\n", message.c_str());
  std::exit(2);
}

}  // namespace

int main(int argc, char** argv) {
  // --help and --helpshort list the flags of sidecar_flags.cc (absl's
  // default looks only in this file).
  absl::FlagsUsageConfig usage;
  usage.contains_help_flags = [](absl::string_view file) {
    return absl::EndsWith(file, "server/sidecar_flags.cc");
  };
  usage.contains_helpshort_flags = usage.contains_help_flags;
  absl::SetFlagsUsageConfig(usage);
  absl::SetProgramUsageMessage(
      "videotask gRPC sidecar: polls the video vendor once per task and streams status "
      "transitions to every WatchVideoTask caller.\n"
      "Every flag can also be set by VIDEOTASK_<FLAG_IN_CAPS> (flags win); the API key comes "
      "from --api_key_file or VIDEOTASK_API_KEY.\nUsage: videotask_sidecar [flags]");
  // Debian's Abseil is built with absl::Mutex deadlock detection on, which
  // takes a process-wide lock on every Mutex acquisition and destruction
  // (one Mutex per open stream): a profile of a 10,000-watcher fan-out
  // spent 8% in it. Tests keep it on; the production binary turns it off.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  if (absl::Status s = videotask::ApplyFlagEnvironment(); !s.ok()) {
    Die(std::string(s.message()));
  }
  // A bad flag exits 2 like any bad value, not absl's 1.
  if (absl::Status s = videotask::CheckCommandLineFlags(argc, argv); !s.ok()) {
    Die(std::string(s.message()));
  }
  std::vector<char*> rest = absl::ParseCommandLine(argc, argv);
  if (rest.size() > 1) Die(absl::StrCat("unexpected argument: ", rest[1]));

  const std::string log_format = absl::GetFlag(FLAGS_log_format);
  if (log_format == "json") {
    videotask::SetLogFormat(videotask::LogFormat::kJson);
  } else if (log_format != "text") {
    Die("--log_format must be text or json");
  }
  const absl::Duration grace = absl::GetFlag(FLAGS_shutdown_grace);
  if (grace < absl::ZeroDuration()) Die("--shutdown_grace must not be negative");

  videotask::SidecarConfig config = videotask::SidecarConfigFromFlags();

  // Signals are taken by sigwait below; block them before any thread starts.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  std::signal(SIGPIPE, SIG_IGN);

  absl::StatusOr<std::unique_ptr<videotask::Sidecar>> sidecar =
      videotask::Sidecar::Start(config);
  if (!sidecar.ok()) Die(std::string(sidecar.status().message()));

  int sig = 0;
  sigwait(&signals, &sig);
  videotask::LogEvent(videotask::LogLevel::kInfo, "drain",
                      {{"signal", sig == SIGTERM ? "SIGTERM" : "SIGINT"},
                       {"grace", absl::FormatDuration(grace)}});
  (*sidecar)->Shutdown(grace);
  sidecar->reset();
  return 0;
}
