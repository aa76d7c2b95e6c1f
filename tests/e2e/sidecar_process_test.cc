// End-to-end tests of the real videotask_sidecar process: start-up checks,
// environment configuration, SIGTERM drain, and that the API key never
// appears in its output.
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "proto/videotask/v1/video_task.grpc.pb.h"
#include "tests/sim/sim_upstream.h"
#include "tests/testing/listeners.h"
#include "tests/testing/subprocess.h"

namespace videotask {
namespace {

using testing::ConnectProbe;
using testing::FreePort;
using testing::ListenOn;
using testing::PortOf;
using testing::Runfile;
using testing::Subprocess;

constexpr char kKey[] = "sk-proc-SECRET-91c2e";

std::string Sidecar() { return Runfile("server/videotask_sidecar"); }

// The gRPC target from the start-up line, text (grpc_target=HOST:PORT) or
// JSON ("grpc_target":"HOST:PORT").
std::string TargetFrom(const std::string& log) {
  size_t at = log.find("grpc_target");
  if (at == std::string::npos) return "";
  at += sizeof("grpc_target") - 1;
  while (at < log.size() && (log[at] == '=' || log[at] == '"' || log[at] == ':')) ++at;
  const size_t end = log.find_first_of(" \"\n", at);
  return log.substr(at, end - at);
}

class SidecarProcessTest : public ::testing::Test {
 protected:
  void SetUp() override {
    sim::SimUpstream::Options o;
    o.api_key = kKey;
    auto sim = sim::SimUpstream::Start(o);
    ASSERT_TRUE(sim.ok());
    sim_ = std::move(*sim);
    key_file_ = absl::StrCat(std::getenv("TEST_TMPDIR"), "/api-key");
    std::ofstream(key_file_) << kKey << "\n";
  }

  std::vector<std::string> Args(std::vector<std::string> extra = {}) {
    std::vector<std::string> a = {Sidecar(),
                                  "--listen=127.0.0.1:0",
                                  "--metrics_listen=127.0.0.1:0",
                                  absl::StrCat("--upstream_url=", sim_->base_url()),
                                  absl::StrCat("--api_key_file=", key_file_),
                                  "--poll_interval=200ms",
                                  "--heartbeat_interval=300ms",
                                  "--shutdown_grace=2s"};
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  }

  std::unique_ptr<sim::SimUpstream> sim_;
  std::string key_file_;
};

TEST_F(SidecarProcessTest, SigtermEndsWatchesWithUnavailableAndExitsZeroWithinGrace) {
  auto p = Subprocess::Start(Args());
  ASSERT_TRUE(p.ok()) << p.status();
  ASSERT_TRUE(p->WaitForStderr("sidecar_started", absl::Seconds(10))) << p->Stderr();
  const std::string target = TargetFrom(p->Stderr());
  sim::TaskScript hold;
  hold.advances = false;
  sim_->SetTask("long", hold);
  auto stub = v1::VideoTaskService::NewStub(
      grpc::CreateChannel(target, grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  v1::WatchVideoTaskRequest req;
  req.set_id("long");
  auto reader = stub->WatchVideoTask(&ctx, req);
  v1::WatchVideoTaskResponse msg;
  ASSERT_TRUE(reader->Read(&msg));
  EXPECT_EQ(msg.type(), v1::WatchVideoTaskResponse::EVENT_TYPE_SNAPSHOT);
  const absl::Time sent = absl::Now();
  p->Signal(SIGTERM);
  while (reader->Read(&msg)) {
  }
  const grpc::Status st = reader->Finish();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE) << st.error_message();
  std::optional<int> code = p->Wait(absl::Seconds(5));
  ASSERT_TRUE(code.has_value()) << "still running after SIGTERM";
  EXPECT_EQ(*code, 0);
  EXPECT_LT(absl::Now() - sent, absl::Seconds(2));
  EXPECT_TRUE(absl::StrContains(p->Stderr(), "drain")) << p->Stderr();
}

TEST_F(SidecarProcessTest, RefusesPlainHttpToARemoteHost) {
  auto p = Subprocess::Start(
      {Sidecar(), "--upstream_url=http://videos.example.invalid/v1", "--metrics_listen="},
      {{"VIDEOTASK_API_KEY", kKey}});
  ASSERT_TRUE(p.ok());
  std::optional<int> code = p->Wait(absl::Seconds(10));
  ASSERT_TRUE(code.has_value());
  EXPECT_NE(*code, 0);
  const std::string err = p->Stderr();
  EXPECT_TRUE(absl::StrContains(err, "clear text")) << err;
  EXPECT_EQ(std::count(err.begin(), err.end(), '\n'), 1) << "one clear line: " << err;
}

TEST_F(SidecarProcessTest, AllowInsecureUpstreamStartsButSaysSoLoudly) {
  auto p = Subprocess::Start({Sidecar(), "--listen=127.0.0.1:0", "--metrics_listen=",
                              "--upstream_url=http://videos.example.invalid/v1",
                              "--allow_insecure_upstream"},
                             {{"VIDEOTASK_API_KEY", kKey}});
  ASSERT_TRUE(p.ok());
  ASSERT_TRUE(p->WaitForStderr("insecure_upstream", absl::Seconds(10))) << p->Stderr();
  EXPECT_TRUE(absl::StrContains(p->Stderr(), "ERROR"));
  p->Signal(SIGTERM);
  EXPECT_EQ(p->Wait(absl::Seconds(5)), 0);
}

TEST_F(SidecarProcessTest, BadConfigurationExitsNonZeroWithOneLine) {
  for (const std::vector<std::string>& extra :
       {std::vector<std::string>{"--max_upstream_qps=0"},
        std::vector<std::string>{"--poll_interval=-1s"}, std::vector<std::string>{"--listen=nope"},
        std::vector<std::string>{"--log_format=xml"},
        std::vector<std::string>{"--api_key_file=/nonexistent/key"},
        std::vector<std::string>{"--poll_interval=soon"},
        std::vector<std::string>{"--no_such_flag=1"}}) {
    auto p = Subprocess::Start(Args(extra));
    ASSERT_TRUE(p.ok());
    std::optional<int> code = p->Wait(absl::Seconds(10));
    ASSERT_TRUE(code.has_value()) << extra[0];
    EXPECT_EQ(*code, 2) << extra[0];
    const std::string err = p->Stderr();
    EXPECT_EQ(std::count(err.begin(), err.end(), '\n'), 1) << extra[0] << ": " << err;
  }
  // No key anywhere.
  auto p = Subprocess::Start({Sidecar(), "--metrics_listen="}, {{"VIDEOTASK_API_KEY", ""}});
  ASSERT_TRUE(p.ok());
  EXPECT_NE(p->Wait(absl::Seconds(10)), 0);
  EXPECT_TRUE(absl::StrContains(p->Stderr(), "API key")) << p->Stderr();
}

TEST_F(SidecarProcessTest, EnvironmentSetsFlagsAndFlagsWin) {
  // A bad value in the environment names its variable.
  auto bad = Subprocess::Start(Args(), {{"VIDEOTASK_MAX_INFLIGHT", "many"}});
  ASSERT_TRUE(bad.ok());
  EXPECT_NE(bad->Wait(absl::Seconds(10)), 0);
  EXPECT_TRUE(absl::StrContains(bad->Stderr(), "VIDEOTASK_MAX_INFLIGHT")) << bad->Stderr();
  // The environment configures; the command line overrides it.
  auto p = Subprocess::Start(
      {Sidecar(), "--listen=127.0.0.1:0", "--metrics_listen=", "--max_inflight=7"},
      {{"VIDEOTASK_UPSTREAM_URL", sim_->base_url()},
       {"VIDEOTASK_API_KEY", kKey},
       {"VIDEOTASK_MAX_INFLIGHT", "3"},
       {"VIDEOTASK_LOG_FORMAT", "json"},
       {"VIDEOTASK_POLL_INTERVAL", "250ms"}});
  ASSERT_TRUE(p.ok());
  ASSERT_TRUE(p->WaitForStderr("sidecar_started", absl::Seconds(10))) << p->Stderr();
  const std::string err = p->Stderr();
  EXPECT_TRUE(absl::StrContains(err, "\"event\":\"sidecar_started\"")) << err;
  EXPECT_TRUE(absl::StrContains(err, "\"max_inflight\":\"7\"")) << err;
  EXPECT_TRUE(absl::StrContains(err, "\"poll_interval\":\"250ms\"")) << err;
  EXPECT_TRUE(absl::StrContains(err, sim_->base_url())) << err;
  p->Signal(SIGTERM);
  EXPECT_EQ(p->Wait(absl::Seconds(5)), 0);
}

TEST_F(SidecarProcessTest, HelpDocumentsEveryFlag) {
  auto p = Subprocess::Start({Sidecar(), "--help"});
  ASSERT_TRUE(p.ok());
  p->Wait(absl::Seconds(10));
  const std::string help = p->Stdout() + p->Stderr();
  for (const char* flag :
       {"--listen", "--upstream_url", "--api_key_file", "--poll_interval", "--heartbeat_interval",
        "--upstream_timeout", "--max_upstream_qps", "--max_inflight", "--terminal_cache_ttl",
        "--metrics_listen", "--shutdown_grace", "--log_format", "--allow_insecure_upstream",
        "--max_watches", "VIDEOTASK_API_KEY"}) {
    EXPECT_TRUE(absl::StrContains(help, flag)) << flag;
  }
}

TEST_F(SidecarProcessTest, TheKeyNeverAppearsInAnyOutput) {
  for (const char* format : {"text", "json"}) {
    auto p = Subprocess::Start(Args({absl::StrCat("--log_format=", format)}));
    ASSERT_TRUE(p.ok());
    ASSERT_TRUE(p->WaitForStderr("sidecar_started", absl::Seconds(10))) << p->Stderr();
    const std::string target = TargetFrom(p->Stderr());
    auto stub = v1::VideoTaskService::NewStub(
        grpc::CreateChannel(target, grpc::InsecureChannelCredentials()));
    // Every kind of upstream trouble, each of which is logged.
    sim::TaskScript s;
    sim_->SetTask("ok", s);
    for (auto kind : {sim::FaultKind::kServerError, sim::FaultKind::kHtml,
                      sim::FaultKind::kRateLimit, sim::FaultKind::kUnauthorized}) {
      sim::Fault f;
      f.kind = kind;
      f.retry_after_header = "0";
      sim_->InjectFault("ok", f);
    }
    for (const char* id : {"ok", "missing"}) {
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
      v1::WatchVideoTaskRequest req;
      req.set_id(id);
      auto reader = stub->WatchVideoTask(&ctx, req);
      v1::WatchVideoTaskResponse msg;
      while (reader->Read(&msg)) {
      }
      const grpc::Status st = reader->Finish();
      EXPECT_FALSE(absl::StrContains(st.error_message(), kKey));
    }
    p->Signal(SIGTERM);
    EXPECT_EQ(p->Wait(absl::Seconds(5)), 0);
    const std::string out = p->Stdout() + p->Stderr();
    EXPECT_TRUE(absl::StrContains(out, "upstream_error")) << out;
    EXPECT_TRUE(absl::StrContains(out, "upstream_rejected_credentials")) << out;
    EXPECT_FALSE(absl::StrContains(out, kKey)) << out;
    EXPECT_FALSE(absl::StrContains(out, "SECRET")) << out;
  }
}

TEST_F(SidecarProcessTest, TakenMetricsPortExitsWithOneLineAndNeverOpensTheGrpcPort) {
  const int taken = ListenOn(0);
  ASSERT_GE(taken, 0);
  const int metrics_port = PortOf(taken);
  const int grpc_port = FreePort();
  // Connects to the gRPC port as fast as possible while the process lives.
  ConnectProbe probe(grpc_port);
  auto p = Subprocess::Start({Sidecar(), absl::StrCat("--listen=127.0.0.1:", grpc_port),
                              absl::StrCat("--metrics_listen=127.0.0.1:", metrics_port),
                              absl::StrCat("--upstream_url=", sim_->base_url()),
                              absl::StrCat("--api_key_file=", key_file_)});
  std::optional<int> code;
  if (p.ok()) code = p->Wait(absl::Seconds(10));
  probe.Stop();
  ::close(taken);
  ASSERT_TRUE(p.ok()) << p.status();
  ASSERT_TRUE(code.has_value()) << "still running";
  EXPECT_EQ(*code, 2);
  const std::string err = p->Stderr();
  EXPECT_EQ(std::count(err.begin(), err.end(), '\n'), 1) << "one clear line: " << err;
  EXPECT_TRUE(absl::StrContains(err, absl::StrCat("--metrics_listen=127.0.0.1:", metrics_port)))
      << err;
  EXPECT_EQ(probe.connects(), 0) << "the gRPC port listened";
}

}  // namespace
}  // namespace videotask
