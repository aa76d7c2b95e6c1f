// VideoTaskClient: await a video task through the videotask sidecar with one
// call, from C++.
//
//   auto client = VideoTaskClient::Create("127.0.0.1:50051");
//   absl::StatusOr<VideoTask> t = client->Await("proj_123", {});
//
// Await() returns the final task (COMPLETED or FAILED: a failed video is a
// result, not an error) or an error status. It reconnects on UNAVAILABLE,
// RESOURCE_EXHAUSTED and transport errors (sidecar restart or drain) with
// exponential backoff and jitter; the new stream's SNAPSHOT resumes exactly,
// and a status already reported is never reported twice (a status changed
// while disconnected is reported as a TRANSITION from the last one seen).
// INVALID_ARGUMENT, NOT_FOUND and FAILED_PRECONDITION are final. Before each
// new stream it waits for the channel to be connected. Only the caller's own
// `timeout` gives DEADLINE_EXCEEDED; an outage longer than `give_up_after`
// gives UNAVAILABLE; Cancellation::Cancel() ends the stream at once with
// CANCELLED. Thread-safe.
#ifndef VIDEOTASK_PLUGIN_CLIENT_H_
#define VIDEOTASK_PLUGIN_CLIENT_H_

#include <functional>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "proto/videotask/v1/video_task.grpc.pb.h"

namespace videotask {

// Cancels an Await() from any thread.
class Cancellation {
 public:
  void Cancel();
  bool cancelled();

 private:
  friend class VideoTaskClient;
  // Registers the context of the current attempt; false if already cancelled.
  bool Attach(grpc::ClientContext* context);
  void Detach();

  absl::Mutex mu_;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  grpc::ClientContext* context_ ABSL_GUARDED_BY(mu_) = nullptr;
};

struct AwaitOptions {
  // Overall limit; DEADLINE_EXCEEDED after it.
  absl::Duration timeout = absl::InfiniteDuration();
  // Give up with UNAVAILABLE after an outage this long: from the end of the
  // last healthy stream (one that brought a new status or lasted 10 s), no
  // stream did either. A flapping sidecar or streams that end without a
  // final state therefore run out the budget too.
  absl::Duration give_up_after = absl::Seconds(60);
  absl::Duration initial_backoff = absl::Milliseconds(200);
  absl::Duration max_backoff = absl::Seconds(10);
  // Sees every event once: SNAPSHOT, TRANSITIONs and HEARTBEATs, in order.
  std::function<void(const videotask::v1::WatchVideoTaskResponse&)> on_event;
  // Optional; lets another thread cancel the call.
  std::shared_ptr<Cancellation> cancellation;
};

class VideoTaskClient {
 public:
  // `target`: "host:port" or "unix:PATH".
  static std::unique_ptr<VideoTaskClient> Create(const std::string& target);
  explicit VideoTaskClient(std::shared_ptr<grpc::Channel> channel);

  absl::StatusOr<videotask::v1::VideoTask> Await(const std::string& id,
                                                 const AwaitOptions& options);
  absl::StatusOr<videotask::v1::VideoTask> Get(const std::string& id, absl::Duration timeout);
  // OK when the sidecar's health service reports SERVING.
  absl::Status Health(absl::Duration timeout);

 private:
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<videotask::v1::VideoTaskService::Stub> stub_;
};

// The absl form of a gRPC status (same code and message).
absl::Status FromGrpcStatus(const grpc::Status& status);

}  // namespace videotask

#endif  // VIDEOTASK_PLUGIN_CLIENT_H_
