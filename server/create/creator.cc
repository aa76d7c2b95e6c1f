#include "server/create/creator.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "server/base/log.h"
#include "server/upstream/task_json.h"

namespace videotask {

using videotask::v1::VideoTask;

namespace {
// The longest a wait for another caller's pending key goes without checking
// for Shutdown().
constexpr absl::Duration kAwaitSlice = absl::Milliseconds(100);
}  // namespace

Creator::Creator(CreatorOptions options, VendorCreateClient* vendor, CreateKeyStore* keys,
                 UpstreamBudget* budget, SpendGuard* spend, Clock* clock,
                 MetricsRegistry* metrics)
    : options_(std::move(options)),
      vendor_(vendor),
      keys_(keys),
      budget_(budget),
      spend_(spend),
      clock_(clock),
      metrics_(metrics) {
  if (metrics_ != nullptr) {
    duration_ = metrics_->GetHistogram(
        "videotask_create_duration_seconds",
        "Duration of CreateVideoTask calls, from the request to the answer.",
        {0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60});
    for (const char* outcome : {"created", "deduplicated", "refused", "unknown", "budget",
                                "conflict", "invalid", "rejected", "unavailable"}) {
      CounterFor(outcome);  // every label shows from the start, at zero
    }
  }
}

Counter* Creator::CounterFor(const char* outcome) {
  return metrics_->GetCounter(
      "videotask_creates_total",
      "CreateVideoTask calls by outcome: created (a vendor create), deduplicated (a known "
      "request_id answered without one), refused, unknown (sent, outcome unknown), budget "
      "(spend guard or key store full), conflict, invalid, rejected (API key), unavailable.",
      absl::StrCat("outcome=\"", outcome, "\""));
}

void Creator::Count(const char* outcome) {
  if (metrics_ != nullptr) CounterFor(outcome)->Increment();
}

void Creator::Shutdown() {
  absl::MutexLock lock(&mu_);
  stopping_ = true;
}

bool Creator::Stopping() {
  absl::MutexLock lock(&mu_);
  return stopping_;
}

bool Creator::Wait(absl::Duration d) {
  if (options_.sleep) {
    options_.sleep(d);
    return !Stopping();
  }
  absl::MutexLock lock(&mu_);
  mu_.AwaitWithTimeout(absl::Condition(&stopping_), d);
  return !stopping_;
}

absl::StatusOr<VideoTask> Creator::Create(const videotask::v1::CreateVideoTaskRequest& request,
                                          absl::Time deadline) {
  const absl::Time start = clock_->Monotonic();
  deadline = std::min(deadline, start + options_.max_wait);
  auto observe = [&] {
    if (duration_ != nullptr) {
      duration_->Observe(absl::ToDoubleSeconds(clock_->Monotonic() - start));
    }
  };
  absl::StatusOr<PreparedCreate> p = PrepareCreate(request);
  if (!p.ok()) {
    Count("invalid");
    observe();
    return p.status();
  }
  absl::StatusOr<VideoTask> result;
  while (true) {
    if (Stopping()) {
      Count("unavailable");
      observe();
      return absl::UnavailableError("the sidecar is shutting down; nothing was sent");
    }
    absl::StatusOr<std::optional<CreateRecord>> held = keys_->Claim(p->request_id, p->fingerprint);
    if (!held.ok()) {
      Count(held.status().code() == absl::StatusCode::kResourceExhausted ? "budget"
                                                                         : "unavailable");
      observe();
      return held.status();
    }
    if (!held->has_value()) break;  // ours
    if ((*held)->state == CreateRecord::State::kPending &&
        (*held)->fingerprint == p->fingerprint) {
      // In slices, so that Shutdown() ends this wait at once whatever the
      // store's own wait does.
      while (true) {
        const absl::Time slice = std::min(deadline, clock_->Monotonic() + kAwaitSlice);
        held = keys_->AwaitSettled(p->request_id, slice);
        if (!held.ok() || !held->has_value() ||
            (*held)->state != CreateRecord::State::kPending || Stopping() ||
            clock_->Monotonic() >= deadline) {
          break;
        }
      }
      if (!held.ok()) {
        Count("unavailable");
        observe();
        return held.status();
      }
      if (held->has_value() && (*held)->state == CreateRecord::State::kPending && Stopping()) {
        Count("unavailable");
        observe();
        return absl::UnavailableError(
            "the sidecar is shutting down; nothing was sent by this call: retry with the same "
            "request_id to get the outcome of the create under way");
      }
      if (!held->has_value()) continue;  // released: nothing was created; try ourselves
      if ((*held)->state == CreateRecord::State::kPending) {
        Count("unavailable");
        observe();
        return absl::DeadlineExceededError(
            "a create with this request_id is still under way; retry with the same "
            "request_id to get its outcome");
      }
    }
    result = Repeat(*p, **held);
    observe();
    return result;
  }
  absl::StatusOr<std::optional<SpendGuard::Ticket>> taken = spend_->Take();
  if (!taken.ok()) {
    (void)keys_->Release(p->request_id);
    Count("unavailable");
    observe();
    return absl::UnavailableError(
        absl::StrCat(taken.status().message(), "; nothing was sent: retry with the same request_id"));
  }
  std::optional<SpendGuard::Ticket>& ticket = *taken;
  if (!ticket.has_value()) {
    (void)keys_->Release(p->request_id);
    Count("budget");
    LogEvent(LogLevel::kWarning, "create_spend_guard",
             {{"family", p->family}, {"max_creates_per_hour", absl::StrCat(spend_->max_per_hour())}});
    observe();
    return absl::ResourceExhaustedError(
        absl::StrCat("the spend guard allows ", spend_->max_per_hour(),
                     " new creates per hour (--max_creates_per_hour) and they are used; "
                     "nothing was sent"));
  }
  result = Send(*p, deadline, *ticket);
  observe();
  return result;
}

absl::StatusOr<VideoTask> Creator::Repeat(const PreparedCreate& p, const CreateRecord& held) {
  if (held.fingerprint != p.fingerprint) {
    Count("conflict");
    return absl::AlreadyExistsError(
        "this request_id was used with another family or body; nothing was sent (use a new "
        "request_id for a different video)");
  }
  Count("deduplicated");
  if (held.state == CreateRecord::State::kCreated) return held.task;
  return absl::AbortedError(absl::StrCat(
      "the outcome of the create with this request_id is unknown: the request was sent and ",
      held.detail,
      ", so the vendor may have created the video. It is not sent again for this request_id; "
      "use a new request_id to accept a possible duplicate"));
}

absl::Status Creator::NothingCreated(const PreparedCreate& p, const SpendGuard::Ticket& ticket,
                                     const char* outcome, absl::Status status) {
  (void)keys_->Release(p.request_id);
  spend_->GiveBack(ticket);
  Count(outcome);
  return status;
}

absl::StatusOr<VideoTask> Creator::Send(const PreparedCreate& p, absl::Time deadline,
                                        const SpendGuard::Ticket& ticket) {
  absl::Duration backoff = options_.retry_initial;
  std::string last = "no request was made";
  while (true) {
    // A slot of the shared budget (rate window, in-flight cap, 429 pause).
    while (true) {
      absl::StatusOr<absl::Duration> wait = budget_->Acquire();
      if (!wait.ok()) {
        return NothingCreated(p, ticket, "unavailable",
                              absl::UnavailableError(absl::StrCat(
                                  wait.status().message(), "; nothing was sent")));
      }
      if (*wait <= absl::ZeroDuration()) break;
      if (clock_->Monotonic() + *wait >= deadline) {
        return NothingCreated(
            p, ticket, "unavailable",
            absl::UnavailableError(absl::StrCat(
                "the vendor's rate budget leaves no room before the deadline (last: ", last,
                "); nothing was created: retry with the same request_id")));
      }
      if (!Wait(*wait)) {
        return NothingCreated(p, ticket, "unavailable",
                              absl::UnavailableError(
                                  "the sidecar is shutting down; nothing was created"));
      }
    }
    if (clock_->Monotonic() >= deadline) {
      budget_->Release(/*rate_limited=*/false, std::nullopt);  // the slot was not used
      return NothingCreated(p, ticket, "unavailable",
                            absl::DeadlineExceededError(absl::StrCat(
                                "the deadline passed before the request could be sent (last: ",
                                last, "); nothing was sent: retry with the same request_id")));
    }
    VendorCreateResult r = vendor_->Create(p.family, p.body_json);
    budget_->Release(r.rate_limited, r.retry_after);
    LogFields fields = {{"family", p.family},
                        {"outcome", std::string(VendorCreateKindName(r.kind))},
                        {"code", r.code},
                        {"latency_seconds", absl::StrCat(absl::ToDoubleSeconds(r.latency))}};
    switch (r.kind) {
      case VendorCreateResult::Kind::kCreated: {
        fields.push_back({"task", r.task.id()});
        LogEvent(LogLevel::kInfo, "create", fields);
        CreateRecord rec;
        rec.state = CreateRecord::State::kCreated;
        rec.task = r.task;
        if (absl::Status s = keys_->Record(p.request_id, std::move(rec)); !s.ok()) {
          LogEvent(LogLevel::kError, "create_record_failed", {{"detail", std::string(s.message())}});
        }
        Count("created");
        return r.task;
      }
      case VendorCreateResult::Kind::kUnknown: {
        fields.push_back({"detail", r.message});
        LogEvent(LogLevel::kWarning, "create", fields);
        CreateRecord rec;
        rec.state = CreateRecord::State::kUnknown;
        rec.detail = r.message;
        if (absl::Status s = keys_->Record(p.request_id, rec); !s.ok()) {
          LogEvent(LogLevel::kError, "create_record_failed", {{"detail", std::string(s.message())}});
        }
        Count("unknown");
        return absl::AbortedError(absl::StrCat(
            "the outcome is unknown: the request was sent and ", r.message,
            ", so the vendor may have created the video. It is not sent again for this "
            "request_id; use a new request_id to accept a possible duplicate"));
      }
      case VendorCreateResult::Kind::kRefused:
        fields.push_back({"detail", r.message});
        LogEvent(LogLevel::kWarning, "create", fields);
        return NothingCreated(
            p, ticket, "refused",
            absl::InvalidArgumentError(absl::StrCat("the vendor refused the request (",
                                                    r.code, "): ", r.message)));
      case VendorCreateResult::Kind::kRejected:
        LogEvent(LogLevel::kError, "create", fields);
        return NothingCreated(p, ticket, "rejected",
                              absl::FailedPreconditionError(absl::StrCat(
                                  r.message, "; check --api_key_file or VIDEOTASK_API_KEY")));
      case VendorCreateResult::Kind::kNotSent:
        break;
    }
    fields.push_back({"detail", r.message});
    LogEvent(LogLevel::kWarning, "create_retry", fields);
    last = r.message;
    if (r.rate_limited) continue;  // the budget holds the 429's pause
    if (clock_->Monotonic() + backoff >= deadline) {
      return NothingCreated(p, ticket, "unavailable",
                            absl::UnavailableError(absl::StrCat(
                                last, "; retried until the deadline; nothing was created: "
                                      "retry with the same request_id")));
    }
    if (!Wait(backoff)) {
      return NothingCreated(p, ticket, "unavailable",
                            absl::UnavailableError(
                                "the sidecar is shutting down; nothing was created"));
    }
    backoff = std::min(backoff * 2, options_.retry_max);
  }
}

}  // namespace videotask
