#include "tests/testing/listeners.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"

namespace videotask::testing {
namespace {

int Listen(int port, bool reuseport, int backlog) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  const int yes = 1;
  if (reuseport) ::setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &yes, sizeof yes);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      ::listen(fd, backlog) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

std::string Target(int port) { return absl::StrCat("127.0.0.1:", port); }

}  // namespace

int ListenOn(int port, bool reuseport) { return Listen(port, reuseport, /*backlog=*/16); }

int PortOf(int fd) {
  sockaddr_in addr{};
  socklen_t len = sizeof addr;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) return -1;
  return ntohs(addr.sin_port);
}

int FreePort() {
  const int fd = ListenOn(0);
  const int port = PortOf(fd);
  if (fd >= 0) ::close(fd);
  return port;
}

bool CanListenOn(int port, absl::Duration limit) {
  const absl::Time end = absl::Now() + limit;
  while (true) {
    const int fd = ListenOn(port);
    if (fd >= 0) {
      ::close(fd);
      return true;
    }
    if (absl::Now() >= end) return false;
    absl::SleepFor(absl::Milliseconds(10));
  }
}

std::string ClosedPortTarget() {
  const int port = FreePort();
  EXPECT_GT(port, 0) << "no free loopback port";
  return Target(port);
}

SilentListener::SilentListener() {
  // A deep backlog: every connection attempt is completed by the kernel and
  // then left unanswered.
  fd_ = Listen(0, /*reuseport=*/false, /*backlog=*/128);
  const int port = fd_ >= 0 ? PortOf(fd_) : -1;
  if (port <= 0) {
    ADD_FAILURE() << "cannot listen on loopback";
    return;
  }
  target_ = Target(port);
}

SilentListener::~SilentListener() {
  if (fd_ >= 0) ::close(fd_);
}

ConnectProbe::ConnectProbe(int port) : thread_([this, port] { Run(port); }) {}

ConnectProbe::~ConnectProbe() { Stop(); }

void ConnectProbe::Stop() {
  stop_.store(true);
  if (thread_.joinable()) thread_.join();
}

void ConnectProbe::Run(int port) {
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  while (!stop_.load()) {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) continue;
    if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) {
      connects_.fetch_add(1);
    }
    ::close(fd);
    attempts_.fetch_add(1);
  }
}

}  // namespace videotask::testing
