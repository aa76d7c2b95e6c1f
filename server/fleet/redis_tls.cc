#include "server/fleet/redis_tls.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace videotask::fleet {
namespace {

// The reason of the oldest queued OpenSSL error, as OpenSSL words it, and
// clears the queue. Reasons are fixed texts ("certificate verify failed",
// "wrong version number", "tlsv13 alert certificate required"): never key
// material.
std::string TakeOpenSslReason() {
  const unsigned long e = ERR_get_error();
  ERR_clear_error();
  if (e == 0) return "";
  const char* reason = ERR_reason_error_string(e);
  if (reason != nullptr) return reason;
  return absl::StrCat("OpenSSL error ", e);
}

// "" when `path` is a readable regular file, else why not.
std::string Unreadable(const std::string& path) {
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return std::strerror(errno);
  struct stat st;
  const bool regular = fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
  close(fd);
  return regular ? "" : "not a regular file";
}

bool IsIpAddress(const std::string& host) {
  unsigned char buf[sizeof(in6_addr)];
  return inet_pton(AF_INET, host.c_str(), buf) == 1 || inet_pton(AF_INET6, host.c_str(), buf) == 1;
}

}  // namespace

// ---- TlsSession -----------------------------------------------------------

TlsSession::~TlsSession() { SSL_free(ssl_); }

absl::Status TlsSession::Error(int rc, const char* op, Want* want) {
  const int err = SSL_get_error(ssl_, rc);
  *want = Want::kNothing;
  switch (err) {
    case SSL_ERROR_WANT_READ:
      *want = Want::kRead;
      return absl::OkStatus();
    case SSL_ERROR_WANT_WRITE:
      *want = Want::kWrite;
      return absl::OkStatus();
    case SSL_ERROR_ZERO_RETURN:
      ERR_clear_error();
      return absl::UnavailableError(absl::StrCat(op, ": closed by the server"));
    case SSL_ERROR_SYSCALL: {
      const int saved = errno;
      std::string reason = TakeOpenSslReason();
      if (reason.empty()) reason = saved != 0 ? std::strerror(saved) : "closed by the server";
      return absl::UnavailableError(absl::StrCat(op, ": ", reason));
    }
    default: {
      std::string reason = TakeOpenSslReason();
      const long verify = SSL_get_verify_result(ssl_);
      if (verify != X509_V_OK) {
        reason = absl::StrCat("certificate verify failed: ", X509_verify_cert_error_string(verify));
      }
      if (reason.empty()) reason = absl::StrCat("SSL error ", err);
      return absl::UnavailableError(absl::StrCat(op, ": ", reason));
    }
  }
}

absl::Status TlsSession::Handshake(bool* done, Want* want) {
  ERR_clear_error();
  errno = 0;
  const int rc = SSL_do_handshake(ssl_);
  *done = rc == 1;
  if (*done) {
    *want = Want::kNothing;
    return absl::OkStatus();
  }
  return Error(rc, "TLS handshake failed", want);
}

absl::StatusOr<size_t> TlsSession::Read(char* buf, size_t n, Want* want) {
  ERR_clear_error();
  errno = 0;
  size_t got = 0;
  const int rc = SSL_read_ex(ssl_, buf, n, &got);
  if (rc == 1) {
    *want = Want::kNothing;
    return got;
  }
  absl::Status s = Error(rc, "TLS", want);
  if (!s.ok()) return s;
  return size_t{0};
}

absl::StatusOr<size_t> TlsSession::Write(const char* buf, size_t n, Want* want) {
  ERR_clear_error();
  errno = 0;
  size_t wrote = 0;
  const int rc = SSL_write_ex(ssl_, buf, n, &wrote);
  if (rc == 1) {
    *want = Want::kNothing;
    return wrote;
  }
  absl::Status s = Error(rc, "TLS", want);
  if (!s.ok()) return s;
  return size_t{0};
}

std::string TlsSession::Protocol() const { return SSL_get_version(ssl_); }

// ---- RedisTlsContext ------------------------------------------------------

absl::StatusOr<std::unique_ptr<RedisTlsContext>> RedisTlsContext::Create(RedisTlsOptions options) {
  if (options.cert_file.empty() != options.key_file.empty()) {
    return absl::InvalidArgumentError(
        "Redis TLS: a client certificate needs both the certificate and the key file");
  }
  std::unique_ptr<RedisTlsContext> c(new RedisTlsContext(std::move(options)));
  const Stamp stamp = c->Current();
  absl::StatusOr<std::shared_ptr<SSL_CTX>> ctx = c->Build();
  if (!ctx.ok()) return ctx.status();
  absl::MutexLock lock(&c->mu_);
  c->ctx_ = *std::move(ctx);
  c->stamp_ = stamp;
  c->loads_ = 1;
  return c;
}

RedisTlsContext::~RedisTlsContext() = default;

RedisTlsContext::Stamp RedisTlsContext::Current() const {
  return Stamp{FileVersion::At(options_.ca_file), FileVersion::At(options_.cert_file),
               FileVersion::At(options_.key_file)};
}

absl::StatusOr<std::shared_ptr<SSL_CTX>> RedisTlsContext::Build() const {
  ERR_clear_error();
  std::shared_ptr<SSL_CTX> ctx(SSL_CTX_new(TLS_client_method()), SSL_CTX_free);
  if (ctx == nullptr) {
    return absl::InternalError(absl::StrCat("Redis TLS: ", TakeOpenSslReason()));
  }
  SSL_CTX_set_min_proto_version(ctx.get(), TLS1_2_VERSION);
  SSL_CTX_set_mode(ctx.get(), SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER, nullptr);
  if (!options_.ca_file.empty()) {
    const std::string what = absl::StrCat("Redis CA file ", options_.ca_file);
    if (std::string why = Unreadable(options_.ca_file); !why.empty()) {
      return absl::FailedPreconditionError(absl::StrCat(what, ": ", why));
    }
    if (SSL_CTX_load_verify_locations(ctx.get(), options_.ca_file.c_str(), nullptr) != 1) {
      return absl::FailedPreconditionError(
          absl::StrCat(what, ": no PEM certificate could be read (", TakeOpenSslReason(), ")"));
    }
  } else if (SSL_CTX_set_default_verify_paths(ctx.get()) != 1) {
    return absl::FailedPreconditionError(
        absl::StrCat("Redis TLS: cannot load the system CAs: ", TakeOpenSslReason()));
  }
  if (!options_.cert_file.empty()) {
    const std::string what = absl::StrCat("Redis client certificate file ", options_.cert_file);
    if (std::string why = Unreadable(options_.cert_file); !why.empty()) {
      return absl::FailedPreconditionError(absl::StrCat(what, ": ", why));
    }
    if (SSL_CTX_use_certificate_chain_file(ctx.get(), options_.cert_file.c_str()) != 1) {
      return absl::FailedPreconditionError(
          absl::StrCat(what, ": no PEM certificate could be read (", TakeOpenSslReason(), ")"));
    }
    const std::string key_what = absl::StrCat("Redis client key file ", options_.key_file);
    if (std::string why = Unreadable(options_.key_file); !why.empty()) {
      return absl::FailedPreconditionError(absl::StrCat(key_what, ": ", why));
    }
    if (SSL_CTX_use_PrivateKey_file(ctx.get(), options_.key_file.c_str(), SSL_FILETYPE_PEM) != 1) {
      const std::string reason = TakeOpenSslReason();
      if (reason == "key values mismatch") {
        return absl::FailedPreconditionError(
            absl::StrCat(key_what, ": the key does not match the certificate"));
      }
      return absl::FailedPreconditionError(absl::StrCat(
          key_what, ": no unencrypted PEM private key could be read (", reason, ")"));
    }
    if (SSL_CTX_check_private_key(ctx.get()) != 1) {
      ERR_clear_error();
      return absl::FailedPreconditionError(
          absl::StrCat(key_what, ": the key does not match the certificate"));
    }
  }
  return ctx;
}

absl::StatusOr<std::shared_ptr<SSL_CTX>> RedisTlsContext::Get() {
  const Stamp now = Current();
  {
    absl::MutexLock lock(&mu_);
    if (now == stamp_ && ctx_ != nullptr) return ctx_;
  }
  // Changed (or a rotation is half done): build outside the lock.
  absl::StatusOr<std::shared_ptr<SSL_CTX>> ctx = Build();
  absl::MutexLock lock(&mu_);
  if (!ctx.ok()) {
    last_error_ = ctx.status();
    if (ctx_ == nullptr) return ctx.status();
    return ctx_;  // the last good one; retried at the next attempt
  }
  ctx_ = *std::move(ctx);
  stamp_ = now;
  last_error_ = absl::OkStatus();
  ++loads_;
  return ctx_;
}

absl::StatusOr<std::unique_ptr<TlsSession>> RedisTlsContext::NewSession(int fd,
                                                                       const std::string& host) {
  absl::StatusOr<std::shared_ptr<SSL_CTX>> ctx = Get();
  if (!ctx.ok()) return ctx.status();
  ERR_clear_error();
  SSL* ssl = SSL_new(ctx->get());  // holds its own reference to the context
  if (ssl == nullptr) return absl::InternalError(absl::StrCat("Redis TLS: ", TakeOpenSslReason()));
  std::unique_ptr<TlsSession> session(new TlsSession(ssl));
  const std::string& name = options_.server_name.empty() ? host : options_.server_name;
  bool ok = SSL_set_fd(ssl, fd) == 1;
  if (IsIpAddress(name)) {
    ok = ok && X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), name.c_str()) == 1;
  } else {
    SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    ok = ok && SSL_set_tlsext_host_name(ssl, name.c_str()) == 1 &&
         SSL_set1_host(ssl, name.c_str()) == 1;
  }
  if (!ok) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Redis TLS: cannot use the server name \"", name, "\": ", TakeOpenSslReason()));
  }
  SSL_set_connect_state(ssl);
  return session;
}

absl::Status RedisTlsContext::last_error() const {
  absl::MutexLock lock(&mu_);
  return last_error_;
}

int64_t RedisTlsContext::loads() const {
  absl::MutexLock lock(&mu_);
  return loads_;
}

}  // namespace videotask::fleet
