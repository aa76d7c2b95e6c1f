// FleetPollGate: the PollGate of fleet mode, through Redis. Every sidecar
// that shares a vendor API key and upstream host shares, through it:
//
//   - one poll per task: before polling a watched task a sidecar takes the
//     task's lease (about 1.5 poll intervals); without it, it follows: it
//     forwards what the holder stores and publishes, and asks again every
//     poll interval. The holder renews its leases on a timer of its own
//     (when half the lease has passed, one batched script per round),
//     whether it polls or not: while it backs off after errors, and while
//     it archives the task's video (then even after its watchers left,
//     until the archived state is stored: the held lease is the fleet's
//     "archiving" mark, and others wait for that state instead of polling
//     and downloading again). A lease is let go when the last watcher
//     leaves, when a terminal state of the task is stored or seen, and on
//     Drain() (all at once), so a follower takes over at its next ask,
//     within one interval; a holder that dies is replaced within about
//     two and a half intervals. Redis work per task per interval does not
//     grow with the sidecars that watch it: the holder's admission reads
//     the state and the pause (the lease is known locally), it stores and
//     publishes each answer, and renews in batches; a follower's admissions are
//     answered from what it knows (the published states), and once per
//     poll interval one script (FollowRound) reads every task it follows
//     and takes any lease that is free. A released lease is published, so
//     followers try for it at once, and the one that gets it is told to
//     poll now (SetTakeover);
//   - one state: every answer is stored signed (terminal states for the
//     terminal-cache TTL, running ones for a few intervals) and published
//     when it moves forward; a stored terminal state, or any stored state
//     for a Get, answers without an upstream request;
//   - one budget (when `fleet_qps` > 0): a GCRA token per request, Redis
//     TIME as the clock; and one 429 pause for the whole fleet.
//
// Faults degrade, never fail: while Redis is down, slow (each command is
// bounded by the client's timeout) or answers nonsense, Admit says kPoll and
// the hub's local caps are the limit; the change is logged once each way
// and shown by up(). Entries that fail verification are ignored and
// counted. Lease, state and token round trips are pipelined on one
// connection; no caller thread ever waits on Redis. Thread-safe.
#ifndef VIDEOTASK_SERVER_FLEET_FLEET_GATE_H_
#define VIDEOTASK_SERVER_FLEET_FLEET_GATE_H_

#include <cstdint>
#include <map>
#include <memory>
#include <functional>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/base/clock.h"
#include "server/fleet/fleet_keys.h"
#include "server/fleet/redis_client.h"
#include "server/fleet/redis_rate_budget.h"
#include "server/fleet/redis_task_store.h"
#include "server/base/metrics.h"
#include "server/hub/poll_gate.h"

namespace videotask::fleet {

struct FleetGateOptions {
  RedisClientOptions redis;            // url, password source, timeouts
  // The fleet: --fleet_name ("" = "default") and the upstream host name the
  // namespace (FleetKeys); the API key only derives the signing key.
  std::string fleet_name;
  std::string api_key;                 // signs (and verifies) shared states
  // Also accepted when verifying: the previous key during a rotation.
  std::vector<std::string> accepted_api_keys;
  // When set, asked before each admission and share: a key that changed (a
  // re-read secret) signs from then on, the replaced one stays accepted.
  std::function<absl::StatusOr<std::string>()> current_api_key;
  std::string upstream_host;
  double fleet_qps = 0;                // 0: no fleet budget (pause still shared)
  // See RedisRateBudget: the lag spread the vendor-side bound tolerates.
  absl::Duration fleet_arrival_margin = absl::Milliseconds(250);
  absl::Duration poll_interval = absl::Seconds(30);
  absl::Duration terminal_cache_ttl = absl::Hours(1);
  // Monotonic time for lease renewals, wall time for the age of shared
  // states. Null: RealClock.
  Clock* clock = nullptr;
  // Renew leases from a thread of the gate's own. Tests with a
  // SimulatedClock turn it off and call RenewDue() after advancing it.
  bool renew_thread = true;
  // Optional: registers videotask_redis_up, videotask_fleet_mode,
  // videotask_fleet_tokens_denied_total, videotask_fleet_entries_rejected_total.
  MetricsRegistry* metrics = nullptr;
};

class FleetPollGate : public PollGate {
 public:
  // Starts connecting in the background; never fails for Redis being down.
  // INVALID_ARGUMENT for an empty key or a fleet_qps out of range.
  static absl::StatusOr<std::unique_ptr<FleetPollGate>> Create(FleetGateOptions options);
  ~FleetPollGate() override;  // completes pending admissions (kPoll)

  void Admit(const std::string& id, bool watched, AdmitDone done) override;
  void Observed(const videotask::v1::VideoTask& task) override;
  void RateLimited(absl::Duration pause) override;
  void Released(const std::string& id) override;
  void Archiving(const std::string& id) override;
  void Drain() override;
  void SetListener(Listener listener) override;
  void SetTakeover(Takeover takeover) override;

  // Renews, in one script call, every held lease at least half its TTL
  // old. Run by the renew thread; tests call it themselves.
  void RenewDue();
  // One batched read of every task this sidecar follows; takes free
  // leases. Run by the renew thread every poll interval; tests call it.
  void FollowRound();
  // Leases this sidecar holds (or is acquiring), for tests and metrics.
  size_t leases_held();
  // Tasks this sidecar follows (answered without Redis), for tests.
  size_t tasks_followed();
  // A FollowRound's answers are still on their way, for tests.
  bool follow_round_running();

  bool up() const { return client_->up(); }
  const std::string& fingerprint() const { return keys_.fingerprint(); }
  RedisClient* client() { return client_.get(); }
  // The fleet's namespace and signing keys (shared: a re-read API key the
  // gate follows signs for every user of the copy too).
  const FleetKeys& keys() const { return keys_; }

  // The fleet's part of the budget for one request the hub does not make (a
  // create): the 429 pause, then a token when the fleet has a budget. `done`
  // gets zero (go), a positive wait, or the client's error (the caller then
  // keeps to its local caps, as polls do); on the client's thread.
  void AcquireForCreate(RedisRateBudget::AcquireDone done);

 private:
  struct Join;
  // A lease this sidecar holds or is acquiring.
  struct Lease {
    absl::Time expires = absl::InfinitePast();  // monotonic, from when sent
    bool acquiring = false;  // AcquireLease in flight
    bool watched = true;     // false: its watchers left, kept while archiving
    bool archiving = false;  // kept until the archived state is stored
    bool renewing = false;   // in a renew batch
  };
  // A task this sidecar follows: what the fleet shared about it last.
  struct Follow {
    std::optional<videotask::v1::VideoTask> state;
    bool confirmed = false;  // false: its first admission is in flight
  };
  explicit FleetPollGate(FleetGateOptions options);
  void RenewLoop();
  // Records a followed task's state (forward only; a terminal one ends the
  // follow, and lets go of a lease held for it); true when it is newer than
  // the one this sidecar had.
  bool Learned(const videotask::v1::VideoTask& task) ABSL_LOCKS_EXCLUDED(leases_mu_);
  // The lease of followed `id` is ours now (sent at `sent`): hold it and
  // tell the hub.
  void TookOver(const std::string& id, absl::Time sent) ABSL_LOCKS_EXCLUDED(leases_mu_);
  void TryTakeOver(const std::string& id) ABSL_LOCKS_EXCLUDED(leases_mu_);
  // The fleet has a terminal state for `id`: stop holding its lease.
  void LetGo(const std::string& id) ABSL_LOCKS_EXCLUDED(leases_mu_);
  // The last step of an admission: a token when the fleet has a budget.
  void Decide(std::shared_ptr<Join> join);
  void CountRejected(const absl::Status& status);
  // Follows options_.current_api_key.
  void RefreshApiKey();
  // Gets the shared state of every task followed, for the listener.
  void Reread();

  const FleetGateOptions options_;
  const FleetKeys keys_;
  MetricsRegistry own_metrics_;  // when none was given
  Counter* tokens_denied_ = nullptr;
  Counter* entries_rejected_ = nullptr;
  absl::Mutex listener_mu_;
  Listener listener_ ABSL_GUARDED_BY(listener_mu_);
  Clock* const clock_;
  const absl::Duration lease_ttl_;
  absl::Mutex leases_mu_;
  std::map<std::string, Lease> leases_ ABSL_GUARDED_BY(leases_mu_);
  std::map<std::string, Follow> follows_ ABSL_GUARDED_BY(leases_mu_);
  absl::Time next_round_ ABSL_GUARDED_BY(leases_mu_) = absl::InfinitePast();
  bool round_running_ ABSL_GUARDED_BY(leases_mu_) = false;
  absl::Mutex takeover_mu_;
  Takeover takeover_ ABSL_GUARDED_BY(takeover_mu_);
  bool draining_ ABSL_GUARDED_BY(leases_mu_) = false;
  bool stop_ ABSL_GUARDED_BY(leases_mu_) = false;
  bool kicked_ ABSL_GUARDED_BY(leases_mu_) = false;
  std::thread renewer_;
  // Reset first in the destructor (which completes what is pending, while
  // the store and budget whose callbacks those are still exist).
  std::unique_ptr<RedisClient> client_;
  std::unique_ptr<RedisTaskStore> store_;
  std::unique_ptr<RedisRateBudget> budget_;
};

}  // namespace videotask::fleet

#endif  // VIDEOTASK_SERVER_FLEET_FLEET_GATE_H_
