// Parsing of the vendor's `GET {base}/result/{id}` response body into a
// videotask.v1.VideoTask.
//
// The vendor's schema (all fields optional except `status`, any may be null,
// unknown fields are ignored):
//   {"id": "proj_1", "object": "video", "created": 1761635478,
//    "model": "videos", "status": "processing", "video_url": null,
//    "actualDuration": 8.0, "error": null}
//
// Strict where it matters: a body that is not a JSON object, a missing or
// null `status`, an unknown status string, a non-null value of the wrong
// type, or an `id` that differs from the requested one are errors, never a
// guess. Error messages never contain the body; at most a short, sanitized
// excerpt of the status string.
#ifndef VIDEOTASK_SERVER_UPSTREAM_TASK_JSON_H_
#define VIDEOTASK_SERVER_UPSTREAM_TASK_JSON_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "proto/videotask/v1/video_task.pb.h"

namespace videotask {

// Maps a vendor status string to the API's enum. Case-insensitive; leading
// and trailing whitespace is ignored and '-' and ' ' count as '_'. Accepts:
//   QUEUED      queued pending submitted waiting created in_queue not_started
//   PROCESSING  processing in_progress running generating started active
//   COMPLETED   completed complete succeeded success successful done finished
//   FAILED      failed failure error errored cancelled canceled rejected
// Anything else is INVALID_ARGUMENT.
absl::StatusOr<videotask::v1::VideoTaskStatus> ParseVendorStatus(
    absl::string_view status);

// Parses one response body. `requested_id` becomes the task's id (the body's
// `id`, when present, must equal it); `observe_time` is stored as the task's
// observe_time. `create_time` comes from `created` (unix seconds),
// `actual_duration` from `actualDuration` (seconds, fractional allowed; kept
// only when COMPLETED), `video_url` is kept only when COMPLETED and `error`
// only when FAILED. Errors are INVALID_ARGUMENT.
absl::StatusOr<videotask::v1::VideoTask> ParseVendorTask(
    absl::string_view body, absl::string_view requested_id,
    absl::Time observe_time);

// A short excerpt of untrusted text that is safe to put in an error message
// or a log line: at most `max_chars` printable ASCII characters, anything
// else replaced by '?', with "..." appended when cut.
std::string SanitizedExcerpt(absl::string_view text, size_t max_chars = 32);

}  // namespace videotask

#endif  // VIDEOTASK_SERVER_UPSTREAM_TASK_JSON_H_
