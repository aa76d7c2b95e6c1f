// RedisTaskStore: the fleet's shared task states and per-task poll leases.
//
// States: Put() stores the task's signed state (SignedState) at
// FleetKeys::StateKey(id) with a TTL (terminal states `terminal_ttl`, running
// ones `running_ttl`) and, when the status moved forward, PUBLISHes the same
// signed entry on FleetKeys::StatesChannel(), all in one Lua script. Status
// only moves forward in Redis: a terminal state is never replaced, and a
// state behind the stored one is ignored (a lagging lease holder cannot undo
// a newer one). Subscribe() delivers every published state that verifies;
// anything that does not verify goes to `on_rejected` and is dropped.
//
// A terminal state is also kept at FleetKeys::TerminalKey(id) (first one
// wins), where Get believes only terminal entries and which it reads first,
// in the same MGET: an older signed state written back over the state key
// cannot hide a stored COMPLETED or FAILED.
//
// Replays: anyone who can write to Redis can write back an older signed
// entry. Put stamps each state's observe_time (wall time, when the task
// has none) under the signature, and Get and Subscribe reject an entry
// whose observe_time is older than the TTL it was stored with (plus
// `clock_skew` between pods): Redis would have dropped it by then. Get also
// rejects an entry whose status digit (read by the Put script, outside the
// MAC) differs from its signed status, and deletes such an entry, and a
// stale one, if it is still the stored value (compare-and-delete), so that
// a forged digit cannot pin an old state against later Puts.
//
// Leases: one owner polls a task. AcquireLease takes the lease if free (SET
// NX PX) or extends it if already ours; RenewLease extends and ReleaseLease
// deletes it only if the caller still owns it (Lua compare-and-set), so an
// owner whose lease expired cannot renew or delete another's. RenewLeases
// renews many in one script call (one round trip, one command). A release
// is published (the task id, on FleetKeys::LeasesChannel(), unsigned: it
// only invites followers to try AcquireLease) so they need not wait for
// their next round. FollowRound is a follower's one batched read: for many
// tasks at once it takes each lease that is free and reads each state.
//
// Error contract: every `done` runs once, on the RedisClient's thread, never
// inline; transport errors are the client's (UNAVAILABLE, DEADLINE_EXCEEDED,
// CANCELLED); a stored entry that fails verification is reported as
// Verify's error (DATA_LOSS / PERMISSION_DENIED / FAILED_PRECONDITION), to
// be counted and treated as absent; an unexpected reply is INTERNAL.
// Thread-safe; `client` must outlive the store.
#ifndef VIDEOTASK_SERVER_FLEET_REDIS_TASK_STORE_H_
#define VIDEOTASK_SERVER_FLEET_REDIS_TASK_STORE_H_

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "proto/videotask/v1/video_task.pb.h"
#include "server/base/clock.h"
#include "server/fleet/fleet_keys.h"
#include "server/fleet/redis_client.h"
#include "server/fleet/redis_script.h"
#include "server/fleet/signed_state.h"

namespace videotask::fleet {

class RedisTaskStore {
 public:
  struct Options {
    absl::Duration terminal_ttl = absl::Hours(1);   // --terminal_cache_ttl
    absl::Duration running_ttl = absl::Minutes(5);  // a few poll intervals
    absl::Duration lease_ttl = absl::Seconds(60);   // about two poll intervals
    std::string owner;  // this sidecar's lease id; empty: NewOwnerId()
    // Wall time, for observe_time stamps and the age of entries (shared
    // across pods, so the monotonic clock cannot serve). Null: RealClock.
    Clock* clock = nullptr;
    // How far pods' wall clocks may disagree before an entry counts as stale.
    absl::Duration clock_skew = absl::Seconds(10);
  };
  enum class PutResult {
    kPublished,  // stored and published: the status moved forward
    kRefreshed,  // same status: stored again (TTL, observe_time), not published
    kIgnored,    // behind the stored status, or the stored one is terminal
  };
  using PutDone = absl::AnyInvocable<void(absl::StatusOr<PutResult>)>;
  using GetDone = absl::AnyInvocable<void(absl::StatusOr<std::optional<videotask::v1::VideoTask>>)>;
  using LeaseDone = absl::AnyInvocable<void(absl::StatusOr<bool>)>;
  // One flag per id, in order: true while still ours (renewed).
  using LeasesDone = absl::AnyInvocable<void(absl::StatusOr<std::vector<bool>>)>;
  struct Followed {
    bool acquired = false;  // the lease was free: it is now ours
    // The verified state (the terminal key first); nullopt when none, or
    // when what is stored fails verification (then `rejected` says why).
    std::optional<videotask::v1::VideoTask> state;
    absl::Status rejected;
  };
  using RoundDone = absl::AnyInvocable<void(absl::StatusOr<std::vector<Followed>>)>;

  RedisTaskStore(RedisClient* client, const FleetKeys& keys, Options options);

  // A random 128-bit id (hex), unique per sidecar process.
  static std::string NewOwnerId();
  const std::string& owner() const { return options_.owner; }

  void Put(const videotask::v1::VideoTask& task, PutDone done = nullptr);
  // nullopt when Redis has no state for `id`.
  void Get(const std::string& id, GetDone done);

  // Verified states published by any sidecar of the fleet (this one too).
  // `on_subscribed` runs each time the subscription is (re)established:
  // states published while it was down were missed, re-Get what matters.
  void Subscribe(std::function<void(const videotask::v1::VideoTask&)> on_state,
                 std::function<void(const absl::Status&)> on_rejected,
                 std::function<void()> on_subscribed = nullptr);

  // true: the caller holds the lease for lease_ttl from now.
  void AcquireLease(const std::string& id, LeaseDone done);
  void RenewLease(const std::string& id, LeaseDone done);
  void RenewLeases(const std::vector<std::string>& ids, LeasesDone done);
  // One script call for all `ids`, answers in order.
  void FollowRound(const std::vector<std::string>& ids, RoundDone done);
  // Ids whose lease another sidecar released (any thread of the client).
  void SubscribeReleases(std::function<void(const std::string& id)> on_released);
  // true: it was ours and is released.
  void ReleaseLease(const std::string& id, LeaseDone done);

 private:
  void RunLease(const RedisScript& script, const std::string& id, bool with_ttl, LeaseDone done);
  // What readers check; shared with callbacks, which may outlive the store.
  struct Checker;

  RedisClient* const client_;
  const FleetKeys keys_;
  const SignedState signer_;
  Options options_;
  const RedisScript put_;
  const RedisScript acquire_;
  const RedisScript renew_;
  const RedisScript release_;
  const RedisScript renew_many_;
  const RedisScript follow_round_;
  std::shared_ptr<const Checker> checker_;
};

}  // namespace videotask::fleet

#endif  // VIDEOTASK_SERVER_FLEET_REDIS_TASK_STORE_H_
