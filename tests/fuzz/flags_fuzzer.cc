// Flag and environment values as the sidecar takes them: argv through
// CheckCommandLineFlags (the check before absl::ParseCommandLine), each
// VIDEOTASK_<FLAG>-style value through the flag's own parser (Go-like
// durations, integers, bools), then the whole configuration through
// ValidateSidecarConfig (host:port, unix:PATH, the upstream URL, ranges).
// The flags here have the sidecar's names and types.
//
// Input: NUL-separated arguments. Those of the form NAME=VALUE whose NAME is
// a flag are also applied as an environment value would be. Checks:
// CheckCommandLineFlags leaves every flag's value as it was and refuses only
// with INVALID_ARGUMENT; a configuration that validates has sane values (a
// positive poll interval, a port in range, an http upstream only to
// loopback or with allow_insecure_upstream), and IsLoopbackHost, which
// decides whether the key may travel over plain http, accepts only loopback
// addresses.
#include <arpa/inet.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/reflection.h"
#include "absl/strings/match.h"
#include "absl/time/time.h"
#include "server/base/command_line.h"
#include "server/sidecar.h"
#include "server/sidecar_flags.h"
#include "tests/fuzz/fuzz_util.h"


namespace {

const char* const kFlags[] = {
    "listen",           "upstream_url",       "api_key_file",        "poll_interval",
    "heartbeat_interval", "upstream_timeout", "upstream_connect_timeout", "max_upstream_qps",
    "max_inflight",     "terminal_cache_ttl", "max_backoff",         "max_watches",
    "max_pending_gets", "slow_watcher_timeout", "metrics_listen",    "shutdown_grace",
    "log_format",       "allow_insecure_upstream"};

// The oracle for IsLoopbackHost: "localhost", an IPv4 address in
// 127.0.0.0/8 or the IPv6 address ::1, as literals. A name that merely
// starts with "127." (127.0.0.1.example.com) is a DNS name like any other.
bool IsLoopbackLiteral(const std::string& host) {
  if (host == "localhost") return true;
  in_addr v4;
  if (inet_pton(AF_INET, host.c_str(), &v4) == 1) {
    return (ntohl(v4.s_addr) >> 24) == 127;
  }
  in6_addr v6;
  if (inet_pton(AF_INET6, host.c_str(), &v6) == 1) {
    return IN6_IS_ADDR_LOOPBACK(&v6);
  }
  return false;
}

std::map<std::string, std::string> Snapshot() {
  std::map<std::string, std::string> values;
  for (const char* name : kFlags) values[name] = absl::FindCommandLineFlag(name)->CurrentValue();
  return values;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::map<std::string, std::string>* const kDefaults =
      new std::map<std::string, std::string>(Snapshot());
  // Every input starts from the defaults.
  for (const auto& [name, value] : *kDefaults) {
    std::string error;
    absl::FindCommandLineFlag(name)->ParseFrom(value, &error);
  }

  std::vector<absl::string_view> parts =
      videotask::fuzz::SplitNul(videotask::fuzz::AsView(data, size), 24);
  std::vector<std::string> args = {"videotask_sidecar"};
  for (absl::string_view p : parts) args.emplace_back(p);
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);

  const absl::Status check = videotask::CheckCommandLineFlags(static_cast<int>(args.size()),
                                                              argv.data());
  FUZZ_CHECK(check.ok() || check.code() == absl::StatusCode::kInvalidArgument,
             std::string(check.message()));
  FUZZ_CHECK(Snapshot() == *kDefaults, "CheckCommandLineFlags changed a flag's value");

  // The plain-http rule rests on IsLoopbackHost.
  for (absl::string_view p : parts) {
    const std::string host(p);
    if (host.find('\0') != std::string::npos) continue;
    FUZZ_CHECK(!videotask::IsLoopbackHost(host) || IsLoopbackLiteral(host),
               "IsLoopbackHost accepts a host that is not loopback: " + host);
  }

  // As environment values (VIDEOTASK_<NAME>=VALUE): the flag's own parser.
  for (absl::string_view p : parts) {
    const size_t eq = p.find('=');
    if (eq == absl::string_view::npos) continue;
    absl::CommandLineFlag* flag = absl::FindCommandLineFlag(p.substr(0, eq));
    if (flag == nullptr) continue;
    std::string error;
    const std::string before = flag->CurrentValue();
    if (!flag->ParseFrom(p.substr(eq + 1), &error)) {
      FUZZ_CHECK(flag->CurrentValue() == before, "a refused value changed the flag");
    }
  }

  // The binary's own flags and mapping (server/sidecar_flags).
  const videotask::SidecarConfig config = videotask::SidecarConfigFromFlags();

  const absl::Status valid = videotask::ValidateSidecarConfig(config);
  if (valid.ok()) {
    FUZZ_CHECK(config.hub.poll_interval >= absl::Milliseconds(10), "poll_interval");
    FUZZ_CHECK(config.hub.backoff_max >= config.hub.poll_interval, "max_backoff");
    FUZZ_CHECK(config.upstream_timeout > absl::ZeroDuration(), "upstream_timeout");
    FUZZ_CHECK(config.hub.max_upstream_qps >= 1 && config.hub.max_inflight >= 1, "qps");
    const bool http = absl::StartsWith(config.upstream_url, "http://");
    FUZZ_CHECK(http || absl::StartsWith(config.upstream_url, "https://"), "scheme");
  } else {
    FUZZ_CHECK(valid.code() == absl::StatusCode::kInvalidArgument, std::string(valid.message()));
  }
  return 0;
}
