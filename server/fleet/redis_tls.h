// RedisTls: TLS (OpenSSL 3) for fleet mode's Redis connections, rediss://.
//
// RedisTlsContext holds the client's TLS settings and the OpenSSL context
// built from them; RedisClient asks it for a TlsSession over each TCP socket
// it connects, and drives the session's non-blocking handshake, reads and
// writes from its own poll() loop (hiredis only parses and formats the
// protocol).
//
// Guarantees:
//   - TLS 1.2 or newer only. The server's certificate chain is always
//     verified, against `ca_file` when set, else the system's CAs, and its
//     name is checked against `server_name` (default: the URL's host; an IP
//     address is matched as an IP). SNI carries the name when it is a DNS
//     name. There is no way to turn verification off.
//   - Optional client certificate (`cert_file` + `key_file`, PEM) for a
//     Redis with tls-auth-clients yes.
//   - The CA, certificate and key files are re-read when they change (inode,
//     device, size, mtime or ctime, checked at each connection attempt), so
//     a rotated Secret needs no restart. A re-read that fails (file missing,
//     half-written, key not matching) keeps the last good context and the
//     error in last_error(); Create() fails when the first read fails.
//   - Nothing blocks: Handshake/Read/Write return at once and say what they
//     wait for (readable or writable socket).
//   - Failures are one short sentence naming the reason, e.g. "TLS
//     handshake failed: certificate verify failed: certificate has expired"
//     or "...: hostname mismatch", never containing key material or a
//     password. Thread-safe (RedisTlsContext); a TlsSession belongs to one
//     thread.
#ifndef VIDEOTASK_SERVER_FLEET_REDIS_TLS_H_
#define VIDEOTASK_SERVER_FLEET_REDIS_TLS_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "server/base/file_version.h"

typedef struct ssl_ctx_st SSL_CTX;  // OpenSSL
typedef struct ssl_st SSL;

namespace videotask::fleet {

struct RedisTlsOptions {
  std::string ca_file;      // PEM bundle of trusted CAs; empty: the system's
  std::string cert_file;    // client certificate chain (PEM); needs key_file
  std::string key_file;     // its private key (PEM, unencrypted)
  std::string server_name;  // name to verify and send as SNI; empty: URL host
};

class TlsSession {
 public:
  enum class Want { kNothing, kRead, kWrite };
  ~TlsSession();
  TlsSession(const TlsSession&) = delete;
  TlsSession& operator=(const TlsSession&) = delete;

  // Advances the handshake: OK with *done true once it completed; OK with
  // *want set while it waits for the socket; an error (the reason) when it
  // failed.
  absl::Status Handshake(bool* done, Want* want);
  // Reads up to n bytes: the count (> 0), or 0 with *want set when nothing
  // is available yet; UNAVAILABLE when the peer closed ("closed by the
  // server") or TLS failed (the reason, e.g. "tlsv13 alert certificate
  // required" from a server that wants a client certificate).
  absl::StatusOr<size_t> Read(char* buf, size_t n, Want* want);
  // Writes up to n bytes: the count written (> 0), or 0 with *want set.
  // After a 0, the next call must pass at least the same bytes again.
  absl::StatusOr<size_t> Write(const char* buf, size_t n, Want* want);
  // The negotiated protocol, e.g. "TLSv1.3" (for logs and tests).
  std::string Protocol() const;

 private:
  friend class RedisTlsContext;
  explicit TlsSession(SSL* ssl) : ssl_(ssl) {}
  absl::Status Error(int rc, const char* op, Want* want);
  SSL* ssl_;
};

class RedisTlsContext {
 public:
  // Reads the files now: an error naming the flag's file when one cannot be
  // used (unreadable, not PEM, key not matching the certificate).
  static absl::StatusOr<std::unique_ptr<RedisTlsContext>> Create(RedisTlsOptions options);
  ~RedisTlsContext();
  RedisTlsContext(const RedisTlsContext&) = delete;
  RedisTlsContext& operator=(const RedisTlsContext&) = delete;

  // A client session over the connected socket `fd` (not owned) for a
  // server reached as `host`, the context first rebuilt if a file changed.
  absl::StatusOr<std::unique_ptr<TlsSession>> NewSession(int fd, const std::string& host);

  // The last failed re-read (OK when the files in use are current).
  absl::Status last_error() const;
  // How many times the files were (re)loaded successfully.
  int64_t loads() const;

 private:
  struct Stamp {
    FileVersion ca, cert, key;
    bool operator==(const Stamp& o) const { return ca == o.ca && cert == o.cert && key == o.key; }
  };
  explicit RedisTlsContext(RedisTlsOptions options) : options_(std::move(options)) {}
  Stamp Current() const;
  absl::StatusOr<std::shared_ptr<SSL_CTX>> Build() const;
  absl::StatusOr<std::shared_ptr<SSL_CTX>> Get();

  const RedisTlsOptions options_;
  mutable absl::Mutex mu_;
  std::shared_ptr<SSL_CTX> ctx_ ABSL_GUARDED_BY(mu_);
  Stamp stamp_ ABSL_GUARDED_BY(mu_);
  absl::Status last_error_ ABSL_GUARDED_BY(mu_);
  int64_t loads_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace videotask::fleet

#endif  // VIDEOTASK_SERVER_FLEET_REDIS_TLS_H_
