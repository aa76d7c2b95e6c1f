// The README's run command: the real sidecar (gRPC server, poll hub, libcurl
// upstream client) against the built-in simulated upstream on loopback, and a
// client that creates a video with CreateVideoTask (twice with one
// request_id: one vendor create), then watches it to completion, printing
// every event as it arrives. With --task=ID it watches that id instead.
// Everything runs in this process; nothing leaves the machine.
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "google/protobuf/util/json_util.h"
#include "plugin/client.h"
#include "server/sidecar.h"
#include "tests/sim/sim_upstream.h"

ABSL_FLAG(std::string, task, "",
          "Task id to watch instead of creating one: demo-completes, demo-fails, or any other "
          "id (served with a default lifecycle). Empty: create one, then watch it.");
ABSL_FLAG(absl::Duration, poll_interval, absl::Seconds(1),
          "The sidecar's poll interval (the vendor asks for 30s; the demo is quicker).");
ABSL_FLAG(absl::Duration, heartbeat_interval, absl::Milliseconds(1500),
          "The sidecar's heartbeat interval.");

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  const std::string key = "demo-key";  // the simulated upstream's key; not a secret
  setenv("VIDEOTASK_DEMO_KEY", key.c_str(), 1);

  videotask::sim::SimUpstream::Options sim_options;
  sim_options.api_key = key;
  sim_options.serve_unknown_ids = true;
  sim_options.default_script.queued_polls = 1;
  sim_options.default_script.processing_polls = 2;
  auto sim = videotask::sim::SimUpstream::Start(sim_options);
  if (!sim.ok()) {
    std::cerr << "demo: cannot start the simulated upstream: " << sim.status() << "\n";
    return 1;
  }
  videotask::sim::TaskScript completes;
  completes.queued_polls = 2;
  completes.processing_polls = 3;
  completes.video_url = "https://cdn.invalid/videos/demo-completes.mp4";
  completes.actual_duration = 8.0;
  (*sim)->SetTask("demo-completes", completes);
  videotask::sim::TaskScript fails;
  fails.fails = true;
  fails.error = "unsupported reference material";
  (*sim)->SetTask("demo-fails", fails);

  videotask::SidecarConfig config;
  config.listen = "127.0.0.1:0";
  config.metrics_listen = "127.0.0.1:0";
  config.upstream_url = (*sim)->base_url();
  config.api_key_env = "VIDEOTASK_DEMO_KEY";
  config.hub.poll_interval = absl::GetFlag(FLAGS_poll_interval);
  config.hub.heartbeat_interval = absl::GetFlag(FLAGS_heartbeat_interval);
  config.hub.backoff_max = std::max(absl::Seconds(10), config.hub.poll_interval);
  auto sidecar = videotask::Sidecar::Start(config);
  if (!sidecar.ok()) {
    std::cerr << "demo: cannot start the sidecar: " << sidecar.status() << "\n";
    return 1;
  }
  std::string task = absl::GetFlag(FLAGS_task);
  std::cout << "demo: sidecar on " << (*sidecar)->target() << ", simulated upstream on "
            << (*sim)->base_url() << ", metrics on http://127.0.0.1:" << (*sidecar)->metrics_port()
            << "/metrics" << std::endl;

  const absl::Time start = absl::Now();
  auto client = videotask::VideoTaskClient::Create((*sidecar)->target());
  if (task.empty()) {
    const std::string body_json =
        R"({"model":"videos","prompt":"a paper boat on a rainy street","duration":10,)"
        R"("ratio":"16:9","resolution":"720p"})";
    google::protobuf::Struct body;
    (void)google::protobuf::util::JsonStringToMessage(body_json, &body);
    for (int attempt = 1; attempt <= 2; ++attempt) {
      absl::StatusOr<videotask::v1::VideoTask> created =
          client->Create("demo-request-1", "videos", body, absl::Seconds(30));
      if (!created.ok()) {
        std::cout << "demo: CreateVideoTask failed: " << created.status() << "\n";
        return 1;
      }
      std::string json;
      (void)google::protobuf::util::MessageToJsonString(*created, &json);
      std::cout << "demo: CreateVideoTask(request_id=demo-request-1, family=videos) #" << attempt
                << " -> " << json << " (vendor creates so far: " << (*sim)->CreatedCount()
                << ")" << std::endl;
      task = created->id();
    }
  }
  std::cout << "demo: WatchVideoTask(" << task << "), one line per event:" << std::endl;
  videotask::AwaitOptions options;
  options.timeout = absl::Minutes(2);
  options.on_event = [start](const videotask::v1::WatchVideoTaskResponse& e) {
    std::string json;
    (void)google::protobuf::util::MessageToJsonString(e, &json);
    std::cout << absl::StrFormat("+%5.1fs ", absl::ToDoubleSeconds(absl::Now() - start)) << json
              << std::endl;
  };
  absl::StatusOr<videotask::v1::VideoTask> result = client->Await(task, options);
  int rc = 0;
  if (!result.ok()) {
    std::cout << "demo: watch ended with " << result.status() << "\n";
    rc = 1;
  } else {
    std::cout << "demo: task " << result->id() << " finished as "
              << videotask::v1::VideoTaskStatus_Name(result->status()) << " after "
              << (*sim)->RequestCount(task) << " upstream polls\n";
  }
  (*sidecar)->Shutdown(absl::Seconds(1));
  return rc;
}
