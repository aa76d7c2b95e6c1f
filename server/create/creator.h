// Creator: CreateVideoTask's logic. Exactly one vendor create per
// request_id while the key store remembers the key, whatever the number of
// concurrent callers and retries.
//
// For each request: the request is checked (PrepareCreate: nothing is sent
// or remembered for a bad one), then the key is claimed in the key store.
//   - A key held with another fingerprint: ALREADY_EXISTS, nothing sent.
//   - A key whose create is under way: waits for its outcome (until the
//     caller's deadline: DEADLINE_EXCEEDED, retry to learn it).
//   - A key with an outcome: that outcome again, no request ("deduplicated"):
//     the task, or ABORTED for an unknown outcome.
//   - A claimed key: the spend guard (RESOURCE_EXHAUSTED, nothing sent; a
//     guard that cannot count, UNAVAILABLE), then
//     one request at a time within the shared UpstreamBudget (rate window,
//     in-flight cap, 429 pause). kNotSent answers (no connection, 429, 503)
//     are retried, with backoff or the 429's pause, while the deadline allows;
//     then UNAVAILABLE. kCreated is recorded and returned; kUnknown is
//     recorded and ABORTED ("the vendor may have created it"); kRefused is
//     INVALID_ARGUMENT with the vendor's message, kRejected
//     FAILED_PRECONDITION, neither retried. Whenever nothing was created the
//     key is released and the spend guard's place given back.
// A request that was sent always has its outcome recorded, also when the
// caller has gone meanwhile. Metrics: videotask_creates_total{outcome} and
// videotask_create_duration_seconds. Logs never contain the key or body.
#ifndef VIDEOTASK_SERVER_CREATE_CREATOR_H_
#define VIDEOTASK_SERVER_CREATE_CREATOR_H_

#include <functional>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "proto/videotask/v1/video_task.pb.h"
#include "server/base/clock.h"
#include "server/base/metrics.h"
#include "server/create/create_key_store.h"
#include "server/create/create_request.h"
#include "server/create/spend_guard.h"
#include "server/create/vendor_create.h"
#include "server/hub/upstream_budget.h"

namespace videotask {

struct CreatorOptions {
  // Retries of kNotSent answers without a 429 pause: this, doubling, capped.
  absl::Duration retry_initial = absl::Milliseconds(250);
  absl::Duration retry_max = absl::Seconds(5);
  // A caller without a deadline is served for at most this long.
  absl::Duration max_wait = absl::Minutes(2);
  // Tests: the creator's waits (backoff, the budget's wait) call this
  // instead of waiting in real time; it advances the test's clock.
  // Shutdown() is still seen as soon as it returns.
  std::function<void(absl::Duration)> sleep;
};

class Creator {
 public:
  // Every pointer must outlive the creator; `metrics` may be null.
  Creator(CreatorOptions options, VendorCreateClient* vendor, CreateKeyStore* keys,
          UpstreamBudget* budget, SpendGuard* spend, Clock* clock, MetricsRegistry* metrics);

  // Blocks until the outcome, or `deadline` (on the clock's Monotonic()
  // scale) for the waits before a request is sent. A request that was sent
  // is waited for (bounded by the vendor client's timeout). Nothing is sent
  // once `deadline` has passed (DEADLINE_EXCEEDED, the key released).
  absl::StatusOr<videotask::v1::VideoTask> Create(
      const videotask::v1::CreateVideoTaskRequest& request, absl::Time deadline);

  // Ends every wait at once (UNAVAILABLE, nothing sent); requests being sent
  // finish. Later calls are UNAVAILABLE.
  void Shutdown();

 private:
  absl::StatusOr<videotask::v1::VideoTask> Send(const PreparedCreate& p, absl::Time deadline,
                                                const SpendGuard::Ticket& ticket);
  // What a key's outcome means for a repeat of the request.
  absl::StatusOr<videotask::v1::VideoTask> Repeat(const PreparedCreate& p,
                                                  const CreateRecord& held);
  // Releases the claim and the spend place: nothing was created.
  absl::Status NothingCreated(const PreparedCreate& p, const SpendGuard::Ticket& ticket,
                              const char* outcome, absl::Status status);
  // Waits `d` unless shut down first; false when shut down.
  bool Wait(absl::Duration d);
  bool Stopping();
  void Count(const char* outcome);
  Counter* CounterFor(const char* outcome);

  const CreatorOptions options_;
  VendorCreateClient* const vendor_;
  CreateKeyStore* const keys_;
  UpstreamBudget* const budget_;
  SpendGuard* const spend_;
  Clock* const clock_;
  MetricsRegistry* const metrics_;
  Histogram* duration_ = nullptr;

  absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace videotask

#endif  // VIDEOTASK_SERVER_CREATE_CREATOR_H_
