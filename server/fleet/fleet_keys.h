// FleetKeys: the Redis key namespace and the state-signing key of one fleet
// (every sidecar that shares a vendor API key and upstream host).
//
//   fingerprint  first 16 hex digits of
//                HMAC-SHA256(api_key, "videotask fleet namespace" + host):
//                names the fleet without revealing anything usable about the
//                key (a different key or host gives a different fleet)
//   keys         vt:{<fingerprint>}:<kind>[:<task id>]; the one hash tag
//                {<fingerprint>} puts every key of a fleet in one Redis
//                Cluster slot, so multi-key scripts work there too
//   signing key  HMAC-SHA256(api_key, "videotask fleet state v1" + NUL + host),
//                used by SignedState; never stored or logged
//
// Rotating the API key moves the fleet to a new namespace (new, empty
// budget and cache), which is the safe reading of "another key".
// Task ids are used as given: callers pass ids already checked by
// ValidateTaskId (1-128 of [A-Za-z0-9_-]). Immutable; thread-safe.
// Error contract: none (every input gives keys).
#ifndef VIDEOTASK_SERVER_FLEET_FLEET_KEYS_H_
#define VIDEOTASK_SERVER_FLEET_FLEET_KEYS_H_

#include <string>

#include "absl/strings/string_view.h"

namespace videotask::fleet {

class FleetKeys {
 public:
  FleetKeys(absl::string_view api_key, absl::string_view upstream_host);

  const std::string& fingerprint() const { return fingerprint_; }
  // "vt:{<fingerprint>}:"
  const std::string& prefix() const { return prefix_; }

  std::string RateKey() const;                         // GCRA state
  std::string PauseKey() const;                        // shared 429 pause
  std::string StateKey(absl::string_view id) const;    // signed last state
  std::string TerminalKey(absl::string_view id) const; // signed terminal state
  std::string LeaseKey(absl::string_view id) const;    // poll lease
  std::string StatesChannel() const;                   // PUBLISH of new states
  std::string LeasesChannel() const;                   // PUBLISH of released leases

  // The 32-byte HMAC key for SignedState (binary).
  const std::string& signing_key() const { return signing_key_; }

 private:
  std::string fingerprint_;
  std::string prefix_;
  std::string signing_key_;
};

// HMAC-SHA256(key, data), 32 raw bytes (OpenSSL libcrypto).
std::string HmacSha256(absl::string_view key, absl::string_view data);

}  // namespace videotask::fleet

#endif  // VIDEOTASK_SERVER_FLEET_FLEET_KEYS_H_
