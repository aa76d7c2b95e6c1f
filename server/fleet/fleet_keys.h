// FleetKeys: the Redis key namespace and the state-signing keys of one fleet
// (every sidecar that shares a vendor account and upstream host).
//
//   fleet        --fleet_name (default "default") and the upstream host:
//                both stable across an API key rotation, so pods on the old
//                and the new key share one budget, one 429 pause, one set of
//                leases and states (the vendor limits the account, whichever
//                key it is spent with)
//   fingerprint  first 16 hex digits of
//                SHA-256("videotask fleet namespace" NUL name NUL host):
//                names the fleet in Redis keys and logs
//   keys         vt:{<fingerprint>}:<kind>[:<task id>]; the one hash tag
//                {<fingerprint>} puts every key of a fleet in one Redis
//                Cluster slot, so multi-key scripts work there too
//   signing key  HMAC-SHA256(api_key, "videotask fleet state v1" NUL host),
//                used by SignedState; never stored or logged. SigningKeys
//                holds the current one (signs) and the accepted ones
//                (verify): the current, the `accepted_api_keys` given (the
//                previous key during a rotation) and the key this process
//                used before UseApiKey() switched to a re-read one.
//
// Task ids are used as given: callers pass ids already checked by
// ValidateTaskId (1-128 of [A-Za-z0-9_-]). FleetKeys is immutable apart
// from its shared SigningKeys (copies share it); both are thread-safe.
// Error contract: none (every input gives keys).
#ifndef VIDEOTASK_SERVER_FLEET_FLEET_KEYS_H_
#define VIDEOTASK_SERVER_FLEET_FLEET_KEYS_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"

namespace videotask::fleet {

inline constexpr absl::string_view kDefaultFleetName = "default";

class SigningKeys {
 public:
  // Keys replaced by UseApiKey that stay accepted (the newest ones).
  static constexpr size_t kMaxReplaced = 2;

  SigningKeys(std::string upstream_host, absl::string_view api_key,
              const std::vector<std::string>& accepted_api_keys);
  // Signs and verifies with exactly `signing_key` (32 raw bytes; tests).
  static std::shared_ptr<SigningKeys> FromSigningKey(std::string signing_key);

  // The API key in use now (e.g. a re-read secret): when it differs from the
  // current one it signs from now on and the one it replaces stays accepted.
  void UseApiKey(absl::string_view api_key);

  std::string current() const;
  // The current key first.
  std::vector<std::string> accepted() const;

 private:
  SigningKeys() = default;
  std::string Derive(absl::string_view api_key) const;

  std::string host_;
  mutable absl::Mutex mu_;
  std::string current_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> configured_ ABSL_GUARDED_BY(mu_);  // accepted_api_keys, derived
  std::vector<std::string> replaced_ ABSL_GUARDED_BY(mu_);    // oldest first
};

class FleetKeys {
 public:
  // `fleet_name` empty: kDefaultFleetName.
  FleetKeys(absl::string_view fleet_name, absl::string_view upstream_host,
            absl::string_view api_key, const std::vector<std::string>& accepted_api_keys = {});
  // The default fleet name.
  FleetKeys(absl::string_view api_key, absl::string_view upstream_host)
      : FleetKeys(kDefaultFleetName, upstream_host, api_key) {}

  const std::string& fingerprint() const { return fingerprint_; }
  // "vt:{<fingerprint>}:"
  const std::string& prefix() const { return prefix_; }

  std::string RateKey() const;                         // GCRA state
  std::string PauseKey() const;                        // shared 429 pause
  std::string StateKey(absl::string_view id) const;    // signed last state
  std::string TerminalKey(absl::string_view id) const; // signed terminal state
  std::string LeaseKey(absl::string_view id) const;    // poll lease
  std::string StatesChannel() const;                   // PUBLISH of new states
  std::string ProbeKey() const;                        // written at each connect
  std::string LeasesChannel() const;                   // PUBLISH of released leases

  // The current 32-byte HMAC key for SignedState (binary).
  std::string signing_key() const { return signing_->current(); }
  const std::shared_ptr<SigningKeys>& signing() const { return signing_; }

 private:
  std::string fingerprint_;
  std::string prefix_;
  std::shared_ptr<SigningKeys> signing_;
};

// HMAC-SHA256(key, data), 32 raw bytes (OpenSSL libcrypto).
std::string HmacSha256(absl::string_view key, absl::string_view data);

}  // namespace videotask::fleet

#endif  // VIDEOTASK_SERVER_FLEET_FLEET_KEYS_H_
