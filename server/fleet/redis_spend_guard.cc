#include "server/fleet/redis_spend_guard.h"

#include <openssl/rand.h>

#include <cstdlib>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"

namespace videotask::fleet {
namespace {

// KEYS[1] the set; ARGV[1] the cap, ARGV[2] a new member, ARGV[3] (tests
// only) the time in us instead of Redis TIME. Returns 1 (taken) or 0 (full).
constexpr char kTake[] = R"lua(
local now
if ARGV[3] then
  now = tonumber(ARGV[3])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%d', now - 3600000000))
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], string.format('%d', now), ARGV[2])
redis.call('PEXPIRE', KEYS[1], 3600000)
return 1
)lua";

std::string RandomMember() {
  unsigned char b[12];
  if (RAND_bytes(b, sizeof b) != 1) abort();
  return absl::BytesToHexString(absl::string_view(reinterpret_cast<const char*>(b), sizeof b));
}

}  // namespace

RedisSpendGuard::RedisSpendGuard(RedisClient* client, const FleetKeys& keys, Options options,
                                 Clock* clock)
    : client_(client),
      key_(absl::StrCat(keys.prefix(), "creates-hour")),
      options_(std::move(options)),
      clock_(clock),
      take_(kTake) {}

absl::StatusOr<std::optional<SpendGuard::Ticket>> RedisSpendGuard::Take() {
  Ticket ticket{clock_->Monotonic(), ""};
  if (options_.max_per_hour <= 0) return std::optional<Ticket>(ticket);
  ticket.id = RandomMember();
  std::vector<std::string> args = {absl::StrCat(options_.max_per_hour), ticket.id};
  if (options_.now_us) args.push_back(absl::StrCat(options_.now_us()));
  absl::StatusOr<RedisReply> r = take_.RunAndWait(*client_, {key_}, std::move(args));
  if (r.ok() && r->type == RedisReply::Type::kInteger) {
    if (r->integer == 1) return std::optional<Ticket>(std::move(ticket));
    return std::optional<Ticket>();
  }
  const std::string why = !r.ok() ? std::string(r.status().message())
                                  : r->is_error() ? r->str : "unexpected reply";
  // The script may have taken the place (a reply lost to a timeout): give
  // it back, in the background.
  GiveBack(ticket);
  return absl::UnavailableError(absl::StrCat(
      "the fleet's spend guard (--max_creates_per_hour) is counted in Redis, which cannot be "
      "reached now (", why, ")"));
}

void RedisSpendGuard::GiveBack(const Ticket& ticket) {
  if (options_.max_per_hour <= 0 || ticket.id.empty()) return;
  client_->Command({"ZREM", key_, ticket.id}, [](absl::StatusOr<RedisReply>) {});
}

}  // namespace videotask::fleet
