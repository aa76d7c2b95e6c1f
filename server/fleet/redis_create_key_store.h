// RedisCreateKeyStore: the CreateKeyStore of fleet mode. Every sidecar of a
// fleet keeps CreateVideoTask's request_ids in the fleet's Redis, so one
// request_id creates one video however many sidecars are asked, and a
// restarted sidecar still knows it.
//
// Redis holds, per request_id (named by its SHA-256, never in clear):
//   vt:{<fleet>}:create:<sha256 hex>        the record, signed (below), kept
//                                           for `ttl` after its outcome
//   vt:{<fleet>}:create-lease:<sha256 hex>  the claimer's lease (its random
//                                           claim token), `lease` long,
//                                           renewed every lease/4 while the
//                                           claimer lives
// and PUBLISHes on vt:{<fleet>}:creates when a claim settles, which wakes
// the waiters of every sidecar (they also re-read every `poll_interval`).
//
// Guarantees:
//   - Claim is one Lua script (GET, then SET of record and lease only when
//     the record is absent): of any number of sidecars given one request_id
//     at once, exactly one is the claimant.
//   - Records are signed like the other fleet entries (HMAC-SHA256 under
//     FleetKeys' signing key, over a magic, the Redis key and the record, so
//     a record copied to another request_id fails too) and verified on every
//     read. A record that fails verification is never "absent": the call is
//     ABORTED (nothing sent), since that request_id may well have created a
//     video (e.g. signed with an API key no longer accepted).
//   - Claimer death: a pending record whose lease has lapsed (its claimer
//     died, or lost Redis for `lease`, mid-create) reads as kUnknown: the
//     vendor may have created it. It is never created again for that
//     request_id; its record expires `ttl` after the claimer's last renewal.
//     The claimer's own Record() still succeeds later if it was alive.
//   - Redis down, slow or answering nonsense: every call is UNAVAILABLE
//     (never a fallback to memory, which could create twice). What could
//     not be written is retried in the background (every lease/4, for at
//     most `ttl`, only while the record is still this claim's, at most
//     `max_retries` at once): a Claim whose answer was lost is undone (it
//     may have taken the key, and nothing was sent for it; the undo is
//     repeated for `late_claim_window`, since the claim's bytes may reach
//     Redis after the first undo found nothing), a failed Record or
//     Release is written. Until then the claim's lease lapses and the
//     key reads as unknown (conservative: never a duplicate).
//   - No caller waits on Redis beyond the client's command timeout per
//     round trip; AwaitSettled waits at most until its deadline.
// Thread-safe. The client and clock must outlive the store; the store must
// be destroyed before the client.
#ifndef VIDEOTASK_SERVER_FLEET_REDIS_CREATE_KEY_STORE_H_
#define VIDEOTASK_SERVER_FLEET_REDIS_CREATE_KEY_STORE_H_

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/base/clock.h"
#include "server/base/metrics.h"
#include "server/create/create_key_store.h"
#include "server/fleet/fleet_keys.h"
#include "server/fleet/redis_client.h"
#include "server/fleet/redis_script.h"

namespace videotask::fleet {

class RedisCreateKeyStore : public CreateKeyStore {
 public:
  struct Options {
    absl::Duration ttl = absl::Hours(24);  // --create_dedup_ttl
    // A claim's lease; renewed every lease/4 while this process holds it.
    absl::Duration lease = absl::Seconds(10);
    bool renew = true;  // tests: false plays a claimer that died
    // Waiters re-read a pending record at least this often.
    absl::Duration poll_interval = absl::Milliseconds(200);
    // Writes retried in the background at most (see above); beyond it the
    // oldest is dropped (its key stays unknown).
    size_t max_retries = 10000;
    // How long the undo of a Claim whose answer was lost keeps looking for
    // the claim (a command held up on its way, e.g. in a TCP retransmit).
    absl::Duration late_claim_window = absl::Minutes(1);
  };

  // `metrics` may be null (counts rejected records in
  // videotask_fleet_entries_rejected_total).
  RedisCreateKeyStore(RedisClient* client, const FleetKeys& keys, Options options, Clock* clock,
                      MetricsRegistry* metrics);
  ~RedisCreateKeyStore() override;
  RedisCreateKeyStore(const RedisCreateKeyStore&) = delete;
  RedisCreateKeyStore& operator=(const RedisCreateKeyStore&) = delete;

  absl::StatusOr<std::optional<CreateRecord>> Claim(const std::string& key,
                                                    const std::string& fingerprint) override;
  absl::Status Record(const std::string& key, CreateRecord outcome) override;
  absl::Status Release(const std::string& key) override;
  absl::StatusOr<std::optional<CreateRecord>> Lookup(const std::string& key) override;
  absl::StatusOr<std::optional<CreateRecord>> AwaitSettled(const std::string& key,
                                                           absl::Time deadline) override;

  // Redis key names of a request_id (for tests and docs).
  std::string RecordKey(const std::string& request_id) const;
  std::string LeaseKey(const std::string& request_id) const;
  const std::string& channel() const { return channel_; }

  // The signed record format, exposed for tests. `state` as CreateRecord.
  std::string Encode(const std::string& redis_key, const CreateRecord& record,
                     const std::string& token) const;
  // DATA_LOSS (malformed) or PERMISSION_DENIED (signature); `token` gets
  // the claim token.
  absl::StatusOr<CreateRecord> Decode(const std::string& redis_key, const std::string& entry,
                                      std::string* token) const;

 private:
  struct Held {
    std::string record_key;
    std::string lease_key;
    std::string pending;  // the pending record's bytes, as written
    std::string token;
    std::string fingerprint;
  };
  struct Wake;  // shared with the subscription callback
  // A settle (Record, Release, or undoing a lost Claim) to retry.
  struct Retry {
    Held held;
    std::string outcome;  // the record to write; empty: delete
    absl::Time give_up;   // on the clock's Monotonic() scale
    // An undo of a lost Claim: tried again until then even when the record
    // is not (yet) that claim's.
    absl::Time keep_until = absl::InfinitePast();
  };

  absl::StatusOr<RedisReply> Run(const RedisScript& script, std::vector<std::string> keys,
                                 std::vector<std::string> args);
  // {record, lease} as read by a script: what the record means now.
  absl::StatusOr<std::optional<CreateRecord>> Interpret(const std::string& record_key,
                                                        const RedisReply& pair);
  absl::Status Unavailable(const absl::Status& why) const;
  // The settle script for `h`: true once Redis answered (settled, or the
  // record is no longer that claim's); false when it could not be reached.
  bool Settle(const Held& h, const std::string& outcome, absl::StatusOr<RedisReply>* reply);
  void RetryLater(Held h, std::string outcome, absl::Time keep_until = absl::InfinitePast());
  void Loop();  // renewals and retries

  RedisClient* const client_;
  const FleetKeys keys_;
  const Options options_;
  Clock* const clock_;
  Counter* rejected_ = nullptr;
  const std::string channel_;
  const RedisScript claim_;
  const RedisScript lookup_;
  const RedisScript settle_;  // Record and Release
  const RedisScript renew_;
  std::shared_ptr<Wake> wake_;

  absl::Mutex mu_;
  std::map<std::string, Held> held_ ABSL_GUARDED_BY(mu_);  // by request_id
  std::vector<Retry> retries_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread loop_;
};

}  // namespace videotask::fleet

#endif  // VIDEOTASK_SERVER_FLEET_REDIS_CREATE_KEY_STORE_H_
