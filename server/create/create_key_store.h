// CreateKeyStore: where the sidecar remembers idempotency keys
// (CreateVideoTask's request_id) and what became of each create.
//
// A key is claimed atomically by one caller, with a fingerprint of its
// family and body; the claimant then records the outcome (the created task,
// or "unknown": the vendor may have created it) or releases the key when
// the vendor surely created nothing. Every other caller of that key sees the
// claim (pending) or the outcome, and may wait for a pending claim to
// settle. Recorded outcomes are kept for the store's TTL from when they were
// recorded; a pending claim stays until it is recorded or released.
//
// Implementations: MemoryCreateKeyStore (one sidecar, bounded, forgotten on
// restart) and, in fleet mode, fleet::RedisCreateKeyStore
// (server/fleet/redis_create_key_store.h: claimed by a Lua script, signed
// like the other fleet entries). A store that cannot be reached answers
// UNAVAILABLE, never "absent".
#ifndef VIDEOTASK_SERVER_CREATE_CREATE_KEY_STORE_H_
#define VIDEOTASK_SERVER_CREATE_CREATE_KEY_STORE_H_

#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "proto/videotask/v1/video_task.pb.h"

namespace videotask {

// What a key holds.
struct CreateRecord {
  enum class State {
    kPending,  // claimed; the claimant's create is under way
    kCreated,  // `task` is what the vendor's create answer said
    kUnknown,  // sent, no usable answer: the vendor may have created it
  };
  State state = State::kPending;
  std::string fingerprint;
  videotask::v1::VideoTask task;  // kCreated
  std::string detail;             // kUnknown: what happened
};

class CreateKeyStore {
 public:
  virtual ~CreateKeyStore() = default;

  // Atomically: when `key` holds nothing (or its outcome expired), claims it
  // for the caller with `fingerprint` and returns nullopt; the caller must
  // then Record() or Release() it. Otherwise returns what it holds and
  // changes nothing. RESOURCE_EXHAUSTED when the store is full of keys that
  // are still remembered; UNAVAILABLE when it cannot be reached.
  virtual absl::StatusOr<std::optional<CreateRecord>> Claim(const std::string& key,
                                                            const std::string& fingerprint) = 0;
  // The claimant's outcome (kCreated or kUnknown; the claim's fingerprint is
  // kept). Wakes the callers waiting in AwaitSettled.
  virtual absl::Status Record(const std::string& key, CreateRecord outcome) = 0;
  // The claimant created nothing: the key holds nothing again.
  virtual absl::Status Release(const std::string& key) = 0;
  // What `key` holds now; nullopt when nothing.
  virtual absl::StatusOr<std::optional<CreateRecord>> Lookup(const std::string& key) = 0;
  // Waits while `key` is pending, at most until `deadline` (on the store's
  // clock's Monotonic() scale); then as Lookup (still kPending when the
  // deadline came first).
  virtual absl::StatusOr<std::optional<CreateRecord>> AwaitSettled(const std::string& key,
                                                                   absl::Time deadline) = 0;
};

}  // namespace videotask

#endif  // VIDEOTASK_SERVER_CREATE_CREATE_KEY_STORE_H_
