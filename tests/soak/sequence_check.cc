#include "tests/soak/sequence_check.h"

#include "absl/strings/str_cat.h"

namespace videotask::soak {
namespace {

using videotask::v1::VideoTaskStatus;
using videotask::v1::WatchVideoTaskResponse;

std::string TypeName(WatchVideoTaskResponse::EventType t) {
  return WatchVideoTaskResponse::EventType_Name(t);
}

}  // namespace

std::string StatusWord(VideoTaskStatus status) {
  switch (status) {
    case videotask::v1::VIDEO_TASK_STATUS_QUEUED:
      return "queued";
    case videotask::v1::VIDEO_TASK_STATUS_PROCESSING:
      return "processing";
    case videotask::v1::VIDEO_TASK_STATUS_COMPLETED:
      return "completed";
    case videotask::v1::VIDEO_TASK_STATUS_FAILED:
      return "failed";
    default:
      return "";
  }
}

void SequenceCheck::Violation(const std::string& what) {
  violations_.push_back(absl::StrCat("watch ", id_, ": ", what));
}

void SequenceCheck::OnMessage(const WatchVideoTaskResponse& m) {
  const VideoTaskStatus status = m.task().status();
  const std::string where = absl::StrCat("message ", messages_ + 1, " (", TypeName(m.type()), " ",
                                         videotask::v1::VideoTaskStatus_Name(status), ")");
  if (ended_) Violation(absl::StrCat(where, " after the stream ended"));
  if (terminal_) Violation(absl::StrCat(where, " after the terminal message"));
  if (!valid_id_) Violation(absl::StrCat(where, " for an invalid id"));
  if (m.task().id() != id_) Violation(absl::StrCat(where, " carries id ", m.task().id()));
  const std::string word = StatusWord(status);
  if (word.empty()) {
    Violation(absl::StrCat(where, ": no valid status"));
  } else if (served_(id_, word) == 0) {
    Violation(absl::StrCat(where, ": made up, the upstream never served ", word));
  }
  if (messages_ == 0) {
    if (m.type() != WatchVideoTaskResponse::EVENT_TYPE_SNAPSHOT) {
      Violation(absl::StrCat(where, ": the first message is not a SNAPSHOT"));
    }
  } else {
    switch (m.type()) {
      case WatchVideoTaskResponse::EVENT_TYPE_TRANSITION:
        if (m.previous_status() != last_) {
          Violation(absl::StrCat(where, ": previous_status ",
                                 videotask::v1::VideoTaskStatus_Name(m.previous_status()),
                                 " but the last message had ",
                                 videotask::v1::VideoTaskStatus_Name(last_)));
        }
        if (StatusRank(status) <= StatusRank(last_)) {
          Violation(absl::StrCat(where, ": not forward from ",
                                 videotask::v1::VideoTaskStatus_Name(last_)));
        }
        break;
      case WatchVideoTaskResponse::EVENT_TYPE_HEARTBEAT:
        if (status != last_) {
          Violation(absl::StrCat(where, ": a HEARTBEAT changes the status from ",
                                 videotask::v1::VideoTaskStatus_Name(last_)));
        }
        break;
      default:
        Violation(absl::StrCat(where, ": unexpected type after the first message"));
    }
  }
  ++messages_;
  last_ = status;
  if (IsTerminal(status)) terminal_ = true;
}

void SequenceCheck::OnEnd(const absl::Status& status) {
  if (ended_) {
    Violation("ended twice");
    return;
  }
  ended_ = true;
  const std::string code = absl::StatusCodeToString(status.code());
  if (!valid_id_) {
    if (status.code() != absl::StatusCode::kInvalidArgument) {
      Violation(absl::StrCat("an invalid id ended with ", code, ", not INVALID_ARGUMENT"));
    }
    return;
  }
  switch (status.code()) {
    case absl::StatusCode::kOk:
      if (!terminal_) Violation("ended OK without a COMPLETED or FAILED message");
      return;
    // Our deadline or cancel, a drain or restart: possible at any time, also
    // racing with a terminal message.
    case absl::StatusCode::kCancelled:
    case absl::StatusCode::kDeadlineExceeded:
    case absl::StatusCode::kUnavailable:
      return;
    case absl::StatusCode::kNotFound:
      if (terminal_) Violation("NOT_FOUND after a terminal message");
      if (served_(id_, "404") < 2) {
        Violation(absl::StrCat("NOT_FOUND, but the upstream served ", served_(id_, "404"),
                               " 404s for it (a watch needs two)"));
      }
      return;
    case absl::StatusCode::kFailedPrecondition:
      if (terminal_) Violation("FAILED_PRECONDITION after a terminal message");
      if (served_(id_, "401") < 1) Violation("FAILED_PRECONDITION, but no 401 was served");
      return;
    default:
      Violation(absl::StrCat("ended with ", code, ": ", status.message()));
  }
}

std::vector<std::string> CheckGet(const std::string& id, bool valid_id, const ServedFn& served,
                                  const absl::Status& status,
                                  const videotask::v1::VideoTask* task) {
  std::vector<std::string> out;
  auto violation = [&](const std::string& what) { out.push_back(absl::StrCat("get ", id, ": ", what)); };
  const std::string code = absl::StatusCodeToString(status.code());
  if (!valid_id) {
    if (status.code() != absl::StatusCode::kInvalidArgument) {
      violation(absl::StrCat("an invalid id answered ", code, ", not INVALID_ARGUMENT"));
    }
    return out;
  }
  switch (status.code()) {
    case absl::StatusCode::kOk: {
      if (task == nullptr) {
        violation("OK without a task");
        break;
      }
      if (task->id() != id) violation(absl::StrCat("answered for id ", task->id()));
      const std::string word = StatusWord(task->status());
      if (word.empty()) {
        violation("no valid status");
      } else if (served(id, word) == 0) {
        violation(absl::StrCat("made up, the upstream never served ", word));
      }
      break;
    }
    case absl::StatusCode::kCancelled:
    case absl::StatusCode::kDeadlineExceeded:
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kResourceExhausted:  // max_pending_gets Gets wait already
      break;
    case absl::StatusCode::kNotFound:
      if (served(id, "404") < 1) violation("NOT_FOUND, but no 404 was served");
      break;
    case absl::StatusCode::kFailedPrecondition:
      if (served(id, "401") < 1) violation("FAILED_PRECONDITION, but no 401 was served");
      break;
    default:
      violation(absl::StrCat("answered ", code, ": ", status.message()));
  }
  return out;
}

}  // namespace videotask::soak
