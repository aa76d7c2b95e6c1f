// UpstreamClient: one query of the vendor's `GET {base}/result/{id}`,
// classified into the outcomes the poll hub acts on.
//
// Guarantees: `done` runs exactly once per Fetch, never inline while the
// caller holds a lock it passed in (it runs on the client's I/O thread, or
// inline for an invalid id, which never reaches the network). A result never
// carries a fabricated status: anything but a parsed, known status is a
// non-OK outcome. Neither `detail` nor any log line contains the API key.
#ifndef VIDEOTASK_SERVER_UPSTREAM_UPSTREAM_CLIENT_H_
#define VIDEOTASK_SERVER_UPSTREAM_UPSTREAM_CLIENT_H_

#include <optional>
#include <string>

#include "absl/functional/any_invocable.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "proto/videotask/v1/video_task.pb.h"

namespace videotask {

enum class UpstreamOutcome {
  kOk,               // 200 with a well-formed task; `task` is set.
  kInvalidArgument,  // the id failed ValidateTaskId; no request was made.
  kNotFound,         // 404: the upstream does not know the id.
  kRejected,         // 401/403: the upstream rejects the API key.
  kRateLimited,      // 429; `retry_after` is set when the upstream said.
  kTransient,        // 5xx, timeout, connection error, bad or oversized body,
                     // unknown status string, other HTTP codes.
};

absl::string_view UpstreamOutcomeName(UpstreamOutcome outcome);

struct UpstreamResult {
  UpstreamOutcome outcome = UpstreamOutcome::kTransient;
  // kOk only. `observe_time` is when the response arrived.
  videotask::v1::VideoTask task;
  // kRateLimited only, when a valid Retry-After (seconds or HTTP date) came.
  std::optional<absl::Duration> retry_after;
  // Metrics label: the HTTP status ("200", "404", "503", ...) or a class for
  // failures without one ("timeout", "connect_error", "body_too_large",
  // "invalid_id", "error").
  std::string code;
  // Why, for logs and error messages. Never contains the key or the body.
  std::string detail;
  // Time from the start of the request to its end.
  absl::Duration latency;
};

class UpstreamClient {
 public:
  using Callback = absl::AnyInvocable<void(UpstreamResult) &&>;
  virtual ~UpstreamClient() = default;

  // Starts one query for `id`; `done` receives the classified result.
  virtual void Fetch(const std::string& id, Callback done) = 0;
};

// Fetch and wait for the result. For one-shot callers and tests.
UpstreamResult FetchSync(UpstreamClient& client, const std::string& id);

}  // namespace videotask

#endif  // VIDEOTASK_SERVER_UPSTREAM_UPSTREAM_CLIENT_H_
