// SigV4 signing of S3 requests (AWS Signature Version 4, header form), for
// the S3 client. Pure functions: no I/O, no clock of their own.
//
// Why our own signer and not libcurl's CURLOPT_AWS_SIGV4: S3 needs
// `x-amz-content-sha256` signed, and the payload here is streamed through a
// read callback, which libcurl's signer cannot hash (it hashes only
// CURLOPT_POSTFIELDS; in 7.88 it falls back to hashing an empty body or
// needs the header handed in, and its behaviour changed across releases);
// the query (`?uploads`, `?partNumber=N&uploadId=X`) and the extra signed
// headers (`x-amz-meta-*`, `x-amz-security-token`) must be canonicalized
// exactly as S3 does. A small signer over OpenSSL's HMAC-SHA256 (~150 lines)
// does all of that in one place, and its output is checked against
// botocore's own S3SigV4Auth by the stand-in S3 in the tests.
//
// Guarantees: the body is always signed (the caller gives its SHA-256;
// never UNSIGNED-PAYLOAD); every header it returns is in SignedHeaders;
// temporary credentials add `x-amz-security-token`; the canonical query it
// returns is the one to put in the URL, so what is sent is what was signed.
// The secret appears only in the HMAC key, never in any returned string.
#ifndef VIDEOTASK_SERVER_ARCHIVE_S3_SIGV4_H_
#define VIDEOTASK_SERVER_ARCHIVE_S3_SIGV4_H_

#include <string>
#include <utility>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace videotask::s3 {

// A key pair, and the session token of temporary credentials (empty for
// long-term keys). Secret and token are never to be logged.
struct AwsCredentials {
  std::string access_key_id;
  std::string secret_access_key;
  std::string session_token;
};

using HeaderList = std::vector<std::pair<std::string, std::string>>;

struct RequestToSign {
  std::string method;        // "PUT", "GET", ...
  std::string host;          // the Host header as sent: "bucket.s3.amazonaws.com", "127.0.0.1:9000"
  std::string encoded_path;  // URI-encoded once, as in the URL: "/bucket/a%20b.mp4"
  HeaderList query;          // decoded names and values; a name alone ("uploads") has ""
  HeaderList headers;        // more headers to send and sign (Content-Type, x-amz-meta-*)
  std::string payload_sha256_hex;  // SHA-256 of the body (of "" when there is none)
};

struct SignedRequest {
  std::string canonical_query;  // for the URL after '?', possibly empty
  HeaderList headers;           // every header to send: Host, X-Amz-Date, ..., Authorization
};

// Signs `request` for service "s3" in `region` at wall time `now`.
SignedRequest SignS3Request(const RequestToSign& request, const AwsCredentials& credentials,
                            absl::string_view region, absl::Time now);

// S3's URI encoding: every byte but A-Z a-z 0-9 - . _ ~ as %XX (uppercase);
// '/' kept when `keep_slash` (object keys in paths).
std::string UriEncode(absl::string_view s, bool keep_slash);

// Lowercase hex SHA-256 of `data`.
std::string Sha256Hex(absl::string_view data);

}  // namespace videotask::s3

#endif  // VIDEOTASK_SERVER_ARCHIVE_S3_SIGV4_H_
