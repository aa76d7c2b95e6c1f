#include "tests/testing/hold_proxy.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace videotask::testing {

struct HoldProxy::Conn {
  int client_fd = -1;
  int server_fd = -1;
  // Guarded by the proxy's mu_.
  bool held = false;
  bool client_closed = false;
  std::string kept;
};

namespace {

sockaddr_in Loopback(int port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(static_cast<uint16_t>(port));
  return a;
}

// Writes all of `data`; false when the peer is gone.
bool WriteAll(int fd, const char* data, size_t n) {
  while (n > 0) {
    const ssize_t w = send(fd, data, n, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    data += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

}  // namespace

absl::StatusOr<std::unique_ptr<HoldProxy>> HoldProxy::Start(int target_port) {
  std::unique_ptr<HoldProxy> p(new HoldProxy());
  p->target_port_ = target_port;
  p->listen_fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (p->listen_fd_ < 0) return absl::InternalError("socket() failed");
  sockaddr_in a = Loopback(0);
  socklen_t len = sizeof a;
  if (bind(p->listen_fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
      listen(p->listen_fd_, 64) != 0 ||
      getsockname(p->listen_fd_, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    return absl::InternalError(absl::StrCat("cannot listen: ", strerror(errno)));
  }
  p->port_ = ntohs(a.sin_port);
  p->acceptor_ = std::thread([raw = p.get()] { raw->Accept(); });
  return p;
}

HoldProxy::~HoldProxy() {
  std::vector<std::thread> threads;
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
    for (const auto& c : conns_) {
      shutdown(c->client_fd, SHUT_RDWR);
      shutdown(c->server_fd, SHUT_RDWR);
    }
  }
  if (acceptor_.joinable()) acceptor_.join();
  {
    absl::MutexLock lock(&mu_);
    threads.swap(threads_);
  }
  for (std::thread& t : threads) t.join();
  absl::MutexLock lock(&mu_);
  for (const auto& c : conns_) {
    close(c->client_fd);
    close(c->server_fd);
  }
  if (listen_fd_ >= 0) close(listen_fd_);
}

void HoldProxy::Accept() {
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      if (stop_) return;
    }
    pollfd pfd{listen_fd_, POLLIN, 0};
    if (poll(&pfd, 1, 50) <= 0) continue;
    const int client = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (client < 0) continue;
    const int server = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a = Loopback(target_port_);
    if (server < 0 || connect(server, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
      if (server >= 0) close(server);
      close(client);
      continue;
    }
    auto c = std::make_shared<Conn>();
    c->client_fd = client;
    c->server_fd = server;
    absl::MutexLock lock(&mu_);
    if (stop_) {
      close(client);
      close(server);
      return;
    }
    conns_.push_back(c);
    threads_.emplace_back([this, c] { Pump(c); });
    threads_.emplace_back([this, c] { Back(c); });
  }
}

void HoldProxy::Pump(std::shared_ptr<Conn> c) {
  char buf[16384];
  while (true) {
    const ssize_t n = read(c->client_fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    absl::MutexLock lock(&mu_);
    if (n <= 0) {
      c->client_closed = true;
      if (!c->held) shutdown(c->server_fd, SHUT_WR);
      return;
    }
    if (c->held) {
      c->kept.append(buf, static_cast<size_t>(n));
    } else if (!WriteAll(c->server_fd, buf, static_cast<size_t>(n))) {
      return;
    }
  }
}

void HoldProxy::Back(std::shared_ptr<Conn> c) {
  char buf[16384];
  while (true) {
    const ssize_t n = read(c->server_fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      shutdown(c->client_fd, SHUT_WR);
      return;
    }
    WriteAll(c->client_fd, buf, static_cast<size_t>(n));  // a closed client: dropped
  }
}

void HoldProxy::Hold() {
  absl::MutexLock lock(&mu_);
  for (const auto& c : conns_) c->held = true;
}

void HoldProxy::Release() {
  absl::MutexLock lock(&mu_);
  for (const auto& c : conns_) {
    if (!c->held) continue;
    WriteAll(c->server_fd, c->kept.data(), c->kept.size());
    c->kept.clear();
    c->held = false;
    if (c->client_closed) shutdown(c->server_fd, SHUT_WR);
  }
}

size_t HoldProxy::held_bytes() {
  absl::MutexLock lock(&mu_);
  size_t n = 0;
  for (const auto& c : conns_) n += c->kept.size();
  return n;
}

}  // namespace videotask::testing
