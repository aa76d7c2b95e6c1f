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

// KEYS[1] state key. ARGV[1] signed entry, ARGV[2] status (1-4), ARGV[3]
// TTL ms, ARGV[4] channel. The stored value is the status digit + entry.
// Returns 2 published, 1 refreshed, 0 ignored.
constexpr char kPut[] = R"lua(
local new = tonumber(ARGV[2])
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

constexpr char kRelease[] = R"lua(
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
)lua";

std::string Millis(absl::Duration d) {
  return absl::StrCat(std::max<int64_t>(1, absl::ToInt64Milliseconds(absl::Ceil(d, absl::Milliseconds(1)))));
}

}  // namespace

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
      release_(kRelease) {
  if (options_.owner.empty()) options_.owner = NewOwnerId();
}

void RedisTaskStore::Put(const VideoTask& task, PutDone done) {
  const int status = static_cast<int>(task.status());
  if (status < 1 || status > 4) {
    if (done != nullptr) done(absl::InvalidArgumentError("fleet store: task without a valid status"));
    return;
  }
  const absl::Duration ttl = IsTerminal(task.status()) ? options_.terminal_ttl : options_.running_ttl;
  put_.Run(*client_, {keys_.StateKey(task.id())},
           {signer_.Sign(task), absl::StrCat(status), Millis(ttl), keys_.StatesChannel()},
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
  client_->Command({"GET", keys_.StateKey(id)},
                   [signer = signer_, id, done = std::move(done)](absl::StatusOr<RedisReply> r) mutable {
                     if (!r.ok()) {
                       done(r.status());
                     } else if (r->is_nil()) {
                       done(std::optional<VideoTask>());
                     } else if (r->type != RedisReply::Type::kString) {
                       done(absl::InternalError("fleet store: unexpected reply to GET"));
                     } else if (r->str.empty()) {
                       done(absl::DataLossError("fleet entry unsigned or malformed"));
                     } else {
                       absl::StatusOr<VideoTask> t =
                           signer.Verify(absl::string_view(r->str).substr(1), id);
                       if (!t.ok()) {
                         done(t.status());
                       } else {
                         done(std::optional<VideoTask>(*std::move(t)));
                       }
                     }
                   });
}

void RedisTaskStore::Subscribe(std::function<void(const VideoTask&)> on_state,
                               std::function<void(const absl::Status&)> on_rejected,
                               std::function<void()> on_subscribed) {
  client_->Subscribe(
      keys_.StatesChannel(),
      [signer = signer_, on_state = std::move(on_state), on_rejected = std::move(on_rejected)](
          const std::string&, const std::string& message) {
        absl::StatusOr<VideoTask> t = signer.Verify(message);
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
void RedisTaskStore::ReleaseLease(const std::string& id, LeaseDone done) {
  RunLease(release_, id, false, std::move(done));
}

}  // namespace videotask::fleet
