// RedisServer: a real redis-server for tests, on a free loopback port, with
// no persistence (--save '' --appendonly no) and DEBUG enabled for local
// clients. Start() returns once the server answers PING; Kill() (SIGKILL),
// Stop() (SIGTERM), Pause()/Resume() (SIGSTOP/SIGCONT) and Restart() (a new
// process on the same port, empty) drive faults. Command() is a blocking
// client for checks and fault injection (e.g. DEBUG SLEEP), bounded by a
// timeout. The process is killed when the object is destroyed.
//
// With Options::tls the server listens on TLS only (--port 0 --tls-port):
// port() and Url() (rediss://) are the TLS port, and the checks of Start()
// and Command() go over a Unix socket of its own in /tmp.
//
// redis-server is looked up on PATH, then in /usr/bin and /usr/sbin.
// Errors: Start/Restart give UNAVAILABLE when the server does not answer
// within 10 s; Command gives UNAVAILABLE/DEADLINE_EXCEEDED for I/O failures
// and the server's error reply as FAILED_PRECONDITION.
#ifndef VIDEOTASK_TESTS_TESTING_REDIS_SERVER_H_
#define VIDEOTASK_TESTS_TESTING_REDIS_SERVER_H_

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "tests/testing/subprocess.h"

namespace videotask::testing {

class RedisServer {
 public:
  struct Options {
    std::string password;     // --requirepass when not empty
    int port = 0;             // 0: a free port
    std::string unix_socket;  // also listen on this Unix socket when not empty
    struct Tls {
      std::string cert_file, key_file;  // the server's certificate and key
      std::string ca_file;              // CA of client certificates
      bool auth_clients = false;        // --tls-auth-clients yes
    };
    std::optional<Tls> tls;
  };

  static absl::StatusOr<std::unique_ptr<RedisServer>> Start(Options options);
  static absl::StatusOr<std::unique_ptr<RedisServer>> Start() { return Start(Options{}); }
  ~RedisServer();

  int port() const { return port_; }
  pid_t pid() const { return process_.has_value() ? process_->pid() : -1; }
  // redis://[:password@]127.0.0.1:port/db (rediss:// with tls)
  std::string Url(int db = 0) const;

  void Kill();    // SIGKILL, and reaps it
  void Stop();    // SIGTERM, and reaps it
  void Pause();   // SIGSTOP: connections stay open, nothing answers
  void Resume();  // SIGCONT
  // Kills the current process if any, then starts a new, empty one on the
  // same port and waits until it answers PING.
  absl::Status Restart();
  bool running() const { return process_.has_value(); }

  // Runs one command on a new blocking connection (AUTH first if the server
  // has a password). Integer replies come back as their decimal text, nil as
  // "(nil)", arrays as their elements joined by '\n'.
  absl::StatusOr<std::string> Command(const std::vector<std::string>& argv,
                                      absl::Duration timeout = absl::Seconds(5)) const;

 private:
  RedisServer() = default;
  absl::Status Launch();

  Options options_;
  std::string binary_;
  std::string dir_;
  std::string control_dir_;     // tls: a directory of its own under /tmp
  std::string control_socket_;  // tls: for Command(), in control_dir_
  int port_ = 0;
  std::optional<Subprocess> process_;
};

}  // namespace videotask::testing

#endif  // VIDEOTASK_TESTS_TESTING_REDIS_SERVER_H_
