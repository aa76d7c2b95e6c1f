#include "server/archive/s3/s3_client.h"

#include <openssl/sha.h>

#include <algorithm>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/cord.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/time/clock.h"

namespace videotask::s3 {
namespace {

constexpr absl::string_view kCodePayload = "videotask.s3.code";
constexpr size_t kMinPartSize = 5 << 20;

// Reads until `n` bytes or the end.
absl::StatusOr<size_t> ReadFull(ByteSource& source, char* buf, size_t n) {
  size_t got = 0;
  while (got < n) {
    absl::StatusOr<size_t> r = source.Read(buf + got, n - got);
    if (!r.ok()) return r.status();
    if (*r == 0) break;
    got += *r;
  }
  return got;
}

bool RetryableAnswer(long http, absl::string_view code) {
  return http >= 500 || http == 429 || http == 408 || code == "RequestTimeout" ||
         code == "SlowDown" || code == "InternalError" || code == "ServiceUnavailable";
}

absl::Status WithCode(absl::Status s, absl::string_view code) {
  if (!code.empty()) s.SetPayload(kCodePayload, absl::Cord(code));
  return s;
}

}  // namespace

std::string S3ErrorCode(const absl::Status& status) {
  auto c = status.GetPayload(kCodePayload);
  return c.has_value() ? std::string(*c) : "";
}

absl::StatusOr<std::unique_ptr<S3Client>> S3Client::Create(
    Options o, std::shared_ptr<CredentialsProvider> credentials, Clock* clock) {
  if (credentials == nullptr) return absl::InvalidArgumentError("no credentials provider");
  // Bucket names: 3-222 of a-z 0-9 . - _ (S3 takes 3-63 without '_', GCS
  // takes '_' and dotted names up to 222; each store refuses what it lacks).
  if (o.bucket.size() < 3 || o.bucket.size() > 222 ||
      !std::all_of(o.bucket.begin(), o.bucket.end(), [](char c) {
        return absl::ascii_islower(c) || absl::ascii_isdigit(c) || c == '.' || c == '-' ||
               c == '_';
      })) {
    return absl::InvalidArgumentError(
        absl::StrCat("not an S3 bucket name: ", Excerpt(o.bucket, 80)));
  }
  if (o.region.empty() || !std::all_of(o.region.begin(), o.region.end(), [](char c) {
        return absl::ascii_isalnum(c) || c == '-';
      })) {
    return absl::InvalidArgumentError(absl::StrCat("not a region: ", Excerpt(o.region, 40)));
  }
  if (o.part_size < kMinPartSize) {
    return absl::InvalidArgumentError("part size must be at least 5 MiB (S3's minimum)");
  }
  if (o.max_attempts < 1) return absl::InvalidArgumentError("max_attempts must be positive");
  if (o.endpoint.empty()) {
    o.endpoint = absl::StrCat("https://s3.", o.region, ".amazonaws.com",
                              absl::StartsWith(o.region, "cn-") ? ".cn" : "");
  }
  while (absl::EndsWith(o.endpoint, "/")) o.endpoint.pop_back();
  if (absl::Status s = CheckTransport(o.endpoint, "the S3 endpoint"); !s.ok()) return s;
  const size_t sep = o.endpoint.find("://");
  std::string scheme = absl::AsciiStrToLower(o.endpoint.substr(0, sep));
  std::string authority = o.endpoint.substr(sep + 3);
  if (authority.find_first_of("/?#@") != std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the S3 endpoint must be scheme://host[:port], without a path: ", Excerpt(o.endpoint)));
  }
  std::string host = absl::AsciiStrToLower(authority);
  std::string base_path;
  // A name with '.' is no single label under the store's wildcard TLS
  // certificate (*.s3.amazonaws.com), one with '_' no DNS name at all: such
  // buckets go path-style, as the AWS SDKs do.
  if (o.bucket.find_first_of("._") != std::string::npos) o.path_style = true;
  if (o.path_style) {
    base_path = absl::StrCat("/", o.bucket);
  } else {
    const std::string bare = host.substr(0, host.rfind(':') == std::string::npos ||
                                                    host.back() == ']'
                                                ? host.size()
                                                : host.rfind(':'));
    const bool ip = !bare.empty() && (bare.front() == '[' ||
                                      std::all_of(bare.begin(), bare.end(), [](char c) {
                                        return absl::ascii_isdigit(c) || c == '.';
                                      }));
    if (ip) {
      return absl::InvalidArgumentError(
          "virtual-hosted addressing needs an endpoint with a DNS name; use path style");
    }
    host = absl::StrCat(o.bucket, ".", host);
  }
  if (clock == nullptr) clock = RealClock::Get();
  return std::unique_ptr<S3Client>(new S3Client(std::move(o), std::move(credentials), clock,
                                                std::move(scheme), std::move(host),
                                                std::move(base_path)));
}

S3Client::S3Client(Options options, std::shared_ptr<CredentialsProvider> credentials,
                   Clock* clock, std::string scheme, std::string host, std::string base_path)
    : options_(std::move(options)),
      credentials_(std::move(credentials)),
      clock_(clock),
      scheme_(std::move(scheme)),
      host_(std::move(host)),
      base_path_(std::move(base_path)) {}

std::string S3Client::Uri(absl::string_view key) const {
  return absl::StrCat("s3://", options_.bucket, "/", key);
}

std::string S3Client::PathOf(absl::string_view key) const {
  return absl::StrCat(base_path_, "/", UriEncode(key, /*keep_slash=*/true));
}

void S3Client::Sleep(absl::Duration d) {
  if (options_.sleep) {
    options_.sleep(d);
  } else {
    absl::SleepFor(d);
  }
}

absl::StatusOr<HttpResponse> S3Client::Send(HttpSession& session, const Call& call,
                                            absl::Time deadline,
                                            const std::function<bool()>& cancelled,
                                            int* requests) {
  const std::string what = absl::StrCat("S3 ", call.op, " ", Uri(call.key));
  absl::Duration backoff = options_.initial_backoff;
  absl::Status last;
  bool refreshed = false;
  for (int attempt = 1;; ++attempt) {
    if (cancelled && cancelled()) return absl::CancelledError(absl::StrCat(what, ": cancelled"));
    absl::StatusOr<AwsCredentials> creds = credentials_->Get();
    if (!creds.ok()) {
      // The provider's own message: it names no secret.
      last = absl::Status(creds.status().code(),
                          absl::StrCat(what, ": no credentials: ", creds.status().message()));
      if (!absl::IsUnavailable(creds.status())) return last;
    } else {
      RequestToSign r;
      r.method = call.method;
      r.host = host_;
      r.encoded_path = PathOf(call.key);
      r.query = call.query;
      r.headers = call.headers;
      r.payload_sha256_hex = call.body_sha256;
      const SignedRequest signed_request = SignS3Request(r, *creds, options_.region, clock_->Now());
      HttpRequest h;
      h.method = call.method;
      h.url = absl::StrCat(scheme_, "://", host_, r.encoded_path,
                           signed_request.canonical_query.empty() ? "" : "?",
                           signed_request.canonical_query);
      h.headers = signed_request.headers;
      h.body = call.body;
      h.timeout = std::min(options_.request_timeout,
                           std::max(deadline - clock_->Monotonic(), absl::Seconds(1)));
      h.connect_timeout = options_.connect_timeout;
      h.ca_file = options_.ca_file;
      h.max_response_bytes = 64 << 10;
      h.cancelled = cancelled;
      ++*requests;
      absl::StatusOr<HttpResponse> resp = session.Call(h);
      if (absl::IsCancelled(resp.status())) {
        return absl::CancelledError(absl::StrCat(what, ": cancelled"));
      }
      if (!resp.ok()) {
        last = absl::UnavailableError(absl::StrCat(what, ": ", resp.status().message()));
      } else {
        // CompleteMultipartUpload may answer 200 with an error in the body
        // (S3 API reference, CompleteMultipartUpload).
        const bool error_body = resp->status == 200 && call.op == "CompleteMultipartUpload" &&
                                absl::StrContains(resp->body, "<Error>");
        if ((resp->status >= 200 && resp->status < 300 && !error_body) ||
            (resp->status == 404 && call.not_found_ok)) {
          return resp;
        }
        const std::string code = ErrorCode(Redact(
            XmlText(resp->body, "Code"), {creds->secret_access_key, creds->session_token}));
        const std::string message = Redact(XmlText(resp->body, "Message"),
                                           {creds->secret_access_key, creds->session_token});
        const std::string text =
            absl::StrCat(what, ": HTTP ", resp->status, code.empty() ? "" : " ", code,
                         message.empty() ? "" : ": ", Excerpt(message));
        if ((code == "ExpiredToken" || code == "TokenRefreshRequired") && !refreshed) {
          // Temporary credentials ran out early: fetch anew, once, at once.
          credentials_->Invalidate(creds->access_key_id);
          refreshed = true;
          --attempt;
          continue;
        }
        if (!RetryableAnswer(resp->status, code)) {
          absl::Status s;
          if (resp->status == 403) {
            s = absl::PermissionDeniedError(text);
          } else if (resp->status == 404) {
            s = absl::NotFoundError(text);
          } else {
            s = absl::FailedPreconditionError(text);
          }
          return WithCode(s, code);
        }
        last = WithCode(absl::UnavailableError(text), code);
      }
    }
    const absl::Duration left = deadline - clock_->Monotonic();
    if (attempt >= options_.max_attempts || left <= absl::ZeroDuration()) {
      return WithCode(
          absl::Status(left <= absl::ZeroDuration() ? absl::StatusCode::kDeadlineExceeded
                                                    : last.code(),
                       absl::StrCat(last.message(), " (after ", attempt, " attempts)")),
          S3ErrorCode(last));
    }
    Sleep(std::min(backoff, left));
    backoff = std::min(backoff * 2, options_.max_backoff);
    if (cancelled && cancelled()) {
      return absl::CancelledError(absl::StrCat(what, ": cancelled after: ", last.message()));
    }
  }
}

absl::StatusOr<std::optional<ObjectInfo>> S3Client::HeadWith(
    HttpSession& session, absl::string_view key, absl::Time deadline,
    const std::function<bool()>& cancelled, int* requests) {
  Call call;
  call.op = "HeadObject";
  call.method = "HEAD";
  call.key = std::string(key);
  call.body_sha256 = Sha256Hex("");
  call.not_found_ok = true;
  absl::StatusOr<HttpResponse> resp = Send(session, call, deadline, cancelled, requests);
  if (!resp.ok()) return resp.status();
  if (resp->status == 404) return std::nullopt;
  ObjectInfo info;
  if (!absl::SimpleAtoi(resp->Header("content-length"), &info.size)) info.size = -1;
  info.sha256 = absl::AsciiStrToLower(resp->Header("x-amz-meta-sha256"));
  info.content_type = resp->Header("content-type");
  return info;
}

absl::StatusOr<std::optional<ObjectInfo>> S3Client::Head(absl::string_view key) {
  return Head(key, clock_->Monotonic() + options_.request_timeout, nullptr);
}

absl::StatusOr<std::optional<ObjectInfo>> S3Client::Head(absl::string_view key,
                                                         absl::Time deadline,
                                                         const std::function<bool()>& cancelled) {
  HttpSession session;
  int requests = 0;
  return HeadWith(session, key, deadline, cancelled, &requests);
}

absl::StatusOr<UploadResult> S3Client::Upload(const ObjectSpec& spec, ByteSource& source) {
  UploadResult result;
  result.uri = Uri(spec.key);
  if (spec.key.empty() || spec.key.front() == '/' || spec.key.size() > 1024) {
    return absl::InvalidArgumentError(absl::StrCat("not an object key: ", Excerpt(spec.key)));
  }
  if (spec.size < 0 || spec.sha256.size() != 64 ||
      !std::all_of(spec.sha256.begin(), spec.sha256.end(),
                   [](char c) { return absl::ascii_isdigit(c) || (c >= 'a' && c <= 'f'); })) {
    return absl::InvalidArgumentError("the object's size and lowercase hex SHA-256 are needed");
  }
  if (spec.content_type.find_first_of("\r\n") != std::string::npos) {
    return absl::InvalidArgumentError("the content type holds a line break");
  }
  HttpSession session;
  // An object already there with the same bytes (another pod, a restart).
  absl::StatusOr<std::optional<ObjectInfo>> there =
      HeadWith(session, spec.key, spec.deadline, spec.cancelled, &result.requests);
  if (there.ok() && there->has_value() && (*there)->size == spec.size &&
      (*there)->sha256 == spec.sha256) {
    result.reused = true;
    return result;
  }
  // A HEAD answered with a 4xx goes on to the upload: S3 answers HEAD errors
  // without a body, so their code (SignatureDoesNotMatch, ExpiredToken,
  // AccessDenied for a role without s3:GetObject) is unknown here; the
  // upload either works or fails (or refreshes credentials) with S3's code.
  // A HEAD that could not get an answer ends here.
  if (!there.ok() && (absl::IsUnavailable(there.status()) || absl::IsCancelled(there.status()) ||
                      absl::IsDeadlineExceeded(there.status()) ||
                      absl::IsInvalidArgument(there.status()))) {
    return there.status();
  }

  if (static_cast<uint64_t>(spec.size) > options_.part_size) {
    return Multipart(session, spec, source, std::move(result));
  }
  std::string buffer(static_cast<size_t>(spec.size), '\0');
  result.peak_buffer_bytes = buffer.capacity();
  absl::StatusOr<size_t> n = ReadFull(source, buffer.data(), buffer.size());
  if (!n.ok()) return n.status();
  char extra;
  absl::StatusOr<size_t> more = ReadFull(source, &extra, 1);  // a longer source is wrong too
  if (!more.ok()) return more.status();
  buffer.resize(*n);
  if (*more != 0 || static_cast<int64_t>(*n) != spec.size || Sha256Hex(buffer) != spec.sha256) {
    return absl::DataLossError(absl::StrCat(
        "S3 PutObject ", result.uri, ": the source gave ", *n, " bytes with another SHA-256 than "
        "the ", spec.size, " bytes declared; nothing was stored"));
  }
  Call call;
  call.op = "PutObject";
  call.method = "PUT";
  call.key = spec.key;
  call.headers = {{"Content-Type", spec.content_type}, {"x-amz-meta-sha256", spec.sha256}};
  call.body = buffer;
  call.body_sha256 = spec.sha256;
  absl::StatusOr<HttpResponse> resp = 
      Send(session, call, spec.deadline, spec.cancelled, &result.requests);
  if (!resp.ok()) return resp.status();
  return result;
}

absl::StatusOr<UploadResult> S3Client::Multipart(HttpSession& session, const ObjectSpec& spec,
                                                 ByteSource& source, UploadResult result) {
  const int64_t parts = (spec.size + options_.part_size - 1) / options_.part_size;
  if (parts > kMaxParts) {
    return absl::InvalidArgumentError(
        absl::StrCat("S3 upload ", result.uri, ": ", spec.size, " bytes need more than ",
                     kMaxParts, " parts"));
  }
  Call create;
  create.op = "CreateMultipartUpload";
  create.method = "POST";
  create.key = spec.key;
  create.query = {{"uploads", ""}};
  create.headers = {{"Content-Type", spec.content_type}, {"x-amz-meta-sha256", spec.sha256}};
  create.body_sha256 = Sha256Hex("");
  absl::StatusOr<HttpResponse> created = 
      Send(session, create, spec.deadline, spec.cancelled, &result.requests);
  if (!created.ok()) return created.status();
  const std::string upload_id = XmlText(created->body, "UploadId");
  if (upload_id.empty()) {
    return absl::UnavailableError(
        absl::StrCat("S3 CreateMultipartUpload ", result.uri, ": the answer holds no UploadId"));
  }

  // From here on, a failure aborts the upload.
  auto abort = [&](absl::Status cause) -> absl::Status {
    Call call;
    call.op = "AbortMultipartUpload";
    call.method = "DELETE";
    call.key = spec.key;
    call.query = {{"uploadId", upload_id}};
    call.body_sha256 = Sha256Hex("");
    // A few tries even past the deadline: parts left behind are billed. When
    // cancelled (shutting down), only briefly.
    const bool stopping = spec.cancelled && spec.cancelled();
    absl::StatusOr<HttpResponse> r =
        Send(session, call, clock_->Monotonic() + (stopping ? absl::Seconds(5) : absl::Minutes(1)),
             nullptr, &result.requests);
    const std::string note =
        r.ok() ? "; the upload was aborted"
               : absl::StrCat("; aborting it failed too (", r.status().message(),
                              "): a bucket lifecycle rule for incomplete uploads removes the parts");
    return WithCode(absl::Status(cause.code(), absl::StrCat(cause.message(), note)),
                    S3ErrorCode(cause));
  };

  std::string buffer;
  buffer.reserve(options_.part_size);
  result.peak_buffer_bytes = buffer.capacity();
  SHA256_CTX whole;
  SHA256_Init(&whole);
  std::string complete_xml = "<CompleteMultipartUpload>";
  int64_t total = 0;
  for (int part = 1; part <= parts; ++part) {
    buffer.resize(options_.part_size);
    absl::StatusOr<size_t> n = ReadFull(source, buffer.data(), buffer.size());
    if (!n.ok()) return abort(n.status());
    buffer.resize(*n);
    total += static_cast<int64_t>(*n);
    SHA256_Update(&whole, buffer.data(), buffer.size());
    if (*n == 0 || (part < parts && *n < options_.part_size)) break;  // short source
    Call call;
    call.op = "UploadPart";
    call.method = "PUT";
    call.key = spec.key;
    call.query = {{"partNumber", absl::StrCat(part)}, {"uploadId", upload_id}};
    call.body = buffer;
    call.body_sha256 = Sha256Hex(buffer);
    absl::StatusOr<HttpResponse> r = 
        Send(session, call, spec.deadline, spec.cancelled, &result.requests);
    if (!r.ok()) {
      return abort(WithCode(absl::Status(r.status().code(),
                                         absl::StrCat(r.status().message(), " (part ", part, ")")),
                            S3ErrorCode(r.status())));
    }
    std::string etag = r->Header("etag");
    if (etag.empty()) {
      return abort(absl::UnavailableError(
          absl::StrCat("S3 UploadPart ", result.uri, ": no ETag for part ", part)));
    }
    absl::StrAppend(&complete_xml, "<Part><PartNumber>", part, "</PartNumber><ETag>",
                    absl::StrReplaceAll(etag, {{"&", "&amp;"}, {"\"", "&quot;"}, {"<", "&lt;"}}),
                    "</ETag></Part>");
    result.peak_buffer_bytes = std::max(result.peak_buffer_bytes, buffer.capacity());
    ++result.parts;
  }
  // The bytes must be the declared ones, and end where declared.
  char extra;
  absl::StatusOr<size_t> more = size_t{0};
  if (total == spec.size) more = ReadFull(source, &extra, 1);
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256_Final(digest, &whole);
  const std::string got = absl::BytesToHexString(
      absl::string_view(reinterpret_cast<const char*>(digest), sizeof(digest)));
  if (!more.ok()) return abort(more.status());
  if (total != spec.size || *more != 0 || got != spec.sha256) {
    return abort(absl::DataLossError(absl::StrCat(
        "S3 upload ", result.uri, ": the source's bytes are not the ", spec.size,
        " bytes with the declared SHA-256; not completed")));
  }
  complete_xml += "</CompleteMultipartUpload>";
  Call complete;
  complete.op = "CompleteMultipartUpload";
  complete.method = "POST";
  complete.key = spec.key;
  complete.query = {{"uploadId", upload_id}};
  complete.headers = {{"Content-Type", "application/xml"}};
  complete.body = complete_xml;
  complete.body_sha256 = Sha256Hex(complete_xml);
  absl::StatusOr<HttpResponse> done = 
      Send(session, complete, spec.deadline, spec.cancelled, &result.requests);
  if (!done.ok()) {
    // A retried Complete whose first answer was lost finds the upload gone
    // (NoSuchUpload): the object is there if the first one worked.
    if (S3ErrorCode(done.status()) == "NoSuchUpload") {
      absl::StatusOr<std::optional<ObjectInfo>> there =
          HeadWith(session, spec.key, spec.deadline, spec.cancelled, &result.requests);
      if (there.ok() && there->has_value() && (*there)->size == spec.size &&
          (*there)->sha256 == spec.sha256) {
        return result;
      }
    }
    return abort(done.status());
  }
  return result;
}

}  // namespace videotask::s3
