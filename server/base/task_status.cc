#include "server/base/task_status.h"

namespace videotask {

using videotask::v1::VideoTaskStatus;

bool IsTerminal(VideoTaskStatus status) {
  return status == videotask::v1::VIDEO_TASK_STATUS_COMPLETED ||
         status == videotask::v1::VIDEO_TASK_STATUS_FAILED;
}

int StatusRank(VideoTaskStatus status) {
  switch (status) {
    case videotask::v1::VIDEO_TASK_STATUS_QUEUED:
      return 1;
    case videotask::v1::VIDEO_TASK_STATUS_PROCESSING:
      return 2;
    case videotask::v1::VIDEO_TASK_STATUS_COMPLETED:
    case videotask::v1::VIDEO_TASK_STATUS_FAILED:
      return 3;
    default:
      return 0;
  }
}

}  // namespace videotask
