#include "server/fleet/redis_rate_budget.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"

namespace videotask::fleet {
namespace {

// KEYS[1] rate key (TAT, us), KEYS[2] pause key.
// ARGV[1] emission interval (us), ARGV[2] burst tolerance (us), ARGV[3]
// (tests only) the time in us instead of Redis TIME.
// Returns {1, 0} granted, or {0, retry_after_us}.
constexpr char kAcquire[] = R"lua(
local pause = redis.call('PTTL', KEYS[2])
if pause > 0 then return {0, pause * 1000} end
local now
if ARGV[3] then
  now = tonumber(ARGV[3])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < now then tat = now end
local wait = tat - tolerance - now
if wait > 0 then return {0, wait} end
local new_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX',
           math.ceil((new_tat - now) / 1000))
return {1, 0}
)lua";

// KEYS[1] pause key; ARGV[1] pause in ms (>= 1). Only extends.
constexpr char kPause[] = R"lua(
local want = tonumber(ARGV[1])
if redis.call('PTTL', KEYS[1]) < want then
  redis.call('SET', KEYS[1], '1', 'PX', want)
  return 1
end
return 0
)lua";

// The emission interval: (1 s + margin) / rate, rounded up, plus 1 us so
// that a closed window of 1 s + margin holds at most `rate` grants.
int64_t IntervalMicros(const RedisRateBudget::Options& o) {
  const double rate = std::clamp(o.rate_per_second, 1e-6, 1e6);
  const double window_us = 1e6 + std::max(absl::ToDoubleMicroseconds(o.arrival_margin), 0.0);
  return static_cast<int64_t>(std::ceil(window_us / rate)) + 1;
}

}  // namespace

RedisRateBudget::RedisRateBudget(RedisClient* client, const FleetKeys& keys, Options options)
    : client_(client),
      rate_key_(keys.RateKey()),
      pause_key_(keys.PauseKey()),
      interval_us_(absl::StrCat(IntervalMicros(options))),
      tolerance_us_(absl::StrCat(IntervalMicros(options) * (std::max(options.burst, 1) - 1))),
      now_us_(options.now_us),
      acquire_(kAcquire),
      pause_(kPause) {}

void RedisRateBudget::Acquire(AcquireDone done) {
  std::vector<std::string> args = {interval_us_, tolerance_us_};
  if (now_us_) args.push_back(absl::StrCat(now_us_()));
  acquire_.Run(*client_, {rate_key_, pause_key_}, std::move(args),
               [done = std::move(done)](absl::StatusOr<RedisReply> r) mutable {
                 if (!r.ok()) {
                   done(r.status());
                   return;
                 }
                 if (r->type != RedisReply::Type::kArray || r->elements.size() != 2 ||
                     r->elements[0].type != RedisReply::Type::kInteger ||
                     r->elements[1].type != RedisReply::Type::kInteger) {
                   done(absl::InternalError(absl::StrCat(
                       "redis rate budget: unexpected reply ", r->is_error() ? r->str : "")));
                   return;
                 }
                 if (r->elements[0].integer == 1) {
                   done(absl::ZeroDuration());
                 } else {
                   done(absl::Microseconds(std::max<int64_t>(r->elements[1].integer, 1)));
                 }
               });
}

void RedisRateBudget::Pause(absl::Duration duration, PauseDone done) {
  const int64_t ms = std::max<int64_t>(1, absl::ToInt64Milliseconds(absl::Ceil(duration, absl::Milliseconds(1))));
  pause_.Run(*client_, {pause_key_}, {absl::StrCat(ms)},
             [done = std::move(done)](absl::StatusOr<RedisReply> r) mutable {
               if (done == nullptr) return;
               if (!r.ok()) {
                 done(r.status());
               } else if (r->is_error()) {
                 done(absl::InternalError(absl::StrCat("redis pause: ", r->str)));
               } else {
                 done(absl::OkStatus());
               }
             });
}

}  // namespace videotask::fleet
