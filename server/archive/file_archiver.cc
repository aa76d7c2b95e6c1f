#include "server/archive/file_archiver.h"

#include <curl/curl.h>
#include <dirent.h>
#include <errno.h>
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <mutex>
#include <optional>
#include <tuple>
#include <utility>

#include "absl/random/distributions.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "nlohmann/json.hpp"
#include "server/base/log.h"
#include "server/base/task_id.h"

namespace videotask {

using videotask::v1::VideoArchive;
using videotask::v1::VideoTask;

namespace {

constexpr size_t kReadBuffer = 128 << 10;

void ToTimestamp(absl::Time t, google::protobuf::Timestamp* out) {
  const int64_t nanos = absl::ToUnixNanos(t);
  int64_t secs = nanos / 1000000000;
  int64_t rem = nanos % 1000000000;
  if (rem < 0) {
    rem += 1000000000;
    --secs;
  }
  out->set_seconds(secs);
  out->set_nanos(static_cast<int32_t>(rem));
}

absl::Time FromTimestamp(const google::protobuf::Timestamp& t) {
  return absl::FromUnixSeconds(t.seconds()) + absl::Nanoseconds(t.nanos());
}

std::string Hex(const unsigned char* p, size_t n) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(n * 2);
  for (size_t i = 0; i < n; ++i) {
    out.push_back(kDigits[p[i] >> 4]);
    out.push_back(kDigits[p[i] & 15]);
  }
  return out;
}

// A streaming SHA-256 (OpenSSL's EVP).
class Sha256 {
 public:
  Sha256() : ctx_(EVP_MD_CTX_new()) {
    if (ctx_ != nullptr && EVP_DigestInit_ex(ctx_, EVP_sha256(), nullptr) != 1) {
      EVP_MD_CTX_free(ctx_);
      ctx_ = nullptr;
    }
  }
  ~Sha256() { EVP_MD_CTX_free(ctx_); }
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;
  bool ok() const { return ctx_ != nullptr; }
  void Update(const void* p, size_t n) { EVP_DigestUpdate(ctx_, p, n); }
  std::string HexDigest() {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    EVP_DigestFinal_ex(ctx_, md, &len);
    return Hex(md, len);
  }

 private:
  EVP_MD_CTX* ctx_;
};

// Writes all of `n` bytes; false with errno set on failure.
bool WriteAll(int fd, const char* p, size_t n) {
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

// 0, or the errno of a failed open or fsync of `dir`.
int FsyncDirWith(const std::string& dir, const std::function<int(int)>& fsync_fn) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return errno;
  const int rc = fsync_fn ? fsync_fn(fd) : ::fsync(fd);
  const int err = rc == 0 ? 0 : (errno != 0 ? errno : EIO);
  ::close(fd);
  return err;
}

constexpr char kStateDir[] = ".archive-state";
// Records of published copies older than this are removed at start.
constexpr absl::Duration kRecordKeep = absl::Hours(24);

bool IsDiskFull(int err) { return err == ENOSPC || err == EFBIG || err == EDQUOT; }

// `file://` + the absolute path, escaped except for unreserved characters and '/'.
std::string FileUri(const std::string& path) {
  std::string out = "file://";
  for (unsigned char c : path) {
    if (absl::ascii_isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~' || c == '/') {
      out.push_back(static_cast<char>(c));
    } else {
      absl::StrAppendFormat(&out, "%%%02X", c);
    }
  }
  return out;
}

// A file-name extension of 1-8 alphanumerics, lowercased; "" otherwise.
std::string CleanExt(absl::string_view ext) {
  if (ext.empty() || ext.size() > 8) return "";
  for (char c : ext) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c))) return "";
  }
  return absl::AsciiStrToLower(ext);
}

// The extension of the last segment of a URL's path ("" when none).
std::string ExtFromUrl(const std::string& url) {
  CURLU* u = curl_url();
  if (u == nullptr) return "";
  std::string ext;
  char* path = nullptr;
  if (curl_url_set(u, CURLUPART_URL, url.c_str(), 0) == CURLUE_OK &&
      curl_url_get(u, CURLUPART_PATH, &path, 0) == CURLUE_OK && path != nullptr) {
    absl::string_view p(path);
    const size_t slash = p.rfind('/');
    absl::string_view last = slash == absl::string_view::npos ? p : p.substr(slash + 1);
    const size_t dot = last.rfind('.');
    if (dot != absl::string_view::npos && dot > 0) ext = CleanExt(last.substr(dot + 1));
  }
  curl_free(path);
  curl_url_cleanup(u);
  return ext;
}

std::string ExtFromContentType(absl::string_view ct) {
  ct = ct.substr(0, ct.find(';'));
  const std::string t = absl::AsciiStrToLower(absl::StripAsciiWhitespace(ct));
  static const std::pair<const char*, const char*> kTypes[] = {
      {"video/mp4", "mp4"},        {"video/webm", "webm"}, {"video/quicktime", "mov"},
      {"video/x-matroska", "mkv"}, {"video/mpeg", "mpg"},  {"video/x-msvideo", "avi"},
      {"video/ogg", "ogv"},        {"video/mp2t", "ts"},   {"image/gif", "gif"},
      {"video/3gpp", "3gp"},
  };
  for (const auto& [type, ext] : kTypes) {
    if (t == type) return ext;
  }
  return "";
}

struct UrlCheck {
  bool ok = false;
  std::string error;  // never contains the URL's query (it may hold a signature)
};

// https://; or, for the first URL with --archive_allow_loopback, http:// to
// a loopback host. (Addresses are checked again once resolved.)
UrlCheck CheckUrl(const std::string& url, bool first, bool allow_loopback) {
  UrlCheck out;
  CURLU* u = curl_url();
  if (u == nullptr) {
    out.error = "out of memory";
    return out;
  }
  char* scheme = nullptr;
  char* host = nullptr;
  if (curl_url_set(u, CURLUPART_URL, url.c_str(), 0) != CURLUE_OK ||
      curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
      curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK) {
    out.error = "not a valid absolute URL";
  } else if (absl::EqualsIgnoreCase(scheme, "https")) {
    out.ok = true;
  } else if (absl::EqualsIgnoreCase(scheme, "http") && first && allow_loopback &&
             IsLoopbackAddress(host)) {
    out.ok = true;
  } else {
    out.error = absl::StrCat(
        "refused ", scheme, "://", host,
        ": only https:// is followed (plain http:// only to a loopback host, for the first URL, "
        "with --archive_allow_loopback)");
  }
  curl_free(scheme);
  curl_free(host);
  curl_url_cleanup(u);
  return out;
}

std::string AddressText(const struct sockaddr* sa) {
  char buf[INET6_ADDRSTRLEN] = {0};
  if (sa->sa_family == AF_INET) {
    inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(sa)->sin_addr, buf, sizeof(buf));
  } else if (sa->sa_family == AF_INET6) {
    inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6*>(sa)->sin6_addr, buf, sizeof(buf));
  }
  return buf;
}

std::string NonPublicV4(uint32_t a) {  // host order
  auto in = [a](uint32_t net, int bits) {
    const uint32_t mask = bits == 0 ? 0 : ~uint32_t{0} << (32 - bits);
    return (a & mask) == net;
  };
  if (in(0x7f000000, 8)) return "loopback";
  if (in(0xa9fe0000, 16)) return "link-local";
  if (in(0x0a000000, 8) || in(0xac100000, 12) || in(0xc0a80000, 16) || in(0x64400000, 10)) {
    return "private";
  }
  if (in(0x00000000, 8)) return "unspecified";
  if (in(0xe0000000, 4)) return "multicast";
  if (in(0xf0000000, 4) || in(0xc0000000, 24) || in(0xc0000200, 24) || in(0xc6336400, 24) ||
      in(0xcb007100, 24) || in(0xc6120000, 15)) {
    return "reserved";
  }
  return "";
}

// The URL without query and fragment, for messages (signed URLs carry
// credentials for the video in their query).
std::string Redacted(const std::string& url) {
  const size_t cut = url.find_first_of("?#");
  return cut == std::string::npos ? url : url.substr(0, cut) + "?...";
}

int64_t ToMillis(absl::Duration d) { return std::max<int64_t>(1, absl::ToInt64Milliseconds(d)); }

std::once_flag curl_once;

}  // namespace

std::string NonPublicAddressKind(const struct sockaddr* sa) {
  if (sa == nullptr) return "reserved";
  if (sa->sa_family == AF_INET) {
    return NonPublicV4(ntohl(reinterpret_cast<const sockaddr_in*>(sa)->sin_addr.s_addr));
  }
  if (sa->sa_family != AF_INET6) return "reserved";
  const unsigned char* b = reinterpret_cast<const sockaddr_in6*>(sa)->sin6_addr.s6_addr;
  auto v4_at = [b](int i) {
    return (uint32_t{b[i]} << 24) | (uint32_t{b[i + 1]} << 16) | (uint32_t{b[i + 2]} << 8) |
           uint32_t{b[i + 3]};
  };
  auto zero = [b](int from, int to) {
    for (int i = from; i < to; ++i) {
      if (b[i] != 0) return false;
    }
    return true;
  };
  if (zero(0, 15) && b[15] == 1) return "loopback";
  if (zero(0, 16)) return "unspecified";
  if (zero(0, 10) && b[10] == 0xff && b[11] == 0xff) return NonPublicV4(v4_at(12));  // ::ffff:v4
  if (zero(0, 12)) return "reserved";  // ::v4 (deprecated IPv4-compatible)
  if (b[0] == 0x00 && b[1] == 0x64 && b[2] == 0xff && b[3] == 0x9b && zero(4, 12)) {
    const std::string v4 = NonPublicV4(v4_at(12));  // 64:ff9b::/96 (NAT64)
    return v4;
  }
  if (b[0] == 0x20 && b[1] == 0x02) return NonPublicV4(v4_at(2));  // 2002::/16 (6to4)
  if ((b[0] & 0xfe) == 0xfc) return "private";                     // fc00::/7
  if (b[0] == 0xfe && (b[1] & 0xc0) == 0x80) return "link-local";  // fe80::/10
  if (b[0] == 0xfe && (b[1] & 0xc0) == 0xc0) return "private";     // fec0::/10 (site-local)
  if (b[0] == 0xff) return "multicast";
  if (b[0] == 0x20 && b[1] == 0x01 && b[2] == 0x0d && b[3] == 0xb8) return "reserved";
  return "";
}

std::string VideoExtensionFromUrl(const std::string& url) { return ExtFromUrl(url); }

absl::Status ValidateFileArchiverOptions(const FileArchiverOptions& o) {
  if (o.dir.empty()) return absl::InvalidArgumentError("--archive_dir must not be empty");
  if (o.max_bytes <= 0) return absl::InvalidArgumentError("--archive_max_bytes must be positive");
  if (o.timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("--archive_timeout must be positive");
  }
  if (o.max_concurrent < 1 || o.max_concurrent > 256) {
    return absl::InvalidArgumentError("archive max_concurrent must be in [1, 256]");
  }
  if (o.initial_backoff <= absl::ZeroDuration() || o.max_backoff < o.initial_backoff) {
    return absl::InvalidArgumentError("archive backoff: need 0 < initial_backoff <= max_backoff");
  }
  if (o.connect_timeout <= absl::ZeroDuration() || o.stall_timeout < absl::Seconds(1)) {
    return absl::InvalidArgumentError(
        "archive connect_timeout must be positive and stall_timeout at least 1s");
  }
  if (o.max_redirects < 0 || o.max_redirects > 20) {
    return absl::InvalidArgumentError("archive max_redirects must be in [0, 20]");
  }
  if (o.min_bytes_per_second < 0) {
    return absl::InvalidArgumentError("--archive_min_bytes_per_second must not be negative");
  }
  if (o.max_client_error_attempts < 1) {
    return absl::InvalidArgumentError("archive max_client_error_attempts must be at least 1");
  }
  return absl::OkStatus();
}

// ---- One attempt ------------------------------------------------------------

struct FileArchiver::Outcome {
  bool ok = false;
  VideoArchive archive;
  bool retryable = false;
  bool client_error = false;
  bool claimed_elsewhere = false;  // another sidecar holds the claim: wait
  std::string reason;  // metrics label
  std::string error;   // for archive_error

  // Marks this outcome failed and returns a copy of it to return.
  Outcome Failed(const std::string& why, std::string message, bool retry) {
    ok = false;
    reason = why;
    error = std::move(message);
    retryable = retry;
    return *this;
  }
};

// The state of one download, shared with libcurl's callbacks.
class FileArchiver::Transfer {
 public:
  Transfer(FileArchiver* owner, int fd, absl::Time deadline)
      : owner_(owner), fd_(fd), deadline_(deadline) {}

  CURL* easy = nullptr;
  Sha256 sha;
  int64_t bytes = 0;  // written to the file
  bool too_large = false;
  bool too_slow = false;
  int write_errno = 0;  // a failed write()
  int hop = 0;          // 0: the first URL
  std::string refused;  // an address the open-socket check refused
  char error[CURL_ERROR_SIZE] = {0};

  // Starts a hop: the throughput window starts again.
  void NewHop(int h) {
    hop = h;
    window_start_ = owner_->clock_->Monotonic();
    window_bytes_ = 0;
  }

  static size_t OnBody(char* p, size_t size, size_t n, void* self) {
    auto* t = static_cast<Transfer*>(self);
    const size_t len = size * n;
    long code = 0;
    curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &code);
    if (code != 200) return len;  // a redirect's or an error's body: dropped
    if (t->bytes + static_cast<int64_t>(len) > t->owner_->options_.max_bytes) {
      t->too_large = true;
      return 0;
    }
    if (!WriteAll(t->fd_, p, len)) {
      t->write_errno = errno;
      return 0;
    }
    t->sha.Update(p, len);
    t->bytes += static_cast<int64_t>(len);
    if (t->owner_->bytes_total_ != nullptr) t->owner_->bytes_total_->Increment(len);
    return len;
  }

  static int OnProgress(void* self, curl_off_t, curl_off_t dlnow, curl_off_t, curl_off_t) {
    auto* t = static_cast<Transfer*>(self);
    // The throughput floor, per stall_timeout window, on the injected clock.
    const FileArchiverOptions& o = t->owner_->options_;
    const absl::Time now = t->owner_->clock_->Monotonic();
    if (o.min_bytes_per_second > 0 && now - t->window_start_ >= o.stall_timeout) {
      const double floor = absl::ToDoubleSeconds(now - t->window_start_) *
                           static_cast<double>(o.min_bytes_per_second);
      if (static_cast<double>(dlnow - t->window_bytes_) < floor) {
        t->too_slow = true;
        return 1;
      }
      t->window_start_ = now;
      t->window_bytes_ = dlnow;
    }
    return t->owner_->Aborted(t->deadline_) ? 1 : 0;
  }

  // CURLOPT_OPENSOCKETFUNCTION: the socket for an address libcurl resolved,
  // unless the address is not public (loopback allowed for the first URL
  // with allow_loopback). Checking here is race-free against DNS rebinding:
  // this is the address connect() gets, with no lookup in between.
  static curl_socket_t OnOpenSocket(void* self, curlsocktype purpose, struct curl_sockaddr* a) {
    auto* t = static_cast<Transfer*>(self);
    if (purpose != CURLSOCKTYPE_IPCXN) return CURL_SOCKET_BAD;
    const std::string kind = NonPublicAddressKind(&a->addr);
    if (!kind.empty() &&
        !(kind == "loopback" && t->hop == 0 && t->owner_->options_.allow_loopback)) {
      t->refused = absl::StrCat(AddressText(&a->addr), " (", kind, ")");
      return CURL_SOCKET_BAD;
    }
    return ::socket(a->family, a->socktype | SOCK_CLOEXEC, a->protocol);
  }

 private:
  FileArchiver* owner_;
  int fd_;
  absl::Time deadline_;
  absl::Time window_start_;
  curl_off_t window_bytes_ = 0;
};

bool FileArchiver::Aborted(absl::Time deadline) const {
  return stopping_.load(std::memory_order_relaxed) || clock_->Monotonic() >= deadline;
}

namespace {

struct Meta {
  std::string file;
  std::string sha256;
  int64_t size = 0;
  std::string content_type;
  absl::Time archive_time;
};

// The metadata at `path` when it is well-formed and for `id`.
std::optional<Meta> ReadMeta(const std::string& path, const std::string& id) {
  FILE* f = std::fopen(path.c_str(), "re");
  if (f == nullptr) return std::nullopt;
  std::string text;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), f)) > 0 && text.size() < 65536) text.append(buf, n);
  std::fclose(f);
  nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
  if (!j.is_object()) return std::nullopt;
  auto str = [&j](const char* k) {
    return j.contains(k) && j[k].is_string() ? j[k].get<std::string>() : std::string();
  };
  Meta m;
  m.file = str("file");
  m.sha256 = str("sha256");
  m.content_type = str("content_type");
  if (str("id") != id || m.file.empty() || m.file.find('/') != std::string::npos ||
      m.file[0] == '.' || !absl::StartsWith(m.file, id + ".") ||
      m.file == absl::StrCat(id, ".meta.json") || m.sha256.size() != 64 ||
      !j.contains("size_bytes") || !j["size_bytes"].is_number_integer()) {
    return std::nullopt;
  }
  m.size = j["size_bytes"].get<int64_t>();
  std::string err;
  if (!absl::ParseTime(absl::RFC3339_full, str("archive_time"), &m.archive_time, &err)) {
    return std::nullopt;
  }
  return m;
}

bool Exists(const std::string& path) {
  struct stat st;
  return ::lstat(path.c_str(), &st) == 0;
}

}  // namespace

int FileArchiver::SyncDir() const { return FsyncDirWith(options_.dir, options_.fsync_dir); }

FileArchiver::Outcome FileArchiver::TryReuse(const std::string& id) {
  Outcome out;
  std::optional<Meta> m = ReadMeta(absl::StrCat(options_.dir, "/", id, ".meta.json"), id);
  if (!m.has_value()) return out;
  const std::string path = absl::StrCat(options_.dir, "/", m->file);
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return out;
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size != m->size) {
    ::close(fd);
    return out;
  }
  // The bytes must still be what the metadata says (a file replaced or cut
  // since is downloaded again).
  Sha256 h;
  std::unique_ptr<char[]> block(new char[kReadBuffer]);
  bool read_ok = h.ok();
  while (read_ok) {
    const ssize_t r = ::read(fd, block.get(), kReadBuffer);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) {
      read_ok = r == 0;
      break;
    }
    h.Update(block.get(), static_cast<size_t>(r));
    if (stopping_.load(std::memory_order_relaxed)) read_ok = false;
  }
  ::close(fd);
  if (!read_ok || h.HexDigest() != m->sha256) return out;
  out.ok = true;
  out.archive.set_uri(FileUri(path));
  out.archive.set_sha256(m->sha256);
  out.archive.set_size_bytes(m->size);
  out.archive.set_content_type(m->content_type);
  ToTimestamp(m->archive_time, out.archive.mutable_archive_time());
  return out;
}

FileArchiver::Outcome FileArchiver::FromRecord(const std::string& id) {
  Outcome out;
  std::optional<Meta> m =
      ReadMeta(absl::StrCat(options_.dir, "/", kStateDir, "/", id, ".done"), id);
  if (!m.has_value()) return out;
  // Only when the copy was taken away (by the worker): a copy that is there
  // but no longer matches is made again.
  const std::string path = absl::StrCat(options_.dir, "/", m->file);
  if (Exists(path) || Exists(absl::StrCat(options_.dir, "/", id, ".meta.json"))) return out;
  out.ok = true;
  out.archive.set_uri(FileUri(path));
  out.archive.set_sha256(m->sha256);
  out.archive.set_size_bytes(m->size);
  out.archive.set_content_type(m->content_type);
  ToTimestamp(m->archive_time, out.archive.mutable_archive_time());
  return out;
}

FileArchiver::Outcome FileArchiver::RunAttempt(const std::string& id, const std::string& url,
                                               absl::Time deadline) {
  Outcome out;
  auto fail = [&out](const std::string& reason, std::string error, bool retryable) {
    return out.Failed(reason, std::move(error), retryable);
  };
  if (!ValidateTaskId(id).ok()) return fail("invalid", "the task id is not a valid id", false);
  if (url.empty()) return fail("invalid", "the task has no video_url", false);
  auto reused = [this, &fail](Outcome o) {
    // What is reported must be durable, whoever wrote it.
    if (const int err = SyncDir(); err != 0) {
      return fail("io_error", absl::StrCat("fsync of the archive dir: ", strerror(err)), true);
    }
    reused_.fetch_add(1);
    return o;
  };
  if (Outcome reuse = TryReuse(id); reuse.ok) return reused(std::move(reuse));
  if (UrlCheck c = CheckUrl(url, true, options_.allow_loopback); !c.ok) {
    return fail("insecure_url", absl::StrCat("video_url ", c.error), false);
  }

  // The claim: one sidecar at a time downloads a task into a shared
  // directory. An flock() on the claim file: the kernel (or the NFS server,
  // when the lease of a crashed client ends) drops it with its holder.
  const std::string claim = absl::StrCat(options_.dir, "/", kStateDir, "/", id, ".claim");
  int claim_fd = -1;
  while (claim_fd < 0) {
    claim_fd = ::open(claim.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (claim_fd < 0) {
      const int err = errno;
      if (IsDiskFull(err)) {
        return fail("disk_full", absl::StrCat("archive dir: ", strerror(err)), false);
      }
      return fail("io_error",
                  absl::StrCat("cannot claim the task in the archive dir: ", strerror(err)), true);
    }
    if (::flock(claim_fd, LOCK_EX | LOCK_NB) != 0) {
      const int err = errno;
      ::close(claim_fd);
      if (err == EWOULDBLOCK) {
        out = fail("claimed", "another sidecar sharing the archive dir is archiving this task",
                   true);
        out.claimed_elsewhere = true;
        return out;
      }
      return fail("io_error", absl::StrCat("cannot lock the claim: ", strerror(err)), true);
    }
    // The holder before may have removed the file between our open and lock:
    // then the lock is on a file nobody else will look at; again.
    struct stat held, named;
    if (::fstat(claim_fd, &held) != 0 || ::stat(claim.c_str(), &named) != 0 ||
        held.st_ino != named.st_ino || held.st_dev != named.st_dev) {
      ::close(claim_fd);
      claim_fd = -1;
    }
  }
  char host[256] = {0};
  ::gethostname(host, sizeof(host) - 1);
  const std::string who = absl::StrCat(host, " pid ", ::getpid(), "\n");
  if (::ftruncate(claim_fd, 0) == 0) WriteAll(claim_fd, who.data(), who.size());  // for people
  // Whoever held the claim before may have published it just now, or may
  // have published it and seen the worker take it away since.
  if (Outcome reuse = TryReuse(id); reuse.ok) {
    out = reused(std::move(reuse));
  } else if (Outcome record = FromRecord(id); record.ok) {
    out = reused(std::move(record));
  } else {
    out = Download(id, url, deadline);
  }
  ::unlink(claim.c_str());  // before the unlock: a waiter then finds a new file
  ::close(claim_fd);
  return out;
}

FileArchiver::Outcome FileArchiver::Download(const std::string& id, const std::string& url,
                                             absl::Time deadline) {
  Outcome out;
  auto fail = [&out](const std::string& reason, std::string error, bool retryable) {
    return out.Failed(reason, std::move(error), retryable);
  };
  // The temporary file, in the final directory so that rename() is atomic.
  std::string tmp;
  int fd = -1;
  {
    absl::MutexLock lock(&mu_);
    for (int i = 0; i < 5 && fd < 0; ++i) {
      tmp = absl::StrFormat("%s/.%s.%016x.part", options_.dir, id, absl::Uniform<uint64_t>(rng_));
      fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
      if (fd < 0 && errno != EEXIST) break;
    }
  }
  if (fd < 0) {
    const int err = errno;
    if (IsDiskFull(err))
      return fail("disk_full", absl::StrCat("archive dir: ", strerror(err)), false);
    return fail("io_error",
                absl::StrCat("cannot create a file in the archive dir: ", strerror(err)), true);
  }
  auto discard = [&fd, &tmp] {
    if (fd >= 0) ::close(fd);
    fd = -1;
    ::unlink(tmp.c_str());
  };

  Transfer t(this, fd, deadline);
  if (!t.sha.ok()) {
    discard();
    return fail("io_error", "SHA-256 unavailable", true);
  }
  struct curl_slist* resolve = nullptr;
  for (const std::string& r : options_.resolve) resolve = curl_slist_append(resolve, r.c_str());
  struct SlistFree {
    curl_slist* l;
    ~SlistFree() { curl_slist_free_all(l); }
  } free_resolve{resolve};
  std::string current = url;
  std::string content_type;
  int hops = 0;
  downloads_.fetch_add(1);
  while (true) {
    t.NewHop(hops);
    CURL* easy = curl_easy_init();
    if (easy == nullptr) {
      discard();
      return fail("io_error", "curl_easy_init failed", true);
    }
    t.easy = easy;
    t.error[0] = '\0';
    const absl::Duration left = deadline - clock_->Monotonic();
    curl_easy_setopt(easy, CURLOPT_URL, current.c_str());
    curl_easy_setopt(easy, CURLOPT_HTTPGET, 1L);
    curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(easy, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(easy, CURLOPT_FOLLOWLOCATION, 0L);  // each hop is checked below
    curl_easy_setopt(easy, CURLOPT_PROXY, "");           // no proxy from the environment
    curl_easy_setopt(easy, CURLOPT_OPENSOCKETFUNCTION, &Transfer::OnOpenSocket);
    curl_easy_setopt(easy, CURLOPT_OPENSOCKETDATA, static_cast<void*>(&t));
    if (resolve != nullptr) curl_easy_setopt(easy, CURLOPT_RESOLVE, resolve);
    curl_easy_setopt(easy, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(easy, CURLOPT_SSL_VERIFYHOST, 2L);
    if (!options_.ca_file.empty()) curl_easy_setopt(easy, CURLOPT_CAINFO, options_.ca_file.c_str());
    curl_easy_setopt(easy, CURLOPT_USERAGENT, options_.user_agent.c_str());
    curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT_MS, ToMillis(options_.connect_timeout));
    curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, ToMillis(left));
    curl_easy_setopt(easy, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(easy, CURLOPT_LOW_SPEED_TIME,
                     static_cast<long>(absl::ToInt64Seconds(options_.stall_timeout)));
    curl_easy_setopt(easy, CURLOPT_MAXFILESIZE_LARGE, static_cast<curl_off_t>(options_.max_bytes));
    curl_easy_setopt(easy, CURLOPT_BUFFERSIZE, 128L << 10);
    curl_easy_setopt(easy, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, &Transfer::OnBody);
    curl_easy_setopt(easy, CURLOPT_WRITEDATA, static_cast<void*>(&t));
    curl_easy_setopt(easy, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(easy, CURLOPT_XFERINFOFUNCTION, &Transfer::OnProgress);
    curl_easy_setopt(easy, CURLOPT_XFERINFODATA, static_cast<void*>(&t));
    curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, t.error);
    const CURLcode rc = curl_easy_perform(easy);
    long code = 0;
    curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &code);
    char* ct = nullptr;
    curl_easy_getinfo(easy, CURLINFO_CONTENT_TYPE, &ct);
    content_type = ct != nullptr ? ct : "";
    char* location = nullptr;
    curl_easy_getinfo(easy, CURLINFO_REDIRECT_URL, &location);
    const std::string next = location != nullptr ? location : "";
    curl_easy_cleanup(easy);
    t.easy = nullptr;

    if (rc != CURLE_OK) {
      discard();
      if (t.too_large || rc == CURLE_FILESIZE_EXCEEDED) {
        return fail(
            "too_large",
            absl::StrCat("the video is larger than --archive_max_bytes (", options_.max_bytes, ")"),
            false);
      }
      if (t.write_errno != 0) {
        if (IsDiskFull(t.write_errno)) {
          return fail("disk_full", absl::StrCat("archive dir full: ", strerror(t.write_errno)),
                      false);
        }
        return fail("io_error", absl::StrCat("writing the archive: ", strerror(t.write_errno)),
                    true);
      }
      if (!t.refused.empty()) {
        return fail("insecure_url",
                    absl::StrCat(hops == 0 ? "video_url " : "redirect ", Redacted(current),
                                 " refused: it resolves to ", t.refused,
                                 ", not a public address",
                                 hops == 0 && !options_.allow_loopback
                                     ? " (a loopback video host needs --archive_allow_loopback)"
                                     : ""),
                    false);
      }
      if (stopping_.load()) return fail("shutdown", "archiving stopped", false);
      if (t.too_slow) {
        return fail("slow",
                    absl::StrCat("downloading ", Redacted(current), ": fewer than ",
                                 options_.min_bytes_per_second,
                                 " bytes/s over ", absl::FormatDuration(options_.stall_timeout),
                                 " (--archive_min_bytes_per_second)"),
                    true);
      }
      if (rc == CURLE_ABORTED_BY_CALLBACK ||
          (rc == CURLE_OPERATION_TIMEDOUT && clock_->Monotonic() >= deadline)) {
        return fail("timeout", "the archive timeout ran out during the download", false);
      }
      const std::string detail = t.error[0] != '\0' ? t.error : curl_easy_strerror(rc);
      return fail(rc == CURLE_OPERATION_TIMEDOUT ? "stalled" : "network",
                  absl::StrCat("downloading ", Redacted(current), ": ", detail), true);
    }
    if (code >= 300 && code < 400 && code != 304) {
      if (next.empty()) {
        discard();
        return fail("redirect", absl::StrCat("HTTP ", code, " without a Location"), true);
      }
      if (++hops > options_.max_redirects) {
        discard();
        return fail("redirect", absl::StrCat("more than ", options_.max_redirects, " redirects"),
                    false);
      }
      if (UrlCheck c = CheckUrl(next, false, options_.allow_loopback); !c.ok) {
        discard();
        return fail("insecure_url", absl::StrCat("redirect ", c.error), false);
      }
      current = next;
      continue;
    }
    if (code != 200) {
      discard();
      const bool client = code >= 400 && code < 500 && code != 408 && code != 429;
      Outcome o = fail(
          absl::StrCat("http_", code / 100, "xx"),
          absl::StrCat("the video host answered HTTP ", code, " for ", Redacted(current)), true);
      o.client_error = client;
      return o;
    }
    break;
  }

  // Durable, then visible under the final name.
  if (::fsync(fd) != 0) {
    const int err = errno;
    discard();
    if (IsDiskFull(err))
      return fail("disk_full", absl::StrCat("archive dir full: ", strerror(err)), false);
    return fail("io_error", absl::StrCat("fsync: ", strerror(err)), true);
  }
  if (::close(fd) != 0) {
    const int err = errno;
    fd = -1;
    discard();
    if (IsDiskFull(err))
      return fail("disk_full", absl::StrCat("archive dir full: ", strerror(err)), false);
    return fail("io_error", absl::StrCat("close: ", strerror(err)), true);
  }
  fd = -1;
  std::string ext = ExtFromUrl(url);
  if (ext.empty()) ext = ExtFromContentType(content_type);
  if (ext.empty()) ext = "mp4";
  const std::string file = absl::StrCat(id, ".", ext);
  const std::string path = absl::StrCat(options_.dir, "/", file);
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    discard();
    return fail("io_error", absl::StrCat("rename: ", strerror(err)), true);
  }
  // From here on `path` is published: a failure leaves it (complete, and
  // replaced by the next attempt) rather than unlinking a published name.
  if (const int err = SyncDir(); err != 0) {
    return fail("io_error", absl::StrCat("fsync of the archive dir: ", strerror(err)), true);
  }

  out.archive.set_uri(FileUri(path));
  out.archive.set_sha256(t.sha.HexDigest());
  out.archive.set_size_bytes(t.bytes);
  out.archive.set_content_type(content_type);
  const absl::Time now = clock_->Now();
  ToTimestamp(now, out.archive.mutable_archive_time());

  // The metadata, atomically too; a restart reuses the copy through it.
  nlohmann::json meta = {
      {"id", id},
      {"uri", out.archive.uri()},
      {"file", file},
      {"sha256", out.archive.sha256()},
      {"size_bytes", out.archive.size_bytes()},
      {"content_type", content_type},
      {"archive_time",
       absl::FormatTime(absl::RFC3339_full, FromTimestamp(out.archive.archive_time()),
                        absl::UTCTimeZone())},
  };
  const std::string text =
      meta.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  const std::string meta_path = absl::StrCat(options_.dir, "/", id, ".meta.json");
  const std::string meta_tmp = absl::StrCat(tmp.substr(0, tmp.size() - 5), ".meta.part");
  const int mfd = ::open(meta_tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  int merr = mfd < 0 ? errno : 0;
  if (mfd >= 0) {
    if (!WriteAll(mfd, text.data(), text.size()) || ::fsync(mfd) != 0) merr = errno;
    if (::close(mfd) != 0 && merr == 0) merr = errno;
    if (merr == 0 && ::rename(meta_tmp.c_str(), meta_path.c_str()) != 0) merr = errno;
  }
  if (merr != 0) {
    ::unlink(meta_tmp.c_str());  // ours; the published video stays
    if (IsDiskFull(merr)) {
      return fail("disk_full", absl::StrCat("archive dir full: ", strerror(merr)), false);
    }
    return fail("io_error", absl::StrCat("writing the metadata: ", strerror(merr)), true);
  }
  if (const int err = SyncDir(); err != 0) {
    return fail("io_error", absl::StrCat("fsync of the archive dir: ", strerror(err)), true);
  }
  // The record that it was published (best effort: without it a sidecar
  // that comes after the worker removed the copy downloads it again).
  const std::string record = absl::StrCat(options_.dir, "/", kStateDir, "/", id, ".done");
  const std::string record_tmp = absl::StrCat(record, ".part");
  ::unlink(record_tmp.c_str());
  if (::link(meta_path.c_str(), record_tmp.c_str()) != 0 ||
      ::rename(record_tmp.c_str(), record.c_str()) != 0) {
    ::unlink(record_tmp.c_str());
  }
  out.ok = true;
  return out;
}

// ---- Scheduling -------------------------------------------------------------

FileArchiver::FileArchiver(FileArchiverOptions options, Clock* clock, MetricsRegistry* metrics)
    : options_(std::move(options)), clock_(clock), metrics_(metrics) {
  if (metrics_ != nullptr) {
    bytes_total_ = metrics_->GetCounter("videotask_archive_bytes_total",
                                        "Video bytes written to the archive.");
    duration_ = metrics_->GetHistogram(
        "videotask_archive_duration_seconds",
        "Time from a task's completion to its archive (successful archives, reuse included).",
        {0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800});
  }
}

absl::StatusOr<std::unique_ptr<FileArchiver>> FileArchiver::Create(FileArchiverOptions options,
                                                                   Clock* clock,
                                                                   MetricsRegistry* metrics) {
  if (absl::Status s = ValidateFileArchiverOptions(options); !s.ok()) return s;
  if (clock == nullptr) return absl::InvalidArgumentError("archiver: no clock");
  char* real = ::realpath(options.dir.c_str(), nullptr);
  if (real == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("--archive_dir ", options.dir, ": ", strerror(errno)));
  }
  options.dir = real;
  ::free(real);
  struct stat st;
  if (::stat(options.dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--archive_dir ", options.dir, " is not a directory"));
  }
  if (::access(options.dir.c_str(), W_OK | X_OK) != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--archive_dir ", options.dir, " is not writable: ", strerror(errno)));
  }
  std::call_once(curl_once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
  // A file-size limit (RLIMIT_FSIZE) must fail a write with EFBIG, not kill
  // the sidecar with SIGXFSZ.
  struct sigaction old_action;
  if (sigaction(SIGXFSZ, nullptr, &old_action) == 0 && old_action.sa_handler == SIG_DFL) {
    signal(SIGXFSZ, SIG_IGN);
  }
  // Temporary files of a run that crashed: older than a whole archive can take.
  if (DIR* d = ::opendir(options.dir.c_str())) {
    const absl::Time cutoff = clock->Now() - options.timeout - absl::Minutes(1);
    while (struct dirent* e = ::readdir(d)) {
      const absl::string_view name = e->d_name;
      if (!absl::StartsWith(name, ".") || !absl::EndsWith(name, ".part")) continue;
      const std::string path = absl::StrCat(options.dir, "/", name);
      struct stat fst;
      if (::lstat(path.c_str(), &fst) == 0 && S_ISREG(fst.st_mode) &&
          absl::FromTimeT(fst.st_mtime) < cutoff) {
        ::unlink(path.c_str());
      }
    }
    ::closedir(d);
  }
  // Claims and records of sidecars sharing the directory; records of copies
  // published long ago go.
  const std::string state = absl::StrCat(options.dir, "/", kStateDir);
  if (::mkdir(state.c_str(), 0755) != 0 && errno != EEXIST) {
    return absl::InvalidArgumentError(
        absl::StrCat("--archive_dir ", options.dir, ": cannot create ", kStateDir, ": ",
                     strerror(errno)));
  }
  if (DIR* d = ::opendir(state.c_str())) {
    const absl::Time cutoff = absl::Now() - kRecordKeep;
    while (struct dirent* e = ::readdir(d)) {
      const absl::string_view name = e->d_name;
      if (!absl::EndsWith(name, ".done") && !absl::EndsWith(name, ".part")) continue;
      const std::string path = absl::StrCat(state, "/", name);
      struct stat fst;
      if (::lstat(path.c_str(), &fst) == 0 && S_ISREG(fst.st_mode) &&
          absl::FromTimeT(fst.st_ctime) < cutoff) {
        ::unlink(path.c_str());
      }
    }
    ::closedir(d);
  }
  std::unique_ptr<FileArchiver> a(new FileArchiver(std::move(options), clock, metrics));
  a->scheduler_ = std::thread([p = a.get()] { p->SchedulerLoop(); });
  for (int i = 0; i < a->options_.max_concurrent; ++i) {
    a->workers_.emplace_back([p = a.get()] { p->WorkerLoop(); });
  }
  return a;
}

FileArchiver::~FileArchiver() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (scheduler_.joinable()) scheduler_.join();
  for (std::thread& w : workers_) w.join();
  std::vector<std::unique_ptr<Job>> left;
  {
    absl::MutexLock lock(&mu_);
    for (auto& [id, job] : jobs_) left.push_back(std::move(job));
    jobs_.clear();
    ready_.clear();
  }
  for (auto& job : left) {
    Finish(std::move(job), nullptr, "archiving stopped: the sidecar is shutting down", "shutdown");
  }
}

void FileArchiver::Archive(const VideoTask& task, Done done) {
  ArchiveBy(task, absl::InfiniteFuture(), std::move(done));
}

void FileArchiver::ArchiveBy(const VideoTask& task, absl::Time deadline, Done done) {
  absl::MutexLock lock(&mu_);
  auto it = jobs_.find(task.id());
  if (it != jobs_.end()) {
    it->second->waiters.push_back({task, std::move(done)});
    return;
  }
  auto job = std::make_unique<Job>();
  job->id = task.id();
  job->url = task.video_url();
  job->start = clock_->Monotonic();
  job->limit = deadline;
  job->deadline = std::min(job->start + options_.timeout, job->limit);
  job->next_try = job->start;
  job->seq = next_seq_++;
  job->waiters.push_back({task, std::move(done)});
  jobs_.emplace(task.id(), std::move(job));
  kicked_ = true;
}

void FileArchiver::Kick() {
  absl::MutexLock lock(&mu_);
  kicked_ = true;
}

FileArchiver::Stats FileArchiver::GetStats() {
  absl::MutexLock lock(&mu_);
  Stats s;
  s.pending = static_cast<int64_t>(jobs_.size());
  s.running = running_;
  s.downloads = downloads_.load();
  s.reused = reused_.load();
  return s;
}

absl::Duration FileArchiver::Backoff(int attempts) {
  absl::Duration d = options_.initial_backoff;
  for (int i = 1; i < attempts && d < options_.max_backoff; ++i) d *= 2;
  d = std::min(d, options_.max_backoff);
  return d * absl::Uniform(rng_, 0.8, 1.2);
}

void FileArchiver::SchedulerLoop() {
  while (true) {
    std::vector<std::unique_ptr<Job>> expired;
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) return;
      const absl::Time now = clock_->Monotonic();
      absl::Time wake = now + absl::Seconds(1);
      std::vector<std::string> gone;
      for (auto& [id, job] : jobs_) {
        if (job->running) continue;
        // A due job waits for a slot: that time is not its own (its
        // deadline moves on when it gets one), up to its limit.
        if (job->next_try <= now) {
          if (now >= job->limit) {
            gone.push_back(id);
          } else {
            wake = std::min(wake, job->limit);
          }
          continue;
        }
        if (now >= job->deadline) {
          gone.push_back(id);
          continue;
        }
        wake = std::min(wake, job->deadline);
      }
      for (const std::string& id : gone) {
        auto node = jobs_.extract(id);
        ready_.erase(std::remove(ready_.begin(), ready_.end(), id), ready_.end());
        expired.push_back(std::move(node.mapped()));
      }
      // Hand due jobs to free workers, earliest first.
      while (running_ < options_.max_concurrent) {
        Job* best = nullptr;
        for (auto& [id, job] : jobs_) {
          if (job->running || job->next_try > now) continue;
          if (best == nullptr ||
              std::tie(job->next_try, job->seq) < std::tie(best->next_try, best->seq)) {
            best = job.get();
          }
        }
        if (best == nullptr) break;
        // The wait for a slot, within the caller's limit.
        best->deadline = std::min(best->deadline + (now - best->next_try), best->limit);
        best->running = true;
        ++running_;
        ready_.push_back(best->id);
      }
      if (running_ < options_.max_concurrent) {
        for (auto& [id, job] : jobs_) {
          if (!job->running) wake = std::min(wake, job->next_try);
        }
      }
      if (expired.empty()) {
        kicked_ = false;
        auto woken = [this]()
                         ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return kicked_ || stopping_.load(); };
        mu_.AwaitWithTimeout(absl::Condition(&woken),
                             std::clamp(wake - now, absl::Milliseconds(1), absl::Seconds(1)));
      }
    }
    for (auto& job : expired) {
      const std::string error =
          job->last_error.empty()
              ? std::string("the archive timeout ran out before a download could start")
              : absl::StrCat("gave up after ", job->attempts,
                             " attempts (--archive_timeout): ", job->last_error);
      const std::string reason = job->last_reason.empty() ? "timeout" : job->last_reason;
      Finish(std::move(job), nullptr, error, reason);
    }
  }
}

void FileArchiver::WorkerLoop() {
  while (true) {
    std::string id, url;
    absl::Time deadline;
    {
      absl::MutexLock lock(&mu_);
      auto has_work = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return !ready_.empty() || stopping_.load();
      };
      mu_.Await(absl::Condition(&has_work));
      if (stopping_) return;
      id = ready_.front();
      ready_.pop_front();
      auto it = jobs_.find(id);
      if (it == jobs_.end()) {
        --running_;
        continue;
      }
      url = it->second->url;
      deadline = it->second->deadline;
      ++it->second->attempts;
    }
    Outcome o = RunAttempt(id, url, deadline);
    std::unique_ptr<Job> finished;
    bool claim_gave_up = false;
    std::string previous_error;  // of the attempt before this one
    {
      absl::MutexLock lock(&mu_);
      --running_;
      kicked_ = true;
      auto it = jobs_.find(id);
      if (it == jobs_.end()) continue;  // cannot happen: only this worker runs it
      Job& job = *it->second;
      job.running = false;
      const absl::Time now = clock_->Monotonic();
      if (o.claimed_elsewhere && !stopping_) {
        // Not an attempt of ours: look again soon, within the deadline.
        --job.attempts;
        job.last_error = o.error;
        job.last_reason = o.reason;
        job.next_try = now + options_.initial_backoff;
        if (job.next_try < job.deadline) continue;
        finished = std::move(it->second);
        jobs_.erase(it);
        claim_gave_up = true;
      } else {
        previous_error = job.last_error;
        if (!o.ok) {
          job.last_error = o.error;
          job.last_reason = o.reason;
          job.client_errors = o.client_error ? job.client_errors + 1 : 0;
        }
        if (o.ok || !o.retryable || stopping_ ||
            job.client_errors >= options_.max_client_error_attempts) {
          finished = std::move(it->second);
          jobs_.erase(it);
        } else {
          job.next_try = now + Backoff(job.attempts);
          if (job.next_try >= job.deadline) {
            finished = std::move(it->second);
            jobs_.erase(it);
          } else {
            LogEvent(LogLevel::kWarning, "archive_retry",
                     {{"task", id},
                      {"attempt", absl::StrCat(job.attempts)},
                      {"reason", o.reason},
                      {"error", o.error},
                      {"retry_in", absl::FormatDuration(
                                       absl::Trunc(job.next_try - now, absl::Milliseconds(1)))}});
          }
        }
      }
    }
    if (finished == nullptr) continue;
    if (claim_gave_up) {
      Finish(std::move(finished), nullptr,
             absl::StrCat("gave up (--archive_timeout): ", o.error), o.reason);
      continue;
    }
    if (o.ok) {
      Finish(std::move(finished), &o.archive, "", "");
    } else if (o.retryable && !stopping_ &&
               finished->client_errors < options_.max_client_error_attempts) {
      Finish(std::move(finished), nullptr,
             absl::StrCat("gave up after ", finished->attempts,
                          " attempts (--archive_timeout): ", o.error),
             o.reason);
    } else if (stopping_) {
      Finish(std::move(finished), nullptr, "archiving stopped: the sidecar is shutting down",
             "shutdown");
    } else if (o.reason == "timeout" && !previous_error.empty()) {
      // The timeout cut a retry: what went wrong before is the news.
      Finish(std::move(finished), nullptr,
             absl::StrCat("gave up after ", finished->attempts, " attempts (--archive_timeout ran "
                          "out during the last): ", previous_error),
             o.reason);
    } else {
      Finish(std::move(finished), nullptr, o.error, o.reason);
    }
  }
}

void FileArchiver::Finish(std::unique_ptr<Job> job, const VideoArchive* archive,
                          const std::string& error, const std::string& reason) {
  const absl::Duration took = clock_->Monotonic() - job->start;
  if (archive != nullptr) {
    if (duration_ != nullptr) duration_->Observe(absl::ToDoubleSeconds(took));
    LogEvent(LogLevel::kInfo, "archived",
             {{"task", job->id},
              {"uri", archive->uri()},
              {"size_bytes", absl::StrCat(archive->size_bytes())},
              {"sha256", archive->sha256()},
              {"attempts", absl::StrCat(job->attempts)}});
  } else {
    if (metrics_ != nullptr) {
      metrics_
          ->GetCounter("videotask_archive_failures_total",
                       "Archives that ended with archive_error, by the last failure's reason.",
                       absl::StrCat("reason=\"", reason, "\""))
          ->Increment();
    }
    LogEvent(LogLevel::kError, "archive_failed",
             {{"task", job->id},
              {"reason", reason},
              {"error", error},
              {"attempts", absl::StrCat(job->attempts)}});
  }
  for (Waiter& w : job->waiters) {
    std::move(w.done)(WithArchiveOutcome(std::move(w.task), archive, error));
  }
}

}  // namespace videotask
