#include "server/poll_hub.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "server/log.h"

namespace videotask {
namespace {

using videotask::v1::VideoTask;
using videotask::v1::VideoTaskStatus;
using videotask::v1::WatchVideoTaskResponse;

bool IsTerminal(VideoTaskStatus s) {
  return s == videotask::v1::VIDEO_TASK_STATUS_COMPLETED ||
         s == videotask::v1::VIDEO_TASK_STATUS_FAILED;
}

// Status only moves forward along this order.
int Rank(VideoTaskStatus s) {
  switch (s) {
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

constexpr absl::Duration kRateWindow = absl::Seconds(1);
// A 429 without Retry-After pauses for this, doubling while 429s continue.
constexpr absl::Duration kRateLimitBackoffInitial = absl::Seconds(5);
// A 404 is confirmed by one more request this long after it (at most the
// poll interval).
constexpr absl::Duration kNotFoundConfirmDelay = absl::Seconds(2);

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
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<PollHub>> PollHub::Create(PollHubOptions options,
                                                         UpstreamClient* client, Clock* clock,
                                                         MetricsRegistry* metrics) {
  auto hub = CreateForTest(std::move(options), client, clock, metrics, absl::Uniform<uint64_t>(absl::BitGen()));
  if (!hub.ok()) return hub.status();
  PollHub* h = hub->get();
  h->thread_ = std::thread([h] { h->Loop(); });
  return hub;
}

absl::StatusOr<std::unique_ptr<PollHub>> PollHub::CreateForTest(PollHubOptions options,
                                                                UpstreamClient* client,
                                                                Clock* clock,
                                                                MetricsRegistry* metrics,
                                                                uint64_t seed) {
  if (absl::Status s = ValidatePollHubOptions(options); !s.ok()) return s;
  if (client == nullptr || clock == nullptr) {
    return absl::InvalidArgumentError("PollHub needs an upstream client and a clock");
  }
  return std::unique_ptr<PollHub>(new PollHub(std::move(options), client, clock, metrics, seed));
}

PollHub::PollHub(PollHubOptions options, UpstreamClient* client, Clock* clock,
                 MetricsRegistry* metrics, uint64_t seed)
    : options_(std::move(options)), client_(client), clock_(clock), metrics_(metrics) {
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
}

void PollHub::Loop() {
  while (true) {
    const absl::Time wake = NextWakeup();
    {
      absl::MutexLock lock(&mu_);
      if (!kicked_ && !stopping_) {
        const absl::Duration timeout = wake - clock_->Now();
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
  SetTimer(due_, task.next_poll, task.id, t);
  Kick();
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

bool PollHub::Fresh(const Task& task, absl::Time now) const {
  if (!task.state) return false;
  if (IsTerminal(task.state->status())) return true;
  return !task.watchers.empty() || now - task.last_ok < options_.poll_interval;
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
    const absl::Time now = clock_->Now();
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
      if (!task.inflight && task.next_poll == absl::InfiniteFuture()) SchedulePoll(task, now);
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
        if (task->get_waiters.empty()) SetTimer(due_, task->next_poll, id, absl::InfiniteFuture());
        SetTimer(heartbeats_, task->next_heartbeat, id, absl::InfiniteFuture());
        MaybeRelease(id);
      }
    }
  }
  Flush();
}

void PollHub::Get(const std::string& id, GetCallback done) {
  {
    absl::MutexLock lock(&mu_);
    if (draining_) {
      answers_.emplace_back(std::move(done),
                            absl::UnavailableError("the sidecar is draining; retry elsewhere"));
    } else {
      Task& task = TaskLocked(id);
      const absl::Time now = clock_->Now();
      if (Fresh(task, now)) {
        answers_.emplace_back(std::move(done), *task.state);
      } else {
        // Answered by the next result for this id: the poll in flight, or
        // one that starts now (a watched task's poll waiting out a backoff
        // is brought forward; an unwatched id's request starts no polling).
        task.get_waiters.push_back(std::move(done));
        if (!task.inflight && task.next_poll > now) SchedulePoll(task, now);
      }
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
    }
    const absl::Status status = absl::UnavailableError("the sidecar is draining; retry elsewhere");
    std::vector<std::string> ids;
    for (auto& [id, task] : tasks_) ids.push_back(id);
    for (const std::string& id : ids) {
      Task* task = FindTask(id);
      EndTask(*task, status);
      SetTimer(due_, task->next_poll, id, absl::InfiniteFuture());
      MaybeRelease(id);
    }
    Kick();
  }
  Flush();
}

void PollHub::RunDue() {
  std::vector<std::string> fetches;
  {
    absl::MutexLock lock(&mu_);
    const absl::Time now = clock_->Now();
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
  }
  IssueFetches(std::move(fetches));
  Flush();
}

std::vector<std::string> PollHub::StartDueLocked(absl::Time now) {
  std::vector<std::string> fetches;
  if (now < paused_until_) return fetches;
  // Sliding window, counted conservatively: a request holds a slot from its
  // start until 1 s after it ends. The vendor sees arrivals, which may lag
  // starts (a busy I/O thread, a slow connect); this way no arrival pattern
  // can put more than max_upstream_qps requests into any one second.
  while (!window_.empty() && window_.front() + kRateWindow <= now) window_.pop_front();
  while (!due_.empty() && due_.begin()->first <= now &&
         inflight_ + window_.size() < static_cast<size_t>(options_.max_upstream_qps) &&
         inflight_ < options_.max_inflight) {
    const std::string id = due_.begin()->second;
    Task* task = FindTask(id);
    SetTimer(due_, task->next_poll, id, absl::InfiniteFuture());
    task->inflight = true;
    ++inflight_;
    fetches.push_back(id);
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
  if (!due_.empty() && !draining_ && inflight_ < options_.max_inflight &&
      static_cast<size_t>(inflight_) < qps) {
    absl::Time d = std::max(due_.begin()->first, paused_until_);
    if (static_cast<size_t>(inflight_) + window_.size() >= qps) {
      // The window entry whose expiry frees the first slot.
      d = std::max(d, window_[inflight_ + window_.size() - qps] + kRateWindow);
    }
    t = std::min(t, d);
  }
  return t;
}

void PollHub::IssueFetches(std::vector<std::string> ids) {
  for (std::string& id : ids) {
    client_->Fetch(id, [this, id](UpstreamResult r) { OnResult(id, std::move(r)); });
  }
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
    window_.push_back(clock_->Now());
    Kick();
    Task* task = FindTask(id);
    if (task == nullptr) return;  // not reachable: tasks stay while in flight
    task->inflight = false;
    const absl::Time now = clock_->Now();
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
        task->last_ok = now;
        ApplyState(*task, std::move(result.task), now);
        AnswerGets(*task, *task->state);
        if (polling && !IsTerminal(task->state->status())) {
          SchedulePoll(*task, now + Jittered(options_.poll_interval, options_.poll_jitter));
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
        if (rate_limited_total_ != nullptr) rate_limited_total_->Increment();
        const absl::Duration pause =
            result.retry_after.has_value()
                ? std::max(*result.retry_after, absl::ZeroDuration())
                : Backoff(kRateLimitBackoffInitial, rate_limit_streak_);
        ++rate_limit_streak_;
        paused_until_ = std::max(paused_until_, now + pause);
        LogEvent(LogLevel::kWarning, "upstream_rate_limited",
                 {{"task", id},
                  {"pause_seconds", Seconds(pause)},
                  {"retry_after", result.retry_after.has_value() ? "sent" : "absent"}});
        // Not this task's fault: it goes again as soon as the pause ends.
        if (polling || !task->get_waiters.empty()) SchedulePoll(*task, paused_until_);
        break;
      }
      case UpstreamOutcome::kTransient: {
        AnswerGets(*task, absl::UnavailableError(
                              absl::StrCat("upstream error for task ", id, ": ", result.detail)));
        if (polling) {
          ++task->transient_failures;
          SchedulePoll(*task, now + Backoff(options_.poll_interval, task->transient_failures));
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
  Flush();
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
  if (!task.state) {
    task.state = std::move(state);
    Publish(task, WatchVideoTaskResponse::EVENT_TYPE_SNAPSHOT,
            videotask::v1::VIDEO_TASK_STATUS_UNSPECIFIED, /*only_new=*/true);
  } else {
    const VideoTaskStatus old = task.state->status();
    if (IsTerminal(old)) return;  // sticky
    if (Rank(state.status()) < Rank(old)) {
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
    SetTimer(due_, task.next_poll, task.id, absl::InfiniteFuture());
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
  for (auto& [wid, watcher] : task.watchers) {
    outbox_.push_back({watcher.sink, nullptr, status});
    watch_index_.erase(wid);
  }
  active_watches_ -= task.watchers.size();
  task.watchers.clear();
  AnswerGets(task, status);
  SetTimer(due_, task.next_poll, task.id, absl::InfiniteFuture());
  SetTimer(heartbeats_, task.next_heartbeat, task.id, absl::InfiniteFuture());
}

void PollHub::AnswerGets(Task& task, const absl::StatusOr<VideoTask>& answer) {
  for (GetCallback& cb : task.get_waiters) answers_.emplace_back(std::move(cb), answer);
  task.get_waiters.clear();
}

void PollHub::MaybeRelease(const std::string& id) {
  Task* task = FindTask(id);
  if (task == nullptr || !task->watchers.empty() || !task->get_waiters.empty() || task->inflight) {
    return;
  }
  if (task->state && IsTerminal(task->state->status()) && task->expires != absl::InfiniteFuture()) {
    return;  // cached until expiry
  }
  SetTimer(due_, task->next_poll, id, absl::InfiniteFuture());
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
  if (flushing_) {  // the thread flushing now delivers ours too, in order
    mu_.Unlock();
    return;
  }
  flushing_ = true;
  while (!outbox_.empty() || !answers_.empty()) {
    std::vector<Delivery> deliveries;
    deliveries.swap(outbox_);
    auto answers = std::move(answers_);
    answers_.clear();
    mu_.Unlock();
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
  for (const auto& [id, task] : tasks_) {
    if (!task->watchers.empty()) ++s.watched_tasks;
  }
  return s;
}

}  // namespace videotask
