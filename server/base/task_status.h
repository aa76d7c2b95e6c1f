// The rules of a task's status, shared by the poll hub, the fleet gate and
// the soak's sequence check.
//
// A status only moves forward along queued < processing < completed|failed:
// StatusRank gives that order (0 for UNSPECIFIED or an unknown value, which
// ranks below every real status), and COMPLETED and FAILED, the terminal
// statuses, share the top rank: neither follows the other.
#ifndef VIDEOTASK_SERVER_BASE_TASK_STATUS_H_
#define VIDEOTASK_SERVER_BASE_TASK_STATUS_H_

#include "proto/videotask/v1/video_task.pb.h"

namespace videotask {

// COMPLETED or FAILED: the task will not change any more.
bool IsTerminal(videotask::v1::VideoTaskStatus status);

// Status only moves forward along this order: 1 queued, 2 processing,
// 3 completed or failed; 0 for anything else.
int StatusRank(videotask::v1::VideoTaskStatus status);

}  // namespace videotask

#endif  // VIDEOTASK_SERVER_BASE_TASK_STATUS_H_
