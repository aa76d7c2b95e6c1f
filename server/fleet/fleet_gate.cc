#include "server/fleet/fleet_gate.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <optional>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "server/base/log.h"
#include "server/base/task_status.h"

namespace videotask::fleet {
namespace {

using videotask::v1::VideoTask;

}  // namespace

// One admission in progress: the lease, state and pause answers arrive in
// any order (a script may need one more round trip to load); the last one
// decides.
struct FleetPollGate::Join {
  std::string id;
  bool watched = false;
  AdmitDone done;
  int outstanding = 0;
  bool redis_failed = false;  // any step failed: local mode for this one
  bool held = false;
  std::optional<VideoTask> shared;
  absl::Duration paused = absl::ZeroDuration();
};

absl::StatusOr<std::unique_ptr<FleetPollGate>> FleetPollGate::Create(FleetGateOptions options) {
  if (options.api_key.empty()) {
    return absl::InvalidArgumentError("fleet mode needs the vendor API key");
  }
  if (!(options.fleet_qps >= 0) || options.fleet_qps > 1e6) {
    return absl::InvalidArgumentError("--fleet_max_upstream_qps must be in [0, 1000000]");
  }
  if (options.fleet_arrival_margin < absl::ZeroDuration() ||
      options.fleet_arrival_margin > absl::Seconds(10)) {
    return absl::InvalidArgumentError("--fleet_arrival_margin must be in [0, 10s]");
  }
  if (options.poll_interval <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("poll_interval must be positive");
  }
  return std::unique_ptr<FleetPollGate>(new FleetPollGate(std::move(options)));
}

FleetPollGate::FleetPollGate(FleetGateOptions options)
    : options_(std::move(options)),
      keys_(options_.fleet_name, options_.upstream_host, options_.api_key,
            options_.accepted_api_keys),
      clock_(options_.clock != nullptr ? options_.clock : RealClock::Get()),
      lease_ttl_(std::max(options_.poll_interval * 3 / 2, absl::Seconds(1))) {
  MetricsRegistry* metrics = options_.metrics != nullptr ? options_.metrics : &own_metrics_;
  tokens_denied_ = metrics->GetCounter(
      "videotask_fleet_tokens_denied_total",
      "Upstream requests the fleet budget (or the fleet's 429 pause) made wait.");
  entries_rejected_ = metrics->GetCounter(
      "videotask_fleet_entries_rejected_total",
      "Shared task states from Redis that failed verification and were ignored.");
  RedisClientOptions redis = options_.redis;
  const std::string where = redis.url.Redacted();
  auto user_on_state = redis.on_state;
  const std::string fingerprint = keys_.fingerprint();
  const std::string fleet_name =
      options_.fleet_name.empty() ? std::string(kDefaultFleetName) : options_.fleet_name;
  // Shared with the gauges, which may be read after this gate is gone.
  auto up_now = std::make_shared<std::atomic<bool>>(false);
  redis.on_state = [where, fingerprint, fleet_name, user_on_state, up_now](
                       bool up, const absl::Status& why) {
    up_now->store(up);
    if (up) {
      LogEvent(LogLevel::kInfo, "fleet_mode_on",
               {{"redis", where}, {"fleet_name", fleet_name}, {"fleet", fingerprint}});
    } else {
      LogEvent(LogLevel::kWarning, "fleet_mode_off",
               {{"redis", where},
                {"reason", std::string(why.message())},
                {"action", "local limits apply until Redis answers again"}});
    }
    if (user_on_state) user_on_state(up, why);
  };
  // A write at each connect: a replica (READONLY) or a full Redis (OOM)
  // never counts as up; error replies and timeouts later are faults.
  redis.probe = {"SET", keys_.ProbeKey(), "1", "PX", "60000"};
  Counter* error_faults = metrics->GetCounter(
      "videotask_fleet_faults_total",
      "Redis faults that switched fleet mode off: error replies (READONLY, OOM, ...) and "
      "commands past their timeout.",
      "kind=\"error_reply\"");
  Counter* timeout_faults = metrics->GetCounter(
      "videotask_fleet_faults_total",
      "Redis faults that switched fleet mode off: error replies (READONLY, OOM, ...) and "
      "commands past their timeout.",
      "kind=\"timeout\"");
  redis.on_fault = [error_faults, timeout_faults](RedisClientOptions::Fault kind,
                                                  const absl::Status&) {
    (kind == RedisClientOptions::Fault::kTimeout ? timeout_faults : error_faults)->Increment();
  };
  client_ = std::make_unique<RedisClient>(std::move(redis));
  RedisTaskStore::Options so;
  so.terminal_ttl = std::max(options_.terminal_cache_ttl, absl::Seconds(1));
  so.running_ttl = std::max(options_.poll_interval * 3, absl::Seconds(1));
  so.lease_ttl = lease_ttl_;
  so.clock = clock_;
  store_ = std::make_unique<RedisTaskStore>(client_.get(), keys_, so);
  RedisRateBudget::Options bo;
  bo.rate_per_second = options_.fleet_qps > 0 ? options_.fleet_qps : 1;
  bo.arrival_margin = options_.fleet_arrival_margin;
  budget_ = std::make_unique<RedisRateBudget>(client_.get(), keys_, bo);
  metrics->AddGauge("videotask_redis_up", "1 while the fleet's Redis answers, else 0.",
                    [up_now] { return up_now->load() ? 1.0 : 0.0; });
  metrics->AddGauge("videotask_fleet_mode",
                    "1 while fleet mode is in effect, 0 while fallen back to local limits.",
                    [up_now] { return up_now->load() ? 1.0 : 0.0; });
  if (options_.renew_thread) renewer_ = std::thread([this] { RenewLoop(); });
}

FleetPollGate::~FleetPollGate() {
  {
    absl::MutexLock lock(&leases_mu_);
    stop_ = true;
  }
  if (renewer_.joinable()) renewer_.join();
  client_.reset();
}

void FleetPollGate::RenewLoop() {
  absl::Time last_round = absl::InfinitePast();
  while (true) {
    {
      absl::MutexLock lock(&leases_mu_);
      while (true) {
        if (stop_) return;
        const absl::Time now = clock_->Monotonic();
        absl::Time next = absl::InfiniteFuture();
        for (const auto& [id, lease] : leases_) {
          if (!lease.acquiring && !lease.renewing) next = std::min(next, lease.expires - lease_ttl_ / 2);
        }
        // A round whose renewals failed leaves them due: not a busy loop.
        next = std::max(next, last_round + lease_ttl_ / 10);
        if (!follows_.empty() && !round_running_) next = std::min(next, next_round_);
        if (next <= now) break;
        kicked_ = false;
        leases_mu_.AwaitWithTimeout(
            absl::Condition(
                +[](FleetPollGate* g) ABSL_EXCLUSIVE_LOCKS_REQUIRED(g->leases_mu_) {
                  return g->stop_ || g->kicked_;
                },
                this),
            next - now);
      }
    }
    last_round = clock_->Monotonic();
    RenewDue();
    bool round = false;
    {
      absl::MutexLock lock(&leases_mu_);
      round = !follows_.empty() && !round_running_ && next_round_ <= clock_->Monotonic();
    }
    if (round) FollowRound();
  }
}

void FleetPollGate::FollowRound() {
  if (!client_->up()) return;
  const absl::Time now = clock_->Monotonic();
  std::vector<std::string> ids;
  {
    absl::MutexLock lock(&leases_mu_);
    if (round_running_ || draining_) return;
    next_round_ = now + options_.poll_interval;
    for (const auto& [id, follow] : follows_) {
      if (follow.confirmed) ids.push_back(id);
    }
    if (ids.empty()) return;
    round_running_ = true;
  }
  constexpr size_t kBatch = 512;  // tasks per script call
  auto left = std::make_shared<size_t>((ids.size() + kBatch - 1) / kBatch);
  for (size_t at = 0; at < ids.size(); at += kBatch) {
    std::vector<std::string> batch(ids.begin() + at,
                                   ids.begin() + std::min(ids.size(), at + kBatch));
    store_->FollowRound(batch, [this, batch, left, now](
                                   absl::StatusOr<std::vector<RedisTaskStore::Followed>> r) {
      {
        absl::MutexLock lock(&leases_mu_);
        if (--*left == 0) {
          round_running_ = false;
          kicked_ = true;  // the renew thread plans the next round
        }
      }
      if (!r.ok()) return;  // the next round reads again
      for (size_t i = 0; i < batch.size(); ++i) {
        RedisTaskStore::Followed& f = (*r)[i];
        if (f.acquired) TookOver(batch[i], now);
        if (!f.rejected.ok()) CountRejected(f.rejected);
        // A state this sidecar had not seen (its publish was missed, e.g.
        // while the subscriber reconnected) goes to the hub at once.
        if (f.state.has_value() && Learned(*f.state)) {
          absl::MutexLock lock(&listener_mu_);
          if (listener_) listener_(*f.state);
        }
      }
    });
  }
}

void FleetPollGate::TookOver(const std::string& id, absl::Time sent) {
  bool ours = false;
  {
    absl::MutexLock lock(&leases_mu_);
    auto f = follows_.find(id);
    if (f != follows_.end() && f->second.confirmed && !draining_) {
      follows_.erase(f);
      Lease& lease = leases_[id];
      lease.acquiring = false;
      lease.watched = true;
      lease.expires = std::max(lease.expires, sent + lease_ttl_);
      kicked_ = true;
      ours = true;
    }
  }
  if (!ours) {
    // Nobody here follows it any more: give back what Redis just gave.
    store_->ReleaseLease(id, [](absl::StatusOr<bool>) {});
    return;
  }
  absl::MutexLock lock(&takeover_mu_);
  if (takeover_) takeover_(id);
}

void FleetPollGate::TryTakeOver(const std::string& id) {
  {
    absl::MutexLock lock(&leases_mu_);
    auto f = follows_.find(id);
    if (draining_ || f == follows_.end() || !f->second.confirmed || leases_.count(id) > 0) return;
  }
  const absl::Time sent = clock_->Monotonic();
  store_->AcquireLease(id, [this, id, sent](absl::StatusOr<bool> held) {
    if (held.ok() && *held) TookOver(id, sent);
  });
}

bool FleetPollGate::Learned(const VideoTask& task) {
  const bool terminal = IsTerminal(task.status());
  bool news = false;
  {
    absl::MutexLock lock(&leases_mu_);
    auto f = follows_.find(task.id());
    if (f != follows_.end()) {
      news = !f->second.state.has_value() ||
             StatusRank(task.status()) > StatusRank(f->second.state->status());
      if (terminal) {
        follows_.erase(f);  // nothing left to follow
      } else if (!f->second.state.has_value() ||
                 StatusRank(task.status()) >= StatusRank(f->second.state->status())) {
        f->second.state = task;
      }
    }
  }
  if (terminal) LetGo(task.id());  // stored: nothing left to poll
  return news;
}

bool FleetPollGate::follow_round_running() {
  absl::MutexLock lock(&leases_mu_);
  return round_running_;
}

size_t FleetPollGate::tasks_followed() {
  absl::MutexLock lock(&leases_mu_);
  size_t n = 0;
  for (const auto& [id, follow] : follows_) n += follow.confirmed ? 1 : 0;
  return n;
}

void FleetPollGate::RenewDue() {
  if (!client_->up()) return;  // the leases' own expiry decides meanwhile
  const absl::Time now = clock_->Monotonic();
  std::vector<std::string> due;
  {
    absl::MutexLock lock(&leases_mu_);
    for (auto& [id, lease] : leases_) {
      if (lease.acquiring || lease.renewing || lease.expires - now > lease_ttl_ / 2) continue;
      lease.renewing = true;
      due.push_back(id);
    }
  }
  constexpr size_t kBatch = 512;  // keys per script call
  for (size_t at = 0; at < due.size(); at += kBatch) {
    std::vector<std::string> ids(due.begin() + at, due.begin() + std::min(due.size(), at + kBatch));
    store_->RenewLeases(ids, [this, ids, now](absl::StatusOr<std::vector<bool>> ours) {
      absl::MutexLock lock(&leases_mu_);
      for (size_t i = 0; i < ids.size(); ++i) {
        auto it = leases_.find(ids[i]);
        if (it == leases_.end()) continue;
        it->second.renewing = false;
        if (!ours.ok()) continue;  // tried again next round; Admit re-acquires if it lapses
        if ((*ours)[i]) {
          it->second.expires = std::max(it->second.expires, now + lease_ttl_);
        } else if (!it->second.acquiring) {
          leases_.erase(it);  // lost (expired, taken over): Admit asks again
        }
      }
      kicked_ = true;
    });
  }
}

size_t FleetPollGate::leases_held() {
  absl::MutexLock lock(&leases_mu_);
  return leases_.size();
}

void FleetPollGate::LetGo(const std::string& id) {
  {
    absl::MutexLock lock(&leases_mu_);
    auto it = leases_.find(id);
    if (it == leases_.end()) return;
    if (it->second.acquiring) {
      // The acquisition's answer lets it go.
      it->second.watched = false;
      it->second.archiving = false;
      return;
    }
    leases_.erase(it);
  }
  store_->ReleaseLease(id, [](absl::StatusOr<bool>) {});
}

void FleetPollGate::CountRejected(const absl::Status& status) {
  entries_rejected_->Increment();
  LogEvent(LogLevel::kWarning, "fleet_entry_rejected",
           {{"reason", std::string(status.message())},
            {"action", "ignored; check who else writes to this Redis"}});
}

void FleetPollGate::RefreshApiKey() {
  if (!options_.current_api_key) return;
  absl::StatusOr<std::string> key = options_.current_api_key();
  if (key.ok() && !key->empty()) keys_.signing()->UseApiKey(*key);
}

void FleetPollGate::Admit(const std::string& id, bool watched, AdmitDone done) {
  RefreshApiKey();
  if (!client_->up()) {
    std::move(done)(Admission{});  // local mode
    return;
  }
  auto join = std::make_shared<Join>();
  join->id = id;
  join->watched = watched;
  join->done = std::move(done);
  // A lease held with time to spare needs no round trip: the renew timer
  // keeps it, and says when it was lost.
  // A followed task is answered from what the fleet published and the
  // last follow round read: no Redis work per follower and task.
  bool acquire = false;
  bool following = false;
  std::optional<VideoTask> known;
  if (watched) {
    absl::MutexLock lock(&leases_mu_);
    const absl::Time now = clock_->Monotonic();
    auto it = leases_.find(id);
    auto f = follows_.find(id);
    if (it != leases_.end() && !it->second.acquiring && it->second.expires - now > lease_ttl_ / 4) {
      it->second.watched = true;
      join->held = true;
    } else if (f != follows_.end() && f->second.confirmed && !draining_) {
      following = true;
      known = f->second.state;
    } else if (!draining_) {
      Lease& lease = leases_[id];
      lease.acquiring = true;
      lease.watched = true;
      follows_[id].confirmed = false;  // Decide confirms it if we follow
      acquire = true;
    }
  }
  if (following) {
    Admission a;
    a.kind = Admission::Kind::kFollow;
    a.shared = std::move(known);
    std::move(join->done)(std::move(a));
    return;
  }
  // The holder (whose lease is known here) and a Get read the state (a
  // terminal one stored by any sidecar ends the polling) and the pause.
  join->outstanding = (acquire ? 1 : 0) + 2;
  // Callbacks run on the client's thread, one at a time: no lock needed.
  auto step = [this, join] {
    if (--join->outstanding == 0) Decide(join);
  };
  if (acquire) {
    const absl::Time sent = clock_->Monotonic();
    store_->AcquireLease(id, [this, join, step, sent](absl::StatusOr<bool> held) {
      bool release = false;
      {
        absl::MutexLock lock(&leases_mu_);
        auto it = leases_.find(join->id);
        const bool wanted = it != leases_.end() && !draining_ &&
                            (it->second.watched || it->second.archiving);
        if (held.ok() && *held && wanted) {
          it->second.acquiring = false;
          it->second.expires = sent + lease_ttl_;
          kicked_ = true;  // the renew timer plans for it
          join->held = true;
        } else {
          // Not ours, or nobody here wants it any more (released, drained
          // while it was in flight): let go of what Redis may have given.
          if (it != leases_.end()) leases_.erase(it);
          release = held.ok() && *held;
          if (!held.ok()) join->redis_failed = true;
        }
      }
      if (release) store_->ReleaseLease(join->id, [](absl::StatusOr<bool>) {});
      step();
    });
  }
  store_->Get(id, [this, join, step](absl::StatusOr<std::optional<VideoTask>> state) {
    if (state.ok()) {
      join->shared = std::move(*state);
      if (join->shared.has_value() && IsTerminal(join->shared->status())) {
        Learned(*join->shared);
      }
    } else if (absl::IsUnavailable(state.status()) || absl::IsDeadlineExceeded(state.status()) ||
               absl::IsCancelled(state.status()) || absl::IsInternal(state.status())) {
      join->redis_failed = true;
    } else {
      CountRejected(state.status());  // a forged or foreign entry: absent
    }
    step();
  });
  client_->Command({"PTTL", keys_.PauseKey()}, [join, step](absl::StatusOr<RedisReply> r) {
    if (r.ok() && r->type == RedisReply::Type::kInteger) {
      if (r->integer > 0) join->paused = absl::Milliseconds(r->integer);
    } else {
      join->redis_failed = true;
    }
    step();
  });
}

void FleetPollGate::Decide(std::shared_ptr<Join> join) {
  Admission a;
  a.shared = std::move(join->shared);
  if (join->watched) {
    // Followed from now on (answered locally), or not.
    absl::MutexLock lock(&leases_mu_);
    auto f = follows_.find(join->id);
    if (f != follows_.end() && !f->second.confirmed) {
      const bool follows = !join->held && !join->redis_failed && !draining_ &&
                           !(a.shared.has_value() && IsTerminal(a.shared->status()));
      if (follows) {
        f->second.confirmed = true;
        f->second.state = a.shared;
        if (next_round_ == absl::InfinitePast()) {
          next_round_ = clock_->Monotonic() + options_.poll_interval;
        }
        // The renew thread may sleep with nothing to plan (no leases, no
        // follows): wake it, so the follow rounds run.
        kicked_ = true;
      } else {
        follows_.erase(f);
      }
    }
  }
  if (a.shared.has_value() && (IsTerminal(a.shared->status()) || !join->watched)) {
    // Answered by the fleet: a finished task, or a Get.
    a.kind = Admission::Kind::kFollow;
    std::move(join->done)(std::move(a));
    return;
  }
  if (join->redis_failed) {
    a.kind = Admission::Kind::kPoll;  // local mode for this request
    std::move(join->done)(std::move(a));
    return;
  }
  if (join->watched && !join->held) {
    a.kind = Admission::Kind::kFollow;  // another sidecar polls it
    std::move(join->done)(std::move(a));
    return;
  }
  if (join->paused > absl::ZeroDuration()) {
    a.kind = Admission::Kind::kWait;
    a.wait = join->paused;
    std::move(join->done)(std::move(a));
    return;
  }
  if (options_.fleet_qps <= 0) {
    std::move(join->done)(std::move(a));
    return;
  }
  budget_->Acquire([this, join, a = std::move(a)](absl::StatusOr<absl::Duration> wait) mutable {
    if (wait.ok() && *wait > absl::ZeroDuration()) {
      tokens_denied_->Increment();
      a.kind = Admission::Kind::kWait;
      a.wait = *wait;
    } else {
      a.kind = Admission::Kind::kPoll;  // granted, or Redis failed: local caps
    }
    std::move(join->done)(std::move(a));
  });
}

void FleetPollGate::Observed(const VideoTask& task) {
  if (!client_->up() || task.id().empty()) return;
  RefreshApiKey();
  store_->Put(task);
  // Stored first (the same connection keeps the order), then let go: no
  // other sidecar can take the lease and poll before the state is there.
  if (IsTerminal(task.status())) Learned(task);
}

void FleetPollGate::AcquireForCreate(RedisRateBudget::AcquireDone done) {
  RefreshApiKey();
  if (options_.fleet_qps > 0) {
    // The script honours the pause too.
    budget_->Acquire([this, done = std::move(done)](absl::StatusOr<absl::Duration> wait) mutable {
      if (wait.ok() && *wait > absl::ZeroDuration()) tokens_denied_->Increment();
      done(std::move(wait));
    });
    return;
  }
  client_->Command({"PTTL", keys_.PauseKey()},
                   [done = std::move(done)](absl::StatusOr<RedisReply> r) mutable {
                     if (!r.ok()) {
                       done(r.status());
                     } else if (r->type != RedisReply::Type::kInteger) {
                       done(absl::InternalError("redis: unexpected PTTL reply"));
                     } else {
                       done(r->integer > 0 ? absl::Milliseconds(r->integer)
                                           : absl::ZeroDuration());
                     }
                   });
}

void FleetPollGate::RateLimited(absl::Duration pause) {
  if (!client_->up() || pause <= absl::ZeroDuration()) return;
  budget_->Pause(pause);
}

void FleetPollGate::Released(const std::string& id) {
  {
    absl::MutexLock lock(&leases_mu_);
    follows_.erase(id);
    auto it = leases_.find(id);
    if (it == leases_.end()) return;  // not held: nothing to tell Redis
    if (it->second.acquiring || it->second.archiving) {
      // The acquisition's answer lets it go; an archive keeps it until the
      // archived state is stored (Observed).
      it->second.watched = false;
      return;
    }
    leases_.erase(it);
  }
  store_->ReleaseLease(id, [](absl::StatusOr<bool>) {});
}

void FleetPollGate::Archiving(const std::string& id) {
  absl::MutexLock lock(&leases_mu_);
  if (draining_) return;
  auto it = leases_.find(id);
  // Only a held lease marks it: an archive started without one (local
  // mode, a Get) has nothing to tell the fleet.
  if (it != leases_.end()) it->second.archiving = true;
}

void FleetPollGate::Drain() {
  std::vector<std::string> held;
  {
    absl::MutexLock lock(&leases_mu_);
    draining_ = true;
    follows_.clear();
    for (auto it = leases_.begin(); it != leases_.end();) {
      if (it->second.acquiring) {
        it->second.watched = false;  // its answer lets it go
        it->second.archiving = false;
        ++it;
      } else {
        held.push_back(it->first);
        it = leases_.erase(it);
      }
    }
  }
  if (!held.empty()) {
    LogEvent(LogLevel::kInfo, "fleet_leases_released",
             {{"leases", absl::StrCat(held.size())}, {"reason", "drain"}});
  }
  for (const std::string& id : held) store_->ReleaseLease(id, [](absl::StatusOr<bool>) {});
}

void FleetPollGate::SetListener(Listener listener) {
  {
    absl::MutexLock lock(&listener_mu_);
    listener_ = std::move(listener);
  }
  store_->Subscribe(
      [this](const VideoTask& task) {
        Learned(task);
        absl::MutexLock lock(&listener_mu_);
        if (listener_) listener_(task);
      },
      [this](const absl::Status& status) { CountRejected(status); },
      // (Re)subscribed: what was published while the subscriber was away
      // is lost; re-read what this sidecar follows in a round now.
      [this] { Reread(); });
  store_->SubscribeReleases([this](const std::string& id) { TryTakeOver(id); });
}

void FleetPollGate::Reread() {
  absl::MutexLock lock(&leases_mu_);
  if (follows_.empty()) return;  // nothing followed, nothing missed
  next_round_ = clock_->Monotonic();
  kicked_ = true;
}

void FleetPollGate::SetTakeover(Takeover takeover) {
  absl::MutexLock lock(&takeover_mu_);
  takeover_ = std::move(takeover);
}

}  // namespace videotask::fleet
