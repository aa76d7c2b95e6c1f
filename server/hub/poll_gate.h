// PollGate: what the poll hub asks before each upstream request and tells
// after each answer, so that several sidecars can share one vendor budget,
// one poll per task and one task state (fleet mode) while the hub keeps its
// guarantees in one place and knows nothing of how they are shared.
//
// LocalPollGate (one pod, the default) admits every request at once and
// shares nothing: the hub's own caps are the whole story.
//
// Contract for implementations: Admit's `done` runs exactly once, inline or
// on another thread, never with a lock of the hub held; every other method
// must not block and must not call back into the hub inline (the hub may
// hold its lock). A gate that cannot reach what it shares through (Redis
// down) admits with kPoll: a fault in a helper degrades to one-pod
// behaviour, never to errors.
#ifndef VIDEOTASK_SERVER_HUB_POLL_GATE_H_
#define VIDEOTASK_SERVER_HUB_POLL_GATE_H_

#include <optional>
#include <string>

#include "absl/functional/any_invocable.h"
#include "absl/time/time.h"
#include "proto/videotask/v1/video_task.pb.h"

namespace videotask {

class PollGate {
 public:
  struct Admission {
    enum class Kind {
      kPoll,    // make the request (after applying `shared`, if set)
      kFollow,  // don't: another sidecar polls it, or `shared` answers it
      kWait,    // don't now: the fleet's budget or 429 pause; ask after `wait`
    };
    Kind kind = Kind::kPoll;
    // The fleet's last known state of the task, verified, when there is one.
    std::optional<videotask::v1::VideoTask> shared;
    absl::Duration wait = absl::ZeroDuration();
  };
  using AdmitDone = absl::AnyInvocable<void(Admission) &&>;
  using Listener = absl::AnyInvocable<void(videotask::v1::VideoTask)>;
  using Takeover = absl::AnyInvocable<void(const std::string& id)>;

  virtual ~PollGate() = default;

  // Before an upstream request for `id`: `watched` when watchers wait for it
  // (this sidecar then holds or renews the task's poll lease), else only
  // Gets do (no lease; a shared state answers them).
  virtual void Admit(const std::string& id, bool watched, AdmitDone done) = 0;
  // A successful upstream answer, to share with the fleet.
  virtual void Observed(const videotask::v1::VideoTask& task) = 0;
  // A 429: the whole fleet pauses for `pause`.
  virtual void RateLimited(absl::Duration pause) = 0;
  // This sidecar's last watcher of `id` left (or the task ended for its
  // watchers): another may poll it now, unless it is being archived here.
  virtual void Released(const std::string& id) = 0;
  // The COMPLETED state of `id` was handed to this sidecar's archiver: the
  // fleet should wait for the archived state (Observed) instead of polling
  // and downloading the video again, whether watchers stay or not.
  virtual void Archiving(const std::string& id) = 0;
  // The sidecar drains: let go of everything held for the fleet now (so
  // others take over at their next ask), archives in progress included.
  virtual void Drain() = 0;
  // States other sidecars observed are handed to `listener` (any thread, no
  // lock of the gate held). Set once, before the first Admit.
  virtual void SetListener(Listener listener) = 0;
  // This sidecar now holds the lease of `id`, which it followed (the holder
  // let go, or died): ask Admit for it now rather than at the next
  // interval. Same threading as the listener. Set once, before the first
  // Admit.
  virtual void SetTakeover(Takeover takeover) = 0;
};

// One pod: every request is admitted at once, inline; nothing is shared.
class LocalPollGate : public PollGate {
 public:
  void Admit(const std::string&, bool, AdmitDone done) override { std::move(done)(Admission{}); }
  void Observed(const videotask::v1::VideoTask&) override {}
  void RateLimited(absl::Duration) override {}
  void Released(const std::string&) override {}
  void Archiving(const std::string&) override {}
  void Drain() override {}
  void SetListener(Listener) override {}
  void SetTakeover(Takeover) override {}
};

}  // namespace videotask

#endif  // VIDEOTASK_SERVER_HUB_POLL_GATE_H_
