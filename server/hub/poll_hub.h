// PollHub: owns all upstream polling and fans every change out to watchers.
//
// Guarantees:
// - One poll per task: however many watchers an id has, the upstream is asked
//   about it at most once per poll interval (plus jitter), and never twice
//   at once. A Get of a watched id uses the hub's state.
// - At most `max_upstream_qps` requests start in any sliding one-second
//   window and at most `max_inflight` run at once; due tasks go earliest
//   first, so none starves. A request counts against the window from its
//   start until one second after its end, so requests that reach the vendor
//   late cannot bunch up there either. A 429 pauses all upstream traffic.
// - Every watcher sees, in order: one SNAPSHOT, then every status change as
//   a TRANSITION, with HEARTBEATs while nothing changes; the terminal event
//   is its last, or an error ends it (NOT_FOUND, FAILED_PRECONDITION,
//   UNAVAILABLE on drain). Nothing is fabricated: transient upstream errors
//   only delay the next poll (exponential backoff with jitter).
// - Status only moves forward; terminal states are sticky and cached for
//   `terminal_cache_ttl`. A task with no watchers is no longer polled; its
//   last state and next poll time are kept for one poll interval (so a
//   watcher that reconnects within it costs no upstream request and a Get
//   within it is answered from that state), then its memory is released.
// - Every upstream request serves a caller who is still waiting: a Get that
//   is cancelled (CancelGet) leaves the queue and, if nobody else waits for
//   that id, its request is never sent. Polls for watchers go before Gets,
//   and at most `max_pending_gets` Gets wait at once (RESOURCE_EXHAUSTED
//   beyond).
// - A 429 pauses all traffic for its Retry-After, capped at `backoff_max`.
// - A task with no state yet retries a failed first poll on a short backoff
//   (1 s doubling, capped at poll_interval), not the poll-interval backoff.
// - Sinks and Get callbacks are called without the hub's lock held, one
//   delivery at a time (never concurrently). With Create(), upstream
//   results, the gate's answers and shared states and archive results are
//   applied, and every event and Get answer is delivered, on the hub's
//   scheduler thread only: the client's and the gate's I/O threads and the
//   callers of Watch/Unwatch/Get/Drain only queue work and wake it. After
//   Shutdown() (no scheduler) late results are applied and delivered on the
//   thread that brings them.
//
// Fleet mode: before each request the hub asks its PollGate (default: the
// local one, which admits everything). The gate may let another sidecar
// poll the task (this hub then forwards the states the fleet shares, with
// the same SNAPSHOT / TRANSITION / HEARTBEAT rules, forward only), answer it
// from a shared state, or make it wait for the fleet's budget or 429 pause.
// Successful answers and 429s are told to the gate. After Shutdown() the
// hub never calls the gate again, so late results (an archive aborted as the
// archiver stops, a request the client completes as it stops) never reach
// the fleet.
//
// Archiving: with an Archiver, the first COMPLETED of a task is handed to it
// once (however many watchers); the COMPLETED event, and Gets, wait for its
// answer (the task with `archive` or `archive_error` set), which is then
// published like any transition. Polling stops meanwhile. After Shutdown()
// nothing new is handed to the archiver.
//
// Other upstream requests (creates) take their slots from the same rate
// window and in-flight cap, and honour and extend the same 429 pause,
// through the UpstreamBudget interface the hub implements.
//
// Time comes only from the injected Clock; every timer (polls, heartbeats,
// rate window, 429 pause, expiry) runs on its monotonic reading, so wall
// clock steps change nothing. Create() starts a scheduler thread;
// CreateForTest() does not (results are then applied on the thread that
// delivers them), and tests call RunDue() after advancing a SimulatedClock.
#ifndef VIDEOTASK_SERVER_HUB_POLL_HUB_H_
#define VIDEOTASK_SERVER_HUB_POLL_HUB_H_

#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/functional/any_invocable.h"
#include "absl/random/random.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "proto/videotask/v1/video_task.pb.h"
#include "server/archive/archiver.h"
#include "server/base/clock.h"
#include "server/base/metrics.h"
#include "server/hub/poll_gate.h"
#include "server/hub/upstream_budget.h"
#include "server/upstream/upstream_client.h"

namespace videotask {

// One message for watchers, built and serialized once, shared by all.
struct TaskEvent {
  videotask::v1::WatchVideoTaskResponse response;
  std::string serialized;  // response.SerializeAsString()
  bool terminal() const;
};

// Receives the events of one watch.
class WatchSink {
 public:
  virtual ~WatchSink() = default;
  // Events in order. After a terminal event nothing more arrives.
  virtual void OnEvent(std::shared_ptr<const TaskEvent> event) = 0;
  // The watch ended with an error; nothing more arrives.
  virtual void OnError(const absl::Status& status) = 0;
};

struct PollHubOptions {
  absl::Duration poll_interval = absl::Seconds(30);
  // Each next poll lands in poll_interval * [1 - jitter, 1 + jitter].
  double poll_jitter = 0.1;
  absl::Duration heartbeat_interval = absl::Seconds(15);
  int max_upstream_qps = 5;
  int max_inflight = 16;
  absl::Duration terminal_cache_ttl = absl::Hours(1);
  // Transient errors delay a task's next poll to poll_interval * 2^failures;
  // 429s without Retry-After pause all traffic for 5 s * 2^streak. Both are
  // capped here and jittered by +-20%.
  absl::Duration backoff_max = absl::Minutes(5);
  // Beyond this many open watches, Watch() returns RESOURCE_EXHAUSTED.
  int64_t max_watches = 100000;
  // Beyond this many Gets waiting for an upstream answer, Get() answers
  // RESOURCE_EXHAUSTED.
  int64_t max_pending_gets = 1000;
};

// INVALID_ARGUMENT unless every option is in range.
absl::Status ValidatePollHubOptions(const PollHubOptions& options);

class PollHub : public UpstreamBudget {
 public:
  using WatchId = uint64_t;
  using GetId = uint64_t;
  using GetCallback = absl::AnyInvocable<void(absl::StatusOr<videotask::v1::VideoTask>) &&>;

  struct Stats {
    int64_t active_watches = 0;
    int64_t watched_tasks = 0;  // tasks with at least one watcher
    int64_t tasks = 0;          // every task in memory, cached ones too
    int64_t inflight = 0;
    int64_t pending_gets = 0;   // Gets waiting for an upstream answer
    int64_t following = 0;      // watched tasks another sidecar polls
  };

  // `client`, `clock`, `metrics` (may be null), `gate` (null: local) and
  // `archiver` (null: off) must outlive the hub's Shutdown(), and their
  // callbacks must all have run before the hub is destroyed: call
  // Shutdown(), then destroy the client, the archiver and the gate (in any
  // order: the hub calls none of them after Shutdown()), then the hub.
  static absl::StatusOr<std::unique_ptr<PollHub>> Create(PollHubOptions options,
                                                         UpstreamClient* client, Clock* clock,
                                                         MetricsRegistry* metrics,
                                                         PollGate* gate = nullptr,
                                                         Archiver* archiver = nullptr);
  static absl::StatusOr<std::unique_ptr<PollHub>> CreateForTest(PollHubOptions options,
                                                                UpstreamClient* client,
                                                                Clock* clock,
                                                                MetricsRegistry* metrics,
                                                                uint64_t seed,
                                                                PollGate* gate = nullptr,
                                                                Archiver* archiver = nullptr);
  ~PollHub() override;

  // UpstreamBudget: a request the hub does not make (a create) holds a rate
  // and in-flight slot like a poll; its 429 pauses all traffic like a poll's.
  absl::StatusOr<absl::Duration> Acquire() override;
  void Release(bool rate_limited, std::optional<absl::Duration> retry_after) override;

  // Starts watching `id` (validated already). The sink's first event is a
  // SNAPSHOT, possibly delivered before Watch returns.
  // Errors: RESOURCE_EXHAUSTED at max_watches, UNAVAILABLE while draining.
  absl::StatusOr<WatchId> Watch(const std::string& id, std::shared_ptr<WatchSink> sink);
  // Stops a watch; no event is delivered to it after Unwatch returns unless
  // it was queued or under way before (with a scheduler thread, events
  // queued before Unwatch may still reach the sink on that thread). Unknown
  // ids are ignored.
  void Unwatch(WatchId watch);

  // The task's state: from the hub when it has one (terminal, watched, or
  // unwatched for less than a poll interval), else one upstream request
  // (which does not start polling). `done` runs once, possibly inline.
  // Errors: RESOURCE_EXHAUSTED at max_pending_gets, UNAVAILABLE while
  // draining, or the upstream's answer. Returns an id for CancelGet.
  GetId Get(const std::string& id, GetCallback done);
  // The caller of a pending Get has gone (cancelled, deadline): its `done`
  // runs with CANCELLED, and the request is dropped from the queue if nobody
  // else waits for it. Answered or unknown ids are ignored.
  void CancelGet(GetId get);

  // Refuses new watches and Gets with UNAVAILABLE and ends every open watch
  // with UNAVAILABLE. Polling stops.
  void Drain();
  // Drain() and stop the scheduler thread; from then on the gate and the
  // archiver are not called again.
  void Shutdown();

  // Starts what is due at the clock's Now(): polls within the rate and
  // in-flight caps, heartbeats, cache expiry. The scheduler thread calls it;
  // tests call it by hand.
  void RunDue();
  // When RunDue() next has work, on the clock's Monotonic() scale
  // (InfiniteFuture when only a completion or a new watch can create work).
  absl::Time NextWakeup();

  Stats GetStats();

 private:
  using TimerSet = std::set<std::pair<absl::Time, std::string>>;
  struct Watcher {
    std::shared_ptr<WatchSink> sink;
    bool snapshotted = false;
  };
  struct Task {
    std::string id;
    std::optional<videotask::v1::VideoTask> state;
    absl::flat_hash_map<WatchId, Watcher> watchers;
    std::vector<std::pair<GetId, GetCallback>> get_waiters;
    bool inflight = false;
    // Key in poll_set (due_ for watched tasks, get_due_ else) when finite.
    absl::Time next_poll = absl::InfiniteFuture();
    TimerSet* poll_set = nullptr;
    // When an unwatched task would have been polled next: a watcher that
    // comes back within the linger polls then, not at once.
    absl::Time parked_poll = absl::InfinitePast();
    absl::Time next_heartbeat = absl::InfiniteFuture();  // key in heartbeats_
    // Key in expiry_: the end of the terminal cache, or of an unwatched
    // task's linger. While set, the task is kept in memory.
    absl::Time expires = absl::InfiniteFuture();
    bool following = false;  // the gate's last word was kFollow
    bool archiving = false;  // COMPLETED handed to the archiver
    int transient_failures = 0;
    int not_found = 0;
  };
  struct Delivery {
    std::shared_ptr<WatchSink> sink;
    std::shared_ptr<const TaskEvent> event;  // null: error
    absl::Status error;
  };
  // Work the client and the gate hand to the scheduler thread.
  struct Completion {
    enum class Kind { kResult, kAdmission, kShared, kArchived };
    Kind kind = Kind::kResult;
    std::string id;
    UpstreamResult result;           // kResult
    PollGate::Admission admission;   // kAdmission; kShared, kArchived: .shared
  };

  PollHub(PollHubOptions options, UpstreamClient* client, Clock* clock,
          MetricsRegistry* metrics, uint64_t seed, PollGate* gate, Archiver* archiver);
  void Loop();

  Task* FindTask(const std::string& id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void SetTimer(TimerSet& set, absl::Time& slot, const std::string& id, absl::Time t)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Schedules the task's next poll at `t` (InfiniteFuture: none) in the
  // queue its callers belong to: due_ while it has watchers, else get_due_.
  void SchedulePoll(Task& task, absl::Time t) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Moves a scheduled poll to the right queue after its watchers changed.
  void RequeuePoll(Task& task) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Last watcher gone: stop polling, keep state and schedule for a linger.
  void Park(Task& task, absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Duration Jittered(absl::Duration d, double fraction) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // base * 2^n, capped at backoff_max, +-20% jitter.
  absl::Duration Backoff(absl::Duration base, int n) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::shared_ptr<const TaskEvent> MakeEvent(const Task& task,
                                             videotask::v1::WatchVideoTaskResponse::EventType type,
                                             videotask::v1::VideoTaskStatus previous);
  // Starts due polls; returns (id, watched) of the requests to put to the
  // gate once the lock is released.
  std::vector<std::pair<std::string, bool>> StartDueLocked(absl::Time now)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void IssueFetches(PollGate* gate, std::vector<std::pair<std::string, bool>> ids)
      ABSL_LOCKS_EXCLUDED(mu_);
  // The gate's answer for a started poll (any thread).
  void OnAdmission(const std::string& id, PollGate::Admission admission) ABSL_LOCKS_EXCLUDED(mu_);
  // The gate handed this sidecar the lease of a task it follows (any thread).
  void OnTakeover(const std::string& id) ABSL_LOCKS_EXCLUDED(mu_);
  void ApplyAdmission(const std::string& id, PollGate::Admission admission)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A state another sidecar observed (any thread).
  void OnShared(videotask::v1::VideoTask state) ABSL_LOCKS_EXCLUDED(mu_);
  // Applies a shared state to a task this hub holds (forward only) and
  // answers its Gets from it.
  void ApplyShared(Task& task, videotask::v1::VideoTask state, absl::Time now)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A state from outside (kShared, kArchived) for the task `state.id()`:
  // queued or applied, then flushed.
  void Enqueue(Completion::Kind kind, videotask::v1::VideoTask state) ABSL_LOCKS_EXCLUDED(mu_);
  // Queues `c` for the scheduler thread, or applies it now without one.
  void EnqueueLocked(Completion c) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ApplyCompletion(Completion c) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Called by the client (any thread): accounts the request and queues the
  // result for the scheduler thread (or applies it, without one).
  void OnResult(const std::string& id, UpstreamResult result) ABSL_LOCKS_EXCLUDED(mu_);
  void ApplyResult(const std::string& id, UpstreamResult result)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ApplyState(Task& task, videotask::v1::VideoTask state, absl::Time now)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void EndTask(Task& task, const absl::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Publish(Task& task, videotask::v1::WatchVideoTaskResponse::EventType type,
               videotask::v1::VideoTaskStatus previous, bool only_new) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void MaybeRelease(const std::string& id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void AnswerGets(Task& task, const absl::StatusOr<videotask::v1::VideoTask>& answer)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A 429 (from a poll or a create): pauses all traffic for its Retry-After
  // (capped at backoff_max) or a backoff, tells the gate; returns the pause.
  absl::Duration PauseForRateLimitLocked(std::optional<absl::Duration> retry_after, absl::Time now)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The delay before retrying a failed poll.
  absl::Duration RetryDelay(const Task& task) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The task entry for `id`, created empty when there is none.
  Task& TaskLocked(const std::string& id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Runs queued deliveries, Get answers and archive hand-overs outside the
  // lock, one at a time. With a scheduler thread only that thread runs
  // them; any other caller wakes it.
  void Flush() ABSL_LOCKS_EXCLUDED(mu_);
  void Kick() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const PollHubOptions options_;
  UpstreamClient* const client_;
  Clock* const clock_;
  LocalPollGate local_gate_;
  Archiver* const archiver_;  // null: archiving off

  MetricsRegistry* const metrics_;
  Counter* rate_limited_total_ = nullptr;
  Histogram* request_duration_ = nullptr;

  absl::Mutex mu_;
  // The gate given at creation; &local_gate_ after Shutdown().
  PollGate* gate_ ABSL_GUARDED_BY(mu_);
  absl::BitGen rng_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, std::unique_ptr<Task>> tasks_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<WatchId, std::string> watch_index_ ABSL_GUARDED_BY(mu_);
  TimerSet due_ ABSL_GUARDED_BY(mu_);      // polls of watched tasks
  TimerSet get_due_ ABSL_GUARDED_BY(mu_);  // requests only Gets wait for
  absl::flat_hash_map<GetId, std::string> get_index_ ABSL_GUARDED_BY(mu_);
  int64_t pending_gets_ ABSL_GUARDED_BY(mu_) = 0;
  GetId next_get_id_ ABSL_GUARDED_BY(mu_) = 1;
  // Results the client delivered, applied by the scheduler thread.
  std::vector<Completion> completions_ ABSL_GUARDED_BY(mu_);
  bool threaded_ ABSL_GUARDED_BY(mu_) = false;  // a scheduler thread runs
  std::thread::id scheduler_ ABSL_GUARDED_BY(mu_);  // that thread, once it runs
  bool shut_down_ ABSL_GUARDED_BY(mu_) = false;    // Shutdown() has finished
  TimerSet heartbeats_ ABSL_GUARDED_BY(mu_);
  TimerSet expiry_ ABSL_GUARDED_BY(mu_);
  // End times of the requests that ended within the last second.
  std::deque<absl::Time> window_ ABSL_GUARDED_BY(mu_);
  absl::Time paused_until_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  // The fleet's budget or pause said wait: no request starts before this.
  absl::Time fleet_wait_until_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  int rate_limit_streak_ ABSL_GUARDED_BY(mu_) = 0;
  int inflight_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t active_watches_ ABSL_GUARDED_BY(mu_) = 0;
  WatchId next_watch_id_ ABSL_GUARDED_BY(mu_) = 1;
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool kicked_ ABSL_GUARDED_BY(mu_) = false;

  // Work for Flush(), in the order it was produced.
  std::vector<Delivery> outbox_ ABSL_GUARDED_BY(mu_);
  std::vector<std::pair<GetCallback, absl::StatusOr<videotask::v1::VideoTask>>> answers_
      ABSL_GUARDED_BY(mu_);
  bool flushing_ ABSL_GUARDED_BY(mu_) = false;
  // COMPLETED tasks to hand to the archiver once the lock is released.
  std::vector<videotask::v1::VideoTask> to_archive_ ABSL_GUARDED_BY(mu_);

  std::thread thread_;
};

}  // namespace videotask

#endif  // VIDEOTASK_SERVER_HUB_POLL_HUB_H_
