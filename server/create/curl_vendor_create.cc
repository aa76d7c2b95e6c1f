#include "server/create/curl_vendor_create.h"

#include <curl/curl.h>

#include <algorithm>
#include <mutex>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "server/upstream/task_json.h"

namespace videotask {
namespace {

struct Transfer {
  std::string body;
  size_t max_body = 0;
  bool too_large = false;
  int sends = 0;  // pre-request callbacks: 1 once the request goes out
};

size_t OnBody(char* data, size_t size, size_t n, void* user) {
  auto* t = static_cast<Transfer*>(user);
  const size_t len = size * n;
  if (len > t->max_body - std::min(t->max_body, t->body.size())) {
    t->too_large = true;
    return 0;
  }
  t->body.append(data, len);
  return len;
}

int OnPrereq(void* user, char*, char*, int, int) {
  auto* t = static_cast<Transfer*>(user);
  // A second send would be libcurl retrying on a dead connection: a create
  // must never be sent twice.
  return ++t->sends > 1 ? CURL_PREREQFUNC_ABORT : CURL_PREREQFUNC_OK;
}

VendorCreateResult Failure(VendorCreateResult::Kind kind, std::string code, std::string message) {
  VendorCreateResult r;
  r.kind = kind;
  r.code = std::move(code);
  r.message = std::move(message);
  return r;
}

}  // namespace

CurlVendorCreateClient::CurlVendorCreateClient(CurlUpstreamClient::Options options,
                                               std::shared_ptr<ApiKeySource> key, Clock* clock)
    : options_([&] {
        while (absl::EndsWith(options.base_url, "/")) options.base_url.pop_back();
        return std::move(options);
      }()),
      key_(std::move(key)),
      clock_(clock != nullptr ? clock : RealClock::Get()) {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

std::string CurlVendorCreateClient::CreateUrl(const std::string& family) const {
  return absl::StrCat(options_.base_url, "/", family, "/videos");
}

VendorCreateResult CurlVendorCreateClient::Create(const std::string& family,
                                                  const std::string& body_json) {
  const absl::Time start = clock_->Monotonic();
  auto finish = [&](VendorCreateResult r) {
    r.latency = clock_->Monotonic() - start;
    return r;
  };
  absl::StatusOr<std::string> key =
      key_ != nullptr ? key_->Get() : absl::UnavailableError("no API key source");
  if (!key.ok()) {
    return finish(Failure(VendorCreateResult::Kind::kNotSent, "error",
                          "the API key is unavailable; nothing was sent"));
  }
  CURL* easy = curl_easy_init();
  if (easy == nullptr) {
    return finish(Failure(VendorCreateResult::Kind::kNotSent, "error",
                          "could not set up the HTTP request; nothing was sent"));
  }
  Transfer t;
  t.max_body = options_.max_body_bytes;
  curl_slist* headers = nullptr;
  std::string auth = absl::StrCat("Authorization: Bearer ", *key);
  headers = curl_slist_append(headers, auth.c_str());
  std::fill(auth.begin(), auth.end(), '\0');
  headers = curl_slist_append(headers, "Content-Type: application/json");
  headers = curl_slist_append(headers, "Accept: application/json");
  headers = curl_slist_append(headers, "Expect:");
  const std::string url = CreateUrl(family);
  char error[CURL_ERROR_SIZE] = {0};
  bool ok = headers != nullptr;
  auto set = [&](CURLoption opt, auto value) {
    if (ok && curl_easy_setopt(easy, opt, value) != CURLE_OK) ok = false;
  };
  set(CURLOPT_URL, url.c_str());
  set(CURLOPT_POST, 1L);
  set(CURLOPT_POSTFIELDS, body_json.c_str());
  set(CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(body_json.size()));
  set(CURLOPT_HTTPHEADER, headers);
  if (ok && !CurlUpstreamClient::SetTransportOptions(easy, options_)) ok = false;
  set(CURLOPT_FRESH_CONNECT, 1L);
  set(CURLOPT_FORBID_REUSE, 1L);
  set(CURLOPT_PREREQFUNCTION, &OnPrereq);
  set(CURLOPT_PREREQDATA, static_cast<void*>(&t));
  set(CURLOPT_WRITEFUNCTION, &OnBody);
  set(CURLOPT_WRITEDATA, static_cast<void*>(&t));
  set(CURLOPT_ERRORBUFFER, error);
  if (ok && curl_easy_setopt(easy, CURLOPT_HTTP_VERSION,
                             static_cast<long>(CURL_HTTP_VERSION_2TLS)) != CURLE_OK) {
    curl_easy_setopt(easy, CURLOPT_HTTP_VERSION, static_cast<long>(CURL_HTTP_VERSION_1_1));
  }
  VendorCreateResult r;
  if (!ok) {
    r = Failure(VendorCreateResult::Kind::kNotSent, "error",
                "could not set up the HTTP request; nothing was sent");
  } else {
    const CURLcode rc = curl_easy_perform(easy);
    const absl::Time now = clock_->Now();
    if (rc == CURLE_OK) {
      long status = 0;
      curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &status);
      std::optional<absl::Duration> retry_after;
      curl_header* h = nullptr;
      if (status == 429 &&
          curl_easy_header(easy, "Retry-After", 0, CURLH_HEADER, -1, &h) == CURLHE_OK &&
          h != nullptr && h->value != nullptr) {
        retry_after = CurlUpstreamClient::ParseRetryAfter(h->value, now);
      }
      r = ClassifyCreateAnswer(status, t.body, retry_after, *key, now);
    } else if (t.sends == 0) {
      r = Failure(VendorCreateResult::Kind::kNotSent,
                  rc == CURLE_OPERATION_TIMEDOUT ? "timeout" : "connect_error",
                  absl::StrCat("the request could not be sent (", curl_easy_strerror(rc),
                               error[0] != '\0' ? absl::StrCat(": ", SanitizedExcerpt(error, 200))
                                                : std::string(),
                               "); nothing was created"));
    } else {
      std::string code = rc == CURLE_OPERATION_TIMEDOUT ? "timeout"
                         : t.too_large                  ? "body_too_large"
                                                        : "reset";
      r = Failure(VendorCreateResult::Kind::kUnknown, code,
                  absl::StrCat("no answer came back (", curl_easy_strerror(rc), ")"));
    }
  }
  std::fill(key->begin(), key->end(), '\0');
  curl_slist_free_all(headers);
  curl_easy_cleanup(easy);
  return finish(std::move(r));
}

}  // namespace videotask
