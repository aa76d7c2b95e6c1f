// HoldProxy: a loopback TCP proxy in front of a local server, for tests
// whose requests must reach the server late. Hold() makes the connections
// open at that moment keep what their clients send (the clients see no
// answer and may give up and close); Release() delivers what was kept, in
// order, then closes the server side of connections whose clients have
// closed. Connections opened while holding pass freely, so a client that
// reconnects is served at once. Threads per connection; tests only.
#ifndef VIDEOTASK_TESTS_TESTING_HOLD_PROXY_H_
#define VIDEOTASK_TESTS_TESTING_HOLD_PROXY_H_

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace videotask::testing {

class HoldProxy {
 public:
  // Listens on a free 127.0.0.1 port, forwarding to 127.0.0.1:target_port.
  static absl::StatusOr<std::unique_ptr<HoldProxy>> Start(int target_port);
  ~HoldProxy();
  HoldProxy(const HoldProxy&) = delete;
  HoldProxy& operator=(const HoldProxy&) = delete;

  int port() const { return port_; }
  void Hold();
  void Release();
  // Bytes kept by Hold() and not yet released.
  size_t held_bytes();

 private:
  struct Conn;
  HoldProxy() = default;
  void Accept();
  void Pump(std::shared_ptr<Conn> c);  // client -> server
  void Back(std::shared_ptr<Conn> c);  // server -> client

  int target_port_ = 0;
  int port_ = 0;
  int listen_fd_ = -1;
  std::thread acceptor_;
  absl::Mutex mu_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::shared_ptr<Conn>> conns_ ABSL_GUARDED_BY(mu_);
  std::vector<std::thread> threads_ ABSL_GUARDED_BY(mu_);
};

}  // namespace videotask::testing

#endif  // VIDEOTASK_TESTS_TESTING_HOLD_PROXY_H_
