#include "server/upstream/curl_upstream_client.h"

#include <curl/curl.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <mutex>
#include <unordered_map>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "server/base/task_id.h"
#include "server/upstream/task_json.h"

namespace videotask {

// One Fetch call, until its callback runs.
struct CurlUpstreamClient::Request {
  std::string id;
  Callback done;
  absl::Time start;
};

// A request on the wire: owns the easy handle's per-request state.
struct CurlUpstreamClient::Transfer {
  std::unique_ptr<Request> request;
  CURL* easy = nullptr;
  curl_slist* headers = nullptr;
  std::string url;
  std::string body;
  size_t max_body = 0;
  bool too_large = false;
  int sends = 0;           // times libcurl was about to send the request
  bool resend_stopped = false;
  char error[CURL_ERROR_SIZE] = {0};

  ~Transfer() {
    if (headers != nullptr) {
      // The Authorization line holds the key: wipe it before freeing.
      for (curl_slist* h = headers; h != nullptr; h = h->next) {
        if (h->data != nullptr) std::memset(h->data, 0, std::strlen(h->data));
      }
      curl_slist_free_all(headers);
    }
  }
};

namespace {

constexpr absl::string_view kShuttingDown = "client shutting down";
constexpr size_t kMaxPooledHandles = 64;

void GlobalInit() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

long ToMillis(absl::Duration d) {
  const int64_t ms = absl::ToInt64Milliseconds(d);
  return static_cast<long>(std::clamp<int64_t>(ms, 1, 24LL * 3600 * 1000));
}

// libcurl's message, without control characters, bounded.
std::string CurlDetail(CURLcode rc, const char* errbuf) {
  std::string msg = curl_easy_strerror(rc);
  if (errbuf != nullptr && errbuf[0] != '\0') {
    absl::StrAppend(&msg, ": ", SanitizedExcerpt(errbuf, 200));
  }
  return msg;
}

bool IsConnectError(CURLcode rc) {
  switch (rc) {
    case CURLE_COULDNT_CONNECT:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
    case CURLE_PARTIAL_FILE:
      return true;
    default:
      return false;
  }
}

}  // namespace

bool CurlUpstreamClient::SetTransportOptions(void* easy_ptr, const Options& options) {
  CURL* easy = static_cast<CURL*>(easy_ptr);
  bool ok = easy != nullptr;
  auto set = [&](CURLoption opt, auto value) {
    if (ok && curl_easy_setopt(easy, opt, value) != CURLE_OK) ok = false;
  };
  set(CURLOPT_USERAGENT, options.user_agent.c_str());
  set(CURLOPT_NOSIGNAL, 1L);
  set(CURLOPT_CONNECTTIMEOUT_MS, ToMillis(options.connect_timeout));
  set(CURLOPT_TIMEOUT_MS, ToMillis(options.timeout));
  set(CURLOPT_PROTOCOLS_STR, "http,https");
  set(CURLOPT_FOLLOWLOCATION, 0L);
  set(CURLOPT_SSL_VERIFYPEER, 1L);
  set(CURLOPT_SSL_VERIFYHOST, 2L);
  if (!options.ca_file.empty()) set(CURLOPT_CAINFO, options.ca_file.c_str());
  set(CURLOPT_MAXFILESIZE_LARGE, static_cast<curl_off_t>(options.max_body_bytes));
  return ok;
}

int CurlUpstreamClient::OnPrereq(void* transfer, char* /*conn_primary_ip*/,
                                 char* /*conn_local_ip*/, int /*conn_primary_port*/,
                                 int /*conn_local_port*/) {
  auto* t = static_cast<Transfer*>(transfer);
  if (++t->sends > 1) {
    t->resend_stopped = true;
    return CURL_PREREQFUNC_ABORT;
  }
  return CURL_PREREQFUNC_OK;
}

size_t CurlUpstreamClient::OnBody(char* data, size_t size, size_t n,
                                  void* user) {
  auto* t = static_cast<Transfer*>(user);
  const size_t len = size * n;
  if (len > t->max_body - std::min(t->max_body, t->body.size())) {
    t->too_large = true;
    return 0;  // aborts the transfer with CURLE_WRITE_ERROR
  }
  t->body.append(data, len);
  return len;
}

absl::StatusOr<std::unique_ptr<CurlUpstreamClient>> CurlUpstreamClient::Create(
    Options options, std::shared_ptr<ApiKeySource> key, Clock* clock) {
  if (key == nullptr) {
    return absl::InvalidArgumentError("no API key source");
  }
  while (absl::EndsWith(options.base_url, "/")) options.base_url.pop_back();
  if (!absl::StartsWithIgnoreCase(options.base_url, "http://") &&
      !absl::StartsWithIgnoreCase(options.base_url, "https://")) {
    return absl::InvalidArgumentError(
        "upstream base URL must start with http:// or https://");
  }
  if (options.base_url.find_first_of("?# \t\r\n") != std::string::npos) {
    return absl::InvalidArgumentError(
        "upstream base URL must not contain a query, fragment or whitespace");
  }
  GlobalInit();
  {
    CURLU* u = curl_url();
    if (u == nullptr) return absl::ResourceExhaustedError("curl_url failed");
    const CURLUcode uc = curl_url_set(u, CURLUPART_URL, options.base_url.c_str(), 0);
    char* host = nullptr;
    const bool has_host =
        uc == CURLUE_OK && curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK &&
        host != nullptr && host[0] != '\0';
    curl_free(host);
    curl_url_cleanup(u);
    if (!has_host) {
      return absl::InvalidArgumentError(
          absl::StrCat("upstream base URL is not a valid URL: ",
                       SanitizedExcerpt(options.base_url, 200)));
    }
  }
  if (options.connect_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("connect_timeout must be positive");
  }
  if (options.timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("timeout must be positive");
  }
  if (options.max_body_bytes == 0) {
    return absl::InvalidArgumentError("max_body_bytes must be positive");
  }
  if (options.max_host_connections <= 0) {
    return absl::InvalidArgumentError("max_host_connections must be positive");
  }
  if (!options.ca_file.empty() && ::access(options.ca_file.c_str(), R_OK) != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("CA file ", options.ca_file, " is not readable"));
  }
  CURLM* multi = curl_multi_init();
  if (multi == nullptr) {
    return absl::ResourceExhaustedError("curl_multi_init failed");
  }
  curl_multi_setopt(multi, CURLMOPT_PIPELINING, CURLPIPE_MULTIPLEX);
  curl_multi_setopt(multi, CURLMOPT_MAX_HOST_CONNECTIONS,
                    static_cast<long>(options.max_host_connections));
  curl_multi_setopt(multi, CURLMOPT_MAXCONNECTS,
                    static_cast<long>(options.max_host_connections));
  if (clock == nullptr) clock = RealClock::Get();
  return std::unique_ptr<CurlUpstreamClient>(
      new CurlUpstreamClient(std::move(options), std::move(key), clock, multi));
}

CurlUpstreamClient::CurlUpstreamClient(Options options,
                                       std::shared_ptr<ApiKeySource> key,
                                       Clock* clock, void* multi)
    : options_(std::move(options)),
      key_(std::move(key)),
      clock_(clock),
      multi_(multi),
      https_(absl::StartsWithIgnoreCase(options_.base_url, "https://")) {
  thread_ = std::thread([this] { Loop(); });
}

CurlUpstreamClient::~CurlUpstreamClient() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  curl_multi_wakeup(static_cast<CURLM*>(multi_));
  thread_.join();
  for (void* easy : idle_easy_) curl_easy_cleanup(static_cast<CURL*>(easy));
  curl_multi_cleanup(static_cast<CURLM*>(multi_));
}

std::string CurlUpstreamClient::ResultUrl(absl::string_view id) const {
  return absl::StrCat(options_.base_url, "/result/", id);
}

void CurlUpstreamClient::Complete(std::unique_ptr<Request> request,
                                  UpstreamResult result) {
  Callback done = std::move(request->done);
  request.reset();
  if (done) std::move(done)(std::move(result));
}

void CurlUpstreamClient::Fetch(const std::string& id, Callback done) {
  const absl::Time start = clock_->Monotonic();
  if (absl::Status valid = ValidateTaskId(id); !valid.ok()) {
    UpstreamResult r;
    r.outcome = UpstreamOutcome::kInvalidArgument;
    r.code = "invalid_id";
    r.detail = std::string(valid.message());
    r.latency = clock_->Monotonic() - start;
    if (done) std::move(done)(std::move(r));
    return;
  }
  auto request = std::make_unique<Request>();
  request->id = id;
  request->done = std::move(done);
  request->start = start;
  {
    absl::MutexLock lock(&mu_);
    if (!stopped_) {
      queue_.push_back(std::move(request));
      // Under the lock, so the multi handle cannot be gone yet: it is freed
      // only after the loop has set stopped_.
      curl_multi_wakeup(static_cast<CURLM*>(multi_));
    }
  }
  if (request != nullptr) {
    // Only reachable when Fetch races the destructor's end: the loop is
    // gone, so complete here.
    UpstreamResult r;
    r.outcome = UpstreamOutcome::kTransient;
    r.code = "error";
    r.detail = std::string(kShuttingDown);
    r.latency = clock_->Monotonic() - start;
    Complete(std::move(request), std::move(r));
  }
}

std::optional<absl::Duration> CurlUpstreamClient::ParseRetryAfter(
    absl::string_view value, absl::Time now) {
  value = absl::StripAsciiWhitespace(value);
  if (value.empty() || value.size() > 64) return std::nullopt;
  if (std::all_of(value.begin(), value.end(), absl::ascii_isdigit)) {
    int64_t seconds = 0;
    if (!absl::SimpleAtoi(value, &seconds)) return std::nullopt;
    return absl::Seconds(seconds);
  }
  // An HTTP date always has letters (day and month names).
  if (!std::any_of(value.begin(), value.end(), absl::ascii_isalpha)) {
    return std::nullopt;
  }
  const std::string s(value);
  const time_t t = curl_getdate(s.c_str(), nullptr);
  if (t == -1) return std::nullopt;
  return std::max(absl::ZeroDuration(), absl::FromTimeT(t) - now);
}

void CurlUpstreamClient::StartTransfer(std::unique_ptr<Request> request) {
  absl::StatusOr<std::string> key = key_->Get();
  if (!key.ok()) {
    UpstreamResult r;
    r.outcome = UpstreamOutcome::kRejected;
    r.code = "error";
    r.detail = absl::StrCat("API key unavailable: ", key.status().message());
    r.latency = clock_->Monotonic() - request->start;
    Complete(std::move(request), std::move(r));
    return;
  }

  CURL* easy = nullptr;
  if (!idle_easy_.empty()) {
    easy = static_cast<CURL*>(idle_easy_.back());
    idle_easy_.pop_back();
    curl_easy_reset(easy);
  } else {
    easy = curl_easy_init();
  }
  auto t = std::make_unique<Transfer>();
  t->easy = easy;
  t->max_body = options_.max_body_bytes;
  t->url = ResultUrl(request->id);
  t->request = std::move(request);

  std::string auth = absl::StrCat("Authorization: Bearer ", *key);
  t->headers = curl_slist_append(t->headers, auth.c_str());
  std::fill(auth.begin(), auth.end(), '\0');
  std::fill(key->begin(), key->end(), '\0');
  t->headers = curl_slist_append(t->headers, "Accept: application/json");

  bool ok = easy != nullptr && t->headers != nullptr;
  auto set = [&](CURLoption opt, auto value) {
    if (ok && curl_easy_setopt(easy, opt, value) != CURLE_OK) ok = false;
  };
  set(CURLOPT_URL, t->url.c_str());
  set(CURLOPT_HTTPGET, 1L);
  set(CURLOPT_HTTPHEADER, t->headers);
  if (ok && !SetTransportOptions(easy, options_)) ok = false;
  set(CURLOPT_ACCEPT_ENCODING, "");  // what libcurl can decode; capped below
  set(CURLOPT_TCP_KEEPALIVE, 1L);
  // Over TLS, wait for ALPN to tell whether an opening connection can
  // multiplex rather than open more. Not for plain http, which never
  // multiplexes here: there a hanging first response would hold back the
  // rest.
  if (https_) set(CURLOPT_PIPEWAIT, 1L);
  // HTTP/2 when the server offers it in TLS; HTTP/1.1 otherwise.
  if (ok && curl_easy_setopt(easy, CURLOPT_HTTP_VERSION,
                             static_cast<long>(CURL_HTTP_VERSION_2TLS)) != CURLE_OK) {
    curl_easy_setopt(easy, CURLOPT_HTTP_VERSION,
                     static_cast<long>(CURL_HTTP_VERSION_1_1));
  }
  // libcurl silently re-sends a request whose reused keep-alive connection
  // died before an answer; the vendor may have counted the first one, and
  // the hub's rate window counts one. Never send a request twice.
  set(CURLOPT_PREREQFUNCTION, &CurlUpstreamClient::OnPrereq);
  set(CURLOPT_PREREQDATA, static_cast<void*>(t.get()));
  set(CURLOPT_WRITEFUNCTION, &CurlUpstreamClient::OnBody);
  set(CURLOPT_WRITEDATA, static_cast<void*>(t.get()));
  set(CURLOPT_ERRORBUFFER, t->error);
  if (ok && curl_multi_add_handle(static_cast<CURLM*>(multi_), easy) != CURLM_OK) {
    ok = false;
  }
  if (!ok) {
    if (easy != nullptr) curl_easy_cleanup(easy);
    t->easy = nullptr;
    UpstreamResult r;
    r.outcome = UpstreamOutcome::kTransient;
    r.code = "error";
    r.detail = "could not set up the HTTP request";
    r.latency = clock_->Monotonic() - t->request->start;
    Complete(std::move(t->request), std::move(r));
    return;
  }
  active_.emplace(easy, std::move(t));
}

void CurlUpstreamClient::FinishTransfer(void* easy_ptr, int curl_code) {
  CURL* easy = static_cast<CURL*>(easy_ptr);
  auto it = active_.find(easy_ptr);
  if (it == active_.end()) return;  // not ours; cannot happen
  std::unique_ptr<Transfer> t = std::move(it->second);
  active_.erase(it);
  curl_multi_remove_handle(static_cast<CURLM*>(multi_), easy);

  const absl::Time now = clock_->Now();
  const CURLcode rc = static_cast<CURLcode>(curl_code);
  UpstreamResult r;
  r.outcome = UpstreamOutcome::kTransient;
  r.latency = clock_->Monotonic() - t->request->start;

  if (rc != CURLE_OK) {
    if (t->too_large || rc == CURLE_FILESIZE_EXCEEDED) {
      r.code = "body_too_large";
      r.detail = absl::StrCat("upstream response body exceeds ",
                              options_.max_body_bytes, " bytes");
    } else if (t->resend_stopped) {
      r.code = "connection_lost";
      r.detail =
          "the reused connection closed before an answer; the request is not sent twice";
    } else if (rc == CURLE_OPERATION_TIMEDOUT) {
      r.code = "timeout";
      r.detail = CurlDetail(rc, t->error);
    } else if (IsConnectError(rc)) {
      r.code = "connect_error";
      r.detail = CurlDetail(rc, t->error);
    } else {
      r.code = "error";
      r.detail = CurlDetail(rc, t->error);
    }
  } else {
    long status = 0;
    curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &status);
    r.code = std::to_string(status);
    if (status == 200) {
      absl::StatusOr<v1::VideoTask> task =
          ParseVendorTask(t->body, t->request->id, now);
      if (task.ok()) {
        r.outcome = UpstreamOutcome::kOk;
        r.task = *std::move(task);
      } else {
        r.detail = absl::StrCat("malformed upstream response: ",
                                task.status().message());
      }
    } else if (status == 404) {
      r.outcome = UpstreamOutcome::kNotFound;
      r.detail = "upstream does not know the task (HTTP 404)";
    } else if (status == 401 || status == 403) {
      r.outcome = UpstreamOutcome::kRejected;
      r.detail = absl::StrCat("upstream rejected the API key (HTTP ", status, ")");
    } else if (status == 429) {
      r.outcome = UpstreamOutcome::kRateLimited;
      r.detail = "upstream rate limit (HTTP 429)";
      curl_header* h = nullptr;
      if (curl_easy_header(easy, "Retry-After", 0, CURLH_HEADER, -1, &h) ==
              CURLHE_OK &&
          h != nullptr && h->value != nullptr) {
        r.retry_after = ParseRetryAfter(h->value, now);
      }
    } else if (status == 0) {
      r.code = "error";
      r.detail = "no HTTP status from upstream";
    } else {
      r.detail = absl::StrCat("upstream answered HTTP ", status);
    }
  }
  t->body.clear();
  t->body.shrink_to_fit();

  if (idle_easy_.size() < kMaxPooledHandles) {
    idle_easy_.push_back(easy);
  } else {
    curl_easy_cleanup(easy);
  }
  t->easy = nullptr;
  Complete(std::move(t->request), std::move(r));
}

void CurlUpstreamClient::Loop() {
  CURLM* multi = static_cast<CURLM*>(multi_);
  while (true) {
    std::deque<std::unique_ptr<Request>> batch;
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) break;
      batch.swap(queue_);
    }
    for (auto& request : batch) StartTransfer(std::move(request));
    batch.clear();

    int running = 0;
    curl_multi_perform(multi, &running);
    int left = 0;
    while (CURLMsg* msg = curl_multi_info_read(multi, &left)) {
      if (msg->msg == CURLMSG_DONE) {
        FinishTransfer(msg->easy_handle, static_cast<int>(msg->data.result));
      }
    }
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) break;
      if (!queue_.empty()) continue;  // new work arrived from a callback
    }
    // Returns early on socket activity, on curl's own timers, or on wakeup.
    curl_multi_poll(multi, nullptr, 0, 1000, nullptr);
  }
  ShutDown();
}

void CurlUpstreamClient::ShutDown() {
  CURLM* multi = static_cast<CURLM*>(multi_);
  // Transfers on the wire (or waiting inside libcurl for a connection).
  std::unordered_map<void*, std::unique_ptr<Transfer>> active;
  active.swap(active_);
  for (auto& [easy, t] : active) {
    curl_multi_remove_handle(multi, static_cast<CURL*>(easy));
    curl_easy_cleanup(static_cast<CURL*>(easy));
    t->easy = nullptr;
    UpstreamResult r;
    r.outcome = UpstreamOutcome::kTransient;
    r.code = "error";
    r.detail = std::string(kShuttingDown);
    r.latency = clock_->Monotonic() - t->request->start;
    Complete(std::move(t->request), std::move(r));
  }
  active.clear();
  // Queued requests, including any that callbacks above queued.
  while (true) {
    std::deque<std::unique_ptr<Request>> batch;
    {
      absl::MutexLock lock(&mu_);
      if (queue_.empty()) {
        stopped_ = true;
        break;
      }
      batch.swap(queue_);
    }
    for (auto& request : batch) {
      UpstreamResult r;
      r.outcome = UpstreamOutcome::kTransient;
      r.code = "error";
      r.detail = std::string(kShuttingDown);
      r.latency = clock_->Monotonic() - request->start;
      Complete(std::move(request), std::move(r));
    }
  }
}

}  // namespace videotask
