// Task id validation, done before any upstream request.
//
// A valid id is 1-128 characters of [A-Za-z0-9_-]; anything else (path
// separators, dots, percent escapes, whitespace, control characters) is
// rejected, so an id can be put in a URL path without escaping.
#ifndef VIDEOTASK_SERVER_BASE_TASK_ID_H_
#define VIDEOTASK_SERVER_BASE_TASK_ID_H_

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace videotask {

inline constexpr size_t kMaxTaskIdLength = 128;

// OK, or INVALID_ARGUMENT with a message that never echoes the raw id.
absl::Status ValidateTaskId(absl::string_view id);

}  // namespace videotask

#endif  // VIDEOTASK_SERVER_BASE_TASK_ID_H_
