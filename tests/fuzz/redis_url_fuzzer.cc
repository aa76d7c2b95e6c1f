// Fleet mode's Redis settings: RedisUrl::Parse (redis://user:password@host:
// port/db, unix:PATH) and RedisPasswordFile on a file holding the input.
// Checks: a parsed TCP URL has a host, a port in 1-65535 and db >= 0;
// Redacted() does not depend on the password; a refusal is INVALID_ARGUMENT,
// printable, and never holds the password part of the input (the text
// between the last ':' before the last '@' and that '@'); the password file
// gives the trimmed input, and its errors never hold the input.
#include <fcntl.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/strip.h"
#include "server/fleet/redis_url.h"
#include "tests/fuzz/fuzz_util.h"

using videotask::fleet::RedisPasswordFile;
using videotask::fleet::RedisUrl;

namespace {

std::string* file_path = nullptr;

// What a user would have meant as the password in `url`, if anything.
std::string PasswordPart(absl::string_view url) {
  const size_t at = url.rfind('@');
  if (at == absl::string_view::npos) return "";
  const size_t colon = url.substr(0, at).rfind(':');
  if (colon == absl::string_view::npos) return "";
  return std::string(url.substr(colon + 1, at - colon - 1));
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  const char* dir = std::getenv("TEST_TMPDIR");  // set by Bazel and run.sh
  std::string tmpl = std::string(dir != nullptr ? dir : ".") + "/redis_pw_fuzz.XXXXXX";
  const int fd = mkstemp(tmpl.data());
  if (fd >= 0) close(fd);
  file_path = new std::string(tmpl);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::string_view in = videotask::fuzz::AsView(data, size);
  absl::StatusOr<RedisUrl> url = RedisUrl::Parse(in);
  if (url.ok()) {
    if (url->kind == RedisUrl::Kind::kTcp) {
      FUZZ_CHECK(!url->host.empty(), "no host");
      FUZZ_CHECK(url->port >= 1 && url->port <= 65535, "port");
    } else {
      FUZZ_CHECK(!url->unix_path.empty(), "no socket path");
    }
    FUZZ_CHECK(url->db >= 0, "db");
    RedisUrl other = *url;
    other.password = url->password.empty() ? "" : "other-password";
    FUZZ_CHECK(url->Redacted() == other.Redacted(), "Redacted() shows the password");
  } else {
    const std::string msg(url.status().message());
    FUZZ_CHECK(url.status().code() == absl::StatusCode::kInvalidArgument, msg);
    FUZZ_CHECK(videotask::fuzz::PrintableAscii(msg), "non-printable message");
    // A message that holds the password part must hold it as fixed text:
    // with that part's letters and digits overwritten it still does.
    const std::string pw = PasswordPart(in);
    if (pw.size() >= 4 && absl::StrContains(msg, pw)) {
      std::string other(in);
      const size_t at = other.rfind('@');
      for (size_t i = at - pw.size(); i < at; ++i) {
        // Letters and digits only, so the URL keeps its shape.
        if (absl::ascii_isalnum(static_cast<unsigned char>(other[i]))) {
          other[i] = other[i] == 'Q' ? 'R' : 'Q';
        }
      }
      absl::StatusOr<RedisUrl> again = RedisUrl::Parse(other);
      FUZZ_CHECK(!again.ok() && absl::StrContains(again.status().message(), pw),
                 "message holds the password: " + msg);
    }
  }

  const int fd = open(file_path->c_str(), O_WRONLY | O_TRUNC | O_CLOEXEC);
  FUZZ_CHECK(fd >= 0, "cannot open the scratch password file");
  FUZZ_CHECK(write(fd, data, size) == static_cast<ssize_t>(size), "short write");
  close(fd);
  absl::StatusOr<std::unique_ptr<RedisPasswordFile>> file = RedisPasswordFile::Open(*file_path);
  const absl::string_view trimmed = absl::StripAsciiWhitespace(in);
  if (file.ok()) {
    const std::string pw = (*file)->Get();
    FUZZ_CHECK(!pw.empty() && pw == trimmed, "password is not the trimmed file");
  } else {
    const std::string msg(file.status().message());
    FUZZ_CHECK(videotask::fuzz::PrintableAscii(msg), "non-printable message");
    absl::string_view rest = msg;
    FUZZ_CHECK(absl::ConsumePrefix(&rest, "Redis password file " + *file_path + ": "),
               "message does not name the file: " + msg);
    FUZZ_CHECK(rest == "empty" || rest == "contains control characters" ||
                   rest == "larger than 64 KiB" || rest == "not a regular file" ||
                   !absl::StrContains(rest, trimmed),
               "message holds the file's contents: " + msg);
  }
  return 0;
}
