#include "server/fleet/redis_create_key_store.h"

#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include <algorithm>
#include <utility>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "server/base/log.h"

namespace videotask::fleet {
namespace {

constexpr absl::string_view kMagic = "vtc1";
constexpr size_t kMacBytes = 32;
constexpr size_t kMaxEntryBytes = 64 * 1024;

// KEYS[1] record, KEYS[2] lease; ARGV[1] the pending record, ARGV[2] the
// claim token, ARGV[3] ttl ms, ARGV[4] lease ms.
// Returns {'', ''} when claimed, else {record, lease token or ''}.
constexpr char kClaim[] = R"lua(
local v = redis.call('GET', KEYS[1])
if v then return {v, redis.call('GET', KEYS[2]) or ''} end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[4])
return {'', ''}
)lua";

// KEYS[1] record, KEYS[2] lease. Returns {record or '', lease token or ''}.
constexpr char kLookup[] = R"lua(
return {redis.call('GET', KEYS[1]) or '', redis.call('GET', KEYS[2]) or ''}
)lua";

// Record and Release, only by the claimant: KEYS[1] record, KEYS[2] lease;
// ARGV[1] the pending record as written, ARGV[2] the claim token, ARGV[3]
// the outcome record ('' deletes), ARGV[4] ttl ms, ARGV[5] channel.
// Returns 1 when settled, 0 when the record is no longer that claim.
constexpr char kSettle[] = R"lua(
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[3] == '' then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
end
if redis.call('GET', KEYS[2]) == ARGV[2] then redis.call('DEL', KEYS[2]) end
redis.call('PUBLISH', ARGV[5], '1')
return 1
)lua";

// KEYS: record, lease pairs; ARGV[1] lease ms, ARGV[2] ttl ms, ARGV[3..]
// the claim tokens. Renews the leases still held (and their pending
// records' TTL). Returns how many.
constexpr char kRenew[] = R"lua(
local n = 0
for i = 1, #KEYS, 2 do
  if redis.call('GET', KEYS[i + 1]) == ARGV[2 + (i + 1) / 2] then
    redis.call('PEXPIRE', KEYS[i + 1], ARGV[1])
    redis.call('PEXPIRE', KEYS[i], ARGV[2])
    n = n + 1
  end
end
return n
)lua";

std::string Sha256Hex(absl::string_view s) {
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(s.data()), s.size(), digest);
  return absl::BytesToHexString(
      absl::string_view(reinterpret_cast<const char*>(digest), sizeof digest));
}

std::string RandomToken() {
  unsigned char b[16];
  if (RAND_bytes(b, sizeof b) != 1) abort();  // no entropy: nothing safe to do
  return absl::BytesToHexString(absl::string_view(reinterpret_cast<const char*>(b), sizeof b));
}

std::string Ms(absl::Duration d) {
  return absl::StrCat(std::max<int64_t>(1, absl::ToInt64Milliseconds(d)));
}

// Length-prefixed fields: "<len>:<bytes>".
void AppendField(std::string* out, absl::string_view field) {
  absl::StrAppend(out, field.size(), ":", field);
}

bool NextField(absl::string_view* in, std::string* field) {
  const size_t colon = in->find(':');
  if (colon == absl::string_view::npos || colon == 0 || colon > 6) return false;
  size_t len = 0;
  if (!absl::SimpleAtoi(in->substr(0, colon), &len) || len > in->size() - colon - 1) return false;
  *field = std::string(in->substr(colon + 1, len));
  in->remove_prefix(colon + 1 + len);
  return true;
}

}  // namespace

struct RedisCreateKeyStore::Wake {
  absl::Mutex mu;
  uint64_t version ABSL_GUARDED_BY(mu) = 0;
  void Bump() {
    absl::MutexLock lock(&mu);
    ++version;
  }
};

RedisCreateKeyStore::RedisCreateKeyStore(RedisClient* client, const FleetKeys& keys,
                                         Options options, Clock* clock,
                                         MetricsRegistry* metrics)
    : client_(client),
      keys_(keys),
      options_(options),
      clock_(clock),
      channel_(absl::StrCat(keys.prefix(), "creates")),
      claim_(kClaim),
      lookup_(kLookup),
      settle_(kSettle),
      renew_(kRenew),
      wake_(std::make_shared<Wake>()) {
  if (metrics != nullptr) {
    rejected_ = metrics->GetCounter(
        "videotask_fleet_entries_rejected_total",
        "Shared task states from Redis that failed verification and were ignored.");
  }
  std::shared_ptr<Wake> wake = wake_;
  client_->Subscribe(
      channel_, [wake](const std::string&, const std::string&) { wake->Bump(); },
      [wake](const std::string&) { wake->Bump(); });
  loop_ = std::thread([this] { Loop(); });
}

RedisCreateKeyStore::~RedisCreateKeyStore() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  if (loop_.joinable()) loop_.join();
}

std::string RedisCreateKeyStore::RecordKey(const std::string& request_id) const {
  return absl::StrCat(keys_.prefix(), "create:", Sha256Hex(request_id));
}

std::string RedisCreateKeyStore::LeaseKey(const std::string& request_id) const {
  return absl::StrCat(keys_.prefix(), "create-lease:", Sha256Hex(request_id));
}

std::string RedisCreateKeyStore::Encode(const std::string& redis_key, const CreateRecord& record,
                                        const std::string& token) const {
  std::string payload;
  AppendField(&payload, absl::StrCat(static_cast<int>(record.state)));
  AppendField(&payload, record.fingerprint);
  AppendField(&payload, token);
  AppendField(&payload, record.state == CreateRecord::State::kCreated
                            ? record.task.SerializeAsString()
                            : std::string());
  AppendField(&payload, record.detail);
  const std::string mac = HmacSha256(
      keys_.signing_key(), absl::StrCat(kMagic, redis_key, std::string(1, '\0'), payload));
  return absl::StrCat(kMagic, mac, payload);
}

absl::StatusOr<CreateRecord> RedisCreateKeyStore::Decode(const std::string& redis_key,
                                                         const std::string& entry,
                                                         std::string* token) const {
  const absl::string_view e(entry);
  if (e.size() < kMagic.size() + kMacBytes || e.substr(0, kMagic.size()) != kMagic ||
      e.size() > kMaxEntryBytes) {
    return absl::DataLossError("fleet create record unsigned or malformed");
  }
  const absl::string_view mac = e.substr(kMagic.size(), kMacBytes);
  absl::string_view payload = e.substr(kMagic.size() + kMacBytes);
  const std::string signed_text =
      absl::StrCat(kMagic, redis_key, std::string(1, '\0'), payload);
  bool ok = false;
  for (const std::string& k : keys_.signing()->accepted()) {
    const std::string want = HmacSha256(k, signed_text);
    if (CRYPTO_memcmp(want.data(), mac.data(), kMacBytes) == 0) {
      ok = true;
      break;
    }
  }
  if (!ok) return absl::PermissionDeniedError("fleet create record signature mismatch");
  std::string state, task;
  CreateRecord r;
  if (!NextField(&payload, &state) || !NextField(&payload, &r.fingerprint) ||
      !NextField(&payload, token) || !NextField(&payload, &task) ||
      !NextField(&payload, &r.detail) || !payload.empty()) {
    return absl::DataLossError("fleet create record unsigned or malformed");
  }
  if (state == "0") {
    r.state = CreateRecord::State::kPending;
  } else if (state == "1") {
    r.state = CreateRecord::State::kCreated;
    if (!r.task.ParseFromString(task) || r.task.id().empty()) {
      return absl::DataLossError("fleet create record unsigned or malformed");
    }
  } else if (state == "2") {
    r.state = CreateRecord::State::kUnknown;
  } else {
    return absl::DataLossError("fleet create record unsigned or malformed");
  }
  return r;
}

absl::Status RedisCreateKeyStore::Unavailable(const absl::Status& why) const {
  return absl::UnavailableError(absl::StrCat(
      "fleet mode keeps request_ids in Redis, which cannot be reached now (", why.message(),
      "); nothing was sent, rather than risk a second create: retry with the same request_id"));
}

absl::StatusOr<RedisReply> RedisCreateKeyStore::Run(const RedisScript& script,
                                                    std::vector<std::string> keys,
                                                    std::vector<std::string> args) {
  absl::StatusOr<RedisReply> reply =
      script.RunAndWait(*client_, std::move(keys), std::move(args));
  if (!reply.ok()) return Unavailable(reply.status());
  if (reply->is_error()) {
    return Unavailable(absl::UnavailableError(absl::StrCat("redis: ", reply->str)));
  }
  return reply;
}

absl::StatusOr<std::optional<CreateRecord>> RedisCreateKeyStore::Interpret(
    const std::string& record_key, const RedisReply& pair) {
  if (pair.type != RedisReply::Type::kArray || pair.elements.size() != 2 ||
      pair.elements[0].type != RedisReply::Type::kString ||
      pair.elements[1].type != RedisReply::Type::kString) {
    return Unavailable(absl::InternalError("unexpected reply"));
  }
  if (pair.elements[0].str.empty()) return std::optional<CreateRecord>();
  std::string token;
  absl::StatusOr<CreateRecord> r = Decode(record_key, pair.elements[0].str, &token);
  if (!r.ok()) {
    if (rejected_ != nullptr) rejected_->Increment();
    LogEvent(LogLevel::kWarning, "fleet_entry_rejected",
             {{"entry", "create"},
              {"reason", std::string(r.status().message())},
              {"action", "create refused (ABORTED); check who else writes to this Redis"}});
    return absl::AbortedError(
        "the fleet's record of this request_id in Redis fails verification (signed with an API "
        "key no longer accepted, by another fleet, or altered), so it may have created a video "
        "already; nothing was sent. Use a new request_id to accept a possible duplicate");
  }
  if (r->state == CreateRecord::State::kPending && pair.elements[1].str != token) {
    r->state = CreateRecord::State::kUnknown;
    r->detail =
        "the sidecar sending it stopped (or lost Redis) before recording the vendor's answer";
  }
  return std::optional<CreateRecord>(*std::move(r));
}

absl::StatusOr<std::optional<CreateRecord>> RedisCreateKeyStore::Claim(
    const std::string& key, const std::string& fingerprint) {
  Held h;
  h.record_key = RecordKey(key);
  h.lease_key = LeaseKey(key);
  h.token = RandomToken();
  h.fingerprint = fingerprint;
  CreateRecord pending;
  pending.state = CreateRecord::State::kPending;
  pending.fingerprint = fingerprint;
  h.pending = Encode(h.record_key, pending, h.token);
  absl::StatusOr<RedisReply> r =
      Run(claim_, {h.record_key, h.lease_key},
          {h.pending, h.token, Ms(options_.ttl), Ms(options_.lease)});
  if (!r.ok()) {
    // The script may have run, or may yet run: undo the claim if it is
    // ours (nothing was sent for it), in the background.
    RetryLater(std::move(h), "", clock_->Monotonic() + options_.late_claim_window);
    return r.status();
  }
  if (r->type == RedisReply::Type::kArray && r->elements.size() == 2 &&
      r->elements[0].type == RedisReply::Type::kString && r->elements[0].str.empty()) {
    absl::MutexLock lock(&mu_);
    held_[key] = std::move(h);
    return std::optional<CreateRecord>();
  }
  return Interpret(h.record_key, *r);
}

absl::Status RedisCreateKeyStore::Record(const std::string& key, CreateRecord outcome) {
  if (outcome.state == CreateRecord::State::kPending) {
    return absl::InvalidArgumentError("Record needs an outcome");
  }
  Held h;
  {
    absl::MutexLock lock(&mu_);
    auto it = held_.find(key);
    if (it == held_.end()) return absl::FailedPreconditionError("Record without a pending claim");
    h = std::move(it->second);
    held_.erase(it);  // no more renewals, whatever happens next
  }
  outcome.fingerprint = h.fingerprint;
  std::string record = Encode(h.record_key, outcome, h.token);
  absl::StatusOr<RedisReply> r;
  if (!Settle(h, record, &r)) {
    RetryLater(std::move(h), std::move(record));
    return r.status();
  }
  if (!r.ok()) return r.status();
  if (r->type != RedisReply::Type::kInteger || r->integer != 1) {
    return absl::FailedPreconditionError("the claim's record changed or expired in Redis");
  }
  return absl::OkStatus();
}

absl::Status RedisCreateKeyStore::Release(const std::string& key) {
  Held h;
  {
    absl::MutexLock lock(&mu_);
    auto it = held_.find(key);
    if (it == held_.end()) return absl::FailedPreconditionError("Release without a pending claim");
    h = std::move(it->second);
    held_.erase(it);
  }
  absl::StatusOr<RedisReply> r;
  if (!Settle(h, "", &r)) {
    RetryLater(std::move(h), "");
    return r.status();
  }
  if (!r.ok()) return r.status();
  if (r->type != RedisReply::Type::kInteger || r->integer != 1) {
    return absl::FailedPreconditionError("the claim's record changed or expired in Redis");
  }
  return absl::OkStatus();
}

absl::StatusOr<std::optional<CreateRecord>> RedisCreateKeyStore::Lookup(const std::string& key) {
  const std::string record_key = RecordKey(key);
  absl::StatusOr<RedisReply> r = Run(lookup_, {record_key, LeaseKey(key)}, {});
  if (!r.ok()) return r.status();
  return Interpret(record_key, *r);
}

absl::StatusOr<std::optional<CreateRecord>> RedisCreateKeyStore::AwaitSettled(
    const std::string& key, absl::Time deadline) {
  while (true) {
    uint64_t seen;
    {
      absl::MutexLock lock(&wake_->mu);
      seen = wake_->version;
    }
    absl::StatusOr<std::optional<CreateRecord>> held = Lookup(key);
    if (!held.ok() || !held->has_value() || (*held)->state != CreateRecord::State::kPending) {
      return held;
    }
    const absl::Duration left = deadline - clock_->Monotonic();
    if (left <= absl::ZeroDuration()) return held;
    Wake* w = wake_.get();
    auto changed = [w, seen]() ABSL_NO_THREAD_SAFETY_ANALYSIS { return w->version != seen; };
    absl::MutexLock lock(&w->mu);
    w->mu.AwaitWithTimeout(absl::Condition(&changed), std::min(left, options_.poll_interval));
  }
}

bool RedisCreateKeyStore::Settle(const Held& h, const std::string& outcome,
                                 absl::StatusOr<RedisReply>* reply) {
  *reply = Run(settle_, {h.record_key, h.lease_key},
               {h.pending, h.token, outcome, Ms(options_.ttl), channel_});
  // An integer: the script ran (settled, or not this claim's any more).
  return reply->ok() && (*reply)->type == RedisReply::Type::kInteger;
}

void RedisCreateKeyStore::RetryLater(Held h, std::string outcome, absl::Time keep_until) {
  absl::MutexLock lock(&mu_);
  if (retries_.size() >= options_.max_retries) retries_.erase(retries_.begin());
  retries_.push_back(
      Retry{std::move(h), std::move(outcome), clock_->Monotonic() + options_.ttl, keep_until});
}

void RedisCreateKeyStore::Loop() {
  while (true) {
    std::vector<std::string> keys;
    std::vector<std::string> args = {Ms(options_.lease), Ms(options_.ttl)};
    std::vector<Retry> retries;
    {
      absl::MutexLock lock(&mu_);
      if (mu_.AwaitWithTimeout(absl::Condition(&stop_), options_.lease / 4)) return;
      if (options_.renew) {
        for (const auto& [id, h] : held_) {
          keys.push_back(h.record_key);
          keys.push_back(h.lease_key);
          args.push_back(h.token);
        }
      }
      retries.swap(retries_);
    }
    if (!keys.empty()) {
      renew_.Run(*client_, std::move(keys), std::move(args), [](absl::StatusOr<RedisReply>) {});
    }
    if (retries.empty()) continue;
    const absl::Time now = clock_->Monotonic();
    std::vector<Retry> again;
    bool reachable = true;
    for (Retry& r : retries) {
      if (now >= r.give_up) continue;
      absl::StatusOr<RedisReply> reply;
      // Once Redis fails, the rest wait for the next turn.
      if (!reachable || !(reachable = Settle(r.held, r.outcome, &reply))) {
        again.push_back(std::move(r));
      } else if (reply->integer == 0 && now < r.keep_until) {
        again.push_back(std::move(r));  // an undo that found no claim (yet)
      }
    }
    absl::MutexLock lock(&mu_);
    for (Retry& r : again) {
      if (retries_.size() >= options_.max_retries) break;
      retries_.push_back(std::move(r));
    }
  }
}

}  // namespace videotask::fleet
