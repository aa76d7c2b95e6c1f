#include "server/api/video_task_service.h"

#include <algorithm>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "google/protobuf/message_lite.h"
#include "server/api/request_parse.h"
#include "server/base/task_id.h"

namespace videotask {

using videotask::v1::WatchVideoTaskResponse;

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

namespace {

constexpr size_t kMaxQueuedEvents = 32;
// While draining, how long a stream's write may be stuck before it is cut.
constexpr absl::Duration kDrainStuckLimit = absl::Seconds(1);

// Frees the event reference a slice holds once gRPC is done with the bytes.
void ReleaseEvent(void* user_data) {
  delete static_cast<std::shared_ptr<const TaskEvent>*>(user_data);
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
    service_->Register(this);
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
    // Headers at once: a client can tell "the sidecar took my watch" from
    // "no answer" before the first upstream poll brings the SNAPSHOT.
    StartSendInitialMetadata();
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

  // The sweeper's check, for streams the hub may no longer feed (a terminal
  // event or an error queued behind a stuck write): a write stuck longer
  // than `stuck_limit` ends the stream as slow, and a slow stream is reset
  // once it has been slow that long too.
  void Sweep(absl::Time now, absl::Duration stuck_limit) {
    absl::MutexLock lock(&link_->mu);
    if (cut_) return;
    if (slow_since_ != absl::InfiniteFuture()) {
      if (now - slow_since_ >= stuck_limit) {
        cut_ = true;
        context_->TryCancel();
      }
      return;
    }
    if (!writing_ || now - write_started_ <= stuck_limit) return;
    if (!finished_) {
      SlowLocked();
    } else {
      // The final write (or the status behind it) is what is stuck.
      service_->slow_watchers_->Increment();
      slow_since_ = now;
    }
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
    service_->Unregister(this);
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
        service_->clock_->Monotonic() - write_started_ > service_->options_.slow_watcher_timeout) {
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
    slow_since_ = service_->clock_->Monotonic();
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
        service_->clock_->Monotonic() - slow_since_ >= service_->options_.slow_watcher_timeout) {
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
    write_started_ = service_->clock_->Monotonic();
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
                                           VideoTaskServiceOptions options, Creator* creator)
    : hub_(hub), clock_(clock), options_(options), creator_(creator) {
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
  sweeper_ = std::thread([this] { SweepLoop(); });
}

VideoTaskServiceImpl::~VideoTaskServiceImpl() {
  {
    absl::MutexLock lock(&streams_mu_);
    stopping_ = true;
  }
  sweeper_.join();
  absl::MutexLock lock(&creates_->mu);
  creates_->mu.Await(absl::Condition(
      +[](CreateThreads* c) ABSL_EXCLUSIVE_LOCKS_REQUIRED(c->mu) { return c->running == 0; },
      creates_.get()));
}

void VideoTaskServiceImpl::Register(WatchReactor* stream) {
  absl::MutexLock lock(&streams_mu_);
  streams_.insert(stream);
}

void VideoTaskServiceImpl::Unregister(WatchReactor* stream) {
  absl::MutexLock lock(&streams_mu_);
  streams_.erase(stream);
}

void VideoTaskServiceImpl::Drain() {
  absl::MutexLock lock(&streams_mu_);
  draining_ = true;
}

absl::Duration VideoTaskServiceImpl::StuckLimit() const {
  // While draining, a stream that cannot take its UNAVAILABLE within a
  // second is not read by its client: it must not hold up shutdown.
  return draining_ ? std::min(options_.slow_watcher_timeout, kDrainStuckLimit)
                   : options_.slow_watcher_timeout;
}

void VideoTaskServiceImpl::SweepLoop() {
  absl::MutexLock lock(&streams_mu_);
  while (!stopping_) {
    // Real time between sweeps; ages come from the injected clock.
    const absl::Duration every =
        std::clamp(StuckLimit() / 4, absl::Milliseconds(10), absl::Seconds(1));
    streams_mu_.AwaitWithTimeout(absl::Condition(&stopping_), every);
    if (stopping_) break;
    SweepLocked();
  }
}

void VideoTaskServiceImpl::SweepLocked() {
  const absl::Time now = clock_->Monotonic();
  const absl::Duration limit = StuckLimit();
  // Lock order: streams_mu_, then a stream's own lock (OnDone takes them
  // one after the other, never nested).
  for (WatchReactor* stream : streams_) stream->Sweep(now, limit);
}

void VideoTaskServiceImpl::SweepForTest() {
  absl::MutexLock lock(&streams_mu_);
  SweepLocked();
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* VideoTaskServiceImpl::WatchVideoTask(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request) {
  return new WatchReactor(this, context, request);
}

// One GetVideoTask call. Its hub Get is cancelled when the call is (client
// cancel or deadline), so an abandoned Get never reaches the vendor. gRPC
// owns the reactor (deleted in OnDone, after Finish); the hub's answer is
// the only Finish once the Get is registered.
class VideoTaskServiceImpl::GetReactor : public grpc::ServerUnaryReactor {
 public:
  GetReactor(VideoTaskServiceImpl* service, const grpc::ByteBuffer* request,
             grpc::ByteBuffer* response)
      : service_(service), response_(response) {
    videotask::v1::GetVideoTaskRequest req;
    if (!ParseRequest(*request, &req)) {
      Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "malformed GetVideoTaskRequest"));
      return;
    }
    if (absl::Status s = ValidateTaskId(req.id()); !s.ok()) {
      Finish(ToGrpcStatus(s));
      return;
    }
    // May answer (and Finish) inline.
    const PollHub::GetId get = service_->hub_->Get(
        req.id(), [this](absl::StatusOr<videotask::v1::VideoTask> task) { Answer(task); });
    bool cancel = false;
    {
      absl::MutexLock lock(&mu_);
      get_ = get;
      cancel = cancelled_;  // OnCancel came before the Get had its id
    }
    if (cancel) service_->hub_->CancelGet(get);
  }

  void OnCancel() override {
    PollHub::GetId get = 0;
    {
      absl::MutexLock lock(&mu_);
      cancelled_ = true;
      get = get_;
    }
    if (get != 0) service_->hub_->CancelGet(get);  // answered: ignored
  }

  void OnDone() override { delete this; }

 private:
  void Answer(const absl::StatusOr<videotask::v1::VideoTask>& task) {
    if (!task.ok()) {
      Finish(ToGrpcStatus(task.status()));
      return;
    }
    const std::string bytes = task->SerializeAsString();
    grpc::Slice slice(bytes);
    *response_ = grpc::ByteBuffer(&slice, 1);
    Finish(grpc::Status::OK);
  }

  VideoTaskServiceImpl* const service_;
  grpc::ByteBuffer* const response_;  // valid until OnDone
  absl::Mutex mu_;
  PollHub::GetId get_ ABSL_GUARDED_BY(mu_) = 0;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
};

grpc::ServerUnaryReactor* VideoTaskServiceImpl::GetVideoTask(grpc::CallbackServerContext* context,
                                                                const grpc::ByteBuffer* request,
                                                                grpc::ByteBuffer* response) {
  (void)context;
  return new GetReactor(this, request, response);
}

// One CreateVideoTask call: the Creator runs on a thread of its own, since
// it blocks on the vendor; the reactor is finished from there.
class VideoTaskServiceImpl::CreateReactor : public grpc::ServerUnaryReactor {
 public:
  CreateReactor(VideoTaskServiceImpl* service, grpc::CallbackServerContext* context,
                const grpc::ByteBuffer* request, grpc::ByteBuffer* response) {
    if (!service->options_.create_refusal.ok()) {
      Finish(ToGrpcStatus(service->options_.create_refusal));
      return;
    }
    if (service->creator_ == nullptr) {
      Finish(grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "this sidecar does not create tasks"));
      return;
    }
    auto req = std::make_shared<videotask::v1::CreateVideoTaskRequest>();
    if (!ParseRequest(*request, req.get())) {
      Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "malformed CreateVideoTaskRequest"));
      return;
    }
    // The caller's deadline on the monotonic clock.
    absl::Time deadline = absl::InfiniteFuture();
    const auto wall_deadline = context->deadline();
    if (wall_deadline != std::chrono::system_clock::time_point::max()) {
      deadline = service->clock_->Monotonic() +
                 (absl::FromChrono(wall_deadline) - absl::FromChrono(std::chrono::system_clock::now()));
    }
    std::shared_ptr<CreateThreads> threads = service->creates_;
    {
      absl::MutexLock lock(&threads->mu);
      if (threads->running >= service->options_.max_concurrent_creates) {
        // Transient, unlike the spend guard's RESOURCE_EXHAUSTED: retry.
        Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE,
                            "too many CreateVideoTask calls at once on this sidecar; nothing "
                            "was sent: retry with the same request_id"));
        return;
      }
      ++threads->running;
    }
    Creator* creator = service->creator_;
    std::thread([this, creator, req, deadline, response, threads] {
      absl::StatusOr<videotask::v1::VideoTask> task = creator->Create(*req, deadline);
      if (task.ok()) {
        const std::string bytes = task->SerializeAsString();
        grpc::Slice slice(bytes);
        *response = grpc::ByteBuffer(&slice, 1);
        Finish(grpc::Status::OK);
      } else {
        Finish(ToGrpcStatus(task.status()));
      }
      // `this` may be gone now; only the shared counter is touched.
      absl::MutexLock lock(&threads->mu);
      --threads->running;
    }).detach();
  }

  void OnDone() override { delete this; }
};

grpc::ServerUnaryReactor* VideoTaskServiceImpl::CreateVideoTask(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
    grpc::ByteBuffer* response) {
  return new CreateReactor(this, context, request, response);
}

}  // namespace videotask
