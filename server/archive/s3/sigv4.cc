#include "server/archive/s3/sigv4.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>

#include <algorithm>
#include <map>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

namespace videotask::s3 {
namespace {

std::string Hmac(absl::string_view key, absl::string_view data) {
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
       reinterpret_cast<const unsigned char*>(data.data()), data.size(), out, &len);
  return std::string(reinterpret_cast<char*>(out), len);
}

// Trimall: no leading or trailing whitespace, runs of spaces as one.
std::string TrimAll(absl::string_view v) {
  std::string out;
  bool space = false;
  for (char c : absl::StripAsciiWhitespace(v)) {
    if (c == ' ' || c == '\t') {
      space = true;
      continue;
    }
    if (space) out.push_back(' ');
    space = false;
    out.push_back(c);
  }
  return out;
}

}  // namespace

std::string UriEncode(absl::string_view s, bool keep_slash) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(s.size());
  for (unsigned char c : s) {
    if (absl::ascii_isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~' ||
        (keep_slash && c == '/')) {
      out.push_back(static_cast<char>(c));
    } else {
      out.push_back('%');
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 15]);
    }
  }
  return out;
}

std::string Sha256Hex(absl::string_view data) {
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(data.data()), data.size(), digest);
  return absl::BytesToHexString(
      absl::string_view(reinterpret_cast<const char*>(digest), sizeof(digest)));
}

SignedRequest SignS3Request(const RequestToSign& request, const AwsCredentials& credentials,
                            absl::string_view region, absl::Time now) {
  const std::string amz_date = absl::FormatTime("%Y%m%dT%H%M%SZ", now, absl::UTCTimeZone());
  const std::string date = amz_date.substr(0, 8);

  // Canonical query: names and values encoded, sorted by name then value.
  std::vector<std::pair<std::string, std::string>> query;
  for (const auto& [k, v] : request.query) {
    query.emplace_back(UriEncode(k, false), UriEncode(v, false));
  }
  std::sort(query.begin(), query.end());
  std::vector<std::string> query_parts;
  for (const auto& [k, v] : query) query_parts.push_back(absl::StrCat(k, "=", v));
  SignedRequest out;
  out.canonical_query = absl::StrJoin(query_parts, "&");

  // Headers: lowercase names, trimmed values; repeated names joined by ','.
  std::map<std::string, std::vector<std::string>> canonical;
  HeaderList sent;
  auto add = [&](const std::string& name, const std::string& value) {
    canonical[absl::AsciiStrToLower(name)].push_back(TrimAll(value));
    sent.emplace_back(name, value);
  };
  add("Host", request.host);
  add("X-Amz-Date", amz_date);
  add("X-Amz-Content-SHA256", request.payload_sha256_hex);
  if (!credentials.session_token.empty()) {
    add("X-Amz-Security-Token", credentials.session_token);
  }
  for (const auto& [k, v] : request.headers) add(k, v);
  std::string canonical_headers;
  std::vector<std::string> names;
  for (const auto& [name, values] : canonical) {
    absl::StrAppend(&canonical_headers, name, ":", absl::StrJoin(values, ","), "\n");
    names.push_back(name);
  }
  const std::string signed_headers = absl::StrJoin(names, ";");

  const std::string canonical_request =
      absl::StrJoin({request.method, request.encoded_path, out.canonical_query,
                     canonical_headers, signed_headers, request.payload_sha256_hex},
                    "\n");
  const std::string scope = absl::StrCat(date, "/", region, "/s3/aws4_request");
  const std::string string_to_sign = absl::StrCat("AWS4-HMAC-SHA256\n", amz_date, "\n", scope,
                                                  "\n", Sha256Hex(canonical_request));
  std::string key = Hmac(absl::StrCat("AWS4", credentials.secret_access_key), date);
  key = Hmac(key, region);
  key = Hmac(key, "s3");
  key = Hmac(key, "aws4_request");
  const std::string raw_signature = Hmac(key, string_to_sign);
  std::fill(key.begin(), key.end(), '\0');
  const std::string signature = absl::BytesToHexString(raw_signature);

  out.headers = std::move(sent);
  out.headers.emplace_back(
      "Authorization",
      absl::StrCat("AWS4-HMAC-SHA256 Credential=", credentials.access_key_id, "/", scope,
                   ", SignedHeaders=", signed_headers, ", Signature=", signature));
  return out;
}

}  // namespace videotask::s3
