#include "tests/testing/redis_server.h"

#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"

namespace videotask::testing {
namespace {

std::string FindBinary() {
  std::vector<std::string> dirs;
  if (const char* path = std::getenv("PATH"); path != nullptr) {
    dirs = absl::StrSplit(path, ':', absl::SkipEmpty());
  }
  dirs.push_back("/usr/bin");
  dirs.push_back("/usr/sbin");
  for (const std::string& d : dirs) {
    const std::string p = absl::StrCat(d, "/redis-server");
    if (access(p.c_str(), X_OK) == 0) return p;
  }
  return "";
}

int FreePort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return 0;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  int port = 0;
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    port = ntohs(addr.sin_port);
  }
  close(fd);
  return port;
}

std::string ReplyText(const redisReply* r) {
  switch (r->type) {
    case REDIS_REPLY_INTEGER:
      return absl::StrCat(r->integer);
    case REDIS_REPLY_NIL:
      return "(nil)";
    case REDIS_REPLY_ARRAY: {
      std::vector<std::string> parts;
      for (size_t i = 0; i < r->elements; ++i) parts.push_back(ReplyText(r->element[i]));
      return absl::StrJoin(parts, "\n");
    }
    default:
      return std::string(r->str, r->len);
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<RedisServer>> RedisServer::Start(Options options) {
  std::unique_ptr<RedisServer> s(new RedisServer());
  s->options_ = std::move(options);
  s->binary_ = FindBinary();
  if (s->binary_.empty()) {
    return absl::FailedPreconditionError("redis-server not found (apt-get install redis-server)");
  }
  const char* tmp = std::getenv("TEST_TMPDIR");
  s->dir_ = tmp != nullptr ? tmp : ".";
  if (s->options_.tls) {
    // TEST_TMPDIR is too long for a socket path (108 bytes), and pids repeat
    // across tests run side by side (each sandbox has its own pid
    // namespace): a directory of our own under /tmp.
    char dir[] = "/tmp/vtredis-XXXXXX";
    if (mkdtemp(dir) == nullptr) {
      return absl::InternalError(absl::StrCat("mkdtemp: ", std::strerror(errno)));
    }
    s->control_dir_ = dir;
    s->control_socket_ = absl::StrCat(dir, "/redis.sock");
  }
  absl::Status last;
  // A port picked free can be taken before redis binds it: try a few.
  for (int attempt = 0; attempt < 5; ++attempt) {
    s->port_ = s->options_.port != 0 ? s->options_.port : FreePort();
    last = s->Launch();
    if (last.ok()) return s;
  }
  return last;
}

RedisServer::~RedisServer() {
  Kill();
  if (!control_socket_.empty()) unlink(control_socket_.c_str());
  if (!control_dir_.empty()) rmdir(control_dir_.c_str());
}

std::string RedisServer::Url(int db) const {
  const std::string auth = options_.password.empty() ? "" : absl::StrCat(":", options_.password, "@");
  return absl::StrCat(options_.tls ? "rediss://" : "redis://", auth, "127.0.0.1:", port_, "/", db);
}

absl::Status RedisServer::Launch() {
  std::vector<std::string> argv = {binary_,
                                   "--port", absl::StrCat(options_.tls ? 0 : port_),
                                   "--bind", "127.0.0.1",
                                   "--save", "",
                                   "--appendonly", "no",
                                   "--dir", dir_,
                                   "--daemonize", "no",
                                   "--enable-debug-command", "local",
                                   "--loglevel", "warning"};
  if (!options_.unix_socket.empty()) {
    argv.push_back("--unixsocket");
    argv.push_back(options_.unix_socket);
  }
  if (options_.tls) {
    unlink(control_socket_.c_str());
    argv.insert(argv.end(), {"--tls-port", absl::StrCat(port_),
                             "--tls-cert-file", options_.tls->cert_file,
                             "--tls-key-file", options_.tls->key_file,
                             "--tls-auth-clients", options_.tls->auth_clients ? "yes" : "no"});
    if (!options_.tls->ca_file.empty()) {
      argv.insert(argv.end(), {"--tls-ca-cert-file", options_.tls->ca_file});
    }
    if (options_.unix_socket.empty()) {
      argv.insert(argv.end(), {"--unixsocket", control_socket_});
    }
  }
  if (!options_.password.empty()) {
    argv.push_back("--requirepass");
    argv.push_back(options_.password);
  }
  absl::StatusOr<Subprocess> p = Subprocess::Start(argv);
  if (!p.ok()) return p.status();
  process_.emplace(*std::move(p));
  const absl::Time end = absl::Now() + absl::Seconds(10);
  while (absl::Now() < end) {
    absl::StatusOr<std::string> pong = Command({"PING"}, absl::Milliseconds(500));
    if (pong.ok() && *pong == "PONG") {
      // The port may have been taken by another test's server: make sure it
      // is ours that answered.
      absl::StatusOr<std::string> info = Command({"INFO", "server"});
      if (info.ok() &&
          absl::StrContains(*info, absl::StrCat("process_id:", process_->pid(), "\r"))) {
        return absl::OkStatus();
      }
      break;
    }
    if (process_->Wait(absl::Milliseconds(20)).has_value()) break;  // exited (port taken?)
  }
  const std::string err = process_->Stdout() + process_->Stderr();
  Kill();
  return absl::UnavailableError(absl::StrCat("redis-server did not answer PING: ", err));
}

void RedisServer::Kill() {
  if (!process_.has_value()) return;
  Resume();
  process_->Signal(SIGKILL);
  process_->Wait(absl::Seconds(10));
  process_.reset();
}

void RedisServer::Stop() {
  if (!process_.has_value()) return;
  Resume();
  process_->Signal(SIGTERM);
  if (!process_->Wait(absl::Seconds(10)).has_value()) process_->Signal(SIGKILL);
  process_.reset();
}

void RedisServer::Pause() {
  if (process_.has_value()) process_->Signal(SIGSTOP);
}

void RedisServer::Resume() {
  if (process_.has_value()) process_->Signal(SIGCONT);
}

absl::Status RedisServer::Restart() {
  Kill();
  // The old socket may linger in TIME_WAIT; redis sets SO_REUSEADDR, but retry.
  absl::Status last;
  for (int attempt = 0; attempt < 5; ++attempt) {
    last = Launch();
    if (last.ok()) return last;
    absl::SleepFor(absl::Milliseconds(200));
  }
  return last;
}

absl::StatusOr<std::string> RedisServer::Command(const std::vector<std::string>& argv,
                                                 absl::Duration timeout) const {
  const timeval tv = absl::ToTimeval(timeout);
  redisContext* c =
      !options_.tls ? redisConnectWithTimeout("127.0.0.1", port_, tv)
                    : redisConnectUnixWithTimeout(
                          (options_.unix_socket.empty() ? control_socket_ : options_.unix_socket).c_str(), tv);
  if (c == nullptr) return absl::UnavailableError("redis: out of memory");
  if (c->err != 0) {
    const std::string err = c->errstr;
    redisFree(c);
    return absl::UnavailableError(absl::StrCat("redis connect: ", err));
  }
  redisSetTimeout(c, tv);
  auto run = [c](const std::vector<std::string>& args) -> absl::StatusOr<std::string> {
    std::vector<const char*> ptrs;
    std::vector<size_t> lens;
    for (const std::string& a : args) {
      ptrs.push_back(a.data());
      lens.push_back(a.size());
    }
    auto* r = static_cast<redisReply*>(
        redisCommandArgv(c, static_cast<int>(args.size()), ptrs.data(), lens.data()));
    if (r == nullptr) {
      return c->err == REDIS_ERR_IO && (errno == EAGAIN || errno == EWOULDBLOCK)
                 ? absl::DeadlineExceededError("redis: timeout")
                 : absl::UnavailableError(absl::StrCat("redis: ", c->errstr));
    }
    absl::StatusOr<std::string> out = ReplyText(r);
    if (r->type == REDIS_REPLY_ERROR) out = absl::FailedPreconditionError(*out);
    freeReplyObject(r);
    return out;
  };
  absl::StatusOr<std::string> out = std::string();
  if (!options_.password.empty()) out = run({"AUTH", options_.password});
  if (out.ok()) out = run(argv);
  redisFree(c);
  return out;
}

}  // namespace videotask::testing
