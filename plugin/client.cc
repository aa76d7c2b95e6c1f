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

// A sidecar refuses a stream (draining, full) within a round trip on the
// pod's loopback; one it has not refused this long it has taken.
constexpr absl::Duration kRefusalTime = absl::Milliseconds(100);

std::chrono::system_clock::time_point ToChrono(absl::Time t) {
  if (t == absl::InfiniteFuture()) return std::chrono::system_clock::time_point::max();
  return absl::ToChronoTime(t);
}

// Why a channel that is not READY has not connected, for error messages.
std::string DescribeNotReady(grpc_connectivity_state state) {
  switch (state) {
    case GRPC_CHANNEL_TRANSIENT_FAILURE:
      return "cannot connect";
    case GRPC_CHANNEL_CONNECTING:
      return "connecting: no HTTP/2 answer";
    case GRPC_CHANNEL_SHUTDOWN:
      return "channel shut down";
    default:
      return "not connected";
  }
}

std::string Describe(const grpc::Status& st) {
  return absl::StrCat(absl::StatusCodeToString(static_cast<absl::StatusCode>(st.error_code())),
                      ": ", st.error_message());
}

// A duration for messages: 5s, 1.5s, 250ms, 1m30s.
std::string Round(absl::Duration d) {
  return absl::FormatDuration(absl::Trunc(d, absl::Milliseconds(d < absl::Seconds(1) ? 1 : 100)));
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

bool Cancellation::WaitUntil(absl::Time until) {
  absl::MutexLock lock(&mu_);
  mu_.AwaitWithDeadline(absl::Condition(&cancelled_), until);
  return cancelled_;
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
      grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args), target);
}

VideoTaskClient::VideoTaskClient(std::shared_ptr<grpc::Channel> channel, std::string target)
    : channel_(std::move(channel)),
      target_(target.empty() ? std::string("(unnamed channel)") : std::move(target)),
      stub_(videotask::v1::VideoTaskService::NewStub(channel_)) {}

bool VideoTaskClient::WaitForReady(absl::Time until, Cancellation* cancellation) {
  for (grpc_connectivity_state state = channel_->GetState(/*try_to_connect=*/true);
       state != GRPC_CHANNEL_READY; state = channel_->GetState(/*try_to_connect=*/true)) {
    const absl::Time now = absl::Now();
    if (now >= until || (cancellation != nullptr && cancellation->cancelled())) return false;
    // Short slices only to notice a cancellation promptly.
    channel_->WaitForStateChange(
        state, ToChrono(cancellation != nullptr ? std::min(now + absl::Milliseconds(50), until)
                                                : until));
  }
  return true;
}

absl::Status VideoTaskClient::Unreachable(absl::Duration d, const std::string& detail) const {
  return absl::UnavailableError(
      absl::StrCat("sidecar at ", target_, " unreachable for ", Round(d), " (", detail, ")"));
}

absl::StatusOr<VideoTask> VideoTaskClient::Await(const std::string& id,
                                                 const AwaitOptions& options) {
  if (options.timeout <= absl::ZeroDuration() || options.give_up_after <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("Await: timeout and give_up_after must be positive");
  }
  const absl::Time start = absl::Now();
  const absl::Time deadline = options.timeout == absl::InfiniteDuration()
                                  ? absl::InfiniteFuture()
                                  : start + options.timeout;
  Cancellation* const cancellation = options.cancellation.get();
  auto cancelled = [cancellation] { return cancellation != nullptr && cancellation->cancelled(); };
  auto cancelled_error = [] { return absl::CancelledError("cancelled by the caller"); };
  absl::BitGen rng;
  absl::Duration backoff = options.initial_backoff;
  // When the current outage began: the start, or the end of the last healthy
  // stream. Streams that neither lived long nor brought a new status (a
  // flapping sidecar) do not end an outage.
  absl::Time outage_start = start;
  // Whether the sidecar ever opened a stream (sent a message on it, or held
  // it open until the deadline or for kHealthyStream), and when the last
  // such stream ended (InfiniteFuture while one is open).
  bool ever_opened = false;
  absl::Time last_open_end = absl::InfiniteFuture();
  std::string last_error;  // of the last stream that failed, for messages
  auto why_unreachable = [&] {
    return last_error.empty() ? DescribeNotReady(channel_->GetState(/*try_to_connect=*/false))
                              : absl::StrCat("last error: ", last_error);
  };
  // The caller's timeout has passed at `now`.
  auto timed_out = [&](absl::Time now) -> absl::Status {
    if (!ever_opened) return Unreachable(options.timeout, why_unreachable());
    std::string msg = absl::StrCat("task ", id, " did not finish within the timeout");
    if (now > last_open_end) {
      absl::StrAppend(&msg, " (the sidecar at ", target_, " was unreachable for its last ",
                      Round(now - last_open_end), ")");
    }
    return absl::DeadlineExceededError(msg);
  };
  // The outage has lasted give_up_after.
  auto give_up = [&]() -> absl::Status {
    if (!ever_opened) return Unreachable(options.give_up_after, why_unreachable());
    return absl::UnavailableError(absl::StrCat(
        "sidecar at ", target_, " unavailable after retries: ",
        last_error.empty() ? DescribeNotReady(channel_->GetState(/*try_to_connect=*/false))
                           : last_error));
  };
  VideoTaskStatus last_reported = videotask::v1::VIDEO_TASK_STATUS_UNSPECIFIED;
  while (true) {
    // Wait for the channel to be ready (it connects and reconnects on its own
    // schedule; a stream started before would fail at once, and one started
    // on a connection that never answers would hang until the deadline).
    // Ends at the give-up point or the deadline, promptly on cancellation.
    const absl::Time give_up_at = outage_start + options.give_up_after;
    const bool ready = WaitForReady(std::min(give_up_at, deadline), cancellation);
    if (cancelled()) return cancelled_error();
    if (const absl::Time now = absl::Now(); now >= deadline) {
      return timed_out(now);
    } else if (!ready || now >= give_up_at) {
      return give_up();
    }
    grpc::ClientContext ctx;
    ctx.set_deadline(ToChrono(deadline));
    if (cancellation != nullptr && !cancellation->Attach(&ctx)) return cancelled_error();
    v1::WatchVideoTaskRequest req;
    req.set_id(id);
    const absl::Time stream_start = absl::Now();
    bool progressed = false;  // reported a status not reported before
    bool got_message = false;
    auto reader = stub_->WatchVideoTask(&ctx, req);
    WatchVideoTaskResponse msg;
    std::optional<VideoTask> final_task;
    while (reader->Read(&msg)) {
      if (!got_message) {
        got_message = true;
        ever_opened = true;
        last_open_end = absl::InfiniteFuture();
      }
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
    if (cancellation != nullptr) cancellation->Detach();
    if (final_task.has_value()) return *final_task;
    if (cancelled()) return cancelled_error();
    const absl::Time now = absl::Now();
    // A stream the sidecar took (started on a connected channel and not
    // refused) and held until the deadline or for a while was opened, even
    // if no message came yet (the first one waits for the first upstream
    // poll, and the sidecar's headers come with it).
    const bool lasted = now - stream_start >= kHealthyStream;
    const bool held_to_deadline = now >= deadline &&
                                  st.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED &&
                                  deadline - stream_start >= kRefusalTime;
    if (got_message || lasted || held_to_deadline) {
      ever_opened = true;
      last_open_end = now;
    }
    if (now >= deadline) return timed_out(now);
    if (!Retryable(st.error_code())) return FromGrpcStatus(st);
    last_error = st.ok() ? std::string("stream ended without a final state") : Describe(st);
    if (progressed || lasted) {
      outage_start = now;
      backoff = options.initial_backoff;
    }
    if (now >= outage_start + options.give_up_after) return give_up();
    // Exponential backoff with jitter, up to the give-up point or the
    // deadline; promptly ended by cancellation.
    const absl::Time wake = std::min({now + absl::Uniform<double>(rng, 0.5, 1.0) * backoff,
                                      outage_start + options.give_up_after, deadline});
    channel_->GetState(/*try_to_connect=*/true);
    if (cancellation != nullptr) {
      if (cancellation->WaitUntil(wake)) return cancelled_error();
    } else {
      absl::SleepFor(wake - absl::Now());
    }
    backoff = std::min(backoff * 2, options.max_backoff);
  }
}

absl::StatusOr<VideoTask> VideoTaskClient::Get(const std::string& id, absl::Duration timeout) {
  if (timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("Get: timeout must be positive");
  }
  const absl::Time deadline = absl::Now() + timeout;
  if (!WaitForReady(deadline, nullptr)) {
    return Unreachable(timeout, DescribeNotReady(channel_->GetState(/*try_to_connect=*/false)));
  }
  grpc::ClientContext ctx;
  ctx.set_deadline(ToChrono(deadline));
  v1::GetVideoTaskRequest req;
  req.set_id(id);
  VideoTask task;
  grpc::Status st = stub_->GetVideoTask(&ctx, req, &task);
  if (st.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED && absl::Now() >= deadline) {
    // Connected, so the sidecar took the call: its upstream request was slow.
    return absl::DeadlineExceededError(absl::StrCat(
        "the sidecar at ", target_, " did not answer for task ", id, " within ", Round(timeout)));
  }
  if (!st.ok()) return FromGrpcStatus(st);
  return task;
}

absl::StatusOr<VideoTask> VideoTaskClient::Create(const std::string& request_id,
                                                  const std::string& family,
                                                  const google::protobuf::Struct& body,
                                                  absl::Duration timeout) {
  if (timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("Create: timeout must be positive");
  }
  const absl::Time deadline = absl::Now() + timeout;
  if (!WaitForReady(deadline, nullptr)) {
    return Unreachable(timeout, DescribeNotReady(channel_->GetState(/*try_to_connect=*/false)));
  }
  grpc::ClientContext ctx;
  ctx.set_deadline(ToChrono(deadline));
  v1::CreateVideoTaskRequest req;
  req.set_request_id(request_id);
  req.set_family(family);
  *req.mutable_body() = body;
  VideoTask task;
  grpc::Status st = stub_->CreateVideoTask(&ctx, req, &task);
  if (st.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED && absl::Now() >= deadline) {
    return absl::DeadlineExceededError(absl::StrCat(
        "the sidecar at ", target_, " did not answer the create within ", Round(timeout),
        "; repeat it with the same request_id to learn its outcome"));
  }
  if (!st.ok()) return FromGrpcStatus(st);
  return task;
}

absl::Status VideoTaskClient::Health(absl::Duration timeout) {
  if (timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("Health: timeout must be positive");
  }
  const absl::Time deadline = absl::Now() + timeout;
  if (!WaitForReady(deadline, nullptr)) {
    return Unreachable(timeout, DescribeNotReady(channel_->GetState(/*try_to_connect=*/false)));
  }
  auto health = grpc::health::v1::Health::NewStub(channel_);
  grpc::ClientContext ctx;
  ctx.set_deadline(ToChrono(deadline));
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
