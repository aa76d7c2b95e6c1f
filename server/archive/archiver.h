// Archiver: makes the durable copy of a COMPLETED task's video before its
// temporary URL expires.
//
// The poll hub calls Archive() once per task, when it first sees COMPLETED
// (however many watchers the task has), and holds the COMPLETED event and
// Gets until `done`; it then publishes the task `done` returned.
//
// Contract for implementations: `task` is COMPLETED with a video_url.
// `done` runs exactly once, on any thread, never inline with the caller's
// locks held (the hub calls Archive without its lock), with the task
// carrying `archive` (success) or `archive_error` (failure after retries up
// to the archive timeout) set: the event is delayed, never dropped.
#ifndef VIDEOTASK_SERVER_ARCHIVE_ARCHIVER_H_
#define VIDEOTASK_SERVER_ARCHIVE_ARCHIVER_H_

#include <string>

#include "absl/functional/any_invocable.h"
#include "proto/videotask/v1/video_task.pb.h"

namespace videotask {

class Archiver {
 public:
  using Done = absl::AnyInvocable<void(videotask::v1::VideoTask) &&>;
  virtual ~Archiver() = default;
  virtual void Archive(const videotask::v1::VideoTask& task, Done done) = 0;
};

// The task as an implementation hands it to `done`: with `archive` and no
// archive_error when `archive` is set, else with no archive and `error`.
inline videotask::v1::VideoTask WithArchiveOutcome(videotask::v1::VideoTask task,
                                                   const videotask::v1::VideoArchive* archive,
                                                   const std::string& error) {
  if (archive != nullptr) {
    *task.mutable_archive() = *archive;
    task.clear_archive_error();
  } else {
    task.clear_archive();
    task.set_archive_error(error);
  }
  return task;
}

}  // namespace videotask

#endif  // VIDEOTASK_SERVER_ARCHIVE_ARCHIVER_H_
