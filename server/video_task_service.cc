#include "server/video_task_service.h"

#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "google/protobuf/message_lite.h"
#include "server/task_id.h"

namespace videotask {

using videotask::v1::WatchVideoTaskResponse;

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

namespace {

constexpr size_t kMaxQueuedEvents = 32;

// Frees the event reference a slice holds once gRPC is done with the bytes.
void ReleaseEvent(void* user_data) {
  delete static_cast<std::shared_ptr<const TaskEvent>*>(user_data);
}

// Parses a request message from the raw bytes gRPC received. An empty
// buffer is a message with every field unset.
bool ParseRequest(const grpc::ByteBuffer& buffer, google::protobuf::MessageLite* message) {
  if (buffer.Length() == 0) return message->ParseFromArray(nullptr, 0);
  grpc::Slice bytes;
  return buffer.DumpToSingleSlice(&bytes).ok() &&
         message->ParseFromArray(bytes.begin(), static_cast<int>(bytes.size()));
}

// A ByteBuffer over the event's serialized bytes, without copying them.
grpc::ByteBuffer SharedBytes(const std::shared_ptr<const TaskEvent>& event) {
  auto* ref = new std::shared_ptr<const TaskEvent>(event);
  grpc::Slice slice(const_cast<char*>((*ref)->serialized.data()), (*ref)->serialized.size(),
                    &ReleaseEvent, ref);
  return grpc::ByteBuffer(&slice, 1);
}

}  // namespace

// One WatchVideoTask stream. gRPC owns the reactor (deleted in OnDone); the
// hub holds the Link, which forwards to the reactor until OnDone detaches it.
class VideoTaskServiceImpl::WatchReactor : public grpc::ServerWriteReactor<grpc::ByteBuffer> {
 public:
  WatchReactor(VideoTaskServiceImpl* service, grpc::CallbackServerContext* context,
               const grpc::ByteBuffer* request)
      : service_(service), context_(context), link_(std::make_shared<Link>(this)) {
    ++service_->open_streams_;
    videotask::v1::WatchVideoTaskRequest req;
    // Every early end goes through FinishLocked, which records it: OnCancel
    // may follow at once (a call cancelled before it got here) and must not
    // finish the stream a second time.
    if (!ParseRequest(*request, &req)) {
      absl::MutexLock lock(&link_->mu);
      FinishLocked(
          grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "malformed WatchVideoTaskRequest"));
      return;
    }
    if (absl::Status s = ValidateTaskId(req.id()); !s.ok()) {
      absl::MutexLock lock(&link_->mu);
      FinishLocked(ToGrpcStatus(s));
      return;
    }
    absl::StatusOr<PollHub::WatchId> watch = service_->hub_->Watch(req.id(), link_);
    absl::MutexLock lock(&link_->mu);
    if (!watch.ok()) {
      FinishLocked(ToGrpcStatus(watch.status()));
      return;
    }
    watch_id_ = *watch;
  }

  void OnCancel() override {
    // Unsubscribe at once; OnDone follows once Finish completes.
    service_->hub_->Unwatch(watch_id_);
    absl::MutexLock lock(&link_->mu);
    pending_.clear();
    if (!finished_) FinishLocked(grpc::Status::CANCELLED);
  }

  void OnWriteDone(bool ok) override {
    absl::MutexLock lock(&link_->mu);
    writing_ = false;
    if (finished_) return;
    if (!ok) {
      // The stream is broken (client gone); nothing more can be delivered.
      pending_.clear();
      FinishLocked(grpc::Status(grpc::StatusCode::UNAVAILABLE, "write failed"));
      return;
    }
    WriteNextLocked();
  }

  void OnDone() override {
    {
      absl::MutexLock lock(&link_->mu);
      link_->reactor = nullptr;
    }
    service_->hub_->Unwatch(watch_id_);
    --service_->open_streams_;
    delete this;
  }

 private:
  struct Link : WatchSink {
    explicit Link(WatchReactor* r) : reactor(r) {}
    void OnEvent(std::shared_ptr<const TaskEvent> event) override {
      absl::MutexLock lock(&mu);
      if (reactor != nullptr) reactor->EnqueueLocked(std::move(event));
    }
    void OnError(const absl::Status& status) override {
      absl::MutexLock lock(&mu);
      if (reactor != nullptr) reactor->EndLocked(ToGrpcStatus(status));
    }
    absl::Mutex mu;
    WatchReactor* reactor ABSL_GUARDED_BY(mu);
  };

  void EnqueueLocked(std::shared_ptr<const TaskEvent> event)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(link_->mu) {
    if (finished_ || end_status_.has_value()) {
      MaybeCutSlowLocked(event->terminal());
      return;
    }
    const bool heartbeat =
        event->response.type() == WatchVideoTaskResponse::EVENT_TYPE_HEARTBEAT;
    if (writing_ &&
        service_->clock_->Now() - write_started_ > service_->options_.slow_watcher_timeout) {
      SlowLocked();
      return;
    }
    // Coalesce: a heartbeat behind anything queued or in flight adds nothing.
    if (heartbeat && (writing_ || !pending_.empty())) return;
    if (pending_.size() >= kMaxQueuedEvents) {
      SlowLocked();
      return;
    }
    pending_.push_back(std::move(event));
    if (!writing_) WriteNextLocked();
  }

  // Ends the stream with `status` once the events queued before it are sent.
  void EndLocked(grpc::Status status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(link_->mu) {
    if (finished_ || end_status_.has_value()) {
      MaybeCutSlowLocked(/*task_ended=*/true);
      return;
    }
    end_status_ = std::move(status);
    if (!writing_) WriteNextLocked();
  }

  void SlowLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(link_->mu) {
    service_->slow_watchers_->Increment();
    pending_.clear();
    slow_since_ = service_->clock_->Now();
    FinishLocked(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                              "watcher is not reading its stream; reconnect"));
  }

  // The RESOURCE_EXHAUSTED status of a slow stream waits behind its stuck
  // write: it reaches a client that reads again. One that still does not
  // after another slow_watcher_timeout (or once the task has ended) is cut
  // with a reset, which ends the call and frees its watch (the hub's events
  // for this watch are the timer). OnCancel runs on another thread for
  // this reactor, so cancelling under the lock is safe.
  void MaybeCutSlowLocked(bool task_ended) ABSL_EXCLUSIVE_LOCKS_REQUIRED(link_->mu) {
    if (slow_since_ == absl::InfiniteFuture() || cut_) return;
    if (task_ended ||
        service_->clock_->Now() - slow_since_ >= service_->options_.slow_watcher_timeout) {
      cut_ = true;
      context_->TryCancel();
    }
  }

  void WriteNextLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(link_->mu) {
    if (pending_.empty()) {
      if (end_status_.has_value()) FinishLocked(*end_status_);
      return;
    }
    std::shared_ptr<const TaskEvent> event = std::move(pending_.front());
    pending_.pop_front();
    service_->events_sent_[event->response.type()]->Increment();
    current_ = SharedBytes(event);
    writing_ = true;
    write_started_ = service_->clock_->Now();
    if (event->terminal()) {
      finished_ = true;
      StartWriteAndFinish(&current_, grpc::WriteOptions(), grpc::Status::OK);
    } else {
      StartWrite(&current_);
    }
  }

  void FinishLocked(grpc::Status status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(link_->mu) {
    if (finished_) return;
    finished_ = true;
    Finish(std::move(status));
  }

  VideoTaskServiceImpl* const service_;
  grpc::CallbackServerContext* const context_;  // valid until OnDone
  const std::shared_ptr<Link> link_;
  PollHub::WatchId watch_id_ = 0;  // set once in the constructor
  std::deque<std::shared_ptr<const TaskEvent>> pending_ ABSL_GUARDED_BY(link_->mu);
  std::optional<grpc::Status> end_status_ ABSL_GUARDED_BY(link_->mu);
  grpc::ByteBuffer current_ ABSL_GUARDED_BY(link_->mu);
  absl::Time write_started_ ABSL_GUARDED_BY(link_->mu);
  bool writing_ ABSL_GUARDED_BY(link_->mu) = false;
  bool finished_ ABSL_GUARDED_BY(link_->mu) = false;
  absl::Time slow_since_ ABSL_GUARDED_BY(link_->mu) = absl::InfiniteFuture();  // ended as slow
  bool cut_ ABSL_GUARDED_BY(link_->mu) = false;  // reset after that
};

VideoTaskServiceImpl::VideoTaskServiceImpl(PollHub* hub, Clock* clock, MetricsRegistry* metrics,
                                           VideoTaskServiceOptions options)
    : hub_(hub), clock_(clock), options_(options) {
  if (metrics == nullptr) {
    own_metrics_ = std::make_unique<MetricsRegistry>();
    metrics = own_metrics_.get();
  }
  const char* help = "Messages written to WatchVideoTask streams, by event type.";
  events_sent_[0] = metrics->GetCounter("videotask_events_sent_total", help, "type=\"unspecified\"");
  events_sent_[WatchVideoTaskResponse::EVENT_TYPE_SNAPSHOT] =
      metrics->GetCounter("videotask_events_sent_total", help, "type=\"snapshot\"");
  events_sent_[WatchVideoTaskResponse::EVENT_TYPE_TRANSITION] =
      metrics->GetCounter("videotask_events_sent_total", help, "type=\"transition\"");
  events_sent_[WatchVideoTaskResponse::EVENT_TYPE_HEARTBEAT] =
      metrics->GetCounter("videotask_events_sent_total", help, "type=\"heartbeat\"");
  slow_watchers_ = metrics->GetCounter(
      "videotask_slow_watchers_total",
      "Watch streams ended with RESOURCE_EXHAUSTED because the client stopped reading.");
  metrics->AddGauge("videotask_open_streams", "Open WatchVideoTask streams.",
                    [this] { return static_cast<double>(open_streams_.load()); });
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* VideoTaskServiceImpl::WatchVideoTask(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request) {
  return new WatchReactor(this, context, request);
}

grpc::ServerUnaryReactor* VideoTaskServiceImpl::GetVideoTask(grpc::CallbackServerContext* context,
                                                                const grpc::ByteBuffer* request,
                                                                grpc::ByteBuffer* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  videotask::v1::GetVideoTaskRequest req;
  if (!ParseRequest(*request, &req)) {
    reactor->Finish(
        grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "malformed GetVideoTaskRequest"));
    return reactor;
  }
  if (absl::Status s = ValidateTaskId(req.id()); !s.ok()) {
    reactor->Finish(ToGrpcStatus(s));
    return reactor;
  }
  // The call (and `response`) live until Finish, even if the client leaves.
  hub_->Get(req.id(), [reactor, response](absl::StatusOr<videotask::v1::VideoTask> task) {
    if (!task.ok()) {
      reactor->Finish(ToGrpcStatus(task.status()));
      return;
    }
    const std::string bytes = task->SerializeAsString();
    grpc::Slice slice(bytes);
    *response = grpc::ByteBuffer(&slice, 1);
    reactor->Finish(grpc::Status::OK);
  });
  return reactor;
}

}  // namespace videotask
