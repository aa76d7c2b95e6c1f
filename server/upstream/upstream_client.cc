#include "server/upstream/upstream_client.h"

#include <utility>

#include "absl/synchronization/notification.h"

namespace videotask {

absl::string_view UpstreamOutcomeName(UpstreamOutcome outcome) {
  switch (outcome) {
    case UpstreamOutcome::kOk:
      return "ok";
    case UpstreamOutcome::kInvalidArgument:
      return "invalid_argument";
    case UpstreamOutcome::kNotFound:
      return "not_found";
    case UpstreamOutcome::kRejected:
      return "rejected_credentials";
    case UpstreamOutcome::kRateLimited:
      return "rate_limited";
    case UpstreamOutcome::kTransient:
      return "transient";
  }
  return "unknown";
}

UpstreamResult FetchSync(UpstreamClient& client, const std::string& id) {
  absl::Notification done;
  UpstreamResult out;
  client.Fetch(id, [&](UpstreamResult r) {
    out = std::move(r);
    done.Notify();
  });
  done.WaitForNotification();
  return out;
}

}  // namespace videotask
