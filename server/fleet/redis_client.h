// RedisClient: an asynchronous Redis client run by one thread of its own,
// for fleet mode. hiredis 0.14 formats commands and parses replies
// (redisFormatCommandArgv, redisReader); the client does its own
// non-blocking I/O in one poll() loop, over a plain socket (redis://, unix:)
// or TLS (rediss://, see redis_tls.h), so both take the same code path.
//
// Guarantees:
//   - Command() never blocks on Redis: it queues the command and returns.
//     `done` runs exactly once, on the client's thread, never inside
//     Command() and with no lock of the client held. Commands are pipelined
//     on one connection and answered in order.
//   - A command never waits unbounded: it fails with DEADLINE_EXCEEDED after
//     its timeout (default `command_timeout`, 250 ms), whether it is still
//     queued or already sent (a late reply is then dropped).
//   - While the connection is not up (connecting, AUTH/SELECT pending,
//     backing off, wrong password) commands fail at once with UNAVAILABLE.
//   - The client (re)connects in the background with capped, jittered
//     exponential backoff (`min_backoff`..`max_backoff`); a host name is
//     resolved again at each attempt, on a resolver thread, so a slow DNS
//     never stalls the client's thread. On connect it sends AUTH (password
//     and optional user) and SELECT db, then PING; only then is it up().
//   - A connection that stops answering (no reply for `stall_timeout` while
//     commands are outstanding: a paused or partitioned server) is dropped
//     and re-established, so the client goes down within about a second.
//   - `on_state(up, reason)` runs on the client's thread each time up()
//     changes, and once when the first connection attempt fails (so a Redis
//     unreachable at start is reported once). `reason` never contains the
//     password. on_state(true) runs before up() turns true (so
//     WaitUntilUp() returns after it), on_state(false) after up() is false.
//   - Faults: a Redis that answers but does not serve is down too. An error
//     reply on the command connection (READONLY from a replica after a
//     failover, OOM under maxmemory noeviction, BUSY, LOADING, ...; not
//     NOSCRIPT, which RedisScript handles; unless `error_reply_is_fault` is
//     off) and a command past its timeout while up are faults: the client
//     counts it (stats().faults, `on_fault`), drops the command connection
//     (a failover moves the primary behind the same name: the new
//     connection finds it) and is down (on_state(false, why)) until a new
//     connection passes its handshake, which ends with `probe` when set
//     (fleet mode: a SET, which a replica or a full Redis refuses).
//     Reconnects after faults back off min_backoff..max_fault_backoff
//     (doubling while faults recur), so a Redis that keeps failing commands
//     flips up/down (and logs) at most every max_fault_backoff.
//   - Pub/sub: Subscribe() uses a second connection (a subscribed Redis
//     connection cannot run commands); after any reconnect every channel is
//     subscribed again and `on_subscribed` runs again, so the caller can
//     refresh what it may have missed. The subscriber connection is checked
//     for life: after `keepalive_interval` without traffic it re-SUBSCRIBEs a
//     keepalive channel, and no answer within `stall_timeout` drops and
//     re-establishes it. A stall of the command connection also resets the
//     subscriber connection.
//   - rediss://: the TCP connect and the TLS handshake are bounded by
//     `connect_timeout` like the rest of the attempt; a failed handshake
//     (unknown CA, expired certificate, name mismatch, client certificate
//     refused) is a failed attempt whose reason names the cause, e.g.
//     "redis: rediss://host:6380/0: TLS handshake failed: certificate verify
//     failed: certificate has expired", followed by the usual backoff.
//   - The client's thread blocks SIGPIPE for itself, so a write to a
//     connection the server closed is an error, never a signal.
//   - The destructor completes every pending command with CANCELLED and
//     joins its threads; it must not be called from a callback of the client.
//
// Error contract of `done`: OK with a RedisReply (a Redis error reply such as
// NOSCRIPT or WRONGTYPE is an OK status with type kError); UNAVAILABLE (not
// connected, connection lost before the reply), DEADLINE_EXCEEDED (timeout),
// CANCELLED (client destroyed), INVALID_ARGUMENT (empty argv).
#ifndef VIDEOTASK_SERVER_FLEET_REDIS_CLIENT_H_
#define VIDEOTASK_SERVER_FLEET_REDIS_CLIENT_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/fleet/redis_tls.h"
#include "server/fleet/redis_url.h"

struct redisReply;  // hiredis

namespace videotask::fleet {

struct RedisReply {
  enum class Type { kNil, kString, kStatus, kInteger, kArray, kError };
  Type type = Type::kNil;
  std::string str;      // kString, kStatus, kError
  int64_t integer = 0;  // kInteger
  std::vector<RedisReply> elements;  // kArray

  bool is_error() const { return type == Type::kError; }
  bool is_nil() const { return type == Type::kNil; }
};

struct RedisClientOptions {
  RedisUrl url;
  // When set, called at each connection attempt (on the client's thread) for
  // the password, e.g. [f](){ return f->Get(); } with a RedisPasswordFile;
  // a non-empty result overrides url.password.
  std::function<std::string()> password;
  // rediss:// only: the TLS settings (CA, client certificate, server name),
  // shared so that its files are re-read once for both connections. Null:
  // the system's CAs, no client certificate, the URL's host as the name.
  std::shared_ptr<RedisTlsContext> tls;
  absl::Duration command_timeout = absl::Milliseconds(250);
  // Limit of one connection attempt: resolve, connect, AUTH, SELECT, PING.
  absl::Duration connect_timeout = absl::Seconds(1);
  // No reply for this long while commands are outstanding: reconnect.
  absl::Duration stall_timeout = absl::Seconds(1);
  absl::Duration min_backoff = absl::Milliseconds(100);
  absl::Duration max_backoff = absl::Seconds(2);
  // Reconnect backoff after faults (see the file comment).
  absl::Duration max_fault_backoff = absl::Seconds(30);
  // Subscriber connection: a keepalive after this long without traffic.
  absl::Duration keepalive_interval = absl::Seconds(5);
  // Sent last in each handshake; an error reply fails the attempt. Empty:
  // none.
  std::vector<std::string> probe;
  // Error replies count as faults (see the file comment).
  bool error_reply_is_fault = true;
  std::function<void(bool up, const absl::Status& reason)> on_state;
  enum class Fault { kErrorReply, kTimeout };
  // Runs on the client's thread at each fault, before on_state(false).
  std::function<void(Fault kind, const absl::Status& why)> on_fault;
};

class RedisClient {
 public:
  using Done = absl::AnyInvocable<void(absl::StatusOr<RedisReply>)>;
  using MessageFn = std::function<void(const std::string& channel, const std::string& message)>;
  using SubscribedFn = std::function<void(const std::string& channel)>;

  // Starts the client's thread, which connects in the background.
  explicit RedisClient(RedisClientOptions options);
  ~RedisClient();
  RedisClient(const RedisClient&) = delete;
  RedisClient& operator=(const RedisClient&) = delete;

  // Sends argv (binary-safe) with the default or the given timeout.
  void Command(std::vector<std::string> argv, Done done);
  void Command(std::vector<std::string> argv, absl::Duration timeout, Done done);

  // Subscribes `channel` on the subscriber connection, now and after every
  // reconnect. Messages arrive on the client's thread, in order. One
  // callback pair per channel (a second call replaces the first).
  void Subscribe(std::string channel, MessageFn on_message, SubscribedFn on_subscribed = nullptr);

  // True while the command connection is established and authenticated.
  bool up() const;
  // Waits (bounded) until up(); for tests and start-up checks.
  bool WaitUntilUp(absl::Duration timeout) const;
  // The reason of the last failure (OK while up).
  absl::Status last_error() const;

  struct Stats {
    int64_t commands = 0;   // sent to Redis
    int64_t timeouts = 0;   // completed with DEADLINE_EXCEEDED
    int64_t connects = 0;   // successful handshakes of the command connection
    int64_t faults = 0;     // error replies and timeouts that dropped it
    int64_t subscribes = 0; // successful (re)connects of the subscriber connection
  };
  Stats stats() const;

 private:
  struct Conn;
  struct Pending {
    Done done;
    absl::Duration deadline;  // monotonic
  };
  struct Queued {
    std::vector<std::string> argv;
    Done done;
    absl::Duration deadline;
  };
  struct Channel {
    MessageFn on_message;
    SubscribedFn on_subscribed;
  };

  void Loop();
  void Wake();
  void DrainQueue(absl::Duration now);
  void Send(Conn& c, std::vector<std::string> argv, Done done, absl::Duration deadline);
  void ExpireDeadlines(absl::Duration now);
  void StartConnect(Conn& c, absl::Duration now);
  void ConnectTo(Conn& c, const std::string& address);
  void OnSocketConnected(Conn& c);
  void StepTlsHandshake(Conn& c);
  void HandleIo(Conn& c, short revents);
  void HandleRead(Conn& c);
  void HandleWrite(Conn& c);
  // Formats a command into the connection's output buffer.
  void Append(Conn& c, int argc, const char** argv, const size_t* lens);
  // Closes the link; returns the ids of the commands awaiting a reply.
  std::deque<uint64_t> CloseLink(Conn& c);
  void OnConnected(Conn& c);
  void HandshakeStep(Conn& c, uint64_t generation, absl::StatusOr<RedisReply> r);
  void SetReady(Conn& c);
  // Drops the connection (if any) and schedules a reconnect.
  void Fail(Conn& c, absl::Status why);
  // Fail() with "redis: connection to URL lost: <why>" (UNAVAILABLE).
  void Lost(Conn& c, absl::string_view why);
  void Complete(uint64_t id, absl::StatusOr<RedisReply> r);
  // A fault on the command connection while it is ready (see the header).
  void Faulted(RedisClientOptions::Fault kind, absl::Status why);
  void CheckSubscriber(Conn& c, absl::Duration now);
  void SubscribeOn(Conn& c, const std::string& channel);
  void SetUp(bool up, const absl::Status& why);

  void OnReply(Conn& c, uint64_t id, const ::redisReply* reply);
  void OnSubReply(Conn& c, const ::redisReply* reply);

  const RedisClientOptions options_;
  // rediss://: options_.tls or a default context; tls_error_ when that
  // failed (every attempt then fails with it).
  std::shared_ptr<RedisTlsContext> tls_;
  absl::Status tls_error_;
  int wake_fd_ = -1;

  mutable absl::Mutex mu_;
  std::vector<Queued> queue_ ABSL_GUARDED_BY(mu_);
  std::vector<std::pair<std::string, Channel>> new_channels_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  bool up_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status last_error_ ABSL_GUARDED_BY(mu_) = absl::UnavailableError("redis: not connected yet");
  Stats stats_ ABSL_GUARDED_BY(mu_);

  // Owned by the client's thread.
  std::unique_ptr<Conn> cmd_;
  std::unique_ptr<Conn> sub_;
  uint64_t next_id_ = 1;
  std::map<uint64_t, Pending> pending_;
  std::set<std::pair<absl::Duration, uint64_t>> deadlines_;
  std::map<std::string, Channel> channels_;
  bool reported_first_failure_ = false;
  bool stopping_ = false;

  // Host-name resolution runs on a detached thread that shares this state,
  // so a getaddrinfo() stuck on DNS never holds up the destructor.
  struct Resolver;
  std::shared_ptr<Resolver> resolver_;
  std::thread thread_;
};

}  // namespace videotask::fleet

#endif  // VIDEOTASK_SERVER_FLEET_REDIS_CLIENT_H_
