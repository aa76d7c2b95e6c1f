#include "server/create/create_request.h"

#include <cmath>
#include <cstdint>

#include <openssl/evp.h>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace videotask {
namespace {

using json = nlohmann::json;
using google::protobuf::Value;

// 2^53: every integer up to it is exact as a double.
constexpr double kMaxExactInteger = 9007199254740992.0;

absl::StatusOr<json> ToJson(const Value& v, int depth);

absl::Status TooDeep() {
  return absl::InvalidArgumentError(absl::StrCat(
      "body: objects and arrays nested more than ", kMaxCreateBodyDepth, " levels deep (at most ",
      kMaxCreateBodyDepth, ")"));
}

// `depth`: how many objects and arrays enclose `s`, itself included.
absl::StatusOr<json> ToJson(const google::protobuf::Struct& s, int depth) {
  if (depth > kMaxCreateBodyDepth) return TooDeep();
  json out = json::object();
  for (const auto& [key, value] : s.fields()) {
    absl::StatusOr<json> j = ToJson(value, depth);
    if (!j.ok()) return j.status();
    out[key] = *std::move(j);
  }
  return out;
}

absl::StatusOr<json> ToJson(const Value& v, int depth) {
  switch (v.kind_case()) {
    case Value::kNullValue:
    case Value::KIND_NOT_SET:
      return json(nullptr);
    case Value::kBoolValue:
      return json(v.bool_value());
    case Value::kStringValue:
      return json(v.string_value());
    case Value::kNumberValue: {
      const double d = v.number_value();
      if (!std::isfinite(d)) {
        return absl::InvalidArgumentError("body: numbers must be finite (JSON has no NaN or Infinity)");
      }
      if (std::trunc(d) == d && std::fabs(d) <= kMaxExactInteger) {
        return json(static_cast<int64_t>(d));
      }
      return json(d);
    }
    case Value::kStructValue:
      return ToJson(v.struct_value(), depth + 1);
    case Value::kListValue: {
      if (depth + 1 > kMaxCreateBodyDepth) return TooDeep();
      json out = json::array();
      for (const Value& item : v.list_value().values()) {
        absl::StatusOr<json> j = ToJson(item, depth + 1);
        if (!j.ok()) return j.status();
        out.push_back(*std::move(j));
      }
      return out;
    }
  }
  return absl::InvalidArgumentError("body: a value of an unknown kind");
}

}  // namespace

absl::Status ValidateRequestId(absl::string_view request_id) {
  if (request_id.empty() || request_id.size() > kMaxRequestIdLength) {
    return absl::InvalidArgumentError(
        absl::StrCat("request_id must be 1-", kMaxRequestIdLength, " characters"));
  }
  for (char c : request_id) {
    if (c < 0x20 || c > 0x7e) {
      return absl::InvalidArgumentError("request_id must be printable ASCII");
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateFamily(absl::string_view family) {
  bool ok = !family.empty() && family.size() <= kMaxFamilyLength;
  for (char c : family) {
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_')) ok = false;
  }
  if (!ok) {
    return absl::InvalidArgumentError(
        absl::StrCat("family must be 1-", kMaxFamilyLength,
                     " characters of [a-z0-9_] (the vendor's model family, e.g. videos)"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> StructToJson(const google::protobuf::Struct& body, size_t max_bytes) {
  absl::StatusOr<json> j = ToJson(body, 1);
  if (!j.ok()) return j.status();
  // Strings from protobuf are valid UTF-8; replace rather than throw anyway.
  std::string out = j->dump(-1, ' ', false, json::error_handler_t::replace);
  if (out.size() > max_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("body is ", out.size(),
                                                   " bytes as JSON; at most ", max_bytes));
  }
  return out;
}

std::string CreateFingerprint(absl::string_view family, absl::string_view body_json) {
  const std::string input = absl::StrCat(family, absl::string_view("\0", 1), body_json);
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(input.data(), input.size(), digest, &len, EVP_sha256(), nullptr);
  return absl::BytesToHexString(absl::string_view(reinterpret_cast<const char*>(digest), len));
}

absl::StatusOr<PreparedCreate> PrepareCreate(const videotask::v1::CreateVideoTaskRequest& request) {
  if (absl::Status s = ValidateRequestId(request.request_id()); !s.ok()) return s;
  if (absl::Status s = ValidateFamily(request.family()); !s.ok()) return s;
  // Before converting anything: a huge body is refused without the work.
  if (const size_t size = request.ByteSizeLong(); size > kMaxCreateRequestBytes) {
    return absl::InvalidArgumentError(absl::StrCat("the request is ", size,
                                                   " bytes serialized; at most ",
                                                   kMaxCreateRequestBytes));
  }
  absl::StatusOr<std::string> body = StructToJson(request.body());
  if (!body.ok()) return body.status();
  PreparedCreate p;
  p.request_id = request.request_id();
  p.family = request.family();
  p.body_json = *std::move(body);
  p.fingerprint = CreateFingerprint(p.family, p.body_json);
  return p;
}

}  // namespace videotask
