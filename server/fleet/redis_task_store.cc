#include "server/fleet/redis_task_store.h"

#include <openssl/rand.h>

#include <algorithm>
#include <cstdlib>
#include <memory>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "server/base/task_status.h"

namespace videotask::fleet {
namespace {

using videotask::v1::VideoTask;

// KEYS[1] state key, KEYS[2] terminal key. ARGV[1] signed entry, ARGV[2]
// status (1-4), ARGV[3] TTL ms, ARGV[4] channel. The stored value is the
// status digit + entry. A terminal state is also kept, first one wins, at
// the terminal key, where readers accept only terminal entries: writing an
// older signed state back over the state key cannot hide it.
// Returns 2 published, 1 refreshed, 0 ignored.
constexpr char kPut[] = R"lua(
local new = tonumber(ARGV[2])
if new >= 3 then
  redis.call('SET', KEYS[2], ARGV[2] .. ARGV[1], 'PX', ARGV[3], 'NX')
end
local cur = redis.call('GET', KEYS[1])
local cur_status = cur and tonumber(string.sub(cur, 1, 1)) or 0
if cur_status == nil then cur_status = 0 end
if cur_status >= 3 or new < cur_status then return 0 end
redis.call('SET', KEYS[1], ARGV[2] .. ARGV[1], 'PX', ARGV[3])
if new == cur_status then return 1 end
redis.call('PUBLISH', ARGV[4], ARGV[1])
return 2
)lua";

// KEYS[1] lease key; ARGV[1] owner, ARGV[2] TTL ms.
constexpr char kAcquire[] = R"lua(
local cur = redis.call('GET', KEYS[1])
if not cur then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
)lua";

constexpr char kRenew[] = R"lua(
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
)lua";

// KEYS[1] lease key; ARGV[1] owner, ARGV[2] channel, ARGV[3] task id.
constexpr char kRelease[] = R"lua(
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], ARGV[3])
  return 1
end
return 0
)lua";

// KEYS: per task its lease, state and terminal keys; ARGV[1] owner, ARGV[2]
// lease TTL ms. Per task: 1 if the free lease was taken, the state, the
// terminal state (false: none).
constexpr char kFollowRound[] = R"lua(
local out = {}
for i = 1, #KEYS, 3 do
  local took = 0
  if redis.call('SET', KEYS[i], ARGV[1], 'PX', ARGV[2], 'NX') then took = 1 end
  out[#out + 1] = took
  out[#out + 1] = redis.call('GET', KEYS[i + 1])
  out[#out + 1] = redis.call('GET', KEYS[i + 2])
end
return out
)lua";

// KEYS: lease keys; ARGV[1] owner, ARGV[2] TTL ms. Returns one 0/1 per key.
constexpr char kRenewMany[] = R"lua(
local out = {}
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then
    redis.call('PEXPIRE', key, ARGV[2])
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
)lua";

// KEYS[1]; ARGV[1] the exact value to delete.
constexpr char kDeleteIf[] = R"lua(
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
)lua";

std::string Millis(absl::Duration d) {
  return absl::StrCat(std::max<int64_t>(1, absl::ToInt64Milliseconds(absl::Ceil(d, absl::Milliseconds(1)))));
}

}  // namespace

struct RedisTaskStore::Checker {
  SignedState signer;
  Options options;
  RedisScript delete_if;

  absl::Status Fresh(const VideoTask& task) const {
    if (!task.has_observe_time()) {
      return absl::FailedPreconditionError("fleet entry without an observe time");
    }
    const absl::Time observed = absl::FromUnixSeconds(task.observe_time().seconds()) +
                                absl::Nanoseconds(task.observe_time().nanos());
    const absl::Duration ttl =
        IsTerminal(task.status()) ? options.terminal_ttl : options.running_ttl;
    if (options.clock->Now() - observed > ttl + options.clock_skew) {
      return absl::FailedPreconditionError("fleet entry older than its TTL (replayed)");
    }
    return absl::OkStatus();
  }

  // The verified state of `id` from its state and terminal keys' values
  // (`replies`, in that order, as read), the terminal key first; deletes
  // tampered or stale values that are still stored. nullopt: none stored.
  absl::StatusOr<std::optional<VideoTask>> Pick(RedisClient& client, const std::string& id,
                                                const std::vector<std::string>& keys,
                                                const RedisReply* const replies[2]) const {
    absl::Status rejected;
    for (int i : {1, 0}) {
      const RedisReply& e = *replies[i];
      if (e.is_nil()) continue;
      if (e.type != RedisReply::Type::kString) {
        return absl::InternalError("fleet store: unexpected reply reading a state");
      }
      bool tampered = false;
      absl::StatusOr<VideoTask> t = Stored(id, e.str, &tampered);
      if (t.ok() && i == 1 && !IsTerminal(t->status())) {
        tampered = true;
        t = absl::FailedPreconditionError("fleet entry at the terminal key is not terminal");
      }
      if (tampered) {
        // Only this exact value: a newer Put since the read is kept.
        delete_if.Run(client, {keys[i]}, {e.str}, [](absl::StatusOr<RedisReply>) {});
      }
      if (t.ok()) return std::optional<VideoTask>(*std::move(t));
      if (rejected.ok()) rejected = t.status();
    }
    if (!rejected.ok()) return rejected;
    return std::optional<VideoTask>();
  }

  // OK, or why `entry` (as stored under `id`'s key, digit first) is not to
  // be believed; `tampered` is set when it should be deleted.
  absl::StatusOr<VideoTask> Stored(const std::string& id, const std::string& entry,
                                   bool* tampered) const {
    *tampered = false;
    if (entry.empty()) return absl::DataLossError("fleet entry unsigned or malformed");
    absl::StatusOr<VideoTask> t = signer.Verify(absl::string_view(entry).substr(1), id);
    if (!t.ok()) return t.status();
    // Authentic but tampered with or replayed: not to be believed, and not
    // to be left where the Put script would trust its digit.
    if (entry[0] != '0' + static_cast<int>(t->status())) {
      *tampered = true;
      return absl::FailedPreconditionError(
          "fleet entry status digit differs from its signed status");
    }
    if (absl::Status fresh = Fresh(*t); !fresh.ok()) {
      *tampered = true;
      return fresh;
    }
    return t;
  }
};

std::string RedisTaskStore::NewOwnerId() {
  unsigned char buf[16];
  if (RAND_bytes(buf, sizeof(buf)) != 1) abort();  // no entropy: nothing safe to do
  return absl::BytesToHexString(absl::string_view(reinterpret_cast<char*>(buf), sizeof(buf)));
}

RedisTaskStore::RedisTaskStore(RedisClient* client, const FleetKeys& keys, Options options)
    : client_(client),
      keys_(keys),
      signer_(keys.signing()),
      options_(std::move(options)),
      put_(kPut),
      acquire_(kAcquire),
      renew_(kRenew),
      release_(kRelease),
      renew_many_(kRenewMany),
      follow_round_(kFollowRound) {
  if (options_.owner.empty()) options_.owner = NewOwnerId();
  if (options_.clock == nullptr) options_.clock = RealClock::Get();
  checker_ = std::make_shared<const Checker>(Checker{signer_, options_, RedisScript(kDeleteIf)});
}

void RedisTaskStore::Put(const VideoTask& task, PutDone done) {
  const int status = static_cast<int>(task.status());
  if (status < 1 || status > 4) {
    if (done != nullptr) done(absl::InvalidArgumentError("fleet store: task without a valid status"));
    return;
  }
  const absl::Duration ttl = IsTerminal(task.status()) ? options_.terminal_ttl : options_.running_ttl;
  std::string entry;
  if (task.has_observe_time()) {
    entry = signer_.Sign(task);
  } else {
    VideoTask stamped = task;  // the signed age readers check
    const absl::Time now = options_.clock->Now();
    const int64_t nanos = absl::ToUnixNanos(now);
    stamped.mutable_observe_time()->set_seconds(nanos / 1000000000);
    stamped.mutable_observe_time()->set_nanos(static_cast<int32_t>(nanos % 1000000000));
    entry = signer_.Sign(stamped);
  }
  put_.Run(*client_, {keys_.StateKey(task.id()), keys_.TerminalKey(task.id())},
           {std::move(entry), absl::StrCat(status), Millis(ttl), keys_.StatesChannel()},
           [done = std::move(done)](absl::StatusOr<RedisReply> r) mutable {
             if (done == nullptr) return;
             if (!r.ok()) {
               done(r.status());
             } else if (r->type != RedisReply::Type::kInteger) {
               done(absl::InternalError(absl::StrCat("fleet store: unexpected reply ", r->str)));
             } else {
               done(r->integer == 2   ? PutResult::kPublished
                    : r->integer == 1 ? PutResult::kRefreshed
                                      : PutResult::kIgnored);
             }
           });
}

void RedisTaskStore::Get(const std::string& id, GetDone done) {
  std::vector<std::string> keys = {keys_.StateKey(id), keys_.TerminalKey(id)};
  client_->Command({"MGET", keys[0], keys[1]}, [client = client_, checker = checker_, id, keys,
                                                done = std::move(done)](
                                                   absl::StatusOr<RedisReply> r) mutable {
    if (!r.ok()) {
      done(r.status());
      return;
    }
    if (r->type != RedisReply::Type::kArray || r->elements.size() != 2) {
      done(absl::InternalError("fleet store: unexpected reply to MGET"));
      return;
    }
    const RedisReply* replies[2] = {&r->elements[0], &r->elements[1]};
    done(checker->Pick(*client, id, keys, replies));
  });
}

void RedisTaskStore::Subscribe(std::function<void(const VideoTask&)> on_state,
                               std::function<void(const absl::Status&)> on_rejected,
                               std::function<void()> on_subscribed) {
  client_->Subscribe(
      keys_.StatesChannel(),
      [checker = checker_, on_state = std::move(on_state), on_rejected = std::move(on_rejected)](
          const std::string&, const std::string& message) {
        absl::StatusOr<VideoTask> t = checker->signer.Verify(message);
        if (t.ok()) {
          if (absl::Status fresh = checker->Fresh(*t); !fresh.ok()) t = fresh;
        }
        if (t.ok()) {
          if (on_state) on_state(*t);
        } else if (on_rejected) {
          on_rejected(t.status());
        }
      },
      [on_subscribed = std::move(on_subscribed)](const std::string&) {
        if (on_subscribed) on_subscribed();
      });
}

void RedisTaskStore::RunLease(const RedisScript& script, const std::string& id, bool with_ttl,
                              LeaseDone done) {
  std::vector<std::string> args = {options_.owner};
  if (with_ttl) args.push_back(Millis(options_.lease_ttl));
  script.Run(*client_, {keys_.LeaseKey(id)}, std::move(args),
             [done = std::move(done)](absl::StatusOr<RedisReply> r) mutable {
               if (!r.ok()) {
                 done(r.status());
               } else if (r->type != RedisReply::Type::kInteger) {
                 done(absl::InternalError(absl::StrCat("fleet lease: unexpected reply ", r->str)));
               } else {
                 done(r->integer == 1);
               }
             });
}

void RedisTaskStore::AcquireLease(const std::string& id, LeaseDone done) {
  RunLease(acquire_, id, true, std::move(done));
}
void RedisTaskStore::RenewLease(const std::string& id, LeaseDone done) {
  RunLease(renew_, id, true, std::move(done));
}
void RedisTaskStore::RenewLeases(const std::vector<std::string>& ids, LeasesDone done) {
  if (ids.empty()) {
    done(std::vector<bool>());
    return;
  }
  std::vector<std::string> keys;
  keys.reserve(ids.size());
  for (const std::string& id : ids) keys.push_back(keys_.LeaseKey(id));
  const size_t n = ids.size();
  renew_many_.Run(*client_, std::move(keys), {options_.owner, Millis(options_.lease_ttl)},
                  [n, done = std::move(done)](absl::StatusOr<RedisReply> r) mutable {
                    if (!r.ok()) {
                      done(r.status());
                      return;
                    }
                    if (r->type != RedisReply::Type::kArray || r->elements.size() != n) {
                      done(absl::InternalError(
                          absl::StrCat("fleet lease: unexpected reply ", r->str)));
                      return;
                    }
                    std::vector<bool> ours;
                    ours.reserve(n);
                    for (const RedisReply& e : r->elements) {
                      ours.push_back(e.type == RedisReply::Type::kInteger && e.integer == 1);
                    }
                    done(std::move(ours));
                  });
}

void RedisTaskStore::ReleaseLease(const std::string& id, LeaseDone done) {
  release_.Run(*client_, {keys_.LeaseKey(id)}, {options_.owner, keys_.LeasesChannel(), id},
               [done = std::move(done)](absl::StatusOr<RedisReply> r) mutable {
                 if (!r.ok()) {
                   done(r.status());
                 } else if (r->type != RedisReply::Type::kInteger) {
                   done(absl::InternalError(absl::StrCat("fleet lease: unexpected reply ", r->str)));
                 } else {
                   done(r->integer == 1);
                 }
               });
}

void RedisTaskStore::SubscribeReleases(std::function<void(const std::string& id)> on_released) {
  client_->Subscribe(keys_.LeasesChannel(),
                     [on_released = std::move(on_released)](const std::string&,
                                                            const std::string& id) {
                       if (on_released && !id.empty() && id.size() <= 128) on_released(id);
                     });
}

void RedisTaskStore::FollowRound(const std::vector<std::string>& ids, RoundDone done) {
  if (ids.empty()) {
    done(std::vector<Followed>());
    return;
  }
  std::vector<std::string> keys;
  keys.reserve(ids.size() * 3);
  for (const std::string& id : ids) {
    keys.push_back(keys_.LeaseKey(id));
    keys.push_back(keys_.StateKey(id));
    keys.push_back(keys_.TerminalKey(id));
  }
  follow_round_.Run(
      *client_, keys, {options_.owner, Millis(options_.lease_ttl)},
      [client = client_, checker = checker_, ids, keys, done = std::move(done)](
          absl::StatusOr<RedisReply> r) mutable {
        if (!r.ok()) {
          done(r.status());
          return;
        }
        if (r->type != RedisReply::Type::kArray || r->elements.size() != ids.size() * 3) {
          done(absl::InternalError(absl::StrCat("fleet follow round: unexpected reply ", r->str)));
          return;
        }
        std::vector<Followed> out(ids.size());
        for (size_t i = 0; i < ids.size(); ++i) {
          const RedisReply& took = r->elements[3 * i];
          out[i].acquired = took.type == RedisReply::Type::kInteger && took.integer == 1;
          const RedisReply* replies[2] = {&r->elements[3 * i + 1], &r->elements[3 * i + 2]};
          const std::vector<std::string> pair = {keys[3 * i + 1], keys[3 * i + 2]};
          absl::StatusOr<std::optional<VideoTask>> state =
              checker->Pick(*client, ids[i], pair, replies);
          if (state.ok()) {
            out[i].state = std::move(*state);
          } else {
            out[i].rejected = state.status();
          }
        }
        done(std::move(out));
      });
}

}  // namespace videotask::fleet
