#include "server/archive/s3/http_call.h"

#include <curl/curl.h>

#include <algorithm>
#include <cstring>
#include <mutex>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "server/base/loopback.h"

namespace videotask::s3 {
namespace {

struct Exchange {
  HttpResponse* response;
  size_t max_body;
};

size_t OnBody(char* data, size_t size, size_t n, void* user) {
  auto* x = static_cast<Exchange*>(user);
  const size_t len = size * n;
  std::string& body = x->response->body;
  const size_t room = x->max_body - std::min(x->max_body, body.size());
  if (len > room) x->response->body_truncated = true;
  body.append(data, std::min(len, room));
  return len;
}

size_t OnHeader(char* data, size_t size, size_t n, void* user) {
  auto* x = static_cast<Exchange*>(user);
  const size_t len = size * n;
  absl::string_view line(data, len);
  if (absl::StartsWith(line, "HTTP/")) {
    x->response->headers.clear();  // a 100 Continue's, or an earlier hop's
    return len;
  }
  const size_t colon = line.find(':');
  if (colon != absl::string_view::npos && x->response->headers.size() < 200) {
    x->response->headers.emplace_back(
        absl::AsciiStrToLower(absl::StripAsciiWhitespace(line.substr(0, colon))),
        std::string(absl::StripAsciiWhitespace(line.substr(colon + 1))));
  }
  return len;
}

long Millis(absl::Duration d) {
  return static_cast<long>(std::clamp<int64_t>(absl::ToInt64Milliseconds(d), 1, 24LL * 3600 * 1000));
}

}  // namespace

std::string HttpResponse::Header(absl::string_view lower_name) const {
  for (const auto& [k, v] : headers) {
    if (k == lower_name) return v;
  }
  return "";
}

std::string Excerpt(absl::string_view text, size_t max_chars) {
  std::string out;
  for (char c : text.substr(0, max_chars)) {
    out.push_back(absl::ascii_iscntrl(static_cast<unsigned char>(c)) ? '?' : c);
  }
  if (text.size() > max_chars) out += "...";
  return out;
}

std::string ErrorCode(absl::string_view code) {
  std::string out;
  for (char c : code) {
    if (out.size() == 64) break;
    if (absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '.') out.push_back(c);
  }
  return out;
}

std::string XmlText(absl::string_view xml, absl::string_view name) {
  const std::string open = absl::StrCat("<", name, ">");
  const std::string close = absl::StrCat("</", name, ">");
  const size_t start = xml.find(open);
  if (start == absl::string_view::npos) return "";
  const size_t from = start + open.size();
  const size_t end = xml.find(close, from);
  if (end == absl::string_view::npos) return "";
  return absl::StrReplaceAll(xml.substr(from, end - from), {{"&quot;", "\""},
                                                            {"&apos;", "'"},
                                                            {"&lt;", "<"},
                                                            {"&gt;", ">"},
                                                            {"&amp;", "&"}});
}

std::string Redact(std::string text, std::initializer_list<absl::string_view> secrets) {
  for (absl::string_view s : secrets) {
    if (!s.empty()) absl::StrReplaceAll({{s, "[redacted]"}}, &text);
  }
  return text;
}

namespace {

int OnProgress(void* cancelled, curl_off_t, curl_off_t, curl_off_t, curl_off_t) {
  return (*static_cast<const std::function<bool()>*>(cancelled))() ? 1 : 0;
}

}  // namespace

HttpSession::HttpSession() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
  easy_ = curl_easy_init();
}

HttpSession::~HttpSession() {
  if (easy_ != nullptr) curl_easy_cleanup(static_cast<CURL*>(easy_));
}

absl::StatusOr<HttpResponse> HttpSession::Call(const HttpRequest& request) {
  CURL* easy = static_cast<CURL*>(easy_);
  if (easy == nullptr) return absl::ResourceExhaustedError("curl_easy_init failed");
  curl_easy_reset(easy);  // keeps the connection cache
  HttpResponse response;
  Exchange x{&response, request.max_response_bytes};
  char error[CURL_ERROR_SIZE] = {0};
  curl_slist* headers = nullptr;
  // libcurl adds these by itself for bodies; S3 wants neither.
  headers = curl_slist_append(headers, "Expect:");
  bool has_content_type = false;
  for (const auto& [k, v] : request.headers) {
    if (absl::EqualsIgnoreCase(k, "content-type")) has_content_type = true;
    headers = curl_slist_append(headers, absl::StrCat(k, ": ", v).c_str());
  }
  if (!has_content_type) headers = curl_slist_append(headers, "Content-Type:");
  curl_easy_setopt(easy, CURLOPT_URL, request.url.c_str());
  curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(easy, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(easy, CURLOPT_FOLLOWLOCATION, 0L);
  // No proxy from the environment (http_proxy, HTTPS_PROXY, ALL_PROXY):
  // the Pod Identity token, STS's answers and signed S3 requests go
  // straight to the host named (docs/archive.md).
  curl_easy_setopt(easy, CURLOPT_PROXY, "");
  curl_easy_setopt(easy, CURLOPT_NOPROXY, "*");
  curl_easy_setopt(easy, CURLOPT_SSL_VERIFYPEER, 1L);
  curl_easy_setopt(easy, CURLOPT_SSL_VERIFYHOST, 2L);
  if (!request.ca_file.empty()) curl_easy_setopt(easy, CURLOPT_CAINFO, request.ca_file.c_str());
  curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT_MS, Millis(request.connect_timeout));
  curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, Millis(request.timeout));
  curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, error);
  curl_easy_setopt(easy, CURLOPT_HTTPHEADER, headers);
  curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, &OnBody);
  curl_easy_setopt(easy, CURLOPT_WRITEDATA, &x);
  curl_easy_setopt(easy, CURLOPT_HEADERFUNCTION, &OnHeader);
  curl_easy_setopt(easy, CURLOPT_HEADERDATA, &x);
  if (request.method == "HEAD") {
    curl_easy_setopt(easy, CURLOPT_NOBODY, 1L);
  } else if (request.method == "GET") {
    curl_easy_setopt(easy, CURLOPT_HTTPGET, 1L);
  } else {
    // PUT, POST and DELETE with the body from memory (POSTFIELDS copies
    // nothing); the method named as it is.
    curl_easy_setopt(easy, CURLOPT_POSTFIELDS, request.body.data());
    curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE_LARGE,
                     static_cast<curl_off_t>(request.body.size()));
    curl_easy_setopt(easy, CURLOPT_CUSTOMREQUEST, request.method.c_str());
  }
  if (request.cancelled) {
    curl_easy_setopt(easy, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(easy, CURLOPT_XFERINFOFUNCTION, &OnProgress);
    curl_easy_setopt(easy, CURLOPT_XFERINFODATA, &request.cancelled);
  }
  const CURLcode rc = curl_easy_perform(easy);
  curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &response.status);
  curl_easy_setopt(easy, CURLOPT_HTTPHEADER, nullptr);
  curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, nullptr);
  // Header lines may hold a session token: wipe them before freeing.
  for (curl_slist* h = headers; h != nullptr; h = h->next) {
    std::memset(h->data, 0, std::strlen(h->data));
  }
  curl_slist_free_all(headers);
  if (rc == CURLE_ABORTED_BY_CALLBACK && request.cancelled && request.cancelled()) {
    return absl::CancelledError("cancelled");
  }
  if (rc != CURLE_OK) {
    std::string detail = curl_easy_strerror(rc);
    if (error[0] != '\0') absl::StrAppend(&detail, ": ", Excerpt(error));
    return absl::UnavailableError(detail);
  }
  return response;
}

absl::Status CheckTransport(absl::string_view url, absl::string_view what,
                            const std::vector<std::string>& extra_plain_http_hosts) {
  CURLU* u = curl_url();
  if (u == nullptr) return absl::ResourceExhaustedError("curl_url failed");
  const std::string s(url);
  char* scheme = nullptr;
  char* host = nullptr;
  char* user = nullptr;
  char* password = nullptr;
  const bool parsed = curl_url_set(u, CURLUPART_URL, s.c_str(), 0) == CURLUE_OK &&
                      curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) == CURLUE_OK &&
                      curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK &&
                      host != nullptr && host[0] != '\0';
  const bool userinfo = parsed && (curl_url_get(u, CURLUPART_USER, &user, 0) == CURLUE_OK ||
                                   curl_url_get(u, CURLUPART_PASSWORD, &password, 0) == CURLUE_OK);
  const std::string scheme_s = scheme != nullptr ? absl::AsciiStrToLower(scheme) : "";
  const std::string host_s = host != nullptr ? host : "";
  curl_free(scheme);
  curl_free(host);
  curl_free(user);
  curl_free(password);
  curl_url_cleanup(u);
  // A user name or password in the URL is refused, and a URL that may hold
  // one (an '@') is never printed: these URLs go into errors and logs.
  if (userinfo) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, " must not hold a user name or password (user:password@); the URL is not shown"));
  }
  if (!parsed || s.find_first_of(" \t\r\n") != std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, " is not a valid URL",
        s.find('@') == std::string::npos ? absl::StrCat(": ", Excerpt(url)) : std::string()));
  }
  if (scheme_s == "https") return absl::OkStatus();
  if (scheme_s == "http") {
    if (IsLoopbackAddress(host_s)) return absl::OkStatus();
    for (const std::string& h : extra_plain_http_hosts) {
      if (absl::EqualsIgnoreCase(h, host_s)) return absl::OkStatus();
    }
    return absl::InvalidArgumentError(absl::StrCat(
        what, " must be https:// (plain http only to a loopback address): ", Excerpt(url)));
  }
  return absl::InvalidArgumentError(
      absl::StrCat(what, " must be an https:// URL: ", Excerpt(url)));
}

}  // namespace videotask::s3
