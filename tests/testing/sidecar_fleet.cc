#include "tests/testing/sidecar_fleet.h"

#include <signal.h>

#include <algorithm>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "httplib.h"

namespace videotask::testing {
namespace {

// "name=VALUE" from the text-format start-up line.
std::string LogField(const std::string& log, const std::string& name) {
  size_t at = log.find(name + "=");
  if (at == std::string::npos) return "";
  at += name.size() + 1;
  return log.substr(at, log.find_first_of(" \n", at) - at);
}

}  // namespace

absl::StatusOr<std::unique_ptr<SidecarProcess>> SidecarProcess::Start(
    const std::string& binary, std::vector<std::string> args) {
  args.insert(args.begin(), binary);
  auto p = Subprocess::Start(std::move(args));
  if (!p.ok()) return p.status();
  std::unique_ptr<SidecarProcess> s(new SidecarProcess());
  s->process_.emplace(std::move(*p));
  s->running_ = true;
  if (!s->process_->WaitForStderr("sidecar_started", absl::Seconds(10))) {
    return absl::UnavailableError(
        absl::StrCat("the sidecar did not start: ", s->process_->Stderr()));
  }
  const std::string log = s->process_->Stderr();
  s->target_ = LogField(log, "grpc_target");
  (void)absl::SimpleAtoi(LogField(log, "metrics_port"), &s->metrics_port_);
  s->channel_ = grpc::CreateChannel(s->target_, grpc::InsecureChannelCredentials());
  return s;
}

SidecarProcess::~SidecarProcess() { Kill(); }

void SidecarProcess::Kill() {
  if (!running_) return;
  running_ = false;
  process_->Signal(SIGKILL);
  process_->Wait(absl::Seconds(5));
}

std::string SidecarProcess::Metrics() const {
  httplib::Client cli("127.0.0.1", metrics_port_);
  cli.set_connection_timeout(2);
  auto res = cli.Get("/metrics");
  return res && res->status == 200 ? res->body : "";
}

double SidecarProcess::Metric(const std::string& name) const {
  const std::string m = "\n" + Metrics();
  size_t at = m.find("\n" + name + " ");
  if (at == std::string::npos) return -1;
  at += name.size() + 2;
  double v = -1;
  if (!absl::SimpleAtod(m.substr(at, m.find('\n', at) - at), &v)) return -1;
  return v;
}

StreamWatcher::StreamWatcher(videotask::v1::VideoTaskService::Stub* stub, const std::string& id,
                             absl::Duration deadline) {
  ctx_.set_deadline(std::chrono::system_clock::now() + absl::ToChronoMilliseconds(deadline));
  req_.set_id(id);
  stub->async()->WatchVideoTask(&ctx_, &req_, this);
  StartRead(&msg_);
  StartCall();
}

void StreamWatcher::OnReadDone(bool ok) {
  if (!ok) return;
  {
    absl::MutexLock lock(&mu_);
    events_.push_back(msg_);
  }
  StartRead(&msg_);
}

void StreamWatcher::OnDone(const grpc::Status& s) {
  absl::MutexLock lock(&mu_);
  status_ = s;
  done_ = true;
}

bool StreamWatcher::WaitDone(absl::Duration limit) {
  absl::MutexLock lock(&mu_);
  return mu_.AwaitWithTimeout(absl::Condition(&done_), limit);
}

std::vector<videotask::v1::WatchVideoTaskResponse> StreamWatcher::events() {
  absl::MutexLock lock(&mu_);
  return events_;
}

grpc::Status StreamWatcher::status() {
  absl::MutexLock lock(&mu_);
  return status_;
}

int BusiestSecond(std::vector<absl::Time> times) {
  std::sort(times.begin(), times.end());
  int most = 0;
  size_t lo = 0;
  for (size_t hi = 0; hi < times.size(); ++hi) {
    while (times[hi] - times[lo] >= absl::Seconds(1)) ++lo;
    most = std::max(most, static_cast<int>(hi - lo + 1));
  }
  return most;
}

}  // namespace videotask::testing
