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
//   `terminal_cache_ttl`; a task with no watchers is no longer polled and its
//   memory is released unless a terminal state is cached.
// - Sinks are called without the hub's lock held, from whichever thread
//   drove the change, one delivery at a time (never concurrently).
//
// Time comes only from the injected Clock. Create() starts a scheduler
// thread; CreateForTest() does not, and tests call RunDue() after advancing
// a SimulatedClock.
#ifndef VIDEOTASK_SERVER_POLL_HUB_H_
#define VIDEOTASK_SERVER_POLL_HUB_H_

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
#include "server/clock.h"
#include "server/metrics.h"
#include "server/upstream_client.h"

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
};

// INVALID_ARGUMENT unless every option is in range.
absl::Status ValidatePollHubOptions(const PollHubOptions& options);

class PollHub {
 public:
  using WatchId = uint64_t;
  using GetCallback = absl::AnyInvocable<void(absl::StatusOr<videotask::v1::VideoTask>) &&>;

  struct Stats {
    int64_t active_watches = 0;
    int64_t watched_tasks = 0;  // tasks with at least one watcher
    int64_t tasks = 0;          // every task in memory, cached ones too
    int64_t inflight = 0;
  };

  // `client`, `clock` and `metrics` (may be null) must outlive the hub, and
  // the client's callbacks must all have run before the hub is destroyed:
  // call Shutdown(), then destroy the client, then the hub.
  static absl::StatusOr<std::unique_ptr<PollHub>> Create(PollHubOptions options,
                                                         UpstreamClient* client, Clock* clock,
                                                         MetricsRegistry* metrics);
  static absl::StatusOr<std::unique_ptr<PollHub>> CreateForTest(PollHubOptions options,
                                                                UpstreamClient* client,
                                                                Clock* clock,
                                                                MetricsRegistry* metrics,
                                                                uint64_t seed);
  ~PollHub();

  // Starts watching `id` (validated already). The sink's first event is a
  // SNAPSHOT, possibly delivered before Watch returns.
  // Errors: RESOURCE_EXHAUSTED at max_watches, UNAVAILABLE while draining.
  absl::StatusOr<WatchId> Watch(const std::string& id, std::shared_ptr<WatchSink> sink);
  // Stops a watch; no event is delivered to it after Unwatch returns unless
  // a delivery was already under way. Unknown ids are ignored.
  void Unwatch(WatchId watch);

  // The task's state: cached when fresh, else one upstream request (which
  // does not start polling). `done` runs once, possibly inline.
  void Get(const std::string& id, GetCallback done);

  // Refuses new watches and Gets with UNAVAILABLE and ends every open watch
  // with UNAVAILABLE. Polling stops.
  void Drain();
  // Drain() and stop the scheduler thread.
  void Shutdown();

  // Starts what is due at the clock's Now(): polls within the rate and
  // in-flight caps, heartbeats, cache expiry. The scheduler thread calls it;
  // tests call it by hand.
  void RunDue();
  // When RunDue() next has work (InfiniteFuture when only a completion or a
  // new watch can create work).
  absl::Time NextWakeup();

  Stats GetStats();

 private:
  struct Watcher {
    std::shared_ptr<WatchSink> sink;
    bool snapshotted = false;
  };
  struct Task {
    std::string id;
    std::optional<videotask::v1::VideoTask> state;
    absl::flat_hash_map<WatchId, Watcher> watchers;
    std::vector<GetCallback> get_waiters;
    bool inflight = false;
    absl::Time next_poll = absl::InfiniteFuture();  // key in due_ when finite
    absl::Time next_heartbeat = absl::InfiniteFuture();  // key in heartbeats_
    absl::Time expires = absl::InfiniteFuture();  // key in expiry_ (terminal)
    absl::Time last_ok = absl::InfinitePast();    // last successful poll
    int transient_failures = 0;
    int not_found = 0;
  };
  struct Delivery {
    std::shared_ptr<WatchSink> sink;
    std::shared_ptr<const TaskEvent> event;  // null: error
    absl::Status error;
  };
  using TimerSet = std::set<std::pair<absl::Time, std::string>>;

  PollHub(PollHubOptions options, UpstreamClient* client, Clock* clock,
          MetricsRegistry* metrics, uint64_t seed);
  void Loop();

  Task* FindTask(const std::string& id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void SetTimer(TimerSet& set, absl::Time& slot, const std::string& id, absl::Time t)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void SchedulePoll(Task& task, absl::Time t) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Duration Jittered(absl::Duration d, double fraction) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // base * 2^n, capped at backoff_max, +-20% jitter.
  absl::Duration Backoff(absl::Duration base, int n) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::shared_ptr<const TaskEvent> MakeEvent(const Task& task,
                                             videotask::v1::WatchVideoTaskResponse::EventType type,
                                             videotask::v1::VideoTaskStatus previous);
  // Starts due polls; returns the fetches to issue once the lock is released.
  std::vector<std::string> StartDueLocked(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void IssueFetches(std::vector<std::string> ids) ABSL_LOCKS_EXCLUDED(mu_);
  void OnResult(const std::string& id, UpstreamResult result) ABSL_LOCKS_EXCLUDED(mu_);
  void ApplyState(Task& task, videotask::v1::VideoTask state, absl::Time now)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void EndTask(Task& task, const absl::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Publish(Task& task, videotask::v1::WatchVideoTaskResponse::EventType type,
               videotask::v1::VideoTaskStatus previous, bool only_new) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void MaybeRelease(const std::string& id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void AnswerGets(Task& task, const absl::StatusOr<videotask::v1::VideoTask>& answer)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool Fresh(const Task& task, absl::Time now) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The task entry for `id`, created empty when there is none.
  Task& TaskLocked(const std::string& id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Runs queued deliveries and Get answers outside the lock, one at a time.
  void Flush() ABSL_LOCKS_EXCLUDED(mu_);
  void Kick() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const PollHubOptions options_;
  UpstreamClient* const client_;
  Clock* const clock_;

  MetricsRegistry* const metrics_;
  Counter* rate_limited_total_ = nullptr;
  Histogram* request_duration_ = nullptr;

  absl::Mutex mu_;
  absl::BitGen rng_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, std::unique_ptr<Task>> tasks_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<WatchId, std::string> watch_index_ ABSL_GUARDED_BY(mu_);
  TimerSet due_ ABSL_GUARDED_BY(mu_);
  TimerSet heartbeats_ ABSL_GUARDED_BY(mu_);
  TimerSet expiry_ ABSL_GUARDED_BY(mu_);
  // End times of the requests that ended within the last second.
  std::deque<absl::Time> window_ ABSL_GUARDED_BY(mu_);
  absl::Time paused_until_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
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

  std::thread thread_;
};

}  // namespace videotask

#endif  // VIDEOTASK_SERVER_POLL_HUB_H_
