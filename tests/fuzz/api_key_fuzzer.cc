// The API key as it comes from a Secret file or VIDEOTASK_API_KEY:
// ApiKeySource::CleanKey, and FromFile on a file holding the input (the
// whole read path: size cap, trimming, checks). Checks: an accepted key is
// non-empty, has no whitespace or control characters, and is the input
// trimmed; a refusal is FAILED_PRECONDITION whose message names the source
// and then says one of the fixed things (never anything of the input).
#include <fcntl.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "server/upstream/api_key.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

std::string* key_path = nullptr;

// A refusal names the source (`what`) and then says one of the fixed
// things: nothing of the key.
void CheckRefusal(const absl::Status& s, absl::string_view what) {
  const std::string msg(s.message());
  FUZZ_CHECK(videotask::fuzz::PrintableAscii(msg), "non-printable message");
  absl::string_view rest = msg;
  FUZZ_CHECK(absl::ConsumePrefix(&rest, what), "message does not name the source: " + msg);
  FUZZ_CHECK(rest == " is empty" ||
                 rest == " contains whitespace or control characters inside the key" ||
                 rest == absl::StrCat(" is larger than ", videotask::ApiKeySource::kMaxFileBytes,
                                      " bytes") ||
                 absl::StartsWith(rest, ": "),  // strerror of a failed read
             "unexpected message: " + msg);
}

void CheckKey(const std::string& key, absl::string_view raw) {
  FUZZ_CHECK(!key.empty(), "empty key accepted");
  for (char c : key) {
    const unsigned char u = static_cast<unsigned char>(c);
    FUZZ_CHECK(u > 0x20 && u != 0x7f, "whitespace or control character in a key");
  }
  FUZZ_CHECK(key == absl::StripAsciiWhitespace(raw), "key is not the trimmed input");
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  const char* dir = std::getenv("TEST_TMPDIR");  // set by Bazel and run.sh
  std::string tmpl = std::string(dir != nullptr ? dir : ".") + "/api_key_fuzz.XXXXXX";
  const int fd = mkstemp(tmpl.data());
  if (fd >= 0) close(fd);
  key_path = new std::string(tmpl);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::string_view raw = videotask::fuzz::AsView(data, size);
  absl::StatusOr<std::string> key =
      videotask::ApiKeySource::CleanKey(raw, "API key file test-source");
  if (key.ok()) {
    CheckKey(*key, raw);
  } else {
    FUZZ_CHECK(key.status().code() == absl::StatusCode::kFailedPrecondition,
               std::string(key.status().message()));
    CheckRefusal(key.status(), "API key file test-source");
  }

  // The same bytes as a key file (no checker thread: check_interval zero).
  const int fd = open(key_path->c_str(), O_WRONLY | O_TRUNC | O_CLOEXEC);
  FUZZ_CHECK(fd >= 0, "cannot open the scratch key file");
  FUZZ_CHECK(write(fd, data, size) == static_cast<ssize_t>(size), "short write");
  close(fd);
  videotask::ApiKeyFileOptions options;
  options.check_interval = absl::ZeroDuration();
  auto source = videotask::ApiKeySource::FromFile(*key_path, options);
  if (size > videotask::ApiKeySource::kMaxFileBytes) {
    FUZZ_CHECK(!source.ok(), "oversized key file accepted");
    CheckRefusal(source.status(), "API key file " + *key_path);
    return 0;
  }
  FUZZ_CHECK(source.ok() == key.ok(), "file and value disagree");
  if (source.ok()) {
    absl::StatusOr<std::string> got = (*source)->Get();
    FUZZ_CHECK(got.ok() && *got == *key, "file key differs from the cleaned value");
  } else {
    CheckRefusal(source.status(), "API key file " + *key_path);
  }
  return 0;
}
