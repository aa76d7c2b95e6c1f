// CurlUpstreamClient: the UpstreamClient that talks to the vendor over HTTP
// with libcurl.
//
// One I/O thread drives a libcurl multi handle (curl_multi_poll, woken by
// curl_multi_wakeup); there is no thread per request. Fetch() is thread-safe
// and never blocks: it validates the id (an invalid id completes inline with
// kInvalidArgument, code "invalid_id", and makes no request), queues the
// request and wakes the loop.
//
// Transport: connections are kept alive and reused through the multi
// handle's connection cache (at most `max_host_connections` per host; more
// requests wait for a free connection), and easy handles are pooled. HTTP/2
// is used when the server offers it over TLS (CURL_HTTP_VERSION_2TLS), with
// requests multiplexed on one connection. TLS peer and host verification are
// always on; `ca_file` adds a CA bundle (it is used as CURLOPT_CAINFO while
// the system CA directory stays in use, so on Debian-style builds it adds to
// the system trust rather than replacing it). Redirects are not followed.
// CURLOPT_NOSIGNAL is set. Proxies: libcurl's standard environment variables
// (https_proxy, http_proxy, no_proxy) are honoured, as with the curl tool.
// The API key is taken from the ApiKeySource for each request, so a rotated
// key is used by the next request; it is sent as `Authorization: Bearer`.
// ApiKeySource::Get() runs on the I/O thread and only reads memory (a file
// source re-reads its file on a thread of its own), so no request path
// touches the file system.
//
// Classification (UpstreamResult.code in quotes):
//   200 + task parsed        kOk          "200"
//   200 + bad body/status    kTransient   "200" (detail says malformed)
//   404                      kNotFound    "404"
//   401, 403                 kRejected    "401" / "403"
//   429                      kRateLimited "429"; retry_after from Retry-After
//                                         (delta seconds or HTTP date)
//   other HTTP statuses      kTransient   the status, e.g. "503"
//   body over max_body_bytes kTransient   "body_too_large"
//   timeout                  kTransient   "timeout"
//   reused connection died   kTransient   "connection_lost" (libcurl would
//     before an answer                     re-send it; it is never sent twice,
//                                          so the rate cap holds at the vendor)
//   cannot connect/resolve   kTransient   "connect_error"
//   other libcurl errors     kTransient   "error"
//   API key unavailable      kRejected    "error" (no request is made)
// `detail` never contains the key, request headers or the response body.
// This class never logs.
//
// Callbacks run on the I/O thread (except the inline invalid-id one). They
// must not block (no FetchSync, no waiting on other callbacks) since that
// stalls every other request; calling Fetch() from a callback is fine.
// Destroying the client stops the loop and completes every pending request
// exactly once with kTransient "client shutting down"; do not destroy it from
// one of its callbacks.
#ifndef VIDEOTASK_SERVER_UPSTREAM_CURL_UPSTREAM_CLIENT_H_
#define VIDEOTASK_SERVER_UPSTREAM_CURL_UPSTREAM_CLIENT_H_

#include <cstddef>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/upstream/api_key.h"
#include "server/base/clock.h"
#include "server/upstream/upstream_client.h"

namespace videotask {

class CurlUpstreamClient : public UpstreamClient {
 public:
  struct Options {
    // Up to and including the API version; "/result/{id}" is appended.
    std::string base_url = "https://zcbservice.aizfw.cn/kyyReactApiServer/v1";
    absl::Duration connect_timeout = absl::Seconds(5);
    // The whole request (connect, send, wait, receive) once libcurl starts
    // it; a request waiting for a free connection has not started yet.
    absl::Duration timeout = absl::Seconds(10);
    size_t max_body_bytes = 1 << 20;
    std::string ca_file;  // optional extra CA bundle (PEM)
    std::string user_agent = "videotask-sidecar/0.1";
    // Connections open at once to the upstream host (HTTP/2 multiplexes
    // many requests over one).
    int max_host_connections = 16;
  };

  // Checks the options (base_url must be an absolute http or https URL
  // without query or fragment; timeouts and limits positive; ca_file
  // readable when set) and starts the I/O thread. `clock` may be null (the
  // real clock); it must outlive the client.
  static absl::StatusOr<std::unique_ptr<CurlUpstreamClient>> Create(
      Options options, std::shared_ptr<ApiKeySource> key, Clock* clock);

  ~CurlUpstreamClient() override;

  void Fetch(const std::string& id, Callback done) override;

  // "{base_url}/result/{id}"; `id` must already be valid.
  std::string ResultUrl(absl::string_view id) const;

  // The transport rules every request to the vendor follows, set on a
  // libcurl easy handle (CURL*): user agent, CURLOPT_NOSIGNAL, connect and
  // total timeouts, http and https only, no redirects, TLS peer and host
  // verification on, `ca_file`, the body cap. False when libcurl refused one.
  static bool SetTransportOptions(void* easy, const Options& options);

  // Parses a Retry-After value: delta seconds, or an HTTP date taken
  // relative to `now` (a past date gives zero). nullopt when invalid.
  static std::optional<absl::Duration> ParseRetryAfter(absl::string_view value,
                                                       absl::Time now);

 private:
  struct Request;
  struct Transfer;

  CurlUpstreamClient(Options options, std::shared_ptr<ApiKeySource> key,
                     Clock* clock, void* multi);

  void Loop();
  void StartTransfer(std::unique_ptr<Request> request);
  void FinishTransfer(void* easy, int curl_code);
  void ShutDown();

  static void Complete(std::unique_ptr<Request> request, UpstreamResult result);
  // libcurl write callback; enforces max_body_bytes.
  static size_t OnBody(char* data, size_t size, size_t n, void* transfer);
  // libcurl pre-request callback: aborts a second send of one request.
  static int OnPrereq(void* transfer, char* primary_ip, char* local_ip, int primary_port,
                      int local_port);

  const Options options_;
  const std::shared_ptr<ApiKeySource> key_;
  Clock* const clock_;
  void* const multi_;  // CURLM*
  const bool https_;

  // I/O thread only.
  std::vector<void*> idle_easy_;  // pooled CURL* handles
  // Transfers in the multi handle, by CURL*.
  std::unordered_map<void*, std::unique_ptr<Transfer>> active_;

  absl::Mutex mu_;
  std::deque<std::unique_ptr<Request>> queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;  // the loop has exited

  std::thread thread_;
};

}  // namespace videotask

#endif  // VIDEOTASK_SERVER_UPSTREAM_CURL_UPSTREAM_CLIENT_H_
