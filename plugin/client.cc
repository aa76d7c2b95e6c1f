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
// (RESOURCE_EXHAUSTED), a DEADLINE_EXCEEDED that is not the caller's (a
// proxy's), or a stream that ended without a terminal state. The caller's
// cancellation and deadline are handled before this is asked.
bool Retryable(grpc::StatusCode code) {
  return code == grpc::StatusCode::UNAVAILABLE || code == grpc::StatusCode::RESOURCE_EXHAUSTED ||
         code == grpc::StatusCode::CANCELLED || code == grpc::StatusCode::DEADLINE_EXCEEDED ||
         code == grpc::StatusCode::OK;
}

// A stream that lasted this long ends an outage even without a new status.
constexpr absl::Duration kHealthyStream = absl::Seconds(10);

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
  auto cancelled = [&options] {
    return options.cancellation != nullptr && options.cancellation->cancelled();
  };
  auto cancelled_error = [] { return absl::CancelledError("cancelled by the caller"); };
  auto timeout_error = [&id] {
    return absl::DeadlineExceededError(
        absl::StrCat("task ", id, " did not finish within the timeout"));
  };
  absl::BitGen rng;
  absl::Duration backoff = options.initial_backoff;
  // When the current outage began: the start, or the end of the last healthy
  // stream. Streams that neither lived long nor brought a new status (a
  // flapping sidecar) do not end an outage.
  absl::Time outage_start = absl::Now();
  VideoTaskStatus last_reported = videotask::v1::VIDEO_TASK_STATUS_UNSPECIFIED;
  while (true) {
    grpc::ClientContext ctx;
    ctx.set_deadline(ToChrono(deadline));
    if (options.cancellation && !options.cancellation->Attach(&ctx)) {
      return cancelled_error();
    }
    v1::WatchVideoTaskRequest req;
    req.set_id(id);
    const absl::Time stream_start = absl::Now();
    bool progressed = false;  // reported a status not reported before
    auto reader = stub_->WatchVideoTask(&ctx, req);
    WatchVideoTaskResponse msg;
    std::optional<VideoTask> final_task;
    while (reader->Read(&msg)) {
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
      if (is_change && status != last_reported) {
        progressed = true;
        last_reported = status;
      }
      if (IsTerminal(status)) final_task = msg.task();
    }
    grpc::Status st = reader->Finish();
    if (options.cancellation) options.cancellation->Detach();
    if (final_task.has_value()) return *final_task;
    if (cancelled()) return cancelled_error();
    absl::Time now = absl::Now();
    if (now >= deadline) return timeout_error();
    if (!Retryable(st.error_code())) return FromGrpcStatus(st);
    if (progressed || now - stream_start >= kHealthyStream) {
      outage_start = now;
      backoff = options.initial_backoff;
    }
    const absl::Time give_up_at = outage_start + options.give_up_after;
    auto unavailable = [&] {
      return absl::UnavailableError(absl::StrCat(
          "sidecar unavailable after retries: ",
          st.ok() ? std::string("stream ended without a final state") : st.error_message()));
    };
    if (now >= give_up_at) return unavailable();
    // Exponential backoff with jitter, then wait for the channel to be
    // ready (it reconnects on its own schedule; an RPC started before that
    // would fail at once). Both end at the give-up point or the deadline,
    // and promptly on cancellation.
    const absl::Time wake =
        std::min({now + absl::Uniform<double>(rng, 0.5, 1.0) * backoff, give_up_at, deadline});
    channel_->GetState(/*try_to_connect=*/true);
    while (absl::Now() < wake && !cancelled()) {
      absl::SleepFor(std::min(wake - absl::Now(), absl::Milliseconds(20)));
    }
    backoff = std::min(backoff * 2, options.max_backoff);
    for (grpc_connectivity_state state = channel_->GetState(/*try_to_connect=*/true);
         state != GRPC_CHANNEL_READY; state = channel_->GetState(/*try_to_connect=*/true)) {
      now = absl::Now();
      if (cancelled()) return cancelled_error();
      if (now >= deadline) return timeout_error();
      if (now >= give_up_at) return unavailable();
      channel_->WaitForStateChange(
          state, ToChrono(std::min({now + absl::Milliseconds(50), give_up_at, deadline})));
    }
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
