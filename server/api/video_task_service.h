// VideoTaskServiceImpl: the videotask.v1.VideoTaskService gRPC service on
// the callback API, backed by a PollHub.
//
// WatchVideoTask sends its response headers as soon as the watch is
// accepted (before the first upstream answer), so clients can tell an open
// stream from an unreachable sidecar.
// WatchVideoTask streams without a thread per stream: each stream is a
// reactor with at most one write in flight. Transitions queue in order;
// heartbeats are dropped while anything is queued (they carry nothing new).
// Each event is serialized once by the hub and its bytes are shared by every
// stream. A stream whose write has been stuck longer than `slow_watcher_timeout`
// (the client is not reading) is ended with RESOURCE_EXHAUSTED and counted in
// videotask_slow_watchers_total; queued events are never dropped silently. If
// that status cannot be delivered either (the client still does not read)
// for another `slow_watcher_timeout`, the stream is reset, so that it no
// longer holds a watch.
// A sweeper thread applies the same rule to streams the hub no longer feeds
// (a terminal event or an error queued behind a stuck write), so no stream
// outlives two slow_watcher_timeouts of not reading; while draining, a write
// stuck for a second is enough, so such streams do not hold up shutdown.
// An error from the hub ends the stream after the events queued before it.
// Bad ids and requests that do not parse are INVALID_ARGUMENT before the hub
// sees them. Cancellation and deadlines unsubscribe at once; a GetVideoTask
// whose call is cancelled or past its deadline leaves the hub's queue.
// Ages are measured on the clock's Monotonic() reading.
//
// CreateVideoTask hands the parsed request to the Creator (server/create)
// on a thread of its own (the Creator blocks while it waits for the
// vendor), with the caller's deadline, and maps its status; at most
// `max_concurrent_creates` run at once (UNAVAILABLE beyond: nothing sent,
// transient). When
// `create_refusal` is not OK (or there is no Creator) every create answers
// it, before anything else is looked at. The destructor waits for running
// creates, which the Creator bounds (Creator::Shutdown ends its waits).
#ifndef VIDEOTASK_SERVER_API_VIDEO_TASK_SERVICE_H_
#define VIDEOTASK_SERVER_API_VIDEO_TASK_SERVICE_H_

#include <atomic>
#include <memory>
#include <thread>

#include "absl/container/flat_hash_set.h"
#include "absl/synchronization/mutex.h"

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "proto/videotask/v1/video_task.grpc.pb.h"
#include "server/base/clock.h"
#include "server/base/metrics.h"
#include "server/create/creator.h"
#include "server/hub/poll_hub.h"

namespace videotask {

// The same code and message as a grpc::Status.
grpc::Status ToGrpcStatus(const absl::Status& status);

struct VideoTaskServiceOptions {
  absl::Duration slow_watcher_timeout = absl::Seconds(60);
  // OK: CreateVideoTask goes to the Creator. Else every create answers this
  // (PERMISSION_DENIED for a sidecar listening beyond loopback without
  // --allow_remote_create).
  absl::Status create_refusal = absl::OkStatus();
  int max_concurrent_creates = 256;
};

class VideoTaskServiceImpl final
    : public videotask::v1::VideoTaskService::WithRawCallbackMethod_CreateVideoTask<
          videotask::v1::VideoTaskService::WithRawCallbackMethod_WatchVideoTask<
              videotask::v1::VideoTaskService::WithRawCallbackMethod_GetVideoTask<
                  videotask::v1::VideoTaskService::Service>>> {
 public:
  // `hub`, `clock`, `metrics` (may be null) and `creator` (may be null: no
  // creates) must outlive the service.
  VideoTaskServiceImpl(PollHub* hub, Clock* clock, MetricsRegistry* metrics,
                       VideoTaskServiceOptions options = {}, Creator* creator = nullptr);

  ~VideoTaskServiceImpl() override;  // after every stream is done

  grpc::ServerWriteReactor<grpc::ByteBuffer>* WatchVideoTask(
      grpc::CallbackServerContext* context, const grpc::ByteBuffer* request) override;

  // Raw bytes, like WatchVideoTask, so that a request that does not parse is
  // INVALID_ARGUMENT (gRPC's typed handler would answer UNIMPLEMENTED).
  grpc::ServerUnaryReactor* GetVideoTask(grpc::CallbackServerContext* context,
                                         const grpc::ByteBuffer* request,
                                         grpc::ByteBuffer* response) override;

  grpc::ServerUnaryReactor* CreateVideoTask(grpc::CallbackServerContext* context,
                                            const grpc::ByteBuffer* request,
                                            grpc::ByteBuffer* response) override;

  // Open WatchVideoTask streams (reactors not yet done).
  int64_t open_streams() const { return open_streams_.load(); }

  // The sidecar is shutting down: stuck streams are cut after a second.
  void Drain();
  // One sweep now (tests; the sweeper thread runs them on its own).
  void SweepForTest();

 private:
  class WatchReactor;
  class GetReactor;
  class CreateReactor;
  friend class WatchReactor;
  friend class GetReactor;
  friend class CreateReactor;
  // Running creates; shared with their threads, which may outlive a member.
  struct CreateThreads {
    absl::Mutex mu;
    int running ABSL_GUARDED_BY(mu) = 0;
  };

  void Register(WatchReactor* stream);
  void Unregister(WatchReactor* stream);
  void SweepLoop();
  void SweepLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(streams_mu_);
  absl::Duration StuckLimit() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(streams_mu_);

  PollHub* const hub_;
  Clock* const clock_;
  const VideoTaskServiceOptions options_;
  Creator* const creator_;
  const std::shared_ptr<CreateThreads> creates_ = std::make_shared<CreateThreads>();
  std::unique_ptr<MetricsRegistry> own_metrics_;  // when none was given
  Counter* events_sent_[4] = {};
  Counter* slow_watchers_ = nullptr;
  std::atomic<int64_t> open_streams_{0};

  absl::Mutex streams_mu_;
  absl::flat_hash_set<WatchReactor*> streams_ ABSL_GUARDED_BY(streams_mu_);
  bool draining_ ABSL_GUARDED_BY(streams_mu_) = false;
  bool stopping_ ABSL_GUARDED_BY(streams_mu_) = false;
  std::thread sweeper_;
};

}  // namespace videotask

#endif  // VIDEOTASK_SERVER_API_VIDEO_TASK_SERVICE_H_
