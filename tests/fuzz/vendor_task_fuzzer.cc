// The vendor's response body (GET {base}/result/{id}): ParseVendorTask and
// the status words. Input: the body. Checks, besides no crash and no
// sanitizer report: an OK task has the requested id, a known status, a
// video_url only when COMPLETED and an error only when FAILED, valid
// Timestamp/Duration ranges; an error never quotes the body (messages are
// one of the fixed sentences, printable ASCII, short: at most the sanitized
// status excerpt comes from the body).
#include <cstdint>
#include <string>

#include "absl/strings/match.h"
#include "absl/time/time.h"
#include "server/upstream/task_json.h"
#include "tests/fuzz/fuzz_util.h"

using videotask::fuzz::AsView;
using videotask::fuzz::PrintableAscii;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::string_view body = AsView(data, size);
  const absl::Time observed = absl::FromUnixSeconds(1761635478);
  absl::StatusOr<videotask::v1::VideoTask> task =
      videotask::ParseVendorTask(body, "proj_1", observed);
  if (task.ok()) {
    FUZZ_CHECK(task->id() == "proj_1", "id");
    const auto st = task->status();
    FUZZ_CHECK(st >= videotask::v1::VIDEO_TASK_STATUS_QUEUED &&
                   st <= videotask::v1::VIDEO_TASK_STATUS_FAILED,
               "status");
    FUZZ_CHECK(task->video_url().empty() || st == videotask::v1::VIDEO_TASK_STATUS_COMPLETED,
               "video_url on a task that is not completed");
    FUZZ_CHECK(task->error().empty() || st == videotask::v1::VIDEO_TASK_STATUS_FAILED,
               "error on a task that is not failed");
    FUZZ_CHECK(task->create_time().seconds() >= -62135596800LL &&
                   task->create_time().seconds() <= 253402300799LL,
               "create_time out of Timestamp range");
    FUZZ_CHECK(task->actual_duration().seconds() >= 0 &&
                   task->actual_duration().nanos() >= 0 &&
                   task->actual_duration().nanos() < 1000000000,
               "actual_duration");
    FUZZ_CHECK(task->observe_time().seconds() == 1761635478, "observe_time");
    // The task must serialize (valid UTF-8 strings etc. are not required by
    // proto3 bytes fields, but serialization must not fail).
    std::string out;
    FUZZ_CHECK(task->SerializeToString(&out), "serialize");
  } else {
    const std::string msg(task.status().message());
    FUZZ_CHECK(task.status().code() == absl::StatusCode::kInvalidArgument, msg);
    FUZZ_CHECK(PrintableAscii(msg), "error message with non-printable bytes");
    // Only the fixed sentences, with at most a 32-character status excerpt:
    // nothing else from the body.
    static const char* const kSentences[] = {
        "upstream response is not valid JSON (",
        "upstream response is not a JSON object",
        "upstream response field \"",
        "upstream response is for a different task id than requested",
        "upstream response has no \"status\"",
        "unknown upstream task status \"",
    };
    bool known = false;
    for (const char* s : kSentences) known = known || absl::StartsWith(msg, s);
    FUZZ_CHECK(known, "unexpected error message: " + msg);
    FUZZ_CHECK(msg.size() <= 80, "error message too long: " + msg);
  }
  // The status word parser alone, on the same bytes.
  absl::StatusOr<videotask::v1::VideoTaskStatus> s = videotask::ParseVendorStatus(body);
  if (!s.ok()) FUZZ_CHECK(PrintableAscii(s.status().message()), "status message");
  const std::string excerpt = videotask::SanitizedExcerpt(body);
  FUZZ_CHECK(PrintableAscii(excerpt) && excerpt.size() <= 35, "excerpt");
  return 0;
}
