// SignedState: what sidecars of a fleet write to Redis for each other (a
// task's state), authenticated so that write access to Redis alone cannot
// feed watchers a forged COMPLETED or video URL.
//
// Entry format (binary): "vts1" | 32-byte HMAC-SHA256 | serialized
// videotask.v1.VideoTask, the MAC taken under FleetKeys::signing_key() over
// "vts1" + the serialized task. Verification recomputes the MAC and compares
// in constant time (CRYPTO_memcmp) before parsing anything.
//
// Error contract of Verify (each a short fixed message, to count by code):
//   DATA_LOSS          unsigned, truncated or unparsable entry
//   PERMISSION_DENIED  the MAC does not match (tampered, or another fleet)
//   FAILED_PRECONDITION the entry is for another task id than expected, or
//                      has no valid status
// A caller ignores a rejected entry and counts it (e.g. a
// videotask_fleet_entries_rejected_total metric). Thread-safe.
#ifndef VIDEOTASK_SERVER_FLEET_SIGNED_STATE_H_
#define VIDEOTASK_SERVER_FLEET_SIGNED_STATE_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "proto/videotask/v1/video_task.pb.h"
#include "server/fleet/fleet_keys.h"

namespace videotask::fleet {

class SignedState {
 public:
  // Signs with keys->current(), verifies with any of keys->accepted() (an
  // API key rotation: FleetKeys).
  explicit SignedState(std::shared_ptr<const SigningKeys> keys) : keys_(std::move(keys)) {}
  // Exactly this key (FleetKeys::signing_key()).
  explicit SignedState(std::string signing_key)
      : keys_(SigningKeys::FromSigningKey(std::move(signing_key))) {}

  std::string Sign(const videotask::v1::VideoTask& task) const;

  // Checks and parses an entry. `expected_id` empty: any id.
  absl::StatusOr<videotask::v1::VideoTask> Verify(absl::string_view entry,
                                                  absl::string_view expected_id = {}) const;

 private:
  std::shared_ptr<const SigningKeys> keys_;
};

}  // namespace videotask::fleet

#endif  // VIDEOTASK_SERVER_FLEET_SIGNED_STATE_H_
