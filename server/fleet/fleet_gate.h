// FleetPollGate: the PollGate of fleet mode, through Redis. Every sidecar
// that shares a vendor API key and upstream host shares, through it:
//
//   - one poll per task: before polling a watched task a sidecar takes (or
//     renews) the task's lease (`lease_ttl`, about 1.5 poll intervals);
//     without it, it follows: it forwards what the holder stores and
//     publishes, and asks again every poll interval, so it takes over
//     within about two intervals when the holder dies or lets go;
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
#include <memory>
#include <set>
#include <functional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
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
  void SetListener(Listener listener) override;

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
  explicit FleetPollGate(FleetGateOptions options);
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
  // Watched tasks admitted as kFollow and not Released since: re-read after
  // a resubscribe. Its own lock: Released runs under the hub's lock, the
  // listener takes the hub's lock under listener_mu_.
  absl::Mutex following_mu_;
  std::set<std::string> following_ ABSL_GUARDED_BY(following_mu_);
  // Reset first in the destructor (which completes what is pending, while
  // the store and budget whose callbacks those are still exist).
  std::unique_ptr<RedisClient> client_;
  std::unique_ptr<RedisTaskStore> store_;
  std::unique_ptr<RedisRateBudget> budget_;
};

}  // namespace videotask::fleet

#endif  // VIDEOTASK_SERVER_FLEET_FLEET_GATE_H_
