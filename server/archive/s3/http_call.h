// HttpSession: blocking HTTP requests with libcurl for the S3 client and the
// credential providers. One session is one easy handle, so consecutive
// requests to the same host reuse the connection; a session is used by one
// thread at a time.
//
// Guarantees: no proxy, whatever http_proxy / HTTPS_PROXY / ALL_PROXY say
// (credentials and signed requests go only to the host named); only
// http:// and https:// (CheckTransport says which hosts may
// have plain http); TLS verified; no redirect followed (S3 answers a wrong
// region with 301, which is an error, not a hint to follow); the request body
// is sent from the caller's memory without a copy; the answer's body is
// capped (`max_response_bytes`, a longer one is cut and flagged); libcurl's
// own Content-Type and Expect headers are never added. Transport failures
// (connect, TLS, timeout, cut answer) are UNAVAILABLE with libcurl's message,
// which never holds request headers, so never a credential.
#ifndef VIDEOTASK_SERVER_ARCHIVE_S3_HTTP_CALL_H_
#define VIDEOTASK_SERVER_ARCHIVE_S3_HTTP_CALL_H_

#include <functional>
#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace videotask::s3 {

struct HttpRequest {
  std::string method = "GET";  // GET, HEAD, PUT, POST, DELETE
  std::string url;
  std::vector<std::pair<std::string, std::string>> headers;
  absl::string_view body;  // must outlive Call()
  absl::Duration timeout = absl::Minutes(5);
  absl::Duration connect_timeout = absl::Seconds(10);
  std::string ca_file;  // empty: the system's CA bundle
  size_t max_response_bytes = 1 << 20;
  // Polled while the request runs (a few times a second): true aborts it
  // with CANCELLED (e.g. the sidecar shutting down mid-part). Empty: never.
  std::function<bool()> cancelled;
};

struct HttpResponse {
  long status = 0;
  std::string body;
  bool body_truncated = false;
  // Response headers, names lowercased, in order.
  std::vector<std::pair<std::string, std::string>> headers;
  // The first header named `lower_name`, or "".
  std::string Header(absl::string_view lower_name) const;
};

class HttpSession {
 public:
  HttpSession();
  ~HttpSession();
  HttpSession(const HttpSession&) = delete;
  HttpSession& operator=(const HttpSession&) = delete;

  absl::StatusOr<HttpResponse> Call(const HttpRequest& request);

 private:
  void* easy_ = nullptr;  // CURL*
};

// OK when `url` is https://, or http:// to a loopback host (server/base/
// loopback.h) or to one of `extra_plain_http_hosts` (exact, as in the URL);
// INVALID_ARGUMENT naming `what` otherwise, or when `url` does not parse or
// holds a user name or password (user:password@, refused and not shown).
absl::Status CheckTransport(absl::string_view url, absl::string_view what,
                            const std::vector<std::string>& extra_plain_http_hosts = {});

// The text of the first <name>...</name> element in `xml` (XML's five
// entities decoded), or "" when there is none. Enough for S3's and STS's
// flat answers; not a general XML parser.
std::string XmlText(absl::string_view xml, absl::string_view name);

// `text` with every occurrence of each non-empty secret in `secrets`
// replaced by "[redacted]".
std::string Redact(std::string text, std::initializer_list<absl::string_view> secrets);

// `text` made safe for an error message: at most `max_chars`, control
// characters as '?'.
std::string Excerpt(absl::string_view text, size_t max_chars = 200);

// An error code from a store's or an issuer's answer (<Code>, "code") fit
// for errors, logs and metrics: only [A-Za-z0-9.], at most 64 characters
// (AWS codes are short words; anything else is dropped).
std::string ErrorCode(absl::string_view code);

}  // namespace videotask::s3

#endif  // VIDEOTASK_SERVER_ARCHIVE_S3_HTTP_CALL_H_
