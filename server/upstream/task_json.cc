#include "server/upstream/task_json.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace videotask {
namespace {

using ::videotask::v1::VideoTask;
using ::videotask::v1::VideoTaskStatus;

// google.protobuf.Timestamp's valid range: 0001-01-01 .. 9999-12-31.
constexpr int64_t kMinTimestampSeconds = -62135596800LL;
constexpr int64_t kMaxTimestampSeconds = 253402300799LL;
// google.protobuf.Duration's valid range is +-10,000 years.
constexpr double kMaxDurationSeconds = 315576000000.0;

absl::Status FieldTypeError(absl::string_view field, absl::string_view want) {
  return absl::InvalidArgumentError(absl::StrCat(
      "upstream response field \"", field, "\" is not ", want));
}

// The field's value when present and non-null, else nullptr.
const nlohmann::json* Field(const nlohmann::json& obj, const char* name) {
  auto it = obj.find(name);
  if (it == obj.end() || it->is_null()) return nullptr;
  return &*it;
}

absl::Status GetString(const nlohmann::json& obj, const char* name,
                       const std::string** out) {
  *out = nullptr;
  const nlohmann::json* v = Field(obj, name);
  if (v == nullptr) return absl::OkStatus();
  if (!v->is_string()) return FieldTypeError(name, "a string");
  *out = v->get_ptr<const std::string*>();
  return absl::OkStatus();
}

absl::Status GetNumber(const nlohmann::json& obj, const char* name,
                       const nlohmann::json** out) {
  *out = nullptr;
  const nlohmann::json* v = Field(obj, name);
  if (v == nullptr) return absl::OkStatus();
  if (!v->is_number()) return FieldTypeError(name, "a number");
  *out = v;
  return absl::OkStatus();
}

void SetTimestamp(absl::Time t, google::protobuf::Timestamp* ts) {
  const int64_t seconds = absl::ToUnixSeconds(t);
  const absl::Duration rem = t - absl::FromUnixSeconds(seconds);
  ts->set_seconds(seconds);
  ts->set_nanos(static_cast<int32_t>(absl::ToInt64Nanoseconds(rem)));
}

}  // namespace

std::string SanitizedExcerpt(absl::string_view text, size_t max_chars) {
  std::string out;
  const size_t n = std::min(text.size(), max_chars);
  out.reserve(n + 3);
  for (size_t i = 0; i < n; ++i) {
    const unsigned char c = static_cast<unsigned char>(text[i]);
    out.push_back(c >= 0x20 && c < 0x7f ? static_cast<char>(c) : '?');
  }
  if (text.size() > max_chars) out += "...";
  return out;
}

absl::StatusOr<VideoTaskStatus> ParseVendorStatus(absl::string_view status) {
  std::string s(absl::StripAsciiWhitespace(status));
  for (char& c : s) {
    if (c == '-' || c == ' ') {
      c = '_';
    } else {
      c = absl::ascii_tolower(static_cast<unsigned char>(c));
    }
  }
  static const auto* const kQueued = new std::vector<std::string>{
      "queued", "pending", "submitted", "waiting", "created", "in_queue",
      "not_started"};
  static const auto* const kProcessing = new std::vector<std::string>{
      "processing", "in_progress", "running", "generating", "started",
      "active"};
  static const auto* const kCompleted = new std::vector<std::string>{
      "completed", "complete", "succeeded", "success", "successful", "done",
      "finished"};
  static const auto* const kFailed = new std::vector<std::string>{
      "failed", "failure", "error", "errored", "cancelled", "canceled",
      "rejected"};
  auto in = [&s](const std::vector<std::string>* list) {
    for (const std::string& w : *list) {
      if (s == w) return true;
    }
    return false;
  };
  if (in(kQueued)) return v1::VIDEO_TASK_STATUS_QUEUED;
  if (in(kProcessing)) return v1::VIDEO_TASK_STATUS_PROCESSING;
  if (in(kCompleted)) return v1::VIDEO_TASK_STATUS_COMPLETED;
  if (in(kFailed)) return v1::VIDEO_TASK_STATUS_FAILED;
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown upstream task status \"", SanitizedExcerpt(status), "\""));
}

absl::StatusOr<VideoTask> ParseVendorTask(absl::string_view body,
                                          absl::string_view requested_id,
                                          absl::Time observe_time) {
  // No exceptions: a parse failure yields a "discarded" value. The parser's
  // own message is not used, since it can quote the body.
  const nlohmann::json doc =
      nlohmann::json::parse(body.begin(), body.end(), /*cb=*/nullptr,
                            /*allow_exceptions=*/false);
  if (doc.is_discarded()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "upstream response is not valid JSON (", body.size(), " bytes)"));
  }
  if (!doc.is_object()) {
    return absl::InvalidArgumentError("upstream response is not a JSON object");
  }

  const std::string* id = nullptr;
  const std::string* object = nullptr;
  const std::string* model = nullptr;
  const std::string* status = nullptr;
  const std::string* video_url = nullptr;
  const std::string* error = nullptr;
  const nlohmann::json* created = nullptr;
  const nlohmann::json* duration = nullptr;
  for (absl::Status s :
       {GetString(doc, "id", &id), GetString(doc, "object", &object),
        GetString(doc, "model", &model), GetString(doc, "status", &status),
        GetString(doc, "video_url", &video_url),
        GetString(doc, "error", &error), GetNumber(doc, "created", &created),
        GetNumber(doc, "actualDuration", &duration)}) {
    if (!s.ok()) return s;
  }

  if (id != nullptr && *id != requested_id) {
    return absl::InvalidArgumentError(
        "upstream response is for a different task id than requested");
  }
  if (status == nullptr) {
    return absl::InvalidArgumentError(
        "upstream response has no \"status\"");
  }
  absl::StatusOr<VideoTaskStatus> parsed = ParseVendorStatus(*status);
  if (!parsed.ok()) return parsed.status();

  VideoTask task;
  task.set_id(std::string(requested_id));
  task.set_status(*parsed);
  if (model != nullptr) task.set_model(*model);

  if (created != nullptr) {
    int64_t seconds = 0;
    if (created->is_number_integer() && !created->is_number_unsigned()) {
      seconds = created->get<int64_t>();
    } else if (created->is_number_unsigned()) {
      const uint64_t u = created->get<uint64_t>();
      if (u > static_cast<uint64_t>(kMaxTimestampSeconds)) {
        return absl::InvalidArgumentError(
            "upstream response field \"created\" is out of range");
      }
      seconds = static_cast<int64_t>(u);
    } else {
      const double d = created->get<double>();
      if (!std::isfinite(d) || d < kMinTimestampSeconds ||
          d > kMaxTimestampSeconds) {
        return absl::InvalidArgumentError(
            "upstream response field \"created\" is out of range");
      }
      seconds = static_cast<int64_t>(std::floor(d));
    }
    if (seconds < kMinTimestampSeconds || seconds > kMaxTimestampSeconds) {
      return absl::InvalidArgumentError(
          "upstream response field \"created\" is out of range");
    }
    task.mutable_create_time()->set_seconds(seconds);
  }

  if (duration != nullptr) {
    const double d = duration->get<double>();
    if (!std::isfinite(d) || d < 0 || d > kMaxDurationSeconds) {
      return absl::InvalidArgumentError(
          "upstream response field \"actualDuration\" is out of range");
    }
    if (*parsed == v1::VIDEO_TASK_STATUS_COMPLETED) {
      const int64_t whole = static_cast<int64_t>(d);
      int64_t nanos = static_cast<int64_t>(std::llround((d - whole) * 1e9));
      int64_t secs = whole;
      if (nanos >= 1000000000) {
        secs += 1;
        nanos -= 1000000000;
      }
      task.mutable_actual_duration()->set_seconds(secs);
      task.mutable_actual_duration()->set_nanos(static_cast<int32_t>(nanos));
    }
  }

  if (video_url != nullptr && *parsed == v1::VIDEO_TASK_STATUS_COMPLETED) {
    task.set_video_url(*video_url);
  }
  if (error != nullptr && *parsed == v1::VIDEO_TASK_STATUS_FAILED) {
    task.set_error(*error);
  }
  SetTimestamp(observe_time, task.mutable_observe_time());
  return task;
}

}  // namespace videotask
