// Loopback TCP ports for tests: listening sockets, free ports, peers that
// never answer or are not there at all, and a probe that counts connects. Everything is on 127.0.0.1 and
// every socket is close-on-exec (a spawned binary does not inherit it).
#ifndef VIDEOTASK_TESTS_TESTING_LISTENERS_H_
#define VIDEOTASK_TESTS_TESTING_LISTENERS_H_

#include <atomic>
#include <string>
#include <thread>

#include "absl/time/time.h"

namespace videotask::testing {

// A TCP socket listening on 127.0.0.1:`port` (0: any); -1 on error. With
// `reuseport` it is bound like another sidecar's (gRPC's and httplib's
// default SO_REUSEPORT), which must not make the port shareable.
int ListenOn(int port, bool reuseport = false);

// The local port of socket `fd`; -1 on error.
int PortOf(int fd);

// A port nothing listens on now: bound, read, released.
int FreePort();

// Whether this process can listen on `port` (nobody else does), within
// `limit`: a closed listener may take a moment to go.
bool CanListenOn(int port, absl::Duration limit = absl::Seconds(5));

// A loopback address nothing listens on, "127.0.0.1:PORT" (a free port,
// bound and released). A failure to find one fails the test.
std::string ClosedPortTarget();

// A loopback TCP listener on a free port that never accepts nor writes: the
// kernel completes connections into its backlog, and no HTTP/2 answer ever
// comes. A sidecar that "never answers". A failure to listen fails the test.
class SilentListener {
 public:
  SilentListener();
  ~SilentListener();
  SilentListener(const SilentListener&) = delete;
  SilentListener& operator=(const SilentListener&) = delete;

  // "127.0.0.1:PORT".
  const std::string& target() const { return target_; }

 private:
  int fd_ = -1;
  std::string target_;
};

// Counts successful TCP connects to 127.0.0.1:`port`, as fast as it can,
// until stopped or destroyed: a port that listens even briefly is likely seen.
class ConnectProbe {
 public:
  explicit ConnectProbe(int port);
  ~ConnectProbe();
  ConnectProbe(const ConnectProbe&) = delete;
  ConnectProbe& operator=(const ConnectProbe&) = delete;

  // Stops probing (waits for the probing thread). Idempotent.
  void Stop();
  int connects() const { return connects_.load(); }
  int attempts() const { return attempts_.load(); }

 private:
  void Run(int port);

  std::atomic<bool> stop_{false};
  std::atomic<int> connects_{0};
  std::atomic<int> attempts_{0};
  std::thread thread_;  // last: starts once the counters exist
};

}  // namespace videotask::testing

#endif  // VIDEOTASK_TESTS_TESTING_LISTENERS_H_
