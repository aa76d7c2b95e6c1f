#include "server/fleet/redis_client.h"

#include <arpa/inet.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <netdb.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <random>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace videotask::fleet {
namespace {

// Timers use a monotonic source; instants are durations since its epoch.
absl::Duration MonoNow() {
  return absl::FromChrono(std::chrono::steady_clock::now().time_since_epoch());
}

RedisReply Convert(const redisReply* r) {
  RedisReply out;
  switch (r->type) {
    case REDIS_REPLY_STRING:
      out.type = RedisReply::Type::kString;
      out.str.assign(r->str, r->len);
      break;
    case REDIS_REPLY_STATUS:
      out.type = RedisReply::Type::kStatus;
      out.str.assign(r->str, r->len);
      break;
    case REDIS_REPLY_ERROR:
      out.type = RedisReply::Type::kError;
      out.str.assign(r->str, r->len);
      break;
    case REDIS_REPLY_INTEGER:
      out.type = RedisReply::Type::kInteger;
      out.integer = r->integer;
      break;
    case REDIS_REPLY_ARRAY:
      out.type = RedisReply::Type::kArray;
      out.elements.reserve(r->elements);
      for (size_t i = 0; i < r->elements; ++i) out.elements.push_back(Convert(r->element[i]));
      break;
    default:
      out.type = RedisReply::Type::kNil;
  }
  return out;
}

bool IsNumericAddress(const std::string& host) {
  unsigned char buf[sizeof(in6_addr)];
  return inet_pton(AF_INET, host.c_str(), buf) == 1 || inet_pton(AF_INET6, host.c_str(), buf) == 1;
}

std::string DurationText(absl::Duration d) { return absl::FormatDuration(d); }

// The subscriber connection's keepalive: SUBSCRIBE to a channel nobody
// publishes on. Redis answers a SUBSCRIBE of a channel already subscribed
// again, and hiredis 0.14 routes that answer through its channel table (a
// PING there would take the callback of the next message), so it is a
// round trip that cannot be confused with a message.
constexpr char kKeepaliveChannel[] = "videotask:keepalive";

// An error reply as a fault reason: its first line, printable, bounded.
std::string ErrorText(absl::string_view reply) {
  std::string out;
  for (char ch : reply.substr(0, std::min<size_t>(reply.find('\n'), 120))) {
    out.push_back(ch >= 0x20 && ch < 0x7f ? ch : '?');
  }
  return out;
}

}  // namespace

struct RedisClient::Conn {
  enum class State { kBackoff, kResolving, kConnecting, kHandshake, kReady };
  RedisClient* client = nullptr;
  bool is_sub = false;
  State state = State::kBackoff;
  redisAsyncContext* ac = nullptr;
  bool want_read = false;
  bool want_write = false;
  uint64_t generation = 0;
  absl::Duration retry_at;          // kBackoff
  absl::Duration attempt_deadline;  // kResolving .. kHandshake
  absl::Duration backoff;
  uint64_t resolve_seq = 0;  // kResolving: waits for a result newer than this
  int attempts = 0;
  int outstanding = 0;  // commands sent and not answered, this connection
  absl::Duration last_progress;
  int handshake_left = 0;
  absl::Duration ready_since;     // kReady: when it got there
  absl::Duration fault_backoff;   // the next reconnect wait after a fault
  bool keepalive_sent = false;    // subscriber: awaiting its answer
  absl::Duration keepalive_at;

  // hiredis' event hooks: the client's poll() loop watches what they ask for.
  static void AddRead(void* p) { static_cast<Conn*>(p)->want_read = true; }
  static void DelRead(void* p) { static_cast<Conn*>(p)->want_read = false; }
  static void AddWrite(void* p) { static_cast<Conn*>(p)->want_write = true; }
  static void DelWrite(void* p) { static_cast<Conn*>(p)->want_write = false; }
  static void Cleanup(void* p) {
    auto* c = static_cast<Conn*>(p);
    c->want_read = false;
    c->want_write = false;
  }
};

struct RedisClient::Resolver {
  absl::Mutex mu;
  std::string host;
  int wake_fd = -1;  // a dup of the client's eventfd, closed by the thread
  bool requested ABSL_GUARDED_BY(mu) = false;
  bool stop ABSL_GUARDED_BY(mu) = false;
  uint64_t seq ABSL_GUARDED_BY(mu) = 0;
  absl::StatusOr<std::vector<std::string>> result ABSL_GUARDED_BY(mu);

  bool Wanted() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return requested || stop; }

  static void Run(std::shared_ptr<Resolver> self) {
    while (true) {
      {
        absl::MutexLock lock(&self->mu);
        self->mu.Await(absl::Condition(self.get(), &Resolver::Wanted));
        if (self->stop) break;
        self->requested = false;
      }
      addrinfo hints{};
      hints.ai_family = AF_UNSPEC;
      hints.ai_socktype = SOCK_STREAM;
      addrinfo* res = nullptr;
      const int rc = getaddrinfo(self->host.c_str(), nullptr, &hints, &res);
      absl::StatusOr<std::vector<std::string>> out;
      if (rc != 0) {
        out = absl::UnavailableError(
            absl::StrCat("redis: cannot resolve ", self->host, ": ", gai_strerror(rc)));
      } else {
        std::vector<std::string> addrs;
        for (addrinfo* a = res; a != nullptr; a = a->ai_next) {
          char text[INET6_ADDRSTRLEN] = {0};
          const void* src = a->ai_family == AF_INET
                                ? static_cast<const void*>(&reinterpret_cast<sockaddr_in*>(a->ai_addr)->sin_addr)
                                : static_cast<const void*>(&reinterpret_cast<sockaddr_in6*>(a->ai_addr)->sin6_addr);
          if (inet_ntop(a->ai_family, src, text, sizeof(text)) != nullptr &&
              std::find(addrs.begin(), addrs.end(), text) == addrs.end()) {
            addrs.push_back(text);
          }
        }
        freeaddrinfo(res);
        // IPv4 first: a Redis bound to 0.0.0.0 does not answer on ::1.
        std::stable_partition(addrs.begin(), addrs.end(),
                              [](const std::string& a) { return a.find(':') == std::string::npos; });
        out = std::move(addrs);
      }
      {
        absl::MutexLock lock(&self->mu);
        self->result = std::move(out);
        ++self->seq;
        if (self->stop) break;
      }
      const uint64_t one = 1;
      (void)!write(self->wake_fd, &one, sizeof(one));
    }
    close(self->wake_fd);
  }
};

RedisClient::RedisClient(RedisClientOptions options) : options_(std::move(options)) {
  wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  cmd_ = std::make_unique<Conn>();
  sub_ = std::make_unique<Conn>();
  for (Conn* c : {cmd_.get(), sub_.get()}) {
    c->client = this;
    c->backoff = options_.min_backoff;
    c->fault_backoff = options_.min_backoff;
  }
  sub_->is_sub = true;
  if (options_.url.kind == RedisUrl::Kind::kTcp && !IsNumericAddress(options_.url.host)) {
    resolver_ = std::make_shared<Resolver>();
    resolver_->host = options_.url.host;
    resolver_->wake_fd = dup(wake_fd_);
    std::thread(Resolver::Run, resolver_).detach();
  }
  thread_ = std::thread([this] { Loop(); });
}

RedisClient::~RedisClient() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  Wake();
  thread_.join();
  if (resolver_ != nullptr) {
    absl::MutexLock lock(&resolver_->mu);
    resolver_->stop = true;
  }
  close(wake_fd_);
}

void RedisClient::Wake() {
  const uint64_t one = 1;
  (void)!write(wake_fd_, &one, sizeof(one));
}

void RedisClient::Command(std::vector<std::string> argv, Done done) {
  Command(std::move(argv), options_.command_timeout, std::move(done));
}

void RedisClient::Command(std::vector<std::string> argv, absl::Duration timeout, Done done) {
  const absl::Duration deadline = MonoNow() + std::max(timeout, absl::ZeroDuration());
  bool was_empty;
  {
    absl::MutexLock lock(&mu_);
    was_empty = queue_.empty();
    queue_.push_back(Queued{std::move(argv), std::move(done), deadline});
  }
  if (was_empty) Wake();
}

void RedisClient::Subscribe(std::string channel, MessageFn on_message, SubscribedFn on_subscribed) {
  {
    absl::MutexLock lock(&mu_);
    new_channels_.emplace_back(std::move(channel),
                               Channel{std::move(on_message), std::move(on_subscribed)});
  }
  Wake();
}

bool RedisClient::up() const {
  absl::MutexLock lock(&mu_);
  return up_;
}

bool RedisClient::WaitUntilUp(absl::Duration timeout) const {
  absl::MutexLock lock(&mu_);
  return mu_.AwaitWithTimeout(absl::Condition(&up_), timeout);
}

absl::Status RedisClient::last_error() const {
  absl::MutexLock lock(&mu_);
  return up_ ? absl::OkStatus() : last_error_;
}

RedisClient::Stats RedisClient::stats() const {
  absl::MutexLock lock(&mu_);
  return stats_;
}

void RedisClient::SetUp(bool up, const absl::Status& why) {
  bool notify;
  {
    absl::MutexLock lock(&mu_);
    notify = up_ != up || (!up && !reported_first_failure_);
    up_ = up;
    if (!up) last_error_ = why;
  }
  if (!up) reported_first_failure_ = true;
  if (notify && options_.on_state) options_.on_state(up, why);
}

void RedisClient::Complete(uint64_t id, absl::StatusOr<RedisReply> r) {
  auto it = pending_.find(id);
  if (it == pending_.end()) return;  // already timed out
  Done done = std::move(it->second.done);
  deadlines_.erase({it->second.deadline, id});
  pending_.erase(it);
  done(std::move(r));
}

void RedisClient::OnReply(redisAsyncContext* ac, void* reply, void* privdata) {
  auto* c = static_cast<Conn*>(ac->data);
  RedisClient* self = c->client;
  const uint64_t id = reinterpret_cast<uintptr_t>(privdata);
  if (c->ac == ac) {
    if (c->outstanding > 0) --c->outstanding;
    if (reply != nullptr) c->last_progress = MonoNow();
  }
  if (reply == nullptr) {
    self->Complete(id, self->stopping_ ? absl::CancelledError("redis client destroyed")
                                       : absl::UnavailableError("redis: connection lost"));
    return;
  }
  RedisReply converted = Convert(static_cast<redisReply*>(reply));
  // Handshake errors are the handshake's to judge; NOSCRIPT is RedisScript's.
  const bool fault = c->ac == ac && c->state == Conn::State::kReady && converted.is_error() &&
                     self->options_.error_reply_is_fault &&
                     !absl::StartsWith(converted.str, "NOSCRIPT");
  // The fault first, so that the caller already sees up() false.
  if (fault) {
    self->Faulted(RedisClientOptions::Fault::kErrorReply,
                  absl::UnavailableError(absl::StrCat("redis: error reply: ", ErrorText(converted.str))));
  }
  self->Complete(id, std::move(converted));
}

void RedisClient::Faulted(RedisClientOptions::Fault kind, absl::Status why) {
  Conn& c = *cmd_;
  if (c.state != Conn::State::kReady || stopping_) return;
  {
    absl::MutexLock lock(&mu_);
    ++stats_.faults;
  }
  if (options_.on_fault) options_.on_fault(kind, why);
  const absl::Duration now = MonoNow();
  // Faults that recur soon after a reconnect back off further; a fault
  // after a long good stretch starts again from min_backoff.
  if (now - c.ready_since > options_.max_fault_backoff) c.fault_backoff = options_.min_backoff;
  const absl::Duration hold = c.fault_backoff;
  c.fault_backoff = std::min(c.fault_backoff * 2, options_.max_fault_backoff);
  Fail(c, std::move(why));
  c.retry_at = now + hold;
}

void RedisClient::OnSubReply(redisAsyncContext* ac, void* reply, void* /*privdata*/) {
  auto* c = static_cast<Conn*>(ac->data);
  RedisClient* self = c->client;
  if (reply == nullptr || c->ac != ac) return;
  c->last_progress = MonoNow();
  c->keepalive_sent = false;
  const auto* r = static_cast<redisReply*>(reply);
  if (r->type != REDIS_REPLY_ARRAY || r->elements < 3) return;
  const redisReply* kind = r->element[0];
  const redisReply* chan = r->element[1];
  if (kind->type != REDIS_REPLY_STRING || chan->type != REDIS_REPLY_STRING) return;
  const std::string type = absl::AsciiStrToLower(absl::string_view(kind->str, kind->len));
  const std::string channel(chan->str, chan->len);
  auto it = self->channels_.find(channel);
  if (it == self->channels_.end()) return;
  if (type == "message" && r->element[2]->type == REDIS_REPLY_STRING) {
    if (it->second.on_message) {
      it->second.on_message(channel, std::string(r->element[2]->str, r->element[2]->len));
    }
  } else if (type == "subscribe") {
    if (it->second.on_subscribed) it->second.on_subscribed(channel);
  }
}

void RedisClient::OnConnect(const redisAsyncContext* ac, int status) {
  auto* c = static_cast<Conn*>(ac->data);
  if (c->ac != ac) return;
  if (status != REDIS_OK) {
    const std::string err = ac->c.errstr;
    c->ac = nullptr;  // hiredis frees it after this callback
    c->client->Fail(*c, absl::UnavailableError(absl::StrCat(
                            "redis: cannot connect to ", c->client->options_.url.Redacted(), ": ", err)));
    return;
  }
  c->client->OnConnected(*c);
}

void RedisClient::OnDisconnect(const redisAsyncContext* ac, int /*status*/) {
  auto* c = static_cast<Conn*>(ac->data);
  if (c->ac != ac) return;  // we dropped it ourselves
  const std::string err = ac->err != 0 ? std::string(ac->c.errstr) : "closed by the server";
  c->ac = nullptr;  // hiredis frees it after this callback
  c->client->Fail(*c, absl::UnavailableError(absl::StrCat("redis: connection lost: ", err)));
}

void RedisClient::Fail(Conn& c, absl::Status why) {
  const bool was_ready = c.state == Conn::State::kReady;
  ++c.generation;
  c.state = Conn::State::kBackoff;
  c.outstanding = 0;
  if (redisAsyncContext* ac = c.ac; ac != nullptr) {
    c.ac = nullptr;
    redisAsyncFree(ac);  // fails its callbacks with a null reply (deferred when inside one)
  }
  c.want_read = c.want_write = false;
  static thread_local std::minstd_rand rng(
      static_cast<unsigned>(std::chrono::steady_clock::now().time_since_epoch().count()));
  const double jitter = std::uniform_real_distribution<double>(0.8, 1.2)(rng);
  // A connection that was up retries at once (a restart is usually quick).
  const absl::Duration wait = was_ready ? absl::ZeroDuration() : c.backoff * jitter;
  c.retry_at = MonoNow() + wait;
  if (!was_ready) c.backoff = std::min(c.backoff * 2, options_.max_backoff);
  ++c.attempts;
  if (!c.is_sub && !stopping_) SetUp(false, why);
}

void RedisClient::StartConnect(Conn& c, absl::Duration now) {
  ++c.generation;
  c.attempt_deadline = now + options_.connect_timeout;
  if (options_.url.kind == RedisUrl::Kind::kUnix || resolver_ == nullptr) {
    ConnectTo(c, options_.url.host);
    return;
  }
  c.state = Conn::State::kResolving;
  absl::MutexLock lock(&resolver_->mu);
  c.resolve_seq = resolver_->seq;
  resolver_->requested = true;
}

void RedisClient::ConnectTo(Conn& c, const std::string& address) {
  redisAsyncContext* ac = options_.url.kind == RedisUrl::Kind::kUnix
                              ? redisAsyncConnectUnix(options_.url.unix_path.c_str())
                              : redisAsyncConnect(address.c_str(), options_.url.port);
  if (ac == nullptr) {
    Fail(c, absl::ResourceExhaustedError("redis: out of memory"));
    return;
  }
  if (ac->err != 0) {
    const std::string err = ac->c.errstr;
    redisAsyncFree(ac);
    Fail(c, absl::UnavailableError(
                absl::StrCat("redis: cannot connect to ", options_.url.Redacted(), ": ", err)));
    return;
  }
  ac->data = &c;
  ac->ev.data = &c;
  ac->ev.addRead = Conn::AddRead;
  ac->ev.delRead = Conn::DelRead;
  ac->ev.addWrite = Conn::AddWrite;
  ac->ev.delWrite = Conn::DelWrite;
  ac->ev.cleanup = Conn::Cleanup;
  c.ac = ac;
  c.state = Conn::State::kConnecting;
  redisAsyncSetDisconnectCallback(ac, OnDisconnect);
  redisAsyncSetConnectCallback(ac, OnConnect);  // asks for the first write event
}

void RedisClient::OnConnected(Conn& c) {
  c.state = Conn::State::kHandshake;
  std::vector<std::vector<std::string>> steps;
  std::string password = options_.password ? options_.password() : "";
  if (password.empty()) password = options_.url.password;
  if (!password.empty()) {
    if (options_.url.username.empty()) {
      steps.push_back({"AUTH", password});
    } else {
      steps.push_back({"AUTH", options_.url.username, password});
    }
  }
  if (options_.url.db != 0) steps.push_back({"SELECT", absl::StrCat(options_.url.db)});
  if (!c.is_sub && !options_.probe.empty()) steps.push_back(options_.probe);
  steps.push_back({"PING"});
  c.handshake_left = static_cast<int>(steps.size());
  const uint64_t generation = c.generation;
  for (auto& argv : steps) {
    Send(c, std::move(argv),
         [this, &c, generation](absl::StatusOr<RedisReply> r) {
           HandshakeStep(c, generation, std::move(r));
         },
         c.attempt_deadline);
  }
}

void RedisClient::HandshakeStep(Conn& c, uint64_t generation, absl::StatusOr<RedisReply> r) {
  if (generation != c.generation || c.state != Conn::State::kHandshake) return;
  if (!r.ok()) {
    Fail(c, absl::UnavailableError(absl::StrCat(
                "redis: ", options_.url.Redacted(), " did not complete AUTH/SELECT/PING within ",
                DurationText(options_.connect_timeout), ": ", r.status().message())));
    return;
  }
  if (r->is_error()) {
    // Redis' error texts (WRONGPASS, NOAUTH, ERR DB index, READONLY and
    // OOM for the probe) never echo the password.
    Fail(c, absl::UnavailableError(absl::StrCat("redis: ", options_.url.Redacted(),
                                                " refused the connection: ", ErrorText(r->str))));
    return;
  }
  if (--c.handshake_left == 0) SetReady(c);
}

void RedisClient::SetReady(Conn& c) {
  c.state = Conn::State::kReady;
  c.backoff = options_.min_backoff;
  c.attempts = 0;
  c.last_progress = MonoNow();
  c.ready_since = c.last_progress;
  c.keepalive_sent = false;
  if (!c.is_sub) {
    {
      absl::MutexLock lock(&mu_);
      ++stats_.connects;
    }
    SetUp(true, absl::OkStatus());
    return;
  }
  {
    absl::MutexLock lock(&mu_);
    ++stats_.subscribes;
  }
  for (const auto& [channel, cb] : channels_) SubscribeOn(c, channel);
}

void RedisClient::SubscribeOn(Conn& c, const std::string& channel) {
  const char* argv[] = {"SUBSCRIBE", channel.data()};
  const size_t lens[] = {9, channel.size()};
  if (redisAsyncCommandArgv(c.ac, OnSubReply, nullptr, 2, argv, lens) != REDIS_OK) {
    Fail(c, absl::UnavailableError("redis: cannot send SUBSCRIBE"));
  }
}

void RedisClient::Send(Conn& c, std::vector<std::string> argv, Done done, absl::Duration deadline) {
  const uint64_t id = next_id_++;
  pending_.emplace(id, Pending{std::move(done), deadline});
  deadlines_.insert({deadline, id});
  if (c.ac == nullptr) {  // dropped by an earlier step of this batch
    Complete(id, absl::UnavailableError("redis: connection lost"));
    return;
  }
  std::vector<const char*> ptrs;
  std::vector<size_t> lens;
  ptrs.reserve(argv.size());
  lens.reserve(argv.size());
  for (const std::string& a : argv) {
    ptrs.push_back(a.data());
    lens.push_back(a.size());
  }
  if (redisAsyncCommandArgv(c.ac, OnReply, reinterpret_cast<void*>(static_cast<uintptr_t>(id)),
                            static_cast<int>(argv.size()), ptrs.data(), lens.data()) != REDIS_OK) {
    Complete(id, absl::UnavailableError("redis: connection is closing"));
    return;
  }
  if (c.outstanding++ == 0) c.last_progress = MonoNow();
}

void RedisClient::DrainQueue(absl::Duration now) {
  std::vector<Queued> queue;
  std::vector<std::pair<std::string, Channel>> channels;
  {
    absl::MutexLock lock(&mu_);
    queue.swap(queue_);
    channels.swap(new_channels_);
    if (stop_) stopping_ = true;
  }
  for (auto& [name, cb] : channels) {
    const bool is_new = channels_.find(name) == channels_.end();
    channels_[name] = std::move(cb);
    if (is_new && sub_->state == Conn::State::kReady) SubscribeOn(*sub_, name);
  }
  int64_t sent = 0;
  std::vector<Done> late;
  for (Queued& q : queue) {
    if (stopping_) {
      q.done(absl::CancelledError("redis client destroyed"));
    } else if (q.argv.empty()) {
      q.done(absl::InvalidArgumentError("redis: empty command"));
    } else if (q.deadline <= now) {
      late.push_back(std::move(q.done));  // answered below, after the fault
    } else if (cmd_->state != Conn::State::kReady) {
      absl::Status why;
      {
        absl::MutexLock lock(&mu_);
        why = last_error_;
      }
      q.done(absl::UnavailableError(absl::StrCat("redis is down: ", why.message())));
    } else {
      Send(*cmd_, std::move(q.argv), std::move(q.done), q.deadline);
      ++sent;
    }
  }
  if (sent > 0 || !late.empty()) {
    absl::MutexLock lock(&mu_);
    stats_.commands += sent;
    stats_.timeouts += static_cast<int64_t>(late.size());
  }
  if (!late.empty()) {
    Faulted(RedisClientOptions::Fault::kTimeout,
            absl::UnavailableError(absl::StrCat("redis: ", late.size(),
                                                " command(s) timed out before they were sent")));
    for (Done& done : late) {
      done(absl::DeadlineExceededError("redis: command timed out before it was sent"));
    }
  }
}

void RedisClient::CheckSubscriber(Conn& c, absl::Duration now) {
  if (c.keepalive_sent) {
    if (now - c.keepalive_at > options_.stall_timeout) {
      Fail(c, absl::UnavailableError(absl::StrCat(
                  "redis: the subscriber connection did not answer a keepalive within ",
                  DurationText(options_.stall_timeout), ", reconnecting")));
    }
    return;
  }
  if (now - c.last_progress < options_.keepalive_interval) return;
  const char* argv[] = {"SUBSCRIBE", kKeepaliveChannel};
  const size_t lens[] = {9, sizeof(kKeepaliveChannel) - 1};
  if (redisAsyncCommandArgv(c.ac, OnSubReply, nullptr, 2, argv, lens) != REDIS_OK) {
    Fail(c, absl::UnavailableError("redis: cannot send the subscriber keepalive"));
    return;
  }
  c.keepalive_sent = true;
  c.keepalive_at = now;
}

void RedisClient::ExpireDeadlines(absl::Duration now) {
  std::vector<Done> expired;
  while (!deadlines_.empty() && deadlines_.begin()->first <= now) {
    const uint64_t id = deadlines_.begin()->second;
    deadlines_.erase(deadlines_.begin());
    auto it = pending_.find(id);
    expired.push_back(std::move(it->second.done));
    pending_.erase(it);
  }
  if (expired.empty()) return;
  {
    absl::MutexLock lock(&mu_);
    stats_.timeouts += static_cast<int64_t>(expired.size());
  }
  // A fault (unless these were the handshake's, which fails by itself),
  // before the callers hear of it: they see up() false.
  Faulted(RedisClientOptions::Fault::kTimeout,
          absl::UnavailableError(absl::StrCat("redis: ", expired.size(),
                                              " command(s) got no reply within ",
                                              DurationText(options_.command_timeout))));
  for (Done& done : expired) done(absl::DeadlineExceededError("redis: no reply in time"));
}

void RedisClient::Loop() {
  while (true) {
    absl::Duration now = MonoNow();
    DrainQueue(now);
    if (stopping_) break;
    ExpireDeadlines(now);

    // Connection state machines.
    for (Conn* c : {cmd_.get(), sub_.get()}) {
      if (c->is_sub && channels_.empty()) continue;
      switch (c->state) {
        case Conn::State::kBackoff:
          if (now >= c->retry_at) StartConnect(*c, now);
          break;
        case Conn::State::kResolving: {
          bool have = false;
          absl::StatusOr<std::vector<std::string>> addrs;
          {
            absl::MutexLock lock(&resolver_->mu);
            if (resolver_->seq > c->resolve_seq) {
              have = true;
              addrs = resolver_->result;
            }
          }
          if (have) {
            if (!addrs.ok()) {
              Fail(*c, addrs.status());
            } else if (addrs->empty()) {
              Fail(*c, absl::UnavailableError(
                           absl::StrCat("redis: ", options_.url.host, " has no address")));
            } else {
              ConnectTo(*c, (*addrs)[c->attempts % addrs->size()]);
            }
          } else if (now >= c->attempt_deadline) {
            Fail(*c, absl::UnavailableError(absl::StrCat("redis: resolving ", options_.url.host,
                                                         " timed out")));
          }
          break;
        }
        case Conn::State::kConnecting:
          if (now >= c->attempt_deadline) {
            Fail(*c, absl::UnavailableError(absl::StrCat(
                         "redis: connecting to ", options_.url.Redacted(), " timed out after ",
                         DurationText(options_.connect_timeout))));
          }
          break;
        case Conn::State::kHandshake:
          break;  // bounded by the handshake commands' deadlines
        case Conn::State::kReady:
          if (c->is_sub) {
            CheckSubscriber(*c, now);
          } else if (c->outstanding > 0 && now - c->last_progress > options_.stall_timeout) {
            const absl::Status why = absl::UnavailableError(absl::StrCat(
                "redis: no reply for ", DurationText(options_.stall_timeout), ", reconnecting"));
            Fail(*c, why);
            if (sub_->state != Conn::State::kBackoff) Fail(*sub_, why);
          }
          break;
      }
    }

    // Next timer.
    absl::Duration next = now + absl::Seconds(1);
    if (!deadlines_.empty()) next = std::min(next, deadlines_.begin()->first);
    for (Conn* c : {cmd_.get(), sub_.get()}) {
      if (c->is_sub && channels_.empty()) continue;
      switch (c->state) {
        case Conn::State::kBackoff:
          next = std::min(next, c->retry_at);
          break;
        case Conn::State::kResolving:
        case Conn::State::kConnecting:
          next = std::min(next, c->attempt_deadline);
          break;
        case Conn::State::kReady:
          if (c->is_sub) {
            next = std::min(next, c->keepalive_sent
                                      ? c->keepalive_at + options_.stall_timeout + absl::Milliseconds(1)
                                      : c->last_progress + options_.keepalive_interval);
          } else if (c->outstanding > 0) {
            next = std::min(next, c->last_progress + options_.stall_timeout + absl::Milliseconds(1));
          }
          break;
        default:
          break;
      }
    }
    now = MonoNow();
    const int timeout_ms =
        next <= now ? 0
                    : static_cast<int>(std::ceil(absl::FDivDuration(next - now, absl::Milliseconds(1))));

    pollfd fds[3];
    int n = 0;
    fds[n++] = {wake_fd_, POLLIN, 0};
    Conn* polled[2] = {nullptr, nullptr};
    for (Conn* c : {cmd_.get(), sub_.get()}) {
      if (c->ac == nullptr || (!c->want_read && !c->want_write)) continue;
      short events = 0;
      if (c->want_read) events |= POLLIN;
      if (c->want_write) events |= POLLOUT;
      polled[n - 1] = c;
      fds[n++] = {c->ac->c.fd, events, 0};
    }
    const int rc = poll(fds, n, timeout_ms);
    if (rc <= 0) continue;
    if (fds[0].revents != 0) {
      uint64_t v;
      (void)!read(wake_fd_, &v, sizeof(v));
    }
    for (int i = 1; i < n; ++i) {
      Conn* c = polled[i - 1];
      redisAsyncContext* ac = c->ac;
      const short ev = fds[i].revents;
      if (ac == nullptr || ev == 0) continue;
      if ((ev & (POLLIN | POLLHUP | POLLERR)) != 0 && c->want_read) redisAsyncHandleRead(ac);
      if (c->ac == ac && (ev & (POLLOUT | POLLHUP | POLLERR)) != 0 && c->want_write) {
        redisAsyncHandleWrite(ac);
      }
    }
  }

  // Shutdown: everything still pending ends with CANCELLED.
  for (Conn* c : {cmd_.get(), sub_.get()}) {
    if (redisAsyncContext* ac = c->ac; ac != nullptr) {
      c->ac = nullptr;
      redisAsyncFree(ac);
    }
  }
  while (!pending_.empty()) {
    Complete(pending_.begin()->first, absl::CancelledError("redis client destroyed"));
  }
  // Callbacks may have queued more commands: cancel until none is left.
  while (true) {
    std::vector<Queued> queue;
    {
      absl::MutexLock lock(&mu_);
      queue.swap(queue_);
    }
    if (queue.empty()) break;
    for (Queued& q : queue) q.done(absl::CancelledError("redis client destroyed"));
  }
}

}  // namespace videotask::fleet
