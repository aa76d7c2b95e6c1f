// VideoTaskClient: await a video task through the videotask sidecar with one
// call, from C++.
//
//   auto client = VideoTaskClient::Create("127.0.0.1:50051");
//   absl::StatusOr<VideoTask> t = client->Await("proj_123", {});
//
// Await() returns the final task (COMPLETED or FAILED: a failed video is a
// result, not an error) or an error status. Before each stream, the first
// one too, it waits for the channel to be connected (an HTTP/2 connection
// the sidecar has answered). It reconnects on UNAVAILABLE,
// RESOURCE_EXHAUSTED and transport errors (sidecar restart or drain) with
// exponential backoff and jitter; the new stream's SNAPSHOT resumes exactly,
// and a status already reported is never reported twice (a status changed
// while disconnected is reported as a TRANSITION from the last one seen).
// INVALID_ARGUMENT, NOT_FOUND and FAILED_PRECONDITION are final.
//
// When time runs out, the error says whose fault it is:
//  - UNAVAILABLE "sidecar at ADDR unreachable for D" when no stream was ever
//    opened (the sidecar never sent a message on one, nor held one open
//    until the caller's deadline or for 10 s) by the end of the caller's
//    `timeout` or of `give_up_after` (D is that option);
//  - DEADLINE_EXCEEDED only when the sidecar was reachable and the task did
//    not finish within `timeout` (if the sidecar had become unreachable, the
//    message says for how long);
//  - UNAVAILABLE "sidecar at ADDR unavailable after retries" after an outage
//    longer than `give_up_after` that followed opened streams.
// Cancellation::Cancel() ends it at once with CANCELLED. A timeout or
// give_up_after that is not positive is INVALID_ARGUMENT. Thread-safe.
//
// Get() and Health() also wait for the channel, up to their timeout, and
// give the same UNAVAILABLE "unreachable" error when it never connects.
//
// Create() asks the sidecar to create a task at the vendor, exactly once per
// `request_id` (see CreateVideoTask in video_task.proto): one call, within
// `timeout`, no retries of its own. Repeating it with the same request_id,
// family and body is always safe (the same task comes back, or ABORTED again
// when the outcome is unknown); a new request_id accepts a new video.
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
  // Waits until `until` or Cancel(), whichever is first; true if cancelled.
  bool WaitUntil(absl::Time until);

  absl::Mutex mu_;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  grpc::ClientContext* context_ ABSL_GUARDED_BY(mu_) = nullptr;
};

struct AwaitOptions {
  // Overall limit: DEADLINE_EXCEEDED after it, or UNAVAILABLE when no stream
  // was ever opened (see above).
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
  // `target` only names the sidecar in error messages.
  explicit VideoTaskClient(std::shared_ptr<grpc::Channel> channel, std::string target = "");

  absl::StatusOr<videotask::v1::VideoTask> Await(const std::string& id,
                                                 const AwaitOptions& options);
  absl::StatusOr<videotask::v1::VideoTask> Get(const std::string& id, absl::Duration timeout);
  absl::StatusOr<videotask::v1::VideoTask> Create(const std::string& request_id,
                                                  const std::string& family,
                                                  const google::protobuf::Struct& body,
                                                  absl::Duration timeout);
  // OK when the sidecar's health service reports SERVING.
  absl::Status Health(absl::Duration timeout);

 private:
  // Waits until the channel is READY (true), or until `until` passes or
  // `cancellation` is cancelled (false).
  bool WaitForReady(absl::Time until, Cancellation* cancellation);
  // UNAVAILABLE "sidecar at ADDR unreachable for `d`", with `detail`.
  absl::Status Unreachable(absl::Duration d, const std::string& detail) const;

  std::shared_ptr<grpc::Channel> channel_;
  const std::string target_;
  std::unique_ptr<videotask::v1::VideoTaskService::Stub> stub_;
};

// The absl form of a gRPC status (same code and message).
absl::Status FromGrpcStatus(const grpc::Status& status);

}  // namespace videotask

#endif  // VIDEOTASK_PLUGIN_CLIENT_H_
