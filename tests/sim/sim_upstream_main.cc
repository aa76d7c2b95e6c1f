// The simulated upstream as a standalone process, for scripts and tests in
// other languages. Prints `SIM_UPSTREAM_PORT=<port>` once listening, is
// controlled over HTTP under /_sim/ (see sim_upstream.h), and exits 0 on
// SIGTERM or SIGINT.
//
//   sim_upstream_server --port=0 --api_key=sim-key --scenario=demo

#include <pthread.h>
#include <signal.h>

#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "tests/sim/sim_upstream.h"

ABSL_FLAG(std::string, host, "127.0.0.1", "Address to listen on.");
ABSL_FLAG(int, port, 0, "Port to listen on; 0 picks a free one (printed).");
ABSL_FLAG(std::string, api_key, "sim-key",
          "The Bearer key requests must carry. When not given, "
          "$VIDEOTASK_SIM_API_KEY if set.");
ABSL_FLAG(std::string, scenario, "demo",
          "demo: tasks demo-completes and demo-fails, unknown ids run "
          "queued 1 poll / processing 2 polls / completed; empty: nothing "
          "scripted, unknown ids are 404.");
ABSL_FLAG(int, threads, 16, "HTTP worker threads.");
ABSL_FLAG(bool, verbose, false, "Log each request to stderr.");
ABSL_FLAG(bool, video_urls_on_sim, false,
          "Completed tasks without a scripted video_url point at this sim's "
          "video host (http://HOST:PORT/videos/{id}.mp4) instead of cdn.invalid.");

namespace {

using videotask::sim::SimUpstream;
using videotask::sim::TaskScript;

// Whether argv sets --name (or -name), before absl parses it.
bool FlagGiven(int argc, char** argv, absl::string_view name) {
  for (int i = 1; i < argc; ++i) {
    absl::string_view arg = argv[i];
    if (arg == "--") break;
    if (!absl::ConsumePrefix(&arg, "--") && !absl::ConsumePrefix(&arg, "-")) continue;
    if (arg == name || absl::StartsWith(arg, absl::StrCat(name, "="))) return true;
  }
  return false;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "A simulated video-generation upstream on loopback (GET "
      "/kyyReactApiServer/v1/result/{id}) with an HTTP control API under /_sim/.");
  const bool api_key_given = FlagGiven(argc, argv, "api_key");
  absl::ParseCommandLine(argc, argv);

  // Signals are taken by sigwait below; block them before any thread starts
  // so that every thread inherits the mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  SimUpstream::Options options;
  options.host = absl::GetFlag(FLAGS_host);
  options.port = absl::GetFlag(FLAGS_port);
  options.api_key = absl::GetFlag(FLAGS_api_key);
  if (!api_key_given) {
    if (const char* env = std::getenv("VIDEOTASK_SIM_API_KEY"); env != nullptr && *env != '\0') {
      options.api_key = env;
    }
  }
  options.threads = absl::GetFlag(FLAGS_threads);
  options.log_requests = absl::GetFlag(FLAGS_verbose);
  options.video_urls_on_sim = absl::GetFlag(FLAGS_video_urls_on_sim);
  if (options.port < 0 || options.port > 65535) {
    std::cerr << "sim_upstream_server: --port must be in [0, 65535]\n";
    return 2;
  }
  if (options.threads < 1) {
    std::cerr << "sim_upstream_server: --threads must be at least 1\n";
    return 2;
  }
  if (options.api_key.empty()) {
    std::cerr << "sim_upstream_server: the api key must not be empty\n";
    return 2;
  }

  const std::string scenario = absl::GetFlag(FLAGS_scenario);
  std::vector<std::pair<std::string, TaskScript>> tasks;
  if (scenario == "demo") {
    options.serve_unknown_ids = true;
    options.default_script.queued_polls = 1;
    options.default_script.processing_polls = 2;
    TaskScript completes;
    completes.queued_polls = 2;
    completes.processing_polls = 3;
    completes.video_url = "https://cdn.invalid/videos/demo-completes.mp4";
    completes.actual_duration = 8.0;
    tasks.emplace_back("demo-completes", completes);
    TaskScript fails;
    fails.queued_polls = 1;
    fails.processing_polls = 1;
    fails.fails = true;
    fails.error = "unsupported reference material";
    tasks.emplace_back("demo-fails", fails);
  } else if (scenario != "empty") {
    std::cerr << "sim_upstream_server: unknown --scenario=" << scenario
              << " (demo or empty)\n";
    return 2;
  }

  auto sim = SimUpstream::Start(options);
  if (!sim.ok()) {
    std::cerr << "sim_upstream_server: " << sim.status() << "\n";
    return 1;
  }
  for (const auto& [id, script] : tasks) (*sim)->SetTask(id, script);

  std::printf("SIM_UPSTREAM_PORT=%d\n", (*sim)->port());
  std::fflush(stdout);
  if (options.log_requests) {
    std::cerr << "sim_upstream_server: listening on " << (*sim)->base_url() << " (scenario "
              << scenario << ")\n";
  }

  int sig = 0;
  while (sigwait(&signals, &sig) != 0) {
  }
  if (options.log_requests) std::cerr << "sim_upstream_server: signal " << sig << ", stopping\n";
  sim->reset();
  return 0;
}
