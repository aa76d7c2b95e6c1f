// The `videotask` CLI end to end: the real binary against an in-process
// sidecar and the simulated upstream; every documented exit code.
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "server/sidecar.h"
#include "tests/sim/sim_upstream.h"
#include "tests/testing/listeners.h"
#include "tests/testing/subprocess.h"

namespace videotask {
namespace {

using testing::ClosedPortTarget;
using testing::Runfile;
using testing::SilentListener;
using testing::Subprocess;

class CliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    setenv("VIDEOTASK_CLI_TEST_KEY", "sk-cli-test", 1);
    setenv("VIDEOTASK_CLI_WRONG_KEY", "sk-wrong", 1);
    sim::SimUpstream::Options o;
    o.api_key = "sk-cli-test";
    auto sim = sim::SimUpstream::Start(o);
    ASSERT_TRUE(sim.ok());
    sim_ = std::move(*sim);
    sidecar_ = StartSidecar("VIDEOTASK_CLI_TEST_KEY");
  }

  std::unique_ptr<Sidecar> StartSidecar(const std::string& key_env) {
    SidecarConfig c;
    c.listen = "127.0.0.1:0";
    c.metrics_listen = "";
    c.upstream_url = sim_->base_url();
    c.api_key_env = key_env;
    c.hub.poll_interval = absl::Milliseconds(100);
    c.hub.heartbeat_interval = absl::Milliseconds(150);
    c.hub.max_upstream_qps = 100;
    auto sc = Sidecar::Start(c);
    EXPECT_TRUE(sc.ok()) << sc.status();
    return sc.ok() ? std::move(*sc) : nullptr;
  }

  struct Run {
    int code = -1;
    std::string out, err;
  };
  Run Cli(std::vector<std::string> args, const std::string& target = "") {
    std::vector<std::string> argv = {Runfile("plugin/videotask")};
    argv.insert(argv.end(), args.begin(), args.end());
    auto p = Subprocess::Start(argv, {{"VIDEOTASK_TARGET",
                                       target.empty() ? sidecar_->target() : target}});
    Run r;
    if (!p.ok()) return r;
    auto code = p->Wait(absl::Seconds(30));
    r.code = code.value_or(-1);
    r.out = p->Stdout();
    r.err = p->Stderr();
    return r;
  }

  std::unique_ptr<sim::SimUpstream> sim_;
  std::unique_ptr<Sidecar> sidecar_;
};

TEST_F(CliTest, WatchPrintsJsonLinesAndExitsZeroOnCompletion) {
  sim::TaskScript s;
  s.queued_polls = 1;
  s.processing_polls = 2;
  s.video_url = "https://cdn.invalid/cli.mp4";
  sim_->SetTask("cli-ok", s);
  Run r = Cli({"watch", "cli-ok"});
  EXPECT_EQ(r.code, 0) << r.err;
  std::vector<std::string> lines = absl::StrSplit(r.out, '\n', absl::SkipEmpty());
  ASSERT_GE(lines.size(), 3u);
  std::vector<std::string> changes;
  for (const std::string& line : lines) {
    nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
    ASSERT_FALSE(j.is_discarded()) << line;
    ASSERT_TRUE(j.contains("type") && j.contains("task")) << line;
    if (j["type"] != "EVENT_TYPE_HEARTBEAT") changes.push_back(j["task"]["status"]);
  }
  EXPECT_EQ(changes, (std::vector<std::string>{"VIDEO_TASK_STATUS_QUEUED",
                                               "VIDEO_TASK_STATUS_PROCESSING",
                                               "VIDEO_TASK_STATUS_COMPLETED"}));
  nlohmann::json last = nlohmann::json::parse(lines.back());
  EXPECT_EQ(last["task"]["videoUrl"], "https://cdn.invalid/cli.mp4");
  EXPECT_EQ(last["previousStatus"], "VIDEO_TASK_STATUS_PROCESSING");
  EXPECT_TRUE(r.err.empty()) << "stderr is not a terminal here: no human lines: " << r.err;
}

TEST_F(CliTest, FailedVideoExitsOne) {
  sim::TaskScript s;
  s.fails = true;
  sim_->SetTask("cli-fail", s);
  EXPECT_EQ(Cli({"watch", "cli-fail"}).code, 1);
}

TEST_F(CliTest, UsageAndInvalidIdExitTwo) {
  EXPECT_EQ(Cli({"watch", "../etc"}).code, 2);
  EXPECT_EQ(Cli({"watch"}).code, 2);
  EXPECT_EQ(Cli({"frobnicate", "x"}).code, 2);
  // Flag mistakes too (absl alone would exit 1: "the video failed").
  EXPECT_EQ(Cli({"--no_such_flag", "watch", "cli-ok"}).code, 2);
  EXPECT_EQ(Cli({"--timeout=soon", "watch", "cli-ok"}).code, 2);
  EXPECT_EQ(Cli({"--help"}).code, 0);
  // A bad id is a usage error even when no sidecar answers.
  EXPECT_EQ(Cli({"--target=127.0.0.1:1", "--timeout=1s", "get", "a/b"}).code, 2);
  EXPECT_EQ(sim_->TotalRequests(), 0);
}

TEST_F(CliTest, NotFoundExitsThree) {
  EXPECT_EQ(Cli({"watch", "cli-missing"}).code, 3);
  EXPECT_EQ(Cli({"get", "cli-missing"}).code, 3);
}

TEST_F(CliTest, TimeoutExitsFour) {
  sim::TaskScript hold;
  hold.advances = false;
  sim_->SetTask("cli-hold", hold);
  Run r = Cli({"--timeout=500ms", "watch", "cli-hold"});
  EXPECT_EQ(r.code, 4) << r.err;
  EXPECT_TRUE(absl::StrContains(r.out, "EVENT_TYPE_SNAPSHOT"));
}

TEST_F(CliTest, UnreachableSidecarExitsFive) {
  const std::string closed = ClosedPortTarget();
  Run r = Cli({"--give_up_after=500ms", "watch", "x"}, closed);
  EXPECT_EQ(r.code, 5) << r.err;
  EXPECT_TRUE(absl::StrContains(r.err, "sidecar at " + closed + " unreachable for 500ms")) << r.err;
  EXPECT_EQ(Cli({"--timeout=500ms", "health"}, closed).code, 5);
}

// A sidecar that never answers (TCP accepted, no HTTP/2) or is not there:
// when --timeout ends and no stream was ever opened, every command exits 5
// naming the address, not 4 ("did not finish"), which would send the reader
// to the vendor instead of the pod.
TEST_F(CliTest, TimeoutWithTheSidecarNeverReachedExitsFiveNotFour) {
  SilentListener silent;
  for (const std::string& target : {silent.target(), ClosedPortTarget()}) {
    for (const char* command : {"watch", "get"}) {
      SCOPED_TRACE(absl::StrCat(command, " ", target));
      Run r = Cli({"--timeout=1s", command, "x"}, target);
      EXPECT_EQ(r.code, 5) << r.err;
      EXPECT_TRUE(absl::StrContains(r.err, "sidecar at " + target + " unreachable for 1s"))
          << r.err;
    }
    Run r = Cli({"--timeout=1s", "health"}, target);
    EXPECT_EQ(r.code, 5) << r.err;
    EXPECT_TRUE(absl::StrContains(r.err, "sidecar at " + target + " unreachable for 1s")) << r.err;
  }
  // give_up_after shorter than the timeout ends a wait that never connects.
  Run r = Cli({"--timeout=30s", "--give_up_after=500ms", "watch", "x"}, silent.target());
  EXPECT_EQ(r.code, 5) << r.err;
  EXPECT_TRUE(absl::StrContains(r.err, "unreachable for 500ms")) << r.err;
}

// The other side: a reachable sidecar whose first upstream poll hangs has
// sent nothing when the timeout ends, and that is a timeout (exit 4).
TEST_F(CliTest, TimeoutWithTheSidecarReachableAndTheVendorSlowExitsFour) {
  sim_->SetTask("cli-slow", sim::TaskScript{});
  sim::Fault hang;
  hang.kind = sim::FaultKind::kHang;
  hang.count = -1;
  sim_->InjectFault("cli-slow", hang);
  Run r = Cli({"--timeout=1s", "watch", "cli-slow"});
  EXPECT_EQ(r.code, 4) << r.err;
  EXPECT_FALSE(absl::StrContains(r.err, "unreachable")) << r.err;
  EXPECT_EQ(Cli({"--timeout=-1s", "watch", "cli-slow"}).code, 2);
  EXPECT_EQ(Cli({"--give_up_after=0s", "watch", "cli-slow"}).code, 2);
}

TEST_F(CliTest, RejectedCredentialsExitSix) {
  auto wrong = StartSidecar("VIDEOTASK_CLI_WRONG_KEY");
  sim_->SetTask("cli-key", sim::TaskScript{});
  Run r = Cli({"watch", "cli-key"}, wrong->target());
  EXPECT_EQ(r.code, 6) << r.err;
  EXPECT_FALSE(absl::StrContains(r.out + r.err, "sk-wrong"));
}

TEST_F(CliTest, GetPrintsTheTaskAndHealthChecksTheSidecar) {
  sim_->SetTask("cli-get", sim::TaskScript{});
  Run r = Cli({"get", "cli-get"});
  EXPECT_EQ(r.code, 0) << r.err;
  nlohmann::json j = nlohmann::json::parse(r.out, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << r.out;
  EXPECT_EQ(j["id"], "cli-get");
  EXPECT_EQ(j["status"], "VIDEO_TASK_STATUS_QUEUED");
  EXPECT_EQ(Cli({"health"}).code, 0);
  sidecar_->Drain();
  EXPECT_EQ(Cli({"health"}).code, 5) << "NOT_SERVING while draining";
}

// ---- create -----------------------------------------------------------------

TEST_F(CliTest, CreatePrintsTheTaskAndARandomKeyThatRepeatsSafely) {
  Run r = Cli({"create", "--family=videos",
               R"(--body={"model":"videos","prompt":"a cat","duration":10})"});
  ASSERT_EQ(r.code, 0) << r.err;
  nlohmann::json task = nlohmann::json::parse(r.out, nullptr, false);
  ASSERT_TRUE(task.is_object()) << r.out;
  EXPECT_EQ(task["status"], "VIDEO_TASK_STATUS_QUEUED");
  const std::string id = task["id"];
  ASSERT_EQ(sim_->Creates().size(), 1u);
  EXPECT_EQ(sim_->Creates()[0].id, id);
  EXPECT_NE(sim_->Creates()[0].body.find(R"("duration":10)"), std::string::npos);
  // The key printed on stderr repeats it without a second create.
  const size_t at = r.err.find("--request_id=");
  ASSERT_NE(at, std::string::npos) << r.err;
  const std::string key = r.err.substr(at + 13, r.err.find(' ', at) - at - 13);
  Run again = Cli({"create", "--family=videos", "--request_id=" + key,
                   R"(--body={"model":"videos","prompt":"a cat","duration":10})"});
  ASSERT_EQ(again.code, 0) << again.err;
  EXPECT_EQ(nlohmann::json::parse(again.out)["id"], id);
  EXPECT_EQ(sim_->Creates().size(), 1u);
}

TEST_F(CliTest, CreateWaitPrintsTheEventsAndTheBodyComesFromAFile) {
  const std::string path = absl::StrCat(std::getenv("TEST_TMPDIR"), "/body.json");
  FILE* f = fopen(path.c_str(), "w");
  ASSERT_NE(f, nullptr);
  fputs(R"({"model":"sora-2","prompt":"waves","duration":5})", f);
  fclose(f);
  Run r = Cli({"create", "--family=sora", "--body=@" + path, "--request_id=cli-wait-1", "--wait"});
  EXPECT_EQ(r.code, 0) << r.err;
  std::vector<std::string> lines = absl::StrSplit(r.out, '\n', absl::SkipEmpty());
  ASSERT_GE(lines.size(), 2u) << r.out;
  nlohmann::json last = nlohmann::json::parse(lines.back());
  EXPECT_EQ(last["task"]["status"], "VIDEO_TASK_STATUS_COMPLETED");
  EXPECT_EQ(last["task"]["model"], "sora-2");
}

TEST_F(CliTest, CreateExitCodes) {
  const std::string body = R"(--body={"prompt":"p"})";
  // Usage: checked before the sidecar is asked.
  EXPECT_EQ(Cli({"create", "--family=Bad", body}).code, 2);
  EXPECT_EQ(Cli({"create", "--family=videos", "--body=[1]"}).code, 2);
  EXPECT_EQ(Cli({"create", "--family=videos", "--body=@/nonexistent/body.json"}).code, 2);
  EXPECT_EQ(sim_->Creates().size(), 0u);
  // 8: refused by the vendor.
  Run refused = Cli({"create", "--family=videos", R"(--body={"model":"videos"})"});
  EXPECT_EQ(refused.code, 8) << refused.err;
  EXPECT_NE(refused.err.find("prompt"), std::string::npos) << refused.err;
  // 9: outcome unknown, and again for the same key.
  sim::Fault dropped;
  dropped.kind = sim::FaultKind::kAcceptedThenDropped;
  sim_->InjectCreateFault("", dropped);
  EXPECT_EQ(Cli({"create", "--family=sora", body, "--request_id=cli-unknown"}).code, 9);
  EXPECT_EQ(Cli({"create", "--family=sora", body, "--request_id=cli-unknown"}).code, 9);
  // 11: the key with another body.
  EXPECT_EQ(Cli({"create", "--family=sora", R"(--body={"prompt":"q"})",
                 "--request_id=cli-unknown"}).code,
            11);
  // 5: nothing created (the vendor stays at 503 past --timeout).
  sim::Fault down;
  down.kind = sim::FaultKind::kServerError;
  down.count = -1;
  sim_->InjectCreateFault("", down);
  EXPECT_EQ(Cli({"create", "--family=sora", body, "--timeout=1s"}).code, 5);
  sim_->ClearFaults();
  EXPECT_EQ(sim_->CreatedCount(), 1);
}

TEST_F(CliTest, CreateSpendGuardAndRemoteListenExitCodes) {
  SidecarConfig c;
  c.listen = "0.0.0.0:0";
  c.metrics_listen = "";
  c.upstream_url = sim_->base_url();
  c.api_key_env = "VIDEOTASK_CLI_TEST_KEY";
  c.max_creates_per_hour = 1;
  auto remote = Sidecar::Start(c);
  ASSERT_TRUE(remote.ok()) << remote.status();
  const std::string body = R"(--body={"prompt":"p"})";
  EXPECT_EQ(Cli({"create", "--family=sora", body}, (*remote)->target()).code, 12);
  remote->reset();
  c.listen = "127.0.0.1:0";
  auto guarded = Sidecar::Start(c);
  ASSERT_TRUE(guarded.ok()) << guarded.status();
  EXPECT_EQ(Cli({"create", "--family=sora", body}, (*guarded)->target()).code, 0);
  EXPECT_EQ(Cli({"create", "--family=sora", body}, (*guarded)->target()).code, 10);
  EXPECT_EQ(sim_->Creates().size(), 1u);
}

}  // namespace
}  // namespace videotask
