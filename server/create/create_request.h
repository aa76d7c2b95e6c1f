// CreateRequest: the checks and conversions a CreateVideoTask request goes
// through before anything is sent or remembered.
//
// Guarantees: PrepareCreate() accepts a request only when its request_id is
// 1-128 printable ASCII characters (0x20-0x7E), its family matches
// [a-z0-9_]{1,32} and its body, as JSON, is an object of at most 64 KiB
// with finite numbers and at most 32 levels of objects and arrays; a
// request over 256 KiB serialized is refused before its body is converted;
// anything else is INVALID_ARGUMENT with a message that
// never echoes the raw input. The JSON keeps integral numbers as integers
// (Struct numbers are doubles: 10.0 is sent as 10) and is canonical (keys
// sorted), so one family and body always give one fingerprint.
#ifndef VIDEOTASK_SERVER_CREATE_CREATE_REQUEST_H_
#define VIDEOTASK_SERVER_CREATE_CREATE_REQUEST_H_

#include <cstddef>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "google/protobuf/struct.pb.h"
#include "proto/videotask/v1/video_task.pb.h"

namespace videotask {

inline constexpr size_t kMaxRequestIdLength = 128;
inline constexpr size_t kMaxFamilyLength = 32;
inline constexpr size_t kMaxCreateBodyBytes = 64 * 1024;
// The whole request, serialized, checked before the body is converted.
inline constexpr size_t kMaxCreateRequestBytes = 256 * 1024;
// Objects and arrays in the body, the body itself counting as one.
inline constexpr int kMaxCreateBodyDepth = 32;

// A request that passed every check, ready to send.
struct PreparedCreate {
  std::string request_id;
  std::string family;
  std::string body_json;    // what the vendor receives
  std::string fingerprint;  // SHA-256 (hex) of family and body_json
};

absl::Status ValidateRequestId(absl::string_view request_id);
absl::Status ValidateFamily(absl::string_view family);

// The body as canonical JSON: integral numbers within +-2^53 as integers,
// keys sorted. INVALID_ARGUMENT for NaN or infinite numbers, objects and
// arrays nested deeper than kMaxCreateBodyDepth, or when the JSON is larger
// than `max_bytes`.
absl::StatusOr<std::string> StructToJson(const google::protobuf::Struct& body,
                                         size_t max_bytes = kMaxCreateBodyBytes);

// SHA-256, hex, of family + NUL + body_json.
std::string CreateFingerprint(absl::string_view family, absl::string_view body_json);

absl::StatusOr<PreparedCreate> PrepareCreate(const videotask::v1::CreateVideoTaskRequest& request);

}  // namespace videotask

#endif  // VIDEOTASK_SERVER_CREATE_CREATE_REQUEST_H_
