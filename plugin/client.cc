#include "plugin/client.h"

#include <algorithm>
#include <optional>
#include <utility>

#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "grpc/health/v1/health.grpc.pb.h"

namespace videotask {
namespace {

using videotask::v1::VideoTask;
using videotask::v1::VideoTaskStatus;
using videotask::v1::WatchVideoTaskResponse;

bool IsTerminal(VideoTaskStatus s) {
  return s == videotask::v1::VIDEO_TASK_STATUS_COMPLETED ||
         s == videotask::v1::VIDEO_TASK_STATUS_FAILED;
}

// Worth a new stream: the sidecar restarting or draining (UNAVAILABLE, or
// CANCELLED when it closed the connection), a slow-watcher cut
// (RESOURCE_EXHAUSTED), or a stream that ended without a terminal state.
// A cancellation by the caller is handled before this is asked.
bool Retryable(grpc::StatusCode code) {
  return code == grpc::StatusCode::UNAVAILABLE || code == grpc::StatusCode::RESOURCE_EXHAUSTED ||
         code == grpc::StatusCode::CANCELLED || code == grpc::StatusCode::OK;
}

std::chrono::system_clock::time_point ToChrono(absl::Time t) {
  if (t == absl::InfiniteFuture()) return std::chrono::system_clock::time_point::max();
  return absl::ToChronoTime(t);
}

}  // namespace

absl::Status FromGrpcStatus(const grpc::Status& status) {
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
}

void Cancellation::Cancel() {
  absl::MutexLock lock(&mu_);
  cancelled_ = true;
  if (context_ != nullptr) context_->TryCancel();
}

bool Cancellation::cancelled() {
  absl::MutexLock lock(&mu_);
  return cancelled_;
}

bool Cancellation::Attach(grpc::ClientContext* context) {
  absl::MutexLock lock(&mu_);
  if (cancelled_) return false;
  context_ = context;
  return true;
}

void Cancellation::Detach() {
  absl::MutexLock lock(&mu_);
  context_ = nullptr;
}

std::unique_ptr<VideoTaskClient> VideoTaskClient::Create(const std::string& target) {
  grpc::ChannelArguments args;
  // Long-lived streams: keep the connection verified while nothing flows.
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 30 * 1000);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10 * 1000);
  // Reconnect quickly after a sidecar restart.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 2000);
  return std::make_unique<VideoTaskClient>(
      grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args));
}

VideoTaskClient::VideoTaskClient(std::shared_ptr<grpc::Channel> channel)
    : channel_(std::move(channel)), stub_(videotask::v1::VideoTaskService::NewStub(channel_)) {}

absl::StatusOr<VideoTask> VideoTaskClient::Await(const std::string& id,
                                                 const AwaitOptions& options) {
  const absl::Time deadline = options.timeout == absl::InfiniteDuration()
                                  ? absl::InfiniteFuture()
                                  : absl::Now() + options.timeout;
  absl::BitGen rng;
  absl::Duration backoff = options.initial_backoff;
  absl::Time last_progress = absl::Now();
  VideoTaskStatus last_reported = videotask::v1::VIDEO_TASK_STATUS_UNSPECIFIED;
  grpc::Status last_error;
  while (true) {
    grpc::ClientContext ctx;
    ctx.set_deadline(ToChrono(deadline));
    if (options.cancellation && !options.cancellation->Attach(&ctx)) {
      return absl::CancelledError("cancelled by the caller");
    }
    v1::WatchVideoTaskRequest req;
    req.set_id(id);
    auto reader = stub_->WatchVideoTask(&ctx, req);
    WatchVideoTaskResponse msg;
    std::optional<VideoTask> final_task;
    while (reader->Read(&msg)) {
      last_progress = absl::Now();
      backoff = options.initial_backoff;
      const VideoTaskStatus status = msg.task().status();
      const bool is_change = msg.type() != WatchVideoTaskResponse::EVENT_TYPE_HEARTBEAT;
      if (is_change && status == last_reported) {
        // The SNAPSHOT of a resumed stream repeats what was already reported.
      } else if (options.on_event) {
        if (msg.type() == WatchVideoTaskResponse::EVENT_TYPE_SNAPSHOT &&
            last_reported != videotask::v1::VIDEO_TASK_STATUS_UNSPECIFIED) {
          // Changed while disconnected: report the change, not a new start.
          WatchVideoTaskResponse change = msg;
          change.set_type(WatchVideoTaskResponse::EVENT_TYPE_TRANSITION);
          change.set_previous_status(last_reported);
          options.on_event(change);
        } else {
          options.on_event(msg);
        }
      }
      if (is_change) last_reported = status;
      if (IsTerminal(status)) final_task = msg.task();
    }
    grpc::Status st = reader->Finish();
    if (options.cancellation) options.cancellation->Detach();
    if (final_task.has_value()) return *final_task;
    if (options.cancellation && options.cancellation->cancelled()) {
      return absl::CancelledError("cancelled by the caller");
    }
    if (st.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED || absl::Now() >= deadline) {
      return absl::DeadlineExceededError(
          absl::StrCat("task ", id, " did not finish within the timeout"));
    }
    if (!Retryable(st.error_code())) return FromGrpcStatus(st);
    last_error = st;
    if (absl::Now() - last_progress >= options.give_up_after) {
      return absl::UnavailableError(absl::StrCat("sidecar unavailable after retries: ",
                                                 last_error.error_message()));
    }
    // Exponential backoff with full jitter, bounded by the deadline.
    const absl::Duration sleep =
        std::min(absl::Uniform<double>(rng, 0.5, 1.0) * backoff, deadline - absl::Now());
    if (options.cancellation) {
      // Sleep in small steps so cancellation is prompt.
      const absl::Time until = absl::Now() + sleep;
      while (absl::Now() < until && !options.cancellation->cancelled()) {
        absl::SleepFor(std::min(until - absl::Now(), absl::Milliseconds(20)));
      }
    } else {
      absl::SleepFor(sleep);
    }
    backoff = std::min(backoff * 2, options.max_backoff);
  }
}

absl::StatusOr<VideoTask> VideoTaskClient::Get(const std::string& id, absl::Duration timeout) {
  grpc::ClientContext ctx;
  ctx.set_deadline(ToChrono(absl::Now() + timeout));
  v1::GetVideoTaskRequest req;
  req.set_id(id);
  VideoTask task;
  grpc::Status st = stub_->GetVideoTask(&ctx, req, &task);
  if (!st.ok()) return FromGrpcStatus(st);
  return task;
}

absl::Status VideoTaskClient::Health(absl::Duration timeout) {
  auto health = grpc::health::v1::Health::NewStub(channel_);
  grpc::ClientContext ctx;
  ctx.set_deadline(ToChrono(absl::Now() + timeout));
  grpc::health::v1::HealthCheckRequest req;
  req.set_service("videotask.v1.VideoTaskService");
  grpc::health::v1::HealthCheckResponse res;
  grpc::Status st = health->Check(&ctx, req, &res);
  if (!st.ok()) return FromGrpcStatus(st);
  if (res.status() != grpc::health::v1::HealthCheckResponse::SERVING) {
    return absl::UnavailableError(absl::StrCat(
        "sidecar is ", grpc::health::v1::HealthCheckResponse::ServingStatus_Name(res.status())));
  }
  return absl::OkStatus();
}

}  // namespace videotask
