#include "server/base/task_id.h"

#include "absl/strings/str_cat.h"

namespace videotask {

absl::Status ValidateTaskId(absl::string_view id) {
  if (id.empty()) {
    return absl::InvalidArgumentError("task id is empty");
  }
  if (id.size() > kMaxTaskIdLength) {
    return absl::InvalidArgumentError(absl::StrCat(
        "task id is ", id.size(), " characters long; the maximum is ",
        kMaxTaskIdLength));
  }
  for (size_t i = 0; i < id.size(); ++i) {
    const char c = id[i];
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                    (c >= '0' && c <= '9') || c == '_' || c == '-';
    if (!ok) {
      return absl::InvalidArgumentError(absl::StrCat(
          "task id has a character outside [A-Za-z0-9_-] at offset ", i));
    }
  }
  return absl::OkStatus();
}

}  // namespace videotask
