// Helpers for tests and benchmarks that run several real sidecar processes:
// SidecarProcess starts `videotask_sidecar` with given flags and reads its
// gRPC target and metrics port from the start-up line; StreamWatcher is a
// WatchVideoTask stream on the callback API (thousands need no thread each)
// that records every event; BusiestSecond counts requests in the busiest
// sliding one-second window.
#ifndef VIDEOTASK_TESTS_TESTING_SIDECAR_FLEET_H_
#define VIDEOTASK_TESTS_TESTING_SIDECAR_FLEET_H_

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "proto/videotask/v1/video_task.grpc.pb.h"
#include "tests/testing/subprocess.h"

namespace videotask::testing {

class SidecarProcess {
 public:
  // Starts `binary` with `args` and waits (10 s) for its start-up line.
  // UNAVAILABLE (with its stderr) when it does not start.
  static absl::StatusOr<std::unique_ptr<SidecarProcess>> Start(const std::string& binary,
                                                               std::vector<std::string> args);
  ~SidecarProcess();  // SIGKILL if still running

  const std::string& target() const { return target_; }
  int metrics_port() const { return metrics_port_; }
  std::shared_ptr<grpc::Channel> channel() const { return channel_; }
  Subprocess& process() { return *process_; }
  bool running() const { return running_; }
  void Kill();  // SIGKILL and reap

  // GET /metrics ("" when it does not answer), and one unlabelled value
  // (-1 when absent).
  std::string Metrics() const;
  double Metric(const std::string& name) const;

 private:
  SidecarProcess() = default;
  std::optional<Subprocess> process_;
  bool running_ = false;
  std::string target_;
  int metrics_port_ = 0;
  std::shared_ptr<grpc::Channel> channel_;
};

class StreamWatcher : public grpc::ClientReadReactor<videotask::v1::WatchVideoTaskResponse> {
 public:
  StreamWatcher(videotask::v1::VideoTaskService::Stub* stub, const std::string& id,
                absl::Duration deadline);
  void OnReadDone(bool ok) override;
  void OnDone(const grpc::Status& s) override;

  // False when the stream has not ended within `limit`.
  bool WaitDone(absl::Duration limit);
  std::vector<videotask::v1::WatchVideoTaskResponse> events();
  grpc::Status status();
  void Cancel() { ctx_.TryCancel(); }

 private:
  grpc::ClientContext ctx_;
  videotask::v1::WatchVideoTaskRequest req_;
  videotask::v1::WatchVideoTaskResponse msg_;
  absl::Mutex mu_;
  std::vector<videotask::v1::WatchVideoTaskResponse> events_ ABSL_GUARDED_BY(mu_);
  grpc::Status status_ ABSL_GUARDED_BY(mu_);
  bool done_ ABSL_GUARDED_BY(mu_) = false;
};

// Requests among `times` in the busiest sliding one-second window.
int BusiestSecond(std::vector<absl::Time> times);

}  // namespace videotask::testing

#endif  // VIDEOTASK_TESTS_TESTING_SIDECAR_FLEET_H_
