#include "server/create/vendor_create.h"

#include <cstdint>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "nlohmann/json.hpp"
#include "server/base/task_id.h"
#include "server/upstream/task_json.h"

namespace videotask {
namespace {

using json = nlohmann::json;
using Kind = VendorCreateResult::Kind;

VendorCreateResult Result(Kind kind, std::string code, std::string message) {
  VendorCreateResult r;
  r.kind = kind;
  r.code = std::move(code);
  r.message = std::move(message);
  return r;
}

// A string field, or nullopt when absent or not a string.
std::optional<std::string> StringAt(const json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_string()) return std::nullopt;
  return it->get<std::string>();
}

// `code` as the `videos` family sends it: "0" (or 0) means accepted.
std::optional<std::string> CodeOf(const json& j) {
  auto it = j.find("code");
  if (it == j.end() || it->is_null()) return std::nullopt;
  if (it->is_string()) return it->get<std::string>();
  if (it->is_number_integer()) return std::to_string(it->get<int64_t>());
  return it->dump();
}

std::string Clean(absl::string_view text, absl::string_view api_key) {
  std::string s(text);
  if (!api_key.empty()) s = absl::StrReplaceAll(s, {{api_key, "[redacted]"}});
  return SanitizedExcerpt(s, kMaxVendorMessageChars);
}

}  // namespace

absl::string_view VendorCreateKindName(Kind kind) {
  switch (kind) {
    case Kind::kCreated:
      return "created";
    case Kind::kRefused:
      return "refused";
    case Kind::kRejected:
      return "rejected";
    case Kind::kNotSent:
      return "not_sent";
    case Kind::kUnknown:
      return "unknown";
  }
  return "unknown";
}

std::string VendorMessage(absl::string_view body, absl::string_view api_key,
                          absl::string_view fallback) {
  json j = json::parse(body.begin(), body.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_object()) {
    for (const char* key : {"msg", "message", "error"}) {
      if (std::optional<std::string> s = StringAt(j, key); s && !s->empty()) {
        return Clean(*s, api_key);
      }
    }
    auto err = j.find("error");
    if (err != j.end() && err->is_object()) {
      if (std::optional<std::string> s = StringAt(*err, "message"); s && !s->empty()) {
        return Clean(*s, api_key);
      }
    }
  }
  return std::string(fallback);
}

VendorCreateResult ClassifyCreateAnswer(long http_status, absl::string_view body,
                                        std::optional<absl::Duration> retry_after,
                                        absl::string_view api_key, absl::Time observe_time) {
  const std::string code = std::to_string(http_status);
  if (http_status == 401 || http_status == 403) {
    return Result(Kind::kRejected, code,
                  absl::StrCat("the vendor rejects the sidecar's API key (HTTP ", code, ")"));
  }
  if (http_status == 429) {
    VendorCreateResult r = Result(Kind::kNotSent, code, "the vendor's rate limit (HTTP 429)");
    r.rate_limited = true;
    r.retry_after = retry_after;
    return r;
  }
  if (http_status == 503) {
    return Result(Kind::kNotSent, code, "the vendor is unavailable (HTTP 503)");
  }
  if (http_status >= 400 && http_status < 500) {
    return Result(Kind::kRefused, code,
                  VendorMessage(body, api_key, absl::StrCat("HTTP ", code, " without a message")));
  }
  if (http_status < 200 || http_status >= 300) {
    return Result(Kind::kUnknown, code,
                  absl::StrCat("the vendor answered HTTP ", code));
  }
  json j = json::parse(body.begin(), body.end(), nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) {
    return Result(Kind::kUnknown, code, "the vendor's answer is not a JSON object");
  }
  VendorCreateResult r = Result(Kind::kCreated, code, "");
  videotask::v1::VideoTask& task = r.task;
  task.set_status(videotask::v1::VIDEO_TASK_STATUS_QUEUED);
  std::string id;
  if (std::optional<std::string> c = CodeOf(j)) {
    // The `videos` shape: {"code":"0","msg":null,"data":{"projectId":...}}.
    if (*c != "0") {
      return Result(Kind::kRefused, code,
                    VendorMessage(body, api_key, absl::StrCat("vendor code ", Clean(*c, api_key))));
    }
    auto data = j.find("data");
    if (data != j.end() && data->is_object()) id = StringAt(*data, "projectId").value_or("");
  } else {
    // {"id":"video_...","object":"video","created":...,"model":...,"status":"queued"}.
    id = StringAt(j, "id").value_or("");
    if (std::optional<std::string> model = StringAt(j, "model")) {
      task.set_model(SanitizedExcerpt(*model, 128));
    }
    auto created = j.find("created");
    if (created != j.end() && created->is_number_integer()) {
      task.mutable_create_time()->set_seconds(created->get<int64_t>());
    }
    if (std::optional<std::string> status = StringAt(j, "status")) {
      absl::StatusOr<videotask::v1::VideoTaskStatus> s = ParseVendorStatus(*status);
      if (s.ok()) task.set_status(*s);
    }
  }
  if (id.empty()) {
    return Result(Kind::kUnknown, code, "the vendor's answer has no task id");
  }
  if (!ValidateTaskId(id).ok()) {
    return Result(Kind::kUnknown, code, "the vendor's answer has an id the sidecar cannot use");
  }
  task.set_id(id);
  const int64_t seconds = absl::ToUnixSeconds(observe_time);
  task.mutable_observe_time()->set_seconds(seconds);
  task.mutable_observe_time()->set_nanos(static_cast<int32_t>(
      (observe_time - absl::FromUnixSeconds(seconds)) / absl::Nanoseconds(1)));
  return r;
}

}  // namespace videotask
