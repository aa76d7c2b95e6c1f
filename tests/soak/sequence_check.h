// SequenceCheck: the rules every WatchVideoTask stream must follow, checked
// message by message, for the chaos soak (real sidecar over gRPC) and its
// unit-level variant (the poll hub on a simulated clock):
// - the first message is a SNAPSHOT, and the only one;
// - a TRANSITION carries the previous message's status as previous_status and
//   moves status strictly forward (queued < processing < completed|failed);
// - a HEARTBEAT repeats the current status;
// - a COMPLETED or FAILED message is the last one, and a stream ends with OK
//   only after one;
// - every message is about the watched id, and its status is one the
//   upstream really served for that id (nothing made up);
// - NOT_FOUND needs two 404s served for the id, FAILED_PRECONDITION a 401;
//   INVALID_ARGUMENT is for invalid ids only (and for them always).
#ifndef VIDEOTASK_TESTS_SOAK_SEQUENCE_CHECK_H_
#define VIDEOTASK_TESTS_SOAK_SEQUENCE_CHECK_H_

#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "proto/videotask/v1/video_task.pb.h"
#include "server/base/task_status.h"

namespace videotask::soak {

// How many answers for `id` carried `what`: "queued", "processing",
// "completed", "failed", or "404", "401" (SimUpstream::ServedCount).
using ServedFn = std::function<int(const std::string& id, const std::string& what)>;

// The sim's word for a status ("queued", ...), "" for UNSPECIFIED/unknown.
std::string StatusWord(videotask::v1::VideoTaskStatus status);
// COMPLETED or FAILED (server/base/task_status.h).
using videotask::IsTerminal;

class SequenceCheck {
 public:
  SequenceCheck(std::string id, bool valid_id, ServedFn served)
      : id_(std::move(id)), valid_id_(valid_id), served_(std::move(served)) {}

  // One message of the stream, in order. Violations are appended to
  // violations().
  void OnMessage(const videotask::v1::WatchVideoTaskResponse& message);
  // The stream's final status (CANCELLED and DEADLINE_EXCEEDED, the
  // caller's doing, and UNAVAILABLE, a drain or restart, may come any time).
  void OnEnd(const absl::Status& status);

  const std::vector<std::string>& violations() const { return violations_; }
  int messages() const { return messages_; }
  bool terminal() const { return terminal_; }
  bool snapshotted() const { return messages_ > 0; }
  videotask::v1::VideoTaskStatus last_status() const { return last_; }

 private:
  void Violation(const std::string& what);

  const std::string id_;
  const bool valid_id_;
  const ServedFn served_;
  int messages_ = 0;
  bool terminal_ = false;
  bool ended_ = false;
  videotask::v1::VideoTaskStatus last_ = videotask::v1::VIDEO_TASK_STATUS_UNSPECIFIED;
  std::vector<std::string> violations_;
};

// The same rules for a GetVideoTask answer (RESOURCE_EXHAUSTED is fine here:
// max_pending_gets Gets may be waiting).
std::vector<std::string> CheckGet(const std::string& id, bool valid_id, const ServedFn& served,
                                  const absl::Status& status,
                                  const videotask::v1::VideoTask* task);

}  // namespace videotask::soak

#endif  // VIDEOTASK_TESTS_SOAK_SEQUENCE_CHECK_H_
