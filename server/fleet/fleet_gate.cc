#include "server/fleet/fleet_gate.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <optional>
#include <utility>

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
            options_.accepted_api_keys) {
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
  so.lease_ttl = std::max(options_.poll_interval * 3 / 2, absl::Seconds(1));
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
}

FleetPollGate::~FleetPollGate() { client_.reset(); }

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
  join->outstanding = watched ? 3 : 2;
  // Callbacks run on the client's thread, one at a time: no lock needed.
  auto step = [this, join] {
    if (--join->outstanding == 0) Decide(join);
  };
  if (watched) {
    store_->AcquireLease(id, [join, step](absl::StatusOr<bool> held) {
      if (held.ok()) {
        join->held = *held;
      } else {
        join->redis_failed = true;
      }
      step();
    });
  }
  store_->Get(id, [this, join, step](absl::StatusOr<std::optional<VideoTask>> state) {
    if (state.ok()) {
      join->shared = std::move(*state);
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
    {
      absl::MutexLock lock(&following_mu_);
      following_.insert(join->id);
    }
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
    absl::MutexLock lock(&following_mu_);
    following_.erase(id);
  }
  if (!client_->up()) return;
  store_->ReleaseLease(id, [](absl::StatusOr<bool>) {});
}

void FleetPollGate::SetListener(Listener listener) {
  {
    absl::MutexLock lock(&listener_mu_);
    listener_ = std::move(listener);
  }
  store_->Subscribe(
      [this](const VideoTask& task) {
        absl::MutexLock lock(&listener_mu_);
        if (listener_) listener_(task);
      },
      [this](const absl::Status& status) { CountRejected(status); },
      // (Re)subscribed: what was published while the subscriber was away
      // is lost; re-read what this sidecar follows.
      [this] { Reread(); });
}

void FleetPollGate::Reread() {
  std::vector<std::string> ids;
  {
    absl::MutexLock lock(&following_mu_);
    ids.assign(following_.begin(), following_.end());
  }
  for (const std::string& id : ids) {
    store_->Get(id, [this](absl::StatusOr<std::optional<VideoTask>> state) {
      if (state.ok() && state->has_value()) {
        absl::MutexLock lock(&listener_mu_);
        if (listener_) listener_(**state);
      } else if (!state.ok() && !absl::IsUnavailable(state.status()) &&
                 !absl::IsDeadlineExceeded(state.status()) && !absl::IsCancelled(state.status()) &&
                 !absl::IsInternal(state.status())) {
        CountRejected(state.status());
      }
    });
  }
}

}  // namespace videotask::fleet
