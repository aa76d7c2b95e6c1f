#include "server/hub/poll_hub.h"

#include <algorithm>
#include <cmath>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "server/base/log.h"
#include "server/base/task_status.h"

namespace videotask {
namespace {

using videotask::v1::VideoTask;
using videotask::v1::VideoTaskStatus;
using videotask::v1::WatchVideoTaskResponse;

constexpr absl::Duration kRateWindow = absl::Seconds(1);
// A 429 without Retry-After pauses for this, doubling while 429s continue.
constexpr absl::Duration kRateLimitBackoffInitial = absl::Seconds(5);
// A 404 is confirmed by one more request this long after it (at most the
// poll interval).
constexpr absl::Duration kNotFoundConfirmDelay = absl::Seconds(2);
// A task with no state yet retries a failed first poll after this, doubling
// up to the poll interval: its watchers wait for their SNAPSHOT meanwhile.
constexpr absl::Duration kFirstPollRetryInitial = absl::Seconds(1);

std::string Seconds(absl::Duration d) { return absl::StrCat(absl::ToDoubleSeconds(d)); }

}  // namespace

bool TaskEvent::terminal() const { return IsTerminal(response.task().status()); }

absl::Status ValidatePollHubOptions(const PollHubOptions& o) {
  if (o.poll_interval < absl::Milliseconds(10)) {
    return absl::InvalidArgumentError("poll_interval must be at least 10ms");
  }
  if (o.poll_jitter < 0 || o.poll_jitter >= 1) {
    return absl::InvalidArgumentError("poll_jitter must be in [0, 1)");
  }
  if (o.heartbeat_interval < absl::Milliseconds(10)) {
    return absl::InvalidArgumentError("heartbeat_interval must be at least 10ms");
  }
  if (o.max_upstream_qps < 1) {
    return absl::InvalidArgumentError("max_upstream_qps must be at least 1");
  }
  if (o.max_inflight < 1) return absl::InvalidArgumentError("max_inflight must be at least 1");
  if (o.terminal_cache_ttl < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("terminal_cache_ttl must not be negative");
  }
  if (o.backoff_max < o.poll_interval) {
    return absl::InvalidArgumentError("max_backoff must be at least poll_interval");
  }
  if (o.max_watches < 1) return absl::InvalidArgumentError("max_watches must be at least 1");
  if (o.max_pending_gets < 1) {
    return absl::InvalidArgumentError("max_pending_gets must be at least 1");
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<PollHub>> PollHub::Create(PollHubOptions options,
                                                         UpstreamClient* client, Clock* clock,
                                                         MetricsRegistry* metrics, PollGate* gate,
                                                         Archiver* archiver) {
  auto hub = CreateForTest(std::move(options), client, clock, metrics,
                           absl::Uniform<uint64_t>(absl::BitGen()), gate, archiver);
  if (!hub.ok()) return hub.status();
  PollHub* h = hub->get();
  {
    absl::MutexLock lock(&h->mu_);
    h->threaded_ = true;
  }
  h->thread_ = std::thread([h] { h->Loop(); });
  return hub;
}

absl::StatusOr<std::unique_ptr<PollHub>> PollHub::CreateForTest(PollHubOptions options,
                                                                UpstreamClient* client,
                                                                Clock* clock,
                                                                MetricsRegistry* metrics,
                                                                uint64_t seed, PollGate* gate,
                                                                Archiver* archiver) {
  if (absl::Status s = ValidatePollHubOptions(options); !s.ok()) return s;
  if (client == nullptr || clock == nullptr) {
    return absl::InvalidArgumentError("PollHub needs an upstream client and a clock");
  }
  return std::unique_ptr<PollHub>(
      new PollHub(std::move(options), client, clock, metrics, seed, gate, archiver));
}

PollHub::PollHub(PollHubOptions options, UpstreamClient* client, Clock* clock,
                 MetricsRegistry* metrics, uint64_t seed, PollGate* gate,
                 Archiver* archiver)
    : options_(std::move(options)),
      client_(client),
      clock_(clock),
      archiver_(archiver),
      metrics_(metrics),
      gate_(gate != nullptr ? gate : &local_gate_) {
  gate_->SetListener([this](VideoTask state) { OnShared(std::move(state)); });
  gate_->SetTakeover([this](const std::string& id) { OnTakeover(id); });
  std::seed_seq seq{static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)};
  rng_ = absl::BitGen(seq);
  if (metrics_ != nullptr) {
    rate_limited_total_ = metrics_->GetCounter(
        "videotask_rate_limited_total", "Upstream 429 answers; each pauses all upstream traffic.");
    request_duration_ = metrics_->GetHistogram(
        "videotask_upstream_request_duration_seconds", "Duration of upstream requests.",
        {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30});
  }
}

PollHub::~PollHub() { Shutdown(); }

void PollHub::Shutdown() {
  Drain();
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (thread_.joinable()) thread_.join();
  std::vector<Completion> left;
  {
    absl::MutexLock lock(&mu_);
    threaded_ = false;  // late results are applied where they arrive
    left.swap(completions_);
    for (Completion& c : left) ApplyCompletion(std::move(c));
    // From here on the gate given at creation is never called again (it may
    // be destroyed next), and nothing new is archived: what arrives late
    // (an archive the archiver aborts as it stops, a result the client
    // completes as it stops) stays in this hub. Above all an aborted
    // archive's archive_error must not become the fleet's terminal state.
    gate_ = &local_gate_;
    shut_down_ = true;
  }
  Flush();
}

void PollHub::Loop() {
  {
    absl::MutexLock lock(&mu_);
    scheduler_ = std::this_thread::get_id();
  }
  while (true) {
    const absl::Time wake = NextWakeup();
    {
      absl::MutexLock lock(&mu_);
      if (!kicked_ && !stopping_) {
        const absl::Duration timeout = wake - clock_->Monotonic();
        if (timeout > absl::ZeroDuration()) {
          mu_.AwaitWithTimeout(absl::Condition(
                                   +[](PollHub* h) ABSL_EXCLUSIVE_LOCKS_REQUIRED(h->mu_) {
                                     return h->kicked_ || h->stopping_;
                                   },
                                   this),
                               timeout);
        }
      }
      kicked_ = false;
      if (stopping_) return;
    }
    RunDue();
  }
}

void PollHub::Kick() { kicked_ = true; }

PollHub::Task* PollHub::FindTask(const std::string& id) {
  auto it = tasks_.find(id);
  return it == tasks_.end() ? nullptr : it->second.get();
}

void PollHub::SetTimer(TimerSet& set, absl::Time& slot, const std::string& id, absl::Time t) {
  if (slot != absl::InfiniteFuture()) set.erase({slot, id});
  slot = t;
  if (t != absl::InfiniteFuture()) set.insert({t, id});
}

void PollHub::SchedulePoll(Task& task, absl::Time t) {
  if (task.poll_set != nullptr) {
    SetTimer(*task.poll_set, task.next_poll, task.id, absl::InfiniteFuture());
  }
  task.poll_set = t == absl::InfiniteFuture() ? nullptr
                  : task.watchers.empty()     ? &get_due_
                                              : &due_;
  if (task.poll_set != nullptr) SetTimer(*task.poll_set, task.next_poll, task.id, t);
  Kick();
}

void PollHub::RequeuePoll(Task& task) { SchedulePoll(task, task.next_poll); }

void PollHub::Park(Task& task, absl::Time now) {
  SetTimer(heartbeats_, task.next_heartbeat, task.id, absl::InfiniteFuture());
  task.following = false;
  gate_->Released(task.id);
  if (task.get_waiters.empty()) {
    // Nobody waits: no request. Remember when it was due, for a watcher
    // that comes back within the linger.
    if (task.next_poll != absl::InfiniteFuture()) task.parked_poll = task.next_poll;
    SchedulePoll(task, absl::InfiniteFuture());
  } else {
    RequeuePoll(task);  // Gets still wait for it
  }
  if (task.state && !IsTerminal(task.state->status())) {
    SetTimer(expiry_, task.expires, task.id, now + options_.poll_interval);
  }
}

absl::Duration PollHub::Jittered(absl::Duration d, double fraction) {
  if (fraction <= 0) return d;
  return d * absl::Uniform<double>(rng_, 1.0 - fraction, 1.0 + fraction);
}

absl::Duration PollHub::Backoff(absl::Duration base, int n) {
  absl::Duration d = base;
  for (int i = 0; i < n && d < options_.backoff_max; ++i) d *= 2;
  return Jittered(std::min(d, options_.backoff_max), 0.2);
}

absl::Duration PollHub::RetryDelay(const Task& task) {
  if (task.state) return Backoff(options_.poll_interval, task.transient_failures);
  // No state yet: watchers are waiting for their first message.
  absl::Duration d = kFirstPollRetryInitial;
  for (int i = 1; i < task.transient_failures && d < options_.poll_interval; ++i) d *= 2;
  return Jittered(std::min(d, options_.poll_interval), 0.2);
}

absl::StatusOr<PollHub::WatchId> PollHub::Watch(const std::string& id,
                                                 std::shared_ptr<WatchSink> sink) {
  WatchId wid = 0;
  {
    absl::MutexLock lock(&mu_);
    if (draining_) return absl::UnavailableError("the sidecar is draining; retry elsewhere");
    if (active_watches_ >= options_.max_watches) {
      return absl::ResourceExhaustedError(
          absl::StrCat("the sidecar holds its maximum of ", options_.max_watches, " watches"));
    }
    Task& task = TaskLocked(id);
    const absl::Time now = clock_->Monotonic();
    wid = next_watch_id_++;
    if (task.state && IsTerminal(task.state->status())) {
      // Finished already: one SNAPSHOT and the stream ends. Not registered.
      auto event = MakeEvent(task, WatchVideoTaskResponse::EVENT_TYPE_SNAPSHOT,
                             videotask::v1::VIDEO_TASK_STATUS_UNSPECIFIED);
      outbox_.push_back({std::move(sink), std::move(event), absl::OkStatus()});
    } else {
      const bool first = task.watchers.empty();
      task.watchers[wid] = Watcher{std::move(sink), false};
      watch_index_[wid] = id;
      ++active_watches_;
      if (task.state) {
        Publish(task, WatchVideoTaskResponse::EVENT_TYPE_SNAPSHOT,
                videotask::v1::VIDEO_TASK_STATUS_UNSPECIFIED, /*only_new=*/true);
        if (first) SetTimer(heartbeats_, task.next_heartbeat, id, now + options_.heartbeat_interval);
      }
      if (first) {
        // Back from a linger: the state is kept; polls resume on schedule.
        SetTimer(expiry_, task.expires, id, absl::InfiniteFuture());
        if (task.inflight || task.archiving) {
        } else if (task.next_poll == absl::InfiniteFuture()) {
          SchedulePoll(task, std::max(task.parked_poll, now));
        } else {
          RequeuePoll(task);  // a Get's request now serves a watcher too
        }
        task.parked_poll = absl::InfinitePast();
      }
    }
  }
  Flush();
  return wid;
}

void PollHub::Unwatch(WatchId watch) {
  {
    absl::MutexLock lock(&mu_);
    auto it = watch_index_.find(watch);
    if (it == watch_index_.end()) return;
    const std::string id = it->second;
    watch_index_.erase(it);
    Task* task = FindTask(id);
    if (task != nullptr && task->watchers.erase(watch) > 0) {
      --active_watches_;
      if (task->watchers.empty()) {
        // No watchers, no polling; a poll that Gets wait for still runs.
        Park(*task, clock_->Monotonic());
        MaybeRelease(id);
      }
    }
  }
  Flush();
}

PollHub::GetId PollHub::Get(const std::string& id, GetCallback done) {
  GetId gid = 0;
  {
    absl::MutexLock lock(&mu_);
    Task* existing = FindTask(id);
    if (draining_) {
      answers_.emplace_back(std::move(done),
                            absl::UnavailableError("the sidecar is draining; retry elsewhere"));
    } else if (existing != nullptr && existing->state) {
      // Terminal, watched, or lingering: as fresh as a watcher would see.
      answers_.emplace_back(std::move(done), *existing->state);
    } else if (pending_gets_ >= options_.max_pending_gets) {
      answers_.emplace_back(
          std::move(done),
          absl::ResourceExhaustedError(absl::StrCat("the sidecar has ", options_.max_pending_gets,
                                                    " Gets waiting for the upstream; retry later")));
    } else {
      // Answered by the next result for this id: the poll in flight, or
      // one that starts now (a watched task's poll waiting out a backoff
      // is brought forward; an unwatched id's request starts no polling).
      Task& task = TaskLocked(id);
      const absl::Time now = clock_->Monotonic();
      gid = next_get_id_++;
      task.get_waiters.emplace_back(gid, std::move(done));
      get_index_[gid] = id;
      ++pending_gets_;
      if (!task.inflight && !task.archiving && task.next_poll > now) SchedulePoll(task, now);
    }
  }
  Flush();
  return gid;
}

void PollHub::CancelGet(GetId get) {
  {
    absl::MutexLock lock(&mu_);
    auto it = get_index_.find(get);
    if (it == get_index_.end()) return;
    const std::string id = it->second;
    get_index_.erase(it);
    Task* task = FindTask(id);
    if (task == nullptr) return;  // not reachable: a waiter keeps its task
    auto& waiters = task->get_waiters;
    for (auto w = waiters.begin(); w != waiters.end(); ++w) {
      if (w->first != get) continue;
      answers_.emplace_back(std::move(w->second),
                            absl::CancelledError("the caller cancelled the Get"));
      waiters.erase(w);
      --pending_gets_;
      break;
    }
    // Nobody is left to wait for an unwatched id's request: drop it.
    if (waiters.empty() && task->watchers.empty() && !task->inflight) {
      SchedulePoll(*task, absl::InfiniteFuture());
      MaybeRelease(id);
    }
  }
  Flush();
}

void PollHub::Drain() {
  {
    absl::MutexLock lock(&mu_);
    if (!draining_) {
      draining_ = true;
      LogEvent(LogLevel::kInfo, "drain_started",
               {{"active_watches", absl::StrCat(active_watches_)}});
      gate_->Drain();  // others take over this sidecar's leases at once
    }
    const absl::Status status = absl::UnavailableError("the sidecar is draining; retry elsewhere");
    std::vector<std::string> ids;
    for (auto& [id, task] : tasks_) ids.push_back(id);
    for (const std::string& id : ids) {
      Task* task = FindTask(id);
      EndTask(*task, status);
      SchedulePoll(*task, absl::InfiniteFuture());
      MaybeRelease(id);
    }
    Kick();
  }
  Flush();
}

void PollHub::RunDue() {
  std::vector<std::pair<std::string, bool>> fetches;
  PollGate* gate = nullptr;
  {
    absl::MutexLock lock(&mu_);
    std::vector<Completion> completions;
    completions.swap(completions_);
    for (Completion& c : completions) ApplyCompletion(std::move(c));
    const absl::Time now = clock_->Monotonic();
    while (!expiry_.empty() && expiry_.begin()->first <= now) {
      const std::string id = expiry_.begin()->second;
      Task* task = FindTask(id);
      SetTimer(expiry_, task->expires, id, absl::InfiniteFuture());
      task->state.reset();
      MaybeRelease(id);
    }
    while (!heartbeats_.empty() && heartbeats_.begin()->first <= now) {
      const std::string id = heartbeats_.begin()->second;
      Task* task = FindTask(id);
      if (task->state && !task->watchers.empty()) {
        Publish(*task, WatchVideoTaskResponse::EVENT_TYPE_HEARTBEAT,
                videotask::v1::VIDEO_TASK_STATUS_UNSPECIFIED, /*only_new=*/false);
        SetTimer(heartbeats_, task->next_heartbeat, id, now + options_.heartbeat_interval);
      } else {
        SetTimer(heartbeats_, task->next_heartbeat, id, absl::InfiniteFuture());
      }
    }
    if (!draining_) fetches = StartDueLocked(now);
    gate = gate_;
  }
  IssueFetches(gate, std::move(fetches));
  Flush();
}

std::vector<std::pair<std::string, bool>> PollHub::StartDueLocked(absl::Time now) {
  std::vector<std::pair<std::string, bool>> fetches;
  if (now < paused_until_ || now < fleet_wait_until_) return fetches;
  // Sliding window, counted conservatively: a request holds a slot from its
  // start until 1 s after it ends. The vendor sees arrivals, which may lag
  // starts (a busy I/O thread, a slow connect); this way no arrival pattern
  // can put more than max_upstream_qps requests into any one second.
  while (!window_.empty() && window_.front() + kRateWindow <= now) window_.pop_front();
  // Watchers' polls first, then the requests Gets wait for.
  for (TimerSet* set : {&due_, &get_due_}) {
    while (!set->empty() && set->begin()->first <= now &&
           inflight_ + window_.size() < static_cast<size_t>(options_.max_upstream_qps) &&
           inflight_ < options_.max_inflight) {
      const std::string id = set->begin()->second;
      Task* task = FindTask(id);
      SchedulePoll(*task, absl::InfiniteFuture());
      task->inflight = true;
      ++inflight_;
      fetches.emplace_back(id, !task->watchers.empty());
    }
  }
  return fetches;
}

absl::Time PollHub::NextWakeup() {
  absl::MutexLock lock(&mu_);
  absl::Time t = absl::InfiniteFuture();
  if (!expiry_.empty()) t = std::min(t, expiry_.begin()->first);
  if (!heartbeats_.empty()) t = std::min(t, heartbeats_.begin()->first);
  const size_t qps = options_.max_upstream_qps;
  // With max_upstream_qps or max_inflight requests in flight, only a
  // completion (which kicks the scheduler) can free a slot.
  if (!completions_.empty()) t = absl::InfinitePast();
  absl::Time first_due = absl::InfiniteFuture();
  if (!due_.empty()) first_due = due_.begin()->first;
  if (!get_due_.empty()) first_due = std::min(first_due, get_due_.begin()->first);
  if (first_due != absl::InfiniteFuture() && !draining_ && inflight_ < options_.max_inflight &&
      static_cast<size_t>(inflight_) < qps) {
    absl::Time d = std::max({first_due, paused_until_, fleet_wait_until_});
    if (static_cast<size_t>(inflight_) + window_.size() >= qps) {
      // The window entry whose expiry frees the first slot.
      d = std::max(d, window_[inflight_ + window_.size() - qps] + kRateWindow);
    }
    t = std::min(t, d);
  }
  return t;
}

void PollHub::IssueFetches(PollGate* gate, std::vector<std::pair<std::string, bool>> ids) {
  for (auto& [id, watched] : ids) {
    gate->Admit(id, watched, [this, id = id](PollGate::Admission a) {
      OnAdmission(id, std::move(a));
    });
  }
}

void PollHub::OnAdmission(const std::string& id, PollGate::Admission admission) {
  bool fetch = false;
  {
    absl::MutexLock lock(&mu_);
    fetch = admission.kind == PollGate::Admission::Kind::kPoll && !draining_;
    Completion c;
    c.id = id;
    if (fetch) {
      Task* task = FindTask(id);
      if (task != nullptr) task->following = false;
      if (admission.shared.has_value()) {
        // The fleet's state first (a SNAPSHOT at once), then our request.
        c.kind = Completion::Kind::kShared;
        c.admission.shared = std::move(admission.shared);
        EnqueueLocked(std::move(c));
      }
    } else {
      // No request: the in-flight slot is free again, and no rate slot used.
      if (admission.kind == PollGate::Admission::Kind::kPoll) {
        admission.kind = PollGate::Admission::Kind::kFollow;  // draining
      }
      --inflight_;
      Kick();
      c.kind = Completion::Kind::kAdmission;
      c.admission = std::move(admission);
      EnqueueLocked(std::move(c));
    }
  }
  if (fetch) client_->Fetch(id, [this, id](UpstreamResult r) { OnResult(id, std::move(r)); });
  Flush();
}

void PollHub::EnqueueLocked(Completion c) {
  if (threaded_) {
    // Fan-outs run on the scheduler thread: the client's I/O thread and
    // the gate's stay free for I/O.
    completions_.push_back(std::move(c));
    Kick();
    return;
  }
  ApplyCompletion(std::move(c));
}

void PollHub::ApplyCompletion(Completion c) {
  switch (c.kind) {
    case Completion::Kind::kResult:
      ApplyResult(c.id, std::move(c.result));
      break;
    case Completion::Kind::kAdmission:
      ApplyAdmission(c.id, std::move(c.admission));
      break;
    case Completion::Kind::kArchived: {
      Task* task = FindTask(c.id);
      if (task == nullptr || !c.admission.shared.has_value()) break;  // not reachable
      task->archiving = false;
      ApplyState(*task, std::move(*c.admission.shared), clock_->Monotonic());
      if (task->state) {
        AnswerGets(*task, *task->state);
        gate_->Observed(*task->state);
      }
      MaybeRelease(c.id);
      break;
    }
    case Completion::Kind::kShared: {
      Task* task = FindTask(c.id);
      if (task != nullptr && c.admission.shared.has_value()) {
        ApplyShared(*task, std::move(*c.admission.shared), clock_->Monotonic());
        MaybeRelease(c.id);
      }
      break;
    }
  }
}

void PollHub::ApplyAdmission(const std::string& id, PollGate::Admission admission) {
  Task* task = FindTask(id);
  if (task == nullptr) return;  // not reachable: tasks stay while in flight
  task->inflight = false;
  const absl::Time now = clock_->Monotonic();
  if (admission.shared.has_value()) ApplyShared(*task, std::move(*admission.shared), now);
  const bool terminal =
      (task->state && IsTerminal(task->state->status())) || task->archiving;
  const bool waiting = (!task->watchers.empty() || !task->get_waiters.empty()) && !draining_;
  if (admission.kind == PollGate::Admission::Kind::kWait) {
    fleet_wait_until_ = std::max(fleet_wait_until_, now + admission.wait);
    if (waiting && !terminal) SchedulePoll(*task, now + admission.wait);
  } else if (waiting && !terminal) {
    // Another sidecar polls it: ask again (and renew what we know) after an
    // interval; its observations arrive through OnShared meanwhile.
    task->following = !task->watchers.empty();
    SchedulePoll(*task, now + Jittered(options_.poll_interval, options_.poll_jitter));
  }
  if (task->watchers.empty() && task->state && !terminal) {
    SetTimer(expiry_, task->expires, id, now + options_.poll_interval);
  }
  MaybeRelease(id);
}

void PollHub::OnTakeover(const std::string& id) {
  absl::MutexLock lock(&mu_);
  Task* task = FindTask(id);
  // A followed task waiting for its next ask: ask now (the gate admits it).
  if (task == nullptr || draining_ || !task->following || task->inflight || task->archiving ||
      task->watchers.empty() || task->poll_set == nullptr) {
    return;
  }
  SchedulePoll(*task, clock_->Monotonic());
}

void PollHub::OnShared(VideoTask state) { Enqueue(Completion::Kind::kShared, std::move(state)); }

void PollHub::Enqueue(Completion::Kind kind, VideoTask state) {
  {
    absl::MutexLock lock(&mu_);
    Completion c;
    c.kind = kind;
    c.id = state.id();
    c.admission.shared = std::move(state);
    EnqueueLocked(std::move(c));
  }
  Flush();
}

void PollHub::ApplyShared(Task& task, VideoTask state, absl::Time now) {
  // Behind ours: ignored.
  if (task.state && StatusRank(state.status()) < StatusRank(task.state->status())) return;
  ApplyState(task, std::move(state), now);
  if (task.state && !task.archiving) AnswerGets(task, *task.state);
}

void PollHub::OnResult(const std::string& id, UpstreamResult result) {
  if (metrics_ != nullptr) {
    metrics_
        ->GetCounter("videotask_upstream_requests_total",
                     "Upstream requests by HTTP status or failure class.",
                     absl::StrCat("code=\"", result.code, "\""))
        ->Increment();
    request_duration_->Observe(absl::ToDoubleSeconds(result.latency));
  }
  {
    absl::MutexLock lock(&mu_);
    --inflight_;
    window_.push_back(clock_->Monotonic());
    Kick();
    Completion c;
    c.kind = Completion::Kind::kResult;
    c.id = id;
    c.result = std::move(result);
    EnqueueLocked(std::move(c));
  }
  Flush();
}

void PollHub::ApplyResult(const std::string& id, UpstreamResult result) {
  {
    Task* task = FindTask(id);
    if (task == nullptr) return;  // not reachable: tasks stay while in flight
    task->inflight = false;
    const absl::Time now = clock_->Monotonic();
    const bool polling = !task->watchers.empty() && !draining_;
    if (result.outcome != UpstreamOutcome::kRateLimited) rate_limit_streak_ = 0;
    if (result.outcome != UpstreamOutcome::kOk && result.outcome != UpstreamOutcome::kRateLimited &&
        !draining_) {
      LogEvent(result.outcome == UpstreamOutcome::kRejected ? LogLevel::kError : LogLevel::kWarning,
               "upstream_error",
               {{"task", id},
                {"class", std::string(UpstreamOutcomeName(result.outcome))},
                {"code", result.code},
                {"detail", result.detail}});
    }
    switch (result.outcome) {
      case UpstreamOutcome::kOk: {
        task->transient_failures = 0;
        task->not_found = 0;
        ApplyState(*task, std::move(result.task), now);
        if (task->archiving) break;  // the answer waits for the archive
        AnswerGets(*task, *task->state);
        gate_->Observed(*task->state);
        if (!IsTerminal(task->state->status())) {
          const absl::Time next = now + Jittered(options_.poll_interval, options_.poll_jitter);
          if (polling) {
            SchedulePoll(*task, next);
          } else if (task->watchers.empty()) {
            // Nobody watches: keep the answer for a linger, and when the
            // next poll would be, for a watcher that comes within it.
            task->parked_poll = next;
            SetTimer(expiry_, task->expires, id, now + options_.poll_interval);
          }
        }
        break;
      }
      case UpstreamOutcome::kNotFound: {
        const absl::Status status =
            absl::NotFoundError(absl::StrCat("the upstream does not know task ", id));
        AnswerGets(*task, status);
        if (polling && ++task->not_found < 2) {
          SchedulePoll(*task, now + std::min(kNotFoundConfirmDelay, options_.poll_interval));
        } else {
          EndTask(*task, status);
        }
        break;
      }
      case UpstreamOutcome::kRejected: {
        const absl::Status status = absl::FailedPreconditionError(
            absl::StrCat("the upstream rejects the sidecar's API key: ", result.detail));
        LogEvent(LogLevel::kError, "upstream_rejected_credentials",
                 {{"task", id},
                  {"code", result.code},
                  {"action", "check the API key (--api_key_file or VIDEOTASK_API_KEY)"}});
        EndTask(*task, status);
        break;
      }
      case UpstreamOutcome::kRateLimited: {
        const absl::Duration pause = PauseForRateLimitLocked(result.retry_after, now);
        LogFields fields = {
            {"task", id},
            {"pause_seconds", Seconds(pause)},
            {"retry_after", result.retry_after.has_value() ? "sent" : "absent"}};
        if (result.retry_after.has_value()) {
          fields.push_back({"retry_after_seconds", Seconds(*result.retry_after)});
          if (*result.retry_after > pause) fields.push_back({"capped_at", "max_backoff"});
        }
        LogEvent(LogLevel::kWarning, "upstream_rate_limited", fields);
        // Not this task's fault: it goes again as soon as the pause ends.
        if (polling || !task->get_waiters.empty()) SchedulePoll(*task, paused_until_);
        break;
      }
      case UpstreamOutcome::kTransient: {
        AnswerGets(*task, absl::UnavailableError(
                              absl::StrCat("upstream error for task ", id, ": ", result.detail)));
        if (polling) {
          ++task->transient_failures;
          SchedulePoll(*task, now + RetryDelay(*task));
        }
        break;
      }
      case UpstreamOutcome::kInvalidArgument: {
        const absl::Status status = absl::InvalidArgumentError(result.detail);
        EndTask(*task, status);
        break;
      }
    }
    MaybeRelease(id);
  }
}

absl::Duration PollHub::PauseForRateLimitLocked(std::optional<absl::Duration> retry_after,
                                                absl::Time now) {
  if (rate_limited_total_ != nullptr) rate_limited_total_->Increment();
  // An absurd Retry-After (a year, a far-future date) must not stop
  // every watcher for that long: capped at backoff_max.
  const absl::Duration pause =
      retry_after.has_value()
          ? std::clamp(*retry_after, absl::ZeroDuration(), options_.backoff_max)
          : Backoff(kRateLimitBackoffInitial, rate_limit_streak_);
  ++rate_limit_streak_;
  paused_until_ = std::max(paused_until_, now + pause);
  gate_->RateLimited(pause);
  return pause;
}

absl::StatusOr<absl::Duration> PollHub::Acquire() {
  absl::MutexLock lock(&mu_);
  if (draining_) return absl::UnavailableError("the sidecar is shutting down");
  const absl::Time now = clock_->Monotonic();
  const absl::Time paused = std::max(paused_until_, fleet_wait_until_);
  if (now < paused) return paused - now;
  while (!window_.empty() && window_.front() + kRateWindow <= now) window_.pop_front();
  const size_t qps = options_.max_upstream_qps;
  if (static_cast<size_t>(inflight_) + window_.size() < qps && inflight_ < options_.max_inflight) {
    ++inflight_;
    return absl::ZeroDuration();
  }
  // The window entry whose expiry frees the first slot; with only requests
  // in flight, a completion frees one: ask again shortly.
  if (static_cast<size_t>(inflight_) < qps && inflight_ < options_.max_inflight) {
    return std::max(absl::Milliseconds(1),
                    window_[inflight_ + window_.size() - qps] + kRateWindow - now);
  }
  return kRateWindow / 10;
}

void PollHub::Release(bool rate_limited, std::optional<absl::Duration> retry_after) {
  absl::MutexLock lock(&mu_);
  const absl::Time now = clock_->Monotonic();
  --inflight_;
  window_.push_back(now);
  if (rate_limited) {
    const absl::Duration pause = PauseForRateLimitLocked(retry_after, now);
    LogEvent(LogLevel::kWarning, "upstream_rate_limited",
             {{"request", "create"}, {"pause_seconds", Seconds(pause)}});
  } else {
    rate_limit_streak_ = 0;
  }
  Kick();
}

std::shared_ptr<const TaskEvent> PollHub::MakeEvent(const Task& task,
                                                    WatchVideoTaskResponse::EventType type,
                                                    VideoTaskStatus previous) {
  auto event = std::make_shared<TaskEvent>();
  event->response.set_type(type);
  *event->response.mutable_task() = *task.state;
  event->response.set_previous_status(previous);
  event->serialized = event->response.SerializeAsString();
  return event;
}

void PollHub::ApplyState(Task& task, VideoTask state, absl::Time now) {
  state.set_id(task.id);
  if (archiver_ != nullptr && !shut_down_ &&
      state.status() == videotask::v1::VIDEO_TASK_STATUS_COMPLETED &&
      !state.has_archive() && state.archive_error().empty() &&
      !(task.state && IsTerminal(task.state->status()))) {
    // The COMPLETED event waits for the archive: hand it over once, stop
    // polling; watchers keep their heartbeats meanwhile.
    if (!task.archiving) {
      task.archiving = true;
      gate_->Archiving(task.id);
      to_archive_.push_back(std::move(state));
    }
    SchedulePoll(task, absl::InfiniteFuture());
    return;
  }
  if (!task.state) {
    task.state = std::move(state);
    Publish(task, WatchVideoTaskResponse::EVENT_TYPE_SNAPSHOT,
            videotask::v1::VIDEO_TASK_STATUS_UNSPECIFIED, /*only_new=*/true);
  } else {
    const VideoTaskStatus old = task.state->status();
    if (IsTerminal(old)) return;  // sticky
    if (StatusRank(state.status()) < StatusRank(old)) {
      LogEvent(LogLevel::kWarning, "status_regression_ignored",
               {{"task", task.id},
                {"status", videotask::v1::VideoTaskStatus_Name(old)},
                {"upstream_status", videotask::v1::VideoTaskStatus_Name(state.status())}});
      return;
    }
    task.state = std::move(state);
    if (task.state->status() == old) return;  // no change: heartbeats carry it
    Publish(task, WatchVideoTaskResponse::EVENT_TYPE_TRANSITION, old, /*only_new=*/false);
  }
  if (IsTerminal(task.state->status())) {
    // The terminal event was each watcher's last.
    for (auto& [wid, watcher] : task.watchers) watch_index_.erase(wid);
    active_watches_ -= task.watchers.size();
    task.watchers.clear();
    SchedulePoll(task, absl::InfiniteFuture());
    SetTimer(heartbeats_, task.next_heartbeat, task.id, absl::InfiniteFuture());
    SetTimer(expiry_, task.expires, task.id, now + options_.terminal_cache_ttl);
  } else if (!task.watchers.empty()) {
    SetTimer(heartbeats_, task.next_heartbeat, task.id, now + options_.heartbeat_interval);
  }
}

void PollHub::Publish(Task& task, WatchVideoTaskResponse::EventType type,
                      VideoTaskStatus previous, bool only_new) {
  std::shared_ptr<const TaskEvent> event;
  for (auto& [wid, watcher] : task.watchers) {
    if (only_new && watcher.snapshotted) continue;
    watcher.snapshotted = true;
    if (event == nullptr) event = MakeEvent(task, type, previous);
    outbox_.push_back({watcher.sink, event, absl::OkStatus()});
  }
}

void PollHub::EndTask(Task& task, const absl::Status& status) {
  if (!task.watchers.empty()) gate_->Released(task.id);
  for (auto& [wid, watcher] : task.watchers) {
    outbox_.push_back({watcher.sink, nullptr, status});
    watch_index_.erase(wid);
  }
  active_watches_ -= task.watchers.size();
  task.watchers.clear();
  AnswerGets(task, status);
  SchedulePoll(task, absl::InfiniteFuture());
  SetTimer(heartbeats_, task.next_heartbeat, task.id, absl::InfiniteFuture());
}

void PollHub::AnswerGets(Task& task, const absl::StatusOr<VideoTask>& answer) {
  for (auto& [gid, cb] : task.get_waiters) {
    answers_.emplace_back(std::move(cb), answer);
    get_index_.erase(gid);
    --pending_gets_;
  }
  task.get_waiters.clear();
}

void PollHub::MaybeRelease(const std::string& id) {
  Task* task = FindTask(id);
  if (task == nullptr || !task->watchers.empty() || !task->get_waiters.empty() || task->inflight ||
      task->archiving) {
    return;
  }
  if (task->state && task->expires != absl::InfiniteFuture()) {
    return;  // cached (terminal) or lingering (unwatched) until expiry
  }
  SchedulePoll(*task, absl::InfiniteFuture());
  SetTimer(heartbeats_, task->next_heartbeat, id, absl::InfiniteFuture());
  SetTimer(expiry_, task->expires, id, absl::InfiniteFuture());
  tasks_.erase(id);
}

PollHub::Task& PollHub::TaskLocked(const std::string& id) {
  std::unique_ptr<Task>& slot = tasks_[id];
  if (slot == nullptr) {
    slot = std::make_unique<Task>();
    slot->id = id;
  }
  return *slot;
}

void PollHub::Flush() {
  mu_.Lock();
  if (threaded_ && std::this_thread::get_id() != scheduler_) {
    // Only the scheduler thread delivers: the caller may be the client's or
    // the gate's I/O thread, which must stay free for I/O, or a gRPC
    // thread. Wake the scheduler if there is anything to deliver.
    if (!outbox_.empty() || !answers_.empty() || !to_archive_.empty()) Kick();
    mu_.Unlock();
    return;
  }
  if (flushing_) {  // the thread flushing now delivers ours too, in order
    mu_.Unlock();
    return;
  }
  flushing_ = true;
  while (!outbox_.empty() || !answers_.empty() || !to_archive_.empty()) {
    std::vector<Delivery> deliveries;
    deliveries.swap(outbox_);
    auto answers = std::move(answers_);
    answers_.clear();
    std::vector<VideoTask> to_archive;
    to_archive.swap(to_archive_);
    mu_.Unlock();
    for (VideoTask& task : to_archive) {
      const std::string id = task.id();
      archiver_->Archive(task, [this, id](VideoTask archived) {
        archived.set_id(id);
        Enqueue(Completion::Kind::kArchived, std::move(archived));
      });
    }
    for (Delivery& d : deliveries) {
      if (d.event != nullptr) {
        d.sink->OnEvent(std::move(d.event));
      } else {
        d.sink->OnError(d.error);
      }
    }
    for (auto& [cb, answer] : answers) std::move(cb)(std::move(answer));
    deliveries.clear();
    answers.clear();
    mu_.Lock();
  }
  flushing_ = false;
  mu_.Unlock();
}

PollHub::Stats PollHub::GetStats() {
  absl::MutexLock lock(&mu_);
  Stats s;
  s.active_watches = active_watches_;
  s.tasks = tasks_.size();
  s.inflight = inflight_;
  s.pending_gets = pending_gets_;
  for (const auto& [id, task] : tasks_) {
    if (!task->watchers.empty()) ++s.watched_tasks;
    if (task->following) ++s.following;
  }
  return s;
}

}  // namespace videotask
