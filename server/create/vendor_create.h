// VendorCreate: one `POST {base}/{family}/videos` at the vendor, and what its
// answer means for the money it may have spent.
//
// Every answer is classified into exactly one of:
//   kCreated   the vendor created a task and said its id (either shape:
//              {"code":"0","data":{"projectId":...}} or {"id":...}).
//   kRefused   the vendor created nothing and says why: a 4xx other than
//              401/403/429, or a `code` other than "0". Not retried.
//   kRejected  401/403: the vendor rejects the API key.
//   kNotSent   surely nothing was created: the request never left (no
//              connection, TLS failure, the key unavailable), or the vendor
//              answered 429 (with `retry_after` when valid) or 503.
//   kUnknown   the request was sent and no usable answer came back: a timeout
//              or a reset after sending, another 5xx, a 2xx without an id or
//              that does not parse. The vendor may have created the task.
// `message` is bounded (at most 300 characters), printable ASCII, and never
// contains the API key; for kRefused it is the vendor's own message.
#ifndef VIDEOTASK_SERVER_CREATE_VENDOR_CREATE_H_
#define VIDEOTASK_SERVER_CREATE_VENDOR_CREATE_H_

#include <optional>
#include <string>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "proto/videotask/v1/video_task.pb.h"

namespace videotask {

inline constexpr size_t kMaxVendorMessageChars = 300;

struct VendorCreateResult {
  enum class Kind { kCreated, kRefused, kRejected, kNotSent, kUnknown };
  Kind kind = Kind::kUnknown;
  // kCreated: id, status (QUEUED unless the answer says), model and
  // create_time when the answer has them, observe_time.
  videotask::v1::VideoTask task;
  std::string message;
  // kNotSent from a 429 only.
  bool rate_limited = false;
  std::optional<absl::Duration> retry_after;
  // Metrics and logs: the HTTP status or a failure class ("timeout",
  // "connect_error", "reset", "error").
  std::string code;
  absl::Duration latency;
};

absl::string_view VendorCreateKindName(VendorCreateResult::Kind kind);

class VendorCreateClient {
 public:
  virtual ~VendorCreateClient() = default;
  // Sends one create (never twice) and waits for its classified answer.
  // `family` and `body_json` have passed PrepareCreate(). Thread-safe.
  virtual VendorCreateResult Create(const std::string& family, const std::string& body_json) = 0;
};

// Classifies an HTTP answer of the vendor (the request was sent and answered).
// `retry_after` is the parsed Retry-After header, if any; `api_key` is removed
// from any message taken from the body; `observe_time` stamps the task.
VendorCreateResult ClassifyCreateAnswer(long http_status, absl::string_view body,
                                        std::optional<absl::Duration> retry_after,
                                        absl::string_view api_key, absl::Time observe_time);

// The vendor's message from an error body ({"msg"}, {"message"},
// {"error":{"message"}}, {"error":"..."}), bounded, sanitized, without the
// key; `fallback` when the body has none.
std::string VendorMessage(absl::string_view body, absl::string_view api_key,
                          absl::string_view fallback);

}  // namespace videotask

#endif  // VIDEOTASK_SERVER_CREATE_VENDOR_CREATE_H_
