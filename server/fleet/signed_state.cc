#include "server/fleet/signed_state.h"

#include <openssl/crypto.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "server/fleet/fleet_keys.h"

namespace videotask::fleet {
namespace {

constexpr absl::string_view kMagic = "vts1";
constexpr size_t kMacBytes = 32;
// A task message is small; refuse to parse anything absurd.
constexpr size_t kMaxEntryBytes = 64 * 1024;

}  // namespace

std::string SignedState::Sign(const videotask::v1::VideoTask& task) const {
  std::string body;
  task.SerializeToString(&body);
  const std::string mac = HmacSha256(keys_->current(), absl::StrCat(kMagic, body));
  return absl::StrCat(kMagic, mac, body);
}

absl::StatusOr<videotask::v1::VideoTask> SignedState::Verify(absl::string_view entry,
                                                             absl::string_view expected_id) const {
  if (entry.size() < kMagic.size() + kMacBytes || !absl::StartsWith(entry, kMagic) ||
      entry.size() > kMaxEntryBytes) {
    return absl::DataLossError("fleet entry unsigned or malformed");
  }
  const absl::string_view mac = entry.substr(kMagic.size(), kMacBytes);
  const absl::string_view body = entry.substr(kMagic.size() + kMacBytes);
  bool signed_ok = false;
  for (const std::string& key : keys_->accepted()) {  // current first
    const std::string want = HmacSha256(key, absl::StrCat(kMagic, body));
    if (CRYPTO_memcmp(want.data(), mac.data(), kMacBytes) == 0) {
      signed_ok = true;
      break;
    }
  }
  if (!signed_ok) return absl::PermissionDeniedError("fleet entry signature mismatch");
  videotask::v1::VideoTask task;
  if (!task.ParseFromArray(body.data(), static_cast<int>(body.size()))) {
    return absl::DataLossError("fleet entry unsigned or malformed");
  }
  if (!expected_id.empty() && task.id() != expected_id) {
    return absl::FailedPreconditionError("fleet entry for another task");
  }
  if (task.status() == videotask::v1::VIDEO_TASK_STATUS_UNSPECIFIED ||
      !videotask::v1::VideoTaskStatus_IsValid(task.status())) {
    return absl::FailedPreconditionError("fleet entry without a valid status");
  }
  return task;
}

}  // namespace videotask::fleet
