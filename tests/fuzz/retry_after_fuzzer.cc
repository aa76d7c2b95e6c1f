// The vendor's Retry-After header (on a 429): CurlUpstreamClient::
// ParseRetryAfter, delta seconds or an HTTP date (through curl_getdate).
// Input: 8 bytes of "now" (unix seconds, little-endian, folded into years
// 1970-2500) then the header value. Checks: a parsed pause is never
// negative or infinite; a value of only digits parses to exactly that many
// seconds when it fits in int64.
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/time/time.h"
#include "server/upstream/curl_upstream_client.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  uint64_t raw = 0;
  const size_t n = size < 8 ? size : 8;
  std::memcpy(&raw, data, n);
  const int64_t kSpan = int64_t{530} * 365 * 86400;
  const absl::Time now = absl::FromUnixSeconds(static_cast<int64_t>(raw % kSpan));
  const absl::string_view value = videotask::fuzz::AsView(data + n, size - n);

  const std::optional<absl::Duration> pause =
      videotask::CurlUpstreamClient::ParseRetryAfter(value, now);
  if (pause.has_value()) {
    FUZZ_CHECK(*pause >= absl::ZeroDuration(), "negative pause");
    FUZZ_CHECK(*pause != absl::InfiniteDuration(), "infinite pause");
  }
  const absl::string_view trimmed = absl::StripAsciiWhitespace(value);
  int64_t seconds = 0;
  if (!trimmed.empty() && trimmed.size() <= 18 &&
      trimmed.find_first_not_of("0123456789") == absl::string_view::npos &&
      absl::SimpleAtoi(trimmed, &seconds)) {
    FUZZ_CHECK(pause.has_value() && *pause == absl::Seconds(seconds), "delta seconds");
  }
  return 0;
}
