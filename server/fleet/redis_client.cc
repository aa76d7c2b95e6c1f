#include "server/fleet/redis_client.h"

#include <arpa/inet.h>
#include <hiredis/hiredis.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
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

  // The link (kConnecting .. kReady): a non-blocking socket, TLS over it for
  // rediss://, and hiredis' protocol reader. The client's poll() loop does
  // all I/O.
  int fd = -1;
  std::unique_ptr<TlsSession> tls;
  redisReader* reader = nullptr;
  bool tcp_connecting = false;   // connect() in progress
  bool tls_handshaking = false;  // after connect(), before OnConnected
  TlsSession::Want tls_want = TlsSession::Want::kNothing;  // the handshake's
  bool read_wants_write = false;  // TLS: a read waits for a writable socket
  bool write_wants_read = false;  // TLS: a write waits for a readable one
  std::string out;                // formatted commands not yet written
  size_t out_pos = 0;
  std::deque<uint64_t> awaiting;  // ids of the commands sent, in order
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
  if (options_.url.tls) {
    tls_ = options_.tls;
    if (tls_ == nullptr) {
      absl::StatusOr<std::unique_ptr<RedisTlsContext>> ctx = RedisTlsContext::Create({});
      if (ctx.ok()) {
        tls_ = std::move(*ctx);
      } else {
        tls_error_ = ctx.status();
      }
    }
  }
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
  if (up) {
    // on_state(true) before up() turns true, so that WaitUntilUp() returns
    // after it ran (only this thread changes up_).
    bool notify;
    {
      absl::MutexLock lock(&mu_);
      notify = !up_;
    }
    if (notify && options_.on_state) options_.on_state(true, why);
    absl::MutexLock lock(&mu_);
    up_ = true;
    return;
  }
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

void RedisClient::OnReply(Conn& c, uint64_t id, const redisReply* reply) {
  if (c.outstanding > 0) --c.outstanding;
  c.last_progress = MonoNow();
  RedisReply converted = Convert(reply);
  // Handshake errors are the handshake's to judge; NOSCRIPT is RedisScript's.
  const bool fault = !c.is_sub && c.state == Conn::State::kReady && converted.is_error() &&
                     options_.error_reply_is_fault && !absl::StartsWith(converted.str, "NOSCRIPT");
  // The fault first, so that the caller already sees up() false.
  if (fault) {
    Faulted(RedisClientOptions::Fault::kErrorReply,
            absl::UnavailableError(absl::StrCat("redis: error reply: ", ErrorText(converted.str))));
  }
  Complete(id, std::move(converted));
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

void RedisClient::OnSubReply(Conn& c, const redisReply* r) {
  c.last_progress = MonoNow();
  c.keepalive_sent = false;
  if (r->type != REDIS_REPLY_ARRAY || r->elements < 3) return;
  const redisReply* kind = r->element[0];
  const redisReply* chan = r->element[1];
  if (kind->type != REDIS_REPLY_STRING || chan->type != REDIS_REPLY_STRING) return;
  const std::string type = absl::AsciiStrToLower(absl::string_view(kind->str, kind->len));
  const std::string channel(chan->str, chan->len);
  auto it = channels_.find(channel);
  if (it == channels_.end()) return;
  if (type == "message" && r->element[2]->type == REDIS_REPLY_STRING) {
    if (it->second.on_message) {
      it->second.on_message(channel, std::string(r->element[2]->str, r->element[2]->len));
    }
  } else if (type == "subscribe") {
    if (it->second.on_subscribed) it->second.on_subscribed(channel);
  }
}

std::deque<uint64_t> RedisClient::CloseLink(Conn& c) {
  if (c.fd >= 0) {
    c.tls.reset();  // no close_notify: the peer may be gone or stalled
    close(c.fd);
    c.fd = -1;
  }
  if (c.reader != nullptr) {
    redisReaderFree(c.reader);
    c.reader = nullptr;
  }
  c.tcp_connecting = c.tls_handshaking = false;
  c.read_wants_write = c.write_wants_read = false;
  c.tls_want = TlsSession::Want::kNothing;
  c.out.clear();
  c.out_pos = 0;
  std::deque<uint64_t> lost;
  lost.swap(c.awaiting);
  return lost;
}

void RedisClient::Lost(Conn& c, absl::string_view why) {
  Fail(c, absl::UnavailableError(
              absl::StrCat("redis: connection to ", options_.url.Redacted(), " lost: ", why)));
}

void RedisClient::Fail(Conn& c, absl::Status why) {
  const bool was_ready = c.state == Conn::State::kReady;
  ++c.generation;
  c.state = Conn::State::kBackoff;
  c.outstanding = 0;
  const std::deque<uint64_t> lost = CloseLink(c);
  static thread_local std::minstd_rand rng(
      static_cast<unsigned>(std::chrono::steady_clock::now().time_since_epoch().count()));
  const double jitter = std::uniform_real_distribution<double>(0.8, 1.2)(rng);
  // A connection that was up retries at once (a restart is usually quick).
  const absl::Duration wait = was_ready ? absl::ZeroDuration() : c.backoff * jitter;
  c.retry_at = MonoNow() + wait;
  if (!was_ready) c.backoff = std::min(c.backoff * 2, options_.max_backoff);
  ++c.attempts;
  if (!c.is_sub && !stopping_) SetUp(false, why);
  // The commands in flight on it, after up() went false.
  for (uint64_t id : lost) {
    Complete(id, stopping_ ? absl::CancelledError("redis client destroyed")
                           : absl::UnavailableError("redis: connection lost"));
  }
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
  const std::string target = options_.url.Redacted();
  int fd = -1;
  int rc = -1;
  if (options_.url.kind == RedisUrl::Kind::kUnix) {
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    std::strncpy(sa.sun_path, options_.url.unix_path.c_str(), sizeof(sa.sun_path) - 1);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd >= 0) rc = connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa));
  } else {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
    addrinfo* res = nullptr;
    if (getaddrinfo(address.c_str(), absl::StrCat(options_.url.port).c_str(), &hints, &res) != 0 ||
        res == nullptr) {
      Fail(c, absl::UnavailableError(absl::StrCat("redis: cannot connect to ", target,
                                                  ": bad address ", address)));
      return;
    }
    fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd >= 0) {
      const int one = 1;
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
      rc = connect(fd, res->ai_addr, res->ai_addrlen);
    }
    freeaddrinfo(res);
  }
  if (fd < 0 || (rc != 0 && errno != EINPROGRESS)) {
    const std::string err = std::strerror(errno);
    if (fd >= 0) close(fd);
    Fail(c, absl::UnavailableError(absl::StrCat("redis: cannot connect to ", target, ": ", err)));
    return;
  }
  c.fd = fd;
  c.reader = redisReaderCreate();
  c.state = Conn::State::kConnecting;
  c.tcp_connecting = rc != 0;
  if (!c.tcp_connecting) OnSocketConnected(c);
}

void RedisClient::OnSocketConnected(Conn& c) {
  c.tcp_connecting = false;
  if (!options_.url.tls) {
    OnConnected(c);
    return;
  }
  absl::StatusOr<std::unique_ptr<TlsSession>> session =
      tls_ == nullptr ? absl::StatusOr<std::unique_ptr<TlsSession>>(tls_error_)
                      : tls_->NewSession(c.fd, options_.url.host);
  if (!session.ok()) {
    Fail(c, absl::UnavailableError(
                absl::StrCat("redis: ", options_.url.Redacted(), ": ", session.status().message())));
    return;
  }
  c.tls = *std::move(session);
  c.tls_handshaking = true;
  StepTlsHandshake(c);
}

void RedisClient::StepTlsHandshake(Conn& c) {
  bool done = false;
  const absl::Status s = c.tls->Handshake(&done, &c.tls_want);
  if (!s.ok()) {
    Fail(c, absl::UnavailableError(
                absl::StrCat("redis: ", options_.url.Redacted(), ": ", s.message())));
    return;
  }
  if (!done) return;
  c.tls_handshaking = false;
  OnConnected(c);
}

void RedisClient::HandleIo(Conn& c, short revents) {
  if (c.tcp_connecting) {
    if ((revents & (POLLOUT | POLLERR | POLLHUP)) == 0) return;
    int err = 0;
    socklen_t len = sizeof(err);
    if (getsockopt(c.fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
    if (err != 0) {
      Fail(c, absl::UnavailableError(absl::StrCat("redis: cannot connect to ",
                                                  options_.url.Redacted(), ": ", std::strerror(err))));
      return;
    }
    OnSocketConnected(c);
    return;
  }
  if (c.tls_handshaking) {
    StepTlsHandshake(c);
    return;
  }
  const uint64_t generation = c.generation;
  if ((revents & (POLLIN | POLLHUP | POLLERR)) != 0 ||
      (c.read_wants_write && (revents & POLLOUT) != 0)) {
    HandleRead(c);
    if (c.generation != generation) return;
  }
  if (c.out_pos < c.out.size() &&
      ((revents & POLLOUT) != 0 || (c.write_wants_read && (revents & POLLIN) != 0))) {
    HandleWrite(c);
  }
}

void RedisClient::HandleRead(Conn& c) {
  const uint64_t generation = c.generation;
  char buf[16384];
  while (true) {
    size_t n = 0;
    if (c.tls != nullptr) {
      TlsSession::Want want;
      absl::StatusOr<size_t> r = c.tls->Read(buf, sizeof(buf), &want);
      if (!r.ok()) {
        Lost(c, r.status().message());
        return;
      }
      c.read_wants_write = *r == 0 && want == TlsSession::Want::kWrite;
      if (*r == 0) return;
      n = *r;
    } else {
      const ssize_t r = read(c.fd, buf, sizeof(buf));
      if (r == 0) {
        Lost(c, "closed by the server");
        return;
      }
      if (r < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) return;
        Lost(c, std::strerror(errno));
        return;
      }
      n = static_cast<size_t>(r);
    }
    if (redisReaderFeed(c.reader, buf, n) != REDIS_OK) {
      Fail(c, absl::UnavailableError("redis: out of memory"));
      return;
    }
    // Every complete reply, in order; a callback may drop the connection.
    while (true) {
      void* reply = nullptr;
      if (redisReaderGetReply(c.reader, &reply) != REDIS_OK) {
        Fail(c, absl::UnavailableError(
                    absl::StrCat("redis: protocol error: ", ErrorText(c.reader->errstr))));
        return;
      }
      if (reply == nullptr) break;
      std::unique_ptr<redisReply, void (*)(void*)> owned(static_cast<redisReply*>(reply),
                                                         freeReplyObject);
      if (c.is_sub && c.state == Conn::State::kReady) {
        OnSubReply(c, owned.get());
      } else if (c.awaiting.empty()) {
        Fail(c, absl::UnavailableError("redis: a reply to no command, reconnecting"));
        return;
      } else {
        const uint64_t id = c.awaiting.front();
        c.awaiting.pop_front();
        OnReply(c, id, owned.get());
      }
      if (c.generation != generation) return;
    }
    // A short plain read drained the socket; TLS may hold more decrypted.
    if (c.tls == nullptr && n < sizeof(buf)) return;
  }
}

void RedisClient::HandleWrite(Conn& c) {
  while (c.out_pos < c.out.size()) {
    const char* p = c.out.data() + c.out_pos;
    const size_t left = c.out.size() - c.out_pos;
    if (c.tls != nullptr) {
      TlsSession::Want want;
      // At most 16 KiB a call: a retried write then never passes fewer bytes.
      absl::StatusOr<size_t> w = c.tls->Write(p, std::min<size_t>(left, 16384), &want);
      if (!w.ok()) {
        Lost(c, w.status().message());
        return;
      }
      c.write_wants_read = *w == 0 && want == TlsSession::Want::kRead;
      if (*w == 0) return;
      c.out_pos += *w;
    } else {
      const ssize_t w = send(c.fd, p, left, MSG_NOSIGNAL);
      if (w < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) return;
        Lost(c, std::strerror(errno));
        return;
      }
      c.out_pos += static_cast<size_t>(w);
    }
  }
  c.out.clear();
  c.out_pos = 0;
}

void RedisClient::Append(Conn& c, int argc, const char** argv, const size_t* lens) {
  char* cmd = nullptr;
  const int len = redisFormatCommandArgv(&cmd, argc, argv, lens);
  if (len < 0 || cmd == nullptr) {
    Fail(c, absl::ResourceExhaustedError("redis: out of memory"));
    return;
  }
  // Written data is dropped before appending, so the buffer stays small.
  if (c.out_pos > 0 && c.out_pos == c.out.size()) {
    c.out.clear();
    c.out_pos = 0;
  }
  c.out.append(cmd, static_cast<size_t>(len));
  redisFreeCommand(cmd);
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
  Append(c, 2, argv, lens);
}

void RedisClient::Send(Conn& c, std::vector<std::string> argv, Done done, absl::Duration deadline) {
  const uint64_t id = next_id_++;
  pending_.emplace(id, Pending{std::move(done), deadline});
  deadlines_.insert({deadline, id});
  if (c.fd < 0) {  // dropped by an earlier step of this batch
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
  const uint64_t generation = c.generation;
  Append(c, static_cast<int>(argv.size()), ptrs.data(), lens.data());
  if (c.generation != generation) {
    Complete(id, absl::UnavailableError("redis: connection lost"));
    return;
  }
  c.awaiting.push_back(id);
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
  const uint64_t generation = c.generation;
  Append(c, 2, argv, lens);
  if (c.generation != generation) return;
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
  // OpenSSL writes with write(): a TLS connection the server closed must
  // give EPIPE, not a SIGPIPE that ends a process that did not ignore it.
  sigset_t pipe;
  sigemptyset(&pipe);
  sigaddset(&pipe, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &pipe, nullptr);
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
                         "redis: ", c->tls_handshaking ? "the TLS handshake with " : "connecting to ",
                         options_.url.Redacted(), " timed out after ",
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
    uint64_t generations[2] = {0, 0};
    for (Conn* c : {cmd_.get(), sub_.get()}) {
      if (c->fd < 0) continue;
      short events = 0;
      if (c->tcp_connecting) {
        events = POLLOUT;
      } else if (c->tls_handshaking) {
        events = c->tls_want == TlsSession::Want::kWrite ? POLLOUT : POLLIN;
      } else {
        events = POLLIN;
        if ((c->out_pos < c->out.size() && !c->write_wants_read) || c->read_wants_write) {
          events |= POLLOUT;
        }
      }
      polled[n - 1] = c;
      generations[n - 1] = c->generation;
      fds[n++] = {c->fd, events, 0};
    }
    const int rc = poll(fds, n, timeout_ms);
    if (rc <= 0) continue;
    if (fds[0].revents != 0) {
      uint64_t v;
      (void)!read(wake_fd_, &v, sizeof(v));
    }
    for (int i = 1; i < n; ++i) {
      Conn* c = polled[i - 1];
      // Skip a connection dropped (or replaced) while handling the other.
      if (fds[i].revents == 0 || c->fd < 0 || c->generation != generations[i - 1]) continue;
      HandleIo(*c, fds[i].revents);
    }
  }

  // Shutdown: everything still pending ends with CANCELLED.
  for (Conn* c : {cmd_.get(), sub_.get()}) {
    for (uint64_t id : CloseLink(*c)) {
      Complete(id, absl::CancelledError("redis client destroyed"));
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
