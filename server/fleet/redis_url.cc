#include "server/fleet/redis_url.h"

#include <algorithm>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

namespace videotask::fleet {
namespace {

constexpr size_t kMaxUrlBytes = 4096;

absl::Status Bad(absl::string_view sentence) {
  return absl::InvalidArgumentError(absl::StrCat("redis URL: ", sentence));
}

bool HasSpaceOrControl(absl::string_view s) {
  for (unsigned char c : s) {
    if (c <= 0x20 || c == 0x7f) return true;
  }
  return false;
}

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Percent-decodes `in`; false on a malformed escape or a decoded NUL.
bool PercentDecode(absl::string_view in, std::string* out) {
  out->clear();
  for (size_t i = 0; i < in.size(); ++i) {
    if (in[i] != '%') {
      out->push_back(in[i]);
      continue;
    }
    if (i + 2 >= in.size()) return false;
    const int hi = HexValue(in[i + 1]), lo = HexValue(in[i + 2]);
    if (hi < 0 || lo < 0) return false;
    const char c = static_cast<char>(hi * 16 + lo);
    if (c == '\0') return false;
    out->push_back(c);
    i += 2;
  }
  return true;
}

bool ParseDecimal(absl::string_view s, int64_t max, int64_t* out) {
  if (s.empty() || s.size() > 10) return false;
  int64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + (c - '0');
  }
  if (v > max) return false;
  *out = v;
  return true;
}

bool ValidHostName(absl::string_view h) {
  if (h.empty() || h.size() > 253) return false;
  for (char c : h) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '.' && c != '_') {
      return false;
    }
  }
  return true;
}

bool ValidIpv6(absl::string_view h) {
  if (h.empty() || h.size() > 45) return false;
  for (char c : h) {
    if (!absl::ascii_isxdigit(static_cast<unsigned char>(c)) && c != ':' && c != '.') return false;
  }
  return absl::StrContains(h, ':');
}

}  // namespace

absl::StatusOr<RedisUrl> RedisUrl::Parse(absl::string_view url) {
  if (url.empty()) return Bad("it is empty.");
  if (url.size() > kMaxUrlBytes) return Bad("it is longer than 4096 characters.");
  if (HasSpaceOrControl(url)) {
    return Bad("it contains whitespace or control characters (percent-encode them).");
  }
  RedisUrl out;
  absl::string_view rest = url;
  if (absl::ConsumePrefix(&rest, "unix://") || absl::ConsumePrefix(&rest, "unix:")) {
    out.kind = Kind::kUnix;
    if (rest.empty()) return Bad("unix: needs a socket path, as in unix:/run/redis/redis.sock.");
    if (absl::StrContains(rest, '?')) return Bad("query parameters are not supported.");
    if (rest.size() >= 108) return Bad("the Unix socket path is longer than 107 characters.");
    out.unix_path = std::string(rest);
    return out;
  }
  const std::string lower = absl::AsciiStrToLower(url.substr(0, std::min<size_t>(url.size(), 9)));
  if (absl::StartsWith(lower, "rediss://")) {
    out.tls = true;
    rest.remove_prefix(9);
  } else if (absl::StartsWith(lower, "redis://")) {
    rest.remove_prefix(8);
  } else {
    return Bad("it must start with redis://, rediss:// or unix:.");
  }
  if (absl::StrContains(rest, '?') || absl::StrContains(rest, '#')) {
    // A '?' or '#' in the password part is allowed; look only after the '@'.
    const size_t at = rest.rfind('@');
    absl::string_view tail = at == absl::string_view::npos ? rest : rest.substr(at + 1);
    if (absl::StrContains(tail, '?') || absl::StrContains(tail, '#')) {
      return Bad("query parameters and fragments are not supported.");
    }
  }
  // User info: up to the last '@'.
  const size_t at = rest.rfind('@');
  if (at != absl::string_view::npos) {
    absl::string_view userinfo = rest.substr(0, at);
    rest.remove_prefix(at + 1);
    const size_t colon = userinfo.find(':');
    if (colon == absl::string_view::npos) {
      return Bad("the part before '@' must be ':password' or 'user:password'.");
    }
    if (!PercentDecode(userinfo.substr(0, colon), &out.username)) {
      return Bad("the user name has a malformed percent-escape.");
    }
    if (!PercentDecode(userinfo.substr(colon + 1), &out.password)) {
      return Bad("the password has a malformed percent-escape.");
    }
    if (out.password.empty()) return Bad("the password before '@' is empty.");
  }
  // host[:port][/db]
  absl::string_view hostport = rest;
  absl::string_view path;
  if (const size_t slash = rest.find('/'); slash != absl::string_view::npos) {
    hostport = rest.substr(0, slash);
    path = rest.substr(slash + 1);
  }
  absl::string_view port_text;
  if (absl::StartsWith(hostport, "[")) {
    const size_t close = hostport.find(']');
    if (close == absl::string_view::npos) return Bad("an IPv6 host must be closed with ']'.");
    out.host = std::string(hostport.substr(1, close - 1));
    if (!ValidIpv6(out.host)) return Bad("the IPv6 host address is malformed.");
    absl::string_view after = hostport.substr(close + 1);
    if (!after.empty()) {
      if (!absl::ConsumePrefix(&after, ":")) return Bad("only ':port' may follow an IPv6 host.");
      port_text = after;
      if (port_text.empty()) return Bad("the port after ':' is empty.");
    }
  } else {
    const size_t colon = hostport.find(':');
    out.host = std::string(hostport.substr(0, colon));
    if (colon != absl::string_view::npos) {
      port_text = hostport.substr(colon + 1);
      if (port_text.empty()) return Bad("the port after ':' is empty.");
    }
    if (out.host.empty()) return Bad("the host is missing.");
    if (!ValidHostName(out.host)) {
      return Bad("the host may only contain letters, digits, '.', '-' and '_'.");
    }
  }
  if (!port_text.empty()) {
    int64_t port = 0;
    if (!ParseDecimal(port_text, 65535, &port) || port == 0) {
      return Bad("the port must be a number from 1 to 65535.");
    }
    out.port = static_cast<int>(port);
  }
  if (!path.empty()) {
    int64_t db = 0;
    if (!ParseDecimal(path, 2147483647, &db)) {
      return Bad("the database after '/' must be a number from 0 to 2147483647.");
    }
    out.db = static_cast<int>(db);
  }
  return out;
}

std::string RedisUrl::Redacted() const {
  if (kind == Kind::kUnix) return absl::StrCat("unix:", unix_path);
  std::string auth;
  if (!password.empty()) auth = absl::StrCat(username, ":***@");
  const std::string host_text = absl::StrContains(host, ':') ? absl::StrCat("[", host, "]") : host;
  return absl::StrCat(tls ? "rediss://" : "redis://", auth, host_text, ":", port, "/", db);
}

absl::StatusOr<std::unique_ptr<RedisPasswordFile>> RedisPasswordFile::Open(std::string path) {
  if (path.empty()) return absl::InvalidArgumentError("Redis password file: the path is empty");
  std::unique_ptr<RedisPasswordFile> f(new RedisPasswordFile(std::move(path)));
  FileVersion id;
  absl::StatusOr<std::string> pw = f->Read(&id);
  if (!pw.ok()) return pw.status();
  absl::MutexLock lock(&f->mu_);
  f->password_ = *std::move(pw);
  f->id_ = id;
  return f;
}

absl::StatusOr<std::string> RedisPasswordFile::Read(FileVersion* id) const {
  const std::string what = absl::StrCat("Redis password file ", path_);
  absl::StatusOr<std::string> data = ReadSecretFile(path_, what, id);
  if (!data.ok()) return data.status();
  std::string pw(absl::StripAsciiWhitespace(*data));
  std::fill(data->begin(), data->end(), '\0');
  if (pw.empty()) return absl::FailedPreconditionError(absl::StrCat(what, ": empty"));
  for (unsigned char c : pw) {
    if (c < 0x20 || c == 0x7f) {
      return absl::FailedPreconditionError(absl::StrCat(what, ": contains control characters"));
    }
  }
  return pw;
}

std::string RedisPasswordFile::Get() {
  absl::MutexLock lock(&mu_);
  // Unchanged (a missing file never matches what was read): no read.
  if (FileVersion::At(path_) == id_ && last_error_.ok()) return password_;
  FileVersion id;
  absl::StatusOr<std::string> pw = Read(&id);
  if (pw.ok()) {
    password_ = *std::move(pw);
    id_ = id;
    last_error_ = absl::OkStatus();
  } else {
    last_error_ = pw.status();
  }
  return password_;
}

absl::Status RedisPasswordFile::last_error() const {
  absl::MutexLock lock(&mu_);
  return last_error_;
}

}  // namespace videotask::fleet
