// S3Client: stores one object in an S3 or S3-compatible bucket (AWS S3, GCS
// XML API with HMAC keys, R2, MinIO, Ceph RGW), for the archiver.
//
// Upload(spec, source): a HEAD first; an object already at the key with the
// same size and SHA-256 (x-amz-meta-sha256) is reused and nothing is sent.
// Otherwise an object up to kPartSize is one PutObject; a larger one is a
// multipart upload (CreateMultipartUpload, UploadPart of kPartSize each,
// CompleteMultipartUpload). The object carries Content-Type and the
// metadata sha256 (lowercase hex). Every request is SigV4-signed (sigv4.h)
// over its body's SHA-256 (never UNSIGNED-PAYLOAD), with the credentials
// provider's current credentials.
//
// Guarantees:
// - Memory: the bytes come from a ByteSource, one part at a time, into one
//   buffer of at most kPartSize (UploadResult::peak_buffer_bytes); never the
//   whole object.
// - The stored object is the declared one: the bytes read must add up to
//   spec.size and spec.sha256, or the upload is abandoned (DATA_LOSS) before
//   it completes - no object with a false checksum is ever created.
// - Retries: each request (each part on its own) is retried on connection
//   errors, timeouts, 5xx, 429, 408 and S3's RequestTimeout, with backoff
//   (doubling, capped), up to Options::max_attempts and spec.deadline
//   (monotonic); ExpiredToken makes the provider fetch anew, then retries.
//   A request that gets no answer within Options::request_timeout counts as
//   a connection error. Other 4xx fail at once (403 AccessDenied / SignatureDoesNotMatch:
//   PERMISSION_DENIED; 404 NoSuchBucket: NOT_FOUND; others
//   FAILED_PRECONDITION).
// - A multipart upload that fails for good is aborted (AbortMultipartUpload)
//   so no parts are left billed; the error says whether the abort worked.
// - Errors name the operation, s3://bucket/key, the HTTP status and S3's
//   error code and message; S3ErrorCode(status) gives the code. No secret
//   (secret key, session token) is ever in an error.
// - Transport: https, or plain http only to a loopback endpoint.
// Upload and Head may be called from several threads at once.
#ifndef VIDEOTASK_SERVER_ARCHIVE_S3_S3_CLIENT_H_
#define VIDEOTASK_SERVER_ARCHIVE_S3_S3_CLIENT_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "server/archive/s3/credentials.h"
#include "server/archive/s3/http_call.h"
#include "server/archive/s3/sigv4.h"
#include "server/base/clock.h"

namespace videotask::s3 {

// 8 MiB: above S3's 5 MiB minimum for all but the last part; 10,000 parts
// (S3's maximum) make 80 GiB, far above any video.
inline constexpr size_t kPartSize = 8 << 20;
inline constexpr int kMaxParts = 10000;

// Where the bytes come from: the archiver's download or its temporary file.
class ByteSource {
 public:
  virtual ~ByteSource() = default;
  // Up to `n` bytes into `buf`; 0 at the end. An error ends the upload
  // (aborted) with that error.
  virtual absl::StatusOr<size_t> Read(char* buf, size_t n) = 0;
};

struct ObjectSpec {
  std::string key;           // "prefix/ID.mp4", no leading '/'
  int64_t size = 0;
  std::string sha256;        // lowercase hex of the whole object
  std::string content_type;  // e.g. "video/mp4"
  absl::Time deadline = absl::InfiniteFuture();  // on the clock's Monotonic()
  // Polled before every request and wait, and while a request runs: true
  // ends the upload with CANCELLED (a multipart upload is aborted). E.g. the
  // sidecar shutting down.
  std::function<bool()> cancelled;
};

struct ObjectInfo {
  int64_t size = 0;
  std::string sha256;  // x-amz-meta-sha256, "" when absent
  std::string content_type;
};

struct UploadResult {
  std::string uri;   // s3://bucket/key
  bool reused = false;
  int parts = 0;     // 0 for PutObject or reuse
  int requests = 0;  // every HTTP request sent, retries included
  size_t peak_buffer_bytes = 0;
};

class S3Client {
 public:
  struct Options {
    std::string bucket;
    std::string region = "us-east-1";
    // "https://s3.REGION.amazonaws.com" when empty; any https endpoint of
    // an S3-compatible store; plain http only to loopback.
    std::string endpoint;
    // Path-style (endpoint/bucket/key: MinIO, most on-premises stores)
    // rather than virtual-hosted (bucket.endpoint-host/key). Always for a
    // bucket with '.' or '_' (no host label under the store's certificate).
    bool path_style = false;
    std::string ca_file;
    size_t part_size = kPartSize;  // >= 5 MiB (tests may use the minimum)
    int max_attempts = 5;          // per request
    absl::Duration initial_backoff = absl::Seconds(1);
    absl::Duration max_backoff = absl::Seconds(30);
    absl::Duration request_timeout = absl::Minutes(5);  // one request, one part
    absl::Duration connect_timeout = absl::Seconds(10);
    // Waits between attempts; absl::SleepFor when empty. Tests advance a
    // simulated clock instead.
    absl::AnyInvocable<void(absl::Duration)> sleep;
  };

  static absl::StatusOr<std::unique_ptr<S3Client>> Create(
      Options options, std::shared_ptr<CredentialsProvider> credentials, Clock* clock = nullptr);

  // The object at `key`, or nullopt when there is none (404).
  absl::StatusOr<std::optional<ObjectInfo>> Head(absl::string_view key);
  // The same within `deadline` (monotonic), retried as the header says, and
  // ended (CANCELLED) when `cancelled` (may be empty) says so.
  absl::StatusOr<std::optional<ObjectInfo>> Head(absl::string_view key, absl::Time deadline,
                                                 const std::function<bool()>& cancelled);

  absl::StatusOr<UploadResult> Upload(const ObjectSpec& spec, ByteSource& source);

  // "s3://bucket/key".
  std::string Uri(absl::string_view key) const;

 private:
  // One S3 request.
  struct Call {
    std::string op;  // "PutObject", for messages
    std::string method;
    std::string key;
    HeaderList query;
    HeaderList headers;
    absl::string_view body;
    std::string body_sha256;  // hex
    bool not_found_ok = false;  // HEAD: 404 is an answer
  };

  S3Client(Options options, std::shared_ptr<CredentialsProvider> credentials, Clock* clock,
           std::string scheme, std::string host, std::string base_path);
  // The call, retried as the header says; OK only for a 2xx (or a 404 when
  // not_found_ok).
  absl::StatusOr<HttpResponse> Send(HttpSession& session, const Call& call, absl::Time deadline,
                                    const std::function<bool()>& cancelled, int* requests);
  absl::StatusOr<std::optional<ObjectInfo>> HeadWith(HttpSession& session, absl::string_view key,
                                                     absl::Time deadline,
                                                     const std::function<bool()>& cancelled,
                                                     int* requests);
  absl::StatusOr<UploadResult> Multipart(HttpSession& session, const ObjectSpec& spec,
                                         ByteSource& source, UploadResult result);
  std::string PathOf(absl::string_view key) const;
  void Sleep(absl::Duration d);

  Options options_;
  std::shared_ptr<CredentialsProvider> credentials_;
  Clock* clock_;
  std::string scheme_;     // "https" or "http"
  std::string host_;       // the Host header: "bucket.s3.us-east-1.amazonaws.com", "127.0.0.1:9000"
  std::string base_path_;  // "" (virtual-hosted) or "/bucket"
};

// S3's error code carried by a status from S3Client ("AccessDenied",
// "NoSuchBucket", "SignatureDoesNotMatch"), or "" when there is none.
std::string S3ErrorCode(const absl::Status& status);

}  // namespace videotask::s3

#endif  // VIDEOTASK_SERVER_ARCHIVE_S3_S3_CLIENT_H_
